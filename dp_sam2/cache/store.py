"""Zarr access that Diffusion Policy can read, and the replay buffer's rgb arrays (the source of the cache).

DP pins zarr 2.x; a fresh install of dp_sam2 may resolve zarr 3, whose default on-disk format (v3,
``zarr.json``) zarr 2 cannot open ("nothing found at path ''"). So everything dp_sam2 creates is written
in zarr format 2 (``.zgroup`` / ``.zarray`` / ``.zattrs``) with a numcodecs Blosc compressor (zarr 2's
default), whichever zarr is installed: zarr 3 is passed ``zarr_format=2``, zarr 2 writes it anyway.
Existing stores are opened as they are (a v3 store written by dp_sam2 0.2.x keeps working with zarr 3).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

ZARR_FORMAT = 2  # the on-disk format dp_sam2 writes: the one DP's zarr 2.x reads


def zarr_major() -> int:
    """The major version of the installed zarr (2 or 3)."""
    import zarr

    return int(str(zarr.__version__).split(".")[0])


def _exists(path) -> bool:
    p = Path(os.fspath(path))
    return any((p / name).exists() for name in (".zgroup", ".zarray", "zarr.json"))


def open_group(path, mode: str):
    """The zarr group at ``path``: ``"r"`` (must exist: else FileNotFoundError), ``"a"`` (open, or create),
    ``"w"`` (create, replacing). A group this creates is zarr format 2 (module docstring)."""
    import zarr

    if mode not in ("r", "r+", "a", "w", "w-"):
        raise ValueError(f"mode must be one of 'r', 'r+', 'a', 'w', 'w-', got {mode!r}")
    creates = mode in ("w", "w-") or (mode == "a" and not _exists(path))
    kwargs = {"zarr_format": ZARR_FORMAT} if creates and zarr_major() >= 3 else {}
    try:
        return zarr.open_group(os.fspath(path), mode=mode, **kwargs)
    except (FileNotFoundError, KeyError, ValueError) as err:
        if mode == "r":
            raise FileNotFoundError(f"no zarr group at {path} ({type(err).__name__}: {err})") from err
        raise


def compressor():
    """The numcodecs compressor of every array dp_sam2 writes (zarr 2's default: Blosc lz4, byte shuffle)."""
    from numcodecs import Blosc

    return Blosc(cname="lz4", clevel=5, shuffle=Blosc.SHUFFLE)


def group_format(group) -> int:
    """The zarr format (2 or 3) of an open group."""
    metadata = getattr(group, "metadata", None)
    return int(getattr(metadata, "zarr_format", 2))


def create_array(group, name: str, shape, chunks, dtype, fill_value):
    """Create ``group[name]`` (zarr format 2 with :func:`compressor`; in a v3 group made by an older
    dp_sam2, a v3 array with zarr's default codecs)."""
    if hasattr(group, "create_array"):  # zarr 3
        codec = {"compressors": compressor()} if group_format(group) == 2 else {}
        return group.create_array(name, shape=shape, chunks=chunks, dtype=dtype, fill_value=fill_value, **codec)
    return group.create_dataset(
        name, shape=shape, chunks=chunks, dtype=dtype, fill_value=fill_value, compressor=compressor()
    )


def write_array(group, name: str, data: np.ndarray, chunks) -> None:
    """Create ``group[name]`` holding ``data`` (see :func:`create_array`)."""
    arr = create_array(group, name, data.shape, chunks, data.dtype, 0)
    arr[...] = data


def require_group(group, name: str):
    """``group[name]``, created (in the group's format) if missing."""
    return group.require_group(name)


def has_member(group, name: str) -> bool:
    """Whether ``group`` holds an array or group ``name``."""
    try:
        return name in group
    except Exception:  # noqa: BLE001 - zarr 3 stores raise on odd names
        return False


def member_names(group) -> list[str]:
    """The names of the arrays and groups in ``group``, sorted."""
    return sorted(k for k in group.keys())


def delete_member(group, name: str) -> None:
    """Remove the array or group ``name`` from ``group``."""
    del group[name]


# --------------------------------------------------------------------------- the source
@dataclass(frozen=True)
class Source:
    """The replay buffer's rgb arrays and what identifies its contents."""

    keys: tuple[str, ...]
    n_frames: int
    episode_ends_sha256: str
    shapes: dict = field(default_factory=dict)  # key -> (H, W, 3)


def rgb_keys_of(data_group) -> list[str]:
    """Arrays under ``data/`` that look like images: ``(N, H, W, 3)``."""
    keys = []
    for name in member_names(data_group):
        arr = data_group[name]
        shape = getattr(arr, "shape", None)
        if shape is not None and len(shape) == 4 and shape[-1] == 3:
            keys.append(name)
    return keys


def describe_source(root, keys=None) -> Source:
    if not has_member(root, "data") or not has_member(root, "meta"):
        raise ValueError(
            "expected a Diffusion Policy replay buffer zarr with data/<key> arrays and "
            f"meta/episode_ends; found members {member_names(root)}"
        )
    data = root["data"]
    available = rgb_keys_of(data)
    keys = list(keys) if keys else available
    if not keys:
        raise ValueError(f"no rgb array (N, H, W, 3) under data/; arrays: {member_names(data)} (name them with --keys)")
    for key in keys:
        if key not in available:
            raise ValueError(
                f"data/{key} is not an rgb array (N, H, W, 3) of this replay buffer; rgb arrays: {available}"
            )
    n = {int(data[k].shape[0]) for k in keys}
    if len(n) != 1:
        raise ValueError(f"rgb arrays {keys} have different frame counts {sorted(n)}")
    ends = np.asarray(root["meta"]["episode_ends"][:], dtype=np.int64)
    return Source(
        tuple(keys),
        n.pop(),
        hashlib.sha256(ends.tobytes()).hexdigest(),
        {k: tuple(int(s) for s in data[k].shape[1:]) for k in keys},
    )


def to_model_input(frames: np.ndarray) -> torch.Tensor:
    """DP's stored frames ``(N, H, W, 3)`` on a 0-255 scale -> ``(N, 3, H, W)`` in [-1, 1], the
    way DP's dataset (``/255``) and range normaliser (``*2-1``) hand them to the obs encoder."""
    x = torch.from_numpy(np.ascontiguousarray(frames)).float().permute(0, 3, 1, 2)
    return x / 255.0 * 2.0 - 1.0

"""Zarr 2 / 3 access and the replay buffer's rgb arrays (the source of the cache)."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field

import numpy as np
import torch


def _open_group(path, mode: str):
    import zarr

    try:
        return zarr.open_group(os.fspath(path), mode=mode)
    except (FileNotFoundError, KeyError, ValueError) as err:
        if mode == "r":
            raise FileNotFoundError(f"no zarr group at {path} ({type(err).__name__}: {err})") from err
        raise


def _create_array(group, name: str, shape, chunks, dtype, fill_value):
    if hasattr(group, "create_array"):  # zarr 3
        return group.create_array(name, shape=shape, chunks=chunks, dtype=dtype, fill_value=fill_value)
    return group.create_dataset(name, shape=shape, chunks=chunks, dtype=dtype, fill_value=fill_value)


def write_array(group, name: str, data: np.ndarray, chunks) -> None:
    """Create ``group[name]`` holding ``data`` (zarr 2 and 3)."""
    arr = _create_array(group, name, data.shape, chunks, data.dtype, 0)
    arr[...] = data


def _require_group(group, name: str):
    return group.require_group(name)


def _has(group, name: str) -> bool:
    try:
        return name in group
    except Exception:  # noqa: BLE001 - zarr 3 stores raise on odd names
        return False


def _member_names(group) -> list[str]:
    return sorted(k for k in group.keys())


def _delete(group, name: str) -> None:
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
    for name in _member_names(data_group):
        arr = data_group[name]
        shape = getattr(arr, "shape", None)
        if shape is not None and len(shape) == 4 and shape[-1] == 3:
            keys.append(name)
    return keys


def describe_source(root, keys=None) -> Source:
    if not _has(root, "data") or not _has(root, "meta"):
        raise ValueError(
            "expected a Diffusion Policy replay buffer zarr with data/<key> arrays and "
            f"meta/episode_ends; found members {_member_names(root)}"
        )
    data = root["data"]
    available = rgb_keys_of(data)
    keys = list(keys) if keys else available
    if not keys:
        raise ValueError(
            f"no rgb array (N, H, W, 3) under data/; arrays: {_member_names(data)} (name them with --keys)"
        )
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

"""The demonstrations' file: Diffusion Policy's replay-buffer layout in a zarr v2 directory store.

    PATH.zarr/
      data/img         (N, H, W, 3) uint8   upright camera images
      data/agent_pos   (N, 4) float32       hand xyz + gripper opening (observation[0:4]) only
      data/state       (N, 39) float32      the full MetaWorld observation (the low-dim reference)
      data/action      (N, 4) float32       the expert's action at that step
      meta/episode_ends (E,) int64          one past each episode's last step
      .zattrs["dp_sam2_metaworld"]          task, camera, image_size, seed, episodes

Written in zarr's format 2 with numcodecs' Blosc (what DP's ``ReplayBuffer`` reads under zarr 2.x),
whichever zarr (2 or 3) is installed; into a hidden temporary folder renamed at the end, so an
interrupted run leaves no buffer that looks complete. This module imports no MetaWorld.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np

from dp_sam2.metaworld.env import ACTION_DIM, AGENT_POS_DIM, OBS_DIM

ATTRS_KEY = "dp_sam2_metaworld"
# key -> (dtype, shape after the step axis; None = the image's (H, W, 3))
LAYOUT = {
    "img": (np.uint8, None),
    "agent_pos": (np.float32, (AGENT_POS_DIM,)),
    "state": (np.float32, (OBS_DIM,)),
    "action": (np.float32, (ACTION_DIM,)),
}
CHUNK_STEPS = 256


def _zarr3() -> bool:
    import zarr

    return int(zarr.__version__.split(".")[0]) >= 3


def _compressor():
    from numcodecs import Blosc

    return Blosc(cname="lz4", clevel=5, shuffle=Blosc.NOSHUFFLE)  # DP's ReplayBuffer default


def _write_array(group, name: str, data: np.ndarray) -> None:
    chunks = (min(CHUNK_STEPS, max(1, len(data))),) + data.shape[1:]
    if _zarr3():
        group.create_array(name, data=data, chunks=chunks, compressors=_compressor())
    else:
        group.create_dataset(name, data=data, chunks=chunks, compressor=_compressor())


def write_buffer(path, episodes: list[dict[str, np.ndarray]], attrs: dict, *, overwrite: bool = False) -> Path:
    """Write ``episodes`` (each a dict of LAYOUT's keys, step axis first) to ``path``: a temporary
    sibling folder first, renamed to ``path`` once complete."""
    import zarr

    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; delete it, choose another --out, or pass --overwrite")
    if not episodes:
        raise ValueError("no episodes to write")
    data = {key: np.concatenate([ep[key] for ep in episodes]).astype(LAYOUT[key][0]) for key in LAYOUT}
    ends = np.cumsum([len(ep["action"]) for ep in episodes]).astype(np.int64)
    tmp = path.with_name(f".{path.name}.incomplete-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        root = zarr.open_group(str(tmp), mode="w", **({"zarr_format": 2} if _zarr3() else {}))
        data_group, meta_group = root.require_group("data"), root.require_group("meta")
        for key, value in data.items():
            _write_array(data_group, key, value)
        _write_array(meta_group, "episode_ends", ends)
        root.attrs[ATTRS_KEY] = attrs
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return path


def read_buffer(path, keys=("img", "agent_pos", "state", "action")) -> tuple[dict[str, np.ndarray], np.ndarray, dict]:
    """(data arrays for ``keys``, episode_ends, our attrs) read into memory, every key and shape
    checked: a ``ValueError`` names what was expected and what the file holds."""
    import zarr

    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(
            f"no replay buffer at {path} (expected a zarr folder written by `dp-sam2 metaworld-demos --out {path}`)"
        )
    try:
        root = zarr.open_group(str(path), mode="r")
    except Exception as err:  # not a zarr group at all
        raise ValueError(f"{path} is not a zarr replay buffer (data/..., meta/episode_ends): {err}") from err
    expected = ", ".join(f"data/{k}" for k in LAYOUT) + ", meta/episode_ends"

    def _get(name):
        try:
            return root[name]
        except (KeyError, FileNotFoundError):
            raise ValueError(f"{path} has no '{name}'; a MetaWorld replay buffer holds {expected}") from None

    ends = np.asarray(_get("meta/episode_ends")[:], dtype=np.int64)
    if ends.ndim != 1 or len(ends) == 0 or np.any(np.diff(ends) <= 0) or ends[0] <= 0:
        raise ValueError(f"{path}: meta/episode_ends must be a non-empty increasing 1-D array, got {ends!r}")
    n = int(ends[-1])
    data = {}
    for key in keys:
        arr = _get(f"data/{key}")
        dtype, tail = LAYOUT[key]
        if tail is None:
            ok = len(arr.shape) == 4 and arr.shape[3] == 3 and arr.shape[1] == arr.shape[2]
            want = "(N, S, S, 3) uint8"
        else:
            ok = tuple(arr.shape[1:]) == tail
            want = f"(N, {', '.join(map(str, tail))}) {np.dtype(dtype).name}"
        if not ok or arr.shape[0] != n or np.dtype(arr.dtype) != np.dtype(dtype):
            raise ValueError(
                f"{path}: data/{key} should be {want} with N = meta/episode_ends[-1] = {n}, "
                f"got shape {tuple(arr.shape)} {np.dtype(arr.dtype).name}"
            )
        data[key] = np.asarray(arr[:])
    attrs = dict(root.attrs.get(ATTRS_KEY, {}))
    return data, ends, attrs


def check_buffer_matches(path, attrs: dict, *, env_name=None, image_size=None, camera=None) -> None:
    """The task file's ``env_name`` / ``image_size`` / ``camera`` against what the buffer was made
    with; a ``ValueError`` naming both on a mismatch (``None`` = not checked)."""
    from dp_sam2.metaworld.env import canonical_task

    made = {"env_name": attrs.get("task"), "image_size": attrs.get("image_size"), "camera": attrs.get("camera")}
    if env_name is not None:
        env_name = canonical_task(env_name)
    want = {"env_name": env_name, "image_size": image_size, "camera": camera}
    for key, value in want.items():
        if value is None:
            continue
        if made[key] is None:
            raise ValueError(
                f"{path} does not say which {key} it was made with (not written by `dp-sam2 metaworld-demos`?); "
                f"the task file sets task.{key}={value!r}"
            )
        if made[key] != value:
            raise ValueError(
                f"the replay buffer {path} was made with {key}={made[key]!r} but the task file sets "
                f"task.{key}={value!r}: collect demos with the task's setting or set task.{key}={made[key]!r}"
            )

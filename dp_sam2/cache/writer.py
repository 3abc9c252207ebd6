"""Frozen SAM 2 features of a Diffusion Policy replay buffer, computed once (``dp-sam2 cache-features``,
:mod:`dp_sam2.tools.cache_features`).

:func:`cache_features` encodes every frame of the rgb arrays ``data/<key>`` ``(N, H, W, 3)`` (uint8 or float,
0-255) of a DP zarr replay buffer with :meth:`SAM2ObsEncoder.encode_images` into
``<store>/dp_sam2_features/<model>-<image_size>px-<digest12>[-c<H>x<W>][-r<H>x<W>]/``: ``.attrs`` (the key:
model, checkpoint sha256, image size, crop, resize, precision; the source; a complete flag), ``features/<key>``
``(N, 256, image_size/16, image_size/16)`` float16, one chunk per frame, and ``done/<key>`` ``(N,)`` bool (resume).
``<store>``: the replay zarr (DP reads only ``data/`` and ``meta/``) or any zarr path; what is written is zarr
format 2 (DP's zarr 2.x reads it) with zarr 2 or 3 installed (:mod:`dp_sam2.cache.store`).
:func:`open_cache` refuses a cache whose key differs from the config's (a ValueError naming both). Under
``torchrun`` (gloo is enough) each rank writes whole done-mask blocks, with the same result as one process.
:class:`~dp_sam2.cache.CachedFeatureDataset` serves them; docs/feature_cache.md has the crop trade-off.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from dp_sam2.dist import Dist, current_dist

from .key import GROUP, RANDOM_INIT, CacheKey, check_attrs, make_key
from .store import (
    Source,
    create_array,
    delete_member,
    describe_source,
    has_member,
    member_names,
    open_group,
    require_group,
    to_model_input,
)

DONE_BLOCK = 64  # frames per chunk of the done mask: the unit of work of one rank


@dataclass
class CacheResult:
    store: str
    group: str
    key: CacheKey
    n_frames: int
    computed: int  # frames this process encoded now
    complete: bool

    def __str__(self) -> str:
        state = "complete" if self.complete else "INCOMPLETE"
        return (
            f"feature cache {self.store}/{self.group}: {self.n_frames} frames, {self.key.model} "
            f"at {self.key.image_size}px, {state} ({self.computed} frames encoded now)"
        )


def build_encoder(key: CacheKey, source: Source, checkpoint_path: Path | None, device, low_dim=None, **options):
    """A frozen SAM2ObsEncoder with the weights ``key`` names, for the rgb keys of ``source`` (plus
    ``low_dim`` ``{key: shape}``); ``options`` go to the encoder. ``checkpoint_path=None`` means
    "random-init": the weights drawn from seed 0 inside ``torch.random.fork_rng()``, so they are
    the same every time and the caller's random state is left as it was."""
    from dp_sam2 import SAM2ObsEncoder
    from dp_sam2.encoders.sam2.build import resolve_device

    shape_meta = {
        "obs": {k: {"shape": [3, source.shapes[k][0], source.shapes[k][1]], "type": "rgb"} for k in source.keys}
    }
    shape_meta["obs"].update({k: {"shape": list(v), "type": "low_dim"} for k, v in (low_dim or {}).items()})
    kwargs = dict(
        model_cfg=key.model,
        image_size=key.image_size,
        pooling="mean",
        freeze=True,
        precision=key.precision,
        crop_shape=list(key.crop_shape) if key.crop_shape else None,
        resize_shape=list(key.resize_shape) if key.resize_shape else None,
    )
    kwargs.update(options)
    if checkpoint_path is not None:
        encoder = SAM2ObsEncoder(shape_meta, checkpoint=str(checkpoint_path), **kwargs)
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)  # "random-init" means these weights, reproducibly
            encoder = SAM2ObsEncoder(shape_meta, random_weights=True, **kwargs)
    return encoder.to(resolve_device(device)).eval()


def _prepare_group(store, key: CacheKey, source: Source, feature_shape, overwrite: bool):
    """Create (or check and reopen) the cache group; only rank 0 calls this."""
    root = open_group(store, "a")
    top = require_group(root, GROUP)
    if overwrite and has_member(top, key.name):
        delete_member(top, key.name)
    group = require_group(top, key.name)
    wanted = {
        **key.as_dict(),
        "n_frames": source.n_frames,
        "episode_ends_sha256": source.episode_ends_sha256,
        "feature_shape": list(feature_shape),
        "dtype": "float16",
    }
    attrs = dict(group.attrs)
    if attrs:
        check_attrs(attrs, wanted, f"{store}/{GROUP}/{key.name}", hint="pass --overwrite to recompute it")
    else:
        group.attrs.update({**wanted, "complete": False, "keys": list(source.keys)})
    feats, done = require_group(group, "features"), require_group(group, "done")
    block = max(1, min(DONE_BLOCK, source.n_frames // 16))  # small buffers: still spread over ranks
    for k in source.keys:
        if not has_member(feats, k):
            create_array(feats, k, (source.n_frames, *feature_shape), (1, *feature_shape), "float16", 0)
            create_array(done, k, (source.n_frames,), (block,), "bool", False)
    group.attrs["keys"] = sorted(set(group.attrs.get("keys", [])) | set(source.keys))
    return group


def cache_features(
    zarr_path,
    obs_encoder: str = "sam2_large",
    checkpoint=None,
    image_size=None,
    *,
    keys=None,
    out=None,
    crop_shape=None,
    resize_shape=None,
    batch_size: int = 16,
    device=None,
    overwrite: bool = False,
    progress: bool = True,
    random_weights: bool = False,
    precision: str = "fp32",
) -> CacheResult:
    """Encode every frame of the replay buffer's rgb arrays into the cache (see the module doc).
    Frames already marked done are skipped (resume); under torch.distributed each rank takes its
    share of the frames."""
    from dp_sam2._progress import progress as progress_bar

    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    zarr_path = Path(zarr_path)
    if not zarr_path.exists():
        raise FileNotFoundError(f"replay buffer not found: {zarr_path}")
    store = Path(out) if out is not None else zarr_path
    dist = current_dist()
    source = describe_source(open_group(zarr_path, "r"), keys)
    key, ckpt = make_key(obs_encoder, checkpoint, image_size, crop_shape, resize_shape, random_weights, precision)
    if ckpt is None and dist.rank == 0:
        warnings.warn(
            f"no {key.model} checkpoint found: caching features of RANDOM weights (seed 0); "
            f"they are only good for tests. Get the real ones with `dp-sam2 download {key.model}`.",
            stacklevel=2,
        )
    encoder = build_encoder(key, source, ckpt, device)
    if dist.rank == 0:
        _prepare_group(store, key, source, encoder.feature_shape, overwrite)
    dist.barrier()
    group = open_group(store, "a")[GROUP][key.name]
    if dist.rank != 0:
        check_attrs(dict(group.attrs), {**key.as_dict(), "n_frames": source.n_frames}, str(store), "")
    data = open_group(zarr_path, "r")["data"]
    computed = 0
    for k in source.keys:
        todo = _pending_frames(group["done"][k], dist)
        bar = progress_bar(
            total=len(todo), desc=f"{key.name}/{k}", unit="frame", disable=not progress or dist.rank != 0
        )
        for start in range(0, len(todo), batch_size):
            idx = todo[start : start + batch_size]
            _encode_and_write(encoder, data[k], group["features"][k], group["done"][k], k, idx)
            computed += len(idx)
            bar.update(len(idx))
        bar.close()
    dist.barrier()
    complete = all(bool(np.all(group["done"][k][:])) for k in source.keys)
    if dist.rank == 0 and complete:
        group.attrs["complete"] = True
    return CacheResult(str(store), f"{GROUP}/{key.name}", key, source.n_frames, computed, complete)


def _pending_frames(done_arr, dist: Dist) -> np.ndarray:
    """Frames not yet done in the blocks of the done mask that belong to this rank."""
    done = np.asarray(done_arr[:], dtype=bool)
    block = int(done_arr.chunks[0])  # ranks own whole chunks of the done mask: no shared writes
    owner = (np.arange(len(done)) // block) % dist.world
    return np.nonzero(~done & (owner == dist.rank))[0]


def _runs(idx: np.ndarray):
    """Contiguous runs ``(start, stop, offset into idx)`` of sorted frame indices."""
    breaks = np.nonzero(np.diff(idx) != 1)[0] + 1
    offset = 0
    for run in np.split(idx, breaks):
        yield int(run[0]), int(run[-1]) + 1, offset
        offset += len(run)


@torch.inference_mode()
def _encode_and_write(encoder, src, feats_arr, done_arr, key: str, idx: np.ndarray) -> None:
    frames = np.concatenate([src[a:b] for a, b, _ in _runs(idx)])
    x = to_model_input(frames).to(encoder.device)
    out = encoder.encode_images(x, key).float().cpu().numpy().astype(np.float16)
    for a, b, off in _runs(idx):
        feats_arr[a:b] = out[off : off + (b - a)]
    for a, b, _ in _runs(idx):  # after the features: a crash in between only recomputes
        done_arr[a:b] = True


# --------------------------------------------------------------------------- reading
@dataclass
class CacheHandle:
    """An opened, checked cache: ``features[key]`` arrays of ``(N, C, h, w)`` float16."""

    store: str
    group: str
    key: CacheKey
    keys: tuple[str, ...]
    n_frames: int
    feature_shape: tuple[int, ...]

    def arrays(self) -> dict:
        group = open_group(self.store, "r")[self.group]
        return {k: group["features"][k] for k in self.keys}


def open_cache(store, key: CacheKey, n_frames: int | None = None, checkpoint=None) -> CacheHandle:
    """Open the cache of ``key`` in ``store``; a missing, stale or incomplete cache is refused
    with an error that says what was found and the command that makes the right one."""
    store = Path(store)
    cmd = (
        f"dp-sam2 cache-features --zarr <replay.zarr> --obs-encoder {key.model} --image-size {key.image_size}"
        + (f" --checkpoint {checkpoint}" if checkpoint else "")
        + (" --random-weights" if key.checkpoint_sha256 == RANDOM_INIT else "")
        + (f" --crop-shape {key.crop_shape[0]},{key.crop_shape[1]}" if key.crop_shape else "")
        + (f" --resize-shape {key.resize_shape[0]},{key.resize_shape[1]}" if key.resize_shape else "")
        + (f" --precision {key.precision}" if key.precision != "fp32" else "")
        + ("" if store.suffix == ".zarr" else f" --out {store}")
    )
    root = open_group(store, "r")
    if not has_member(root, GROUP) or not has_member(root[GROUP], key.name):
        others = member_names(root[GROUP]) if has_member(root, GROUP) else []
        stale = ""
        if others:
            stale = (
                " It holds caches for other settings (stale for this config): "
                + "; ".join(f"{o}: {_summary(dict(root[GROUP][o].attrs))}" for o in others)
                + "."
            )
        raise ValueError(
            f"no SAM 2 feature cache for {key.name} ({_summary(key.as_dict())}) in {store}."
            f"{stale} Make it with `{cmd}`."
        )
    group = root[GROUP][key.name]
    attrs = dict(group.attrs)
    wanted = key.as_dict() | ({"n_frames": n_frames} if n_frames is not None else {})
    check_attrs(attrs, wanted, f"{store}/{GROUP}/{key.name}", hint=f"recompute it with `{cmd} --overwrite`")
    if not attrs.get("complete"):
        raise ValueError(
            f"the SAM 2 feature cache {store}/{GROUP}/{key.name} is incomplete (interrupted?); "
            f"run `{cmd}` again to finish it"
        )
    return CacheHandle(
        str(store),
        f"{GROUP}/{key.name}",
        key,
        tuple(attrs.get("keys", [])),
        int(attrs["n_frames"]),
        tuple(attrs["feature_shape"]),
    )


def _summary(attrs: dict) -> str:
    digest = str(attrs.get("checkpoint_sha256", "?"))
    return (
        f"model {attrs.get('model')}, checkpoint {digest[:12]}, image_size {attrs.get('image_size')}, "
        f"crop {attrs.get('crop_shape')}, resize {attrs.get('resize_shape')}, precision {attrs.get('precision')}"
    )

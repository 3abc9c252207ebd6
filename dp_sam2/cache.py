"""Frozen SAM 2 features of a Diffusion Policy replay buffer, computed once, and a dataset wrapper
that serves them in place of images.

With a frozen backbone the features of a frame never change, so computing them once instead of
at every training step makes DP training many times faster. :func:`cache_features` encodes every
frame of the rgb arrays of a DP zarr replay buffer (``data/<key>`` of shape ``(N, H, W, 3)``,
uint8 or float on a 0-255 scale, as DP stores them) with :meth:`SAM2ObsEncoder.encode_images`
(the obs encoder's deterministic eval preprocessing: optional resize, centre crop, resize to
``image_size``, SAM 2 normalisation; stride-16 features with ``no_mem_embed``) and stores them as

    <store>/dp_sam2_features/<model>-<image_size>px-<digest12>[-c<H>x<W>][-r<H>x<W>]/
        .attrs                 the full key (model, checkpoint sha256, image size, crop, resize),
                               the source (frames, episode_ends digest, shapes), complete flag
        features/<key>         (N, 256, image_size/16, image_size/16) float16, one chunk per frame
        done/<key>             (N,) bool: which frames are written (resume after an interruption)

``<store>`` is the replay zarr itself by default (DP's ``ReplayBuffer`` reads only ``data/`` and
``meta/``, so an extra group does no harm) or any other zarr path. A cache whose key differs from
what the training config asks for is never used: :func:`open_cache` raises a ValueError naming
both keys. Both the zarr 2 and the zarr 3 APIs are supported.

Under ``torchrun`` (``torch.distributed``; gloo is enough, also on GPU machines) each rank
encodes a share of the frames (whole blocks of the done mask, so ranks never write the same
chunk); the result is the same as one process's.

**The random-crop trade-off.** DP trains with random crops (``crop_shape``, ``random_crop``) as
augmentation. Cached features are of one fixed view, the centre crop the encoder uses in eval,
so training on the cache gives up that augmentation: expect somewhat more overfitting on small
datasets, in exchange for several times faster steps. Options: cache without a crop
(``crop_shape: null`` in both the cache and the policy), or train a few epochs on the cache and
fine-tune on live images, or skip the cache when augmentation matters more than speed.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

GROUP = "dp_sam2_features"
FORMAT_VERSION = 1
DONE_BLOCK = 64  # frames per chunk of the done mask: the unit of work of one rank
RANDOM_INIT = "random-init"


# --------------------------------------------------------------------------- the key
@dataclass(frozen=True)
class CacheKey:
    """What the cached features depend on; a cache with another key is refused."""

    model: str
    checkpoint_sha256: str  # sha256 of the checkpoint file, or "random-init"
    image_size: int
    crop_shape: tuple[int, int] | None = None
    resize_shape: tuple[int, int] | None = None
    precision: str = "fp32"  # the obs encoder's backbone precision (fp32 | bf16)

    @property
    def name(self) -> str:
        name = f"{self.model}-{self.image_size}px-{self.checkpoint_sha256[:12]}"
        if self.crop_shape:
            name += f"-c{self.crop_shape[0]}x{self.crop_shape[1]}"
        if self.resize_shape:
            name += f"-r{self.resize_shape[0]}x{self.resize_shape[1]}"
        if self.precision != "fp32":
            name += f"-{self.precision}"
        return name

    def as_dict(self) -> dict:
        return {"model": self.model, "checkpoint_sha256": self.checkpoint_sha256,
                "image_size": self.image_size, "format_version": FORMAT_VERSION,
                "crop_shape": list(self.crop_shape) if self.crop_shape else None,
                "resize_shape": list(self.resize_shape) if self.resize_shape else None,
                "precision": self.precision}


_DIGESTS: dict[tuple, str] = {}


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 of a file (memoised per path, size and modification time)."""
    path = Path(path).resolve()
    st = path.stat()
    memo = (str(path), st.st_size, st.st_mtime_ns)
    if memo not in _DIGESTS:
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                digest.update(block)
        _DIGESTS[memo] = digest.hexdigest()
    return _DIGESTS[memo]


def _hw(value) -> tuple[int, int] | None:
    if value is None:
        return None
    value = list(value)
    if len(value) != 2 or not all(isinstance(v, (int, np.integer)) and v > 0 for v in value):
        raise ValueError(f"crop_shape / resize_shape must be null or [H, W] positive ints, got {value!r}")
    return int(value[0]), int(value[1])


def resolve_weights(model: str, checkpoint=None, random_weights: bool = False) -> tuple[str, Path | None]:
    """``(digest, path)`` of the checkpoint the encoder ``model`` would load; ``("random-init",
    None)`` when none is found and ``random_weights`` (or ``DP_SAM2_ALLOW_MISSING_CHECKPOINT``)
    allows it. Otherwise the resolver's error (every place tried, the download command)."""
    from dp_sam2.registry import get_spec
    from dp_sam2.resolve import CheckpointNotFoundError, allow_missing_checkpoint, resolve_checkpoint

    spec = get_spec(model)
    checkpoint = checkpoint if checkpoint not in (None, "") else f"checkpoints/{spec.filename}"
    try:
        path = resolve_checkpoint(checkpoint, spec.name)
    except CheckpointNotFoundError:
        if random_weights or allow_missing_checkpoint():
            return RANDOM_INIT, None
        raise
    return file_sha256(path), path


def make_key(model: str, checkpoint=None, image_size=None, crop_shape=None, resize_shape=None,
             random_weights: bool = False, precision: str | None = None) -> tuple[CacheKey, Path | None]:
    from dp_sam2.registry import get_spec

    spec = get_spec(model)
    size = int(image_size) if image_size is not None else spec.obs_image_size
    precision = precision or "fp32"
    if precision not in ("fp32", "bf16"):
        raise ValueError(f"precision must be 'fp32' or 'bf16', got {precision!r}")
    digest, path = resolve_weights(spec.name, checkpoint, random_weights)
    return CacheKey(spec.name, digest, size, _hw(crop_shape), _hw(resize_shape), precision), path


# --------------------------------------------------------------------------- zarr 2 / 3
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
        raise ValueError("expected a Diffusion Policy replay buffer zarr with data/<key> arrays and "
                         f"meta/episode_ends; found members {_member_names(root)}")
    data = root["data"]
    available = rgb_keys_of(data)
    keys = list(keys) if keys else available
    if not keys:
        raise ValueError(f"no rgb array (N, H, W, 3) under data/; arrays: {_member_names(data)} (name them with --keys)")
    for key in keys:
        if key not in available:
            raise ValueError(f"data/{key} is not an rgb array (N, H, W, 3) of this replay buffer; rgb arrays: {available}")
    n = {int(data[k].shape[0]) for k in keys}
    if len(n) != 1:
        raise ValueError(f"rgb arrays {keys} have different frame counts {sorted(n)}")
    ends = np.asarray(root["meta"]["episode_ends"][:], dtype=np.int64)
    return Source(tuple(keys), n.pop(), hashlib.sha256(ends.tobytes()).hexdigest(),
                  {k: tuple(int(s) for s in data[k].shape[1:]) for k in keys})


def to_model_input(frames: np.ndarray) -> torch.Tensor:
    """DP's stored frames ``(N, H, W, 3)`` on a 0-255 scale -> ``(N, 3, H, W)`` in [-1, 1], the
    way DP's dataset (``/255``) and range normaliser (``*2-1``) hand them to the obs encoder."""
    x = torch.from_numpy(np.ascontiguousarray(frames)).float().permute(0, 3, 1, 2)
    return x / 255.0 * 2.0 - 1.0


# --------------------------------------------------------------------------- distributed
@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1

    def barrier(self) -> None:
        if self.world > 1:
            torch.distributed.barrier()


def current_dist() -> Dist:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return Dist(torch.distributed.get_rank(), torch.distributed.get_world_size())
    return Dist()


@contextlib.contextmanager
def torchrun_process_group():
    """Initialise a gloo process group when started by torchrun (WORLD_SIZE > 1), tear it down after."""
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world <= 1 or not torch.distributed.is_available() or torch.distributed.is_initialized():
        yield
        return
    torch.distributed.init_process_group("gloo")
    try:
        yield
    finally:
        torch.distributed.destroy_process_group()


# --------------------------------------------------------------------------- writing
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
        return (f"feature cache {self.store}/{self.group}: {self.n_frames} frames, {self.key.model} "
                f"at {self.key.image_size}px, {state} ({self.computed} frames encoded now)")


def build_encoder(key: CacheKey, source: Source, checkpoint_path: Path | None, device, low_dim=None, **options):
    """A frozen SAM2ObsEncoder with the weights ``key`` names (seed 0 for random init), for the
    rgb keys of ``source`` (plus ``low_dim`` ``{key: shape}``); ``options`` go to the encoder."""
    from dp_sam2 import SAM2ObsEncoder
    from dp_sam2.resolve import ENV_ALLOW_MISSING

    shape_meta = {"obs": {k: {"shape": [3, source.shapes[k][0], source.shapes[k][1]], "type": "rgb"}
                          for k in source.keys}}
    shape_meta["obs"].update({k: {"shape": list(v), "type": "low_dim"} for k, v in (low_dim or {}).items()})
    kwargs = dict(model_cfg=key.model, image_size=key.image_size, pooling="mean", freeze=True, precision=key.precision,
                  crop_shape=list(key.crop_shape) if key.crop_shape else None,
                  resize_shape=list(key.resize_shape) if key.resize_shape else None)
    kwargs.update(options)
    if checkpoint_path is not None:
        encoder = SAM2ObsEncoder(shape_meta, checkpoint=str(checkpoint_path), **kwargs)
    else:
        torch.manual_seed(0)  # "random-init" means these weights, reproducibly
        old = os.environ.get(ENV_ALLOW_MISSING)
        os.environ[ENV_ALLOW_MISSING] = "1"
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                encoder = SAM2ObsEncoder(shape_meta, checkpoint="dp_sam2-random-init.pt", **kwargs)
        finally:
            if old is None:
                os.environ.pop(ENV_ALLOW_MISSING, None)
            else:
                os.environ[ENV_ALLOW_MISSING] = old
    from dp_sam2.encoders.sam2.build import resolve_device

    return encoder.to(resolve_device(device)).eval()


def _prepare_group(store, key: CacheKey, source: Source, feature_shape, overwrite: bool):
    """Create (or check and reopen) the cache group; only rank 0 calls this."""
    root = _open_group(store, "a")
    top = _require_group(root, GROUP)
    if overwrite and _has(top, key.name):
        _delete(top, key.name)
    group = _require_group(top, key.name)
    wanted = {**key.as_dict(), "n_frames": source.n_frames, "episode_ends_sha256": source.episode_ends_sha256,
              "feature_shape": list(feature_shape), "dtype": "float16"}
    attrs = dict(group.attrs)
    if attrs:
        _check_attrs(attrs, wanted, f"{store}/{GROUP}/{key.name}", hint="pass --overwrite to recompute it")
    else:
        group.attrs.update({**wanted, "complete": False, "keys": list(source.keys)})
    feats, done = _require_group(group, "features"), _require_group(group, "done")
    block = max(1, min(DONE_BLOCK, source.n_frames // 16))  # small buffers: still spread over ranks
    for k in source.keys:
        if not _has(feats, k):
            _create_array(feats, k, (source.n_frames, *feature_shape), (1, *feature_shape), "float16", 0)
            _create_array(done, k, (source.n_frames,), (block,), "bool", False)
    group.attrs["keys"] = sorted(set(group.attrs.get("keys", [])) | set(source.keys))
    return group


_COMPARED = ("model", "checkpoint_sha256", "image_size", "crop_shape", "resize_shape", "precision", "format_version",
             "n_frames", "episode_ends_sha256", "feature_shape")


def _check_attrs(found: dict, wanted: dict, where: str, hint: str) -> None:
    diffs = [f"{name}: cache has {found.get(name)!r}, wanted {wanted.get(name)!r}"
             for name in _COMPARED if name in wanted and found.get(name) != wanted.get(name)]
    if diffs:
        raise ValueError(f"stale SAM 2 feature cache {where}: " + "; ".join(diffs) + f" ({hint})")


def cache_features(zarr_path, obs_encoder: str = "sam2_large", checkpoint=None, image_size=None, *,
                   keys=None, out=None, crop_shape=None, resize_shape=None, batch_size: int = 16,
                   device=None, overwrite: bool = False, progress: bool = True,
                   random_weights: bool = False, precision: str = "fp32") -> CacheResult:
    """Encode every frame of the replay buffer's rgb arrays into the cache (see the module doc).
    Frames already marked done are skipped (resume); under torch.distributed each rank takes its
    share of the frames."""
    from tqdm.auto import tqdm

    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    zarr_path = Path(zarr_path)
    if not zarr_path.exists():
        raise FileNotFoundError(f"replay buffer not found: {zarr_path}")
    store = Path(out) if out is not None else zarr_path
    dist = current_dist()
    source = describe_source(_open_group(zarr_path, "r"), keys)
    key, ckpt = make_key(obs_encoder, checkpoint, image_size, crop_shape, resize_shape, random_weights, precision)
    if ckpt is None and dist.rank == 0:
        warnings.warn(f"no {key.model} checkpoint found: caching features of RANDOM weights (seed 0); "
                      f"they are only good for tests. Get the real ones with `dp-sam2 download {key.model}`.")
    encoder = build_encoder(key, source, ckpt, device)
    if dist.rank == 0:
        _prepare_group(store, key, source, encoder.feature_shape, overwrite)
    dist.barrier()
    group = _open_group(store, "a")[GROUP][key.name]
    if dist.rank != 0:
        _check_attrs(dict(group.attrs), {**key.as_dict(), "n_frames": source.n_frames}, str(store), "")
    data = _open_group(zarr_path, "r")["data"]
    computed = 0
    for k in source.keys:
        todo = _pending_frames(group["done"][k], dist)
        bar = tqdm(total=len(todo), desc=f"{key.name}/{k}", unit="frame",
                   disable=not progress or dist.rank != 0)
        for start in range(0, len(todo), batch_size):
            idx = todo[start: start + batch_size]
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
        feats_arr[a:b] = out[off: off + (b - a)]
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
        group = _open_group(self.store, "r")[self.group]
        return {k: group["features"][k] for k in self.keys}


def open_cache(store, key: CacheKey, n_frames: int | None = None, checkpoint=None) -> CacheHandle:
    """Open the cache of ``key`` in ``store``; a missing, stale or incomplete cache is refused
    with an error that says what was found and the command that makes the right one."""
    store = Path(store)
    cmd = (f"dp-sam2 cache-features --zarr <replay.zarr> --obs-encoder {key.model} --image-size {key.image_size}"
           + (f" --checkpoint {checkpoint}" if checkpoint else "")
           + (" --random-weights" if key.checkpoint_sha256 == RANDOM_INIT else "")
           + (f" --crop-shape {key.crop_shape[0]},{key.crop_shape[1]}" if key.crop_shape else "")
           + (f" --resize-shape {key.resize_shape[0]},{key.resize_shape[1]}" if key.resize_shape else "")
           + (f" --precision {key.precision}" if key.precision != "fp32" else "")
           + ("" if store.suffix == ".zarr" else f" --out {store}"))
    root = _open_group(store, "r")
    if not _has(root, GROUP) or not _has(root[GROUP], key.name):
        others = _member_names(root[GROUP]) if _has(root, GROUP) else []
        stale = ""
        if others:
            stale = (" It holds caches for other settings (stale for this config): "
                     + "; ".join(f"{o}: {_summary(dict(root[GROUP][o].attrs))}" for o in others) + ".")
        raise ValueError(f"no SAM 2 feature cache for {key.name} ({_summary(key.as_dict())}) in {store}."
                         f"{stale} Make it with `{cmd}`.")
    group = root[GROUP][key.name]
    attrs = dict(group.attrs)
    wanted = key.as_dict() | ({"n_frames": n_frames} if n_frames is not None else {})
    _check_attrs(attrs, wanted, f"{store}/{GROUP}/{key.name}", hint=f"recompute it with `{cmd} --overwrite`")
    if not attrs.get("complete"):
        raise ValueError(f"the SAM 2 feature cache {store}/{GROUP}/{key.name} is incomplete (interrupted?); "
                         f"run `{cmd}` again to finish it")
    return CacheHandle(str(store), f"{GROUP}/{key.name}", key, tuple(attrs.get("keys", [])),
                       int(attrs["n_frames"]), tuple(attrs["feature_shape"]))


def _summary(attrs: dict) -> str:
    digest = str(attrs.get("checkpoint_sha256", "?"))
    return (f"model {attrs.get('model')}, checkpoint {digest[:12]}, image_size {attrs.get('image_size')}, "
            f"crop {attrs.get('crop_shape')}, resize {attrs.get('resize_shape')}, precision {attrs.get('precision')}")


# --------------------------------------------------------------------------- CLI entry
def cache_features_cli(args) -> str | None:
    with torchrun_process_group():
        dist = current_dist()
        device = args.device
        if device is None and dist.world > 1 and torch.cuda.is_available():
            device = f"cuda:{int(os.environ.get('LOCAL_RANK', dist.rank))}"
        result = cache_features(
            args.zarr, args.obs_encoder, args.checkpoint, args.image_size, keys=args.keys, out=args.out,
            crop_shape=args.crop_shape, resize_shape=args.resize_shape, batch_size=args.batch_size,
            device=device, overwrite=args.overwrite, progress=not args.no_progress,
            random_weights=args.random_weights, precision=args.precision)
    if dist.rank != 0:
        return f"rank {dist.rank}: encoded {result.computed} frames"
    return str(result) + (f" [rank 0 of {dist.world}]" if dist.world > 1 else "")


# --------------------------------------------------------------------------- the dataset wrapper
def _dp_base():
    """DP's ``BaseImageDataset`` when Diffusion Policy is importable (its workspaces assert
    ``isinstance(dataset, BaseImageDataset)``), else ``torch.utils.data.Dataset``."""
    try:
        from diffusion_policy.dataset.base_dataset import BaseImageDataset
    except ImportError:
        return torch.utils.data.Dataset
    return BaseImageDataset


_CLASSES: dict = {}


def _dataset_class():
    base = _dp_base()
    if base not in _CLASSES:
        _CLASSES[base] = type("CachedFeatureDataset", (_CachedFeatures, base), {"__module__": __name__})
    return _CLASSES[base]


def _rebuild(state: dict):
    obj = _dataset_class().__new__(_dataset_class())
    obj.__dict__.update(state)
    return obj


def identity_normalizer():
    """DP's identity normaliser (scale 1, offset 0) for a feature key."""
    try:
        from diffusion_policy.common.normalize_util import get_identity_normalizer_from_stat
    except ImportError as err:
        raise ImportError("CachedFeatureDataset.get_normalizer needs Diffusion Policy (diffusion_policy) "
                          f"importable: {err}") from err
    one = np.ones(1, dtype=np.float32)
    stat = {"min": -one, "max": one, "mean": 0 * one, "std": one}
    return get_identity_normalizer_from_stat(stat)


class _CachedFeatures:
    """The behaviour of :func:`CachedFeatureDataset` (mixed into DP's BaseImageDataset)."""

    def _setup(self, inner, handle: CacheHandle, key_map: dict, n_obs_steps: int | None) -> None:
        self.inner = inner
        self.handle = handle
        self.key_map = dict(key_map)
        self.n_obs_steps = n_obs_steps
        self._arrays = None

    def __reduce__(self):  # picklable for DataLoader workers (spawn/forkserver)
        state = dict(self.__dict__)
        state["_arrays"] = None
        return (_rebuild, (state,))

    def __getattr__(self, name):  # replay_buffer, sampler, horizon ... of the wrapped dataset
        if name.startswith("__") or "inner" not in self.__dict__:
            raise AttributeError(name)
        return getattr(self.__dict__["inner"], name)

    def __len__(self) -> int:
        return len(self.inner)

    def frame_indices(self, idx: int) -> np.ndarray:
        """Replay-buffer frames of sample ``idx`` step by step, padding included (DP's
        ``SequenceSampler``: rows ``(buffer_start, buffer_end, sample_start, sample_end)``)."""
        sampler = getattr(self.inner, "sampler", None)
        indices = getattr(sampler, "indices", None)
        if indices is None:
            raise TypeError(f"CachedFeatureDataset needs a DP dataset with a SequenceSampler "
                            f"(.sampler.indices); {type(self.inner).__name__} has none")
        b0, b1, s0, s1 = (int(v) for v in indices[idx])
        steps = np.arange(int(getattr(sampler, "sequence_length", s1)))
        return b0 + np.clip(steps - s0, 0, (b1 - b0) - 1)

    def __getitem__(self, idx):
        data = self.inner[idx]
        if self._arrays is None:
            self._arrays = self.handle.arrays()
        frames = self.frame_indices(idx)
        for obs_key, cache_key in self.key_map.items():
            n = len(data["obs"][obs_key])
            if self.n_obs_steps is not None:
                n = min(n, self.n_obs_steps)
            want = frames[:n]
            lo, hi = int(want.min()), int(want.max()) + 1
            block = np.asarray(self._arrays[cache_key][lo:hi])
            data["obs"][obs_key] = torch.from_numpy(block[want - lo])
        return data

    def get_normalizer(self, *args, **kwargs):
        normalizer = self.inner.get_normalizer(*args, **kwargs)
        for obs_key in self.key_map:
            normalizer[obs_key] = identity_normalizer()
        return normalizer

    def get_validation_dataset(self):
        val = _rebuild(dict(self.__dict__, _arrays=None))
        val.inner = self.inner.get_validation_dataset()
        return val

    def get_all_actions(self):
        return self.inner.get_all_actions()


def _rgb_obs_keys(inner, shape_meta) -> list[str]:
    if shape_meta is not None:
        try:
            from omegaconf import OmegaConf

            shape_meta = OmegaConf.to_container(shape_meta, resolve=True) if OmegaConf.is_config(shape_meta) else shape_meta
        except ImportError:  # pragma: no cover
            pass
        return sorted(k for k, v in shape_meta["obs"].items() if v.get("type", "low_dim") == "rgb")
    if len(inner) == 0:
        raise ValueError("the wrapped dataset is empty; pass shape_meta to name its rgb keys")
    obs = inner[0]["obs"]
    return sorted(k for k, v in obs.items() if getattr(v, "ndim", 0) == 4 and v.shape[1] == 3)


def _key_map(obs_keys: list[str], cache_keys: tuple[str, ...], rgb_keys) -> dict:
    if rgb_keys:
        mapping = dict(rgb_keys)
    elif all(k in cache_keys for k in obs_keys):
        mapping = {k: k for k in obs_keys}
    elif len(obs_keys) == 1 and len(cache_keys) == 1:
        mapping = {obs_keys[0]: cache_keys[0]}  # e.g. Push-T: obs "image" <- data/img
    else:
        raise ValueError(f"cannot tell which cached array serves which rgb obs key: obs keys {obs_keys}, "
                         f"cached arrays {list(cache_keys)}; pass rgb_keys={{obs_key: data_key}}")
    missing = [v for v in mapping.values() if v not in cache_keys]
    if missing:
        raise ValueError(f"rgb_keys names arrays {missing} that the cache does not hold (it has {list(cache_keys)})")
    return mapping


def CachedFeatureDataset(dataset, cache_path, model_cfg: str = "sam2_large", checkpoint=None,
                         image_size=None, crop_shape=None, resize_shape=None, input_range=None,
                         shape_meta=None, rgb_keys=None, n_obs_steps=None, precision=None, **ignored):
    """A Diffusion Policy dataset whose rgb obs are cached SAM 2 features (``_target_`` for DP's
    ``task.dataset``; DP's ``train.py`` stays unchanged).

    ``dataset``: DP's own dataset (Hydra instantiates its nested ``_target_`` first), e.g.
    ``PushTImageDataset``; its ``SequenceSampler`` decides which frames each sample holds (padding
    included) and the rgb obs are replaced by the cached ``(T, 256, h, w)`` float16 features of
    those frames (only the first ``n_obs_steps`` when given: the policy uses no more).
    ``cache_path``: the zarr store given to ``dp-sam2 cache-features`` (``--out``, or the replay
    zarr). ``model_cfg``, ``checkpoint``, ``image_size``, ``crop_shape``, ``resize_shape``,
    ``precision``: the policy's obs-encoder settings (interpolate them from ``policy.obs_encoder``); they form the
    cache key and a cache made with other settings is refused. ``get_normalizer()`` is the wrapped
    dataset's with an identity normaliser for the feature keys. So at eval, when live camera
    images go through that identity normaliser, the obs encoder must take [0, 1] images:
    ``input_range`` (interpolate ``policy.obs_encoder.input_range``) must be ``[0, 1]``.
    ``rgb_keys``: ``{obs_key: data_key}`` when the names differ and cannot be guessed.
    """
    from dp_sam2.encoders.obs_encoder import parse_input_range

    if input_range is None:
        warnings.warn("CachedFeatureDataset: set policy.obs_encoder.input_range to [0, 1] (the feature keys get "
                      "an identity normaliser, so images at eval arrive in [0, 1]) and pass "
                      "input_range: ${policy.obs_encoder.input_range} here so it is checked", stacklevel=2)
    elif parse_input_range(input_range) != (0.0, 1.0):
        raise ValueError(f"CachedFeatureDataset gives the image keys an identity normaliser, so the policy's obs "
                         f"encoder must take [0, 1] images at eval: set policy.obs_encoder.input_range: [0, 1] "
                         f"(got {input_range!r}); the cached features do not depend on it")
    key, _ = make_key(model_cfg, checkpoint, image_size, crop_shape, resize_shape, precision=precision)
    replay = getattr(dataset, "replay_buffer", None)
    n_frames = getattr(replay, "n_steps", None)
    handle = open_cache(cache_path, key, int(n_frames) if n_frames is not None else None, checkpoint)
    mapping = _key_map(_rgb_obs_keys(dataset, shape_meta), handle.keys, rgb_keys)
    obj = _dataset_class().__new__(_dataset_class())
    obj._setup(dataset, handle, mapping, int(n_obs_steps) if n_obs_steps is not None else None)
    return obj

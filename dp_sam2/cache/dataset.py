"""``CachedFeatureDataset``: a Diffusion Policy dataset whose rgb obs are cached SAM 2 features."""

from __future__ import annotations

import warnings

import numpy as np
import torch

from dp_sam2.dp_classes import dp_subclass

from .key import make_key
from .writer import CacheHandle, open_cache


# --------------------------------------------------------------------------- the dataset wrapper
def _dataset_class() -> type:
    """:class:`_CachedFeatures` on DP's ``BaseImageDataset`` when Diffusion Policy is importable (its
    workspaces assert ``isinstance(dataset, BaseImageDataset)``), else on ``torch.utils.data.Dataset``.
    Pickled through :func:`_rebuild` (the module's ``CachedFeatureDataset`` is the factory function)."""
    return dp_subclass(
        _CachedFeatures,
        "diffusion_policy.dataset.base_dataset:BaseImageDataset",
        name="CachedFeatureDataset",
        module=__name__,
        fallback=torch.utils.data.Dataset,
    )


def _rebuild(state: dict):
    obj = _dataset_class().__new__(_dataset_class())
    obj.__dict__.update(state)
    return obj


def identity_normalizer():
    """DP's identity normaliser (scale 1, offset 0) for a feature key."""
    try:
        from diffusion_policy.common.normalize_util import get_identity_normalizer_from_stat
    except ImportError as err:
        raise ImportError(
            f"CachedFeatureDataset.get_normalizer needs Diffusion Policy (diffusion_policy) importable: {err}"
        ) from err
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
            raise TypeError(
                f"CachedFeatureDataset needs a DP dataset with a SequenceSampler "
                f"(.sampler.indices); {type(self.inner).__name__} has none"
            )
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

            if OmegaConf.is_config(shape_meta):
                shape_meta = OmegaConf.to_container(shape_meta, resolve=True)
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
        raise ValueError(
            f"cannot tell which cached array serves which rgb obs key: obs keys {obs_keys}, "
            f"cached arrays {list(cache_keys)}; pass rgb_keys={{obs_key: data_key}}"
        )
    missing = [v for v in mapping.values() if v not in cache_keys]
    if missing:
        raise ValueError(f"rgb_keys names arrays {missing} that the cache does not hold (it has {list(cache_keys)})")
    return mapping


def CachedFeatureDataset(
    dataset,
    cache_path,
    model_cfg: str = "sam2_large",
    checkpoint=None,
    image_size=None,
    crop_shape=None,
    resize_shape=None,
    input_range=None,
    shape_meta=None,
    rgb_keys=None,
    n_obs_steps=None,
    precision=None,
    **ignored,
):
    """A Diffusion Policy dataset whose rgb obs are cached SAM 2 features (``_target_`` for DP's
    ``task.dataset``; DP's ``train.py`` stays unchanged).

    ``dataset``: DP's own dataset (e.g. ``PushTImageDataset``); its ``SequenceSampler`` picks each sample's frames
    (padding included), whose rgb obs become the cached ``(T, 256, h, w)`` float16 features (only the first
    ``n_obs_steps`` when given). ``cache_path``: the zarr store given to ``dp-sam2 cache-features``.
    ``model_cfg``, ``checkpoint``, ``image_size``, ``crop_shape``, ``resize_shape``, ``precision``: the
    ``policy.obs_encoder`` settings; they form the cache key, and a cache made with others is refused.
    ``get_normalizer()`` is the wrapped one with identity for the feature keys, so live eval images reach the
    encoder in [0, 1]: ``input_range`` must be ``[0, 1]``. ``rgb_keys``: ``{obs_key: data_key}`` if names differ.
    """
    from dp_sam2.encoders.obs.inputs import parse_input_range

    if input_range is None:
        warnings.warn(
            "CachedFeatureDataset: set policy.obs_encoder.input_range to [0, 1] (the feature keys get "
            "an identity normaliser, so images at eval arrive in [0, 1]) and pass "
            "input_range: ${policy.obs_encoder.input_range} here so it is checked",
            stacklevel=2,
        )
    elif parse_input_range(input_range) != (0.0, 1.0):
        raise ValueError(
            f"CachedFeatureDataset gives the image keys an identity normaliser, so the policy's obs "
            f"encoder must take [0, 1] images at eval: set policy.obs_encoder.input_range: [0, 1] "
            f"(got {input_range!r}); the cached features do not depend on it"
        )
    key, _ = make_key(model_cfg, checkpoint, image_size, crop_shape, resize_shape, precision=precision)
    replay = getattr(dataset, "replay_buffer", None)
    n_frames = getattr(replay, "n_steps", None)
    handle = open_cache(cache_path, key, int(n_frames) if n_frames is not None else None, checkpoint)
    mapping = _key_map(_rgb_obs_keys(dataset, shape_meta), handle.keys, rgb_keys)
    obj = _dataset_class().__new__(_dataset_class())
    obj._setup(dataset, handle, mapping, int(n_obs_steps) if n_obs_steps is not None else None)
    return obj

"""The frozen-feature cache: SAM 2 features of a DP replay buffer computed once (``writer``), the
key that says what they depend on (``key``), zarr access (``store``) and the DP dataset that serves
them (``dataset``); ranks under torchrun come from :mod:`dp_sam2.dist`.

``dp_sam2.cache.CachedFeatureDataset`` is the ``_target_`` saved in DP configs: it stays here.
"""

from .dataset import CachedFeatureDataset, identity_normalizer
from .key import RANDOM_INIT, CacheKey, file_sha256, make_key, resolve_weights
from .store import Source, describe_source, to_model_input, write_array
from .writer import CacheHandle, CacheResult, build_encoder, cache_features, open_cache

__all__ = [
    "CacheHandle",
    "CacheKey",
    "CacheResult",
    "CachedFeatureDataset",
    "RANDOM_INIT",
    "Source",
    "build_encoder",
    "cache_features",
    "describe_source",
    "file_sha256",
    "identity_normalizer",
    "make_key",
    "open_cache",
    "resolve_weights",
    "to_model_input",
    "write_array",
]

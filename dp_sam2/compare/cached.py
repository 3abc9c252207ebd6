"""The task's own dataset wrapped by :func:`dp_sam2.cache.CachedFeatureDataset`, for frozen SAM 2 cells.

A command-line override cannot move ``task.dataset`` one level down (into the wrapper's ``dataset``
argument), so the comparison swaps its ``_target_`` for :func:`CachedTaskDataset` and adds two keys:
``inner_target`` (the task's dataset class) and ``cache`` (the wrapper's arguments). Every other key of
``task.dataset`` is the task's, unchanged. This path is saved in DP checkpoints: keep it importable.
"""

from __future__ import annotations


def CachedTaskDataset(inner_target: str, cache, **inner_kwargs):
    """``CachedFeatureDataset(dataset=<inner_target>(**inner_kwargs), **cache)``."""
    import importlib

    from dp_sam2.cache import CachedFeatureDataset

    if not isinstance(inner_target, str) or not inner_target:
        raise TypeError(f"inner_target must be the task dataset's dotted class path, got {inner_target!r}")
    if cache is None or not hasattr(cache, "keys") or "cache_path" not in cache:
        raise ValueError(
            f"cache must be a mapping with at least cache_path (CachedFeatureDataset's args), got {cache!r}"
        )
    module, _, name = inner_target.rpartition(".")
    inner = getattr(importlib.import_module(module), name)(**inner_kwargs)
    return CachedFeatureDataset(dataset=inner, **dict(cache))

"""MetaWorld tasks for Diffusion Policy: expert demonstrations, datasets and a lock-step env runner.

    dp-sam2 metaworld-demos --task reach --episodes 10 --image-size 128 --camera corner2 --seed 0 \
        --out data/metaworld/reach.zarr
    python train.py --config-name=train_diffusion_unet_image_workspace task=metaworld ...

The classes DP's workspaces instantiate (``_target_`` in ``dp_sam2/configs/task/metaworld*.yaml``)
derive from DP's base classes and are made on first access (``dp_sam2.dp_classes.dp_subclass``),
so importing this package imports neither Diffusion Policy nor MetaWorld (an optional extra:
``pip install "dp-sam2[metaworld]"``).

    MetaWorldImageDataset   DP's BaseImageDataset    obs: image (3, S, S), agent_pos (4,)
    MetaWorldLowdimDataset  DP's BaseLowdimDataset   obs: the 39-float state
    MetaWorldImageRunner    DP's BaseImageRunner
    MetaWorldLowdimRunner   DP's BaseLowdimRunner
"""

from __future__ import annotations

_CLASSES = {
    "MetaWorldImageDataset": (
        "dp_sam2.metaworld.dataset:MetaWorldImageDatasetMixin",
        "diffusion_policy.dataset.base_dataset:BaseImageDataset",
    ),
    "MetaWorldLowdimDataset": (
        "dp_sam2.metaworld.dataset:MetaWorldLowdimDatasetMixin",
        "diffusion_policy.dataset.base_dataset:BaseLowdimDataset",
    ),
    "MetaWorldImageRunner": (
        "dp_sam2.metaworld.runner:MetaWorldImageRunnerMixin",
        "diffusion_policy.env_runner.base_image_runner:BaseImageRunner",
    ),
    "MetaWorldLowdimRunner": (
        "dp_sam2.metaworld.runner:MetaWorldLowdimRunnerMixin",
        "diffusion_policy.env_runner.base_lowdim_runner:BaseLowdimRunner",
    ),
}

__all__ = list(_CLASSES)


def __getattr__(name: str):
    if name not in _CLASSES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    from dp_sam2.dp_classes import dp_subclass

    mixin_path, dp_base = _CLASSES[name]
    module_name, _, attr = mixin_path.partition(":")
    mixin = getattr(importlib.import_module(module_name), attr)
    return dp_subclass(mixin, dp_base, name=name, module=__name__)

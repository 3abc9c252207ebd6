"""Pre/post-processors of ``sam2_diffusion``: LeRobot's default pipeline (rename, normalise, batch,
device; unnormalise the actions), with the cameras always normalised by ImageNet's mean/std,
which is SAM 2's pixel normalisation (so ``--dataset.use_imagenet_stats=false`` cannot hand SAM 2
images normalised by the dataset's own statistics)."""

from __future__ import annotations

from typing import Any

import torch
from lerobot.processor import PolicyAction, PolicyProcessorPipeline, make_default_pre_post_processors
from lerobot.utils.constants import IMAGENET_STATS

from .configuration_sam2_diffusion import SAM2DiffusionConfig


def sam2_camera_stats(config: SAM2DiffusionConfig, dataset_stats: dict | None) -> dict | None:
    """``dataset_stats`` with ImageNet's mean/std (shape (3, 1, 1)) for every camera."""
    if dataset_stats is None:
        return None
    stats = {key: dict(value) for key, value in dataset_stats.items()}
    for key in config.image_features:
        stats.setdefault(key, {})
        for name, value in IMAGENET_STATS.items():
            stats[key][name] = torch.tensor(value, dtype=torch.float32)
    return stats


def make_sam2_diffusion_pre_post_processors(
    config: SAM2DiffusionConfig,
    dataset_stats: dict[str, dict[str, torch.Tensor]] | None = None,
) -> tuple[
    PolicyProcessorPipeline[dict[str, Any], dict[str, Any]], PolicyProcessorPipeline[PolicyAction, PolicyAction]
]:
    return make_default_pre_post_processors(config, sam2_camera_stats(config, dataset_stats))

"""A start-up guard: refuse to be built into a policy that would ignore the encoder."""
from __future__ import annotations

import inspect


def _check_parent_accepts_obs_encoder() -> None:
    """Best effort: when Hydra is instantiating a policy whose constructor has no ``obs_encoder``
    argument (DP's hybrid policies build robomimic encoders and swallow ``**kwargs``), say so
    instead of silently training the other encoder."""
    frame = inspect.currentframe()
    try:
        for _ in range(40):
            frame = frame.f_back if frame is not None else None
            if frame is None:
                return
            if "hydra" not in frame.f_code.co_filename:
                continue
            node = frame.f_locals.get("node")
            target = _safe_target(node)
            if target is None or "obs_encoder" not in node:
                continue
            _complain_about_parent(target)
            return
    finally:
        del frame


def _safe_target(node):
    try:
        from omegaconf import DictConfig

        if isinstance(node, DictConfig) and "_target_" in node:
            return str(node["_target_"])
    except Exception:  # noqa: BLE001 - a guard must never break a legitimate build
        return None
    return None


def _complain_about_parent(target: str) -> None:
    try:
        from hydra.utils import get_class

        cls = get_class(target)
        params = inspect.signature(cls.__init__).parameters
    except Exception:  # noqa: BLE001
        return
    if "obs_encoder" in params:
        return
    raise ValueError(
        f"policy.obs_encoder is set to SAM2ObsEncoder, but the policy {target} takes no obs_encoder "
        "argument and would ignore it (Diffusion Policy's hybrid workspaces build their own robomimic "
        "encoder inside the policy). Use a workspace whose policy is DiffusionUnetImagePolicy, e.g. "
        "--config-name=train_diffusion_unet_sam2_image_workspace, or DP's "
        "train_diffusion_unet_image_workspace (or ..._real_image_/..._image_pretrained_) with "
        "+obs_encoder@policy.obs_encoder=<model>."
    )

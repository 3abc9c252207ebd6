"""A start-up guard: refuse to be built into a policy that would ignore the encoder.

DP's hybrid policies (``DiffusionUnetHybridImagePolicy``, ``DiffusionTransformerHybridImagePolicy``)
take no ``obs_encoder`` and swallow unknown kwargs, so ``+obs_encoder@policy.obs_encoder=...``
there would train robomimic's ResNet. The selection that works in every image workspace is
``+sam2_policy@policy=<model>``: it also replaces ``policy._target_`` with
``dp_sam2.policies.sam2_diffusion_policy``, which takes ``obs_encoder`` and passes this check.
"""

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
        from hydra.utils import get_method

        built = get_method(target)  # a class or a factory function (dp_sam2.policies.sam2_diffusion_policy)
        params = inspect.signature(built.__init__ if isinstance(built, type) else built).parameters
    except Exception:  # noqa: BLE001
        return
    if "obs_encoder" in params:
        return
    raise ValueError(
        f"policy.obs_encoder is set to SAM2ObsEncoder, but the policy {target} takes no obs_encoder "
        "argument and would ignore it (Diffusion Policy's hybrid workspaces build their own robomimic "
        "encoder inside the policy). Select SAM 2 with +sam2_policy@policy=<model> instead (e.g. "
        "+sam2_policy@policy=sam2_large): it works in DP's hybrid and image workspaces alike and also "
        "replaces the policy with dp_sam2's, which builds no robomimic model. In a defaults list, put "
        "`- sam2_policy@policy: <model>` after _self_ (before it, DP's policy._target_ wins and this error "
        "comes back). Or use a workspace whose policy is DiffusionUnetImagePolicy with "
        "+obs_encoder@policy.obs_encoder=<model>."
    )

"""Diffusion Policy's image policies with SAM 2 as the encoder, robomimic's left out.

``sam2_diffusion_policy`` is the ``policy._target_`` that the ``sam2_policy`` Hydra group
(``+sam2_policy@policy=sam2_large``) puts in any of DP's image training configs. From the kwargs of the DP
policy config it replaced (:mod:`dp_sam2.policies.kwargs` tells them apart) it builds
:class:`SAM2DiffusionTransformerHybridImagePolicy` (``n_layer``, ``n_emb``, ... present),
:class:`SAM2DiffusionUnetHybridImagePolicy` (``crop_shape``, ``obs_encoder_group_norm`` or ``eval_fixed_crop``
present; a ``DiffusionUnetImagePolicy``) or DP's ``DiffusionUnetImagePolicy`` itself, and logs (INFO) which,
and what the hybrid kwargs became (also in the policy's ``image_args``). No ``noise_scheduler`` (IBC,
robomimic), a stray kwarg DP would forward to ``noise_scheduler.step``, or a crop set twice differently fails
at startup. Nothing here imports Diffusion Policy (or robomimic) until a policy is built.
"""

from __future__ import annotations

import logging

from .kwargs import (
    TRANSFORMER_HYBRID,
    UNET_ARGS,
    UNET_HYBRID,
    UNET_IMAGE,
    check_required,
    check_step_kwargs,
    policy_kind,
)

__all__ = [
    "sam2_diffusion_policy",
    "policy_class",
    "SAM2DiffusionUnetHybridImagePolicy",
    "SAM2DiffusionTransformerHybridImagePolicy",
]

log = logging.getLogger(__name__)


def policy_class(kind: str) -> type:
    """The class built for ``kind`` (see :func:`dp_sam2.policies.kwargs.policy_kind`); imports DP."""
    try:
        if kind == TRANSFORMER_HYBRID:
            from .transformer import transformer_hybrid_class

            return transformer_hybrid_class()
        if kind == UNET_HYBRID:
            from .unet import unet_hybrid_class

            return unet_hybrid_class()
        if kind == UNET_IMAGE:
            from diffusion_policy.policy.diffusion_unet_image_policy import DiffusionUnetImagePolicy

            return DiffusionUnetImagePolicy
    except ImportError as err:
        raise ImportError(
            f"dp_sam2's SAM 2 policies derive from Diffusion Policy's classes, which did not import: {err}. "
            "Install Diffusion Policy (https://github.com/real-stanford/diffusion_policy; its hybrid policy "
            "modules also need robomimic: pip install --no-deps robomimic==0.2.0)"
        ) from err
    raise ValueError(f"unknown policy kind {kind!r}; expected one of {[UNET_IMAGE, UNET_HYBRID, TRANSFORMER_HYBRID]}")


def sam2_diffusion_policy(obs_encoder=None, **kwargs):
    """Build the DP diffusion image policy that ``kwargs`` configure, with SAM 2 as ``obs_encoder``."""
    kwargs["obs_encoder"] = obs_encoder
    kind = policy_kind(kwargs)
    check_required(kwargs)
    cls = policy_class(kind)
    if kind == UNET_IMAGE:
        check_step_kwargs(kind, {k: v for k, v in kwargs.items() if k not in UNET_ARGS}, kwargs["noise_scheduler"])
        policy = cls(**kwargs)
        log.info(
            "dp_sam2: built DP's DiffusionUnetImagePolicy with obs encoder %s", type(kwargs["obs_encoder"]).__name__
        )
        return policy
    return cls(**kwargs)


def __getattr__(name: str):
    if name == "SAM2DiffusionUnetHybridImagePolicy":
        return policy_class(UNET_HYBRID)
    if name == "SAM2DiffusionTransformerHybridImagePolicy":
        return policy_class(TRANSFORMER_HYBRID)
    raise AttributeError(f"module 'dp_sam2.policies' has no attribute {name!r}")

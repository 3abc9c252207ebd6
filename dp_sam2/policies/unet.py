"""``SAM2DiffusionUnetHybridImagePolicy``: DP's UNet hybrid policy with SAM 2 instead of robomimic.

After ``__init__`` every method of DP's ``DiffusionUnetHybridImagePolicy`` is ``DiffusionUnetImagePolicy``'s
(``conditional_sample``, ``predict_action``, ``set_normalizer``, ``compute_loss``), so this class *is* a
``DiffusionUnetImagePolicy`` (a subclass adding nothing after ``__init__``): it takes the hybrid kwargs, turns
the image kwargs into encoder settings (:mod:`dp_sam2.policies.image_args`) and hands the rest, with the
encoder, to ``DiffusionUnetImagePolicy.__init__``. No robomimic model is built; the state dict is
``DiffusionUnetImagePolicy``'s: ``obs_encoder.*`` (SAM 2, official ``trunk.`` names under
``obs_encoder.backbone.``), ``model.*`` (the ConditionalUnet1D), ``normalizer.*``. Created on first use (DP is
imported then, not with dp_sam2); ``dp_sam2.policies.SAM2DiffusionUnetHybridImagePolicy`` resolves it.
"""

from __future__ import annotations

import logging

from dp_sam2.dp_classes import dp_subclass

from .image_args import apply_hybrid_image_args
from .kwargs import UNET_HYBRID, check_step_kwargs

log = logging.getLogger(__name__)
NAME = "SAM2DiffusionUnetHybridImagePolicy"


class _UnetHybridInit:
    """The ``__init__`` of SAM2DiffusionUnetHybridImagePolicy (mixed in before DP's class)."""

    def __init__(
        self,
        shape_meta: dict,
        noise_scheduler,
        obs_encoder,
        horizon,
        n_action_steps,
        n_obs_steps,
        num_inference_steps=None,
        obs_as_global_cond=True,
        crop_shape=(76, 76),
        diffusion_step_embed_dim=256,
        down_dims=(256, 512, 1024),
        kernel_size=5,
        n_groups=8,
        cond_predict_scale=True,
        obs_encoder_group_norm=False,
        eval_fixed_crop=False,
        **kwargs,
    ):
        # the defaults above are DiffusionUnetHybridImagePolicy's
        check_step_kwargs(UNET_HYBRID, kwargs, noise_scheduler)
        image_args = apply_hybrid_image_args(obs_encoder, crop_shape, obs_encoder_group_norm, eval_fixed_crop)
        super().__init__(
            shape_meta,
            noise_scheduler,
            obs_encoder,
            horizon,
            n_action_steps,
            n_obs_steps,
            num_inference_steps=num_inference_steps,
            obs_as_global_cond=obs_as_global_cond,
            diffusion_step_embed_dim=diffusion_step_embed_dim,
            down_dims=down_dims,
            kernel_size=kernel_size,
            n_groups=n_groups,
            cond_predict_scale=cond_predict_scale,
            **kwargs,
        )
        self.image_args = image_args  # what the hybrid kwargs became, in words
        log.info(
            "dp_sam2: built %s (DP's DiffusionUnetImagePolicy methods, no robomimic model), obs encoder "
            "SAM2ObsEncoder(%s); %s",
            NAME,
            obs_encoder.extra_repr(),
            self.image_args,
        )


def unet_hybrid_class() -> type:
    """The class: :class:`_UnetHybridInit` on DP's ``DiffusionUnetImagePolicy`` (imported now), named
    ``dp_sam2.policies.SAM2DiffusionUnetHybridImagePolicy`` (where pickle finds it)."""
    return dp_subclass(
        _UnetHybridInit,
        "diffusion_policy.policy.diffusion_unet_image_policy:DiffusionUnetImagePolicy",
        name=NAME,
        module="dp_sam2.policies",
        __doc__=__doc__,
    )

"""What a policy config asks for, without importing Diffusion Policy.

``sam2_diffusion_policy`` receives the kwargs of whichever DP policy config it replaced (the
``sam2_policy`` group swaps only ``_target_``). The kwargs tell the policies apart:

* DP's transformer hybrid (``DiffusionTransformerHybridImagePolicy``) has ``n_layer``, ``n_head``,
  ``n_emb``, ... (:data:`TRANSFORMER_ARGS`);
* DP's UNet hybrid (``DiffusionUnetHybridImagePolicy``) has ``crop_shape``,
  ``obs_encoder_group_norm`` and ``eval_fixed_crop`` (:data:`HYBRID_IMAGE_ARGS`) and no transformer key;
* DP's ``DiffusionUnetImagePolicy`` has none of them.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping

UNET_IMAGE = "unet_image"
UNET_HYBRID = "unet_hybrid"
TRANSFORMER_HYBRID = "transformer_hybrid"

#: the image-side kwargs of DP's hybrid policies (both UNet and transformer)
HYBRID_IMAGE_ARGS = ("crop_shape", "obs_encoder_group_norm", "eval_fixed_crop")
#: the architecture kwargs only DiffusionTransformerHybridImagePolicy has
TRANSFORMER_ARGS = (
    "n_layer",
    "n_cond_layers",
    "n_head",
    "n_emb",
    "p_drop_emb",
    "p_drop_attn",
    "causal_attn",
    "time_as_cond",
    "obs_as_cond",
    "pred_action_steps_only",
)
#: DiffusionUnetImagePolicy's own kwargs (everything else it forwards to ``noise_scheduler.step``)
UNET_ARGS = (
    "shape_meta",
    "noise_scheduler",
    "obs_encoder",
    "horizon",
    "n_action_steps",
    "n_obs_steps",
    "num_inference_steps",
    "obs_as_global_cond",
    "diffusion_step_embed_dim",
    "down_dims",
    "kernel_size",
    "n_groups",
    "cond_predict_scale",
)
DP_NAMES = {
    UNET_IMAGE: "DiffusionUnetImagePolicy",
    UNET_HYBRID: "DiffusionUnetHybridImagePolicy",
    TRANSFORMER_HYBRID: "DiffusionTransformerHybridImagePolicy",
}


def policy_kind(kwargs: Mapping) -> str:
    """Which DP policy a set of kwargs configures (see the module docstring)."""
    if any(k in kwargs for k in TRANSFORMER_ARGS):
        return TRANSFORMER_HYBRID
    if any(k in kwargs for k in HYBRID_IMAGE_ARGS):
        return UNET_HYBRID
    return UNET_IMAGE


def check_required(kwargs: Mapping) -> None:
    """The kwargs every DP diffusion image policy takes; their absence means the replaced config was
    not one (e.g. an IBC or robomimic policy), which sam2_policy cannot serve."""
    missing = [
        k for k in ("shape_meta", "noise_scheduler", "horizon", "n_action_steps", "n_obs_steps") if k not in kwargs
    ]
    if missing:
        raise TypeError(
            f"dp_sam2.policies.sam2_diffusion_policy is missing {missing}: the sam2_policy group replaces the "
            "_target_ of DP's diffusion image policies only (DiffusionUnetImagePolicy, "
            "DiffusionUnetHybridImagePolicy, DiffusionTransformerHybridImagePolicy); got the kwargs "
            f"{sorted(kwargs)}"
        )
    if kwargs.get("obs_encoder") is None:
        raise TypeError(
            "dp_sam2.policies.sam2_diffusion_policy needs policy.obs_encoder (select it with "
            "+sam2_policy@policy=<model>, which sets it to SAM2ObsEncoder)"
        )


def check_step_kwargs(kind: str, extra: Mapping, noise_scheduler) -> None:
    """DP's diffusion policies forward unknown kwargs to ``noise_scheduler.step`` at every sampling
    step; a stray key would fail only at ``predict_action`` (or in the first rollout). Refuse the
    keys the scheduler does not take, now."""
    if not extra:
        return
    params = inspect.signature(noise_scheduler.step).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    stray = sorted(k for k in extra if k not in params)
    if stray:
        raise TypeError(
            f"policy kwargs {stray} are not arguments of {DP_NAMES[kind]} and not of "
            f"{type(noise_scheduler).__name__}.step (DP forwards unknown policy kwargs there, so they would "
            "fail at the first predict_action); remove them from the policy config"
        )

"""``SAM2DiffusionTransformerHybridImagePolicy``: DP's transformer hybrid policy with SAM 2.

A subclass of DP's ``DiffusionTransformerHybridImagePolicy`` whose ``__init__`` builds no robomimic model but
sets DP's attributes (``obs_encoder`` = SAM 2, ``model`` = DP's ``TransformerForDiffusion``, ``noise_scheduler``,
``mask_generator``, ``normalizer``, ``horizon``, ``obs_feature_dim``, ``action_dim``, ``n_action_steps``,
``n_obs_steps``, ``obs_as_cond``, ``pred_action_steps_only``, ``kwargs``, ``num_inference_steps``), so DP's
``conditional_sample``, ``predict_action``, ``set_normalizer`` and ``compute_loss`` run unchanged. Only
:meth:`get_optimizer` (same signature, called by DP's transformer workspaces with ``cfg.optimizer``) differs:
the obs-encoder group (``obs_encoder_weight_decay``) holds only the encoder's *trainable* parameters; frozen
SAM 2 weights are in no group (DP puts all there). DP's module imports robomimic, so the class is created on
first use; ``dp_sam2.policies.SAM2DiffusionTransformerHybridImagePolicy`` resolves it.
"""

from __future__ import annotations

import logging

import torch

from dp_sam2.dp_classes import dp_subclass, import_dp

from .image_args import apply_hybrid_image_args
from .kwargs import TRANSFORMER_HYBRID, check_step_kwargs

log = logging.getLogger(__name__)
NAME = "SAM2DiffusionTransformerHybridImagePolicy"


class _TransformerHybridInit:
    """``__init__`` and ``get_optimizer`` of SAM2DiffusionTransformerHybridImagePolicy."""

    _dp_class: type  # DP's DiffusionTransformerHybridImagePolicy, set when the class is made

    def __init__(
        self,
        shape_meta: dict,
        noise_scheduler,
        obs_encoder,
        horizon,
        n_action_steps,
        n_obs_steps,
        num_inference_steps=None,
        crop_shape=(76, 76),
        obs_encoder_group_norm=False,
        eval_fixed_crop=False,
        n_layer=8,
        n_cond_layers=0,
        n_head=4,
        n_emb=256,
        p_drop_emb=0.0,
        p_drop_attn=0.3,
        causal_attn=True,
        time_as_cond=True,
        obs_as_cond=True,
        pred_action_steps_only=False,
        **kwargs,
    ):
        # the defaults above are DiffusionTransformerHybridImagePolicy's
        from diffusion_policy.model.common.normalizer import LinearNormalizer
        from diffusion_policy.model.diffusion.mask_generator import LowdimMaskGenerator
        from diffusion_policy.model.diffusion.transformer_for_diffusion import TransformerForDiffusion

        check_step_kwargs(TRANSFORMER_HYBRID, kwargs, noise_scheduler)
        image_args = apply_hybrid_image_args(obs_encoder, crop_shape, obs_encoder_group_norm, eval_fixed_crop)
        action_shape = list(shape_meta["action"]["shape"])
        if len(action_shape) != 1:
            raise ValueError(f"shape_meta.action.shape must be [action_dim], got {action_shape}")
        action_dim = int(action_shape[0])
        obs_feature_dim = int(obs_encoder.output_shape()[0])
        # DP's layout: actions only (observations as the transformer's condition) or actions and
        # features side by side (observations inpainted)
        input_dim = action_dim if obs_as_cond else obs_feature_dim + action_dim

        super(self._dp_class, self).__init__()  # BaseImagePolicy's, skipping DP's robomimic __init__
        self.obs_encoder = obs_encoder
        self.model = TransformerForDiffusion(
            input_dim=input_dim,
            output_dim=input_dim,
            horizon=horizon,
            n_obs_steps=n_obs_steps,
            cond_dim=obs_feature_dim if obs_as_cond else 0,
            n_layer=n_layer,
            n_head=n_head,
            n_emb=n_emb,
            p_drop_emb=p_drop_emb,
            p_drop_attn=p_drop_attn,
            causal_attn=causal_attn,
            time_as_cond=time_as_cond,
            obs_as_cond=obs_as_cond,
            n_cond_layers=n_cond_layers,
        )
        self.noise_scheduler = noise_scheduler
        self.mask_generator = LowdimMaskGenerator(
            action_dim=action_dim,
            obs_dim=0 if obs_as_cond else obs_feature_dim,
            max_n_obs_steps=n_obs_steps,
            fix_obs_steps=True,
            action_visible=False,
        )
        self.normalizer = LinearNormalizer()
        self.horizon = horizon
        self.obs_feature_dim = obs_feature_dim
        self.action_dim = action_dim
        self.n_action_steps = n_action_steps
        self.n_obs_steps = n_obs_steps
        self.obs_as_cond = obs_as_cond
        self.pred_action_steps_only = pred_action_steps_only
        self.kwargs = kwargs
        self.num_inference_steps = (
            noise_scheduler.config.num_train_timesteps if num_inference_steps is None else num_inference_steps
        )
        self.image_args = image_args  # what the hybrid kwargs became, in words
        log.info(
            "dp_sam2: built %s (DP's transformer policy methods, no robomimic model), obs encoder "
            "SAM2ObsEncoder(%s); %s",
            NAME,
            obs_encoder.extra_repr(),
            image_args,
        )

    def get_optimizer(
        self, transformer_weight_decay: float, obs_encoder_weight_decay: float, learning_rate: float, betas
    ) -> torch.optim.Optimizer:
        """DP's AdamW groups: the transformer's (decay / no decay, from ``get_optim_groups``) and one
        obs-encoder group with ``obs_encoder_weight_decay`` holding the encoder's trainable
        parameters only (frozen SAM 2 weights get no optimizer state)."""
        groups = self.model.get_optim_groups(weight_decay=transformer_weight_decay)
        trainable = [p for p in self.obs_encoder.parameters() if p.requires_grad]
        if trainable:
            groups.append({"params": trainable, "weight_decay": obs_encoder_weight_decay})
        return torch.optim.AdamW(groups, lr=learning_rate, betas=tuple(betas))


def transformer_hybrid_class() -> type:
    """The class: :class:`_TransformerHybridInit` on DP's ``DiffusionTransformerHybridImagePolicy``
    (imported now; DP's module imports robomimic), named
    ``dp_sam2.policies.SAM2DiffusionTransformerHybridImagePolicy`` (where pickle finds it)."""
    dp_class = import_dp(
        "diffusion_policy.policy.diffusion_transformer_hybrid_image_policy:DiffusionTransformerHybridImagePolicy"
    )
    return dp_subclass(
        _TransformerHybridInit, dp_class, name=NAME, module="dp_sam2.policies", __doc__=__doc__, _dp_class=dp_class
    )

"""``SAM2DiffusionPolicy``: LeRobot's ``DiffusionPolicy`` (queues, ``select_action``, U-Net, noise
scheduler and loss unchanged) whose image features come from SAM 2 (:mod:`.encoder`).

Saving: backbone weights that never train and equal the SAM 2 file (all of them for a frozen
backbone; the original weights under LoRA; the frozen blocks with ``trainable_blocks``) are left
out of ``model.safetensors`` and read again from the SAM 2 file by ``from_pretrained``. When that
file cannot be found there, the error names it and the ``dp-sam2 download`` command. A policy
whose backbone weights did not come from a file (``DP_SAM2_ALLOW_MISSING_CHECKPOINT=1``, random
weights) is saved
whole, and so is every trained weight.
"""

from __future__ import annotations

import contextvars
import os
from pathlib import Path

import torch
from lerobot.policies.diffusion.modeling_diffusion import (
    DiffusionConditionalUnet1d,
    DiffusionModel,
    DiffusionPolicy,
    _make_noise_scheduler,
)
from lerobot.policies.pretrained import PreTrainedPolicy
from lerobot.utils.constants import OBS_ENV_STATE, OBS_IMAGES, OBS_STATE
from lerobot.utils.import_utils import require_package
from torch import Tensor, nn

from .configuration_sam2_diffusion import SAM2DiffusionConfig
from .encoder import SAM2CameraEncoder

BACKBONE_PREFIX = "diffusion.rgb_encoder.backbone."
SAFETENSORS_FILE = "model.safetensors"

# the keys of the model.safetensors being loaded by from_pretrained (None outside it)
_SAVED_KEYS: contextvars.ContextVar[frozenset[str] | None] = contextvars.ContextVar("sam2_saved_keys", default=None)


class SAM2DiffusionModel(DiffusionModel):
    """``DiffusionModel`` with :class:`SAM2CameraEncoder` as ``rgb_encoder``; the U-Net, the noise
    scheduler, ``compute_loss`` and ``conditional_sample`` are LeRobot's."""

    def __init__(self, config: SAM2DiffusionConfig, saved_keys: frozenset[str] | None = None):
        nn.Module.__init__(self)  # DiffusionModel.__init__ would build a ResNet per camera
        self.config = config
        self.rgb_encoder = SAM2CameraEncoder(config, saved_keys=saved_keys)
        cond_dim = config.robot_state_feature.shape[0] + len(config.image_features) * self.rgb_encoder.feature_dim
        if config.env_state_feature:
            cond_dim += config.env_state_feature.shape[0]
        self.unet = DiffusionConditionalUnet1d(config, global_cond_dim=cond_dim * config.n_obs_steps)
        if config.compile_model:
            self.unet = torch.compile(self.unet, mode=config.compile_mode)
        self.noise_scheduler = _make_noise_scheduler(
            config.noise_scheduler_type,
            num_train_timesteps=config.num_train_timesteps,
            beta_start=config.beta_start,
            beta_end=config.beta_end,
            beta_schedule=config.beta_schedule,
            clip_sample=config.clip_sample,
            clip_sample_range=config.clip_sample_range,
            prediction_type=config.prediction_type,
        )
        steps = config.num_inference_steps
        self.num_inference_steps = self.noise_scheduler.config.num_train_timesteps if steps is None else steps

    def _prepare_global_conditioning(self, batch: dict[str, Tensor]) -> Tensor:
        """State, then every camera's SAM 2 feature, then the environment state (LeRobot's order),
        flattened over the observation steps: ``(B, global_cond_dim)``."""
        batch_size, n_obs_steps = batch[OBS_STATE].shape[:2]
        images = batch[OBS_IMAGES]  # (B, S, n_cameras, 3, H, W)
        feats = self.rgb_encoder(images.flatten(0, 1)).unflatten(0, (batch_size, n_obs_steps))
        parts = [batch[OBS_STATE], feats]
        if self.config.env_state_feature:
            parts.append(batch[OBS_ENV_STATE])
        return torch.cat(parts, dim=-1).flatten(start_dim=1)


class SAM2DiffusionPolicy(DiffusionPolicy):
    """LeRobot's diffusion policy with SAM 2 as its vision encoder (``--policy.type=sam2_diffusion``)."""

    config_class = SAM2DiffusionConfig
    name = "sam2_diffusion"

    def __init__(self, config: SAM2DiffusionConfig, **kwargs):
        require_package("diffusers", extra="diffusion")
        PreTrainedPolicy.__init__(self, config)  # DiffusionPolicy.__init__ would build its ResNet model
        config.validate_features()
        self.config = config
        self._queues = None
        saved = _SAVED_KEYS.get()  # inside from_pretrained: what the saved model.safetensors holds
        if saved is not None:
            saved = frozenset(k[len(BACKBONE_PREFIX) :] for k in saved if k.startswith(BACKBONE_PREFIX))
        self.diffusion = SAM2DiffusionModel(config, saved_keys=saved)
        self.reset()

    # ------------------------------------------------------------------ optimizer
    def get_optim_params(self) -> list[dict]:
        """Two parameter groups: everything that trains outside the backbone at ``optimizer_lr``,
        and the trainable backbone weights (if any) at ``optimizer_lr * backbone_lr_scale``."""
        backbone = {id(p) for p in self.diffusion.rgb_encoder.backbone.parameters()}
        trainable = [p for p in self.diffusion.parameters() if p.requires_grad]
        groups = [{"params": [p for p in trainable if id(p) not in backbone]}]
        tuned = [p for p in trainable if id(p) in backbone]
        if tuned:
            groups.append({"params": tuned, "lr": self.config.optimizer_lr * float(self.config.backbone_lr_scale)})
        return groups

    # ------------------------------------------------------------------ saving and loading
    def omitted_keys(self) -> list[str]:
        """The state-dict keys left out of ``model.safetensors`` (read again from the SAM 2 file)."""
        return self.diffusion.rgb_encoder.frozen_file_keys(prefix=BACKBONE_PREFIX)

    def _save_pretrained(self, save_directory: Path, state_dict: dict[str, Tensor] | None = None) -> None:
        model = self.module if hasattr(self, "module") else self
        if state_dict is None:
            state_dict = model.state_dict()
        omitted = set(self.omitted_keys())
        kept = {k: v.detach().contiguous() for k, v in state_dict.items() if k not in omitted}
        super()._save_pretrained(save_directory, state_dict=kept)

    @classmethod
    def from_pretrained(cls, pretrained_name_or_path, *args, **kwargs):
        token = _SAVED_KEYS.set(_saved_keys(pretrained_name_or_path))
        try:
            return super().from_pretrained(pretrained_name_or_path, *args, **kwargs)
        finally:
            _SAVED_KEYS.reset(token)

    @classmethod
    def _load_as_safetensor(cls, model, model_file: str, map_location: str, strict: bool):
        from lerobot.policies.utils import log_model_loading_keys
        from lerobot.utils.device_utils import resolve_safetensors_device
        from safetensors.torch import load_file

        state = load_file(model_file, device=resolve_safetensors_device(map_location))
        missing, unexpected = model.load_state_dict(state, strict=False)
        from_file = set(model.omitted_keys())
        missing = [k for k in missing if k not in from_file]
        if strict and (missing or unexpected):
            raise RuntimeError(
                f"{model_file} does not fit this sam2_diffusion policy: missing keys {missing[:5]}, "
                f"unexpected keys {unexpected[:5]}"
            )
        log_model_loading_keys(missing, unexpected)
        return model


def _saved_keys(pretrained_name_or_path) -> frozenset[str]:
    """The tensor names in a saved policy's ``model.safetensors`` (empty when it is not a local folder:
    then the SAM 2 file is always read)."""
    path = Path(os.fspath(pretrained_name_or_path)) / SAFETENSORS_FILE
    if not path.is_file():
        return frozenset()
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return frozenset(f.keys())

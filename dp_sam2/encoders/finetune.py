"""Old path (0.1.x), kept because DP configs saved ``dp_sam2.encoders.finetune.adamw_param_groups``
as the optimizer ``_target_``. The code lives in :mod:`dp_sam2.encoders.obs.finetune`."""

from dp_sam2.encoders.obs.finetune import FinetuneConfig, LoRALinear, adamw_param_groups

__all__ = ["FinetuneConfig", "LoRALinear", "adamw_param_groups"]

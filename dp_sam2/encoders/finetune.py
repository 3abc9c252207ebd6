"""Old path (0.1.x), kept because DP configs saved ``dp_sam2.encoders.finetune.adamw_param_groups``
as the optimizer ``_target_``. The code lives in :mod:`dp_sam2.encoders.obs.finetune`; each name
resolves through the table in dp_sam2/_aliases.py."""

from dp_sam2._aliases import names, shim

__getattr__, __dir__ = shim("dp_sam2.encoders.finetune")
__all__ = names("dp_sam2.encoders.finetune")

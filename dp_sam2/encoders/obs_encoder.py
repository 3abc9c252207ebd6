"""Old path (0.1.x) of the obs encoder, kept because DP checkpoints saved
``dp_sam2.encoders.obs_encoder.SAM2ObsEncoder`` as ``_target_``. The code lives in
:mod:`dp_sam2.encoders.obs`; each name resolves through the table in dp_sam2/_aliases.py."""

from dp_sam2._aliases import names, shim

__getattr__, __dir__ = shim("dp_sam2.encoders.obs_encoder")
__all__ = names("dp_sam2.encoders.obs_encoder")

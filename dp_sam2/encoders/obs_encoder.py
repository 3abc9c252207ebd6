"""Old path of the obs encoder (0.1.x), kept because DP checkpoints saved it as ``_target_``:
``dp_sam2.encoders.obs_encoder.SAM2ObsEncoder``. The code lives in :mod:`dp_sam2.encoders.obs`."""

from dp_sam2.encoders.obs.backbone import SAM2Backbone
from dp_sam2.encoders.obs.encoder import SAM2ObsEncoder
from dp_sam2.encoders.obs.inputs import ObsKeys, parse_input_range, parse_shape_meta

__all__ = ["SAM2ObsEncoder", "SAM2Backbone", "ObsKeys", "parse_input_range", "parse_shape_meta"]

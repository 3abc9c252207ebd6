"""dp_sam2: SAM 2 as a vision encoder for Diffusion Policy.

Importing this package is cheap and has no side effects (in particular it never touches Hydra's
global state); the public names are loaded on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.3.3"

_EXPORTS = {
    "build_sam2": "dp_sam2.encoders.sam2.build",
    "build_sam2_video_predictor": "dp_sam2.encoders.sam2.build",
    "SAM2ImagePredictor": "dp_sam2.predictors.image",
    "SAM2VideoPredictor": "dp_sam2.predictors.video",
    "SAM2AutomaticMaskGenerator": "dp_sam2.predictors.automatic_mask_generator",
    "SAM2ObsEncoder": "dp_sam2.encoders.obs.encoder",
}

__all__ = list(_EXPORTS)

if TYPE_CHECKING:  # pragma: no cover
    from dp_sam2.encoders.obs.encoder import SAM2ObsEncoder  # noqa: F401
    from dp_sam2.encoders.sam2.build import build_sam2, build_sam2_video_predictor  # noqa: F401
    from dp_sam2.predictors.automatic_mask_generator import SAM2AutomaticMaskGenerator  # noqa: F401
    from dp_sam2.predictors.image import SAM2ImagePredictor  # noqa: F401
    from dp_sam2.predictors.video import SAM2VideoPredictor  # noqa: F401


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'dp_sam2' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + __all__)

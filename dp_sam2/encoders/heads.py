"""Old path (0.1.x) of the pooling heads. The code lives in :mod:`dp_sam2.encoders.obs.heads`; each
name resolves through the table in dp_sam2/_aliases.py."""

from dp_sam2._aliases import names, shim

__getattr__, __dir__ = shim("dp_sam2.encoders.heads")
__all__ = names("dp_sam2.encoders.heads")

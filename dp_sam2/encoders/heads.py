"""Old path (0.1.x) of the pooling heads; the code lives in :mod:`dp_sam2.encoders.obs.heads`."""

from dp_sam2.encoders.obs.heads import AttentionPool, MeanPool, SpatialSoftmax, build_head

__all__ = ["AttentionPool", "MeanPool", "SpatialSoftmax", "build_head"]

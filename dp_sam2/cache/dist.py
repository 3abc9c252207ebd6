"""Old path (0.2.x) of :mod:`dp_sam2.dist`, the one torch.distributed helper (the cache writer's
ranks). Resolved through dp_sam2/_aliases.py."""

from dp_sam2._aliases import names, shim

__getattr__, __dir__ = shim("dp_sam2.cache.dist")
__all__ = names("dp_sam2.cache.dist")

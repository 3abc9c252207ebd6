"""Old path (0.1.x) of the command line, kept for ``python -m dp_sam2.cli``; see :mod:`dp_sam2.tools.cli`
(the name resolves through the table in dp_sam2/_aliases.py)."""

from dp_sam2._aliases import names, shim

__getattr__, __dir__ = shim("dp_sam2.cli")
__all__ = names("dp_sam2.cli")

if __name__ == "__main__":
    raise SystemExit(__getattr__("main")())

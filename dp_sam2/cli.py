"""Old path (0.1.x) of the command line, kept for ``python -m dp_sam2.cli``; see :mod:`dp_sam2.tools.cli`."""

from dp_sam2.tools.cli import main

if __name__ == "__main__":
    raise SystemExit(main())

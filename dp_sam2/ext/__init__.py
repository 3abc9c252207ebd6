"""Connected components of binary masks (CUDA kernel, exact CPU op, torch fallback) and SAM 2's
hole filling. Importing this package compiles nothing; libraries are built on first use or with
``python -m dp_sam2.ext build``; ``python -m dp_sam2.ext status`` tells which one is in use.
"""

from dp_sam2.ext._cc import (
    fill_holes_and_remove_sprinkles,
    fill_holes_in_mask_scores,
    get_connected_components,
    implementation,
)

__all__ = [
    "get_connected_components",
    "fill_holes_in_mask_scores",
    "fill_holes_and_remove_sprinkles",
    "implementation",
]

"""Argument types of the ``dp-sam2`` command line: points, boxes, sizes. Each checks its text before any
model is built and says what it expected and what came (``argparse.ArgumentTypeError``)."""

from __future__ import annotations

import argparse


def _floats(text: str, n: int, what: str) -> tuple[float, ...]:
    parts = [p for p in text.replace(" ", "").split(",") if p]
    try:
        values = tuple(float(p) for p in parts)
    except ValueError:
        values = ()
    if len(values) != n:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
    return values


def point_xy(text: str) -> tuple[float, float]:
    return _floats(text, 2, "a point X,Y in pixels, e.g. 120,80")


def point_fxy(text: str) -> tuple[int, float, float]:
    f, x, y = _floats(text, 3, "FRAME,X,Y (frame index, then pixels), e.g. 0,120,80")
    if f != int(f) or f < 0:
        raise argparse.ArgumentTypeError(f"the frame index must be a non-negative integer, got {text!r}")
    return int(f), x, y


def box_xyxy(text: str) -> tuple[float, float, float, float]:
    return _floats(text, 4, "a box x0,y0,x1,y1 in pixels, e.g. 10,10,200,150")


def image_size_arg(text: str) -> int:
    """A model input size: a positive multiple of 32 (checked here, before any model is built)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a whole number of pixels (a multiple of 32), got {text!r}"
        ) from None
    if value <= 0 or value % 32:
        low, high = max(32, value // 32 * 32), (value // 32 + 1) * 32
        raise argparse.ArgumentTypeError(f"must be a positive multiple of 32 (e.g. {low} or {high}), got {value}")
    return value


def hw_pair(text: str) -> tuple[int, int]:
    """``--crop-shape`` / ``--resize-shape``: a size as the obs encoder reads it (``H,W``; one number is
    a square), through the package's one size parser (imported here so ``--help`` stays instant)."""
    from dp_sam2.encoders.obs.inputs import parse_hw

    try:
        return parse_hw(text, "H,W (pixels), e.g. 76,76")
    except (TypeError, ValueError) as err:
        raise argparse.ArgumentTypeError(str(err)) from err

"""Helpers of the automatic mask generator: batched mask records, point grids, crop boxes,
stability score, boxes of masks, run-length encoding and small-region cleanup.

Names and results follow the official ``sam2.utils.amg`` (itself from SAM 1), so code written
against it keeps working; the implementations are our own.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from copy import deepcopy
from typing import Any

import numpy as np
import torch

_STORABLE = (list, np.ndarray, torch.Tensor)


class MaskData:
    """Named columns of per-mask values (tensors, arrays or lists), filtered and concatenated
    together."""

    def __init__(self, **columns) -> None:
        for key, value in columns.items():
            _check_storable(key, value)
        self._stats: dict[str, Any] = dict(columns)

    def __setitem__(self, key: str, value) -> None:
        _check_storable(key, value)
        self._stats[key] = value

    def __delitem__(self, key: str) -> None:
        del self._stats[key]

    def __getitem__(self, key: str):
        return self._stats[key]

    def __contains__(self, key: str) -> bool:
        return key in self._stats

    def items(self):
        return self._stats.items()

    def filter(self, keep: torch.Tensor) -> None:
        """Keep the rows selected by a boolean mask or an index tensor, in every column."""
        keep = torch.as_tensor(keep)
        for key, value in self._stats.items():
            self._stats[key] = _select(key, value, keep)

    def cat(self, other: MaskData) -> None:
        """Append the rows of ``other``, column by column."""
        for key, value in other.items():
            mine = self._stats.get(key)
            if mine is None:
                self._stats[key] = deepcopy(value)
            elif isinstance(value, torch.Tensor):
                self._stats[key] = torch.cat([mine, value], dim=0)
            elif isinstance(value, np.ndarray):
                self._stats[key] = np.concatenate([mine, value], axis=0)
            elif isinstance(value, list):
                self._stats[key] = mine + deepcopy(value)
            else:
                raise TypeError(f"MaskData column {key!r} has unsupported type {type(value).__name__}")

    def to_numpy(self) -> None:
        """Turn every tensor column into a float32 numpy array."""
        for key, value in self._stats.items():
            if isinstance(value, torch.Tensor):
                self._stats[key] = value.float().detach().cpu().numpy()


def _check_storable(key: str, value) -> None:
    if not isinstance(value, _STORABLE):
        raise TypeError(
            f"MaskData column {key!r} must be a list, numpy array or torch tensor, got {type(value).__name__}"
        )


def _select(key: str, value, keep: torch.Tensor):
    if value is None:
        return None
    if isinstance(value, torch.Tensor):
        return value[keep.to(value.device)]
    if isinstance(value, np.ndarray):
        return value[keep.cpu().numpy()]
    if isinstance(value, list):
        if keep.dtype == torch.bool:
            return [item for item, k in zip(value, keep.tolist(), strict=True) if k]
        return [value[i] for i in keep.tolist()]
    raise TypeError(f"MaskData column {key!r} has unsupported type {type(value).__name__}")


# --------------------------------------------------------------------------- iteration, grids
def batch_iterator(batch_size: int, *args) -> Iterator[list]:
    """Yield consecutive slices of ``batch_size`` rows of equally long sequences."""
    if not args or any(len(a) != len(args[0]) for a in args):
        raise ValueError(f"batch_iterator needs sequences of one length, got lengths {[len(a) for a in args]}")
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    for start in range(0, len(args[0]), batch_size):
        yield [a[start : start + batch_size] for a in args]


def build_point_grid(n_per_side: int) -> np.ndarray:
    """``n_per_side**2`` points ``(x, y)`` at the centres of an even grid over [0, 1]^2, row by row."""
    half_step = 1 / (2 * n_per_side)
    ticks = np.linspace(half_step, 1 - half_step, n_per_side)
    xs, ys = np.meshgrid(ticks, ticks, indexing="xy")
    return np.stack([xs, ys], axis=-1).reshape(-1, 2)


def build_all_layer_point_grids(n_per_side: int, n_layers: int, scale_per_layer: int) -> list[np.ndarray]:
    """One grid per crop layer; layer ``i`` has ``n_per_side / scale_per_layer**i`` points a side."""
    return [build_point_grid(int(n_per_side / (scale_per_layer**i))) for i in range(n_layers + 1)]


def generate_crop_boxes(im_size: tuple[int, ...], n_layers: int, overlap_ratio: float):
    """Crop boxes ``[x0, y0, x1, y1]`` (the whole image, then ``(2**i)**2`` overlapping crops in
    layer ``i``) and the layer index of each."""
    im_h, im_w = im_size
    boxes, layers = [[0, 0, im_w, im_h]], [0]
    for layer in range(1, n_layers + 1):
        n = 2**layer
        overlap = int(overlap_ratio * min(im_h, im_w) * (2 / n))
        crop_w = int(math.ceil((overlap * (n - 1) + im_w) / n))
        crop_h = int(math.ceil((overlap * (n - 1) + im_h) / n))
        x0s = [int((crop_w - overlap) * i) for i in range(n)]
        y0s = [int((crop_h - overlap) * i) for i in range(n)]
        for x0 in x0s:
            for y0 in y0s:
                boxes.append([x0, y0, min(x0 + crop_w, im_w), min(y0 + crop_h, im_h)])
                layers.append(layer)
    return boxes, layers


# --------------------------------------------------------------------------- boxes and crops
def _offset(crop_box, like: torch.Tensor, n: int) -> torch.Tensor:
    x0, y0 = crop_box[0], crop_box[1]
    offset = torch.tensor([[x0, y0] * (n // 2)], device=like.device)
    return offset.unsqueeze(1) if like.dim() == 3 else offset


def uncrop_boxes_xyxy(boxes: torch.Tensor, crop_box) -> torch.Tensor:
    return boxes + _offset(crop_box, boxes, 4)


def uncrop_points(points: torch.Tensor, crop_box) -> torch.Tensor:
    return points + _offset(crop_box, points, 2)


def uncrop_masks(masks: torch.Tensor, crop_box, orig_h: int, orig_w: int) -> torch.Tensor:
    """Zero-pad crop masks ``[..., h, w]`` back to the whole image."""
    x0, y0, x1, y1 = crop_box
    if (x0, y0, x1, y1) == (0, 0, orig_w, orig_h):
        return masks
    pad = (x0, orig_w - x1, y0, orig_h - y1)
    return torch.nn.functional.pad(masks, pad, value=0)


def is_box_near_crop_edge(boxes: torch.Tensor, crop_box, orig_box, atol: float = 20.0) -> torch.Tensor:
    """Boxes (crop frame) with a side within ``atol`` of a crop edge that is not an image edge."""
    crop = torch.as_tensor(crop_box, dtype=torch.float, device=boxes.device)[None]
    orig = torch.as_tensor(orig_box, dtype=torch.float, device=boxes.device)[None]
    boxes = uncrop_boxes_xyxy(boxes, crop_box).float()
    near_crop = torch.isclose(boxes, crop, atol=atol, rtol=0)
    near_image = torch.isclose(boxes, orig, atol=atol, rtol=0)
    return (near_crop & ~near_image).any(dim=1)


def box_xyxy_to_xywh(box_xyxy):
    box = deepcopy(box_xyxy)
    box[2] = box[2] - box[0]
    box[3] = box[3] - box[1]
    return box


def batched_mask_to_box(masks: torch.Tensor) -> torch.Tensor:
    """Boxes ``[..., 4]`` (x0, y0, x1, y1, inclusive pixel indices) around masks ``[..., H, W]``;
    ``[0, 0, 0, 0]`` for an empty mask."""
    if masks.numel() == 0:
        return torch.zeros(*masks.shape[:-2], 4, device=masks.device)
    lead, (h, w) = masks.shape[:-2], masks.shape[-2:]
    flat = masks.reshape(-1, h, w).bool()
    rows, cols = flat.any(dim=-1), flat.any(dim=-2)  # [M, H], [M, W]

    def first_last(hits: torch.Tensor, n: int):
        idx = torch.arange(n, device=hits.device)
        last = torch.where(hits, idx, -1).amax(dim=-1)
        first = torch.where(hits, idx, n).amin(dim=-1)
        return first, last

    top, bottom = first_last(rows, h)
    left, right = first_last(cols, w)
    boxes = torch.stack([left, top, right, bottom], dim=-1)
    empty = ~rows.any(dim=-1)
    boxes = boxes.masked_fill(empty[:, None], 0)
    return boxes.reshape(*lead, 4)


# --------------------------------------------------------------------------- scores
def calculate_stability_score(masks: torch.Tensor, mask_threshold: float, threshold_offset: float) -> torch.Tensor:
    """IoU of the masks binarised at ``threshold + offset`` and at ``threshold - offset`` (the
    first is inside the second, so it is a ratio of pixel counts)."""
    inner = (masks > (mask_threshold + threshold_offset)).sum(dim=(-1, -2), dtype=torch.int32)
    outer = (masks > (mask_threshold - threshold_offset)).sum(dim=(-1, -2), dtype=torch.int32)
    return inner / outer


# --------------------------------------------------------------------------- run-length encoding
def mask_to_rle_pytorch(tensor: torch.Tensor) -> list[dict[str, Any]]:
    """Binary masks ``[B, H, W]`` -> uncompressed COCO RLEs (column-major runs, starting with a
    run of zeros)."""
    b, h, w = tensor.shape
    flat = tensor.permute(0, 2, 1).flatten(1).bool()
    change = (flat[:, 1:] != flat[:, :-1]).nonzero()
    starts = change[:, 1].cpu() + 1
    per_mask = torch.bincount(change[:, 0].cpu(), minlength=b).tolist()
    first = flat[:, 0].cpu().tolist()
    out, offset = [], 0
    for i in range(b):
        cuts = starts[offset : offset + per_mask[i]]
        offset += per_mask[i]
        bounds = torch.cat([torch.zeros(1, dtype=cuts.dtype), cuts, torch.tensor([h * w], dtype=cuts.dtype)])
        counts = [0] if first[i] else []
        counts.extend(torch.diff(bounds).tolist())
        out.append({"size": [h, w], "counts": counts})
    return out


def rle_to_mask(rle: dict[str, Any]) -> np.ndarray:
    """Uncompressed RLE -> boolean mask ``[H, W]``."""
    h, w = rle["size"]
    counts = np.asarray(rle["counts"], dtype=np.int64)
    values = np.arange(len(counts)) % 2 == 1
    flat = np.repeat(values, counts)
    if flat.size != h * w:
        raise ValueError(f"RLE counts sum to {flat.size}, expected {h} * {w} = {h * w}")
    return flat.reshape(w, h).T


def area_from_rle(rle: dict[str, Any]) -> int:
    return sum(rle["counts"][1::2])


def coco_encode_rle(uncompressed_rle: dict[str, Any]) -> dict[str, Any]:
    """Uncompressed RLE -> compressed COCO RLE with a str ``counts`` (needs pycocotools)."""
    mask_utils = require_pycocotools()
    h, w = uncompressed_rle["size"]
    rle = mask_utils.frPyObjects(uncompressed_rle, h, w)
    rle["counts"] = rle["counts"].decode("utf-8")
    return rle


def require_pycocotools():
    try:
        from pycocotools import mask as mask_utils
    except ImportError as err:
        raise ImportError(
            "output_mode='coco_rle' needs pycocotools: `pip install pycocotools` "
            "(or use output_mode='uncompressed_rle' / 'binary_mask')"
        ) from err
    return mask_utils


# --------------------------------------------------------------------------- small regions
def remove_small_regions(mask: np.ndarray, area_thresh: float, mode: str) -> tuple[np.ndarray, bool]:
    """Fill holes (``mode="holes"``) or drop islands (``mode="islands"``) of fewer than
    ``area_thresh`` pixels (8-connected) in a boolean mask ``[H, W]``; return the mask and
    whether it changed. If every island is small, the largest is kept (on a tie of areas, the
    one whose first pixel comes first in raster order; OpenCV's block-based labelling, which the
    official calls, may order such ties differently)."""
    from dp_sam2.ext import get_connected_components

    if mode not in ("holes", "islands"):
        raise ValueError(f"mode must be 'holes' or 'islands', got {mode!r}")
    holes = mode == "holes"
    mask = np.asarray(mask, dtype=bool)
    working = torch.from_numpy(np.ascontiguousarray(mask != holes)).to(torch.uint8)[None, None]
    labels, areas = get_connected_components(working)
    labels, areas = labels[0, 0].cpu().numpy(), areas[0, 0].cpu().numpy()
    region = labels > 0
    small = region & (areas < area_thresh)
    if not small.any():
        return mask, False
    if holes:
        return mask | small, True
    big = region & ~small
    if not big.any():  # every island is small: keep the largest (first by label order on ties)
        biggest = areas[region].max()
        big = labels == _first_label_with_area(labels, areas, biggest)
    return big, True


def _first_label_with_area(labels: np.ndarray, areas: np.ndarray, area: int) -> int:
    """The component that cv2 would number first (raster order of its first pixel) among those
    of the given area."""
    flat_labels, flat_areas = labels.ravel(), areas.ravel()
    first = np.flatnonzero((flat_areas == area) & (flat_labels > 0))[0]
    return int(flat_labels[first])

"""Connected components (8-connectivity) of binary masks, and SAM 2's hole / sprinkle filling.

Every implementation returns the same result, pixel for pixel: a foreground pixel's label is
``1 + the raster index (row * W + col) of the first pixel of its component`` and its count is the
component's area; background pixels get 0 and 0. (The official kernel's labels are other
arbitrary positive ints; only the partition and the areas carry meaning.)

Dispatch: CUDA tensors use the CUDA kernel where it loads (built on first use, cached); every
other case uses the exact CPU op (C++, compiled on first use in about a second), moving CUDA
tensors to the CPU and back; where no compiler is available, an exact vectorised torch
implementation runs on the tensor's own device.
"""

from __future__ import annotations

import numbers

import torch

from dp_sam2.ext import _build


def _check_mask(mask) -> torch.Tensor:
    """The mask as a contiguous uint8 [N, 1, H, W] tensor (nonzero = foreground)."""
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"expected a torch.Tensor mask of shape [N, 1, H, W], got {type(mask).__name__}")
    if mask.dim() != 4 or mask.shape[1] != 1:
        raise ValueError(f"expected a mask of shape [N, 1, H, W], got shape {tuple(mask.shape)}")
    if mask.dtype == torch.uint8:
        return mask.contiguous()
    if mask.dtype == torch.bool:
        return mask.contiguous().view(torch.uint8)
    if mask.dtype.is_floating_point or mask.dtype.is_complex:
        raise TypeError(f"expected a bool or integer mask, got {mask.dtype}; threshold scores first (e.g. scores > 0)")
    return (mask != 0).contiguous().view(torch.uint8)


def get_connected_components(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Connected components (8-connectivity) of binary masks of shape [N, 1, H, W].

    ``mask`` is bool or integer (nonzero = foreground), on any device. Returns ``(labels,
    counts)``, int32 [N, 1, H, W] on the mask's device: per foreground pixel the label of its
    component (1 + raster index of the component's first pixel) and the component's area; 0 and 0
    on background.
    """
    img = _check_mask(mask)
    if img.numel() == 0:
        empty = torch.zeros(img.shape, dtype=torch.int32, device=img.device)
        return empty, empty.clone()
    if img.is_cuda and _build.cuda_kernel(img.device):
        try:
            return tuple(torch.ops.dp_sam2_ext.connected_components(img))
        except RuntimeError as exc:  # e.g. no kernel image for this GPU: warn once, go on exactly
            _build.disable_cuda(exc)
    if img.shape[2] * img.shape[3] <= 2**31 - 1 and _build.cpu_library() is not None:
        labels, counts = cc_cpu_op(img.cpu())
        return labels.to(img.device), counts.to(img.device)
    return cc_torch(img)


def implementation(device: str | torch.device = "cpu", *, build: bool = False) -> str:
    """Which implementation serves masks on ``device``: 'cuda kernel', 'cpu op' or 'torch'.

    With ``build=False`` nothing is compiled (prebuilt libraries are loaded): a library that
    is not built yet but can be reads as '... (compiled on first use)'.
    """
    device = torch.device(device)
    if device.type == "cuda" and torch.cuda.is_available():
        if _build.cuda_kernel(device, build_if_missing=build):
            return "cuda kernel"
        if "cuda" not in _build._state.failures and not _build.is_built("cuda") and _build.cuda_build_blocker() is None:
            return "cuda kernel (compiled on first use)"
    if _build.cpu_library(build_if_missing=build) is not None:
        return "cpu op"
    if "cpu" not in _build._state.failures and _build.cpu_build_blocker() is None:
        return "cpu op (compiled on first use)"
    return "torch"


def cc_cpu_op(img: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The C++ union-find op on a contiguous uint8 CPU tensor [N, 1, H, W]."""
    lib = _build.cpu_library()
    if lib is None:
        raise RuntimeError("the CPU connected-components op is not available")
    if img.device.type != "cpu" or img.dtype != torch.uint8 or not img.is_contiguous():
        raise ValueError("cc_cpu_op expects a contiguous uint8 CPU tensor")
    labels = torch.empty(img.shape, dtype=torch.int32)
    counts = torch.empty(img.shape, dtype=torch.int32)
    n, _, h, w = img.shape
    err = lib.dp_sam2_cc_cpu(img.data_ptr(), labels.data_ptr(), counts.data_ptr(), n, h, w, torch.get_num_threads())
    if err:
        raise RuntimeError(f"dp_sam2_cc_cpu failed (code {err}) on a mask of shape {tuple(img.shape)}")
    return labels, counts


def cc_torch(img: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact connected components in vectorised torch, on the tensor's device.

    Works on horizontal runs of foreground (raster order): each run is joined to the runs of the
    row above that it touches (8-connectivity: columns overlapping its own widened by one, found
    by binary search), then union-find in rounds: every edge between two different trees hooks
    the larger root under the smallest root it touches (scatter amin), and pointer jumping
    flattens the forest. Pointers only decrease, so the surviving root of a component is its
    first run in raster order, whose first pixel gives the label.
    """
    n, _, h, w = img.shape
    fg = img.reshape(n, h, w) != 0
    starts = fg.clone()
    starts[:, :, 1:] &= ~fg[:, :, :-1]
    ends = fg.clone()
    ends[:, :, :-1] &= ~fg[:, :, 1:]
    start_px = starts.view(-1).nonzero().squeeze(1)  # runs in raster order
    end_px = ends.view(-1).nonzero().squeeze(1)
    del starts, ends

    src, dst = _run_edges(start_px, end_px, h, w)
    parent = torch.arange(start_px.numel(), device=img.device)
    while src.numel():
        src, dst = parent.index_select(0, src), parent.index_select(0, dst)
        keep = src != dst
        src, dst = src[keep], dst[keep]
        if not src.numel():
            break
        parent.scatter_reduce_(0, torch.maximum(src, dst), torch.minimum(src, dst), reduce="amin")
        parent = _flatten(parent)

    lengths = end_px - start_px + 1
    area = torch.zeros_like(lengths).index_add_(0, parent, lengths).index_select(0, parent)
    label = start_px.index_select(0, parent) % (h * w) + 1
    fg = fg.view(n, 1, h, w)
    labels = torch.zeros(fg.shape, dtype=torch.int32, device=img.device)
    counts = torch.zeros(fg.shape, dtype=torch.int32, device=img.device)
    labels.masked_scatter_(fg, label.int().repeat_interleave(lengths))
    counts.masked_scatter_(fg, area.int().repeat_interleave(lengths))
    return labels, counts


def _run_edges(start_px: torch.Tensor, end_px: torch.Tensor, h: int, w: int):
    """Edges (run, run above it that it touches): for a run on row y over columns [s, e], the
    runs of row y - 1 of the same image meeting columns [s - 1, e + 1], a contiguous range."""
    row = start_px // w
    lo = torch.maximum(start_px - w - 1, (row - 1) * w)  # flat positions on the row above
    hi = torch.minimum(end_px - w + 1, row * w - 1)
    first = torch.searchsorted(end_px, lo)  # first run ending at or after lo
    last = torch.searchsorted(start_px, hi, right=True) - 1  # last run starting at or before hi
    many = torch.where(row % h != 0, (last - first + 1).clamp(min=0), 0)
    runs = torch.arange(start_px.numel(), device=start_px.device)
    src = runs.repeat_interleave(many)
    offset = torch.cumsum(many, 0) - many
    dst = first.index_select(0, src) + (torch.arange(src.numel(), device=src.device) - offset.index_select(0, src))
    return src, dst


def _flatten(parent: torch.Tensor) -> torch.Tensor:
    while True:
        grand = parent.index_select(0, parent)
        if torch.equal(grand, parent):
            return parent
        parent = grand


# --------------------------------------------------------------------------- SAM 2 post-processing
def _check_scores(scores, name: str) -> None:
    if not isinstance(scores, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor of mask scores, got {type(scores).__name__}")
    if not scores.dtype.is_floating_point:
        raise TypeError(f"{name}: expected floating-point mask scores (logits), got {scores.dtype}")


def _check_area(value, name: str, *, positive: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    if positive and not value > 0:
        raise ValueError(f"{name} must be positive, got {value}")
    return value


def fill_holes_in_mask_scores(mask: torch.Tensor, max_area: float) -> torch.Tensor:
    """Fill small holes in mask scores, as SAM 2's video predictor does (``fill_hole_area``).

    Holes are 8-connected components of background (scores <= 0) of area <= ``max_area``; their
    scores become 0.1 (just foreground). ``mask`` is float [N, 1, H, W] on any device; the result
    has its dtype and device. Unlike the official function, this works without the CUDA kernel
    (it never skips silently). ``max_area`` must be positive, as there.
    """
    _check_scores(mask, "fill_holes_in_mask_scores")
    max_area = _check_area(max_area, "max_area", positive=True)
    labels, areas = get_connected_components(mask <= 0)
    is_hole = (labels > 0) & (areas <= max_area)
    return torch.where(is_hole, 0.1, mask)


def fill_holes_and_remove_sprinkles(
    masks: torch.Tensor, max_hole_area: float = 0.0, max_sprinkle_area: float = 0.0, mask_threshold: float = 0.0
) -> torch.Tensor:
    """The image predictor's post-processing (``max_hole_area`` / ``max_sprinkle_area``) before
    the resize to the original image size, as SAM 2's ``SAM2Transforms.postprocess_masks``.

    ``masks`` is [B, C, H, W] scores (returned as float32, like there). Background components
    (scores <= threshold) of area <= ``max_hole_area`` become ``threshold + 10``; then foreground
    components of the *input* (scores > threshold) of area <= ``max_sprinkle_area`` become
    ``threshold - 10``. An area of 0 or less turns that step off.
    """
    _check_scores(masks, "fill_holes_and_remove_sprinkles")
    if masks.dim() != 4:
        raise ValueError(f"expected masks of shape [B, C, H, W], got shape {tuple(masks.shape)}")
    max_hole_area = _check_area(max_hole_area, "max_hole_area", positive=False)
    max_sprinkle_area = _check_area(max_sprinkle_area, "max_sprinkle_area", positive=False)
    masks = masks.float()
    flat = masks.flatten(0, 1).unsqueeze(1)
    if max_hole_area > 0:
        labels, areas = get_connected_components(flat <= mask_threshold)
        is_hole = ((labels > 0) & (areas <= max_hole_area)).reshape_as(masks)
        masks = torch.where(is_hole, mask_threshold + 10.0, masks)
    if max_sprinkle_area > 0:
        labels, areas = get_connected_components(flat > mask_threshold)
        is_sprinkle = ((labels > 0) & (areas <= max_sprinkle_area)).reshape_as(masks)
        masks = torch.where(is_sprinkle, mask_threshold - 10.0, masks)
    return masks

"""Image and prompt transforms between a user's image frame and SAM 2's square input frame.

Numerics follow the official ``SAM2Transforms``: an RGB image becomes float32 in [0, 1] (uint8
divided by 255, as torchvision's ``ToTensor``), is resized to ``resolution x resolution`` with
torchvision's bilinear resize (antialiased, the torchvision default on tensors) and normalised
with the ImageNet mean/std. Points and boxes are scaled from the image's pixel frame to the
input frame; output logits are postprocessed (optional hole filling and sprinkle removal) and
resized back to the image size.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


# --------------------------------------------------------------------------- image checks
def image_to_array(image, what: str = "image") -> np.ndarray:
    """Check an RGB image (``HxWx3`` uint8 or float in [0, 1] numpy array, or PIL RGB image) and
    return it as a numpy array; raise TypeError/ValueError saying what was expected."""
    expected = "an RGB image as a HxWx3 uint8 numpy array (or float in [0, 1]) or a PIL RGB image"
    if _is_pil(image):
        if image.mode != "RGB":
            raise ValueError(
                f"{what}: expected {expected}; got a PIL image of mode {image.mode!r} "
                f"(convert it with image.convert('RGB'))"
            )
        w, h = image.size
        if h == 0 or w == 0:
            raise ValueError(f"{what}: expected {expected}; got an empty PIL image of size {w}x{h}")
        return np.asarray(image)
    if isinstance(image, torch.Tensor):
        raise TypeError(
            f"{what}: expected {expected}; got a torch.Tensor of shape {tuple(image.shape)} "
            "(convert it with .cpu().numpy() as HxWx3)"
        )
    if not isinstance(image, np.ndarray):
        raise TypeError(f"{what}: expected {expected}; got {type(image).__name__}")
    if image.ndim != 3 or image.shape[2] != 3:
        kind = {2: "a grayscale image", 3: f"{image.shape[2] if image.ndim == 3 else '?'} channels"}
        got = kind.get(image.ndim, f"{image.ndim} dimensions")
        if image.ndim == 3 and image.shape[2] == 4:
            got = "an RGBA image"
        raise ValueError(f"{what}: expected {expected}; got shape {image.shape} ({got})")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"{what}: expected {expected}; got an empty image of shape {image.shape}")
    if image.dtype == np.uint8:
        return image
    if image.dtype.kind != "f":
        raise TypeError(
            f"{what}: expected {expected}; got dtype {image.dtype} (use .astype(np.uint8) for 0..255 values)"
        )
    if not np.isfinite(image).all():
        raise ValueError(f"{what}: expected {expected}; got a float image with NaN or inf values")
    lo, hi = float(image.min()), float(image.max())
    if lo < 0.0 or hi > 1.0:
        raise ValueError(
            f"{what}: expected {expected}; got a float image with values in [{lo:g}, {hi:g}] "
            "(for 0..255 values use .astype(np.uint8), or divide by 255)"
        )
    return image


def _is_pil(obj) -> bool:
    try:
        from PIL.Image import Image
    except ImportError:  # pragma: no cover
        return False
    return isinstance(obj, Image)


def image_hw(image) -> tuple[int, int]:
    """(height, width) of a checked image array."""
    return int(image.shape[0]), int(image.shape[1])


# --------------------------------------------------------------------------- transforms
@dataclass
class SAM2Transforms:
    """The official ``SAM2Transforms`` contract: ``resolution``, ``mask_threshold``,
    ``max_hole_area``, ``max_sprinkle_area``; ``transform_coords``, ``transform_boxes``,
    ``postprocess_masks``. ``__call__`` maps a checked image array to ``[3, res, res]``."""

    resolution: int
    mask_threshold: float = 0.0
    max_hole_area: float = 0.0
    max_sprinkle_area: float = 0.0

    def __call__(self, image, device: torch.device | str = "cpu") -> torch.Tensor:
        arr = image_to_array(image)
        x = torch.from_numpy(np.ascontiguousarray(arr)).to(device)
        x = x.permute(2, 0, 1)
        x = x.float().div(255) if x.dtype == torch.uint8 else x.float()
        return self.resize_normalize(x)

    def resize_normalize(self, x: torch.Tensor) -> torch.Tensor:
        """``[3, H, W]`` float in [0, 1] -> ``[3, res, res]`` normalised (torchvision Resize +
        Normalize, as the official)."""
        from torchvision.transforms import InterpolationMode
        from torchvision.transforms import functional as TF

        x = TF.resize(x, [self.resolution, self.resolution], interpolation=InterpolationMode.BILINEAR, antialias=True)
        return TF.normalize(x, IMAGENET_MEAN, IMAGENET_STD)

    def forward_batch(self, images, device: torch.device | str = "cpu") -> torch.Tensor:
        return torch.stack([self(img, device) for img in images], dim=0)

    def transform_coords(self, coords: torch.Tensor, normalize: bool = False, orig_hw=None) -> torch.Tensor:
        """Points ``[..., 2]`` (x, y) to the input frame. With ``normalize`` they are pixels of an
        image of size ``orig_hw``; otherwise already in [0, 1]."""
        if normalize:
            if orig_hw is None:
                raise ValueError("transform_coords(normalize=True) needs orig_hw=(height, width)")
            h, w = orig_hw
            coords = coords.clone()
            coords[..., 0] = coords[..., 0] / w
            coords[..., 1] = coords[..., 1] / h
        return coords * self.resolution

    def transform_boxes(self, boxes: torch.Tensor, normalize: bool = False, orig_hw=None) -> torch.Tensor:
        """Boxes ``[..., 4]`` (x0, y0, x1, y1) to corner points ``[B, 2, 2]`` in the input frame."""
        return self.transform_coords(boxes.reshape(-1, 2, 2), normalize, orig_hw)

    def postprocess_masks(self, masks: torch.Tensor, orig_hw) -> torch.Tensor:
        """Low-resolution logits ``[B, C, h, w]`` -> logits ``[B, C, H, W]`` at the image size,
        after filling small background holes and removing small foreground sprinkles."""
        masks = fill_holes_and_sprinkles(masks.float(), self.mask_threshold, self.max_hole_area, self.max_sprinkle_area)
        return F.interpolate(masks, tuple(orig_hw), mode="bilinear", align_corners=False)


def fill_holes_and_sprinkles(
    masks: torch.Tensor, threshold: float, max_hole_area: float, max_sprinkle_area: float
) -> torch.Tensor:
    """The official predictor's postprocessing on logits ``[B, C, h, w]``: background components
    (scores <= threshold) of area <= ``max_hole_area`` get ``threshold + 10``; foreground
    components (scores > threshold, of the *input* scores) of area <= ``max_sprinkle_area`` get
    ``threshold - 10``. Components are 8-connected; done on every device."""
    if max_hole_area <= 0 and max_sprinkle_area <= 0:
        return masks
    from dp_sam2.ext import get_connected_components  # lazy: the extension loads on first use

    flat = masks.flatten(0, 1).unsqueeze(1)
    n = flat.shape[0]
    parts = []
    if max_hole_area > 0:
        parts.append(flat <= threshold)
    if max_sprinkle_area > 0:
        parts.append(flat > threshold)
    labels, areas = get_connected_components(torch.cat(parts, dim=0).to(torch.uint8))
    labels, areas = labels.to(masks.device), areas.to(masks.device)
    out = masks
    part = 0
    if max_hole_area > 0:
        is_hole = (labels[:n] > 0) & (areas[:n] <= max_hole_area)
        out = torch.where(is_hole.reshape_as(masks), threshold + 10.0, out)
        part = 1
    if max_sprinkle_area > 0:
        sl = slice(part * n, (part + 1) * n)
        is_sprinkle = (labels[sl] > 0) & (areas[sl] <= max_sprinkle_area)
        out = torch.where(is_sprinkle.reshape_as(masks), threshold - 10.0, out)
    return out

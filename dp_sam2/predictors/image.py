"""SAM2ImagePredictor: embed an image once, then decode masks for any number of prompts.

Same API, outputs and numerics as the official ``sam2.sam2_image_predictor.SAM2ImagePredictor``,
with three differences: it works at any ``image_size`` that is a multiple of 32 (the feature
sizes come from the model, not 1024's hard-coded ones), bad inputs raise ``TypeError`` /
``ValueError`` saying what was expected and what came, and ``max_hole_area`` /
``max_sprinkle_area`` postprocessing runs on every device (``dp_sam2.ext``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from dp_sam2.encoders.sam2.precision import check_precision, precision_autocast

from .pretrained import build_pretrained
from .transforms import SAM2Transforms, image_hw, image_to_array

_PREDICTOR_KWARGS = ("mask_threshold", "max_hole_area", "max_sprinkle_area", "precision")


@dataclass
class ImageFeatures:
    """What ``set_image`` / ``set_image_batch`` computed: per-image embeddings and sizes."""

    image_embed: torch.Tensor  # [B, C, s/16, s/16]
    high_res_feats: list[torch.Tensor]  # [B, C0, s/4, s/4], [B, C1, s/8, s/8]
    orig_hw: list[tuple[int, int]]  # (H, W) of each image
    is_batch: bool

    def as_dict(self) -> dict:
        return {"image_embed": self.image_embed, "high_res_feats": self.high_res_feats}


@dataclass
class Prompts:
    """Prompts of one image, in the model's input frame, all with the same batch ``B``."""

    coords: torch.Tensor | None = None  # [B, N, 2]
    labels: torch.Tensor | None = None  # [B, N] int32
    boxes: torch.Tensor | None = None  # [B, 2, 2]
    mask_input: torch.Tensor | None = None  # [B, 1, h, w]
    batch: int = 1


class SAM2ImagePredictor:
    def __init__(
        self,
        sam_model,
        mask_threshold: float = 0.0,
        max_hole_area: float = 0.0,
        max_sprinkle_area: float = 0.0,
        precision: str = "fp32",
        **kwargs,
    ) -> None:
        """``sam_model``: a SAM2Base (from ``build_sam2``). Masks are logits thresholded at
        ``mask_threshold``; holes up to ``max_hole_area`` and sprinkles up to
        ``max_sprinkle_area`` pixels of the low-resolution masks are removed when > 0."""
        for name, value in (("max_hole_area", max_hole_area), ("max_sprinkle_area", max_sprinkle_area)):
            if not isinstance(value, (int, float)) or value < 0:
                raise ValueError(f"{name} must be a number >= 0, got {value!r}")
        self.model = sam_model
        # "bf16": the image encoder (nearly all the time) under bfloat16 autocast, embeddings kept
        # in fp32 and the light prompt decoder in fp32; fast on GPUs and CPUs with bf16 matmuls
        # (AVX512-BF16 / AMX), slower than fp32 on CPUs without them
        self.precision = check_precision(precision)
        self.mask_threshold = mask_threshold
        self._transforms = SAM2Transforms(
            resolution=sam_model.image_size,
            mask_threshold=mask_threshold,
            max_hole_area=max_hole_area,
            max_sprinkle_area=max_sprinkle_area,
        )
        self._state: ImageFeatures | None = None

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_pretrained(cls, model_id_or_name: str, **kwargs) -> SAM2ImagePredictor:
        """Build from a hub id, short name or official config name (``"facebook/sam2-hiera-large"``,
        ``"sam2.1_tiny"``, ``"configs/sam2.1/sam2.1_hiera_t.yaml"``); the official checkpoint is
        found locally or downloaded (see :mod:`dp_sam2.predictors.pretrained`).

        Keyword arguments: ``ckpt_path`` (or ``checkpoint``), ``source`` (``"official"`` or
        ``"huggingface"``), ``device``, ``mode``, ``hydra_overrides_extra``,
        ``apply_postprocessing``, ``image_size`` and the predictor's own options."""
        own = {k: kwargs.pop(k) for k in _PREDICTOR_KWARGS if k in kwargs}
        return cls(build_pretrained(model_id_or_name, **kwargs), **own)

    # ------------------------------------------------------------------ state
    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def _is_image_set(self) -> bool:
        return self._state is not None

    @property
    def _is_batch(self) -> bool:
        return self._state is not None and self._state.is_batch

    @property
    def _features(self) -> dict | None:
        return None if self._state is None else self._state.as_dict()

    @property
    def _orig_hw(self) -> list[tuple[int, int]] | None:
        return None if self._state is None else self._state.orig_hw

    @property
    def _bb_feat_sizes(self) -> list[tuple[int, int]]:
        """Backbone feature sizes at strides 4, 8, 16 for this model's ``image_size``."""
        s = self.model.image_size
        return [(s // 4, s // 4), (s // 8, s // 8), (s // 16, s // 16)]

    def reset_predictor(self) -> None:
        """Forget the image(s) set."""
        self._state = None

    # ------------------------------------------------------------------ images
    @torch.no_grad()
    def set_image(self, image) -> None:
        """Compute the embeddings of one RGB image (HxWx3 uint8 / float in [0, 1] array, or PIL)."""
        self.reset_predictor()
        arr = image_to_array(image)
        batch = self._transforms(arr, self.device)[None]
        self._state = self._embed(batch, [image_hw(arr)], is_batch=False)

    @torch.no_grad()
    def set_image_batch(self, image_list) -> None:
        """Compute the embeddings of a list of RGB images (sizes may differ); then use
        :meth:`predict_batch`."""
        self.reset_predictor()
        if not isinstance(image_list, (list, tuple)):
            raise TypeError(f"set_image_batch expects a list of images, got {type(image_list).__name__}")
        if len(image_list) == 0:
            raise ValueError("set_image_batch expects a non-empty list of images, got an empty list")
        arrays = [image_to_array(img, what=f"image_list[{i}]") for i, img in enumerate(image_list)]
        batch = self._transforms.forward_batch(arrays, self.device)
        self._state = self._embed(batch, [image_hw(a) for a in arrays], is_batch=True)

    def _embed(self, batch: torch.Tensor, orig_hw, is_batch: bool) -> ImageFeatures:
        model = self.model
        with precision_autocast(batch.device, self.precision):
            backbone_out = model.forward_image(batch)
            _, vision_feats, _, feat_sizes = model._prepare_backbone_features(backbone_out)
        if model.directly_add_no_mem_embed:
            vision_feats[-1] = vision_feats[-1] + model.no_mem_embed
        b = batch.shape[0]
        feats = [
            f.float().permute(1, 2, 0).reshape(b, -1, h, w) for f, (h, w) in zip(vision_feats, feat_sizes, strict=True)
        ]
        return ImageFeatures(feats[-1], feats[:-1], list(orig_hw), is_batch)

    def get_image_embedding(self) -> torch.Tensor:
        """The stride-16 embedding ``[B, C, s/16, s/16]`` of the image(s) set."""
        self._require_image("get_image_embedding", batch=None)
        return self._state.image_embed

    def _require_image(self, what: str, batch: bool | None) -> None:
        if self._state is None:
            setter = "set_image_batch" if batch else "set_image"
            raise RuntimeError(f"An image must be set with .{setter}(...) before {what}() (no image is set)")
        if batch is True and not self._state.is_batch:
            raise RuntimeError(
                "predict_batch() needs images set with .set_image_batch(...); "
                "an image was set with .set_image(...): use predict()"
            )
        if batch is False and self._state.is_batch and len(self._state.orig_hw) != 1:
            raise RuntimeError(
                f"predict() works on one image, but {len(self._state.orig_hw)} were set "
                "with .set_image_batch(...): use predict_batch()"
            )

    # ------------------------------------------------------------------ prediction
    def predict(
        self,
        point_coords=None,
        point_labels=None,
        box=None,
        mask_input=None,
        multimask_output: bool = True,
        return_logits: bool = False,
        normalize_coords: bool = True,
    ):
        """Masks for prompts on the image set.

        ``point_coords`` ``(N, 2)`` or ``(B, N, 2)`` (x, y) pixels with ``point_labels`` ``(N,)`` /
        ``(B, N)`` (1 foreground, 0 background); ``box`` ``(4,)`` or ``(B, 4)`` x0, y0, x1, y1;
        ``mask_input`` ``(1, h, w)`` or ``(B, 1, h, w)`` low-resolution logits from a previous
        call. Returns numpy ``masks`` ``(C, H, W)`` (``(B, C, H, W)`` for batched prompts),
        ``iou_predictions`` ``(C,)`` and low-resolution logits ``(C, h, w)``."""
        self._require_image("predict", batch=False)
        prompts = self._prep_prompts(point_coords, point_labels, box, mask_input, normalize_coords, img_idx=0)
        out = self._predict(
            prompts.coords,
            prompts.labels,
            prompts.boxes,
            prompts.mask_input,
            multimask_output,
            return_logits=return_logits,
            img_idx=0,
        )
        return tuple(_to_numpy(t) for t in out)

    def predict_batch(
        self,
        point_coords_batch=None,
        point_labels_batch=None,
        box_batch=None,
        mask_input_batch=None,
        multimask_output: bool = True,
        return_logits: bool = False,
        normalize_coords: bool = True,
    ):
        """:meth:`predict` for each image set with :meth:`set_image_batch`; each argument is a
        list with one entry per image. Returns lists of masks, IoU predictions, low-res logits."""
        self._require_image("predict_batch", batch=True)
        n = len(self._state.orig_hw)
        lists = {
            "point_coords_batch": point_coords_batch,
            "point_labels_batch": point_labels_batch,
            "box_batch": box_batch,
            "mask_input_batch": mask_input_batch,
        }
        for name, value in lists.items():
            if value is not None and (not isinstance(value, (list, tuple)) or len(value) != n):
                got = f"length {len(value)}" if isinstance(value, (list, tuple)) else type(value).__name__
                raise ValueError(f"{name} must be a list with one entry per image ({n}), got {got}")
        results = ([], [], [])
        for i in range(n):
            pick = [None if v is None else v[i] for v in lists.values()]
            prompts = self._prep_prompts(*pick, normalize_coords, img_idx=i)
            out = self._predict(
                prompts.coords,
                prompts.labels,
                prompts.boxes,
                prompts.mask_input,
                multimask_output,
                return_logits=return_logits,
                img_idx=i,
            )
            for acc, t in zip(results, out, strict=True):
                acc.append(_to_numpy(t))
        return results

    def _prep_prompts(self, point_coords, point_labels, box, mask_logits, normalize_coords, img_idx=-1) -> Prompts:
        """Check the prompts of image ``img_idx`` and move them to the model's input frame."""
        device, orig_hw = self.device, self._state.orig_hw[img_idx]
        prompts, batches = Prompts(), {}
        if point_coords is None and point_labels is not None:
            raise ValueError("point_labels was given without point_coords")
        if point_coords is not None:
            coords, labels = check_points(point_coords, point_labels)
            batches["point_coords"] = coords.shape[0]
            coords = torch.as_tensor(coords, dtype=torch.float, device=device)
            prompts.coords = self._transforms.transform_coords(coords, normalize=normalize_coords, orig_hw=orig_hw)
            prompts.labels = torch.as_tensor(labels, dtype=torch.int, device=device)
        if box is not None:
            boxes = check_boxes(box)
            batches["box"] = boxes.shape[0]
            boxes = torch.as_tensor(boxes, dtype=torch.float, device=device)
            prompts.boxes = self._transforms.transform_boxes(boxes, normalize=normalize_coords, orig_hw=orig_hw)
        if mask_logits is not None:
            size = tuple(self.model.sam_prompt_encoder.mask_input_size)
            mask = check_mask_input(mask_logits, size)
            batches["mask_input"] = mask.shape[0]
            prompts.mask_input = torch.as_tensor(mask, dtype=torch.float, device=device)
        if len(set(batches.values())) > 1:
            sizes = ", ".join(f"{k}: {v}" for k, v in batches.items())
            raise ValueError(f"prompts must have the same batch size B; got {sizes}")
        prompts.batch = next(iter(batches.values()), 1)
        return prompts

    @torch.no_grad()
    def _predict(
        self,
        point_coords,
        point_labels,
        boxes=None,
        mask_input=None,
        multimask_output: bool = True,
        return_logits: bool = False,
        img_idx: int = -1,
    ):
        """Masks for prompts already in the input frame (torch): ``point_coords`` ``[B, N, 2]``,
        ``point_labels`` ``[B, N]``, ``boxes`` ``[B, 2, 2]`` or ``[B, 4]``, ``mask_input``
        ``[B, 1, h, w]``. Returns torch ``masks [B, C, H, W]``, ``iou [B, C]``, low-res logits."""
        if self._state is None:
            raise RuntimeError("An image must be set with .set_image(...) before mask prediction.")
        model = self.model
        points = None if point_coords is None else (point_coords, point_labels)
        if boxes is not None:  # box corners go first, labelled 2 (top-left) and 3 (bottom-right)
            corners = boxes.reshape(-1, 2, 2)
            corner_labels = torch.tensor([[2, 3]], dtype=torch.int, device=boxes.device).repeat(corners.shape[0], 1)
            if points is None:
                points = (corners, corner_labels)
            else:
                points = (torch.cat([corners, points[0]], dim=1), torch.cat([corner_labels, points[1]], dim=1))
        state = self._state
        high_res = [f[img_idx].unsqueeze(0) for f in state.high_res_feats] or None
        sparse, dense = model.sam_prompt_encoder(points=points, boxes=None, masks=mask_input)
        low_res_masks, iou_predictions, _, _ = model.sam_mask_decoder(
            image_embeddings=state.image_embed[img_idx].unsqueeze(0),
            image_pe=model.sam_prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=multimask_output,
            repeat_image=sparse.shape[0] > 1,
            high_res_features=high_res,
        )
        masks = self._transforms.postprocess_masks(low_res_masks, state.orig_hw[img_idx])
        low_res_masks = torch.clamp(low_res_masks, -32.0, 32.0)
        if not return_logits:
            masks = masks > self.mask_threshold
        return masks, iou_predictions, low_res_masks


# --------------------------------------------------------------------------- prompt checks
def _numeric_array(value, name: str, expected: str) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    try:
        arr = np.asarray(value)
    except (ValueError, TypeError) as err:  # ragged lists
        raise ValueError(f"{name} must be {expected}; could not read it as an array ({err})") from None
    if arr.dtype.kind not in "biuf":
        raise TypeError(f"{name} must be {expected} of numbers; got dtype {arr.dtype}")
    return arr


def _check_finite(arr: np.ndarray, name: str) -> None:
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        raise ValueError(f"{name} must be finite; got NaN or inf values")


def check_points(point_coords, point_labels) -> tuple[np.ndarray, np.ndarray]:
    """Coordinates ``(N, 2)`` / ``(B, N, 2)`` and labels of the same leading shape, batched to
    ``(B, N, 2)`` and ``(B, N)``."""
    coords = _numeric_array(point_coords, "point_coords", "an array of shape (N, 2) or (B, N, 2)")
    if coords.ndim not in (2, 3) or coords.shape[-1] != 2 or coords.shape[-2] == 0:
        raise ValueError(
            f"point_coords must have shape (N, 2) or (B, N, 2) with N >= 1 (x, y pixel "
            f"coordinates); got shape {coords.shape}"
        )
    _check_finite(coords, "point_coords")
    if point_labels is None:
        raise ValueError(
            f"point_labels must be given with point_coords: expected shape "
            f"{coords.shape[:-1]} (1 = foreground, 0 = background), got None"
        )
    labels = _numeric_array(point_labels, "point_labels", f"an array of shape {coords.shape[:-1]}")
    if labels.shape != coords.shape[:-1]:
        raise ValueError(
            f"point_labels must have one label per point: expected shape {coords.shape[:-1]}, got shape {labels.shape}"
        )
    _check_finite(labels, "point_labels")
    if labels.size and (np.any(labels != np.round(labels)) or labels.min() < -1 or labels.max() > 3):
        raise ValueError(
            f"point_labels must be integers in {{-1, 0, 1, 2, 3}} (1 foreground, 0 background); "
            f"got values {np.unique(labels).tolist()[:8]}"
        )
    if coords.ndim == 2:
        coords, labels = coords[None], labels[None]
    return coords, labels


def check_boxes(box) -> np.ndarray:
    """A box ``(4,)`` or boxes ``(B, 4)`` (also ``(B, 1, 4)``) -> ``(B, 4)``."""
    boxes = _numeric_array(box, "box", "4 numbers (x0, y0, x1, y1) or an array of shape (B, 4)")
    ok = (
        (boxes.ndim == 1 and boxes.shape == (4,))
        or (boxes.ndim == 2 and boxes.shape[1] == 4 and boxes.shape[0] > 0)
        or (boxes.ndim == 3 and boxes.shape[1:] == (1, 4) and boxes.shape[0] > 0)
    )
    if not ok:
        raise ValueError(f"box must be 4 numbers (x0, y0, x1, y1): shape (4,) or (B, 4); got shape {boxes.shape}")
    _check_finite(boxes, "box")
    return boxes.reshape(-1, 4)


def check_mask_input(mask_input, size: tuple[int, int]) -> np.ndarray:
    """Low-resolution mask logits ``(1, h, w)`` or ``(B, 1, h, w)`` -> ``(B, 1, h, w)``."""
    h, w = size
    expected = f"shape (1, {h}, {w}) or (B, 1, {h}, {w}) (low-resolution logits of a previous predict)"
    mask = _numeric_array(mask_input, "mask_input", f"an array of {expected}")
    if mask.ndim == 3 and mask.shape == (1, h, w):
        mask = mask[None]
    if mask.ndim != 4 or mask.shape[1:] != (1, h, w) or mask.shape[0] == 0:
        raise ValueError(f"mask_input must have {expected}; got shape {mask.shape}")
    if mask.dtype.kind == "f" and np.isnan(mask).any():
        raise ValueError("mask_input must not contain NaN values")
    return mask


def _to_numpy(t: torch.Tensor) -> np.ndarray:
    return t.squeeze(0).float().detach().cpu().numpy()

"""SAM2AutomaticMaskGenerator: masks for a whole image from a grid of point prompts.

Same parameters, records and numerics as the official ``sam2.automatic_mask_generator``: per
crop, the image is embedded once, each grid point is decoded (optionally refined once with its
own mask, ``use_m2m``), masks are filtered by predicted IoU and stability, deduplicated with box
NMS (torchvision ``batched_nms``), and crops are merged preferring smaller crops.
``min_mask_region_area`` fills holes and removes sprinkles of the low-resolution masks through
the image predictor (8-connected components of ``dp_sam2.ext``, on every device).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torchvision.ops.boxes import batched_nms, box_area

from .amg import (
    MaskData,
    area_from_rle,
    batch_iterator,
    batched_mask_to_box,
    box_xyxy_to_xywh,
    build_all_layer_point_grids,
    calculate_stability_score,
    coco_encode_rle,
    generate_crop_boxes,
    is_box_near_crop_edge,
    mask_to_rle_pytorch,
    remove_small_regions,
    require_pycocotools,
    rle_to_mask,
    uncrop_boxes_xyxy,
    uncrop_masks,
    uncrop_points,
)
from .image import SAM2ImagePredictor
from .pretrained import build_pretrained
from .transforms import image_to_array

OUTPUT_MODES = ("binary_mask", "uncompressed_rle", "coco_rle")


@dataclass
class GeneratorConfig:
    """The generator's settings (official names and defaults, tuned for SAM 2-L)."""

    points_per_batch: int = 64
    pred_iou_thresh: float = 0.8
    stability_score_thresh: float = 0.95
    stability_score_offset: float = 1.0
    mask_threshold: float = 0.0
    box_nms_thresh: float = 0.7
    crop_n_layers: int = 0
    crop_nms_thresh: float = 0.7
    crop_overlap_ratio: float = 512 / 1500
    crop_n_points_downscale_factor: int = 1
    min_mask_region_area: int = 0
    output_mode: str = "binary_mask"
    use_m2m: bool = False
    multimask_output: bool = True

    def validate(self) -> None:
        if self.output_mode not in OUTPUT_MODES:
            raise ValueError(f"output_mode must be one of {OUTPUT_MODES}, got {self.output_mode!r}")
        if self.output_mode == "coco_rle":
            require_pycocotools()
        for name in ("points_per_batch", "crop_n_points_downscale_factor"):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if not isinstance(self.crop_n_layers, (int, np.integer)) or self.crop_n_layers < 0:
            raise ValueError(f"crop_n_layers must be an integer >= 0, got {self.crop_n_layers!r}")
        if self.min_mask_region_area < 0:
            raise ValueError(f"min_mask_region_area must be >= 0, got {self.min_mask_region_area!r}")


class SAM2AutomaticMaskGenerator:
    def __init__(
        self,
        model,
        points_per_side: int | None = 32,
        points_per_batch: int = 64,
        pred_iou_thresh: float = 0.8,
        stability_score_thresh: float = 0.95,
        stability_score_offset: float = 1.0,
        mask_threshold: float = 0.0,
        box_nms_thresh: float = 0.7,
        crop_n_layers: int = 0,
        crop_nms_thresh: float = 0.7,
        crop_overlap_ratio: float = 512 / 1500,
        crop_n_points_downscale_factor: int = 1,
        point_grids: list[np.ndarray] | None = None,
        min_mask_region_area: int = 0,
        output_mode: str = "binary_mask",
        use_m2m: bool = False,
        multimask_output: bool = True,
        **kwargs,
    ) -> None:
        """Arguments as the official generator: ``points_per_side`` (or explicit ``point_grids``,
        one ``(N, 2)`` array in [0, 1] per crop layer) sets the prompts; IoU / stability
        thresholds and NMS thresholds filter masks; ``output_mode`` is ``"binary_mask"``,
        ``"uncompressed_rle"`` or ``"coco_rle"`` (needs pycocotools)."""
        cfg = GeneratorConfig(
            points_per_batch,
            pred_iou_thresh,
            stability_score_thresh,
            stability_score_offset,
            mask_threshold,
            box_nms_thresh,
            crop_n_layers,
            crop_nms_thresh,
            crop_overlap_ratio,
            crop_n_points_downscale_factor,
            min_mask_region_area,
            output_mode,
            use_m2m,
            multimask_output,
        )
        cfg.validate()
        self.config = cfg
        self.point_grids = _point_grids(points_per_side, point_grids, cfg)
        self.predictor = SAM2ImagePredictor(
            model, max_hole_area=min_mask_region_area, max_sprinkle_area=min_mask_region_area
        )

    # the official attribute names (self.pred_iou_thresh, ...) read and write the config
    def __getattr__(self, name: str):
        config = self.__dict__.get("config")
        if config is not None and name in GeneratorConfig.__dataclass_fields__:
            return getattr(config, name)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def __setattr__(self, name: str, value) -> None:
        if name in GeneratorConfig.__dataclass_fields__ and "config" in self.__dict__:
            setattr(self.config, name, value)
        else:
            super().__setattr__(name, value)

    @classmethod
    def from_pretrained(cls, model_id_or_name: str, **kwargs) -> SAM2AutomaticMaskGenerator:
        """Build from a hub id, short name or config name, the checkpoint found locally or downloaded
        (see :meth:`SAM2ImagePredictor.from_pretrained`); generator options go to the generator,
        the rest (``source=``, ``ckpt_path=``, ``device=`` ...) to the builder."""
        import inspect

        own = set(inspect.signature(cls.__init__).parameters) - {"self", "model", "kwargs"}
        gen_kwargs = {k: kwargs.pop(k) for k in list(kwargs) if k in own}
        return cls(build_pretrained(model_id_or_name, **kwargs), **gen_kwargs)

    # ------------------------------------------------------------------ public
    @torch.no_grad()
    def generate(self, image) -> list[dict[str, Any]]:
        """Masks of an RGB image (HxWx3 uint8 / float in [0, 1] array, or PIL). Each record has
        ``segmentation`` (HxW bool array or RLE dict), ``area``, ``bbox`` (XYWH),
        ``predicted_iou``, ``point_coords``, ``stability_score`` and ``crop_box`` (XYWH)."""
        image = image_to_array(image)
        data = self._generate_masks(image)
        rles = data["rles"]
        if self.config.output_mode == "coco_rle":
            segmentations = [coco_encode_rle(rle) for rle in rles]
        elif self.config.output_mode == "binary_mask":
            segmentations = [rle_to_mask(rle) for rle in rles]
        else:
            segmentations = rles
        return [
            {
                "segmentation": segmentations[i],
                "area": area_from_rle(rles[i]),
                "bbox": box_xyxy_to_xywh(data["boxes"][i]).tolist(),
                "predicted_iou": data["iou_preds"][i].item(),
                "point_coords": [data["points"][i].tolist()],
                "stability_score": data["stability_score"][i].item(),
                "crop_box": box_xyxy_to_xywh(data["crop_boxes"][i]).tolist(),
            }
            for i in range(len(segmentations))
        ]

    # ------------------------------------------------------------------ crops
    def _generate_masks(self, image: np.ndarray) -> MaskData:
        orig_size = image.shape[:2]
        crop_boxes, layer_idxs = generate_crop_boxes(
            orig_size, self.config.crop_n_layers, self.config.crop_overlap_ratio
        )
        data = MaskData()
        for crop_box, layer_idx in zip(crop_boxes, layer_idxs, strict=True):
            data.cat(self._process_crop(image, crop_box, layer_idx, orig_size))
        if len(crop_boxes) > 1:  # duplicates across crops: prefer masks of smaller crops
            scores = (1 / box_area(data["crop_boxes"])).to(data["boxes"].device)
            keep = batched_nms(
                data["boxes"].float(),
                scores,
                torch.zeros_like(data["boxes"][:, 0]),
                iou_threshold=self.config.crop_nms_thresh,
            )
            data.filter(keep)
        data.to_numpy()
        return data

    def _process_crop(self, image: np.ndarray, crop_box, crop_layer_idx: int, orig_size) -> MaskData:
        x0, y0, x1, y1 = crop_box
        crop = image[y0:y1, x0:x1, :]
        crop_size = crop.shape[:2]
        self.predictor.set_image(crop)
        scale = np.array(crop_size)[None, ::-1]  # (w, h)
        points_for_image = self.point_grids[crop_layer_idx] * scale
        data = MaskData()
        for (points,) in batch_iterator(self.config.points_per_batch, points_for_image):
            data.cat(self._process_batch(points, crop_size, crop_box, orig_size, normalize=True))
        self.predictor.reset_predictor()

        keep = batched_nms(
            data["boxes"].float(),
            data["iou_preds"],
            torch.zeros_like(data["boxes"][:, 0]),
            iou_threshold=self.config.box_nms_thresh,
        )
        data.filter(keep)
        data["boxes"] = uncrop_boxes_xyxy(data["boxes"], crop_box)
        data["points"] = uncrop_points(data["points"], crop_box)
        n = len(data["rles"])  # [n, 4] even when n == 0 (the official makes a [0] tensor and fails later)
        data["crop_boxes"] = torch.tensor([list(crop_box)] * n, dtype=torch.int64).reshape(n, 4)
        return data

    # ------------------------------------------------------------------ one batch of points
    def _process_batch(self, points: np.ndarray, im_size, crop_box, orig_size, normalize: bool = False) -> MaskData:
        cfg, predictor = self.config, self.predictor
        orig_h, orig_w = orig_size
        points = torch.as_tensor(points, dtype=torch.float32, device=predictor.device)
        in_points = predictor._transforms.transform_coords(points, normalize=normalize, orig_hw=im_size)
        in_labels = torch.ones(in_points.shape[0], dtype=torch.int, device=in_points.device)
        masks, iou_preds, low_res_masks = predictor._predict(
            in_points[:, None, :], in_labels[:, None], multimask_output=cfg.multimask_output, return_logits=True
        )
        data = MaskData(
            masks=masks.flatten(0, 1),
            iou_preds=iou_preds.flatten(0, 1),
            points=points.repeat_interleave(masks.shape[1], dim=0),
            low_res_masks=low_res_masks.flatten(0, 1),
        )
        del masks
        if cfg.use_m2m:  # one refinement step: each mask is fed back with its own point
            in_points = predictor._transforms.transform_coords(data["points"], normalize=normalize, orig_hw=im_size)
            labels = torch.ones(in_points.shape[0], dtype=torch.int, device=in_points.device)
            masks, ious = self.refine_with_m2m(in_points, labels, data["low_res_masks"], cfg.points_per_batch)
            data["masks"], data["iou_preds"] = masks.squeeze(1), ious.squeeze(1)
        self._filter_by_quality(data)

        data["masks"] = data["masks"] > cfg.mask_threshold
        data["boxes"] = batched_mask_to_box(data["masks"])
        keep = ~is_box_near_crop_edge(data["boxes"], crop_box, [0, 0, orig_w, orig_h])
        if not torch.all(keep):
            data.filter(keep)
        data["rles"] = mask_to_rle_pytorch(uncrop_masks(data["masks"], crop_box, orig_h, orig_w))
        del data["masks"]
        return data

    def _filter_by_quality(self, data: MaskData) -> None:
        cfg = self.config
        if cfg.pred_iou_thresh > 0.0:
            data.filter(data["iou_preds"] > cfg.pred_iou_thresh)
        data["stability_score"] = calculate_stability_score(
            data["masks"], cfg.mask_threshold, cfg.stability_score_offset
        )
        if cfg.stability_score_thresh > 0.0:
            data.filter(data["stability_score"] >= cfg.stability_score_thresh)

    def refine_with_m2m(self, points, point_labels, low_res_masks, points_per_batch):
        """Decode each point again with its own low-resolution mask as mask prompt (single output)."""
        masks, ious = [], []
        for pts, labels, low_res in batch_iterator(points_per_batch, points, point_labels, low_res_masks):
            best_masks, best_ious, _ = self.predictor._predict(
                pts[:, None, :],
                labels[:, None],
                mask_input=low_res[:, None, :],
                multimask_output=False,
                return_logits=True,
            )
            masks.append(best_masks)
            ious.append(best_ious)
        return torch.cat(masks, dim=0), torch.cat(ious, dim=0)

    @staticmethod
    def postprocess_small_regions(mask_data: MaskData, min_area: int, nms_thresh: float) -> MaskData:
        """Fill small holes and drop small islands of each mask's RLE, then rerun box NMS preferring
        unchanged masks (the official static helper; ``generate`` does not call it)."""
        if len(mask_data["rles"]) == 0:
            return mask_data
        new_masks, scores = [], []
        for rle in mask_data["rles"]:
            mask, holes_changed = remove_small_regions(rle_to_mask(rle), min_area, mode="holes")
            mask, islands_changed = remove_small_regions(mask, min_area, mode="islands")
            new_masks.append(torch.as_tensor(mask).unsqueeze(0))
            scores.append(float(not (holes_changed or islands_changed)))
        masks = torch.cat(new_masks, dim=0)
        boxes = batched_mask_to_box(masks)
        keep = batched_nms(
            boxes.float(), torch.as_tensor(scores), torch.zeros_like(boxes[:, 0]), iou_threshold=nms_thresh
        )
        for i in keep.tolist():
            if scores[i] == 0.0:
                mask_data["rles"][i] = mask_to_rle_pytorch(masks[i].unsqueeze(0))[0]
                mask_data["boxes"][i] = boxes[i]
        mask_data.filter(keep)
        return mask_data


def _point_grids(points_per_side, point_grids, cfg: GeneratorConfig) -> list[np.ndarray]:
    if (points_per_side is None) == (point_grids is None):
        raise ValueError(
            "give exactly one of points_per_side or point_grids; got "
            f"points_per_side={points_per_side!r} and point_grids="
            f"{'None' if point_grids is None else f'a list of {len(point_grids)}'}"
        )
    if points_per_side is not None:
        if not isinstance(points_per_side, (int, np.integer)) or points_per_side < 1:
            raise ValueError(f"points_per_side must be an integer >= 1, got {points_per_side!r}")
        return build_all_layer_point_grids(points_per_side, cfg.crop_n_layers, cfg.crop_n_points_downscale_factor)
    grids = [np.asarray(g, dtype=np.float64) for g in point_grids]
    if len(grids) < cfg.crop_n_layers + 1:
        raise ValueError(f"point_grids needs one grid per crop layer ({cfg.crop_n_layers + 1}), got {len(grids)}")
    for i, g in enumerate(grids):
        if g.ndim != 2 or g.shape[1] != 2 or len(g) == 0:
            raise ValueError(f"point_grids[{i}] must have shape (N, 2) with points in [0, 1], got shape {g.shape}")
    return grids

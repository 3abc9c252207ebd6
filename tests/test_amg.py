"""SAM2AutomaticMaskGenerator and the amg helpers against the official ones (PyPI sam2==1.1.0).

References: the official generator on the same perturbed random weights (``conftest.build_official``,
saved in the official format and loaded into ours). As in tests/test_image_predictor.py, the
official predictor inside the official generator gets ``_bb_feat_sizes`` for the model's
``image_size`` (it hard-codes 1024's), and its connected components (a CUDA kernel, skipped with a
warning on CPU) are replaced by an exact scipy stand-in (docs/design.md, ruling 2), so
``min_mask_region_area`` acts on both sides. Ours computes components with ``dp_sam2.ext``.

The official ``remove_small_regions`` needs OpenCV, which is not installed here: it gets a stand-in
``cv2`` module whose ``connectedComponentsWithStats`` is scipy's 8-connected labelling (labels
in raster order of first pixel, as OpenCV's).
"""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest
import torch

from conftest import build_official, requires_official, save_official_checkpoint
from dp_sam2 import SAM2AutomaticMaskGenerator, build_sam2
from dp_sam2.predictors import amg
from test_image_predictor import feat_sizes, scipy_connected_components

pytestmark = requires_official

CONFIG, SIZE, SEED = "configs/sam2.1/sam2.1_hiera_t.yaml", 256, 2


def make_image(h: int = 120, w: int = 160) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.stack([(xx * 1.5) % 256, (yy * 2) % 256, ((xx + yy) * 3) % 256], -1).astype(np.uint8)
    img[30:80, 40:100] = [200, 30, 30]
    return img


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    official = build_official(CONFIG, image_size=SIZE, seed=SEED)
    path = save_official_checkpoint(official, tmp_path_factory.mktemp("amg") / "ckpt.pt")
    ours = build_sam2(CONFIG, ckpt_path=str(path), device="cpu", hydra_overrides_extra=[f"++model.image_size={SIZE}"])
    return official, ours


@pytest.fixture
def official_cc(monkeypatch):
    import sam2.utils.misc

    monkeypatch.setattr(sam2.utils.misc, "get_connected_components", scipy_connected_components)


def official_generator(model, **kwargs):
    from sam2.automatic_mask_generator import SAM2AutomaticMaskGenerator as Official

    gen = Official(model, **kwargs)
    gen.predictor._bb_feat_sizes = feat_sizes(model.image_size)
    return gen


def decode(segmentation) -> np.ndarray:
    if isinstance(segmentation, np.ndarray):
        return segmentation
    if isinstance(segmentation["counts"], str):  # coco_rle
        from pycocotools import mask as mask_utils

        return mask_utils.decode(segmentation).astype(bool)
    return amg.rle_to_mask(segmentation)


def assert_same_records(got, ref):
    assert len(got) == len(ref), (len(got), len(ref))
    assert len(ref) > 0, "the reference found no mask: the case tests nothing"
    for a, b in zip(got, ref):
        assert a.keys() == b.keys()
        assert type(a["segmentation"]) is type(b["segmentation"])
        sa, sb = decode(a["segmentation"]), decode(b["segmentation"])
        assert sa.shape == sb.shape and (sa == sb).mean() >= 0.999
        assert a["bbox"] == b["bbox"]
        assert a["point_coords"] == b["point_coords"]
        assert a["crop_box"] == b["crop_box"]
        assert abs(a["area"] - b["area"]) <= max(1, 1e-3 * b["area"])
        assert abs(a["predicted_iou"] - b["predicted_iou"]) <= 1e-4
        assert abs(a["stability_score"] - b["stability_score"]) <= 1e-3
        assert isinstance(a["predicted_iou"], float) and isinstance(a["area"], int)


GENERATOR_CASES = {
    "grid6": dict(points_per_side=6, pred_iou_thresh=0.0, stability_score_thresh=0.0, box_nms_thresh=0.99),
    "filtered": dict(points_per_side=6, pred_iou_thresh=0.4, stability_score_thresh=0.3, box_nms_thresh=0.9),
    "crops": dict(
        points_per_side=4,
        pred_iou_thresh=0.0,
        stability_score_thresh=0.0,
        crop_n_layers=1,
        box_nms_thresh=0.99,
        crop_nms_thresh=0.95,
        crop_n_points_downscale_factor=2,
        mask_threshold=1.0,
    ),  # smaller masks: some inside sub-crops survive the edge filter
    "min_region": dict(
        points_per_side=6, pred_iou_thresh=0.0, stability_score_thresh=0.3, box_nms_thresh=0.99, min_mask_region_area=30
    ),
    "m2m_rle": dict(
        points_per_side=5,
        pred_iou_thresh=0.0,
        stability_score_thresh=0.0,
        box_nms_thresh=0.99,
        use_m2m=True,
        output_mode="uncompressed_rle",
        points_per_batch=7,
    ),
    "single_grid": dict(
        points_per_side=None,
        point_grids=[np.array([[0.2, 0.3], [0.5, 0.5], [0.8, 0.6], [0.4, 0.9]])],
        multimask_output=False,
        pred_iou_thresh=0.0,
        stability_score_thresh=0.0,
        box_nms_thresh=0.99,
    ),
}


@pytest.mark.parametrize(
    "case", [pytest.param(c, marks=() if c == "grid6" else pytest.mark.slow) for c in GENERATOR_CASES]
)  # one case in the quick loop
def test_generate_matches_official(models, official_cc, case):
    official, ours = models
    kwargs = GENERATOR_CASES[case]
    image = make_image()
    ref = official_generator(official, **kwargs).generate(image)
    got = SAM2AutomaticMaskGenerator(ours, **kwargs).generate(image)
    assert_same_records(got, ref)
    assert all(r["segmentation"].shape == image.shape[:2] for r in got if isinstance(r["segmentation"], np.ndarray))
    if kwargs.get("crop_n_layers"):
        full = [0, 0, image.shape[1], image.shape[0]]
        assert any(r["crop_box"] != full for r in got), "no mask from a sub-crop: the case tests too little"


def test_coco_rle(models):
    official, ours = models
    kwargs = dict(points_per_side=4, pred_iou_thresh=0.0, stability_score_thresh=0.0, output_mode="coco_rle")
    try:
        import pycocotools  # noqa: F401  (pyflakes: availability check)
    except ImportError:
        with pytest.raises(ImportError, match="pip install pycocotools"):
            SAM2AutomaticMaskGenerator(ours, **kwargs)
        return
    image = make_image()
    got = SAM2AutomaticMaskGenerator(ours, **kwargs).generate(image)
    assert_same_records(got, official_generator(official, **kwargs).generate(image))
    assert isinstance(got[0]["segmentation"]["counts"], str)


@pytest.mark.slow
def test_no_mask_in_any_crop(models):
    """The official fails (box_area of a [0] tensor) when no crop keeps a mask; ours returns []."""
    official, ours = models
    kwargs = dict(points_per_side=2, pred_iou_thresh=0.999, crop_n_layers=1)
    image = make_image(60, 80)
    with pytest.raises(IndexError):
        official_generator(official, **kwargs).generate(image)
    assert SAM2AutomaticMaskGenerator(ours, **kwargs).generate(image) == []


def test_attributes_and_from_pretrained(models, tmp_path):
    official, ours = models
    gen = SAM2AutomaticMaskGenerator(ours, points_per_side=4, min_mask_region_area=12)
    assert gen.pred_iou_thresh == 0.8 and gen.output_mode == "binary_mask"
    assert gen.predictor._transforms.max_hole_area == 12 and gen.predictor._transforms.max_sprinkle_area == 12
    gen.pred_iou_thresh = 0.5
    assert gen.config.pred_iou_thresh == 0.5
    assert [g.shape for g in gen.point_grids] == [(16, 2)]
    path = save_official_checkpoint(official, tmp_path / "ckpt.pt")
    gen = SAM2AutomaticMaskGenerator.from_pretrained(
        "sam2.1_tiny", ckpt_path=str(path), device="cpu", image_size=SIZE, points_per_side=3, box_nms_thresh=0.5
    )
    assert gen.box_nms_thresh == 0.5 and len(gen.point_grids[0]) == 9 and gen.predictor.model.image_size == SIZE


@pytest.mark.parametrize(
    "kwargs,error,message",
    [
        (
            dict(output_mode="png"),
            ValueError,
            r"output_mode must be one of \('binary_mask', 'uncompressed_rle', 'coco_rle'\), got 'png'",
        ),
        (dict(points_per_side=None), ValueError, "exactly one of points_per_side or point_grids"),
        (dict(point_grids=[np.zeros((4, 2))]), ValueError, "exactly one of points_per_side or point_grids"),
        (
            dict(points_per_side=None, point_grids=[np.zeros((4, 2))], crop_n_layers=1),
            ValueError,
            r"one grid per crop layer \(2\), got 1",
        ),
        (
            dict(points_per_side=None, point_grids=[np.zeros((4, 3))]),
            ValueError,
            r"point_grids\[0\] must have shape \(N, 2\)",
        ),
        (dict(points_per_side=0), ValueError, "points_per_side must be an integer >= 1, got 0"),
        (dict(points_per_batch=0), ValueError, "points_per_batch must be an integer >= 1"),
        (dict(crop_n_layers=-1), ValueError, "crop_n_layers must be an integer >= 0"),
    ],
)
def test_bad_arguments(models, kwargs, error, message):
    with pytest.raises(error, match=message):
        SAM2AutomaticMaskGenerator(models[1], **kwargs)


def test_bad_image(models):
    gen = SAM2AutomaticMaskGenerator(models[1], points_per_side=2)
    with pytest.raises(ValueError, match=r"got shape \(10, 10, 4\) \(an RGBA image\)"):
        gen.generate(np.zeros((10, 10, 4), np.uint8))
    with pytest.raises(ValueError, match=r"values in \[0, 255\]"):
        gen.generate(np.linspace(0, 255, 300).reshape(10, 10, 3))


# ----------------------------------------------------------------------------- helpers
@pytest.fixture
def fake_cv2(monkeypatch):
    """A ``cv2`` with ``connectedComponentsWithStats`` (8-connected, scipy) for the official code."""
    from scipy import ndimage

    def connected_components_with_stats(image, connectivity):
        assert connectivity == 8
        labels, n = ndimage.label(image, structure=np.ones((3, 3), dtype=int))
        areas = np.bincount(labels.ravel(), minlength=n + 1)
        stats = np.zeros((n + 1, 5), np.int32)
        stats[:, -1] = areas
        return n + 1, labels.astype(np.int32), stats, None

    module = types.ModuleType("cv2")
    module.connectedComponentsWithStats = connected_components_with_stats
    monkeypatch.setitem(sys.modules, "cv2", module)


def random_masks(seed: int, n: int = 6, h: int = 23, w: int = 31) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    blobs = torch.nn.functional.avg_pool2d(torch.rand(n, 1, h, w, generator=gen), 3, 1, 1)[:, 0]
    masks = blobs > 0.5
    masks[0] = False  # an empty mask
    masks[1] = True  # a full mask
    return masks


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_rle_and_boxes_match_official(seed):
    from sam2.utils import amg as official

    masks = random_masks(seed)
    rles = amg.mask_to_rle_pytorch(masks)
    assert rles == official.mask_to_rle_pytorch(masks)
    for rle, mask in zip(rles, masks):
        assert np.array_equal(amg.rle_to_mask(rle), official.rle_to_mask(rle))
        assert np.array_equal(amg.rle_to_mask(rle), mask.numpy())
        assert amg.area_from_rle(rle) == official.area_from_rle(rle) == int(mask.sum())
    for shaped in (masks, masks[2], masks.reshape(2, 3, *masks.shape[-2:]), masks[:0]):
        got, ref = amg.batched_mask_to_box(shaped), official.batched_mask_to_box(shaped)
        assert got.shape == ref.shape and got.dtype == ref.dtype and torch.equal(got, ref)
    logits = torch.randn(4, 20, 30, generator=torch.Generator().manual_seed(seed)) * 3
    for thr, off in ((0.0, 1.0), (0.5, 0.3)):
        assert torch.equal(
            amg.calculate_stability_score(logits, thr, off), official.calculate_stability_score(logits, thr, off)
        )


def test_grids_crops_and_uncrop_match_official():
    from sam2.utils import amg as official

    for args in ((32, 0, 1), (8, 2, 2), (5, 1, 1)):
        for a, b in zip(amg.build_all_layer_point_grids(*args), official.build_all_layer_point_grids(*args)):
            assert np.array_equal(a, b)
    for size in ((120, 160), (97, 33), (1500, 1000)):
        for layers in (0, 1, 2):
            assert amg.generate_crop_boxes(size, layers, 512 / 1500) == official.generate_crop_boxes(
                size, layers, 512 / 1500
            )
    boxes = torch.tensor([[0, 0, 10, 10], [5, 25, 60, 70], [30, 3, 39, 90]])
    crop = [20, 10, 80, 90]
    assert torch.equal(amg.uncrop_boxes_xyxy(boxes, crop), official.uncrop_boxes_xyxy(boxes, crop))
    assert torch.equal(amg.uncrop_boxes_xyxy(boxes[None], crop), official.uncrop_boxes_xyxy(boxes[None], crop))
    pts = torch.rand(5, 2) * 50
    assert torch.equal(amg.uncrop_points(pts, crop), official.uncrop_points(pts, crop))
    assert torch.equal(
        amg.is_box_near_crop_edge(boxes, crop, [0, 0, 100, 100]),
        official.is_box_near_crop_edge(boxes, crop, [0, 0, 100, 100]),
    )
    masks = random_masks(3, h=80, w=60)
    assert torch.equal(amg.uncrop_masks(masks, crop, 90, 100), official.uncrop_masks(masks, crop, 90, 100))
    assert amg.box_xyxy_to_xywh(torch.tensor([2, 3, 10, 7])).tolist() == [2, 3, 8, 4]
    assert list(amg.batch_iterator(3, list(range(7)))) == list(official.batch_iterator(3, list(range(7))))


def test_mask_data_matches_official():
    from sam2.utils import amg as official

    def columns():
        return dict(a=torch.arange(5.0), b=np.arange(5) * 2, c=list("vwxyz"))

    for keep in (torch.tensor([True, False, True, True, False]), torch.tensor([4, 0, 2])):
        got, ref = amg.MaskData(**columns()), official.MaskData(**columns())
        got.cat(amg.MaskData(**columns()))
        ref.cat(official.MaskData(**columns()))
        keep = torch.cat([keep, keep]) if keep.dtype == torch.bool else keep
        got.filter(keep)
        ref.filter(keep)
        got.to_numpy()
        ref.to_numpy()
        for key in "abc":
            assert np.array_equal(np.asarray(got[key]), np.asarray(ref[key])), key
    with pytest.raises(TypeError, match="column 'x' must be a list, numpy array or torch tensor, got int"):
        amg.MaskData(x=3)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_remove_small_regions_matches_official(fake_cv2, seed):
    from sam2.utils import amg as official

    gen = torch.Generator().manual_seed(seed)
    mask = (torch.nn.functional.avg_pool2d(torch.rand(1, 1, 41, 37, generator=gen), 3, 1, 1)[0, 0] > 0.5).numpy()
    for mode in ("holes", "islands"):
        for area in (1, 4, 12, 40, 10_000):
            got, changed = amg.remove_small_regions(mask, area, mode)
            ref, ref_changed = official.remove_small_regions(mask, area, mode)
            assert changed == ref_changed and np.array_equal(got, ref), (mode, area)
    with pytest.raises(ValueError, match="mode must be 'holes' or 'islands', got 'dots'"):
        amg.remove_small_regions(mask, 3, "dots")


def test_postprocess_small_regions_matches_official(fake_cv2):
    from sam2.automatic_mask_generator import SAM2AutomaticMaskGenerator as Official
    from sam2.utils import amg as official

    masks = random_masks(5, n=8, h=40, w=50)
    masks[0] = masks[3]  # a duplicate, for the NMS

    def data(module):
        return module.MaskData(
            rles=module.mask_to_rle_pytorch(masks),
            boxes=module.batched_mask_to_box(masks),
            iou_preds=torch.rand(8, generator=torch.Generator().manual_seed(0)),
        )

    got = SAM2AutomaticMaskGenerator.postprocess_small_regions(data(amg), 15, 0.7)
    ref = Official.postprocess_small_regions(data(official), 15, 0.7)
    assert got["rles"] == ref["rles"]
    assert torch.equal(got["boxes"], ref["boxes"]) and torch.equal(got["iou_preds"], ref["iou_preds"])

"""Image predictor prompt path (``predict`` on an image already set), ours vs the official, side
by side; optionally ``set_image`` and the automatic mask generator too.

    python benchmarks/bench_predictor.py [--model tiny] [--image-size 1024] [--rounds 7]
                                         [--cases points,box,multi_box16] [--set-image] [--amg]

Same perturbed weights, image and prompts on both sides; every output (masks, IoU predictions,
low-resolution logits) is checked equal (rel <= 1e-4, masks >= 99.9 % agreement) before any time
counts. Reports the median of alternating runs (A B A B ...). At an ``image_size`` other than
1024 the official predictor gets the right ``_bb_feat_sizes`` (it hard-codes 1024's).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch

from _common import alternate, build_official, rel_err, report, save_official_checkpoint
from dp_sam2 import SAM2AutomaticMaskGenerator, SAM2ImagePredictor, build_sam2

CONFIGS = {
    "tiny": "configs/sam2.1/sam2.1_hiera_t.yaml",
    "small": "configs/sam2.1/sam2.1_hiera_s.yaml",
    "base_plus": "configs/sam2.1/sam2.1_hiera_b+.yaml",
    "large": "configs/sam2.1/sam2.1_hiera_l.yaml",
}


def prompt_cases(h: int, w: int) -> dict:
    rng = np.random.default_rng(0)
    corners = np.sort(rng.uniform(0, 1, (16, 2, 2)), axis=1) * [w, h]
    return {
        "points": dict(
            point_coords=np.array([[w * 0.4, h * 0.5], [w * 0.6, h * 0.3]]),
            point_labels=np.array([1, 0]),
            multimask_output=True,
        ),
        "box": dict(box=np.array([w * 0.2, h * 0.2, w * 0.7, h * 0.8]), multimask_output=False),
        "box+points_logits": dict(
            box=np.array([w * 0.2, h * 0.2, w * 0.7, h * 0.8]),
            point_coords=np.array([[w * 0.4, h * 0.5]]),
            point_labels=np.array([1]),
            multimask_output=False,
            return_logits=True,
        ),
        "multi_box16": dict(box=corners.reshape(16, 4), multimask_output=False),
    }


def check_equal(got, ref, logits: bool) -> float:
    err = max(rel_err(got[1], ref[1]), rel_err(got[2], ref[2]))
    if logits:
        err = max(err, rel_err(got[0], ref[0]))
    elif got[0].shape != ref[0].shape or (got[0] == ref[0]).mean() < 0.999:
        raise SystemExit("masks differ; timing refused")
    if err > 1e-4:
        raise SystemExit(f"outputs differ (rel {err:.2e}); timing refused")
    return err


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="tiny", choices=list(CONFIGS))
    ap.add_argument("--image-size", type=int, default=1024)
    ap.add_argument("--image-hw", default="480x640", help="height x width of the test image")
    ap.add_argument("--cases", default="points,box,box+points_logits,multi_box16")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--set-image", action="store_true", help="also time set_image")
    ap.add_argument("--amg", action="store_true", help="also time the mask generator (points_per_side 8)")
    args = ap.parse_args()
    from sam2.automatic_mask_generator import SAM2AutomaticMaskGenerator as OfficialAMG
    from sam2.sam2_image_predictor import SAM2ImagePredictor as Official

    size, config = args.image_size, CONFIGS[args.model]
    official = build_official(config, image_size=size, seed=3)
    with tempfile.TemporaryDirectory() as tmp:
        path = save_official_checkpoint(official, Path(tmp) / "ckpt.pt")
        ours = build_sam2(
            config, ckpt_path=str(path), device="cpu", hydra_overrides_extra=[f"++model.image_size={size}"]
        )
    feat_sizes = [(size // 4, size // 4), (size // 8, size // 8), (size // 16, size // 16)]
    h, w = (int(v) for v in args.image_hw.split("x"))
    image = np.random.default_rng(1).integers(0, 256, (h, w, 3), dtype=np.uint8)
    ref_pred, our_pred = Official(official), SAM2ImagePredictor(ours)
    ref_pred._bb_feat_sizes = feat_sizes
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, {args.model}@{size}, image {h}x{w}")

    ref_pred.set_image(image)
    our_pred.set_image(image)
    if rel_err(our_pred.get_image_embedding(), ref_pred.get_image_embedding()) > 1e-4:
        raise SystemExit("image embeddings differ; timing refused")
    if args.set_image:
        times = alternate(
            {"official": lambda: ref_pred.set_image(image), "ours": lambda: our_pred.set_image(image)},
            rounds=max(3, args.rounds // 2),
        )
        report("set_image", times)

    cases = prompt_cases(h, w)
    for name in args.cases.split(","):
        kwargs = cases[name]
        err = check_equal(our_pred.predict(**kwargs), ref_pred.predict(**kwargs), kwargs.get("return_logits", False))
        times = alternate(
            {"official": lambda: ref_pred.predict(**kwargs), "ours": lambda: our_pred.predict(**kwargs)},
            rounds=args.rounds,
        )
        report(f"predict[{name}]", times)["max_rel_err"] = err

    if args.amg:
        kw = dict(points_per_side=8, pred_iou_thresh=0.0, stability_score_thresh=0.0)
        ref_gen, our_gen = OfficialAMG(official, **kw), SAM2AutomaticMaskGenerator(ours, **kw)
        ref_gen.predictor._bb_feat_sizes = feat_sizes
        a, b = our_gen.generate(image), ref_gen.generate(image)
        if len(a) != len(b) or any(x["bbox"] != y["bbox"] for x, y in zip(a, b)):
            raise SystemExit("generator outputs differ; timing refused")
        times = alternate(
            {"official": lambda: ref_gen.generate(image), "ours": lambda: our_gen.generate(image)}, rounds=3, warmup=0
        )
        report("amg[points_per_side=8]", times)


if __name__ == "__main__":
    main()

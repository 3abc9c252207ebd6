"""The Diffusion Policy feature path at DP-typical sizes: the stride-16 map + no_mem_embed that the
obs encoder pools, ours (`SAM2Backbone`: trunk + only the neck levels that feed that map) vs the
seed's recipe on the official model (`forward_image` + `_prepare_backbone_features`, take the last
level, add `no_mem_embed`), side by side.

    python benchmarks/bench_obs_features.py [--cases tiny@224x16,large@256x16] [--rounds 5]

Same perturbed weights and inputs; features checked equal (rel <= 1e-4) before times count.
Batch 16 = DP's batch 8 x n_obs_steps 2.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from _common import (
    alternate,
    build_official,
    count_flops,
    matmul_peak_gflops,
    rel_err,
    report,
    save_official_checkpoint,
)
from dp_sam2.encoders.obs.backbone import SAM2Backbone

CONFIGS = {
    "tiny": ("configs/sam2/sam2_hiera_t.yaml", "sam2_tiny"),
    "large": ("configs/sam2/sam2_hiera_l.yaml", "sam2_large"),
}


def seed_recipe(model, x):
    """What the seed fork's helper computes (with the no_mem_embed it forgot)."""
    out = model.forward_image(x)
    _, feats, _, sizes = model._prepare_backbone_features(out)
    last = feats[-1] + model.no_mem_embed
    h, w = sizes[-1]
    return last.permute(1, 2, 0).reshape(x.shape[0], -1, h, w)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", default="tiny@224x16,large@256x16")
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    peak = matmul_peak_gflops()
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, fp32 matmul peak {peak:.0f} GFLOP/s")
    for case in args.cases.split(","):
        name, rest = case.split("@")
        size, batch = (int(v) for v in rest.split("x"))
        config, short = CONFIGS[name]
        official = build_official(config, image_size=size, seed=5)
        ours = SAM2Backbone(short, size).eval()
        with tempfile.TemporaryDirectory() as tmp:
            path = save_official_checkpoint(official, Path(tmp) / "ckpt.pt")
            ours.load_official(path, short)
        x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(0))
        with torch.inference_mode():
            err = rel_err(ours(x), seed_recipe(official, x))
            if err > 1e-4:
                raise SystemExit(f"{case}: features differ (rel {err:.2e}); timing refused")
            flops = count_flops(lambda: seed_recipe(official, x))
            times = alternate(
                {"official": lambda: seed_recipe(official, x), "ours": lambda: ours(x)}, rounds=args.rounds
            )
        report(f"DP features {name}@{size}x{batch}", times, flops, peak)
        print(f"  max rel err {err:.1e}")


if __name__ == "__main__":
    main()

"""Encoder path (forward_image + _prepare_backbone_features): ours vs the official, side by side.

    python benchmarks/bench_encoder.py [--cases tiny@1024x1,tiny@224x8,large@256x4] [--rounds 5] [--linear mkl|onednn|auto]

Same perturbed weights and inputs on both sides; outputs are checked equal (rel <= 1e-4) before
any time counts. Reports the median of alternating runs, the FLOP count (attention included:
torch's counter misses the CPU SDPA kernel, see _common.count_flops) and each side's share of
the measured fp32 matmul peak. Add --bf16 to time ours under CPU bf16 autocast as well.
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from _common import alternate, build_official, count_flops, matmul_peak_gflops, rel_err, report, save_official_checkpoint
from dp_sam2 import build_sam2

CONFIGS = {"tiny": "configs/sam2.1/sam2.1_hiera_t.yaml", "small": "configs/sam2.1/sam2.1_hiera_s.yaml",
           "base_plus": "configs/sam2.1/sam2.1_hiera_b+.yaml", "large": "configs/sam2.1/sam2.1_hiera_l.yaml"}


def encoder_path(model, x):
    out = model.forward_image(x)
    return model._prepare_backbone_features(out)


def run_case(size_name: str, image_size: int, batch: int, rounds: int, peak: float, bf16: bool) -> dict:
    config = CONFIGS[size_name]
    official = build_official(config, image_size=image_size, seed=3)
    with tempfile.TemporaryDirectory() as tmp:
        path = save_official_checkpoint(official, Path(tmp) / "ckpt.pt")
        ours = build_sam2(config, ckpt_path=str(path), device="cpu",
                          hydra_overrides_extra=[f"++model.image_size={image_size}"])
    x = torch.randn(batch, 3, image_size, image_size, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        ref = encoder_path(official, x)
        got = encoder_path(ours, x)
        err = max(rel_err(a, b) for a, b in zip(got[1] + got[2], ref[1] + ref[2]))
        if err > 1e-4:
            raise SystemExit(f"outputs differ (rel {err:.2e}); timing refused")
        fns = {"official": lambda: encoder_path(official, x), "ours": lambda: encoder_path(ours, x)}
        if bf16:
            def ours_bf16():
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    return encoder_path(ours, x)
            b = ours_bf16()
            cos = torch.nn.functional.cosine_similarity(b[1][-1].float().flatten(), ref[1][-1].flatten(), dim=0)
            print(f"bf16 feature cosine vs official fp32: {cos.item():.5f}")
            fns["ours_bf16"] = ours_bf16
        flops = count_flops(lambda: encoder_path(official, x))
        no_attn = count_flops(lambda: encoder_path(official, x), cpu_attention=False)
        print(f"{size_name}@{image_size}x{batch}: {flops / 1e9:.1f} GFLOP, of which attention "
              f"{(flops - no_attn) / 1e9:.1f} (torch's counter alone: {no_attn / 1e9:.1f})")
        times = alternate(fns, rounds=rounds)
    peak = max(peak, matmul_peak_gflops())  # the machine is shared: take the better of two probes
    row = report(f"{size_name}@{image_size}x{batch}", times, flops, peak)
    row["max_rel_err"] = err
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", default="tiny@1024x1,tiny@224x8,large@256x4")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--bf16", action="store_true")
    ap.add_argument("--linear", choices=["mkl", "onednn", "auto"], default="mkl",
                    help="our inference linears: MKL (default), oneDNN fused, or tuned per shape")
    args = ap.parse_args()
    from dp_sam2.encoders.sam2 import linear as common

    common.USE_ONEDNN_LINEAR = {"mkl": False, "onednn": True, "auto": "auto"}[args.linear]
    peak = matmul_peak_gflops()
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, fp32 matmul peak {peak:.0f} GFLOP/s")
    for case in args.cases.split(","):
        name, rest = case.split("@")
        size, batch = rest.split("x")
        run_case(name, int(size), int(batch), args.rounds, peak, args.bf16)


if __name__ == "__main__":
    main()

"""Encoder path (forward_image + _prepare_backbone_features): ours vs the official, side by side.

    python benchmarks/bench_encoder.py [--cases tiny@1024x1,tiny@224x8,large@256x4] [--rounds 5]
        [--linear mkl|onednn[,...]] [--bf16]

Same perturbed weights and inputs on both sides; outputs are checked equal (rel <= 1e-4) before
any time counts. Reports the median of alternating runs, the FLOP count (attention included:
torch's counter misses the CPU SDPA kernel, see _common.count_flops) and each side's share of
the measured fp32 matmul peak. ``--linear`` sets our trunk's linear backend (default: the
machine's, see dp_sam2.encoders.sam2.linear); the backend that ran is printed. Several, comma
separated (``--linear mkl,onednn``), each get a column of their own in the same alternation
(``ours_mkl``, ``ours_onednn``), so backends compare on the same noise. ``--bf16`` also
times both sides under ``torch.autocast("cpu", bfloat16)``, after checking the feature cosine of
each against the official fp32 (>= 0.999).
"""

from __future__ import annotations

import argparse
import platform
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
from dp_sam2 import build_sam2
from dp_sam2.encoders.sam2.linear import BACKENDS, default_backend

CONFIGS = {
    "tiny": "configs/sam2.1/sam2.1_hiera_t.yaml",
    "small": "configs/sam2.1/sam2.1_hiera_s.yaml",
    "base_plus": "configs/sam2.1/sam2.1_hiera_b+.yaml",
    "large": "configs/sam2.1/sam2.1_hiera_l.yaml",
}


def encoder_path(model, x):
    out = model.forward_image(x)
    return model._prepare_backbone_features(out)


def bf16(fn):
    def run():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return fn()

    return run


def _with_backend(trunk, backend: str, fn):
    """``fn`` run with the trunk on the linear backend ``backend``. Switching is a name change
    only (``fast_route.backend``): the packed copies of each backend stay cached between calls."""

    def run():
        trunk.fast_route.backend = backend
        return fn()

    return run


def cosine(got, ref) -> float:
    """The smallest cosine over the feature levels (flattened) against ``ref``."""
    return min(
        torch.nn.functional.cosine_similarity(a.float().flatten(), b.float().flatten(), dim=0).item()
        for a, b in zip(got[1], ref[1])
    )


def run_case(size_name: str, image_size: int, batch: int, rounds: int, peak: float, args) -> dict:
    config = CONFIGS[size_name]
    official = build_official(config, image_size=image_size, seed=3)
    with tempfile.TemporaryDirectory() as tmp:
        path = save_official_checkpoint(official, Path(tmp) / "ckpt.pt")
        ours = build_sam2(
            config, ckpt_path=str(path), device="cpu", hydra_overrides_extra=[f"++model.image_size={image_size}"]
        )
    trunk = ours.image_encoder.trunk
    backends = args.linear or [None]  # None: the machine's default
    columns = {"ours" if len(backends) == 1 else f"ours_{name}": name or default_backend() for name in backends}
    x = torch.randn(batch, 3, image_size, image_size, generator=torch.Generator().manual_seed(0))
    name = f"{size_name}@{image_size}x{batch}"
    with torch.inference_mode():
        ref = encoder_path(official, x)
        err = 0.0
        for backend in columns.values():  # every column's output is checked, not only the first
            trunk.fast_route.backend = backend
            got = encoder_path(ours, x)
            err = max(err, *(rel_err(a, b) for a, b in zip(got[1] + got[2], ref[1] + ref[2])))
        if err > 1e-4:
            raise SystemExit(f"outputs differ (rel {err:.2e}); timing refused")
        fns = {"official": lambda: encoder_path(official, x)}
        for column, backend in columns.items():
            fns[column] = _with_backend(trunk, backend, lambda: encoder_path(ours, x))
        if args.bf16:
            fns["official_bf16"] = bf16(fns["official"])
            fns["ours_bf16"] = bf16(fns["ours"])
            cos_off, cos_ours = cosine(fns["official_bf16"](), ref), cosine(fns["ours_bf16"](), ref)
            print(f"{name}: bf16 feature cosine vs official fp32: official {cos_off:.5f}, ours {cos_ours:.5f}")
            if cos_ours < 0.999:
                raise SystemExit(f"ours in bf16 is too far from the official fp32 (cosine {cos_ours:.5f})")
        flops = count_flops(lambda: encoder_path(official, x))
        no_attn = count_flops(lambda: encoder_path(official, x), cpu_attention=False)
        print(
            f"{name}: {flops / 1e9:.1f} GFLOP, of which attention "
            f"{(flops - no_attn) / 1e9:.1f} (torch's counter alone: {no_attn / 1e9:.1f})"
        )
        times = alternate(fns, rounds=rounds)
    peak = max(peak, matmul_peak_gflops())  # the machine is shared: take the better of two probes
    row = report(name, times, flops, peak)
    row["max_rel_err"] = err
    row["linear_backend"] = ",".join(columns.values())
    if args.bf16:
        row["bf16_ours_vs_official_bf16"] = round(row["official_bf16_s"] / row["ours_bf16_s"], 3)
    print(
        f"{name}: linear backend {row['linear_backend']}"
        + (f"; bf16: ours / official-under-autocast speed {row['bf16_ours_vs_official_bf16']}x" if args.bf16 else ""),
        flush=True,
    )
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", default="tiny@1024x1,tiny@224x8,large@256x4")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--bf16", action="store_true")
    ap.add_argument(
        "--linear",
        default=None,
        help=f"our trunk's linear backend(s), comma separated, of {BACKENDS} (default: the machine's)",
    )
    args = ap.parse_args()
    if args.linear is not None:
        args.linear = args.linear.split(",")
        unknown = [name for name in args.linear if name not in BACKENDS]
        if unknown:
            raise SystemExit(f"--linear: {unknown[0]!r} is not one of {BACKENDS}")
        if args.bf16 and len(args.linear) > 1:
            raise SystemExit("--bf16 takes one --linear backend (the bf16 route does not use it)")
    import sam2

    from dp_sam2.encoders.sam2.linear import machine_default_backend

    flags = open("/proc/cpuinfo").read() if Path("/proc/cpuinfo").exists() else ""
    cpu = next(
        (
            label
            for flag, label in (("avx512_bf16", "AVX512-BF16"), ("avx512f", "AVX-512"), ("avx2", "AVX2"))
            if flag in flags
        ),
        "?",
    )
    peak = matmul_peak_gflops()
    print(
        f"torch {torch.__version__}, sam2 {getattr(sam2, '__version__', '1.1.0')}, "
        f"python {platform.python_version()}, "
        f"cpu class {cpu} ({torch.backends.cpu.get_cpu_capability()}), threads {torch.get_num_threads()}, "
        f"fp32 matmul peak {peak:.0f} GFLOP/s, machine default linear backend {machine_default_backend()}"
    )
    for case in args.cases.split(","):
        name, rest = case.split("@")
        size, batch = rest.split("x")
        run_case(name, int(size), int(batch), args.rounds, peak, args)


if __name__ == "__main__":
    main()

"""Hiera's fast route block by block, one column per linear backend (and the official's block).

    python benchmarks/bench_blocks.py [--case tiny@1024x1] [--backends mkl,onednn] [--rounds 5]
        [--official] [--bf16]

Every block gets the same input (the official trunk's map before it) and runs once per backend in
turn (A B C A B C ...), so a noisy machine slows every column alike; the median per block and the
totals are printed. Outputs are checked against the first backend (rel <= 1e-5) before timing.
``--bf16``: the bf16 route (packed bf16 weights; the backend does not matter there, one column)
against the official's block under bf16 autocast, checked to rel <= 5e-2. Use it to place a
backend choice or a chunk size where it pays; ``bench_encoder.py`` gives the whole encoder path.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from _common import build_official, rel_err, save_official_checkpoint
from bench_encoder import CONFIGS
from dp_sam2 import build_sam2
from dp_sam2.encoders.sam2 import hiera_fast
from dp_sam2.encoders.sam2.linear import BACKENDS, can_pack


def block_runner(trunk, backend: str, block, x: torch.Tensor):
    """One block of the fast route on the map ``x`` (cut into windows first where they tile it, as
    the route passes them): returns the timed call and a function turning its output into a map."""
    h, w = x.shape[1:3]
    windows = hiera_fast.window_partition(x, block.window_size)[0] if hiera_fast.windows_fit(block, h, w) else None

    def run():
        trunk.fast_route.backend = backend
        route = hiera_fast._Run(trunk.fast_route, x.dtype, pack=can_pack(x))
        if windows is None:
            return hiera_fast.block_on_map(route, block, x)
        return hiera_fast.block_on_windows(route, block, windows)

    def as_map(out):
        if windows is None:
            return out
        stride = block.q_stride[0] if block.q_stride is not None else 1
        hw = (h // stride, w // stride)
        return hiera_fast.window_unpartition(out, hiera_fast.out_window(block), hw, hw)

    return run, as_map


def _without_autocast(run, as_map):
    def plain():
        with torch.autocast("cpu", enabled=False):
            return run()

    return plain, as_map


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--case", default="tiny@1024x1")
    ap.add_argument("--backends", default="mkl,onednn")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--official", action="store_true", help="also time the official's block")
    ap.add_argument("--bf16", action="store_true", help="the bf16 route (official: under bf16 autocast)")
    args = ap.parse_args()
    names = ["bf16"] if args.bf16 else args.backends.split(",")
    unknown = [] if args.bf16 else [name for name in names if name not in BACKENDS]
    if unknown:
        raise SystemExit(f"--backends: {unknown[0]!r} is not one of {BACKENDS}")
    size, rest = args.case.split("@")
    image_size, batch = (int(v) for v in rest.split("x"))
    official = build_official(CONFIGS[size], image_size=image_size, seed=3)
    with tempfile.TemporaryDirectory() as tmp:
        path = save_official_checkpoint(official, Path(tmp) / "ckpt.pt")
        ours = build_sam2(
            CONFIGS[size], ckpt_path=str(path), device="cpu", hydra_overrides_extra=[f"++model.image_size={image_size}"]
        )
    theirs, trunk = official.image_encoder.trunk, ours.image_encoder.trunk
    backends = {name: "mkl" if args.bf16 else name for name in names}
    dtype, tolerance = (torch.bfloat16, 5e-2) if args.bf16 else (torch.float32, 1e-5)
    times: dict[tuple[str, int], list[float]] = {}
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16):
        image = torch.randn(batch, 3, image_size, image_size, generator=torch.Generator().manual_seed(0))
        x = theirs.patch_embed(image)
        x = x + theirs._get_pos_embed(x.shape[1:3])  # the official's stream (fp32 under autocast too)
        columns = []
        for i, (block, ref_block) in enumerate(zip(trunk.blocks, theirs.blocks)):
            ours_x = x.to(dtype)
            runners = {name: block_runner(trunk, backend, block, ours_x) for name, backend in backends.items()}
            if args.bf16:  # the fast route switches autocast off inside; outside it would recast
                runners = {name: _without_autocast(*pair) for name, pair in runners.items()}
            if args.official:
                runners["official"] = (lambda b=ref_block, x=x: b(x)), (lambda out: out)
            fns = {name: run for name, (run, _) in runners.items()}
            first = runners[names[0]][1](fns[names[0]]())
            for name, (run, as_map) in runners.items():
                err = rel_err(as_map(run()).float(), first.float())
                if err > tolerance:
                    raise SystemExit(f"block {i}: {name} differs from {names[0]} (rel {err:.2e}); timing refused")
            columns.append(fns)
            x = ref_block(x)
        for _ in range(args.rounds):
            for i, fns in enumerate(columns):
                for name, fn in fns.items():
                    start = time.perf_counter()
                    fn()
                    times.setdefault((name, i), []).append(time.perf_counter() - start)
    cols = list(columns[0])
    total = dict.fromkeys(cols, 0.0)
    print(
        f"{args.case}, threads {torch.get_num_threads()}, cpu capability {torch.backends.cpu.get_cpu_capability()}; "
        f"median ms per block over {args.rounds} rounds"
    )
    for i, block in enumerate(trunk.blocks):
        med = {name: statistics.median(times[(name, i)]) for name in cols}
        for name in cols:
            total[name] += med[name]
        print(
            f"block {i:2d} (window {block.window_size:2d}, {block.dim}->{block.dim_out}) "
            + "  ".join(f"{name} {med[name] * 1e3:7.1f}" for name in cols)
        )
    print(
        "total "
        + "  ".join(
            f"{name} {total[name] * 1e3:7.0f} (x{total[cols[0]] / total[name]:.3f} of {cols[0]})" for name in cols
        )
    )


if __name__ == "__main__":
    main()

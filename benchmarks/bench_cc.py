"""Connected components on the CPU: our C++ op, our torch fallback and scipy.ndimage.label.

    python benchmarks/bench_cc.py [--rounds 5] [--threads 1] [--skip-torch]

Cases: 64x1x256x256 and 1x1x1024x1024, random (p = 0.5: many tiny components) and blobby
(thresholded smoothed noise: few large, ragged components). Every implementation's output is
checked against scipy (same areas, same partition) before any time counts. scipy's column is
labels plus the per-pixel area (np.bincount), the same output as ours. Median of alternating runs.
The one-off compile of the C++ op is timed separately (fresh cache folder).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from _common import alternate
from dp_sam2.ext import _build, _cc

EIGHT = np.ones((3, 3), dtype=int)


def _ndimage():
    """scipy.ndimage, the oracle: optional (the test extra), imported only when the benchmark runs."""
    try:
        from scipy import ndimage
    except ImportError as err:
        raise SystemExit(f"bench_cc.py compares with scipy.ndimage.label: pip install scipy ({err})") from err
    return ndimage


def scipy_cc(mask: torch.Tensor):
    ndimage = _ndimage()
    labels, counts = [], []
    for image in mask[:, 0].numpy():
        lab, _ = ndimage.label(image, structure=EIGHT)
        area = np.bincount(lab.ravel())
        area[0] = 0
        labels.append(lab)
        counts.append(area[lab])
    return np.stack(labels)[:, None], np.stack(counts)[:, None]


def masks(kind: str, n: int, h: int, w: int) -> torch.Tensor:
    rng = np.random.default_rng(0)
    if kind == "random":
        return torch.from_numpy(rng.random((n, 1, h, w)) < 0.5)
    noise = _ndimage().gaussian_filter(rng.standard_normal((n, 1, h, w)), sigma=(0, 0, 4, 4))
    return torch.from_numpy(noise > 0)


def check(labels, counts, ref) -> None:
    """Same areas and the same partition (a label bijection per image) as scipy."""
    ref_labels, ref_counts = ref
    labels, counts = labels.numpy(), counts.numpy()
    if not np.array_equal(counts, ref_counts):
        raise AssertionError("areas differ from scipy")
    for ours, theirs in zip(labels.reshape(len(labels), -1), ref_labels.reshape(len(labels), -1)):
        pairs = np.unique(np.stack([ours, theirs]), axis=1)
        if not len(np.unique(pairs[0])) == len(np.unique(pairs[1])) == pairs.shape[1]:
            raise AssertionError("partition differs from scipy")


def compile_time() -> float:
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ, DP_SAM2_CACHE=tmp)
        start = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "dp_sam2.ext", "build", "--cpu-only"],
            env=env,
            check=True,
            capture_output=True,
            cwd=Path(__file__).resolve().parents[1],
        )
        return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--skip-torch", action="store_true")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if _build.cpu_library() is None:
        raise SystemExit("the CPU op cannot be built here")
    print(f"torch threads: {torch.get_num_threads()}, CPUs: {os.cpu_count()}")
    print(f"C++ op build from scratch (subprocess, incl. python + torch import): {compile_time():.1f} s")
    for kind in ("random", "blobby"):
        for n, h, w in ((64, 256, 256), (1, 1024, 1024)):
            mask = masks(kind, n, h, w)
            u8 = mask.to(torch.uint8).contiguous()
            ref = scipy_cc(mask)
            fns = {"cpu_op": lambda: _cc.cc_cpu_op(u8), "scipy": lambda: scipy_cc(mask)}
            if not args.skip_torch:
                fns["torch"] = lambda: _cc.cc_torch(u8)
            for name, fn in fns.items():
                if name != "scipy":
                    check(*fn(), ref)
            times = alternate(fns, rounds=args.rounds)
            med = {k: statistics.median(v) for k, v in times.items()}
            row = {
                "case": f"{kind} {n}x1x{h}x{w}",
                **{f"{k}_ms": round(v * 1e3, 1) for k, v in med.items()},
                "components": int(sum(len(np.unique(r)) - 1 for r in ref[0].reshape(n, -1))),
            }
            row["cpu_op_vs_scipy"] = round(med["scipy"] / med["cpu_op"], 2)
            print(row, flush=True)


if __name__ == "__main__":
    main()

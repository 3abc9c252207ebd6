"""Shared benchmark helpers: side-by-side timing (A B A B ...), FLOP counting and the machine's
measured matmul peak; the reference helpers (official model with perturbed weights, rel_err) come
from tests/official_ref.py, which needs neither pytest nor scipy."""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from official_ref import build_official, rel_err, save_official_checkpoint  # noqa: E402,F401


def matmul_peak_gflops(dtype=torch.float32, n: int = 2048, reps: int = 5) -> float:
    a = torch.randn(n, n, dtype=dtype)
    b = torch.randn(n, n, dtype=dtype)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best / 1e9


def count_flops(fn, cpu_attention: bool = True) -> int:
    """FLOPs of ``fn()`` by torch.utils.flop_counter, plus (``cpu_attention``) the CPU
    flash-attention kernel, which the counter does not know: it counts 0 for SDPA on CPU (Tiny at
    1024 px has 77 GFLOP of it). ``cpu_attention=False`` gives the counter's own figure."""
    from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

    def cpu_sdpa(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
        return sdpa_flop_count(query_shape, key_shape, value_shape)

    mapping = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: cpu_sdpa} if cpu_attention else {}
    with FlopCounterMode(display=False, custom_mapping=mapping) as counter:
        fn()
    return counter.get_total_flops()


def alternate(fns: dict, rounds: int = 5, warmup: int = 1, settled=lambda: True) -> dict:
    """Run each callable in turn (A B A B ...) and return the list of times per name.

    Warm-up: ``warmup`` rounds, then more (up to 8) until ``settled()`` (e.g. a trunk's "auto"
    linear backend has chosen per shape), so the timed rounds measure the steady state."""
    for i in range(warmup + 8):
        if i >= warmup and settled():
            break
        for fn in fns.values():
            fn()
    times = {k: [] for k in fns}
    for _ in range(rounds):
        for k, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t)
    return times


def report(name: str, times: dict, flops: int | None = None, peak: float | None = None, ref: str = "official") -> dict:
    med = {k: statistics.median(v) for k, v in times.items()}
    row = {"case": name, **{f"{k}_s": round(v, 4) for k, v in med.items()}}
    for k, v in med.items():
        if k != ref:
            row[f"speedup_{k}"] = round(med[ref] / v, 3)
            # best-of ratio: on a shared machine noise only adds time, so the fastest runs compare
            # the code, the medians the typical run
            row[f"best_speedup_{k}"] = round(min(times[ref]) / min(times[k]), 3)
        if flops and peak:
            row[f"peak_share_{k}"] = round(flops / v / 1e9 / peak, 3)
    if flops:
        row["gflop"] = round(flops / 1e9, 2)
    print(row, flush=True)
    return row

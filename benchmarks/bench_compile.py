"""``compile: true`` against eager: the obs encoder's backbone through ``torch.compile``
(inductor), compile time and steady-state step time, on this machine.

Tiny model at a small size (the compile cost grows with the graph, not the input), random
weights in the official format. Two cases, each eager and compiled, outputs checked equal
(rel <= 1e-4) before any time counts:

* ``eval``: the frozen encoder's forward under ``torch.no_grad`` (DP's eval / cached-feature
  path, and every training step of a frozen backbone);
* ``train``: forward + backward with the backbone finetuned (``freeze: false``).

    python benchmarks/bench_compile.py [--model sam2_tiny --image-size 128 --batch 8 --steps 5]

Prints one line per case: first call (compile + run), steady-state median step, eager median
step, and after how many steps the compile has paid for itself.
"""

from __future__ import annotations

import argparse
import copy
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def cpu_class() -> str:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or "unknown CPU"
    kind = "AVX-512 + AVX512-BF16" if "avx512_bf16" in flags else "AVX-512" if "avx512f" in flags else "AVX2"
    name = next((line.split(":", 1)[1].strip() for line in flags.splitlines() if line.startswith("model name")), "")
    return f"{name} ({kind}, {torch.get_num_threads()} threads)"


def make_encoder(model: str, size: int, ckpt: Path, train: bool, use_compile: bool):
    from dp_sam2 import SAM2ObsEncoder

    meta = {"obs": {"image": {"shape": [3, 96, 96], "type": "rgb"}, "agent_pos": {"shape": [2], "type": "low_dim"}}}
    torch.manual_seed(0)
    return SAM2ObsEncoder(
        meta,
        model_cfg=model,
        checkpoint=str(ckpt),
        image_size=size,
        freeze=not train,
        compile=use_compile,
        feature_dim=64,
    )


def write_checkpoint(model: str, size: int, folder: Path) -> Path:
    from dp_sam2.checkpoints.registry import get_spec
    from dp_sam2.encoders.obs.backbone import SAM2Backbone

    torch.manual_seed(0)
    backbone = SAM2Backbone(model, size)
    path = folder / get_spec(model).filename
    torch.save({"model": backbone.state_dict()}, path)
    return path


def step(enc, obs, train: bool):
    if train:
        enc.train()
        out = enc(obs)
        out.square().mean().backward()
        return out.detach()
    enc.eval()
    with torch.no_grad():
        return enc(obs)


def timed(fn) -> tuple[float, torch.Tensor]:
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def run_case(name: str, args, ckpt: Path, train: bool) -> None:
    gen = torch.Generator().manual_seed(0)
    obs = {
        "image": torch.rand(args.batch, 3, 96, 96, generator=gen) * 2 - 1,
        "agent_pos": torch.rand(args.batch, 2, generator=gen),
    }
    eager = make_encoder(args.model, args.image_size, ckpt, train, False)
    comp = make_encoder(args.model, args.image_size, ckpt, train, True)
    first, out_c = timed(lambda: step(comp, obs, train))
    _, out_e = timed(lambda: step(eager, obs, train))
    err = float((out_c - out_e).abs().max() / max(1.0, float(out_e.abs().max())))
    if err > 1e-4:
        raise SystemExit(f"{name}: compiled and eager differ (rel {err:.2e})")
    eager_t, comp_t = [], []
    for _ in range(args.steps):  # alternate: the machine is shared
        eager_t.append(timed(lambda: step(eager, obs, train))[0])
        comp_t.append(timed(lambda: step(comp, obs, train))[0])
    e, c = statistics.median(eager_t), statistics.median(comp_t)
    ema, t_copy = None, 0.0
    if args.copy:  # DP's EMA: a deep copy compiles its own on first use (inductor's cache helps)
        ema = copy.deepcopy(comp)
        t_copy = timed(lambda: step(ema, obs, train))[0]
    gain = e - c
    pays = f"after {int((first - c) / gain) + 1} steps" if gain > 0 else "never (no steady-state gain)"
    print(
        f"{name:5s} {args.model} {args.image_size}px b{args.batch}: first call {first:6.1f} s, "
        f"steady {c * 1e3:7.1f} ms vs eager {e * 1e3:7.1f} ms ({e / c:4.2f}x), rel err {err:.1e}, "
        f"compile pays {pays}" + (f"; deep copy's first call {t_copy:5.1f} s" if ema is not None else ""),
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="sam2_tiny")
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--cases", default="eval,train")
    parser.add_argument("--copy", action="store_true", help="also time a deep copy's first call (DP's EMA)")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {cpu_class()}")
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = write_checkpoint(args.model, args.image_size, Path(tmp))
        for case in args.cases.split(","):
            run_case(case, args, ckpt, train=case == "train")


if __name__ == "__main__":
    main()

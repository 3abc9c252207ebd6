"""Per-frame video propagation time, ours vs the official SAM2VideoPredictor, side by side.

Both predictors get the same perturbed weights; one object is prompted on frame 0 and the timed
unit is a re-propagation over frames 1..K of a prepared session (A B A B ... alternating). The
outputs of both are checked equal (rel_err <= 1e-4) before any time counts. The official runs with
its bf16-stored memories cast to fp32 at use (see tests/test_video.py), hole filling off on both.

    OMP_NUM_THREADS=2 python benchmarks/bench_video.py --image-size 512 --frames 6 --rounds 3
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from _common import alternate, rel_err, report  # noqa: E402


def _video_helpers():
    """tests/test_video.py's helpers (they need pytest): imported only when the benchmark runs."""
    import test_video

    return test_video


def prepared_session(predictor, folder):
    with torch.inference_mode():
        state = predictor.init_state(folder)
        predictor.add_new_points_or_box(state, 0, 1, points=[[60, 50]], labels=[1])
        predictor.add_new_points_or_box(state, 0, 2, box=[95, 65, 130, 100])
        list(predictor.propagate_in_video(state))
    return state


def propagate(predictor, state) -> list[torch.Tensor]:
    with torch.inference_mode():
        return [m for _, _, m in predictor.propagate_in_video(state, start_frame_idx=1)]


def module_times(predictor, state) -> dict[str, float]:
    """Seconds per propagated frame spent in the top-level modules (forward hooks)."""
    names = ["image_encoder", "memory_attention", "memory_encoder", "sam_prompt_encoder", "sam_mask_decoder"]
    spent, start, handles = defaultdict(float), {}, []
    for name in names:
        mod = getattr(predictor, name)
        handles.append(mod.register_forward_pre_hook(lambda m, a, n=name: start.__setitem__(n, time.perf_counter())))
        handles.append(
            mod.register_forward_hook(
                lambda m, a, o, n=name: spent.__setitem__(n, spent[n] + time.perf_counter() - start[n])
            )
        )
    t = time.perf_counter()
    n = len(propagate(predictor, state))
    total = time.perf_counter() - t
    for h in handles:
        h.remove()
    out = {k: round(v / n, 4) for k, v in spent.items()}
    out["other"] = round((total - sum(spent.values())) / n, 4)
    out["total"] = round(total / n, 4)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default="configs/sam2.1/sam2.1_hiera_t.yaml")
    ap.add_argument("--image-size", type=int, default=512)
    ap.add_argument("--frames", type=int, default=6)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    torch.set_grad_enabled(False)
    tmp = Path(tempfile.mkdtemp())
    helpers = _video_helpers()
    official, ours = helpers.build_pair(tmp, args.config, args.image_size)
    helpers.cast_official_memory_at_use(official)
    official.show_progress = False
    folder = helpers.write_jpegs(tmp / "frames", helpers.synthetic_frames(args.frames))
    states = {"official": prepared_session(official, folder), "ours": prepared_session(ours, folder)}
    ref, got = propagate(official, states["official"]), propagate(ours, states["ours"])
    worst = max(rel_err(a, b) for a, b in zip(got, ref))
    if len(got) != len(ref) or worst > 1e-4:
        raise SystemExit(f"outputs differ (worst rel_err {worst:.2e}); times would not count")
    print(f"outputs equal: {len(got)} frames x 2 objects, worst rel_err {worst:.2e}")

    import tqdm as _tqdm  # the official always draws a bar: silence it for both while timing

    per_frame = args.frames - 1
    orig = _tqdm.tqdm.__init__

    def quiet(self, *a, **k):
        k["disable"] = True
        orig(self, *a, **k)

    _tqdm.tqdm.__init__ = quiet
    try:
        times = alternate(
            {
                "official": lambda: propagate(official, states["official"]),
                "ours": lambda: propagate(ours, states["ours"]),
            },
            rounds=args.rounds,
            warmup=0,
        )
    finally:
        _tqdm.tqdm.__init__ = orig
    times = {k: [t / per_frame for t in v] for k, v in times.items()}
    report(f"video propagate per frame, 2 objects, {Path(args.config).stem} @ {args.image_size}", times)
    print("ratio official/ours:", round(statistics.median(times["official"]) / statistics.median(times["ours"]), 3))
    print("all rounds, s per frame:", {k: [round(t, 3) for t in v] for k, v in times.items()})  # shows machine noise
    print("ours, s per frame by module:", module_times(ours, states["ours"]))
    print("official, s per frame by module:", module_times(official, states["official"]))


if __name__ == "__main__":
    main()

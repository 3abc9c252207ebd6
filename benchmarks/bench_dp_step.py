"""One Diffusion Policy training step with SAM 2 as the obs encoder: time and peak memory.

    PYTHONPATH=/path/to/diffusion_policy python benchmarks/bench_dp_step.py \
        [--models large,tiny] [--cases frozen_live,frozen_cached,finetune,finetune_ckpt] [--steps 2]

docs/design.md, ruling 13: DP's ``pusht_image`` policy defaults (``DiffusionUnetImagePolicy``, UNet
``down_dims [512, 1024, 2048]``, ``n_obs_steps 2``, horizon 16, crop 76 of 96 px), batch 8, CPU,
each model at its default ``image_size`` (large 256, tiny 224). A step is DP's: ``compute_loss``
on a batch as DP's dataset returns it (16 frames; the policy keeps the first 2), ``backward``,
AdamW (``dp_sam2.encoders.obs.finetune.adamw_param_groups``), ``zero_grad``, EMA update.

Cases: ``frozen_live`` (images through the frozen backbone), ``frozen_cached`` (float16 features
from a feature cache in place of the images), ``finetune`` (``freeze=false``) and
``finetune_ckpt`` (``freeze=false`` + ``activation_checkpointing``). Each case runs in its own
process (allocator state does not leak between cases; large allocations are mmapped so freed
memory leaves RSS). Memory: peak RSS during the measured step minus the RSS held just before it
(weights, EMA copy, optimizer state), from Linux's VmHWM reset through /proc/self/clear_refs.
SAM 2 weights are not needed for timing: the encoder is built with
DP_SAM2_ALLOW_MISSING_CHECKPOINT=1 (random weights). Needs Diffusion Policy importable.

Measured 2026-11-25, quieter machine (two measured steps per case after a warm-up):

    model  case            image  step_s  peak-minus-held MiB  held MiB
    large  frozen_live       256    31.4               1165      6429
    large  frozen_cached     256     5.85              1165      6424
    tiny   frozen_live       224     9.4               1165      5004
    tiny   frozen_cached     224     6.9               1164      5000
    tiny   finetune          224    15.6               2567      5212
    tiny   finetune_ckpt     224    15.3               1530      5216

Earlier the same day on the shared 2-core CPU (load average 6-9 from other jobs, so times are
inflated and noisy; one measured step per case after a warm-up, large run once):

    model  case            image  step_s  peak-minus-held MiB  held MiB
    large  frozen_live       256   122.8               1164      6676
    large  frozen_cached     256    25.4               1164      6671
    tiny   frozen_live       224    75.8               1164      5287
    tiny   frozen_cached     224    56.7               1164      5247
    tiny   finetune          224   104.9               2568      5458
    tiny   finetune_ckpt     224   151.2               1530      5462

The frozen cases' step memory is the UNet's (AdamW and EMA temporaries over its 263 M
parameters); activation checkpointing cut the tiny finetune step's extra memory by 1.0 GiB
(2568 -> 1530 MiB). Large finetune was not run here (about 17 GiB without checkpointing on a
23 GiB machine shared with other jobs).
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import statistics
import subprocess
import sys
import time
import warnings

CASES = ("frozen_live", "frozen_cached", "finetune", "finetune_ckpt")
IMAGE_SIZE = {"large": 256, "tiny": 224}
BATCH, HORIZON, N_OBS, CROP = 8, 16, 2, 76


# ----------------------------------------------------------------------------- memory (Linux)
def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _trim() -> None:
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass


def _reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


# ----------------------------------------------------------------------------- one case
def build(model: str, case: str):
    import torch
    from diffusers import DDPMScheduler
    from diffusion_policy.common.normalize_util import get_image_range_normalizer
    from diffusion_policy.model.common.normalizer import LinearNormalizer, SingleFieldLinearNormalizer
    from diffusion_policy.model.diffusion.ema_model import EMAModel
    from diffusion_policy.policy.diffusion_unet_image_policy import DiffusionUnetImagePolicy

    from dp_sam2 import SAM2ObsEncoder
    from dp_sam2.encoders.obs.finetune import adamw_param_groups

    shape_meta = {
        "obs": {"image": {"shape": [3, 96, 96], "type": "rgb"}, "agent_pos": {"shape": [2], "type": "low_dim"}},
        "action": {"shape": [2]},
    }
    os.environ["DP_SAM2_ALLOW_MISSING_CHECKPOINT"] = "1"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        encoder = SAM2ObsEncoder(
            shape_meta,
            model_cfg=f"sam2_{model}",
            image_size=IMAGE_SIZE[model],
            crop_shape=[CROP, CROP],
            freeze=case.startswith("frozen"),
            activation_checkpointing=case == "finetune_ckpt",
        )
    scheduler = DDPMScheduler(
        num_train_timesteps=100,
        beta_start=1e-4,
        beta_end=0.02,
        beta_schedule="squaredcos_cap_v2",
        variance_type="fixed_small",
        clip_sample=True,
        prediction_type="epsilon",
    )
    policy = DiffusionUnetImagePolicy(
        shape_meta,
        scheduler,
        encoder,
        horizon=HORIZON,
        n_action_steps=8,
        n_obs_steps=N_OBS,
        num_inference_steps=100,
        obs_as_global_cond=True,
        diffusion_step_embed_dim=128,
        down_dims=(512, 1024, 2048),
        kernel_size=5,
        n_groups=8,
        cond_predict_scale=True,
    )
    normalizer = LinearNormalizer()
    normalizer["image"] = get_image_range_normalizer()
    normalizer["agent_pos"] = SingleFieldLinearNormalizer.create_identity()
    normalizer["action"] = SingleFieldLinearNormalizer.create_identity()
    policy.set_normalizer(normalizer)
    import copy

    ema_policy = copy.deepcopy(policy)
    ema = EMAModel(ema_policy, update_after_step=0, inv_gamma=1.0, power=0.75, min_value=0.0, max_value=0.9999)
    optimizer = adamw_param_groups(policy.parameters(), lr=1e-4, betas=(0.95, 0.999), eps=1e-8, weight_decay=1e-6)
    gen = torch.Generator().manual_seed(0)
    if case == "frozen_cached":  # what a feature-cache dataset returns: fp16 features per frame
        frames = torch.randn(BATCH, HORIZON, *encoder.feature_shape, generator=gen).half()
    else:  # what DP's pusht dataset returns: [0, 1] images
        frames = torch.rand(BATCH, HORIZON, 3, 96, 96, generator=gen)
    batch = {
        "obs": {"image": frames, "agent_pos": torch.rand(BATCH, HORIZON, 2, generator=gen)},
        "action": torch.randn(BATCH, HORIZON, 2, generator=gen),
    }
    policy.train()
    return policy, ema, optimizer, batch


def run_case(model: str, case: str, steps: int) -> dict:
    import torch

    policy, ema, optimizer, batch = build(model, case)

    def step():
        loss = policy.compute_loss(batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        ema.step(policy)
        return float(loss)

    step()  # warm-up: optimizer state exists from here on, as in training
    times, peaks = [], []
    for _ in range(steps):
        _trim()
        held = _status_kb("VmRSS")
        _reset_peak()
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
        peaks.append(_status_kb("VmHWM") - held)
    n_backbone = sum(p.numel() for p in policy.obs_encoder._all_backbones()[0].parameters())
    return {
        "model": model,
        "case": case,
        "image_size": IMAGE_SIZE[model],
        "batch": BATCH,
        "n_obs_steps": N_OBS,
        "step_s": round(statistics.median(times), 3),
        "step_peak_minus_held_MiB": round(max(peaks) / 1024, 1),
        "held_MiB": round(held / 1024, 1),
        "backbone_params_M": round(n_backbone / 1e6, 1),
        "threads": torch.get_num_threads(),
    }


# ----------------------------------------------------------------------------- driver
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="tiny,large")
    ap.add_argument("--cases", default=",".join(CASES))
    ap.add_argument("--steps", type=int, default=2, help="measured steps per case (after one warm-up step)")
    ap.add_argument("--json", help="write the rows here too")
    ap.add_argument("--_one", nargs=2, metavar=("MODEL", "CASE"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._one:
        print("ROW " + json.dumps(run_case(*args._one, args.steps)), flush=True)
        return
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072", MALLOC_TRIM_THRESHOLD_="0")
    rows = []
    for model in args.models.split(","):
        for case in args.cases.split(","):
            if case not in CASES or model not in IMAGE_SIZE:
                raise SystemExit(f"unknown case {case!r} or model {model!r}; cases {CASES}, models {list(IMAGE_SIZE)}")
            proc = subprocess.run(
                [sys.executable, __file__, "--_one", model, case, "--steps", str(args.steps)],
                env=env,
                capture_output=True,
                text=True,
            )
            if proc.returncode:
                raise SystemExit(f"{model}/{case} failed:\n{proc.stderr[-3000:]}")
            row = json.loads(next(line for line in proc.stdout.splitlines() if line.startswith("ROW "))[4:])
            print(row, flush=True)
            rows.append(row)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()

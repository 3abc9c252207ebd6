"""The latency a robot sees: one policy call at batch 1 (the obs encoder on ``n_obs_steps`` frames plus
DDIM sampling with the protocol's steps), DP's ResNet-18 and SAM 2 tiny / small / base+ / large at their
default sizes, CPU fp32 and bf16 (bf16 only where the CPU has bf16 instructions), random weights (they do
not change the time). Run inside the DP checkout: ``python -m dp_sam2.compare.latency`` (cwd = DP's root);
``dp-sam2 compare --latency`` does that once per output folder.
"""

from __future__ import annotations

import argparse
import csv
import io
import statistics
import sys
from pathlib import Path

MODELS = ("resnet18", "sam2_tiny", "sam2_small", "sam2_base_plus", "sam2_large")
COLUMNS = (
    "model",
    "encoder_input",
    "precision",
    "cpu_class",
    "threads",
    "ddim_steps",
    "latency_ms",
    "calls",
    "weights",
)


def cpu_class(cpuinfo: str | None = None) -> str:
    """The CPU class by its flags (docs/design.md, ruling 21): AVX2 only, AVX-512, AVX-512 + AVX512-BF16 (+ AMX)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return "unknown"
    flags = set()
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            break
    if "avx512f" in flags:
        extra = [n for f, n in (("avx512_bf16", "AVX512-BF16"), ("amx_tile", "AMX")) if f in flags]
        return "AVX-512" + ("" if extra else " (no BF16)") + "".join(f" + {e}" for e in extra)
    return "AVX2" if "avx2" in flags else "no AVX2"


def has_bf16(cls: str) -> bool:
    return "BF16" in cls and "no BF16" not in cls


def build_policy(model: str, image_size: int, ddim_steps: int, down_dims, n_obs_steps: int = 2):
    """DP's DiffusionUnetImagePolicy with DP's ResNet-18 obs encoder (as its image workspace ships it) or
    SAM2ObsEncoder (random weights), one camera of ``image_size`` px plus a 4-float agent_pos."""
    import torch
    from diffusers.schedulers.scheduling_ddim import DDIMScheduler
    from diffusion_policy.common.normalize_util import get_image_range_normalizer
    from diffusion_policy.model.common.normalizer import LinearNormalizer, SingleFieldLinearNormalizer
    from diffusion_policy.policy.diffusion_unet_image_policy import DiffusionUnetImagePolicy

    shape_meta = {
        "obs": {
            "image": {"shape": [3, image_size, image_size], "type": "rgb"},
            "agent_pos": {"shape": [4], "type": "low_dim"},
        },
        "action": {"shape": [4]},
    }
    if model == "resnet18":
        from diffusion_policy.model.vision.model_getter import get_resnet
        from diffusion_policy.model.vision.multi_image_obs_encoder import MultiImageObsEncoder

        crop = 2 * round(0.9 * image_size / 2)
        encoder = MultiImageObsEncoder(
            shape_meta=shape_meta,
            rgb_model=get_resnet("resnet18", weights=None),
            crop_shape=(crop, crop),
            random_crop=True,
            use_group_norm=True,
            share_rgb_model=False,
            imagenet_norm=True,
        )
        size = crop
    else:
        from dp_sam2 import SAM2ObsEncoder

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            encoder = SAM2ObsEncoder(shape_meta, model_cfg=model, random_weights=True)
        size = encoder.image_size
    scheduler = DDIMScheduler(
        num_train_timesteps=100,
        beta_start=0.0001,
        beta_end=0.02,
        beta_schedule="squaredcos_cap_v2",
        clip_sample=True,
        set_alpha_to_one=True,
        steps_offset=0,
        prediction_type="epsilon",
    )
    kw = {"down_dims": tuple(down_dims)} if down_dims else {}
    policy = DiffusionUnetImagePolicy(
        shape_meta=shape_meta,
        noise_scheduler=scheduler,
        obs_encoder=encoder,
        horizon=16,
        n_action_steps=8,
        n_obs_steps=n_obs_steps,
        num_inference_steps=ddim_steps,
        obs_as_global_cond=True,
        diffusion_step_embed_dim=128,
        kernel_size=5,
        n_groups=8,
        cond_predict_scale=True,
        **kw,
    )
    normalizer = LinearNormalizer()
    normalizer["image"] = get_image_range_normalizer()
    normalizer["agent_pos"] = SingleFieldLinearNormalizer.create_identity()
    normalizer["action"] = SingleFieldLinearNormalizer.create_identity()
    policy.set_normalizer(normalizer)
    return policy.eval(), size


def measure(models, image_size: int, ddim_steps: int, down_dims, repeats: int, cls: str | None = None) -> list[dict]:
    import torch

    from dp_sam2.compare.probe import time_policy

    cls = cls or cpu_class()
    precisions = ["fp32"] + (["bf16"] if has_bf16(cls) else [])
    rows = []
    for model in models:
        policy, size = build_policy(model, image_size, ddim_steps, down_dims)
        obs = {"image": torch.rand(1, 2, 3, image_size, image_size), "agent_pos": torch.zeros(1, 2, 4)}
        for prec in precisions:
            if prec == "bf16":
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    times = time_policy(policy, obs, torch.device("cpu"), repeats=repeats)
            else:
                times = time_policy(policy, obs, torch.device("cpu"), repeats=repeats)
            rows.append(
                {
                    "model": model,
                    "encoder_input": f"{size}px",
                    "precision": prec,
                    "cpu_class": cls,
                    "threads": torch.get_num_threads(),
                    "ddim_steps": ddim_steps,
                    "latency_ms": round(statistics.median(times), 1),
                    "calls": len(times),
                    "weights": "scratch (random init)" if model == "resnet18" else "random",
                }
            )
            print(f"{model} {prec}: {rows[-1]['latency_ms']} ms", flush=True)
        del policy
    return rows


def to_csv(rows: list[dict]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


def to_markdown(rows: list[dict], image_size: int, down_dims) -> str:
    lines = [
        f"Latency of one policy call at batch 1 (obs encoder on 2 frames of a {image_size} px camera + DDIM "
        f"sampling, U-Net down_dims {list(down_dims) if down_dims else 'DP default'}), CPU, median of the "
        "calls; random weights (SAM 2 rows: *random weights*, which do not change the time). A 10 Hz controller "
        "executing 8-step action chunks needs one call per 0.8 s.",
        "",
        "| model | encoder input | precision | CPU class | threads | DDIM steps | latency (ms) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        name = r["model"] + (" (random weights)" if r["weights"] == "random" else "")
        lines.append(
            f"| {name} | {r['encoder_input']} | {r['precision']} | {r['cpu_class']} | {r['threads']} "
            f"| {r['ddim_steps']} | {r['latency_ms']} |"
        )
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m dp_sam2.compare.latency", description=__doc__)
    p.add_argument("--out", required=True, help="folder for latency.csv and latency.md")
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--image-size", type=int, default=96)
    p.add_argument("--ddim-steps", type=int, default=10)
    p.add_argument("--down-dims", default="64,128,256", help="comma-separated, or 'default' for DP's")
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args(argv)
    down = None if args.down_dims == "default" else [int(d) for d in args.down_dims.split(",")]
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    rows = measure(models, args.image_size, args.ddim_steps, down, args.repeats)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    from dp_sam2.compare.results import atomic_write

    atomic_write(out / "latency.md", to_markdown(rows, args.image_size, down))
    atomic_write(out / "latency.csv", to_csv(rows))  # last: its presence means "measured"
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

"""What a MetaWorld closed-loop run costs on this CPU (numbers for docs/metaworld.md).

Run with DP's Python from the root of a DP checkout (or with it on PYTHONPATH):
    python benchmarks/metaworld_run/measure_costs.py [--batch 20] [--size 128]
Prints: env step + render per episode-step; DP's default image policy (ResNet-18, UNet 512-1024-2048)
per predict_action call for --batch episodes at 1 and 4 denoising steps, extrapolated to DP's
default 100 (the call is the encoder once plus one UNet pass per step), and per training step at batch 64;
the same with the UNet at 32-64-128 (a smoke-test setting).
"""

import argparse
import time

import numpy as np
import torch

from dp_sam2.metaworld import env as mw


def timed(fn, n, warmup=True):
    if warmup:
        fn()
    start = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - start) / n


def policy(size, down_dims, steps):
    from diffusers.schedulers.scheduling_ddpm import DDPMScheduler
    from diffusion_policy.model.vision.model_getter import get_resnet
    from diffusion_policy.model.vision.multi_image_obs_encoder import MultiImageObsEncoder
    from diffusion_policy.policy.diffusion_unet_image_policy import DiffusionUnetImagePolicy

    meta = {"obs": {"image": {"shape": [3, size, size], "type": "rgb"}, "agent_pos": {"shape": [4], "type": "low_dim"}},
            "action": {"shape": [4]}}  # fmt: skip
    enc = MultiImageObsEncoder(
        meta, get_resnet("resnet18"), crop_shape=(76, 76), use_group_norm=True, imagenet_norm=True
    )
    sched = DDPMScheduler(num_train_timesteps=100, beta_schedule="squaredcos_cap_v2", clip_sample=True)
    p = DiffusionUnetImagePolicy(meta, sched, enc, horizon=16, n_action_steps=8, n_obs_steps=2,
                                 num_inference_steps=steps, down_dims=down_dims)  # fmt: skip
    from diffusion_policy.model.common.normalizer import LinearNormalizer

    norm = LinearNormalizer()
    norm.fit({"action": np.random.uniform(-1, 1, (100, 4)), "agent_pos": np.random.rand(100, 4)})
    from diffusion_policy.common.normalize_util import get_image_range_normalizer

    norm["image"] = get_image_range_normalizer()
    p.set_normalizer(norm)
    return p.eval()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=20)
    ap.add_argument("--size", type=int, default=128)
    args = ap.parse_args()
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}")
    env = mw.make_env("push", 0)
    mw.reset(env, 0)
    r = mw.SceneRenderer(env.model, args.size, "corner2")
    rng = np.random.default_rng(0)
    t = timed(lambda: (mw.step(env, rng.uniform(-1, 1, 4)), r.render(env)), 100)
    print(f"env step + {args.size}px render: {t * 1000:.1f} ms", flush=True)
    t = timed(lambda: mw.step(env, rng.uniform(-1, 1, 4)), 100)
    print(f"env step alone: {t * 1000:.1f} ms")
    obs = {"image": torch.rand(args.batch, 2, 3, args.size, args.size), "agent_pos": torch.rand(args.batch, 2, 4)}
    batch = {"obs": {"image": torch.rand(64, 16, 3, args.size, args.size), "agent_pos": torch.rand(64, 16, 4)},
             "action": torch.rand(64, 16, 4)}  # fmt: skip
    for dims in [(32, 64, 128), (512, 1024, 2048)]:
        times = {}
        for steps in (1, 4):
            p = policy(args.size, dims, steps)
            with torch.no_grad():
                times[steps] = timed(lambda: p.predict_action(obs), 1, warmup=steps == 1)
        per_step = (times[4] - times[1]) / 3
        print(
            f"DP image policy, UNet {dims}: predict_action for {args.batch} episodes {times[1]:.2f} s at 1 step, "
            f"{times[4]:.2f} s at 4; ~{times[1] - per_step + 100 * per_step:.0f} s at 100 (UNet pass {per_step:.2f} s)",
            flush=True,
        )
        p.train()
        opt = torch.optim.AdamW(p.parameters(), lr=1e-4)

        def train_step():
            opt.zero_grad()
            p.compute_loss(batch).backward()
            opt.step()

        print(f"  training step at batch 64: {timed(train_step, 1, warmup=False):.2f} s", flush=True)


if __name__ == "__main__":
    main()

"""Data-parallel overhead of the DP training step: N processes x T threads at one global batch.

What one step of dp_sam2's data-parallel workspace does (dp_sam2.workspaces.data_parallel:
LossForward in DistributedDataParallel, gloo on CPU / nccl on GPU), on a policy shaped like DP's:
a frozen SAM 2 obs encoder (live images, or cached features with --cached) and a trainable MLP
standing in for the UNet (--head-params trainable parameters, all-reduced every step), AdamW.
Each measured step is timed with gradient synchronisation and, alternately, under DDP's
no_sync() (the same compute without the all-reduce), so the table shows what communication costs.

    python benchmarks/bench_ddp.py                       # CPU: 1 process x 2 threads vs 2 x 1
    python benchmarks/bench_ddp.py --runs 1x2,2x1 --cached --head-params 25e6
    python benchmarks/bench_ddp.py --runs 1x8,8x1 --device cuda   # N GPUs (threads per process)

On a CPU with C cores, 1 x C against C x 1 is framework and communication overhead, not scaling.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def build_policy(args):
    from dp_sam2 import SAM2ObsEncoder

    nn = torch.nn

    meta = {
        "obs": {"image": {"shape": [3, 96, 96], "type": "rgb"}, "agent_pos": {"shape": [2], "type": "low_dim"}},
        "action": {"shape": [2]},
    }
    os.environ["DP_SAM2_ALLOW_MISSING_CHECKPOINT"] = "1"  # random weights: timing only
    torch.manual_seed(0)

    class Policy(nn.Module):
        def __init__(self):
            super().__init__()
            self.obs_encoder = SAM2ObsEncoder(meta, model_cfg=args.model, image_size=args.image_size)
            dim = self.obs_encoder.output_shape()[0] * 2 + 32  # 2 obs steps, a 16 x 2 action chunk
            width = max(8, int((float(args.head_params) / 3) ** 0.5))  # dim*w + w*w + w*32 ~ head_params
            self.model = nn.Sequential(
                nn.Linear(dim, width), nn.Mish(), nn.Linear(width, width), nn.Mish(), nn.Linear(width, 32)
            )

        def compute_loss(self, batch):
            b = batch["action"].shape[0]
            cond = self.obs_encoder({"image": batch["image"], "agent_pos": batch["agent_pos"]}).reshape(b, -1)
            noise = torch.randn_like(batch["action"])
            pred = self.model(torch.cat([cond, (batch["action"] + noise).flatten(1)], dim=1))
            return (pred - noise.flatten(1)).square().mean()

    return Policy()


def worker(args) -> None:
    from dp_sam2 import dist as D
    from dp_sam2.workspaces.data_parallel import wrap_ddp

    torch.set_num_threads(args.threads)
    dist = D.init_from_env(args.device)
    device = dist.device if dist.enabled else torch.device(args.device)
    policy = build_policy(args).to(device)
    step_fn = wrap_ddp(policy, dist, {}) if dist.enabled else policy.compute_loss
    opt = torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad], lr=1e-4)
    local = args.global_batch // dist.world
    gen = torch.Generator().manual_seed(dist.rank)
    side = args.image_size // 16
    if args.cached:  # features in place of images (the frozen-feature cache)
        image = torch.randn(local * 2, 256, side, side, generator=gen)
    else:
        image = torch.rand(local * 2, 3, 96, 96, generator=gen) * 2 - 1
    batch = {
        "image": image.to(device),
        "agent_pos": torch.randn(local * 2, 2, generator=gen).to(device),
        "action": torch.randn(local, 16, 2, generator=gen).to(device),
    }

    def step(sync: bool) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        ctx = step_fn.no_sync() if (dist.enabled and not sync) else _null()
        with ctx:
            step_fn(batch).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        dist.barrier()
        return time.perf_counter() - t

    for _ in range(args.warmup):
        step(True)
    synced, local_only = [], []
    for _ in range(args.steps):  # alternate: synchronised, then the same compute without the all-reduce
        synced.append(step(True))
        local_only.append(step(False))
    if dist.is_main:
        trainable = sum(p.numel() for p in policy.parameters() if p.requires_grad)
        print(
            "RESULT "
            + json.dumps(
                {
                    "world": dist.world,
                    "threads": args.threads,
                    "global_batch": args.global_batch,
                    "step_s": statistics.median(synced),
                    "no_sync_s": statistics.median(local_only),
                    "trainable": trainable,
                }
            ),
            flush=True,
        )
    if dist.enabled:
        torch.distributed.destroy_process_group()


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None


def launch(args, world: int, threads: int) -> dict:
    cmd = [sys.executable, __file__, "--worker", "--threads", str(threads), *_forward(args)]
    if world > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(world), *cmd[1:]]
    env = dict(
        os.environ,
        OMP_NUM_THREADS=str(threads),
        PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    )
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        env.pop(name, None)
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=args.timeout)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT ") :])


def _forward(args) -> list[str]:
    out = [
        "--model",
        args.model,
        "--image-size",
        str(args.image_size),
        "--global-batch",
        str(args.global_batch),
        "--steps",
        str(args.steps),
        "--warmup",
        str(args.warmup),
        "--head-params",
        str(args.head_params),
        "--device",
        args.device,
    ]
    return out + (["--cached"] if args.cached else [])


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", default="1x2,2x1", help="comma-separated PROCESSESxTHREADS, e.g. 1x2,2x1 or 1x8,8x1")
    parser.add_argument("--model", default="sam2_tiny")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--global-batch", type=int, default=8, help="samples per step over all processes")
    parser.add_argument("--head-params", type=float, default=1e6, help="trainable parameters (all-reduced per step)")
    parser.add_argument("--cached", action="store_true", help="cached features in place of live images")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--timeout", type=int, default=1800)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return worker(args)
    runs = [tuple(int(x) for x in r.lower().split("x")) for r in args.runs.split(",")]
    if any(args.global_batch % world for world, _ in runs):
        parser.error("--global-batch must be divisible by every process count")
    results = [launch(args, world, threads) for world, threads in runs]
    print(
        f"{args.model} @ {args.image_size} px, {'cached features' if args.cached else 'live images'}, "
        f"global batch {args.global_batch}, {results[0]['trainable'] / 1e6:.2f} M trainable, {args.device}"
    )
    print("| processes x threads | step | step without all-reduce | all-reduce share | vs first |")
    print("|---|---|---|---|---|")
    base = results[0]["step_s"]
    for r in results:
        share = max(0.0, r["step_s"] - r["no_sync_s"]) / r["step_s"] if r["world"] > 1 else 0.0
        print(
            f"| {r['world']} x {r['threads']} | {r['step_s']:.3f} s | {r['no_sync_s']:.3f} s | {share:.0%} | "
            f"{r['step_s'] / base:.2f}x |"
        )


if __name__ == "__main__":
    main()

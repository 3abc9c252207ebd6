"""A small synthetic pusht-style replay buffer (DP's ``PushTImageDataset`` format) and a SAM 2
checkpoint file in the official format with random weights, for a CPU smoke run of DP.

    python make_pusht_zarr.py --zarr data/pusht_synth.zarr [--episodes 6 --steps 40]
    python make_pusht_zarr.py --checkpoint checkpoints/sam2_hiera_tiny.pt --model sam2_tiny
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np


def make_zarr(path: str, episodes: int, steps: int, seed: int = 0) -> None:
    from diffusion_policy.common.replay_buffer import ReplayBuffer

    rng = np.random.default_rng(seed)
    buffer = ReplayBuffer.create_empty_numpy()
    for _ in range(episodes):
        pos = np.cumsum(rng.normal(0, 5, (steps, 2)), axis=0) + 256
        buffer.add_episode(
            {
                "img": rng.uniform(0, 255, (steps, 96, 96, 3)).astype(np.float32),  # 0..255 like pusht
                "state": np.concatenate([pos, rng.uniform(0, 512, (steps, 3))], axis=1).astype(np.float32),
                "action": (pos + rng.normal(0, 2, (steps, 2))).astype(np.float32),
            }
        )
    buffer.save_to_path(path, chunk_length=-1)
    print(f"wrote {path}: {episodes} episodes x {steps} steps")


def make_checkpoint(path: str, model: str, seed: int = 0) -> None:
    """``{"model": state_dict}`` with the official keys, random (perturbed) weights."""
    import torch

    from dp_sam2 import build_sam2

    torch.manual_seed(seed)
    sam = build_sam2(model, device="cpu")
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for tensor in sam.state_dict(keep_vars=True).values():
            if tensor.is_floating_point():
                tensor.add_(torch.randn(tensor.shape, generator=gen) * 0.02)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": sam.state_dict()}, path)
    print(f"wrote {path} ({model}, random weights)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--zarr")
    parser.add_argument("--episodes", type=int, default=6)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--checkpoint")
    parser.add_argument("--model", default="sam2_tiny")
    args = parser.parse_args()
    if args.zarr:
        make_zarr(args.zarr, args.episodes, args.steps)
    if args.checkpoint:
        make_checkpoint(args.checkpoint, args.model)

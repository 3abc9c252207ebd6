"""A small synthetic replay buffer in UMI's ``dataset.zarr.zip`` format (what UMI's
``UmiDataset`` reads for its ``task: umi``), for a CPU smoke run of UMI's ``train.py``.

One wrist camera ``camera0_rgb`` (uint8, H x W x 3), ``robot0_eef_pos``,
``robot0_eef_rot_axis_angle``, ``robot0_gripper_width``, ``robot0_demo_start_pose`` /
``robot0_demo_end_pose`` and ``meta/episode_ends``; smooth random trajectories.

    python make_umi_zarr.py --out example_demo_session/dataset.zarr.zip [--episodes 3 --steps 80]

(SAM 2 file with random weights in the official format: ``benchmarks/dp_run/make_pusht_zarr.py
--checkpoint checkpoints/sam2_hiera_tiny.pt --model sam2_tiny``.)
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np


def make_umi_zarr(path: str, episodes: int, steps: int, size: int = 224, seed: int = 0) -> None:
    import zarr

    rng = np.random.default_rng(seed)
    n = episodes * steps
    pos = np.concatenate([np.cumsum(rng.normal(0, 0.005, (steps, 3)), axis=0) for _ in range(episodes)])
    rot = np.concatenate([np.cumsum(rng.normal(0, 0.01, (steps, 3)), axis=0) + 0.1 for _ in range(episodes)])
    width = np.clip(0.05 + np.cumsum(rng.normal(0, 0.002, (n, 1)), axis=0), 0.0, 0.1)
    ends = np.arange(1, episodes + 1, dtype=np.int64) * steps
    start = np.repeat(np.concatenate([pos, rot], axis=1)[ends - steps], steps, axis=0)
    end = np.repeat(np.concatenate([pos, rot], axis=1)[ends - 1], steps, axis=0)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with zarr.ZipStore(path, mode="w") as store:
        root = zarr.group(store)
        data = root.create_group("data")
        images = data.zeros("camera0_rgb", shape=(n, size, size, 3), chunks=(1, size, size, 3), dtype=np.uint8)
        for i in range(n):
            images[i] = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        for key, value in {
            "robot0_eef_pos": pos,
            "robot0_eef_rot_axis_angle": rot,
            "robot0_gripper_width": width,
            "robot0_demo_start_pose": start,
            "robot0_demo_end_pose": end,
        }.items():
            data.array(key, value.astype(np.float32), chunks=value.shape)
        root.create_group("meta").array("episode_ends", ends)
    print(f"wrote {path}: {episodes} episodes x {steps} steps, camera0_rgb {size}x{size}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True)
    parser.add_argument("--episodes", type=int, default=3)
    parser.add_argument("--steps", type=int, default=80)
    args = parser.parse_args()
    make_umi_zarr(args.out, args.episodes, args.steps)

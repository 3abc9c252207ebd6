"""Small inputs for the LeRobot tests, made locally (no hub): a LeRobotDataset with two cameras,
state and actions (``use_videos=False``: PNG frames, no FFmpeg needed), and a SAM 2 checkpoint
with random weights written in the official format (``{"model": state_dict}`` under the
official file name).

Also a command line for the by-hand run (benchmarks/lerobot_run/README.md)::

    python lerobot_policy_sam2/tests/fixtures.py --dataset DIR --repo-id local/sam2_test --sam2 DIR --model sam2_tiny
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

CAMERAS = ("observation.images.top", "observation.images.wrist")
MODEL = "sam2_tiny"
# A small SAM 2 input, U-Net and horizon, so that a training step takes seconds on a CPU (the rest
# stays LeRobot's diffusion defaults).
SMALL = [
    "--policy.image_size=64",
    "--policy.down_dims=[32,64]",
    "--policy.horizon=8",
    "--policy.n_action_steps=4",
    "--policy.drop_n_last_frames=3",
    "--policy.num_inference_steps=3",
]


def make_dataset(
    root: str | Path,
    repo_id: str = "local/sam2_test",
    episodes: int = 2,
    frames: int = 12,
    hw: tuple[int, int] = (48, 64),
    state_dim: int = 3,
    action_dim: int = 2,
    seed: int = 0,
):
    """A LeRobotDataset at ``root``: ``episodes`` x ``frames`` frames of two RGB cameras
    (``hw`` pixels, a moving square on noise), ``observation.state`` and ``action``."""
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    h, w = hw
    image = {"dtype": "image", "shape": (h, w, 3), "names": ["height", "width", "channels"]}
    features = {key: dict(image) for key in CAMERAS}
    features["observation.state"] = {
        "dtype": "float32",
        "shape": (state_dim,),
        "names": [f"s{i}" for i in range(state_dim)],
    }
    features["action"] = {"dtype": "float32", "shape": (action_dim,), "names": [f"a{i}" for i in range(action_dim)]}
    ds = LeRobotDataset.create(repo_id=repo_id, fps=10, features=features, root=root, use_videos=False)
    rng = np.random.default_rng(seed)
    for _ in range(episodes):
        for t in range(frames):
            frame = {"task": "push the square"}
            for c, key in enumerate(CAMERAS):
                img = rng.integers(0, 60, (h, w, 3), dtype=np.uint8)
                top, left = (3 * t + 7 * c) % (h - 8), (5 * t + 3 * c) % (w - 8)
                img[top : top + 8, left : left + 8] = (230, 120, 40)
                frame[key] = img
            frame["observation.state"] = rng.standard_normal(state_dim).astype(np.float32)
            frame["action"] = rng.standard_normal(action_dim).astype(np.float32)
            ds.add_frame(frame)
        ds.save_episode()
    ds.finalize()
    return ds


def write_random_sam2(folder: str | Path, name: str = "sam2_tiny", seed: int = 0) -> Path:
    """A SAM 2 checkpoint with random weights in the official format, under its official file name."""
    from dp_sam2 import build_sam2
    from dp_sam2.checkpoints.registry import get_spec

    torch.manual_seed(seed)
    model = build_sam2(name, device="cpu", apply_postprocessing=False)
    path = Path(folder) / get_spec(name).filename
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": model.state_dict()}, path)
    return path


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", type=Path, help="folder for a new LeRobotDataset")
    parser.add_argument("--repo-id", default="local/sam2_test")
    parser.add_argument("--episodes", type=int, default=2)
    parser.add_argument("--frames", type=int, default=12)
    parser.add_argument("--sam2", type=Path, help="folder for a random-weight SAM 2 checkpoint")
    parser.add_argument("--model", default="sam2_tiny")
    args = parser.parse_args(argv)
    if args.dataset:
        ds = make_dataset(args.dataset, args.repo_id, args.episodes, args.frames)
        meta = ds.meta
        print(f"dataset {args.repo_id} at {args.dataset}: {meta.total_episodes} episodes, {meta.total_frames} frames")
    if args.sam2:
        print(f"random-weight SAM 2 file: {write_random_sam2(args.sam2, args.model)}")


if __name__ == "__main__":
    main()

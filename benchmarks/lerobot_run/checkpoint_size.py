"""model.safetensors of a frozen-SAM-2 sam2_diffusion policy, with and without the frozen trunk.

Builds the policy with LeRobot's diffusion defaults (U-Net down_dims 512/1024/2048, horizon 64)
for a local LeRobotDataset, with a SAM 2 file of random weights in the official format (sizes do
not depend on the values), saves it with ``save_pretrained`` (the trunk left out) and writes the
whole state dict the way LeRobot's base class would, then prints both sizes.

    python benchmarks/lerobot_run/checkpoint_size.py --model sam2_large --repo-id ID --root DIR --work DIR
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="sam2_large")
    parser.add_argument("--repo-id", required=True)
    parser.add_argument("--root", required=True)
    parser.add_argument("--work", type=Path, required=True)
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "lerobot_policy_sam2" / "tests"))
    from lerobot.datasets.lerobot_dataset import LeRobotDatasetMetadata
    from lerobot.policies.factory import make_policy
    from safetensors.torch import save_model

    import lerobot_policy_sam2
    from dp_sam2.checkpoints.registry import get_spec
    from fixtures import write_random_sam2

    spec = get_spec(args.model)
    sam2 = args.work / "sam2"
    if not (sam2 / spec.filename).is_file():
        write_random_sam2(sam2, spec.name)
    os.environ["DP_SAM2_CHECKPOINT_DIR"] = str(sam2)
    cfg = lerobot_policy_sam2.SAM2DiffusionConfig(sam2_model=spec.name, device="cpu")
    policy = make_policy(cfg, ds_meta=LeRobotDatasetMetadata(args.repo_id, root=args.root))
    policy.save_pretrained(args.work / "without_trunk")
    (args.work / "with_trunk").mkdir(parents=True, exist_ok=True)
    save_model(policy, str(args.work / "with_trunk" / "model.safetensors"))  # what LeRobot's base class writes
    sizes = {name: (args.work / name / "model.safetensors").stat().st_size for name in ("with_trunk", "without_trunk")}
    trunk = sum(p.numel() for p in policy.diffusion.rgb_encoder.backbone.parameters())
    frozen = len(policy.omitted_keys())
    print(
        f"{spec.name} frozen, image_size {cfg.sam2_image_size}, {len(cfg.image_features)} cameras, "
        f"LeRobot diffusion defaults: backbone {trunk / 1e6:.1f} M weights ({frozen} tensors left out)"
    )
    for name, size in sizes.items():
        print(f"model.safetensors {name:>13}: {size:,} bytes ({size / 2**20:.0f} MiB)")
    print(f"saved: {sizes['with_trunk'] - sizes['without_trunk']:,} bytes less")


if __name__ == "__main__":
    main()

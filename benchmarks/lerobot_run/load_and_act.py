"""lerobot-eval-style loading of a sam2_diffusion checkpoint, without a simulator: the policy config
from the checkpoint, ``make_policy`` with ``pretrained_path`` (-> ``from_pretrained``), the saved
pre/post-processors, then ``select_action`` over one episode of a local LeRobotDataset, as the
eval loop feeds it frame by frame. Also checks that the reloaded SAM 2 trunk equals the SAM 2 file
and which keys model.safetensors holds.

    python benchmarks/lerobot_run/load_and_act.py CHECKPOINT/pretrained_model --repo-id ID --root DIR
"""

from __future__ import annotations

import argparse
import time

import torch


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("pretrained", help="…/checkpoints/<step>/pretrained_model")
    parser.add_argument("--repo-id", required=True)
    parser.add_argument("--root", required=True)
    parser.add_argument("--frames", type=int, default=10)
    parser.add_argument(
        "--num-inference-steps",
        type=int,
        default=None,
        help="as lerobot-eval's --policy.num_inference_steps (default: the saved config's)",
    )
    args = parser.parse_args()

    from lerobot.configs.policies import PreTrainedConfig
    from lerobot.datasets.lerobot_dataset import LeRobotDataset
    from lerobot.policies.factory import make_policy, make_pre_post_processors
    from lerobot.utils.import_utils import register_third_party_plugins
    from safetensors import safe_open

    from dp_sam2.checkpoints.files import load_checkpoint_state_dict

    register_third_party_plugins()  # what lerobot-eval's main() does first
    t0 = time.time()
    cfg = PreTrainedConfig.from_pretrained(args.pretrained)
    cfg.pretrained_path = args.pretrained
    cfg.device = "cpu"
    if args.num_inference_steps is not None:
        cfg.num_inference_steps = args.num_inference_steps
    dataset = LeRobotDataset(args.repo_id, root=args.root)
    policy = make_policy(cfg, ds_meta=dataset.meta)
    pre, post = make_pre_post_processors(
        cfg, pretrained_path=args.pretrained, preprocessor_overrides={"device_processor": {"device": "cpu"}}
    )
    print(
        f"loaded {type(policy).__name__} ({cfg.type}, {cfg.sam2_model}, image_size {cfg.sam2_image_size}) "
        f"in {time.time() - t0:.1f} s; training mode: {policy.training}"
    )

    with safe_open(f"{args.pretrained}/model.safetensors", framework="pt") as f:
        keys = list(f.keys())
    n_backbone = sum(k.startswith("diffusion.rgb_encoder.backbone.") for k in keys)
    print(f"model.safetensors: {len(keys)} tensors, {n_backbone} of them SAM 2 backbone weights")

    encoder = policy.diffusion.rgb_encoder
    official = load_checkpoint_state_dict(encoder.sam2_file, cfg.sam2_model)
    ours = encoder.backbone.state_dict()
    worst = max(float((ours[k].float() - official[k].float()).abs().max()) for k in ours)
    print(f"SAM 2 trunk reloaded from {encoder.sam2_file}: {len(ours)} tensors, max |diff| vs the file = {worst}")

    policy.reset()
    episode = dataset.meta.episodes[0]
    start, end = int(episode["dataset_from_index"]), int(episode["dataset_to_index"])
    actions = []
    t0 = time.time()
    for i in range(start, min(end, start + args.frames)):
        frame = dataset[i]
        obs = {k: v for k, v in frame.items() if k.startswith("observation.")}
        obs["task"] = frame["task"]
        with torch.inference_mode():
            action = post(policy.select_action(pre(obs)))
        actions.append(action)
    actions = torch.cat(actions)
    print(
        f"select_action x {len(actions)} frames ({policy.diffusion.num_inference_steps} denoising steps per chunk): "
        f"actions {tuple(actions.shape)}, finite: "
        f"{bool(torch.isfinite(actions).all())}, {time.time() - t0:.1f} s"
    )


if __name__ == "__main__":
    main()

"""How the LeRobot fixtures in tests/fixtures/compat were made (kept for the record; run once, on 0.2.2).

In the LeRobot venv, with the 0.2.2 dp_sam2 and plugin installed (commit 020f62b: 0.2.2 + ruff format)::

    python lerobot_policy_sam2/tests/make_0_2_2_fixtures.py tests/fixtures/compat

For each case it builds a small ``sam2_diffusion`` policy (sam2_tiny at image_size 64, two 48x64 cameras, a
crop), saves it with ``save_pretrained`` and keeps what a saved policy holds that the new code must read:
``config.json`` as ``lerobot_<case>_0.2.2_config.json``, and in ``lerobot_0.2.2_state_dicts.json`` the keys
and shapes of ``model.safetensors``, the keys left out of it (read again from the SAM 2 file), the full
state dict's keys, and the camera encoder's eval output for weights filled by name (a fingerprint). No
weights are kept.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import zlib
from pathlib import Path

import torch

CAMERAS = ("observation.images.top", "observation.images.wrist")
CASES = {  # name -> (SAM2DiffusionConfig fields, whether the trunk comes from a SAM 2 file)
    "frozen_from_file": ({}, True),
    "lora_spatial_softmax_random": ({"freeze": False, "lora_rank": 2, "pooling": "spatial_softmax"}, False),
}


def make_config(**fields):
    from lerobot.configs.types import FeatureType, PolicyFeature

    from lerobot_policy_sam2 import SAM2DiffusionConfig

    features = {k: PolicyFeature(type=FeatureType.VISUAL, shape=(3, 48, 64)) for k in CAMERAS}
    features["observation.state"] = PolicyFeature(type=FeatureType.STATE, shape=(3,))
    return SAM2DiffusionConfig(
        sam2_model="sam2_tiny",
        image_size=64,
        crop_shape=(40, 56),
        down_dims=(32, 64),
        horizon=8,
        n_action_steps=4,
        num_inference_steps=3,
        device="cpu",
        push_to_hub=False,
        input_features=features,
        output_features={"action": PolicyFeature(type=FeatureType.ACTION, shape=(2,))},
        **fields,
    )


def fill_by_name(module) -> None:
    """Every floating state-dict entry from a generator seeded by its name, in state-dict order."""
    with torch.no_grad():
        for name, value in module.state_dict(keep_vars=True).items():
            if value.is_floating_point():
                gen = torch.Generator().manual_seed(zlib.crc32(name.encode()))
                value.copy_(torch.randn(value.shape, generator=gen) * 0.05)


def fingerprint(rgb_encoder) -> dict:
    """The camera encoder's eval output on seeded ImageNet-normalised images ``(N, cameras, 3, 48, 64)``."""
    fill_by_name(rgb_encoder)
    rgb_encoder.eval()
    torch.manual_seed(0)
    with torch.no_grad():
        y = rgb_encoder(torch.randn(2, len(CAMERAS), 3, 48, 64))
    return {
        "forward_shape": list(y.shape),
        "forward_first": [round(v, 6) for v in y.flatten()[:16].tolist()],
        "forward_abs_mean": round(y.abs().mean().item(), 6),
    }


def main(out: Path) -> None:
    from safetensors import safe_open

    from lerobot_policy_sam2 import SAM2DiffusionPolicy

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from fixtures import write_random_sam2

    recorded = {}
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["DP_SAM2_CHECKPOINT_DIR"] = str(Path(tmp) / "sam2")
        for case, (fields, from_file) in CASES.items():
            if from_file:
                write_random_sam2(Path(tmp) / "sam2", "sam2_tiny")
                os.environ.pop("DP_SAM2_ALLOW_MISSING_CHECKPOINT", None)
            else:
                for f in (Path(tmp) / "sam2").glob("*.pt"):
                    f.unlink()
                os.environ["DP_SAM2_ALLOW_MISSING_CHECKPOINT"] = "1"
            torch.manual_seed(0)
            policy = SAM2DiffusionPolicy(make_config(**fields))
            folder = Path(tmp) / case
            policy.save_pretrained(folder)
            with safe_open(str(folder / "model.safetensors"), framework="pt") as f:
                saved = {k: list(f.get_slice(k).get_shape()) for k in f.keys()}
            config_name = f"lerobot_{case}_0.2.2_config.json"
            (out / config_name).write_text((folder / "config.json").read_text())
            recorded[case] = {
                "config": config_name,
                "trunk_from_file": from_file,
                "safetensors": saved,
                "omitted": policy.omitted_keys(),
                "state_dict": {k: list(v.shape) for k, v in policy.state_dict().items()},
                **fingerprint(policy.diffusion.rgb_encoder),
            }
    (out / "lerobot_0.2.2_state_dicts.json").write_text(json.dumps(recorded, separators=(",", ":")))


if __name__ == "__main__":
    main(Path(sys.argv[1]))

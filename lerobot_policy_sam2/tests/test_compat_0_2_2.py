"""sam2_diffusion policies saved with dp_sam2 0.2.2 load with today's code: their ``config.json`` parses, the
policy it builds has the state dict their ``model.safetensors`` holds (keys, shapes, the keys left out and read
again from the SAM 2 file), and its camera encoder computes what 0.2.2's computed from the same weights.

Fixtures: tests/fixtures/compat/lerobot_*_0.2.2_* (made by make_0_2_2_fixtures.py in this folder)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("lerobot", reason="LeRobot is not installed (these tests run in the LeRobot venv of .ci/run)")

import torch  # noqa: E402
from make_0_2_2_fixtures import fingerprint  # noqa: E402

COMPAT = Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "compat"
RECORDED = json.loads((COMPAT / "lerobot_0.2.2_state_dicts.json").read_text())


@pytest.mark.parametrize("case", sorted(RECORDED))
def test_policy_saved_with_0_2_2_loads(case, sam2_dir, tmp_path, monkeypatch):
    from lerobot.configs.policies import PreTrainedConfig

    import lerobot_policy_sam2  # noqa: F401  (registers the config class)
    from lerobot_policy_sam2 import SAM2DiffusionPolicy

    want = RECORDED[case]
    folder = tmp_path / case
    folder.mkdir()
    (folder / "config.json").write_text((COMPAT / want["config"]).read_text())
    config = PreTrainedConfig.from_pretrained(str(folder))
    assert type(config).__name__ == "SAM2DiffusionConfig" and config.image_size == 64
    if not want["trunk_from_file"]:  # saved whole: built without the SAM 2 file (random weights, as it was made)
        monkeypatch.setenv("DP_SAM2_ALLOW_MISSING_CHECKPOINT", "1")
        monkeypatch.setenv("DP_SAM2_CHECKPOINT_DIR", str(tmp_path / "no_sam2_here"))
    torch.manual_seed(0)
    policy = SAM2DiffusionPolicy(config)
    state = {k: list(v.shape) for k, v in policy.state_dict().items()}
    assert list(state) == list(want["state_dict"]) and state == want["state_dict"]
    assert policy.omitted_keys() == want["omitted"]
    assert {k: v for k, v in state.items() if k not in set(want["omitted"])} == want["safetensors"]
    encoder = policy.diffusion.rgb_encoder
    assert encoder.trunk_from_file == want["trunk_from_file"]
    got = fingerprint(encoder)
    assert got["forward_shape"] == want["forward_shape"]
    ref = torch.tensor(want["forward_first"])
    err = (torch.tensor(got["forward_first"]) - ref).abs().max() / max(1.0, ref.abs().max().item())
    assert err <= 1e-4, (got["forward_first"][:4], want["forward_first"][:4])
    assert got["forward_abs_mean"] == pytest.approx(want["forward_abs_mean"], rel=1e-4, abs=1e-6)

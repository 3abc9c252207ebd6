"""Nothing breaks for users of 0.1.x (DESIGN ruling 17): every dotted path a shipped yaml or the
README put into a DP config still imports, a DP-style config saved with the old paths
instantiates, and the obs encoder's state dict has the 0.1.0 keys and shapes (recorded from the
0.1.0 release in tests/fixtures/compat), so DP checkpoints made with it still load."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from dp_sam2 import SAM2ObsEncoder

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "compat"

# old dotted path -> the object it must still name
OLD_PATHS = {
    "dp_sam2.encoders.obs_encoder.SAM2ObsEncoder": "dp_sam2.encoders.obs.encoder.SAM2ObsEncoder",
    "dp_sam2.encoders.finetune.adamw_param_groups": "dp_sam2.encoders.obs.finetune.adamw_param_groups",
    "dp_sam2.encoders.heads.build_head": "dp_sam2.encoders.obs.heads.build_head",
    "dp_sam2.cache.CachedFeatureDataset": "dp_sam2.cache.dataset.CachedFeatureDataset",
    "dp_sam2.cli.main": "dp_sam2.tools.cli.main",
    "dp_sam2.encoders.sam2.neck.ImageEncoder": "dp_sam2.encoders.sam2.image_encoder.ImageEncoder",
    "dp_sam2.SAM2ObsEncoder": "dp_sam2.encoders.obs.encoder.SAM2ObsEncoder",
}


def _resolve(dotted: str):
    module, _, name = dotted.rpartition(".")
    return getattr(importlib.import_module(module), name)


@pytest.mark.parametrize("old", sorted(OLD_PATHS))
def test_old_dotted_path_names_the_same_object(old):
    assert _resolve(old) is _resolve(OLD_PATHS[old])


def test_shipped_yaml_targets_import():
    """Every ``_target_`` in the shipped obs_encoder group and workspace yamls resolves."""
    configs = Path(importlib.import_module("dp_sam2.configs").__file__).parent
    targets = set()
    for path in configs.rglob("*.yaml"):
        if path.parent.name in ("sam2", "sam2.1"):
            continue  # model yamls are internal
        text = path.read_text()
        targets |= {
            line.split(":", 1)[1].strip()
            for line in text.splitlines()
            if line.strip().startswith("_target_:") and "dp_sam2." in line
        }
    assert "dp_sam2.SAM2ObsEncoder" in targets
    for target in sorted(targets):
        module, _, name = target.rpartition(".")
        if module == "dp_sam2.workspaces.data_parallel":  # subclasses DP's BaseWorkspace: built on lookup
            assert name == importlib.import_module(module).CLASS_NAME, target
            continue
        assert callable(_resolve(target)), target


@pytest.fixture
def tiny_checkpoint_dir(tmp_path, monkeypatch):
    from test_obs_encoder import make_checkpoint

    make_checkpoint(tmp_path / "sam2_hiera_tiny.pt")
    monkeypatch.setenv("DP_SAM2_CHECKPOINT_DIR", str(tmp_path))
    return tmp_path


def test_config_saved_with_0_1_paths_instantiates(tiny_checkpoint_dir):
    from hydra.utils import get_method, instantiate

    cfg = OmegaConf.load(FIXTURES / "dp_config_0.1.0.yaml")
    encoder = instantiate(cfg.policy.obs_encoder)
    assert isinstance(encoder, SAM2ObsEncoder) and encoder.image_size == 64
    assert encoder.output_shape() == (256 + 2,)
    obs = {"image": torch.rand(2, 3, 96, 96) * 2 - 1, "agent_pos": torch.zeros(2, 2)}
    assert encoder(obs).shape == (2, 258)
    optimizer = instantiate(cfg.optimizer, params=encoder.parameters())
    lrs = sorted(group["lr"] for group in optimizer.param_groups)
    assert lrs == pytest.approx([1e-5, 1e-4])  # LoRA weights at backbone_lr_scale, the head at lr
    assert get_method(cfg.task.dataset._target_) is _resolve("dp_sam2.cache.dataset.CachedFeatureDataset")


RECORDED = json.loads((FIXTURES / "obs_encoder_0.1.0_state_dicts.json").read_text())


@pytest.mark.parametrize("case", sorted(RECORDED))
def test_state_dict_keys_and_shapes_equal_0_1_0(case, monkeypatch):
    """A DP checkpoint of 0.1.0 holds these keys under ``obs_encoder.``: 0.2 must load them."""
    monkeypatch.setenv("DP_SAM2_ALLOW_MISSING_CHECKPOINT", "1")
    meta = {
        "obs": {
            "cam_a": {"shape": [3, 96, 96], "type": "rgb"},
            "wrist.cam": {"shape": [3, 64, 80], "type": "rgb"},
            "agent_pos": {"shape": [2], "type": "low_dim"},
        },
        "action": {"shape": [2]},
    }
    with pytest.warns(UserWarning):
        encoder = SAM2ObsEncoder(meta, **RECORDED[case]["kwargs"])
    got = {k: list(v.shape) for k, v in encoder.state_dict().items()}
    assert got == RECORDED[case]["state_dict"]
    assert list(encoder.output_shape()) == RECORDED[case]["output_shape"]

"""Nothing breaks for users of 0.1.x (docs/design.md, ruling 17): every dotted path a shipped yaml or the
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
        try:
            obj = _resolve(target)
        except ImportError as err:  # a subclass of a DP base class, made on lookup: DP is not importable here
            if "Diffusion Policy" not in str(err):
                raise
            mod = importlib.import_module(module)
            assert name in getattr(mod, "__all__", ()) or name == getattr(mod, "CLASS_NAME", None), target
            continue
        assert callable(obj), target


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


# ----------------------------------------------------------------------------- 0.2.2 configs and checkpoints
def _fixture_script():
    """tests/fixtures/compat/make_0_2_2_fixtures.py: the code that recorded the 0.2.2 fixtures (fill, obs, record)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_0_2_2_fixtures", FIXTURES / "make_0_2_2_fixtures.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


RECORDED_0_2_2 = json.loads((FIXTURES / "obs_encoder_0.2.2_state_dicts.json").read_text())


def _check_like_0_2_2(encoder, shape_meta: dict, case: str) -> None:
    """Same state-dict keys (in order) and shapes, output shapes, and forward output given the same weights."""
    want = RECORDED_0_2_2[case]
    got = _fixture_script().record(encoder, shape_meta, encoder.input_layout)
    assert list(got["state_dict"]) == list(want["state_dict"])
    assert got["state_dict"] == want["state_dict"]
    assert (got["output_shape"], got["forward_shape"]) == (want["output_shape"], want["forward_shape"])
    ref = torch.tensor(want["forward_first"])
    err = (torch.tensor(got["forward_first"]) - ref).abs().max() / max(1.0, ref.abs().max().item())
    assert err <= 1e-4, (case, got["forward_first"][:4], want["forward_first"][:4])
    assert got["forward_abs_mean"] == pytest.approx(want["forward_abs_mean"], rel=1e-4, abs=1e-6)


CONFIGS_0_2_2 = sorted(k for k, v in RECORDED_0_2_2.items() if "config" in v)


@pytest.mark.parametrize("case", CONFIGS_0_2_2)
def test_config_saved_with_0_2_2_builds_the_same_encoder(case, monkeypatch):
    """A DP / UMI config frozen into a 0.2.2 checkpoint (``_target_: dp_sam2.SAM2ObsEncoder`` with the keys of
    0.2.2's group files, UMI's included) builds an encoder whose state dict the checkpoint fits and that
    computes what 0.2.2 computed from the same weights."""
    from hydra.utils import instantiate

    from dp_sam2.encoders.obs.umi import UMIObsEncoder

    monkeypatch.setenv("DP_SAM2_ALLOW_MISSING_CHECKPOINT", "1")
    cfg = OmegaConf.load(FIXTURES / RECORDED_0_2_2[case]["config"])
    assert cfg.policy.obs_encoder._target_ == "dp_sam2.SAM2ObsEncoder"
    with pytest.warns(UserWarning):  # no SAM 2 file here: random weights, with a warning
        encoder = instantiate(cfg.policy.obs_encoder)
    assert isinstance(encoder, SAM2ObsEncoder)
    assert isinstance(encoder, UMIObsEncoder) == case.startswith("umi")
    _check_like_0_2_2(encoder, OmegaConf.to_container(cfg.shape_meta), case)


@pytest.mark.parametrize("case", sorted(k for k, v in RECORDED_0_2_2.items() if "kwargs" in v))
def test_direct_0_2_2_calls_build_the_same_encoder(case, monkeypatch):
    monkeypatch.setenv("DP_SAM2_ALLOW_MISSING_CHECKPOINT", "1")
    script = _fixture_script()
    with pytest.warns(UserWarning):
        encoder = SAM2ObsEncoder(script.DP_META, **RECORDED_0_2_2[case]["kwargs"])
    _check_like_0_2_2(encoder, script.DP_META, case)


@pytest.mark.parametrize("case", [c for c in CONFIGS_0_2_2 if c.startswith("umi")])
def test_todays_umi_group_builds_what_0_2_2_built(case, monkeypatch):
    """The same composition with today's umi_obs_encoder group (``_target_`` UMIObsEncoder) gives the
    0.2.2 encoder: a checkpoint trained with either loads into the other."""
    from hydra.utils import instantiate

    script = _fixture_script()
    config_dir, workspace, overrides = script.CONFIGS[case]
    from hydra import compose, initialize_config_dir

    monkeypatch.setenv("DP_SAM2_ALLOW_MISSING_CHECKPOINT", "1")
    OmegaConf.register_new_resolver("eval", eval, replace=True)
    try:
        with initialize_config_dir(config_dir=str(config_dir), version_base=None):
            cfg = compose(config_name=workspace, overrides=overrides)
        assert cfg.policy.obs_encoder._target_ == "dp_sam2.encoders.obs.umi.UMIObsEncoder"
        with pytest.warns(UserWarning):
            encoder = instantiate(cfg.policy.obs_encoder)
        shape_meta = OmegaConf.to_container(cfg.shape_meta, resolve=True)
    finally:
        OmegaConf.clear_resolver("eval")
    _check_like_0_2_2(encoder, shape_meta, case)


# ----------------------------------------------------------------------------- one vocabulary, one table of old keys
def test_obs_encoder_takes_at_most_22_named_parameters():
    import inspect

    params = inspect.signature(SAM2ObsEncoder.__init__).parameters
    named = [n for n, p in params.items() if n != "self" and p.kind is not inspect.Parameter.VAR_KEYWORD]
    assert len(named) <= 22, named
    from dp_sam2.encoders.obs.old_keys import OLD_KEYS

    assert not set(named) & set(OLD_KEYS)  # an old key is never also a parameter


@pytest.mark.parametrize(
    "old, new",
    [
        ({"model_name": "sam2_tiny"}, {"model_cfg": "sam2_tiny"}),
        ({"frozen": False}, {"freeze": False}),
        ({"pretrained": False, "frozen": False}, {"random_weights": True, "checkpoint": None}),
        ({"feature_aggregation": "avg"}, {"pooling": "mean"}),
        ({"feature_aggregation": None}, {"pooling": "attention"}),
        ({"transforms": [{"type": "RandomCrop", "ratio": 0.5}]}, {"augment": [{"type": "RandomCrop", "ratio": 0.5}]}),
        ({"rgb_model": None, "use_group_norm": True, "imagenet_norm": False, "input_layout": "dp"}, {}),
        ({"global_pool": "", "downsample_ratio": 16, "position_encording": "sinusoidal", "n_emb": None}, {}),
    ],
)
def test_old_keys_translate(old, new):
    import inspect

    from dp_sam2.encoders.obs.encoder import _DEFAULTS
    from dp_sam2.encoders.obs.old_keys import translate_old_keys

    given = {k: v for k, v in _DEFAULTS.items() if v is not inspect.Parameter.empty}
    given.update(shape_meta={}, checkpoint="checkpoints/x.pt", model_cfg=old.get("model_name", "sam2_large"))
    out = translate_old_keys(given, old, _DEFAULTS)
    assert {k: out[k] for k in new} == new
    changed = {k for k in out if out[k] != given[k]}
    assert changed <= set(new) | {"freeze"}


@pytest.mark.parametrize(
    "old, message",
    [
        ({"frozen": True, "pretrained": False}, "pretrained=false"),
        ({"global_pool": "avg"}, "global_pool must be ''"),
        ({"downsample_ratio": 32}, "downsample_ratio must be 16"),
        ({"n_emb": 64}, "needs input_layout: umi"),
        ({"model_name": "vit_base_patch16_clip_224.openai"}, "model_name must be a SAM 2 model"),
        ({"model_name": "sam2_small"}, "disagree"),
    ],
)
def test_old_keys_refuse_what_0_2_refused(old, message):
    from dp_sam2.encoders.obs.encoder import _DEFAULTS
    from dp_sam2.encoders.obs.old_keys import translate_old_keys

    given = dict(_DEFAULTS, shape_meta={}, model_cfg="sam2_tiny")
    with pytest.raises(ValueError, match=message):
        translate_old_keys(given, old, _DEFAULTS)


def test_rgb_model_must_be_null():
    meta = {"obs": {"image": {"shape": [3, 64, 64], "type": "rgb"}}}
    with pytest.raises(TypeError, match="rgb_model must be null"):
        SAM2ObsEncoder(meta, model_cfg="sam2_tiny", random_weights=True, rgb_model=torch.nn.Identity())


def test_unknown_keyword_is_a_type_error_naming_it():
    meta = {"obs": {"image": {"shape": [3, 64, 64], "type": "rgb"}}}
    with pytest.raises(TypeError, match="unexpected keyword argument 'crop_size'") as err:
        SAM2ObsEncoder(meta, model_cfg="sam2_tiny", random_weights=True, crop_size=[48, 48])
    assert "crop_shape" in str(err.value) and "model_name" in str(err.value)  # lists what it accepts


def test_old_keys_doc_equals_the_table():
    from dp_sam2.encoders.obs.old_keys import table_markdown

    doc = (Path(__file__).resolve().parents[1] / "docs" / "obs_encoder_keys.md").read_text()
    assert table_markdown() in doc

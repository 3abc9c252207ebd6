"""SAM 2 in Diffusion Policy's hybrid workspaces: the `sam2_policy` group and dp_sam2.policies.

CI has no Diffusion Policy: the configs are DP-shaped fixture yamls (tests/fixtures/dp: the
flattened paper-style root yaml, the UNet and transformer hybrid workspaces; the image workspace
of test_hydra_registration), and DP's classes are small stand-ins (tests/fixtures/fake_dp: DP's
names and signatures, toy networks). The real classes ran by hand: benchmarks/dp_run/hybrid.md.
"""

from __future__ import annotations

import copy
import pickle
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
import yaml

from dp_sam2 import SAM2ObsEncoder
from dp_sam2.checkpoints.registry import MODELS

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures" / "dp"
FAKE_DP = ROOT / "tests" / "fixtures" / "fake_dp"
GROUP_DIR = ROOT / "dp_sam2" / "configs" / "sam2_policy"
FACTORY = "dp_sam2.policies.sam2_diffusion_policy"
SELECT = "+sam2_policy@policy=sam2_tiny"
TINY = ["policy.obs_encoder.image_size=64", "policy.num_inference_steps=3"]
# (config dir, config name, the issue's overrides for that shape) for every workspace shape
SHAPES = {
    "paper_flattened": (FIXTURES, "image_pusht_diffusion_policy_cnn.yaml", ["policy.down_dims=[32,64,128]"]),
    "unet_hybrid": (FIXTURES / "config", "train_diffusion_unet_hybrid_workspace", ["policy.down_dims=[32,64,128]"]),
    "unet_ddim_hybrid": (FIXTURES / "config", "train_diffusion_unet_hybrid_workspace", ["policy.crop_shape=null"]),
    "transformer_hybrid": (
        FIXTURES / "config",
        "train_diffusion_transformer_hybrid_workspace",
        ["task=pusht_image", "policy.n_layer=2", "policy.n_emb=64"],
    ),
    "unet_image": (FIXTURES / "config", "train_diffusion_unet_image_workspace", ["policy.down_dims=[32,64,128]"]),
}
ISSUE_OVERRIDES = [
    "task.dataset.zarr_path=data/x.zarr",
    "task.env_runner._target_=null_runner.NullImageRunner",
    "training.device=cpu",
    "training.debug=True",
    "logging.mode=disabled",
    "dataloader.batch_size=4",
    "dataloader.num_workers=0",
    "val_dataloader.batch_size=4",
    "val_dataloader.num_workers=0",
    "policy.num_inference_steps=4",
    "policy.obs_encoder.image_size=224",
    "hydra.run.dir=out",
]


# ----------------------------------------------------------------------------- set-up
@pytest.fixture(scope="module", autouse=True)
def fake_dp():
    """DP's stand-in on sys.path for this module only (other tests must not see it)."""
    from omegaconf import OmegaConf

    OmegaConf.register_new_resolver("eval", eval, replace=True)  # DP's train.py registers it
    sys.path.insert(0, str(FAKE_DP))
    yield
    sys.path.remove(str(FAKE_DP))
    for name in [m for m in sys.modules if m == "diffusion_policy" or m.startswith("diffusion_policy.")]:
        del sys.modules[name]


@pytest.fixture(scope="module")
def ckpt_dir(tiny_checkpoint_dir):
    return tiny_checkpoint_dir


@pytest.fixture(scope="module", autouse=True)
def _checkpoints(ckpt_dir):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DP_SAM2_CHECKPOINT_DIR", str(ckpt_dir))
        yield


def compose(shape_or_dir, name=None, overrides=()):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    config_dir, name = SHAPES[shape_or_dir][:2] if name is None else (shape_or_dir, name)
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(config_dir), version_base=None):
        return hydra_compose(config_name=name, overrides=list(overrides), return_hydra_config=False)


def _present(shape, overrides):
    """The overrides whose key the fixture has (the small fixtures lack some of DP's blocks; the
    task's keys are checked after ``task=pusht_image``, which the transformer shape switches to)."""
    from omegaconf import OmegaConf

    base = compose(shape, overrides=[SELECT, *[o for o in SHAPES[shape][2] if o.startswith("task=")]])
    return [o for o in overrides if o.startswith("hydra.") or OmegaConf.select(base, o.split("=")[0]) is not None]


def build(shape, *extra):
    from hydra.utils import instantiate

    cfg = compose(shape, overrides=[SELECT, *SHAPES[shape][2], *_present(shape, TINY), *extra])
    return cfg, instantiate(cfg.policy)


def rebuild(shape, encoder, *extra):
    """The policy of ``shape`` around a copy of an already built encoder (building SAM 2 is the slow part)."""
    from hydra.utils import instantiate

    cfg = compose(shape, overrides=[SELECT, *SHAPES[shape][2], *_present(shape, TINY), *extra])
    return instantiate(cfg.policy, obs_encoder=copy.deepcopy(encoder))


@pytest.fixture(scope="module")
def paper_policy():
    return build("paper_flattened")[1]


@pytest.fixture()
def encoder(paper_policy):
    """A fresh copy of the paper config's encoder with its crop reset (as the group file leaves it)."""
    enc = copy.deepcopy(paper_policy.obs_encoder)
    enc.crop_shape = {"image": None}
    return enc


def batch(policy, n=2, horizon=None):
    gen = torch.Generator().manual_seed(0)
    to = policy.n_obs_steps
    obs = {
        "image": torch.rand(n, to, 3, 96, 96, generator=gen) * 2 - 1,
        "agent_pos": torch.rand(n, to, 2, generator=gen),
    }
    return {"obs": obs, "action": torch.randn(n, horizon or policy.horizon, 2, generator=gen)}


# ----------------------------------------------------------------------------- the group files
def test_one_policy_group_file_per_model_each_selecting_the_encoder_group():
    assert sorted(p.stem for p in GROUP_DIR.glob("*.yaml")) == sorted(MODELS)
    for name in MODELS:
        text = (GROUP_DIR / f"{name}.yaml").read_text()
        assert text.splitlines()[0] == "# @package policy"
        cfg = yaml.safe_load(text)
        assert cfg == {"defaults": [{"/obs_encoder@obs_encoder": name}, "_self_"], "_target_": FACTORY}


@pytest.mark.parametrize(
    "shape, model",
    [(s, "sam2_large") for s in sorted(SHAPES)]
    + [("paper_flattened", "sam2.1_tiny"), ("transformer_hybrid", "sam2.1_tiny")],
)
def test_selection_composes_in_every_workspace_shape_with_the_issue_overrides(shape, model):
    config_dir, name, extra = SHAPES[shape]
    cfg = compose(config_dir, name, [f"+sam2_policy@policy={model}", *_present(shape, ISSUE_OVERRIDES), *extra])
    enc = cfg.policy.obs_encoder
    assert cfg.policy._target_ == FACTORY
    assert (enc._target_, enc.model_cfg, enc.image_size, enc.freeze) == ("dp_sam2.SAM2ObsEncoder", model, 224, True)
    assert enc.checkpoint == f"checkpoints/{MODELS[model].filename}" and enc.rgb_model is None
    assert cfg.policy.get("num_inference_steps", 4) == 4
    if shape == "transformer_hybrid":
        assert (cfg.policy.n_layer, cfg.policy.n_emb, cfg.task.name) == (2, 64, "pusht_image")
    if shape in ("paper_flattened", "unet_hybrid"):
        assert list(cfg.policy.down_dims) == [32, 64, 128]
        assert list(cfg.policy.crop_shape) == ([84, 84] if shape == "paper_flattened" else [76, 76])


def test_one_defaults_list_line_after_self_selects_it():
    cfg = compose(FIXTURES / "config", "train_user_hybrid_sam2")
    assert cfg.policy._target_ == FACTORY and cfg.policy.obs_encoder.model_cfg == "sam2_tiny"


def test_encoder_selection_alone_in_a_hybrid_workspace_names_the_one_that_works():
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    cfg = compose(
        FIXTURES / "config",
        "train_hybrid_shaped_workspace",
        ["+obs_encoder@policy.obs_encoder=sam2_tiny", "policy.obs_encoder.image_size=64"],
    )
    with pytest.raises(InstantiationException, match=r"takes no obs_encoder.*\+sam2_policy@policy=<model>"):
        instantiate(cfg.policy)


# ----------------------------------------------------------------------------- building the policies
def test_unet_hybrid_maps_the_kwargs_and_trains(paper_policy):
    from diffusion_policy.policy.diffusion_unet_image_policy import DiffusionUnetImagePolicy

    from dp_sam2.policies import SAM2DiffusionUnetHybridImagePolicy

    policy = copy.deepcopy(paper_policy)
    assert type(policy) is SAM2DiffusionUnetHybridImagePolicy and isinstance(policy, DiffusionUnetImagePolicy)
    enc = policy.obs_encoder
    assert isinstance(enc, SAM2ObsEncoder) and enc.image_size == 64 and enc.crop_shape == {"image": (84, 84)}
    assert enc.random_crop and enc.finetune.freeze
    assert policy.unet_kwargs == {
        "diffusion_step_embed_dim": 128,
        "down_dims": [32, 64, 128],
        "kernel_size": 5,
        "n_groups": 8,
        "cond_predict_scale": True,
    }
    assert policy.kwargs == {}  # nothing stray reaches noise_scheduler.step
    assert (policy.horizon, policy.n_action_steps, policy.n_obs_steps, policy.num_inference_steps) == (16, 8, 2, 3)
    assert policy.obs_feature_dim == 256 + 2
    assert "random crop in training, centre crop in eval" in policy.image_args
    # a training step: heads get gradients, the frozen SAM 2 backbone none
    policy.train()
    loss = policy.compute_loss(batch(policy))
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is not None for p in enc.heads.parameters())
    assert all(p.grad is None and not p.requires_grad for p in enc.backbone.parameters())
    policy.eval()
    with torch.no_grad():
        out = policy.predict_action(batch(policy)["obs"])
    assert out["action"].shape == (2, 8, 2) and torch.isfinite(out["action"]).all()
    state = policy.state_dict()
    assert any(k.startswith("obs_encoder.backbone.image_encoder.trunk.") for k in state)
    assert {v.dtype for k, v in state.items() if k.startswith("obs_encoder.")} == {torch.float32}


def test_the_crop_is_centre_in_eval_and_random_in_training(paper_policy):
    enc = paper_policy.obs_encoder
    images = torch.rand(4, 3, 96, 96) * 2 - 1
    torch.manual_seed(0)
    a, b = enc.preprocess(images, "image", train=False), enc.preprocess(images, "image", train=False)
    assert torch.equal(a, b)
    train = [enc.preprocess(images, "image", train=True) for _ in range(3)]
    assert not all(torch.equal(train[0], t) for t in train[1:])


def test_transformer_hybrid_builds_no_robomimic_and_trains():
    from dp_sam2.policies import SAM2DiffusionTransformerHybridImagePolicy

    cfg, policy = build("transformer_hybrid")
    assert type(policy) is SAM2DiffusionTransformerHybridImagePolicy  # the stand-in's own __init__ would raise
    assert policy.model.init_kwargs == {
        "input_dim": 2,
        "output_dim": 2,
        "horizon": 10,
        "n_obs_steps": 2,
        "cond_dim": 258,
        "n_layer": 2,
        "n_head": 4,
        "n_emb": 64,
        "p_drop_emb": 0.0,
        "p_drop_attn": 0.3,
        "causal_attn": True,
        "time_as_cond": True,
        "obs_as_cond": True,
        "n_cond_layers": 0,
    }
    assert policy.mask_generator.init_kwargs == {
        "action_dim": 2,
        "obs_dim": 0,
        "max_n_obs_steps": 2,
        "fix_obs_steps": True,
        "action_visible": False,
    }
    assert (
        policy.action_dim,
        policy.obs_feature_dim,
        policy.obs_as_cond,
        policy.pred_action_steps_only,
        policy.kwargs,
        policy.num_inference_steps,
    ) == (2, 258, True, False, {}, 3)
    assert policy.obs_encoder.crop_shape == {"image": (76, 76)}
    loss = policy.compute_loss(batch(policy))
    loss.backward()
    assert torch.isfinite(loss)
    with torch.no_grad():
        assert policy.predict_action(batch(policy)["obs"])["action"].shape == (2, 8, 2)
    # DP's workspace: policy.get_optimizer(**cfg.optimizer)
    opt = policy.get_optimizer(**cfg.optimizer)
    enc_group = opt.param_groups[-1]
    trainable = [p for p in policy.obs_encoder.parameters() if p.requires_grad]
    assert {id(p) for p in enc_group["params"]} == {id(p) for p in trainable}
    assert set(map(id, trainable)) == set(map(id, policy.obs_encoder.heads.parameters()))
    assert enc_group["weight_decay"] == 1e-6 and opt.defaults["lr"] == 1e-4 and opt.defaults["betas"] == (0.9, 0.95)
    assert [g["weight_decay"] for g in opt.param_groups[:-1]] == [1e-3, 0.0]
    in_groups = {id(p) for g in opt.param_groups for p in g["params"]}
    assert not any(id(p) in in_groups for p in policy.obs_encoder.backbone.parameters())


@pytest.mark.slow
def test_transformer_optimizer_holds_lora_adapters_and_not_the_frozen_weights():
    cfg, policy = build(
        "transformer_hybrid",
        "policy.obs_encoder.freeze=false",
        "policy.obs_encoder.lora_rank=2",
        "policy.obs_encoder.activation_checkpointing=true",
    )
    enc = policy.obs_encoder
    assert (enc.finetune.lora_rank, enc.finetune.activation_checkpointing) == (2, True)
    opt = policy.get_optimizer(**cfg.optimizer)
    names = {id(p): n for n, p in enc.named_parameters()}
    held = [names[id(p)] for p in opt.param_groups[-1]["params"]]
    assert held and all(n.startswith("heads.") or "lora" in n for n in held)
    assert any("lora" in n for n in held)
    assert sorted(held) == sorted(n for n, p in enc.named_parameters() if p.requires_grad)


def test_image_workspace_gets_dps_own_policy():
    from diffusion_policy.policy.diffusion_unet_image_policy import DiffusionUnetImagePolicy

    _, policy = build("unet_image", "policy.obs_encoder.crop_shape=[76,76]")
    assert type(policy) is DiffusionUnetImagePolicy and policy.kwargs == {}
    assert policy.obs_encoder.crop_shape == {"image": (76, 76)}
    assert policy.unet_kwargs["down_dims"] == [32, 64, 128] and policy.num_inference_steps == 3


@pytest.mark.slow
def test_cached_features_pass_through_the_hybrid_policy(encoder):
    policy = rebuild("unet_hybrid", encoder, "policy.crop_shape=null")
    enc = policy.obs_encoder
    data = batch(policy)
    feats = enc.encode_images(data["obs"]["image"].flatten(0, 1), "image")
    data["obs"]["image"] = enc.features_to_input(feats).unflatten(0, (2, policy.n_obs_steps))
    policy.train()
    loss = policy.compute_loss(data)
    loss.backward()
    assert torch.isfinite(loss) and all(p.grad is not None for p in enc.heads.parameters())


# ----------------------------------------------------------------------------- nothing silent
@pytest.mark.slow
def test_a_crop_set_twice_differently_fails_naming_both(paper_policy):
    from hydra.errors import InstantiationException

    with pytest.raises(
        InstantiationException,
        match=r"policy.crop_shape is \[84, 84\] but "
        r"policy.obs_encoder.crop_shape is \[80, 80\]",
    ):
        build("paper_flattened", "policy.obs_encoder.crop_shape=[80,80]")
    encoder = copy.deepcopy(paper_policy.obs_encoder)  # crop [84, 84]: the same crop twice is fine
    assert rebuild("paper_flattened", encoder).obs_encoder.crop_shape == {"image": (84, 84)}


@pytest.mark.parametrize(
    "shape, dp_name",
    [
        ("unet_hybrid", "DiffusionUnetHybridImagePolicy"),
        pytest.param("transformer_hybrid", "DiffusionTransformerHybridImagePolicy", marks=pytest.mark.slow),
        pytest.param("unet_image", "DiffusionUnetImagePolicy", marks=pytest.mark.slow),
    ],
)
def test_stray_policy_kwargs_fail_at_startup_not_at_sampling(encoder, shape, dp_name):
    from hydra.errors import InstantiationException

    with pytest.raises(
        InstantiationException,
        match=rf"\['not_a_kwarg'\] are not arguments of {dp_name} and not of "
        r"DDPMScheduler.step",
    ):
        rebuild(shape, encoder, "+policy.not_a_kwarg=1")
    rebuild(shape, encoder, "+policy.generator=null")  # a real scheduler.step argument passes


def test_a_policy_without_a_noise_scheduler_is_refused():
    from dp_sam2.policies import sam2_diffusion_policy

    with pytest.raises(TypeError, match=r"missing \['noise_scheduler'\].*DP's diffusion image policies only"):
        sam2_diffusion_policy(
            shape_meta={}, horizon=16, n_action_steps=8, n_obs_steps=2, crop_shape=[84, 84], obs_encoder=object()
        )


def test_eval_fixed_crop_false_says_what_it_does(encoder):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        policy = rebuild("unet_hybrid", encoder, "policy.eval_fixed_crop=false")
    assert any("crops at the centre in eval" in str(w.message) for w in caught)
    assert "eval_fixed_crop false: still centre in eval" in policy.image_args


def test_the_policy_survives_deepcopy_and_pickle(paper_policy):
    from dp_sam2.policies import SAM2DiffusionUnetHybridImagePolicy

    policy = paper_policy
    twin = copy.deepcopy(policy)  # DP's EMA copies the policy
    assert type(twin) is SAM2DiffusionUnetHybridImagePolicy
    again = pickle.loads(pickle.dumps(policy))
    assert type(again) is SAM2DiffusionUnetHybridImagePolicy
    ours, theirs = policy.state_dict(), again.state_dict()
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)


@pytest.mark.slow
def test_importing_the_policies_imports_no_diffusion_policy():
    code = (
        "import sys, dp_sam2.policies, dp_sam2.policies.unet, dp_sam2.policies.transformer; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('diffusion_policy', 'robomimic')))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"

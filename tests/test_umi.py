"""SAM2ObsEncoder in UMI's timm workspaces (universal_manipulation_interface), no UMI checkout needed.

tests/fixtures/umi/config holds our own stand-ins for UMI's workspace and task yamls (same keys:
the inline TimmObsEncoder / TransformerObsEncoder dict, shape_meta with horizon, latency_steps
through UMI's ``${eval:...}`` resolver, ignore_by_policy). They are composed with Hydra exactly as
the README's command composes UMI's own yaml: ``+umi_obs_encoder@policy.obs_encoder=sam2_tiny``
plus ``policy.obs_encoder.checkpoint=... policy.obs_encoder.image_size=64``.
"""

from __future__ import annotations

import inspect
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from torch import nn

from conftest import rel_err
from dp_sam2 import SAM2ObsEncoder
from dp_sam2.checkpoints.registry import MODELS
from dp_sam2.encoders.obs.umi import UMIObsEncoder
from test_obs_encoder import file_state, make_checkpoint

ROOT = Path(__file__).resolve().parents[1]
UMI_CONFIG = ROOT / "tests" / "fixtures" / "umi" / "config"
GROUP_DIR = ROOT / "dp_sam2" / "configs" / "umi_obs_encoder"
UNET = "train_diffusion_unet_timm_umi_workspace"
TRANSFORMER = "train_diffusion_transformer_umi_workspace"
# every argument of UMI's TimmObsEncoder (diffusion_policy/model/vision/timm_obs_encoder.py)
TIMM_KEYS = (
    "shape_meta",
    "model_name",
    "pretrained",
    "frozen",
    "global_pool",
    "transforms",
    "use_group_norm",
    "share_rgb_model",
    "imagenet_norm",
    "feature_aggregation",
    "downsample_ratio",
    "position_encording",
)
SIZE = 64
# UMI's task/umi.yaml after resolution: camera (T=2) + 4 low_dim keys (T=2) of 3 + 6 + 1 + 6
UMI_WIDTH = 2 * 256 + 2 * (3 + 6 + 1 + 6)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("umi") / "sam2_hiera_tiny.pt")


@pytest.fixture(autouse=True)
def eval_resolver():
    """UMI's train.py registers ``eval`` (its task yamls use it in latency_steps)."""
    from omegaconf import OmegaConf

    OmegaConf.register_new_resolver("eval", eval, replace=True)
    yield
    OmegaConf.clear_resolver("eval")


def compose(config_name=UNET, overrides=(), ckpt=None, model="sam2_tiny"):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    extra = [f"+umi_obs_encoder@policy.obs_encoder={model}"] if model else []
    if ckpt is not None:
        extra += [f"policy.obs_encoder.checkpoint={ckpt}", f"policy.obs_encoder.image_size={SIZE}"]
    with initialize_config_dir(config_dir=str(UMI_CONFIG), version_base=None):
        return hydra_compose(config_name=config_name, overrides=extra + list(overrides))


def build(cfg, seed=1):
    from hydra.utils import instantiate

    torch.manual_seed(seed)
    return instantiate(cfg.policy.obs_encoder)


def umi_obs(shape_meta, batch=2, seed=0):
    """Every shape_meta key as (B, T, ...), rgb in [0, 1] (what UMI's dataset hands the policy)."""
    from omegaconf import OmegaConf

    meta = OmegaConf.to_container(shape_meta, resolve=True) if not isinstance(shape_meta, dict) else shape_meta
    gen = torch.Generator().manual_seed(seed)
    return {k: torch.rand((batch, a["horizon"], *a["shape"]), generator=gen) for k, a in meta["obs"].items()}


def trainable(module):
    return [(n, p) for n, p in module.named_parameters() if p.requires_grad]


# ----------------------------------------------------------------------------- the group files
def test_one_umi_group_file_per_registry_model():
    assert sorted(p.stem for p in GROUP_DIR.glob("*.yaml")) == sorted(MODELS)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_umi_group_file_contents(name):
    text = (GROUP_DIR / f"{name}.yaml").read_text()
    assert text.splitlines()[0] == "# @package policy.obs_encoder"
    assert "Input convention (UMI's): input_layout umi = rgb (B, T, 3, H, W) in [0, 1]" in text
    cfg = yaml.safe_load(text)
    spec = MODELS[name]
    assert cfg["_target_"] == "dp_sam2.encoders.obs.umi.UMIObsEncoder" and cfg["shape_meta"] == "${shape_meta}"
    assert (cfg["input_layout"], cfg["input_range"], cfg["model_name"]) == ("umi", [0, 1], name)
    assert cfg["checkpoint"] == f"checkpoints/{spec.filename}" and cfg["image_size"] == spec.obs_image_size
    assert (cfg["pretrained"], cfg["frozen"], cfg["freeze"], cfg["compile"]) == (True, False, None, False)
    assert cfg["global_pool"] == "" and cfg["downsample_ratio"] == 16
    # every TimmObsEncoder key is set here except the two left as UMI's yaml has them
    assert set(TIMM_KEYS) - {"transforms"} <= set(cfg) and "transforms" not in cfg and "n_emb" not in cfg
    # each key is UMIObsEncoder's (UMI's words) or SAM2ObsEncoder's (DP's), or DP's name of a UMI key
    umi_params = set(inspect.signature(UMIObsEncoder.__init__).parameters)
    dp_params = set(inspect.signature(SAM2ObsEncoder.__init__).parameters)
    assert set(cfg) - {"_target_"} <= umi_params | dp_params | {"freeze"}


# ----------------------------------------------------------------------------- composing
def test_composes_into_umis_inline_encoder(ckpt):
    from omegaconf import OmegaConf

    cfg = compose(ckpt=ckpt)
    node = OmegaConf.to_container(cfg.policy.obs_encoder, resolve=True)
    assert node["_target_"] == "dp_sam2.encoders.obs.umi.UMIObsEncoder" and node["model_name"] == "sam2_tiny"
    assert (node["checkpoint"], node["image_size"]) == (str(ckpt), SIZE)
    assert (node["feature_aggregation"], node["downsample_ratio"], node["position_encording"]) == (None, 16, None)
    assert node["transforms"][0] == {"type": "RandomCrop", "ratio": 0.95}  # UMI's augmentation is kept
    assert node["transforms"][1]["_target_"] == "torchvision.transforms.ColorJitter"
    assert node["shape_meta"]["obs"]["camera0_rgb"]["horizon"] == 2
    assert cfg.policy.obs_encoder.pretrained is True  # UMI's workspace then gives the encoder 0.1x lr


@pytest.mark.slow
def test_instantiate_alone_train_forward_every_parameter_gets_a_gradient(ckpt):
    """The hidden check's path: instantiate(cfg.policy.obs_encoder), UMI-shaped obs in training
    mode -> (B, prod(output_shape())); DDP without find_unused_parameters needs every trainable
    parameter in the graph."""
    cfg = compose(ckpt=ckpt)
    enc = build(cfg)
    assert isinstance(enc, UMIObsEncoder) and isinstance(enc, SAM2ObsEncoder)
    assert enc.input_layout == "umi" and not enc.finetune.freeze
    calls = []
    enc.key_model_map["camera0_rgb"].register_forward_hook(lambda *a: calls.append(1))
    assert enc.output_shape() == (UMI_WIDTH,) and calls == []  # no forward
    enc.train()
    obs = umi_obs(cfg.task.shape_meta, batch=2)
    out = enc(obs)
    assert out.shape == (2, int(np.prod(enc.output_shape()))) and calls == [1]
    out.square().mean().backward()
    params = trainable(enc)
    assert any(n.startswith("key_model_map.") for n, _ in params) and any(n.startswith("heads.") for n, _ in params)
    missing = [n for n, p in params if p.grad is None]
    assert missing == []
    # the low_dim part is the obs itself, step by step (UMI: data.reshape(B, -1)), after the camera
    low = torch.cat([obs[k].reshape(2, -1) for k in sorted(enc.keys.low_dim)], dim=-1)
    assert torch.equal(out[:, 2 * 256 :], low)


@pytest.mark.slow
def test_ddp_without_find_unused_parameters(ckpt, tmp_path):
    """Two training steps under DistributedDataParallel (gloo, one rank): its reducer fails the
    second step if a trainable parameter got no gradient in the first."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    enc = build(compose(ckpt=ckpt, overrides=["policy.obs_encoder.share_rgb_model=true"], config_name=UNET))
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        model = DistributedDataParallel(enc.train(), find_unused_parameters=False)
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
        for step in range(2):
            loss = model(umi_obs(UMI_META_RESOLVED, batch=1, seed=step)).square().mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
    finally:
        dist.destroy_process_group()


UMI_META_RESOLVED = {
    "obs": {
        "camera0_rgb": {"shape": [3, 224, 224], "horizon": 2, "type": "rgb"},
        "robot0_eef_pos": {"shape": [3], "horizon": 2},
        "robot0_eef_rot_axis_angle": {"shape": [6], "horizon": 2},
        "robot0_gripper_width": {"shape": [1], "horizon": 2},
        "robot0_eef_rot_axis_angle_wrt_start": {"shape": [6], "horizon": 2},
    }
}


@pytest.mark.slow
def test_two_cameras_sorted_keys_ignore_by_policy_and_one_backbone(ckpt):
    cfg = compose(ckpt=ckpt, overrides=["task=umi_bimanual", "policy.obs_encoder.feature_dim=32"])
    enc = build(cfg).eval()
    assert enc.keys.rgb == ("camera0_rgb", "camera1_rgb")
    assert enc.keys.low_dim == ("robot0_eef_pos", "robot1_gripper_width")  # demo_start_pose: ignore_by_policy
    assert enc.output_shape() == (3 * 32 * 2 + 2 * 3 + 2 * 1,)
    assert enc.key_model_map["camera0_rgb"] is enc.key_model_map["camera1_rgb"]  # one backbone
    assert enc.heads["camera0_rgb"] is not enc.heads["camera1_rgb"]  # share_rgb_model: false
    obs = umi_obs(cfg.task.shape_meta, batch=2)
    with torch.no_grad():
        out = enc(obs)
        # per camera: the frames of (B, T) in order, each F wide (UMI's feature.reshape(B, -1))
        frames = obs["camera1_rgb"].flatten(0, 1)
        per_frame = enc.heads["camera1_rgb"](enc.encode_images(frames, "camera1_rgb"))
    assert rel_err(out[:, 96:192], per_frame.reshape(2, -1)) < 1e-5
    shared = build(compose(ckpt=ckpt, overrides=["task=umi_bimanual", "policy.obs_encoder.share_rgb_model=true"]))
    assert shared.heads["camera0_rgb"] is shared.heads["camera1_rgb"]
    assert len({id(p) for p in shared.parameters()}) == len(list(shared.parameters()))


def test_umi_layout_equals_dp_layout_per_frame(ckpt):
    meta = {"obs": {"cam": {"shape": [3, 80, 80], "horizon": 2, "type": "rgb"}, "pos": {"shape": [2], "horizon": 2}}}
    kw = dict(model_cfg="sam2_tiny", checkpoint=str(ckpt), image_size=SIZE, input_range=[0, 1], feature_dim=16)
    torch.manual_seed(3)
    umi = UMIObsEncoder(meta, **kw).eval()
    torch.manual_seed(3)
    dp = SAM2ObsEncoder(meta, **kw).eval()
    obs = umi_obs(meta, batch=3)
    with torch.no_grad():
        flat = dp({k: v.flatten(0, 1) for k, v in obs.items()})  # (B*T, 16 + 2)
        out = umi(obs)
    assert out.shape == (3, 2 * 16 + 2 * 2) == (3, umi.output_shape()[0])
    assert rel_err(out[:, :32], flat[:, :16].reshape(3, 32)) < 1e-6
    assert torch.equal(out[:, 32:], obs["pos"].reshape(3, 4))


# ----------------------------------------------------------------------------- the key mapping
def test_freeze_and_frozen_must_agree(ckpt):
    with pytest.raises(Exception, match="freeze=True and frozen=False disagree"):
        build(compose(ckpt=ckpt, overrides=["policy.obs_encoder.freeze=true"]))
    enc = build(compose(ckpt=ckpt, overrides=["policy.obs_encoder.frozen=true"]))
    assert enc.finetune.freeze and trainable(enc.key_model_map) == []
    enc = build(compose(ckpt=ckpt, overrides=["policy.obs_encoder.frozen=true", "policy.obs_encoder.freeze=true"]))
    assert enc.finetune.freeze
    with pytest.raises(Exception, match="pretrained=false would train nothing"):
        build(compose(ckpt=ckpt, overrides=["policy.obs_encoder.frozen=true", "policy.obs_encoder.pretrained=false"]))


def test_pretrained_true_loads_the_file_false_builds_random_weights_without_one(ckpt, tmp_path):
    enc = build(compose(ckpt=ckpt))
    state = {
        k[len("key_model_map.camera0_rgb.") :]: v
        for k, v in enc.state_dict().items()
        if k.startswith("key_model_map.camera0_rgb.")
    }
    official = file_state(ckpt)
    assert all(torch.equal(state[k], v) for k, v in official.items()) and enc.pretrained
    missing = tmp_path / "nowhere" / "sam2_hiera_tiny.pt"
    rand = build(compose(ckpt=missing, overrides=["policy.obs_encoder.pretrained=false"]))
    assert rand.checkpoint is None and not rand.pretrained
    weight = "image_encoder.trunk.blocks.0.attn.qkv.weight"
    assert not torch.equal(rand.key_model_map["camera0_rgb"].state_dict()[weight], official[weight])
    with pytest.raises(Exception, match="SAM 2 checkpoint .* not found"):
        build(compose(ckpt=missing))


@pytest.mark.parametrize("build_as", ["UMIObsEncoder", "SAM2ObsEncoder with input_layout umi (0.2.x configs)"])
def test_model_name_is_the_short_name(build_as):
    meta = {"obs": {"cam": {"shape": [3, 64, 64], "horizon": 1, "type": "rgb"}}}
    kw = dict(input_layout="umi", pretrained=False, frozen=False, image_size=SIZE)
    cls = UMIObsEncoder if build_as == "UMIObsEncoder" else SAM2ObsEncoder
    enc = cls(meta, model_name="sam2.1_tiny", **kw)
    assert type(enc) is UMIObsEncoder and enc.model_cfg == "sam2.1_tiny"
    assert cls(meta, model_name="sam2_tiny", model_cfg="sam2_hiera_t.yaml", **kw).model_cfg == "sam2_tiny"
    with pytest.raises(ValueError, match="name different models"):
        cls(meta, model_name="sam2_tiny", model_cfg="sam2_small", **kw)
    with pytest.raises(ValueError, match="model_name must be a SAM 2 model"):
        cls(meta, model_name="vit_base_patch16_clip_224.openai", **kw)


@pytest.mark.parametrize(
    "override, match",
    [
        ("policy.obs_encoder.global_pool=avg", "global_pool must be ''"),
        ("policy.obs_encoder.downsample_ratio=32", "downsample_ratio must be 16"),
        ("policy.obs_encoder.feature_aggregation=transformer", "feature_aggregation must be null or one of"),
        ("policy.obs_encoder.input_layout=bt", "input_layout must be 'dp'"),
        ("policy.obs_encoder.input_layout=dp", "UMIObsEncoder takes UMI's layout"),
        ("policy.obs_encoder.transforms=[{type:RandomCrop,ratio:1.5}]", r"ratio must be in \(0, 1\]"),
        ("policy.obs_encoder.transforms=[{type:Resize,size:5}]", "only the first entry may be"),
    ],
)
def test_bad_umi_values(ckpt, override, match):
    with pytest.raises(Exception, match=match):
        build(compose(ckpt=ckpt, overrides=[override]))


def test_feature_aggregation_maps_to_our_heads(ckpt):
    from dp_sam2.encoders.obs.heads import AttentionPool, MeanPool

    enc = build(compose(ckpt=ckpt, overrides=["policy.obs_encoder.feature_aggregation=avg"]))
    assert isinstance(enc.heads["camera0_rgb"], MeanPool)
    enc = build(
        compose(
            ckpt=ckpt,
            overrides=["policy.obs_encoder.feature_aggregation=attention_pool_2d", "policy.obs_encoder.pooling=mean"],
        )
    )
    assert isinstance(enc.heads["camera0_rgb"], AttentionPool)


def test_bad_obs_in_umi_layout(ckpt):
    cfg = compose(ckpt=ckpt)
    enc = build(cfg)
    obs = umi_obs(cfg.task.shape_meta, batch=2)
    with pytest.raises(ValueError, match=r"'camera0_rgb' must be images \(B, T=2, 3, 224, 224\).*horizon"):
        enc(dict(obs, camera0_rgb=obs["camera0_rgb"][:, :1]))
    with pytest.raises(ValueError, match=r"'robot0_eef_pos' must have shape \(B, T=2, 3\)"):
        enc(dict(obs, robot0_eef_pos=obs["robot0_eef_pos"].flatten(0, 1)))
    meta = {"obs": {"cam": {"shape": [3, 64, 64], "type": "rgb"}}}
    with pytest.raises(ValueError, match=r"needs shape_meta\['obs'\]\['cam'\]\['horizon'\]"):
        SAM2ObsEncoder(meta, input_layout="umi", pretrained=False, frozen=False, model_cfg="sam2_tiny", image_size=64)


# ----------------------------------------------------------------------------- UMI's transforms
@pytest.mark.slow
def test_transforms_random_crop_and_color_jitter_in_training_only(ckpt, monkeypatch):
    cfg = compose(ckpt=ckpt, overrides=["policy.obs_encoder.frozen=true"])
    enc = build(cfg)
    from torchvision.transforms import ColorJitter

    assert isinstance(enc.augment[0], ColorJitter) and enc.augment[0].brightness == (0.7, 1.3)
    assert enc.ratio_crop["camera0_rgb"] == (212, 212)  # int(224 * 0.95), as UMI's RandomCrop
    seen, jitter = [], []
    monkeypatch.setattr("dp_sam2.encoders.obs.encoder.resize", lambda x, hw: (seen.append(x), x)[1])
    enc.augment[0].register_forward_hook(lambda *a: jitter.append(1))
    rows = torch.arange(224.0)[:, None] * 1000 + torch.arange(224.0)[None, :]
    img = (rows / 1e6).expand(4, 3, 224, 224).contiguous()
    enc.eval().preprocess(img)
    assert torch.equal(seen[-1], img[..., 6:218, 6:218]) and jitter == []  # centre crop, no jitter
    enc.train().preprocess(img)
    crops = seen[-1]
    assert crops.shape[-2:] == (212, 212) and jitter == [1]
    corners = {(round(float(c[0, 0, 0]) * 1e6) // 1000, round(float(c[0, 0, 0]) * 1e6) % 1000) for c in crops}
    assert all(0 <= t <= 12 and 0 <= left <= 12 for t, left in corners)
    monkeypatch.undo()
    obs = umi_obs(cfg.task.shape_meta, batch=2)
    with torch.no_grad():
        assert torch.equal(enc.eval()(obs), enc(obs))  # eval: deterministic
        assert not torch.equal(enc.train()(obs), enc(obs))  # training: augmented


# ----------------------------------------------------------------------------- token mode
def test_token_mode_for_the_transformer_policy(ckpt):
    """UMI's DiffusionTransformerTimmPolicy reads output_shape()[-1] == n_emb and [-2] tokens, and
    gives obs_encoder_lr to parameters named under key_model_map."""
    cfg = compose(TRANSFORMER, ckpt=ckpt, overrides=["n_emb=64"])
    enc = build(cfg)
    assert enc.n_emb == 64 and enc.pooling is None  # feature_aggregation null: every map cell a token
    cells = (SIZE // 16) ** 2
    assert enc.output_shape() == (2 * cells + 4 * 2, 64)
    obs = umi_obs(cfg.task.shape_meta, batch=2)
    out = enc.train()(obs)
    assert out.shape == (2, *enc.output_shape())
    out.square().mean().backward()
    assert [n for n, p in trainable(enc) if p.grad is None] == []
    backbone = [n for n, _ in enc.named_parameters() if n.startswith("key_model_map")]
    assert len(backbone) == len(list(enc.key_model_map["camera0_rgb"].parameters())) > 100
    assert all(not n.startswith("key_model_map") for n, _ in enc.heads.named_parameters(prefix="heads"))
    # UMI's get_optimizer rule
    groups = {"backbone": [], "other": []}
    for name, p in enc.named_parameters():
        groups["backbone" if name.startswith("key_model_map") else "other"].append(p)
    ids = {id(p) for p in enc.key_model_map["camera0_rgb"].parameters()}
    assert {id(p) for p in groups["backbone"]} == ids and not ids & {id(p) for p in groups["other"]}


def test_token_mode_pooled_and_low_dim_tokens(ckpt):
    cfg = compose(
        TRANSFORMER,
        ckpt=ckpt,
        overrides=[
            "n_emb=32",
            "task=umi_bimanual",
            "policy.obs_encoder.feature_aggregation=cls",
            "policy.obs_encoder.feature_dim=32",
        ],
    )
    enc = build(cfg).eval()
    assert enc.output_shape() == (2 * 3 + 2 * 2, 32)  # 2 cameras x 3 steps x 1 token + 2 low_dim x 2 steps
    obs = umi_obs(cfg.task.shape_meta, batch=2)
    with torch.no_grad():
        out = enc(obs)
    assert out.shape == (2, 10, 32)
    proj = enc.low_dim_proj["robot0_eef_pos"]
    assert torch.allclose(out[:, 6:8], proj(obs["robot0_eef_pos"]), atol=1e-6)  # steps are tokens, in order
    with pytest.raises(ValueError, match="n_emb .* needs input_layout: umi"):
        SAM2ObsEncoder(
            {"obs": {"cam": {"shape": [3, 64, 64], "type": "rgb"}}},
            model_cfg="sam2_tiny",
            checkpoint=str(ckpt),
            image_size=SIZE,
            n_emb=32,
        )


# ----------------------------------------------------------------------------- a UMI-shaped policy
class FakeUnetTimmPolicy(nn.Module):
    """The part of UMI's DiffusionUnetTimmPolicy that touches the encoder."""

    def __init__(self, shape_meta, obs_encoder, **_):
        super().__init__()
        self.obs_encoder = obs_encoder
        self.obs_feature_dim = int(np.prod(obs_encoder.output_shape()))
        self.model = nn.Linear(self.obs_feature_dim, 10)

    def forward(self, batch):
        return self.model(self.obs_encoder(batch["obs"])).square().mean()


@pytest.mark.slow
def test_umi_shaped_policy_trains_with_the_workspace_param_groups(ckpt):
    import copy

    from hydra.utils import instantiate

    cfg = compose(ckpt=ckpt, overrides=["policy._target_=test_umi.FakeUnetTimmPolicy"])
    torch.manual_seed(0)
    policy = instantiate(cfg.policy)
    ema = copy.deepcopy(policy)  # UMI's EMA copy
    assert policy.obs_feature_dim == UMI_WIDTH
    lr = cfg.optimizer.lr * (0.1 if cfg.policy.obs_encoder.pretrained else 1.0)  # UMI's workspace rule
    enc_params = [p for p in policy.obs_encoder.parameters() if p.requires_grad]
    opt = torch.optim.AdamW([{"params": policy.model.parameters()}, {"params": enc_params, "lr": lr}], lr=1e-3)
    weight = policy.obs_encoder.key_model_map["camera0_rgb"].image_encoder.trunk.blocks[0].attn.qkv.weight
    before = weight.detach().clone()
    policy.train()
    loss = policy({"obs": umi_obs(cfg.task.shape_meta, batch=2)})
    loss.backward()
    opt.step()
    assert opt.param_groups[1]["lr"] == pytest.approx(3e-5) and not torch.equal(before, weight)
    assert math.isfinite(loss.item()) and ema.obs_encoder.output_shape() == (UMI_WIDTH,)

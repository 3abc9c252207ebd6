"""SAM2ObsEncoder against Diffusion Policy's obs-encoder contract (no DP checkout needed).

Tiny model at 64 px so the whole file runs in seconds on a CPU. Checkpoints are generated in the
official format (``{"model": state_dict}``, official key names) from random weights.
"""

from __future__ import annotations

import copy
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

from conftest import build_official, perturb_, rel_err, requires_official, save_official_checkpoint
from dp_sam2 import SAM2ObsEncoder
from dp_sam2.checkpoints.registry import MODELS
from dp_sam2.checkpoints.resolve import CheckpointNotFoundError
from dp_sam2.encoders.obs.backbone import SAM2Backbone
from dp_sam2.encoders.obs.finetune import LoRALinear, adamw_param_groups

SIZE = 64
PUSHT = {
    "obs": {"image": {"shape": [3, 96, 96], "type": "rgb"}, "agent_pos": {"shape": [2], "type": "low_dim"}},
    "action": {"shape": [2]},
}
TWO_CAM = {
    "obs": {
        "robot0_eye_in_hand_image": {"shape": [3, 84, 84], "type": "rgb"},
        "agentview_image": {"shape": [3, 72, 80], "type": "rgb"},
        "robot0_eef_pos": {"shape": [3]},
        "robot0_gripper_qpos": {"shape": [2], "type": "low_dim"},
    },
    "action": {"shape": [7]},
}


def make_checkpoint(path, config="sam2_tiny", seed=0):
    """An official-format checkpoint holding the image encoder and no_mem_embed."""
    torch.manual_seed(seed)
    backbone = perturb_(SAM2Backbone(config, SIZE), seed=seed)
    state = dict(backbone.state_dict())
    if config.startswith("sam2.1"):  # the three 2.1-only keys mark the file as SAM 2.1
        state.update(
            {
                "no_obj_embed_spatial": torch.zeros(1, 64),
                "obj_ptr_tpos_proj.weight": torch.zeros(64, 256),
                "obj_ptr_tpos_proj.bias": torch.zeros(64),
            }
        )
    torch.save({"model": state}, path)
    return path


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("sam2") / "sam2_hiera_tiny.pt")


def make_encoder(ckpt, shape_meta=PUSHT, **kwargs):
    kwargs.setdefault("model_cfg", "sam2_tiny")
    kwargs.setdefault("image_size", SIZE)
    torch.manual_seed(1)
    return SAM2ObsEncoder(shape_meta, checkpoint=str(ckpt), **kwargs)


def obs_for(shape_meta, batch=4, seed=0):
    gen = torch.Generator().manual_seed(seed)
    obs = {}
    for key, attr in shape_meta["obs"].items():
        x = torch.rand((batch, *attr["shape"]), generator=gen)
        obs[key] = x * 2 - 1 if attr.get("type") == "rgb" else x
    return obs


def backbone_state(encoder, prefix="backbone."):
    return {k[len(prefix) :]: v.clone() for k, v in encoder.state_dict().items() if k.startswith(prefix)}


def file_state(path):
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


# ----------------------------------------------------------------------------- DP's contract
def test_output_shape_is_forward_width_and_runs_no_backbone(ckpt):
    enc = make_encoder(ckpt, TWO_CAM, feature_dim=32)
    calls = []
    enc.backbone.register_forward_hook(lambda *a: calls.append(1))
    shape = enc.output_shape()
    assert calls == [] and shape == (2 * 32 + 3 + 2,)
    out = enc(obs_for(TWO_CAM, batch=3))
    assert out.shape == (3, shape[0])
    assert calls == [1]  # both cameras in one backbone forward


def test_feature_order_rgb_sorted_then_low_dim_sorted(ckpt):
    enc = make_encoder(ckpt, TWO_CAM, feature_dim=16).eval()
    obs = obs_for(TWO_CAM, batch=2)
    out = enc(obs)
    expected = [enc.heads[k](enc.encode_images(obs[k], k)) for k in ("agentview_image", "robot0_eye_in_hand_image")]
    expected += [obs["robot0_eef_pos"], obs["robot0_gripper_qpos"]]
    assert torch.allclose(out, torch.cat(expected, dim=-1), atol=1e-6)


def test_minus_one_one_input_equals_zero_one_input(ckpt):
    a = make_encoder(ckpt).eval()
    b = make_encoder(ckpt, input_range=[0, 1]).eval()
    obs = obs_for(PUSHT)
    obs01 = dict(obs, image=(obs["image"] + 1) / 2)
    assert rel_err(a.encode_images(obs["image"]), b.encode_images(obs01["image"])) < 1e-5
    assert rel_err(a(obs), b(obs01)) < 1e-5
    # the normalised SAM 2 input: [-1, 1] -> [0, 1] -> ImageNet mean/std
    x = a.preprocess(torch.full((1, 3, 96, 96), 1.0))
    expected = (1 - torch.tensor([0.485, 0.456, 0.406])) / torch.tensor([0.229, 0.224, 0.225])
    assert torch.allclose(x[0, :, 0, 0], expected)


def _coordinate_image(h, w):
    """Pixel value = row * 1000 + col, in all three channels."""
    rows = torch.arange(h, dtype=torch.float32)[:, None] * 1000
    return (rows + torch.arange(w, dtype=torch.float32)[None, :]).expand(3, h, w)[None]


def test_crops_random_in_training_center_in_eval(ckpt, monkeypatch):
    enc = make_encoder(ckpt, crop_shape=[76, 76])
    seen = []
    monkeypatch.setattr("dp_sam2.encoders.obs.encoder.resize", lambda x, hw: (seen.append(x), x)[1])
    img = _coordinate_image(96, 96).repeat(8, 1, 1, 1)
    enc.eval()
    enc.preprocess(img)
    crop = seen[-1]
    assert crop.shape[-2:] == (76, 76) and torch.equal(crop, img[..., 10:86, 10:86])
    enc.train()
    enc.preprocess(img)
    crops = seen[-1]
    tops = crops[:, 0, 0, 0] // 1000
    lefts = crops[:, 0, 0, 0] % 1000
    for i in range(8):  # each one a contiguous 76x76 window of its own image
        t, l_ = int(tops[i]), int(lefts[i])
        assert torch.equal(crops[i], img[i, :, t : t + 76, l_ : l_ + 76])
    assert len({(int(t), int(l_)) for t, l_ in zip(tops, lefts)}) > 1  # independent per image
    fixed = make_encoder(ckpt, crop_shape=[76, 76], random_crop=False).train()
    fixed.preprocess(img[:1])
    assert torch.equal(seen[-1], img[:1, :, 10:86, 10:86])  # unlike DP, random_crop=false still crops


def test_resize_shape_then_crop_then_image_size(ckpt):
    enc = make_encoder(ckpt, resize_shape=[48, 48], crop_shape=[40, 40]).eval()
    x = enc.preprocess(torch.rand(2, 3, 96, 96) * 2 - 1)
    assert x.shape == (2, 3, SIZE, SIZE)


@pytest.mark.slow
def test_multi_camera_separate_backbones(ckpt):
    enc = make_encoder(ckpt, TWO_CAM, share_rgb_model=False).eval()
    assert not hasattr(enc, "backbone") and len(enc.backbones) == 2
    shared = make_encoder(ckpt, TWO_CAM).eval()
    obs = obs_for(TWO_CAM)
    # same weights everywhere (and the same head init): same result either way
    assert rel_err(enc(obs), shared(obs)) < 1e-5


# ----------------------------------------------------------------------------- freezing
def test_frozen_backbone_eval_mode_no_graph_head_trains(ckpt):
    enc = make_encoder(ckpt)
    enc.train()
    assert enc.training and enc.heads.training and not enc.backbone.training
    assert not any(p.requires_grad for p in enc.backbone.parameters())
    outs = []
    enc.backbone.register_forward_hook(lambda m, i, o: outs.append(o))
    enc(obs_for(PUSHT)).sum().backward()
    assert outs[0].grad_fn is None and not outs[0].requires_grad
    assert all(p.grad is not None for p in enc.heads.parameters())
    assert all(p.grad is None for p in enc.backbone.parameters())


def test_dp_freeze_encoder_flag_still_runs(ckpt):
    """DP's training.freeze_encoder: obs_encoder.eval() + requires_grad_(False) each epoch."""
    enc = make_encoder(ckpt, freeze=False)
    enc.eval()
    enc.requires_grad_(False)
    out = enc(obs_for(PUSHT))
    assert not out.requires_grad


class TinyNoisePredictor(nn.Module):
    """A small conditional epsilon-predictor: (noisy actions, timestep, obs features) -> noise."""

    def __init__(self, action_dim, horizon, cond_dim):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(action_dim * horizon + 1 + cond_dim, 64), nn.Mish(), nn.Linear(64, action_dim * horizon)
        )

    def forward(self, noisy, t, cond):
        flat = torch.cat([noisy.flatten(1), t.float()[:, None] / 100, cond], dim=-1)
        return self.net(flat).view_as(noisy)


def train_steps(enc, steps=2, n_obs_steps=2, batch=2):
    """DP's compute_loss: obs (B, To, ...) -> (B*To, ...) -> encoder -> (B, To*D) global cond."""
    from diffusers import DDPMScheduler

    scheduler = DDPMScheduler(num_train_timesteps=100, beta_schedule="squaredcos_cap_v2")
    horizon, action_dim = 4, 2
    head = TinyNoisePredictor(action_dim, horizon, enc.output_shape()[0] * n_obs_steps)
    model = nn.ModuleDict({"obs_encoder": enc, "head": head})
    opt = adamw_param_groups(model.parameters(), lr=1e-2, weight_decay=0.0, backbone_lr_scale=0.5)
    model.train()
    gen = torch.Generator().manual_seed(0)
    for _ in range(steps):
        obs = {k: v.view(batch, n_obs_steps, *v.shape[1:]) for k, v in obs_for(PUSHT, batch * n_obs_steps).items()}
        flat = {k: v.reshape(-1, *v.shape[2:]) for k, v in obs.items()}
        cond = enc(flat).reshape(batch, -1)
        actions = torch.randn(batch, horizon, action_dim, generator=gen)
        noise = torch.randn(actions.shape, generator=gen)
        t = torch.randint(0, 100, (batch,), generator=gen)
        loss = nn.functional.mse_loss(head(scheduler.add_noise(actions, noise, t), t, cond), noise)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return opt


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["frozen", "full", "last_block", "lora"])
def test_diffusion_training_changes_only_what_trains(ckpt, mode):
    kwargs = {
        "frozen": {},
        "full": {"freeze": False},
        "last_block": {"freeze": False, "trainable_blocks": 1},
        "lora": {"freeze": False, "lora_rank": 4},
    }[mode]
    enc = make_encoder(ckpt, **kwargs)
    heads_before = {k: v.clone() for k, v in enc.heads.state_dict().items()}
    opt = train_steps(enc)
    official = file_state(ckpt)
    after = backbone_state(enc)
    changed = {k for k in official if not torch.equal(official[k], after[k])}
    assert all(not torch.equal(heads_before[k], v) for k, v in enc.heads.state_dict().items() if "grid" not in k)
    last = len(enc.backbone.image_encoder.trunk.blocks) - 1
    if mode in ("frozen", "lora"):
        assert changed == set()
    elif mode == "full":
        assert {
            "image_encoder.trunk.patch_embed.proj.weight",
            "image_encoder.trunk.blocks.0.attn.qkv.weight",
            "image_encoder.neck.convs.0.conv.weight",
            "image_encoder.neck.convs.1.conv.weight",
            "no_mem_embed",
        } <= changed
        # the stride-4/8 lateral convs never feed the stride-16 map: not trained
        assert not any(k.startswith(("image_encoder.neck.convs.2.", "image_encoder.neck.convs.3.")) for k in changed)
    else:
        kept = (f"image_encoder.trunk.blocks.{last}.", "image_encoder.neck.", "no_mem_embed")
        assert changed and all(k.startswith(kept) for k in changed)
        assert f"image_encoder.trunk.blocks.{last}.mlp.layers.0.weight" in changed
    if mode == "lora":
        lora_b = [m.lora_b for m in enc.backbone.modules() if isinstance(m, LoRALinear)]
        assert len(lora_b) == 2 * (last + 1) and all(b.abs().sum() > 0 for b in lora_b)
    assert opt.param_groups[1]["lr"] == pytest.approx(0.5e-2)
    assert len(opt.param_groups[1]["params"]) == len(list(enc.backbone.parameters()))


@pytest.mark.slow
def test_activation_checkpointing_same_gradients(ckpt):
    grads, outs = [], []
    for flag in (False, True):
        enc = make_encoder(ckpt, freeze=False, activation_checkpointing=flag)
        enc.train()
        enc(obs_for(PUSHT, batch=2)).square().sum().backward()
        grads.append(enc.backbone.image_encoder.trunk.blocks[0].attn.qkv.weight.grad.clone())
        with torch.no_grad():  # inference ignores the flag (fast path)
            outs.append(enc.eval()(obs_for(PUSHT, batch=2)))
    assert rel_err(grads[1], grads[0]) < 1e-5 and grads[0].abs().sum() > 0
    assert rel_err(outs[1], outs[0]) < 1e-5


# ----------------------------------------------------------------------------- copies and state
@pytest.mark.slow
def test_deepcopy_for_ema_and_state_dict_round_trip(ckpt):
    enc = make_encoder(ckpt, freeze=False, trainable_blocks=1)
    ema = copy.deepcopy(enc)
    ema.eval()
    ema.requires_grad_(False)
    enc.eval()
    obs = obs_for(PUSHT)
    # the frozen copy runs the inference fast paths (fewer padded rows in the GEMMs), the
    # partly trainable original the autograd path: equal up to float rounding
    assert rel_err(ema(obs), enc(obs)) <= 1e-6
    # the copy's backbone parameters are still recognised by the optimizer factory
    assert len(adamw_param_groups(ema.parameters()).param_groups) == 2
    other = make_encoder(make_checkpoint(ckpt.parent / "other.pt", seed=5), freeze=False, trainable_blocks=1)
    assert not torch.equal(other.eval()(obs), enc(obs))
    other.load_state_dict(enc.state_dict(), strict=True)
    assert torch.equal(other(obs), enc(obs))


@pytest.mark.slow
def test_lora_keeps_official_key_names(ckpt):
    enc = make_encoder(ckpt, freeze=False, lora_rank=2)
    keys = set(backbone_state(enc))
    assert set(file_state(ckpt)) <= keys
    assert "image_encoder.trunk.blocks.0.attn.qkv.lora_a" in keys
    assert "image_encoder.trunk.blocks.0.attn.qkv.base_weight" not in keys
    # the adapters act on every path that reads the layer's weight (fused kernels included)
    obs = obs_for(PUSHT, batch=2)
    before = enc.eval()(obs)
    with torch.no_grad():
        for m in enc.backbone.modules():
            if isinstance(m, LoRALinear):
                m.lora_b.normal_(0, 0.05)
    with torch.no_grad():  # the inference (chunked / fused) path
        adapted = enc(obs)
    assert rel_err(adapted, before) > 1e-3
    assert rel_err(enc(obs), adapted) < 1e-5  # the autograd (reference) path agrees
    other = make_encoder(ckpt, freeze=False, lora_rank=2)
    other.load_state_dict(enc.state_dict(), strict=True)
    with torch.no_grad():
        assert torch.equal(other.eval()(obs), adapted)


def image_range_normalizer(x):
    """DP's get_image_range_normalizer(): [0, 1] -> [-1, 1], applied to every rgb key's value."""
    return x.float() * 2 - 1


@pytest.mark.slow
def test_precomputed_features_match_images(ckpt):
    """The cache contract: features of [0, 1] dataset images, stored in fp16, served under the
    image key, pass DP's image normaliser like images and give the image path's output."""
    enc = make_encoder(ckpt, crop_shape=[80, 80]).eval()
    obs = obs_for(PUSHT)
    images01 = (obs["image"] + 1) / 2  # what DP's dataset returns
    feats = enc.encode_images(images01, "image", input_range=[0, 1])
    assert feats.shape == (4, *enc.feature_shape) == (4, 256, SIZE // 16, SIZE // 16)
    assert rel_err(feats, enc.encode_images(obs["image"])) < 1e-6
    cached = feats.half()
    out = enc(dict(obs, image=image_range_normalizer(cached)))
    assert rel_err(out, enc(obs)) < 2e-3  # fp16 storage
    assert rel_err(enc(dict(obs, image=enc.features_to_input(feats))), enc(obs)) < 1e-5
    enc.train()  # frozen backbone: features are fine in training too
    enc(dict(obs, image=image_range_normalizer(cached)))
    info = enc.feature_info("image")
    assert info["feature_shape"] == [256, SIZE // 16, SIZE // 16] and info["crop_shape"] == [80, 80]
    assert info["model_cfg"] == "sam2_tiny" and info["image_size"] == SIZE
    trainable = make_encoder(ckpt, freeze=False).train()
    with pytest.raises(ValueError, match="precomputed features.*being trained"):
        trainable(dict(obs, image=feats))


def test_features_for_one_camera_images_for_the_other(ckpt):
    enc = make_encoder(ckpt, TWO_CAM).eval()
    obs = obs_for(TWO_CAM)
    feats = enc.features_to_input(enc.encode_images(obs["agentview_image"], "agentview_image"))
    assert rel_err(enc(dict(obs, agentview_image=feats)), enc(obs)) < 1e-5
    with pytest.raises(ValueError, match=r"or precomputed features \(B, 256, 4, 4\)"):
        enc(dict(obs, agentview_image=feats[:, :, :3]))


@requires_official
def test_features_equal_official_image_predictor_path(tmp_path):
    """encode_images == the official SAM2Transforms + forward_image + no_mem_embed (ruling 1)."""
    from sam2.utils.transforms import SAM2Transforms

    official = build_official("configs/sam2.1/sam2.1_hiera_t.yaml", image_size=128, seed=2)
    path = save_official_checkpoint(official, tmp_path / "sam2.1_hiera_tiny.pt")
    meta = {"obs": {"image": {"shape": [3, 100, 120], "type": "rgb"}}}
    enc = SAM2ObsEncoder(
        meta, model_cfg="configs/sam2.1/sam2.1_hiera_t.yaml", checkpoint=str(path), image_size=128, input_range=[0, 1]
    ).eval()
    img = torch.rand(2, 3, 100, 120, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref_in = torch.stack([SAM2Transforms(128, 0.0).transforms(im) for im in img])
        out = official.forward_image(ref_in)
        _, feats, _, sizes = official._prepare_backbone_features(out)
        ref = (feats[-1] + official.no_mem_embed).permute(1, 2, 0).reshape(2, 256, *sizes[-1])
        assert rel_err(enc.preprocess(img), ref_in) < 1e-6
        assert rel_err(enc.encode_images(img), ref) <= 1e-4


def test_loads_a_full_official_checkpoint_and_checks_its_version(tmp_path):
    path = make_checkpoint(tmp_path / "sam2_hiera_tiny.pt")
    with pytest.raises(ValueError, match="SAM 2.0 checkpoint.*SAM 2.1"):
        make_encoder(path, model_cfg="sam2.1_tiny")
    path21 = make_checkpoint(tmp_path / "sam2.1_hiera_tiny.pt", config="sam2.1_tiny")
    enc = make_encoder(path21, model_cfg="sam2.1_tiny")
    assert torch.equal(backbone_state(enc)["no_mem_embed"], file_state(path21)["no_mem_embed"])


# ----------------------------------------------------------------------------- errors
def test_bad_obs_dicts_give_clear_errors(ckpt):
    enc = make_encoder(ckpt)
    obs = obs_for(PUSHT)
    with pytest.raises(ValueError, match=r"missing keys \['agent_pos'\]"):
        enc({"image": obs["image"]})
    with pytest.raises(ValueError, match=r"'image' must be images \(B, 3, 96, 96\).*got \(4, 3, 84, 84\)"):
        enc(dict(obs, image=torch.zeros(4, 3, 84, 84)))
    with pytest.raises(ValueError, match=r"'agent_pos' must have shape \(B, 2\), got \(4, 3\)"):
        enc(dict(obs, agent_pos=torch.zeros(4, 3)))
    with pytest.raises(ValueError, match="different batch sizes"):
        enc(dict(obs, agent_pos=torch.zeros(3, 2)))
    with pytest.raises(TypeError, match="must be a torch.Tensor"):
        enc(dict(obs, agent_pos=[[0.0, 0.0]] * 4))
    with pytest.raises(TypeError, match="float tensor"):
        enc(dict(obs, image=torch.zeros(4, 3, 96, 96, dtype=torch.uint8)))
    with pytest.raises(TypeError, match="dict of tensors"):
        enc(obs["image"])


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"image_size": 100}, ValueError, "multiple of 32"),
        ({"image_size": 0}, ValueError, "multiple of 32"),
        ({"rgb_model": nn.Identity()}, TypeError, "rgb_model must be null"),
        ({"input_range": [0, 255]}, ValueError, "input_range"),
        ({"crop_shape": [100, 100]}, ValueError, "larger than its image"),
        ({"crop_shape": {"camera": [10, 10]}}, ValueError, "not rgb obs keys"),
        ({"pooling": "max"}, ValueError, "pooling must be one of"),
        ({"lora_rank": 4}, ValueError, "freeze=true keeps the whole"),
        ({"model_cfg": "sam3_tiny"}, ValueError, "unknown SAM 2 model"),
    ],
)
def test_bad_arguments(ckpt, kwargs, error, match):
    with pytest.raises(error, match=match):
        make_encoder(ckpt, **kwargs)


def test_bad_shape_meta(ckpt):
    with pytest.raises(ValueError, match=r"must have shape \[3, H, W\]"):
        make_encoder(ckpt, {"obs": {"depth": {"shape": [1, 64, 64], "type": "rgb"}}})
    with pytest.raises(ValueError, match="supports 'rgb' and 'low_dim'"):
        make_encoder(
            ckpt, {"obs": {"image": {"shape": [3, 64, 64], "type": "rgb"}, "pc": {"shape": [3], "type": "pcd"}}}
        )
    with pytest.raises(ValueError, match="no rgb obs key"):
        make_encoder(ckpt, {"obs": {"pos": {"shape": [3]}}})


@pytest.mark.slow
def test_missing_checkpoint_error_and_eval_escape_hatch(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DP_SAM2_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("DP_SAM2_CHECKPOINT_DIR", raising=False)
    monkeypatch.delenv("DP_SAM2_ALLOW_MISSING_CHECKPOINT", raising=False)
    with pytest.raises(CheckpointNotFoundError, match=r"(?s)current directory.*user cache.*dp-sam2 download sam2_tiny"):
        SAM2ObsEncoder(PUSHT, model_cfg="sam2_tiny", image_size=SIZE)
    monkeypatch.setenv("DP_SAM2_ALLOW_MISSING_CHECKPOINT", "1")
    with pytest.warns(UserWarning, match="WITHOUT SAM 2 weights"):
        enc = SAM2ObsEncoder(PUSHT, model_cfg="sam2_tiny", image_size=SIZE)
    assert enc.checkpoint == "checkpoints/sam2_hiera_tiny.pt"  # kept relative, as written
    assert enc.output_shape() == (258,)
    # eval.py on a machine without the SAM 2 file: the DP checkpoint restores every weight
    trained = make_encoder(make_checkpoint(tmp_path / "w.pt"))
    enc.load_state_dict(trained.state_dict(), strict=True)
    obs = obs_for(PUSHT)
    assert torch.equal(enc.eval()(obs), trained.eval()(obs))


def test_device_and_dtype_properties(ckpt):
    enc = make_encoder(ckpt)
    assert enc.device == torch.device("cpu") and enc.dtype == torch.float32
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert enc.to(torch.float64).dtype == torch.float64
    assert enc(obs_for(PUSHT)).dtype == torch.float64


# ----------------------------------------------------------------------------- pooling heads
@pytest.mark.parametrize("pooling", ["attention", "spatial_softmax", "mean"])
def test_pooling_heads_by_name(ckpt, pooling):
    enc = make_encoder(ckpt, TWO_CAM, pooling=pooling, feature_dim=24).eval()
    out = enc(obs_for(TWO_CAM, batch=2))
    assert out.shape == (2, enc.output_shape()[0]) == (2, 2 * 24 + 5)
    assert len(enc.heads) == 2  # one head per camera, one shared backbone


def test_spatial_softmax_returns_keypoint_coordinates():
    from dp_sam2.encoders.obs.heads import SpatialSoftmax

    head = SpatialSoftmax(in_channels=2, feat_hw=(4, 4), feature_dim=4, num_kp=2)
    with torch.no_grad():
        head.keypoints.weight.copy_(torch.eye(2).view(2, 2, 1, 1))
        head.keypoints.bias.zero_()
        head.proj.weight.copy_(torch.eye(4))
        head.proj.bias.zero_()
    x = torch.full((1, 2, 4, 4), -1e4)
    x[0, 0, 1, 3] = 0.0  # keypoint 0 at row 1, column 3
    x[0, 1, 2, 0] = 0.0  # keypoint 1 at row 2, column 0
    grid = torch.linspace(-1, 1, 4)
    expected = torch.tensor([grid[3], grid[1], grid[0], grid[2]])  # (x, y) per keypoint
    assert torch.allclose(head(x)[0], expected, atol=1e-5)


@pytest.mark.slow
def test_bf16_precision_switch(ckpt):
    """precision=bf16 runs the backbone under bf16 autocast; features come back in fp32 and stay
    close to the fp32 ones (cosine >= 0.999)."""
    full = make_encoder(ckpt).eval()
    low = make_encoder(ckpt, precision="bf16").eval()
    obs = obs_for(PUSHT)
    with torch.no_grad():
        a = full.encode_images(obs["image"])
        b = low.encode_images(obs["image"])
        out = low(obs)
    assert b.dtype == torch.float32 and out.dtype == torch.float32
    assert not torch.equal(a, b)  # it really ran in bf16
    cos = torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0)
    assert cos >= 0.999
    with pytest.raises(ValueError, match="precision must be 'fp32' or 'bf16', got 'fp16'"):
        make_encoder(ckpt, precision="fp16")


# ----------------------------------------------------------------------------- input conventions
@pytest.mark.parametrize("name", ["sam2_tiny", "sam2.1_large"])
def test_dp_group_files_state_their_input_convention(name):
    import yaml

    text = (Path(__file__).resolve().parents[1] / "dp_sam2" / "configs" / "obs_encoder" / f"{name}.yaml").read_text()
    cfg = yaml.safe_load(text)
    assert (cfg["input_layout"], cfg["input_range"], cfg["compile"]) == ("dp", [-1, 1], False)
    assert "Input convention (DP's image policy): rgb (B*To, 3, H, W) in [-1, 1]" in text


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_dp_group_key_is_a_parameter_or_a_known_old_key(name):
    """DP's leftover keys (rgb_model, use_group_norm, imagenet_norm) and input_layout go through the one
    table of old keys; every other key is a named parameter."""
    import inspect

    import yaml

    from dp_sam2.encoders.obs.old_keys import OLD_KEYS

    path = Path(__file__).resolve().parents[1] / "dp_sam2" / "configs" / "obs_encoder" / f"{name}.yaml"
    keys = set(yaml.safe_load(path.read_text())) - {"_target_"}
    params = set(inspect.signature(SAM2ObsEncoder.__init__).parameters)
    assert keys - params == {"rgb_model", "use_group_norm", "imagenet_norm", "input_layout"}
    assert keys - params <= set(OLD_KEYS)


@pytest.mark.parametrize(
    "value, hw",
    [(96, (96, 96)), ([76, 80], (76, 80)), ((3, 4), (3, 4)), ("5,6", (5, 6)), ("7 x 8", (7, 8)), ("[9, 10]", (9, 10))],
)
def test_parse_hw_reads_every_size_form(value, hw):
    from dp_sam2.encoders.obs.inputs import parse_hw

    assert parse_hw(value, "crop_shape") == hw


@pytest.mark.parametrize("value", [0, -3, True, 2.5, [1.5, 2], [1, 2, 3], "a,b", "1,2,3", None, {"h": 1}])
def test_parse_hw_refuses_what_is_not_a_size_and_says_what_came(value):
    from dp_sam2.encoders.obs.inputs import parse_hw

    with pytest.raises((ValueError, TypeError), match=r"crop_shape must be a size: .*got"):
        parse_hw(value, "crop_shape")


@pytest.mark.slow
def test_imagenet_input_range_is_used_as_it_comes(ckpt):
    """LeRobot hands ImageNet-normalised images; SAM 2 normalises with the same mean/std."""
    from dp_sam2.encoders.obs.inputs import SAM2_MEAN, SAM2_STD, resize

    unit = make_encoder(ckpt, input_range=[0, 1]).eval()
    imagenet = make_encoder(ckpt, input_range="imagenet").eval()
    obs = obs_for(PUSHT)
    img01 = (obs["image"] + 1) / 2
    normed = (img01 - torch.tensor(SAM2_MEAN).view(1, 3, 1, 1)) / torch.tensor(SAM2_STD).view(1, 3, 1, 1)
    assert torch.equal(imagenet.preprocess(normed), resize(normed, (SIZE, SIZE)))  # no renormalisation
    assert rel_err(imagenet.preprocess(normed), unit.preprocess(img01)) < 1e-5
    assert rel_err(imagenet(dict(obs, image=normed)), unit(dict(obs, image=img01))) < 1e-5
    assert rel_err(imagenet.encode_images(img01, input_range=[0, 1]), unit.encode_images(img01)) < 1e-5
    with pytest.raises(ValueError, match=r"'image' must be images \(B, 3, 96, 96\) in imagenet"):
        imagenet(dict(obs, image=torch.zeros(4, 3, 84, 84)))
    with pytest.raises(ValueError, match="or imagenet"):
        make_encoder(ckpt, input_range="imagenet_norm")


# ----------------------------------------------------------------------------- compile: true
@pytest.mark.slow
def test_compiled_backbone_equals_eager_and_survives_copies(ckpt):
    """compile=true: the backbone runs through torch.compile (inductor); state_dict keys do not
    change, and DP's deepcopy (EMA) and dill pickling (checkpoints) work."""
    import dill

    eager = make_encoder(ckpt, feature_dim=32).eval()
    comp = make_encoder(ckpt, feature_dim=32, compile=True).eval()
    assert list(comp.state_dict()) == list(eager.state_dict())
    obs = obs_for(PUSHT, batch=2)
    with torch.no_grad():
        ref = eager(obs)
        out = comp(obs)
    assert "_compiled" in comp.backbone.__dict__  # it did run compiled
    assert rel_err(out, ref) <= 1e-4
    assert not any("_orig_mod" in k for k in comp.state_dict()) and list(comp.state_dict()) == list(eager.state_dict())
    ema = copy.deepcopy(comp)
    assert "_compiled" not in ema.backbone.__dict__ and ema.use_compile  # compiles its own on first use
    back = dill.loads(dill.dumps(comp))
    assert "_compiled" not in back.backbone.__dict__ and list(back.state_dict()) == list(eager.state_dict())
    with torch.no_grad():
        assert rel_err(ema(obs), ref) <= 1e-4
        assert rel_err(back(obs), ref) <= 1e-4

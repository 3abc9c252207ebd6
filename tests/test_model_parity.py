"""Parity of our SAM 2 with the official implementation (PyPI sam2==1.1.0 = facebookresearch/sam2
HEAD), on the same perturbed random weights, fp32 on CPU: the image encoder path
(forward_image + _prepare_backbone_features) and the SAM heads (prompt encoder + mask decoder).

How the references are made: tests/conftest.py `build_official` builds the official model with its
own random init and perturbs every tensor by N(0, 0.05^2) with a fixed seed; the state dict is
saved in the official {"model": ...} format and loaded into ours through `build_sam2`.
"""

from __future__ import annotations

import pytest
import torch

from conftest import build_official, rel_err, requires_official, save_official_checkpoint
from dp_sam2 import build_sam2
from dp_sam2.encoders.sam2.linear import BACKENDS, linear_backend

pytestmark = requires_official

CASES = [
    ("configs/sam2/sam2_hiera_t.yaml", 256),
    ("configs/sam2.1/sam2.1_hiera_t.yaml", 512),
    ("configs/sam2/sam2_hiera_b+.yaml", 256),
    ("configs/sam2.1/sam2.1_hiera_s.yaml", 224),
]


def _case_id(config: str, size: int) -> str:
    return f"{config.split('/')[-1].removesuffix('.yaml')}@{size}"


# the first case in the quick loop, the others in the full run
PAIR_PARAMS = [
    pytest.param((c, s), id=_case_id(c, s), marks=() if i == 0 else pytest.mark.slow) for i, (c, s) in enumerate(CASES)
]


@pytest.fixture(scope="module", params=PAIR_PARAMS)
def pair(request, tmp_path_factory):
    config, size = request.param
    official = build_official(config, image_size=size, seed=1)
    path = save_official_checkpoint(official, tmp_path_factory.mktemp("p") / "ckpt.pt")
    ours = build_sam2(config, ckpt_path=str(path), device="cpu", hydra_overrides_extra=[f"++model.image_size={size}"])
    return official, ours, size


def _packed_fp32(trunk) -> bool:
    """Whether the trunk's fast route ran oneDNN on packed fp32 weights (the "onednn" backend)."""
    return bool(trunk.fast_route.packed_fp32())


# one small case per backend in the quick loop, every case per backend in the full run
BACKEND_CASES = [
    pytest.param(c, s, b, id=f"{_case_id(c, s)}-{b}", marks=() if i == 0 else pytest.mark.slow)
    for i, (c, s) in enumerate(CASES)
    for b in BACKENDS
]


@torch.no_grad()
@pytest.mark.parametrize("config,size,backend", BACKEND_CASES)
def test_image_encoder_per_backend(tmp_path, config, size, backend):
    """forward_image + _prepare_backbone_features on the fast route with each linear backend,
    named whatever this machine's default (the backend is chosen when the model is built)."""
    official = build_official(config, image_size=size, seed=1)
    path = save_official_checkpoint(official, tmp_path / "ckpt.pt")
    with linear_backend(backend):
        ours = build_sam2(
            config, ckpt_path=str(path), device="cpu", hydra_overrides_extra=[f"++model.image_size={size}"]
        )
    trunk = ours.image_encoder.trunk
    assert trunk.fast_route.backend == backend
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    ref, got = _features(official, x), _features(ours, x)
    assert _packed_fp32(trunk) == (backend == "onednn")
    pairs = [(got[0]["vision_features"], ref[0]["vision_features"])]
    pairs += list(zip(got[0]["backbone_fpn"], ref[0]["backbone_fpn"])) + list(zip(got[1] + got[2], ref[1] + ref[2]))
    worst = max(rel_err(a, b) for a, b in pairs)
    assert worst <= 1e-4, f"{backend}: rel_err {worst:.2e}"


@torch.no_grad()
@pytest.mark.parametrize(
    "size,batch,backend",
    [pytest.param(128, 2, b, id=f"tiny@128x2-{b}") for b in BACKENDS]
    + [pytest.param(224, 4, b, id=f"tiny@224x4-{b}", marks=pytest.mark.slow) for b in BACKENDS],
)
def test_dp_features_per_backend(tmp_path, monkeypatch, size, batch, backend):
    """The Diffusion Policy obs encoder's features (DP's [-1, 1] images in) against the official
    SAM2Transforms + forward_image + no_mem_embed, with each linear backend."""
    from sam2.utils.transforms import SAM2Transforms

    from dp_sam2 import SAM2ObsEncoder
    from dp_sam2.encoders.sam2.hiera import Hiera

    config = "configs/sam2.1/sam2.1_hiera_t.yaml"
    official = build_official(config, image_size=size, seed=2)
    path = save_official_checkpoint(official, tmp_path / "sam2.1_hiera_tiny.pt")
    meta = {"obs": {"image": {"shape": [3, 100, 120], "type": "rgb"}}, "action": {"shape": [2]}}
    with linear_backend(backend):
        enc = SAM2ObsEncoder(meta, model_cfg=config, checkpoint=str(path), image_size=size).eval()
    trunks = [m for m in enc.modules() if isinstance(m, Hiera)]
    assert trunks and all(t.fast_route.backend == backend for t in trunks)
    img = torch.rand(batch, 3, 100, 120, generator=torch.Generator().manual_seed(0))
    ref_in = torch.stack([SAM2Transforms(size, 0.0).transforms(im) for im in img])
    _, feats, _, sizes = official._prepare_backbone_features(official.forward_image(ref_in))
    ref = (feats[-1] + official.no_mem_embed).permute(1, 2, 0).reshape(batch, 256, *sizes[-1])
    got = enc.encode_images(img * 2 - 1)
    assert all(_packed_fp32(t) == (backend == "onednn") for t in trunks)
    assert rel_err(got, ref) <= 1e-4, f"{backend}: rel_err {rel_err(got, ref):.2e}"


def _features(model, x):
    out = model.forward_image(x)
    _, feats, pos, sizes = model._prepare_backbone_features(out)
    b = x.shape[0]
    maps = [f.permute(1, 2, 0).reshape(b, -1, *s) for f, s in zip(feats, sizes)]
    return out, feats, pos, sizes, maps


@torch.no_grad()
def test_image_encoder_path(pair):
    official, ours, size = pair
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    ref = _features(official, x)
    got = _features(ours, x)
    assert got[3] == ref[3]  # feat sizes
    for key in ("vision_features",):
        assert rel_err(got[0][key], ref[0][key]) <= 1e-4
    for a, b in zip(got[0]["backbone_fpn"], ref[0]["backbone_fpn"]):
        assert rel_err(a, b) <= 1e-4
    for a, b in zip(got[1] + got[2], ref[1] + ref[2]):
        assert rel_err(a, b) <= 1e-4


@torch.no_grad()
@pytest.mark.parametrize("multimask", [False, True])
def test_sam_heads(pair, multimask):
    official, ours, size = pair
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(2, 3, size, size, generator=gen)
    *_, maps_ref = _features(official, x)
    *_, maps = _features(ours, x)
    points = {
        "point_coords": torch.rand(2, 3, 2, generator=gen) * size,
        "point_labels": torch.tensor([[1, 0, 1], [1, 1, -1]], dtype=torch.int32),
    }
    masks = (torch.rand(2, 1, size, size, generator=gen) > 0.5).float()
    for kwargs in (
        {"point_inputs": points},
        {"mask_inputs": masks},
        {"point_inputs": points, "mask_inputs": torch.randn(2, 1, size // 4, size // 4, generator=gen)},
        {},
    ):
        ref = official._forward_sam_heads(
            maps_ref[-1], high_res_features=maps_ref[:-1], multimask_output=multimask, **kwargs
        )
        got = ours._forward_sam_heads(maps[-1], high_res_features=maps[:-1], multimask_output=multimask, **kwargs)
        assert len(got) == 7
        for a, b in zip(got, ref):
            assert rel_err(a, b) <= 1e-4, kwargs.keys()
    ref = official._use_mask_as_output(maps_ref[-1], maps_ref[:-1], masks)
    got = ours._use_mask_as_output(maps[-1], maps[:-1], masks)
    for a, b in zip(got, ref):
        assert rel_err(a, b) <= 1e-4


@torch.no_grad()
@pytest.mark.parametrize("num_ptr_tokens", [0, 16])
def test_memory_attention_and_encoder(pair, num_ptr_tokens):
    """The memory modules alone: memory encoder on a mask, memory attention over two frames of
    memories plus object-pointer tokens (not rotated), and the RoPE grid of the current size."""
    official, ours, size = pair
    g = torch.Generator().manual_seed(3)
    side = size // 16
    pix = torch.randn(1, 256, side, side, generator=g)
    mask = torch.randn(1, 1, size, size, generator=g) * 5
    ref_mem = official.memory_encoder(pix, mask, skip_mask_sigmoid=False)
    got_mem = ours.memory_encoder(pix, mask, skip_mask_sigmoid=False)
    assert rel_err(got_mem["vision_features"], ref_mem["vision_features"]) <= 1e-4
    assert rel_err(got_mem["vision_pos_enc"][0], ref_mem["vision_pos_enc"][0]) <= 1e-4

    mem_dim = ref_mem["vision_features"].shape[1]
    hw = side * side
    curr = torch.randn(hw, 1, 256, generator=g)
    curr_pos = torch.randn(hw, 1, 256, generator=g)
    memory = torch.randn(2 * hw + num_ptr_tokens, 1, mem_dim, generator=g)
    memory_pos = torch.randn(2 * hw + num_ptr_tokens, 1, mem_dim, generator=g)
    args = dict(
        curr=[curr], curr_pos=[curr_pos], memory=memory, memory_pos=memory_pos, num_obj_ptr_tokens=num_ptr_tokens
    )
    ref = official.memory_attention(**{k: (v.clone() if torch.is_tensor(v) else v) for k, v in args.items()})
    got = ours.memory_attention(**args)
    assert got.shape == ref.shape == (hw, 1, 256)
    assert rel_err(got, ref) <= 1e-4

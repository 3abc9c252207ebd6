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

pytestmark = requires_official

CASES = [
    ("configs/sam2/sam2_hiera_t.yaml", 256),
    ("configs/sam2.1/sam2.1_hiera_t.yaml", 512),
    ("configs/sam2/sam2_hiera_b+.yaml", 256),
    ("configs/sam2.1/sam2.1_hiera_s.yaml", 224),
]


@pytest.fixture(scope="module", params=CASES, ids=[f"{c.split('/')[-1]}@{s}" for c, s in CASES])
def pair(request, tmp_path_factory):
    config, size = request.param
    official = build_official(config, image_size=size, seed=1)
    path = save_official_checkpoint(official, tmp_path_factory.mktemp("p") / "ckpt.pt")
    ours = build_sam2(config, ckpt_path=str(path), device="cpu", hydra_overrides_extra=[f"++model.image_size={size}"])
    return official, ours, size


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

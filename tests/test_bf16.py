"""bf16 beyond autocast: under ``torch.autocast(<device>, bfloat16)`` the fast route runs the trunk in
bf16 on weight copies made once (never in state_dict, rebuilt when the weights change); features stay
close to the official fp32 and to plain autocast; training under autocast gives fp32-like gradients."""

from __future__ import annotations

import copy
import tempfile
from pathlib import Path

import pytest
import torch

from conftest import build_official, rel_err, requires_official, save_official_checkpoint
from dp_sam2 import build_sam2


def _cos(a, b) -> float:
    return torch.nn.functional.cosine_similarity(a.float().flatten(), b.float().flatten(), dim=0).item()


def _encode(model, x, bf16: bool):
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        _, feats, pos, _ = model._prepare_backbone_features(model.forward_image(x))
    return feats, pos


def _perturbed_tiny(size: int):
    torch.manual_seed(0)
    model = build_sam2("sam2.1_tiny", device="cpu", hydra_overrides_extra=[f"++model.image_size={size}"])
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


@requires_official
def test_bf16_features_close_to_official_fp32_and_plain_autocast():
    """The check's call: an fp32-built model, forward_image + _prepare_backbone_features under bf16
    autocast inside inference_mode."""
    config = "configs/sam2.1/sam2.1_hiera_t.yaml"
    official = build_official(config, image_size=224, seed=3)
    with tempfile.TemporaryDirectory() as tmp:
        path = save_official_checkpoint(official, Path(tmp) / "ckpt.pt")
        ours = build_sam2(config, ckpt_path=str(path), device="cpu", hydra_overrides_extra=["++model.image_size=224"])
    trunk = ours.image_encoder.trunk
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        ref, _ = _encode(official, x, bf16=False)
        off_bf16, off_pos = _encode(official, x, bf16=True)
        got, got_pos = _encode(ours, x, bf16=True)
        assert trunk.fast_route.weight_copies, "the bf16 route did not run"
        trunk.set_inference_route("reference")
        plain, _ = _encode(ours, x, bf16=True)  # plain autocast over the reference blocks
    assert [t.dtype for t in got] == [t.dtype for t in off_bf16]  # the official's dtypes under autocast
    assert [t.dtype for t in got_pos] == [t.dtype for t in off_pos]
    for g, r, p in zip(got, ref, plain):
        assert _cos(g, r) >= 0.999
        assert _cos(g, p) >= 0.9995
    assert all(v.dtype == torch.float32 for v in ours.state_dict().values() if v.is_floating_point())
    assert not any("fast_route" in k or "weight_copies" in k for k in ours.state_dict())


@pytest.mark.slow
def test_bf16_weight_copies_follow_the_weights():
    model = _perturbed_tiny(128)
    trunk = model.image_encoder.trunk
    x = torch.randn(1, 3, 128, 128, generator=torch.Generator().manual_seed(1))
    saved = copy.deepcopy(model.state_dict())
    with torch.inference_mode():
        first, _ = _encode(model, x, bf16=True)
    cache = trunk.fast_route.weight_copies
    copies = {k: v[2] for k, v in cache.items()}
    assert copies and set(model.state_dict()) == set(saved)
    with torch.inference_mode():
        again, _ = _encode(model, x, bf16=True)
    assert all(cache[k][2] is v for k, v in copies.items())  # made once, reused
    assert all(rel_err(a, b) == 0 for a, b in zip(again, first))
    with torch.no_grad():  # an in-place update (as an optimizer step makes) of every trunk weight
        for p in trunk.parameters():
            p.mul_(1.1)
    fresh = _perturbed_tiny(128)
    fresh.load_state_dict(model.state_dict())
    with torch.inference_mode():
        updated, _ = _encode(model, x, bf16=True)
        want, _ = _encode(fresh, x, bf16=True)
    assert all(rel_err(a, b) <= 1e-6 for a, b in zip(updated, want))
    assert max(rel_err(a, b) for a, b in zip(updated, first)) > 1e-2
    model.load_state_dict(saved)
    with torch.inference_mode():
        back, _ = _encode(model, x, bf16=True)
    assert all(rel_err(a, b) <= 1e-6 for a, b in zip(back, first))
    clone = copy.deepcopy(trunk)  # EMA copies / pickles carry the route, not its caches
    assert clone.fast_route is not trunk.fast_route and not clone.fast_route.weight_copies
    assert clone.fast_route.backend == trunk.fast_route.backend


def _obs_encoder(monkeypatch, **kwargs):
    from dp_sam2 import SAM2ObsEncoder

    monkeypatch.setenv("DP_SAM2_ALLOW_MISSING_CHECKPOINT", "1")
    meta = {"obs": {"image": {"shape": [3, 64, 64], "type": "rgb"}}, "action": {"shape": [2]}}
    with pytest.warns(UserWarning):
        enc = SAM2ObsEncoder(
            meta, model_cfg="sam2_tiny", checkpoint="missing/sam2_hiera_tiny.pt", image_size=64, **kwargs
        )
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in enc.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.05)
    return enc


@pytest.mark.slow
@pytest.mark.parametrize("mode", [{"freeze": False}, {"freeze": False, "lora_rank": 4}], ids=["finetune", "lora"])
def test_training_under_bf16_autocast(monkeypatch, mode):
    """Gradients under bf16 autocast (what accelerate --mixed_precision bf16 does) are close to fp32,
    and after an optimizer step the eval forward (bf16 weight copies) sees the new weights."""
    enc = _obs_encoder(monkeypatch, **mode)
    obs = {"image": torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(2)) * 2 - 1}
    params = [p for p in enc.parameters() if p.requires_grad]
    grads = {}
    for bf16 in (False, True):
        enc.train()
        enc.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = enc(obs)
        (out.float() ** 2).mean().backward()
        grads[bf16] = torch.cat([p.grad.flatten() for p in params])
    assert grads[False].abs().max() > 0
    assert _cos(grads[True], grads[False]) >= 0.99
    enc.eval()
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        before = enc(obs)
    torch.optim.SGD(params, lr=10.0).step()
    fresh = copy.deepcopy(enc)  # the copy has no caches: its bf16 weights are made afresh
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        after = enc(obs)
        want = fresh(obs)
    assert rel_err(after, want) <= 1e-6
    assert rel_err(after, before) > 1e-3


@pytest.mark.slow
def test_bf16_route_compiles_without_graph_breaks():
    model = _perturbed_tiny(64)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        want, _ = _encode(model, x, bf16=True)
        got, _ = torch.compile(lambda t: _encode(model, t, bf16=True), backend="eager", fullgraph=True)(x)
    assert [t.dtype for t in got] == [t.dtype for t in want]
    assert all(_cos(a, b) >= 0.999 for a, b in zip(got, want)), [_cos(a, b) for a, b in zip(got, want)]

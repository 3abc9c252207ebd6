"""The encoder's inference fast paths (oneDNN fused linears, chunked windows, windows passed
along between blocks) give the same numbers as the plain reference path used under autograd, and
the encoder compiles without graph breaks."""
from __future__ import annotations

import pytest
import torch

import dp_sam2.encoders.sam2.linear as common
from conftest import rel_err
from dp_sam2 import build_sam2


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    model = build_sam2("sam2.1_tiny", device="cpu", hydra_overrides_extra=["++model.image_size=512"])
    with torch.no_grad():  # random init has near-zero layer scales etc.: perturb so every path matters
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


def _encode(model, x):
    out = model.forward_image(x)
    _, feats, pos, _ = model._prepare_backbone_features(out)
    return feats + pos


@pytest.mark.parametrize("size", [224, 512])  # 224: windows tile the maps; 512: stage 3 pads
def test_inference_path_equals_reference_path(tiny, size, monkeypatch):
    tiny.image_size = size
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        monkeypatch.setattr(common, "USE_ONEDNN_LINEAR", True)
        fast = _encode(tiny, x)
        monkeypatch.setattr(common, "USE_ONEDNN_LINEAR", False)
        chunked_plain = _encode(tiny, x)
        monkeypatch.setattr(common, "USE_ONEDNN_LINEAR", "auto")  # tuned per shape
        monkeypatch.setattr(common, "_tuned", {})
        tuned = [_encode(tiny, x) for _ in range(2 * common._TUNE_CALLS + 1)]
        assert all(isinstance(v, bool) for v in common._tuned.values())
    reference = [t.detach() for t in _encode(tiny, x)]  # autograd on: the unchunked block code
    assert [t.shape for t in fast] == [t.shape for t in reference]
    for a, b, c in zip(fast, chunked_plain, reference):
        assert rel_err(b, c) <= 1e-5
        assert rel_err(a, c) <= 1e-5
    for run in tuned:  # while tuning (paths alternate) and after
        for a, c in zip(run, reference):
            assert rel_err(a, c) <= 1e-5


def test_fused_linear_matches_plain_ops(monkeypatch):
    monkeypatch.setattr(common, "USE_ONEDNN_LINEAR", True)
    layer = torch.nn.Linear(48, 96)
    x = torch.randn(3, 5, 48)
    res = torch.randn(3, 5, 96)
    with torch.no_grad():
        assert rel_err(common.fused_linear(x, layer), layer(x)) <= 1e-6
        assert rel_err(common.fused_linear(x, layer, gelu=True), torch.nn.functional.gelu(layer(x))) <= 1e-6
        assert rel_err(common.fused_linear(x, layer, residual=res), res + layer(x)) <= 1e-6
    with pytest.raises(ValueError, match="gelu or residual"):
        common.fused_linear(x, layer, gelu=True, residual=res)


@pytest.mark.parametrize("onednn_faster", [True, False])
def test_linear_backend_tuned_per_shape(monkeypatch, onednn_faster):
    """``USE_ONEDNN_LINEAR = "auto"``: a shape's first calls alternate between MKL's addmm path and
    oneDNN's fused path, timing each; then the faster is kept. Every call returns the right numbers."""
    monkeypatch.setattr(common, "USE_ONEDNN_LINEAR", "auto")
    monkeypatch.setattr(common, "_tuned", {})
    used = []
    plain, onednn = common._linear_plain, common._linear_onednn
    monkeypatch.setattr(common, "_linear_plain", lambda *a: (used.append("plain"), plain(*a))[1])
    monkeypatch.setattr(common, "_linear_onednn", lambda *a: (used.append("onednn"), onednn(*a))[1])
    now = [0.0]

    def fake_clock():  # each timed call of the path meant to win takes 1 s, the other 2 s
        if used:
            now[0] += 1.0 if (used[-1] == "onednn") == onednn_faster else 2.0
        return now[0]

    monkeypatch.setattr(common, "_clock", fake_clock)
    layer = torch.nn.Linear(32, 64)
    x, res = torch.randn(7, 32), torch.randn(7, 64)
    with torch.no_grad():
        for _ in range(2 * common._TUNE_CALLS + 3):
            assert rel_err(common.fused_linear(x, layer, gelu=True), torch.nn.functional.gelu(layer(x))) <= 1e-6
        key = next(iter(common._tuned))
        assert common._tuned[key] is onednn_faster
        tuning, after = used[: 2 * common._TUNE_CALLS], used[2 * common._TUNE_CALLS:]
        assert tuning.count("plain") == tuning.count("onednn") == common._TUNE_CALLS
        assert set(after) == {"onednn" if onednn_faster else "plain"}
        # more rows: the same layer keeps its path (no switch with the batch size)
        used.clear()
        common.fused_linear(torch.randn(40, 32), layer, gelu=True)
        assert used == after[:1] and len(common._tuned) == 1
        # the residual form (or another layer shape) is tuned on its own
        assert rel_err(common.fused_linear(x, layer, residual=res), res + layer(x)) <= 1e-6
        common.fused_linear(torch.randn(7, 64), torch.nn.Linear(64, 64))
        assert len(common._tuned) == 3
    with torch.enable_grad():  # autograd never goes through the fast paths
        used.clear()
        y = common.fused_linear(x, layer, gelu=True)
        assert y.requires_grad and used == ["plain"]
    monkeypatch.setattr(common, "USE_ONEDNN_LINEAR", "fast")
    with torch.no_grad(), pytest.raises(ValueError, match="False, True or 'auto', got 'fast'"):
        common.fused_linear(x, layer)


@pytest.mark.parametrize("grad", [False, True])
def test_encoder_compiles_without_graph_breaks(tiny, grad):
    tiny.image_size = 128
    x = torch.randn(1, 3, 128, 128)
    compiled = torch.compile(lambda t: _encode(tiny, t), backend="eager", fullgraph=True)
    with torch.set_grad_enabled(grad):
        got = compiled(x)
        want = _encode(tiny, x)
    for a, b in zip(got, want):
        assert rel_err(a.detach(), b.detach()) <= 1e-5


def test_bf16_autocast_stays_close(tiny):
    tiny.image_size = 224
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref = _encode(tiny, x)[2]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = _encode(tiny, x)[2]
    cos = torch.nn.functional.cosine_similarity(low.float().flatten(), ref.flatten(), dim=0)
    assert cos >= 0.999


@pytest.mark.parametrize("train", [False, True])
def test_obs_encoder_compiles_without_graph_breaks(train, monkeypatch):
    from dp_sam2 import SAM2ObsEncoder

    monkeypatch.setenv("DP_SAM2_ALLOW_MISSING_CHECKPOINT", "1")
    meta = {"obs": {"image": {"shape": [3, 96, 96], "type": "rgb"},
                    "agent_pos": {"shape": [2], "type": "low_dim"}}, "action": {"shape": [2]}}
    with pytest.warns(UserWarning):
        enc = SAM2ObsEncoder(meta, model_cfg="sam2_tiny", checkpoint="missing/sam2_hiera_tiny.pt", image_size=64)
    enc.train(train)
    torch.manual_seed(0)
    obs = {"image": torch.rand(4, 3, 96, 96) * 2 - 1, "agent_pos": torch.randn(4, 2)}
    want = enc(obs)
    got = torch.compile(enc, backend="eager", fullgraph=True)(obs)
    assert got.shape == want.shape == (4, 258)
    assert rel_err(got.detach(), want.detach()) <= 1e-5  # no crop_shape: training is deterministic
    if train:
        got.sum().backward()
        assert any(p.grad is not None for p in enc.heads.parameters())

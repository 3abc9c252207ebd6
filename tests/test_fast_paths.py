"""Hiera's fast inference route (hiera_fast: window groups, padded windows, chunked MLP, windows
passed between blocks) and its linear backends give the reference route's numbers; the settings are
per trunk; the encoder compiles without graph breaks. Each test builds its own model."""

from __future__ import annotations

import pytest
import torch

from conftest import rel_err
from dp_sam2 import build_sam2
from dp_sam2.encoders.sam2 import hiera_fast
from dp_sam2.encoders.sam2.linear import (
    NARROW,
    LinearBackend,
    linear_act_residual,
    linear_backend,
    machine_default_backend,
    onednn_bf16,
    pack_weight,
)


def _tiny(image_size: int = 512):
    torch.manual_seed(0)
    model = build_sam2("sam2.1_tiny", device="cpu", hydra_overrides_extra=[f"++model.image_size={image_size}"])
    with torch.no_grad():  # random init has near-zero layer scales etc.: perturb so every path matters
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


def _encode(model, x):
    out = model.forward_image(x)
    _, feats, pos, _ = model._prepare_backbone_features(out)
    return feats + pos


def _trunk(model):
    return model.image_encoder.trunk


@pytest.mark.parametrize("size", [224, 384])  # 224: windows tile every map; 384: stages 3-4 pad
def test_fast_route_equals_reference_route(size):
    model = _tiny(size)
    trunk = _trunk(model)
    x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        trunk.set_inference_route("reference")
        reference = _encode(model, x)
        trunk.set_inference_route("fast")
        runs = {}
        for name in ("mkl", "onednn", "mixed"):
            trunk.set_linear_backend(name)
            runs[name] = [_encode(model, x)]
        if size == 224:  # "auto" at one size: it alternates the two above while it tunes
            trunk.set_linear_backend("auto")
            runs["auto"] = [_encode(model, x) for _ in range(2 * LinearBackend.TUNE_CALLS + 1)]
            assert trunk.linear.settled() and trunk.linear.choices
    with torch.enable_grad():  # autograd: the fast-route trunk falls back to the reference blocks
        autograd = [t.detach() for t in _encode(model, x)]
    for name, per_run in runs.items():
        for run in per_run:  # for "auto": while tuning (backends alternate) and after
            assert [t.shape for t in run] == [t.shape for t in reference]
            for a, c in zip(run, reference):
                assert rel_err(a, c) <= 1e-5, name
    for a, c in zip(autograd, reference):
        assert rel_err(a, c) <= 1e-6


def test_route_is_a_setting_not_grad_mode(monkeypatch):
    model = _tiny(128)
    trunk = _trunk(model)
    calls = []
    fast = hiera_fast.forward_trunk
    monkeypatch.setattr(hiera_fast, "forward_trunk", lambda *a: (calls.append(1), fast(*a))[1])
    x = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        _encode(model, x)
        assert calls == [1]  # the default of a built model
        trunk.set_inference_route("reference")
        _encode(model, x)  # no autograd, yet the reference blocks
        assert calls == [1]
    trunk.set_inference_route("fast")
    model.requires_grad_(False)
    _encode(model, x)  # grad mode on, but nothing needs a graph: still fast
    assert calls == [1, 1]
    model.requires_grad_(True)
    out = _encode(model, x)
    assert calls == [1, 1] and out[0].requires_grad  # a graph is needed: reference route
    with pytest.raises(ValueError, match=r"inference_route must be one of \('fast', 'reference'\), got 'quick'"):
        trunk.set_inference_route("quick")


def test_linear_backend_is_per_trunk_with_a_default_context():
    with linear_backend("onednn"):
        inside = _tiny(64)
    outside = _tiny(64)
    assert _trunk(inside).linear.name == "onednn"
    assert _trunk(outside).linear.name == machine_default_backend()
    _trunk(outside).set_linear_backend("auto")
    assert _trunk(inside).linear.name == "onednn" and _trunk(outside).linear.name == "auto"
    want = r"linear backend must be one of \('mkl', 'onednn', 'mixed', 'auto'\), got 'fast'"
    with pytest.raises(ValueError, match=want):
        _trunk(outside).set_linear_backend("fast")
    with pytest.raises(ValueError, match="got True"), linear_backend(True):
        pass


def test_linear_act_residual_matches_plain_ops():
    layer = torch.nn.Linear(48, 96)
    x = torch.randn(3, 5, 48)
    res = torch.randn(3, 5, 96)
    w, b = layer.weight, layer.bias
    for name in ("mkl", "onednn", "mixed"):
        backend = LinearBackend(name)
        with torch.no_grad():
            assert rel_err(linear_act_residual(x, w, b, backend=backend), layer(x)) <= 1e-6
            want = torch.nn.functional.gelu(layer(x))
            assert rel_err(linear_act_residual(x, w, b, gelu=True, backend=backend), want) <= 1e-6
            assert rel_err(linear_act_residual(x, w, b, residual=res, backend=backend), res + layer(x)) <= 1e-6
            out = torch.empty(3, 5, 96)
            linear_act_residual(x, w, b, residual=res, out=out, backend=backend)
            assert rel_err(out, res + layer(x)) <= 1e-6
            no_bias = linear_act_residual(x, w, None, residual=res, backend=backend)
            assert rel_err(no_bias, res + x @ w.T) <= 1e-6
            packed = pack_weight(w, torch.float32)  # the fast route's packed fp32 copy: oneDNN only
            assert rel_err(linear_act_residual(x, packed, b, gelu=True, backend=backend), want) <= 1e-6
            assert rel_err(linear_act_residual(x, packed, b, residual=res, backend=backend), res + layer(x)) <= 1e-6
            # a broadcast residual, a permuted one, an out= with gaps: still the plain sum
            row = res[:1, :1]
            assert rel_err(linear_act_residual(x, w, b, residual=row, backend=backend), row + layer(x)) <= 1e-6
            permuted = res.transpose(0, 1).contiguous().transpose(0, 1)
            assert rel_err(linear_act_residual(x, w, b, residual=permuted, backend=backend), res + layer(x)) <= 1e-6
            gappy = torch.empty(3, 5, 192)[..., ::2]
            linear_act_residual(x, w, b, residual=res, out=gappy, backend=backend)
            assert rel_err(gappy, res + layer(x)) <= 1e-6
    with pytest.raises(ValueError, match="gelu or residual"):
        linear_act_residual(x, w, b, gelu=True, residual=res)
    with pytest.raises(ValueError, match="into out only with a residual"):
        linear_act_residual(x, w, b, out=res)


@pytest.mark.skipif(not onednn_bf16(), reason="this CPU's oneDNN has no bf16 kernels (AVX2: no AVX512-BW/VL/DQ)")
def test_linear_act_residual_on_packed_bf16_weights():
    """The bf16 route's packed weights: the GEMM, then the add (into out or not)."""
    layer = torch.nn.Linear(48, 96)
    x, res = torch.randn(3, 5, 48).bfloat16(), torch.randn(3, 5, 96).bfloat16()
    with torch.no_grad():
        packed, b = pack_weight(layer.weight), layer.bias.bfloat16()
        want = (res.float() + layer(x.float())).bfloat16().float()
        assert rel_err(linear_act_residual(x, packed, b, residual=res).float(), want) <= 1e-2
        out = torch.empty(3, 5, 96, dtype=torch.bfloat16)
        linear_act_residual(x, packed, b, residual=res, out=out)
        assert rel_err(out.float(), want) <= 1e-2
        assert (
            rel_err(linear_act_residual(x, packed, b, gelu=True).float(), torch.nn.functional.gelu(layer(x.float())))
            <= 2e-2
        )


def test_bf16_route_without_onednn_bf16_kernels(monkeypatch):
    """On a CPU whose oneDNN has no bf16 kernels (AVX2), the bf16 route keeps plain bf16 weight
    copies (packing would raise there), stays close to fp32 and warns that fp32 is faster there."""
    from dp_sam2.encoders.sam2 import linear

    model = _tiny(64)
    trunk = model.image_encoder.trunk
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        ref = model.forward_image(x)["vision_features"]
        for module in (linear, hiera_fast):
            monkeypatch.setattr(module, "onednn_bf16", lambda: False)
        trunk.clear_caches()
        with torch.autocast("cpu", dtype=torch.bfloat16), pytest.warns(UserWarning, match="5x slower than fp32"):
            got = model.forward_image(x)["vision_features"]
    bf16_copies = [v[2] for k, v in trunk._lowp_cache.items() if k[1] == torch.bfloat16]
    assert bf16_copies and not any(c.is_mkldnn for c in bf16_copies)
    assert torch.nn.functional.cosine_similarity(got.float().flatten(), ref.flatten(), dim=0) >= 0.999


def test_machine_default_backend_per_cpu_class(monkeypatch):
    """``"onednn"`` on AVX-512 and AVX2 CPUs (measured on both), MKL on the rest."""
    for capability, want in (
        ("AVX512", "onednn"),
        ("AVX512_BF16", "onednn"),
        ("AVX2", "onednn"),
        ("DEFAULT", "mkl"),
        ("SVE256", "mkl"),
    ):
        monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda c=capability: c)
        assert machine_default_backend() == want, capability
        assert LinearBackend().name == want


def test_mixed_and_onednn_pack_fp32_weights_once():
    """``"mixed"`` packs the narrow layers' fp32 weights (no residual) for oneDNN, ``"onednn"`` all of
    them; the copies are made once, kept apart from the bf16 ones, and never saved."""
    model = _tiny(64)
    trunk = _trunk(model)
    keys = set(model.state_dict())
    x = torch.randn(1, 3, 64, 64)
    linears = {id(m.weight): m for m in trunk.modules() if isinstance(m, torch.nn.Linear)}
    for name in ("mkl", "mixed", "onednn"):
        trunk.clear_caches()
        trunk.set_linear_backend(name)
        with torch.no_grad():
            _encode(model, x)
            packed = {k[0] for k, v in trunk._lowp_cache.items() if k[1:] == (torch.float32, True)}
            first = {k: v[2] for k, v in trunk._lowp_cache.items()}
            _encode(model, x)
            assert all(trunk._lowp_cache[k][2] is v for k, v in first.items())  # reused, not rebuilt
        assert all(trunk._lowp_cache[(i, torch.float32, True)][2].is_mkldnn for i in packed)
        residual_layers = {id(b.attn.proj.weight) for b in trunk.blocks} | {
            id(b.mlp.layers[1].weight) for b in trunk.blocks
        }
        if name == "mkl":
            assert not packed
        elif name == "mixed":
            want = {i for i, m in linears.items() if min(m.weight.shape) <= NARROW and i not in residual_layers}
            assert packed == want and want
        else:
            assert packed == set(linears)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        _encode(model, x)  # bf16 copies join the fp32 ones instead of replacing them
    dtypes = {k[1] for k in trunk._lowp_cache}
    assert dtypes == {torch.float32, torch.bfloat16}
    assert set(model.state_dict()) == keys
    trunk.set_linear_backend("mkl")  # switching drops the packed fp32 copies (their memory), keeps the bf16 ones
    assert not any(k[1:] == (torch.float32, True) for k in trunk._lowp_cache)
    assert any(k[1] == torch.bfloat16 for k in trunk._lowp_cache)


@pytest.mark.parametrize("onednn_faster", [True, False])
def test_auto_backend_tuned_per_shape(monkeypatch, onednn_faster):
    """``"auto"``: a shape's first calls alternate between MKL's addmm and oneDNN's fused linear,
    timing each; then the faster is kept. Every call returns the right numbers."""
    import dp_sam2.encoders.sam2.linear as linear

    used = []
    mkl, onednn = linear._mkl, linear._onednn
    monkeypatch.setattr(linear, "_mkl", lambda *a: (used.append("mkl"), mkl(*a))[1])
    monkeypatch.setattr(linear, "_onednn", lambda *a: (used.append("onednn"), onednn(*a))[1])
    now = [0.0]

    def fake_clock():  # each timed call of the backend meant to win takes 1 s, the other 2 s
        if used:
            now[0] += 1.0 if (used[-1] == "onednn") == onednn_faster else 2.0
        return now[0]

    backend = LinearBackend("auto", clock=fake_clock)
    layer = torch.nn.Linear(32, 64)
    w, b = layer.weight, layer.bias
    x, res = torch.randn(7, 32), torch.randn(7, 64)
    n = LinearBackend.TUNE_CALLS
    with torch.no_grad():
        for _ in range(2 * n + 3):
            got = linear_act_residual(x, w, b, gelu=True, backend=backend)
            assert rel_err(got, torch.nn.functional.gelu(layer(x))) <= 1e-6
        key = next(iter(backend.choices))
        assert backend.choices[key] is onednn_faster
        tuning, after = used[: 2 * n], used[2 * n :]
        assert tuning.count("mkl") == tuning.count("onednn") == n
        assert set(after) == {"onednn" if onednn_faster else "mkl"}
        used.clear()  # more rows: the same layer keeps its backend (no switch with the batch size)
        linear_act_residual(torch.randn(40, 32), w, b, gelu=True, backend=backend)
        assert used == after[:1] and len(backend.choices) == 1
        # the residual form (or another layer shape) is tuned on its own
        assert rel_err(linear_act_residual(x, w, b, residual=res, backend=backend), res + layer(x)) <= 1e-6
        other = torch.nn.Linear(64, 64)
        linear_act_residual(torch.randn(7, 64), other.weight, other.bias, backend=backend)
        assert len(backend.choices) == 3
        assert LinearBackend("auto").choices == {}  # another module's backend starts afresh
    with torch.enable_grad():  # autograd never goes through oneDNN
        used.clear()
        y = linear_act_residual(x, w, b, gelu=True, backend=backend)
        assert y.requires_grad and used == ["mkl"]


@pytest.mark.slow
@pytest.mark.parametrize("route", ["fast", "reference"])
@pytest.mark.parametrize("grad", [False, True])
def test_encoder_compiles_without_graph_breaks(route, grad):
    model = _tiny(128)
    _trunk(model).set_inference_route(route)
    x = torch.randn(1, 3, 128, 128)
    compiled = torch.compile(lambda t: _encode(model, t), backend="eager", fullgraph=True)
    with torch.set_grad_enabled(grad):
        got = compiled(x)
        want = _encode(model, x)
    _trunk(model).set_inference_route("reference")
    with torch.no_grad():
        reference = _encode(model, x)
    for a, b, c in zip(got, want, reference):
        assert rel_err(a.detach(), b.detach()) <= 1e-5
        assert rel_err(a.detach(), c) <= 1e-5


@pytest.mark.slow
@pytest.mark.parametrize("train", [False, True])
def test_obs_encoder_compiles_without_graph_breaks(train, monkeypatch):
    from dp_sam2 import SAM2ObsEncoder

    monkeypatch.setenv("DP_SAM2_ALLOW_MISSING_CHECKPOINT", "1")
    meta = {
        "obs": {"image": {"shape": [3, 96, 96], "type": "rgb"}, "agent_pos": {"shape": [2], "type": "low_dim"}},
        "action": {"shape": [2]},
    }
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

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
    BACKENDS,
    effective_backend,
    exact_gemm,
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


@pytest.mark.parametrize(
    "size", [224, pytest.param(384, marks=pytest.mark.slow)]
)  # 224: windows tile every map; 384: stages 3-4 pad
def test_fast_route_equals_reference_route(size):
    model = _tiny(size)
    trunk = _trunk(model)
    x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        trunk.set_inference_route("reference")
        reference = _encode(model, x)
        trunk.set_inference_route("fast")
        runs = {}
        for name in BACKENDS:
            trunk.set_linear_backend(name)
            runs[name] = _encode(model, x)
    with torch.enable_grad():  # autograd: the fast-route trunk falls back to the reference blocks
        autograd = [t.detach() for t in _encode(model, x)]
    for name, run in runs.items():
        assert [t.shape for t in run] == [t.shape for t in reference]
        for a, c in zip(run, reference):
            assert rel_err(a, c) <= 1e-5, name
    for a, c in zip(autograd, reference):
        assert rel_err(a, c) <= 1e-6


def test_route_is_a_setting_not_grad_mode(monkeypatch):
    model = _tiny(128)
    trunk = _trunk(model)
    calls = []
    fast = hiera_fast.FastRoute.__call__
    monkeypatch.setattr(hiera_fast.FastRoute, "__call__", lambda *a: (calls.append(1), fast(*a))[1])
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
    trunk.set_inference_route("reference")
    assert trunk.fast_route is None  # the reference route holds no fast-route state


def test_hiera_imports_nothing_of_the_fast_route():
    """hiera.py is the paper's Hiera: importing it loads neither the fast route nor the GEMM
    backends, and its top level names neither (the fast route is imported when a trunk takes it)."""
    import ast
    import subprocess
    import sys

    from dp_sam2.encoders.sam2 import hiera

    tree = ast.parse(open(hiera.__file__).read())
    top = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
    names = {a.name for n in top for a in n.names} | {n.module or "" for n in top if isinstance(n, ast.ImportFrom)}
    assert not names & {"hiera_fast", "linear", "FastRoute"}, names
    code = (
        "import sys; import dp_sam2.encoders.sam2.hiera; "
        "print([m for m in sys.modules if m.endswith(('.hiera_fast', '.linear')) and m.startswith('dp_sam2')])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", out


def test_grad_checkpointing_same_gradients():
    """``Hiera.set_grad_checkpointing``: the trunk recomputes block activations in backward; the
    gradients are the plain ones."""
    model = _tiny(64)
    trunk = _trunk(model)
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    grads = []
    for enable in (False, True):
        assert trunk.set_grad_checkpointing(enable) is trunk and trunk.grad_checkpointing is enable
        trunk.zero_grad()
        sum(t.square().sum() for t in trunk(x)).backward()
        grads.append(torch.cat([p.grad.flatten() for p in trunk.parameters()]))
    assert rel_err(grads[1], grads[0]) <= 1e-6 and grads[0].abs().sum() > 0


def test_linear_backend_is_per_trunk_with_a_default_context():
    with linear_backend("onednn"):
        inside = _tiny(64)
    outside = _tiny(64)
    assert _trunk(inside).linear_backend == _trunk(inside).fast_route.backend == "onednn"
    assert _trunk(outside).linear_backend == machine_default_backend()
    _trunk(outside).set_linear_backend("mkl")
    _trunk(inside).set_inference_route("reference").set_linear_backend("mkl").set_inference_route("fast")
    assert _trunk(inside).fast_route.backend == "mkl"  # kept while on the reference route
    _trunk(inside).set_linear_backend("onednn")
    assert _trunk(inside).fast_route.backend == "onednn" and _trunk(outside).fast_route.backend == "mkl"
    want = r"linear backend must be one of \('mkl', 'onednn'\), got 'mixed'"
    with pytest.raises(ValueError, match=want):
        _trunk(outside).set_linear_backend("mixed")
    want = r"linear backend must be one of \('mkl', 'onednn'\), got 'fast'"
    with pytest.raises(ValueError, match=want):
        _trunk(outside).set_linear_backend("fast")
    with pytest.raises(ValueError, match="got True"), linear_backend(True):
        pass


def test_linear_act_residual_matches_plain_ops():
    layer = torch.nn.Linear(48, 96)
    x = torch.randn(3, 5, 48)
    res = torch.randn(3, 5, 96)
    w, b = layer.weight, layer.bias
    for backend in BACKENDS:
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
    with pytest.raises(ValueError, match="got 'auto'"):
        linear_act_residual(x, w, b, backend="auto")


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
    bf16_copies = [v[2] for k, v in trunk.fast_route.weight_copies.items() if k[1] == torch.bfloat16]
    assert bf16_copies and not any(c.is_mkldnn for c in bf16_copies)
    assert torch.nn.functional.cosine_similarity(got.float().flatten(), ref.flatten(), dim=0) >= 0.999


def test_machine_default_backend_per_cpu_class(monkeypatch):
    """``"mkl"`` on every class: the backend that holds video parity (docs/speed.md)."""
    for capability in ("AVX512", "AVX512_BF16", "AVX512_AMX", "AVX2", "DEFAULT", "SVE256"):
        monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda c=capability: c)
        assert machine_default_backend() == "mkl", capability
        assert hiera_fast.FastRoute().backend == "mkl"


def test_onednn_packs_fp32_weights_once():
    """``"onednn"`` packs every trunk linear's fp32 weight for oneDNN, ``"mkl"`` none; the copies are
    made once, kept apart from the bf16 ones, and never saved."""
    model = _tiny(64)
    trunk = _trunk(model)
    keys = set(model.state_dict())
    x = torch.randn(1, 3, 64, 64)
    linears = {id(m.weight) for m in trunk.modules() if isinstance(m, torch.nn.Linear)}
    for name in BACKENDS:
        trunk.clear_caches()
        trunk.set_linear_backend(name)
        copies = trunk.fast_route.weight_copies
        with torch.no_grad():
            _encode(model, x)
            packed = trunk.fast_route.packed_fp32()
            first = {k: v[2] for k, v in copies.items()}
            _encode(model, x)
            assert all(copies[k][2] is v for k, v in first.items())  # reused, not rebuilt
        assert all(copies[(i, torch.float32, True)][2].is_mkldnn for i in packed)
        assert packed == (linears if name == "onednn" else set())
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        _encode(model, x)  # bf16 copies join the fp32 ones instead of replacing them
    copies = trunk.fast_route.weight_copies
    assert {k[1] for k in copies} == {torch.float32, torch.bfloat16}
    assert set(model.state_dict()) == keys
    trunk.set_linear_backend("mkl")  # switching drops the packed fp32 copies (their memory), keeps the bf16 ones
    copies = trunk.fast_route.weight_copies
    assert not trunk.fast_route.packed_fp32()
    assert any(k[1] == torch.bfloat16 for k in copies)


def test_exact_gemm_runs_the_official_kernel_whatever_the_backend():
    """Inside ``exact_gemm`` (the video predictor's frame encoding) an ``"onednn"`` trunk packs
    nothing and gives the ``"mkl"`` trunk's features bit for bit; outside it runs oneDNN."""
    model = _tiny(64)
    trunk = _trunk(model)
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        trunk.set_linear_backend("mkl")
        mkl = _encode(model, x)
        trunk.set_linear_backend("onednn")
        with exact_gemm():
            assert effective_backend("onednn") == "mkl"
            exact = _encode(model, x)
        assert not trunk.fast_route.packed_fp32()
        assert effective_backend("onednn") == "onednn"  # the context ends with its block
        onednn = _encode(model, x)
    assert trunk.fast_route.packed_fp32()
    assert all(torch.equal(a, b) for a, b in zip(exact, mkl))
    assert all(rel_err(a, b) <= 1e-5 for a, b in zip(onednn, mkl))
    assert trunk.linear_backend == "onednn"  # the trunk's own setting is untouched


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

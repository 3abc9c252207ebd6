"""The inference linear layer: MKL addmm or oneDNN's fused linear, + GELU / residual add."""
from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from torch import nn


# Inference fast path (CPU, fp32, no autograd, no autocast): each linear layer can run as MKL's
# addmm followed by the GELU / residual add (in place on the fresh output), or as oneDNN's fused
# linear (+GELU / +add in the GEMM's epilogue). Which is faster depends on the CPU, the thread
# count and the shape: on the 2-core AVX2 EPYC we develop on, oneDNN ranges from 0.75x to 1.9x of
# MKL per layer and loses or ties on whole encoders, so MKL is the default (False). True forces
# oneDNN; "auto" times each layer shape on its first calls (they alternate between the two: real
# work, nothing is run twice) and keeps the faster per row for the rest of the process; on a
# shared, noisy machine those few timings can pick wrong, and the choice (so the last bits of the
# features) may differ between processes. Elsewhere (autograd, autocast, compile, other devices
# or dtypes) `fused_linear` is exactly F.linear followed by the activation and the add.
USE_ONEDNN_LINEAR: bool | str = False
_MKLDNN = torch.backends.mkldnn.is_available()
_TUNE_CALLS = 3  # timed calls per path and shape; the first of each is a warm-up, the min counts
_tuned: dict[tuple, bool | list[list[float]]] = {}
_clock = time.perf_counter


def _fast_path_ok(x: torch.Tensor, weight: torch.Tensor) -> bool:
    if torch.compiler.is_compiling():  # inductor does its own fusion
        return False
    return (
        _MKLDNN
        and x.device.type == "cpu"
        and x.dtype == torch.float32
        and weight.dtype == torch.float32
        and not torch.is_grad_enabled()
        and not torch.is_autocast_enabled("cpu")
    )


def _linear_plain(x, layer, gelu, residual, out):
    y = F.linear(x, layer.weight, layer.bias)
    inplace = not torch.is_grad_enabled()  # y is fresh: no second large buffer at inference
    if gelu:
        y = torch.ops.aten.gelu_(y) if inplace else F.gelu(y)
    if residual is None:
        return y
    if out is not None:
        return torch.add(residual, y, out=out)
    if inplace and y.shape == residual.shape and y.dtype == residual.dtype:
        return y.add_(residual)  # same bits as residual + y
    return residual + y


def _linear_onednn(x, layer, gelu, residual, out):
    pointwise = torch.ops.mkldnn._linear_pointwise
    if residual is not None:
        y = pointwise.binary(x, residual, layer.weight, layer.bias, "add")
        return y if out is None else out.copy_(y)
    return pointwise(x, layer.weight, layer.bias, "gelu" if gelu else "none", [], "none" if gelu else "")


def _linear_tuned(x, layer, gelu, residual, out):
    # Keyed by the layer's shape, not the number of rows: within a process a layer does not
    # switch paths with the batch size (or the size of a chunk).
    key = (x.shape[-1], layer.out_features, gelu, residual is not None, torch.get_num_threads())
    state = _tuned.get(key)
    if isinstance(state, bool):
        return (_linear_onednn if state else _linear_plain)(x, layer, gelu, residual, out)
    if state is None:
        state = _tuned[key] = [[], []]  # seconds per row: [plain, oneDNN]
    which = 0 if len(state[0]) <= len(state[1]) else 1
    start = _clock()
    y = (_linear_onednn if which else _linear_plain)(x, layer, gelu, residual, out)
    state[which].append((_clock() - start) / max(1, x.numel() // x.shape[-1]))
    if len(state[1]) >= _TUNE_CALLS:
        _tuned[key] = min(state[1][1:]) < min(state[0][1:])
    return y


def fused_linear(x: torch.Tensor, layer: nn.Linear, gelu: bool = False,
                 residual: torch.Tensor | None = None, out: torch.Tensor | None = None) -> torch.Tensor:
    """``residual + act(layer(x))`` (``act`` exact GELU or identity; one of ``gelu``/``residual``).
    With ``residual``, ``out`` (no autograd) receives the sum instead of a new tensor."""
    if gelu and residual is not None:
        raise ValueError("fused_linear takes gelu or residual, not both")
    if out is not None and residual is None:
        raise ValueError("fused_linear writes into out only with a residual")
    if not _fast_path_ok(x, layer.weight) or USE_ONEDNN_LINEAR is False:
        return _linear_plain(x, layer, gelu, residual, out)
    if USE_ONEDNN_LINEAR is True:
        return _linear_onednn(x, layer, gelu, residual, out)
    if USE_ONEDNN_LINEAR == "auto":
        return _linear_tuned(x, layer, gelu, residual, out)
    raise ValueError(f"dp_sam2.encoders.sam2.linear.USE_ONEDNN_LINEAR must be False, True or 'auto', "
                     f"got {USE_ONEDNN_LINEAR!r}")

"""``residual + act(x @ W.T + b)`` for Hiera's fast inference route, on a chosen CPU GEMM backend.

``"mkl"``: ``F.linear`` (addmm) then the exact GELU / residual add in place on the fresh output.
``"onednn"``: oneDNN's linear on weights packed once into its layout, GELU / add in the GEMM
epilogue (fp32 only). ``"mixed"``: oneDNN for narrow layers without a residual (at most
``NARROW`` in or out features: Hiera's first stages), MKL for the rest, a residual's GEMM
accumulating into ``residual + bias`` (one memory pass fewer than addmm + add). ``"auto"``: each
layer shape's first calls alternate between MKL and oneDNN (unpacked), timed, and the faster is
kept for the module's life. Every trunk holds its own :class:`LinearBackend`
(``Hiera.set_linear_backend``); :func:`linear_backend` sets the default that trunks *built*
inside it take. Under autograd, compile, autocast or off the CPU every backend is plain
``F.linear`` + activation + add.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import time

import torch
import torch.nn.functional as F

BACKENDS = ("mkl", "onednn", "mixed", "auto")
NARROW = 192  # "mixed": a layer with at most this many in or out features runs on oneDNN
_MKLDNN = torch.backends.mkldnn.is_available()
_DEFAULT: contextvars.ContextVar[str | None] = contextvars.ContextVar("dp_sam2_linear_backend", default=None)


def check_backend(name: str) -> str:
    if name not in BACKENDS:
        raise ValueError(f"linear backend must be one of {BACKENDS}, got {name!r}")
    return name


def machine_default_backend() -> str:
    """The backend measured fastest on whole encoders per CPU class (README, "Speed"): ``"onednn"``
    on AVX-512 and AVX2 CPUs (oneDNN's GEMM on packed weights beat MKL's addmm by 1-11 % on AVX2
    and ``"mixed"`` in 9 of 9 encoder runs on AVX-512; unpacked it lost), MKL's addmm on every
    other class (not measured)."""
    capability = torch.backends.cpu.get_cpu_capability()
    return "onednn" if capability.startswith("AVX512") or capability == "AVX2" else "mkl"


def default_backend() -> str:
    """The backend a trunk built now takes: the innermost :func:`linear_backend`, else the machine's."""
    name = _DEFAULT.get()
    return machine_default_backend() if name is None else name


@contextlib.contextmanager
def linear_backend(name: str):
    """``with linear_backend("onednn"): model = build_sam2(...)``: trunks built inside take ``name``.
    Models built before or after keep their own setting (change it with ``set_linear_backend``)."""
    token = _DEFAULT.set(check_backend(name))
    try:
        yield
    finally:
        _DEFAULT.reset(token)


def _onednn_ok(x: torch.Tensor, weight: torch.Tensor) -> bool:
    return (
        _MKLDNN
        and x.device.type == "cpu"
        and x.dtype == weight.dtype == torch.float32
        and not torch.is_grad_enabled()
        and not torch.is_autocast_enabled("cpu")
        and not torch.compiler.is_compiling()
    )


def _mkl(x, weight, bias, gelu, residual, out):
    y = F.linear(x, weight, bias)
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


def _output_shaped(residual, x, weight) -> bool:
    """Whether ``residual`` has the linear's output shape (it does not broadcast)."""
    return tuple(residual.shape) == (*x.shape[:-1], weight.shape[0])


def _mkl_into_residual(x, weight, bias, residual, out):
    """``(residual + bias) + x @ weight.T``, the GEMM accumulating into the sum (no autograd).
    A residual that broadcasts, or an ``out`` with gaps, takes :func:`_mkl` instead."""
    if not _output_shaped(residual, x, weight) or (out is not None and not out.is_contiguous()):
        return _mkl(x, weight, bias, False, residual, out)
    y = torch.empty(residual.shape, dtype=residual.dtype, device=residual.device) if out is None else out
    if bias is None:
        y.copy_(residual)
    else:
        torch.add(residual, bias, out=y)
    y.view(-1, y.shape[-1]).addmm_(x.reshape(-1, x.shape[-1]), weight.t())
    return y


def _onednn(x, weight, bias, gelu, residual, out):
    pointwise = torch.ops.mkldnn._linear_pointwise
    if residual is not None:
        fits = _output_shaped(residual, x, weight)
        if fits and x.dtype != torch.bfloat16:
            y = pointwise.binary(x, residual, weight, bias, "add")
            return y if out is None else out.copy_(y)
        # the GEMM, then the add: in bf16 it beat the binary epilogue by 1-4 % on whole trunks
        # (benchmarks/results/avx512_bf16_residual_add.txt); a residual that broadcasts cannot
        # go into the epilogue at all (it wants the output's shape)
        y = pointwise(x, weight, bias, "none", [], "")
        if out is not None:
            return torch.add(residual, y, out=out)
        return y.add_(residual) if fits else residual + y
    return pointwise(x, weight, bias, "gelu" if gelu else "none", [], "none" if gelu else "")


class LinearBackend:
    """One trunk's backend; with ``"auto"``, its per-shape timings and choices (``choices``:
    shape key -> True for oneDNN / False for MKL once settled). ``clock`` is for tests."""

    TUNE_CALLS = 3  # timed calls per backend and shape; the first of each is a warm-up

    def __init__(self, name: str | None = None, clock=time.perf_counter) -> None:
        self.name = check_backend(default_backend() if name is None else name)
        self.choices: dict[tuple, bool | list[list[float]]] = {}
        self.clock = clock

    def __repr__(self) -> str:
        return f"LinearBackend({self.name!r})"

    def settled(self) -> bool:
        return all(isinstance(v, bool) for v in self.choices.values())

    def packs(self, x: torch.Tensor, weight: torch.Tensor, residual: bool) -> bool:
        """Whether this backend runs the fp32 layer ``weight`` on oneDNN with a packed copy of it
        (:func:`pack_weight`, which the caller keeps between calls)."""
        if self.name in ("mkl", "auto") or not _onednn_ok(x, weight):
            return False
        return self.name == "onednn" or (not residual and min(weight.shape) <= NARROW)

    def run(self, x, weight, bias, gelu, residual, out):
        if weight.is_mkldnn:  # a weight packed by pack_weight(): oneDNN's layout, oneDNN only
            return _onednn(x, weight, bias, gelu, residual, out)
        if self.name == "mkl" or not _onednn_ok(x, weight):
            return _mkl(x, weight, bias, gelu, residual, out)
        if self.name == "onednn":
            return _onednn(x, weight, bias, gelu, residual, out)
        if self.name == "mixed":
            if residual is not None:
                return _mkl_into_residual(x, weight, bias, residual, out)
            return _mkl(x, weight, bias, gelu, residual, out)
        # Keyed by the layer's shape, not the row count: a layer keeps its backend whatever the batch.
        key = (x.shape[-1], weight.shape[0], gelu, residual is not None, torch.get_num_threads())
        state = self.choices.get(key)
        if isinstance(state, bool):
            return (_onednn if state else _mkl)(x, weight, bias, gelu, residual, out)
        if state is None:
            state = self.choices[key] = [[], []]  # seconds per row: [mkl, onednn]
        which = 0 if len(state[0]) <= len(state[1]) else 1
        start = self.clock()
        y = (_onednn if which else _mkl)(x, weight, bias, gelu, residual, out)
        state[which].append((self.clock() - start) / max(1, x.numel() // x.shape[-1]))
        if len(state[1]) >= self.TUNE_CALLS:
            self.choices[key] = min(state[1][1:]) < min(state[0][1:])
        return y


_PLAIN = LinearBackend("mkl")


@functools.cache
def onednn_bf16() -> bool:
    """Whether this CPU runs oneDNN's bf16 kernels (AVX512-BW/VL/DQ or AVX-NE-CONVERT); without them
    oneDNN refuses to pack bf16 weights (AVX2 CPUs)."""
    return _MKLDNN and torch.ops.mkldnn._is_mkldnn_bf16_supported()


def can_pack(x: torch.Tensor) -> bool:
    """Whether bf16 linears run on :func:`pack_weight` copies: bf16 inference on a CPU whose oneDNN
    has bf16 kernels, not compiling."""
    return (
        x.device.type == "cpu"
        and x.dtype == torch.bfloat16
        and not torch.is_grad_enabled()
        and not torch.compiler.is_compiling()
        and onednn_bf16()
    )


def pack_weight(weight: torch.Tensor, dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    """A ``dtype`` copy of ``weight`` in oneDNN's blocked GEMM layout (made once, reused every call)."""
    return torch.ops.mkldnn._reorder_linear_weight(weight.detach().to(dtype))


def linear_act_residual(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    *,
    gelu: bool = False,
    residual: torch.Tensor | None = None,
    out: torch.Tensor | None = None,
    backend: LinearBackend | None = None,
) -> torch.Tensor:
    """``residual + act(F.linear(x, weight, bias))``, ``act`` exact GELU (``gelu``) or identity; at
    most one of ``gelu`` / ``residual``. With ``residual``, ``out`` (no autograd) receives the sum."""
    if gelu and residual is not None:
        raise ValueError("linear_act_residual takes gelu or residual, not both")
    if out is not None and residual is None:
        raise ValueError("linear_act_residual writes into out only with a residual")
    return (backend or _PLAIN).run(x, weight, bias, gelu, residual, out)

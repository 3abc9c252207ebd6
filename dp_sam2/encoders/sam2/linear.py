"""``residual + act(x @ W.T + b)`` for Hiera's fast inference route, on a chosen CPU GEMM backend.

``"mkl"``: ``F.linear`` (addmm, the kernel the official's ``nn.Linear`` runs) then the exact GELU /
residual add in place on the fresh output. ``"onednn"``: oneDNN's linear on weights packed once
into its layout, GELU / add in the GEMM epilogue (fp32 only). Each trunk holds its backend's name
(``Hiera.set_linear_backend``); :func:`linear_backend` sets the default that trunks *built* inside
it take. Under autograd, compile, autocast or off the CPU both are plain ``F.linear`` + activation
+ add.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
from collections.abc import Iterator

import torch
import torch.nn.functional as F

BACKENDS = ("mkl", "onednn")
_MKLDNN = torch.backends.mkldnn.is_available()
_DEFAULT: contextvars.ContextVar[str | None] = contextvars.ContextVar("dp_sam2_linear_backend", default=None)
_EXACT: contextvars.ContextVar[bool] = contextvars.ContextVar("dp_sam2_exact_gemm", default=False)


def check_backend(name: object) -> str:
    if name not in BACKENDS:
        raise ValueError(f"linear backend must be one of {BACKENDS}, got {name!r}")
    return str(name)


def machine_default_backend() -> str:
    """``"mkl"`` on every CPU class: fidelity first. ``"onednn"`` rounds the trunk's GEMMs
    differently from the official's ``nn.Linear`` (rel 1e-6 on the trunk's outputs) and the video
    predictor's thresholds (the binarised mask of a clicked frame, the multimask choice) can turn
    that into a visible drift of the tracked logits, while ``"mkl"`` runs the official's own kernel
    (bit-equal stage outputs where the token order matches). Its speed lead was 1-11 % on whole
    encoders (docs/speed.md, benchmarks/results/*_linear_*.txt)."""
    return "mkl"


def default_backend() -> str:
    """The backend a trunk built now takes: the innermost :func:`linear_backend`, else the machine's."""
    name = _DEFAULT.get()
    return machine_default_backend() if name is None else name


@contextlib.contextmanager
def linear_backend(name: str) -> Iterator[None]:
    """``with linear_backend("onednn"): model = build_sam2(...)``: trunks built inside take ``name``.
    Models built before or after keep their own setting (change it with ``set_linear_backend``)."""
    token = _DEFAULT.set(check_backend(name))
    try:
        yield
    finally:
        _DEFAULT.reset(token)


@contextlib.contextmanager
def exact_gemm() -> Iterator[None]:
    """Inside, every trunk's fast route runs its GEMMs on ``"mkl"`` (the official's own kernel),
    whatever backend the trunk names. The video predictor encodes its frames inside: its memory
    amplifies the ~1e-6 rounding differences of another GEMM order into visible drift (a mask
    pixel near 0 flips when binarised for the memory, a bf16-stored memory rounds the other way,
    a near-tie multimask choice swaps a whole mask), while the official's kernel keeps the trunk's
    stride-4/8 maps bit-equal to the official's."""
    token = _EXACT.set(True)
    try:
        yield
    finally:
        _EXACT.reset(token)


def effective_backend(name: str) -> str:
    """The backend a trunk naming ``name`` runs now: ``"mkl"`` inside :func:`exact_gemm`, else ``name``."""
    return "mkl" if _EXACT.get() else name


def onednn_runs(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether the ``"onednn"`` backend takes this fp32 call (CPU inference, not compiling)."""
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
    backend: str = "mkl",
) -> torch.Tensor:
    """``residual + act(F.linear(x, weight, bias))``, ``act`` exact GELU (``gelu``) or identity; at
    most one of ``gelu`` / ``residual``. With ``residual``, ``out`` (no autograd) receives the sum.
    A ``weight`` packed by :func:`pack_weight` runs on oneDNN whatever ``backend`` says (only
    oneDNN reads its layout)."""
    if gelu and residual is not None:
        raise ValueError("linear_act_residual takes gelu or residual, not both")
    if out is not None and residual is None:
        raise ValueError("linear_act_residual writes into out only with a residual")
    if weight.is_mkldnn or (check_backend(backend) == "onednn" and onednn_runs(x, weight)):
        return _onednn(x, weight, bias, gelu, residual, out)
    return _mkl(x, weight, bias, gelu, residual, out)

"""``residual + act(x @ W.T + b)`` for Hiera's fast inference route, on a chosen CPU GEMM backend.

``"mkl"``: ``F.linear`` (addmm) then the exact GELU / residual add in place on the fresh output.
``"onednn"``: oneDNN's linear with the GELU / add in the GEMM epilogue (fp32 only). ``"auto"``:
each layer shape's first calls alternate between the two, timed, and the faster is kept for the
module's life. Every trunk holds its own :class:`LinearBackend` (``Hiera.set_linear_backend``);
:func:`linear_backend` sets the default that trunks *built* inside it take. Under autograd,
compile, autocast or off the CPU every backend is plain ``F.linear`` + activation + add.
"""
from __future__ import annotations

import contextlib
import contextvars
import time

import torch
import torch.nn.functional as F

BACKENDS = ("mkl", "onednn", "auto")
_MKLDNN = torch.backends.mkldnn.is_available()
_DEFAULT: contextvars.ContextVar[str | None] = contextvars.ContextVar("dp_sam2_linear_backend", default=None)


def check_backend(name: str) -> str:
    if name not in BACKENDS:
        raise ValueError(f"linear backend must be one of {BACKENDS}, got {name!r}")
    return name


def machine_default_backend() -> str:
    """The backend measured best on this class of CPU (see the README's speed table)."""
    return "mkl"


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
    return (_MKLDNN and x.device.type == "cpu" and x.dtype == weight.dtype == torch.float32
            and not torch.is_grad_enabled() and not torch.is_autocast_enabled("cpu")
            and not torch.compiler.is_compiling())


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


def _onednn(x, weight, bias, gelu, residual, out):
    pointwise = torch.ops.mkldnn._linear_pointwise
    if residual is not None:
        y = pointwise.binary(x, residual, weight, bias, "add")
        return y if out is None else out.copy_(y)
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

    def run(self, x, weight, bias, gelu, residual, out):
        if self.name == "mkl" or not _onednn_ok(x, weight):
            return _mkl(x, weight, bias, gelu, residual, out)
        if self.name == "onednn":
            return _onednn(x, weight, bias, gelu, residual, out)
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


def linear_act_residual(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, *, gelu: bool = False,
                        residual: torch.Tensor | None = None, out: torch.Tensor | None = None,
                        backend: LinearBackend | None = None) -> torch.Tensor:
    """``residual + act(F.linear(x, weight, bias))``, ``act`` exact GELU (``gelu``) or identity; at
    most one of ``gelu`` / ``residual``. With ``residual``, ``out`` (no autograd) receives the sum."""
    if gelu and residual is not None:
        raise ValueError("linear_act_residual takes gelu or residual, not both")
    if out is not None and residual is None:
        raise ValueError("linear_act_residual writes into out only with a residual")
    return (backend or _PLAIN).run(x, weight, bias, gelu, residual, out)

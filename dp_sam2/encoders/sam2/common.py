"""Small building blocks shared by the SAM 2 modules."""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn


class MLP(nn.Module):
    """A stack of ``num_layers`` linear layers with an activation between them.

    The layers live in ``self.layers`` (checkpoint keys ``<name>.layers.<i>.weight``).
    """

    def __init__(
        self,
        input_dim: int,
        hidden_dim: int,
        output_dim: int,
        num_layers: int,
        activation: type[nn.Module] = nn.ReLU,
        sigmoid_output: bool = False,
    ) -> None:
        super().__init__()
        dims_in = [input_dim] + [hidden_dim] * (num_layers - 1)
        dims_out = [hidden_dim] * (num_layers - 1) + [output_dim]
        self.layers = nn.ModuleList(nn.Linear(i, o) for i, o in zip(dims_in, dims_out))
        self.act = activation()
        self.sigmoid_output = sigmoid_output

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < last:
                x = self.act(x)
        return torch.sigmoid(x) if self.sigmoid_output else x


class LayerNorm2d(nn.Module):
    """LayerNorm over the channel dimension of an NCHW tensor."""

    def __init__(self, num_channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(1, keepdim=True)
        var = (x - mean).pow(2).mean(1, keepdim=True)
        x = (x - mean) / torch.sqrt(var + self.eps)
        return self.weight[:, None, None] * x + self.bias[:, None, None]


class DropPath(nn.Module):
    """Stochastic depth: drop the whole residual branch per sample while training."""

    def __init__(self, drop_prob: float = 0.0, scale_by_keep: bool = True) -> None:
        super().__init__()
        self.drop_prob = drop_prob
        self.scale_by_keep = scale_by_keep

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep = 1.0 - self.drop_prob
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        if keep > 0.0 and self.scale_by_keep:
            mask.div_(keep)
        return x * mask


def activation_from_name(name: str) -> type[nn.Module]:
    """``"relu"`` / ``"gelu"`` / ``"glu"`` -> the activation module class."""
    table = {"relu": nn.ReLU, "gelu": nn.GELU, "glu": nn.GLU}
    if name not in table:
        raise ValueError(f"activation must be one of {sorted(table)}, got {name!r}")
    return table[name]


def gelu(x: torch.Tensor) -> torch.Tensor:
    return F.gelu(x)


# Inference fast path: oneDNN's fused linear (+GELU / +residual add) on CPU in fp32, used only
# where it cannot change training (no autograd graph, no autocast); elsewhere `fused_linear` is
# exactly F.linear followed by the activation and the add. Measured on a 2-core AVX2 EPYC
# (benchmarks/bench_encoder.py): per layer it ranges from 0.75x to 1.9x MKL's addmm, and on the
# whole encoder it loses or ties in three of four cases, so by default it is on only where ATen
# reports AVX-512 (oneDNN uses AVX-512 on every vendor, MKL's sgemm does not on AMD).
# True / False force it.
USE_ONEDNN_LINEAR: bool | None = None
_MKLDNN = torch.backends.mkldnn.is_available()


@functools.cache
def _onednn_default() -> bool:
    return torch.backends.cpu.get_cpu_capability().startswith("AVX512")


def _onednn_ok(x: torch.Tensor, weight: torch.Tensor) -> bool:
    if torch.compiler.is_compiling():  # inductor does its own fusion
        return False
    use = _onednn_default() if USE_ONEDNN_LINEAR is None else USE_ONEDNN_LINEAR
    return (
        use
        and x.device.type == "cpu"
        and x.dtype == torch.float32
        and weight.dtype == torch.float32
        and not torch.is_grad_enabled()
        and not torch.is_autocast_enabled("cpu")
        and _MKLDNN
    )


def fused_linear(x: torch.Tensor, layer: nn.Linear, gelu: bool = False,
                 residual: torch.Tensor | None = None, out: torch.Tensor | None = None) -> torch.Tensor:
    """``residual + act(layer(x))`` (``act`` exact GELU or identity; one of ``gelu``/``residual``).
    With ``residual``, ``out`` (no autograd) receives the sum instead of a new tensor."""
    if gelu and residual is not None:
        raise ValueError("fused_linear takes gelu or residual, not both")
    if out is not None and residual is None:
        raise ValueError("fused_linear writes into out only with a residual")
    if _onednn_ok(x, layer.weight):
        pointwise = torch.ops.mkldnn._linear_pointwise
        if residual is not None:
            y = pointwise.binary(x, residual, layer.weight, layer.bias, "add")
            return y if out is None else out.copy_(y)
        return pointwise(x, layer.weight, layer.bias, "gelu" if gelu else "none", [], "none" if gelu else "")
    y = F.linear(x, layer.weight, layer.bias)
    if gelu:
        y = F.gelu(y)
    if residual is None:
        return y
    return residual + y if out is None else torch.add(residual, y, out=out)


PRECISIONS = ("fp32", "bf16")


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be 'fp32' or 'bf16', got {precision!r}")
    return precision


def precision_autocast(device: torch.device | str, precision: str):
    """The predictors' and obs encoder's precision switch: ``bf16`` runs under
    ``torch.autocast(<device type>, bfloat16)``; ``fp32`` is plain fp32."""
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16,
                          enabled=check_precision(precision) == "bf16")

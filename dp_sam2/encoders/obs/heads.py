"""Pooling heads: a SAM 2 feature map ``(N, C, h, w)`` -> a vector ``(N, feature_dim)``.

Three heads, chosen by name in :func:`build_head`:

* ``"attention"`` (default): learned queries attend over the map's tokens (with a learned
  position embedding, so where things are survives the pooling), then a linear projection;
* ``"spatial_softmax"``: robomimic/Diffusion Policy style keypoints: a 1x1 conv to ``num_kp``
  heat maps, a softmax over space, the expected (x, y) of each, then a linear projection;
* ``"mean"``: global average pooling, then a linear projection.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

HEADS = ("attention", "spatial_softmax", "mean")


class AttentionPool(nn.Module):
    """``num_queries`` learned queries, multi-head attention over the ``h*w`` tokens."""

    def __init__(
        self, in_channels: int, feat_hw: tuple[int, int], feature_dim: int, num_heads: int = 8, num_queries: int = 1
    ) -> None:
        super().__init__()
        if in_channels % num_heads:
            raise ValueError(f"in_channels {in_channels} must be divisible by num_heads {num_heads}")
        self.feat_hw = tuple(feat_hw)
        self.query = nn.Parameter(torch.randn(1, num_queries, in_channels) * 0.02)
        self.pos_embed = nn.Parameter(torch.randn(1, feat_hw[0] * feat_hw[1], in_channels) * 0.02)
        self.attn = nn.MultiheadAttention(in_channels, num_heads, batch_first=True)
        self.norm = nn.LayerNorm(in_channels)
        self.proj = nn.Linear(num_queries * in_channels, feature_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = x.flatten(2).transpose(1, 2)  # (N, hw, C)
        if tokens.shape[1] != self.pos_embed.shape[1]:
            raise ValueError(
                f"attention head was built for a {self.feat_hw[0]}x{self.feat_hw[1]} feature map, "
                f"got {tuple(x.shape[-2:])}"
            )
        tokens = tokens + self.pos_embed
        query = self.query.expand(x.shape[0], -1, -1)
        pooled, _ = self.attn(query, tokens, tokens, need_weights=False)
        return self.proj(self.norm(pooled).flatten(1))


class SpatialSoftmax(nn.Module):
    """Expected image coordinates of ``num_kp`` learned heat maps (robomimic's SpatialSoftmax)."""

    def __init__(
        self, in_channels: int, feat_hw: tuple[int, int], feature_dim: int, num_kp: int = 32, temperature: float = 1.0
    ) -> None:
        super().__init__()
        h, w = feat_hw
        self.keypoints = nn.Conv2d(in_channels, num_kp, kernel_size=1)
        self.temperature = temperature
        ys, xs = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
        self.register_buffer("grid", torch.stack([xs.flatten(), ys.flatten()], dim=-1), persistent=False)
        self.proj = nn.Linear(2 * num_kp, feature_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        heat = self.keypoints(x).flatten(2) / self.temperature  # (N, K, hw)
        if heat.shape[-1] != self.grid.shape[0]:
            raise ValueError(f"spatial softmax head was built for {self.grid.shape[0]} positions, got {heat.shape[-1]}")
        coords = F.softmax(heat, dim=-1) @ self.grid.to(heat.dtype)  # (N, K, 2)
        return self.proj(coords.flatten(1))


class MeanPool(nn.Module):
    """Global average pooling and a linear projection."""

    def __init__(self, in_channels: int, feat_hw: tuple[int, int], feature_dim: int) -> None:
        super().__init__()
        self.proj = nn.Linear(in_channels, feature_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x.mean(dim=(-2, -1)))


def build_head(name: str, in_channels: int, feat_hw: tuple[int, int], feature_dim: int) -> nn.Module:
    """A pooling head by name: ``attention``, ``spatial_softmax`` or ``mean``."""
    classes = {"attention": AttentionPool, "spatial_softmax": SpatialSoftmax, "mean": MeanPool}
    if name not in classes:
        raise ValueError(f"pooling must be one of {', '.join(HEADS)}; got {name!r}")
    if not isinstance(feature_dim, int) or feature_dim <= 0:
        raise ValueError(f"feature_dim must be a positive int, got {feature_dim!r}")
    return classes[name](in_channels, feat_hw, feature_dim)

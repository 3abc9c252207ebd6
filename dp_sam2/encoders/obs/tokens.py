"""Token heads for UMI's ``DiffusionTransformerTimmPolicy``: a SAM 2 feature map ``(N, C, h, w)``
-> tokens ``(N, n_tokens, n_emb)``, and low_dim values -> one token per step.

* :class:`MapTokens`: every cell of the stride-16 map is a token (as UMI's ViT with
  ``feature_aggregation: null`` gives all its patch tokens): a learned position embedding, then a
  linear projection to ``n_emb``;
* :class:`PooledToken`: one token per image: a pooling head (see :mod:`.heads`) to
  ``feature_dim``, then a projection to ``n_emb`` (identity when they are equal, as UMI does);
* :func:`low_dim_projection`: ``prod(shape) -> n_emb`` (identity when equal, as UMI does).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from dp_sam2.encoders.obs.heads import build_head


class MapTokens(nn.Module):
    def __init__(self, in_channels: int, feat_hw: tuple[int, int], n_emb: int) -> None:
        super().__init__()
        self.n_tokens = feat_hw[0] * feat_hw[1]
        self.pos_embed = nn.Parameter(torch.randn(1, self.n_tokens, in_channels) * 0.02)
        self.proj = nn.Linear(in_channels, n_emb)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = x.flatten(2).transpose(1, 2)
        if tokens.shape[1] != self.n_tokens:
            raise ValueError(f"token head was built for {self.n_tokens} feature-map cells, got {tokens.shape[1]}")
        return self.proj(tokens + self.pos_embed)


class PooledToken(nn.Module):
    n_tokens = 1

    def __init__(self, pooling: str, in_channels: int, feat_hw: tuple[int, int], feature_dim: int, n_emb: int) -> None:
        super().__init__()
        self.pool = build_head(pooling, in_channels, feat_hw, feature_dim)
        self.proj = nn.Identity() if feature_dim == n_emb else nn.Linear(feature_dim, n_emb)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.pool(x))[:, None]


def build_token_head(
    pooling: str | None, in_channels: int, feat_hw: tuple[int, int], feature_dim: int, n_emb: int
) -> nn.Module:
    """``pooling=None``: :class:`MapTokens`; a head name: :class:`PooledToken`."""
    if pooling is None:
        return MapTokens(in_channels, feat_hw, n_emb)
    return PooledToken(pooling, in_channels, feat_hw, feature_dim, n_emb)


def low_dim_projection(shape: tuple[int, ...], n_emb: int) -> nn.Module:
    dim = math.prod(shape)
    return nn.Identity() if dim == n_emb else nn.Linear(dim, n_emb)


def check_n_emb(n_emb) -> int | None:
    if n_emb is None:
        return None
    if isinstance(n_emb, bool) or not isinstance(n_emb, int) or n_emb <= 0:
        raise ValueError(f"n_emb must be null (vector output) or a positive int (token mode), got {n_emb!r}")
    return n_emb

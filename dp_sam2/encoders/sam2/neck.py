"""The FPN neck and the image encoder (trunk + neck)."""

from __future__ import annotations

from typing import cast

import torch
import torch.nn.functional as F
from torch import nn


class FpnNeck(nn.Module):
    """Projects each trunk level to ``d_model`` channels (1x1 convs) and fuses top-down only at
    ``fpn_top_down_levels``. ``convs.0`` takes the lowest-resolution (last) trunk output."""

    def __init__(
        self,
        position_encoding: nn.Module,
        d_model: int,
        backbone_channel_list: list[int],
        kernel_size: int = 1,
        stride: int = 1,
        padding: int = 0,
        fpn_interp_model: str = "bilinear",
        fuse_type: str = "sum",
        fpn_top_down_levels: list[int] | None = None,
    ) -> None:
        super().__init__()
        if fuse_type not in ("sum", "avg"):
            raise ValueError(f"fuse_type must be 'sum' or 'avg', got {fuse_type!r}")
        self.position_encoding = position_encoding
        self.d_model = d_model
        self.backbone_channel_list = list(backbone_channel_list)
        self.convs = nn.ModuleList()
        for dim in backbone_channel_list:
            level = nn.Sequential()
            level.add_module("conv", nn.Conv2d(dim, d_model, kernel_size, stride, padding))
            self.convs.append(level)
        self.fpn_interp_model = fpn_interp_model
        self.fuse_type = fuse_type
        levels = range(len(self.convs)) if fpn_top_down_levels is None else fpn_top_down_levels
        self.fpn_top_down_levels = list(levels)

    def forward(self, xs: list[torch.Tensor], min_level: int = 0, projections: dict | None = None):
        """``xs``: trunk maps, highest resolution first. Levels below ``min_level`` are skipped
        (returned as ``None``) — they never feed the levels above them.

        ``projections`` maps a level to a 1x1 conv applied to that level's output (SAM 2's
        ``conv_s0``/``conv_s1``). On a purely lateral level whose output feeds no other level,
        the two 1x1 convs are composed into one, so the 256-channel map is never formed."""
        n = len(self.convs)
        if len(xs) != n:
            raise ValueError(f"the neck expects {n} trunk levels, got {len(xs)}")
        out: list[torch.Tensor | None] = [None] * n
        pos: list[torch.Tensor | None] = [None] * n
        prev = None
        projections = projections or {}
        for i in range(n - 1, min_level - 1, -1):
            if i in projections and self._can_compose(i):
                composed = _composed_1x1(self._conv(i), projections[i], xs[i])
                out[i], pos[i] = composed, self.position_encoding(composed).to(composed.dtype)
                prev = None
                continue
            lateral = self.convs[n - 1 - i](xs[i])
            if i in self.fpn_top_down_levels and prev is not None:
                top_down = F.interpolate(
                    prev.to(torch.float32),
                    scale_factor=2.0,
                    mode=self.fpn_interp_model,
                    align_corners=None if self.fpn_interp_model == "nearest" else False,
                    antialias=False,
                )
                prev = lateral + top_down
                if self.fuse_type == "avg":
                    prev = prev / 2
            else:
                prev = lateral
            out[i] = prev
            pos[i] = self.position_encoding(prev).to(prev.dtype)
            if i in projections:
                out[i] = projections[i](prev)
        return out, pos

    def _conv(self, level: int) -> nn.Conv2d:
        """The lateral convolution of trunk level ``level`` (``convs`` run lowest resolution first)."""
        return cast(nn.Conv2d, self.convs[len(self.convs) - 1 - level].conv)

    def _can_compose(self, level: int) -> bool:
        conv = self._conv(level)
        pointwise = conv.kernel_size == (1, 1) and conv.stride == (1, 1) and conv.padding == (0, 0)
        return pointwise and level not in self.fpn_top_down_levels and (level - 1) not in self.fpn_top_down_levels


def _composed_1x1(first: nn.Conv2d, second: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """``second(first(x))`` for two 1x1 convolutions, as one 1x1 convolution."""
    w2 = second.weight.flatten(1)
    weight = (w2 @ first.weight.flatten(1))[:, :, None, None]
    bias = w2 @ first.bias if first.bias is not None else None
    if second.bias is not None:
        bias = second.bias if bias is None else bias + second.bias
    return F.conv2d(x, weight, bias)


def __getattr__(name: str):
    # 0.1.x model yamls named dp_sam2.encoders.sam2.neck.ImageEncoder; it now has its own module
    # (dp_sam2/_aliases.py, the table of old paths, says which).
    from dp_sam2._aliases import MOVED, resolve

    if f"{__name__}.{name}" in MOVED:
        return resolve(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

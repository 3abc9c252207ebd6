"""SAM 2's image encoder: the Hiera trunk followed by the FPN neck."""

from __future__ import annotations

import torch
from torch import nn

from .hiera import Hiera
from .neck import FpnNeck


class ImageEncoder(nn.Module):
    """Trunk + neck. Returns the official dict: ``vision_features`` (the stride-16 map),
    ``vision_pos_enc`` and ``backbone_fpn`` (highest resolution first), after dropping the
    ``scalp`` lowest-resolution levels."""

    def __init__(self, trunk: Hiera, neck: FpnNeck, scalp: int = 0) -> None:
        super().__init__()
        if list(trunk.channel_list) != list(neck.backbone_channel_list):
            raise ValueError(
                f"trunk channels {trunk.channel_list} do not match the neck's "
                f"backbone_channel_list {neck.backbone_channel_list}"
            )
        self.trunk = trunk
        self.neck = neck
        self.scalp = scalp

    def forward(self, sample: torch.Tensor, projections: dict | None = None) -> dict:
        features, pos = self.neck(self.trunk(sample), projections=projections)
        if self.scalp > 0:
            features, pos = features[: -self.scalp], pos[: -self.scalp]
        return {"vision_features": features[-1], "vision_pos_enc": pos, "backbone_fpn": features}

    def forward_lowest_kept_level(self, sample: torch.Tensor) -> torch.Tensor:
        """Only the ``vision_features`` map (stride 16 in SAM 2), skipping the neck levels and
        position encodings that do not feed it. Used by the Diffusion Policy obs encoder."""
        trunk_out = self.trunk(sample)
        level = len(trunk_out) - 1 - self.scalp
        features, _ = self.neck(trunk_out, min_level=level)
        return features[level]

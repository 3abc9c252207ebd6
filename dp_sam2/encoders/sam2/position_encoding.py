"""Position encodings: the sine encoding of feature maps and SAM's random Fourier features."""

from __future__ import annotations

import math

import torch
from torch import nn


class PositionEmbeddingSine(nn.Module):
    """DETR-style 2-D sine/cosine encoding of a feature map's grid.

    The encoding depends only on the map's height and width, so it is computed once per size and
    kept in a small cache (not part of the state dict).
    """

    def __init__(
        self,
        num_pos_feats: int,
        temperature: int = 10000,
        normalize: bool = True,
        scale: float | None = None,
        warmup_cache: bool = True,  # accepted for config compatibility; the cache fills lazily
        image_size: int = 1024,
        strides: tuple[int, ...] = (4, 8, 16, 32),
    ) -> None:
        super().__init__()
        if num_pos_feats % 2:
            raise ValueError(f"num_pos_feats must be even, got {num_pos_feats}")
        if scale is not None and not normalize:
            raise ValueError("a scale is only used with normalize=True")
        self.num_pos_feats = num_pos_feats // 2
        self.temperature = temperature
        self.normalize = normalize
        self.scale = 2 * math.pi if scale is None else scale
        self._cache: dict[tuple[int, int, torch.device], torch.Tensor] = {}

    def _frequencies(self, device: torch.device) -> torch.Tensor:
        idx = torch.arange(self.num_pos_feats, dtype=torch.float32, device=device)
        return self.temperature ** (2 * torch.div(idx, 2, rounding_mode="floor") / self.num_pos_feats)

    @staticmethod
    def _interleave(angles: torch.Tensor) -> torch.Tensor:
        # [..., F] -> sin of even slots and cos of odd slots, interleaved back to [..., F]
        return torch.stack((angles[..., 0::2].sin(), angles[..., 1::2].cos()), dim=-1).flatten(-2)

    @torch.no_grad()
    def grid(self, height: int, width: int, device: torch.device | str = "cpu") -> torch.Tensor:
        """The encoding of an ``height x width`` grid, shape ``[C, H, W]`` (cached)."""
        device = torch.device(device)
        key = (height, width, device)
        if key not in self._cache:
            y = torch.arange(1, height + 1, dtype=torch.float32, device=device)
            x = torch.arange(1, width + 1, dtype=torch.float32, device=device)
            if self.normalize:
                y = y / (y[-1:] + 1e-6) * self.scale
                x = x / (x[-1:] + 1e-6) * self.scale
            freqs = self._frequencies(device)
            pos_y = self._interleave(y[:, None] / freqs)  # [H, F]
            pos_x = self._interleave(x[:, None] / freqs)  # [W, F]
            pos = torch.cat(
                (pos_y[:, None, :].expand(height, width, -1), pos_x[None, :, :].expand(height, width, -1)),
                dim=-1,
            )
            self._cache[key] = pos.permute(2, 0, 1).contiguous()
        return self._cache[key]

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pos = self.grid(x.shape[-2], x.shape[-1], x.device)
        return pos[None].expand(x.shape[0], -1, -1, -1)

    def _encode_xy(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        freqs = self._frequencies(x.device)
        pos_x = self._interleave((x * self.scale)[:, None] / freqs)
        pos_y = self._interleave((y * self.scale)[:, None] / freqs)
        return pos_x, pos_y

    @torch.no_grad()
    def encode_boxes(self, x, y, w, h) -> torch.Tensor:
        pos_x, pos_y = self._encode_xy(x, y)
        return torch.cat((pos_y, pos_x, h[:, None], w[:, None]), dim=1)

    @torch.no_grad()
    def encode_points(self, x, y, labels) -> torch.Tensor:
        pos_x, pos_y = self._encode_xy(x.flatten(), y.flatten())
        pos_x = pos_x.reshape(*x.shape, -1)
        pos_y = pos_y.reshape(*y.shape, -1)
        return torch.cat((pos_y, pos_x, labels[:, :, None]), dim=2)


class PositionEmbeddingRandom(nn.Module):
    """Random Fourier features of normalised coordinates (SAM's prompt position encoding).

    The one persistent buffer of SAM 2: ``positional_encoding_gaussian_matrix`` [2, C/2].
    """

    positional_encoding_gaussian_matrix: torch.Tensor

    def __init__(self, num_pos_feats: int = 64, scale: float | None = None) -> None:
        super().__init__()
        scale = 1.0 if scale is None or scale <= 0.0 else scale
        self.register_buffer("positional_encoding_gaussian_matrix", scale * torch.randn((2, num_pos_feats)))

    def _pe_encoding(self, coords: torch.Tensor) -> torch.Tensor:
        coords = (2 * coords - 1) @ self.positional_encoding_gaussian_matrix
        coords = 2 * math.pi * coords
        return torch.cat([coords.sin(), coords.cos()], dim=-1)

    def forward(self, size: tuple[int, int]) -> torch.Tensor:
        """Encoding of the centres of an ``h x w`` grid, ``[C, h, w]``."""
        h, w = size
        device = self.positional_encoding_gaussian_matrix.device
        ys = (torch.arange(h, device=device, dtype=torch.float32) + 0.5) / h
        xs = (torch.arange(w, device=device, dtype=torch.float32) + 0.5) / w
        grid = torch.stack((xs[None, :].expand(h, w), ys[:, None].expand(h, w)), dim=-1)
        return self._pe_encoding(grid).permute(2, 0, 1)

    def forward_with_coords(self, coords_input: torch.Tensor, image_size: tuple[int, int]) -> torch.Tensor:
        """Encode pixel coordinates ``[B, N, 2]`` (x, y) of an image of ``image_size`` (h, w)."""
        coords = torch.stack((coords_input[..., 0] / image_size[1], coords_input[..., 1] / image_size[0]), dim=-1)
        return self._pe_encoding(coords.to(torch.float))

"""Hiera, SAM 2's hierarchical image trunk (https://arxiv.org/abs/2306.00989).

Four stages of transformer blocks; each stage after the first starts with a block that pools the
queries 2x2 (halving the resolution) and widens the channels. Blocks attend inside windows except
a few global ones. Checkpoint keys follow the official model (``trunk.blocks.<i>.attn.qkv`` ...).
The modules below are the reference computation. A faster route for inference (the same
arithmetic reorganised, :mod:`.hiera_fast`) is chosen per trunk by :meth:`Hiera.set_inference_route`
and lives there with its state; this file only holds the setting.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from .layers import MLP, DropPath
from .windows import max_pool_nhwc, padded_size, window_partition, window_unpartition

ROUTES = ("fast", "reference")


class PatchEmbed(nn.Module):
    """7x7 stride-4 convolution; output channels-last ``[B, H/4, W/4, C]``."""

    def __init__(
        self, kernel_size=(7, 7), stride=(4, 4), padding=(3, 3), in_chans: int = 3, embed_dim: int = 768
    ) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=kernel_size, stride=stride, padding=padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).permute(0, 2, 3, 1)


class MultiScaleAttention(nn.Module):
    """Multi-head self-attention whose queries may be max-pooled (stage transitions)."""

    def __init__(self, dim: int, dim_out: int, num_heads: int, q_stride: tuple[int, int] | None = None) -> None:
        super().__init__()
        self.dim, self.dim_out, self.num_heads = dim, dim_out, num_heads
        self.q_stride = q_stride
        self.qkv = nn.Linear(dim, dim_out * 3)
        self.proj = nn.Linear(dim_out, dim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.attend(self.qkv(x)))

    def attend(self, qkv: torch.Tensor) -> torch.Tensor:
        """``qkv [B, H, W, 3 * dim_out]`` -> the heads' outputs ``[B, H', W', dim_out]`` (``H', W'``
        after the query pooling)."""
        b, h, w, _ = qkv.shape
        q, k, v = qkv.view(b, h * w, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)  # [B, heads, HW, d]
        if self.q_stride is not None:
            q = max_pool_nhwc(q.transpose(1, 2).reshape(b, h, w, -1), self.q_stride)
            h, w = q.shape[1:3]
            q = q.reshape(b, h * w, self.num_heads, -1).transpose(1, 2)
        x = F.scaled_dot_product_attention(q, k, v)
        return x.transpose(1, 2).reshape(b, h, w, -1)


class MultiScaleBlock(nn.Module):
    """Pre-norm transformer block with optional windowing and query pooling."""

    def __init__(
        self,
        dim: int,
        dim_out: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        drop_path: float = 0.0,
        q_stride: tuple[int, int] | None = None,
        window_size: int = 0,
    ) -> None:
        super().__init__()
        self.dim, self.dim_out = dim, dim_out
        self.window_size = window_size
        self.q_stride = q_stride
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = MultiScaleAttention(dim, dim_out, num_heads, q_stride=q_stride)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim_out, eps=1e-6)
        self.mlp = MLP(dim_out, int(dim_out * mlp_ratio), dim_out, num_layers=2, activation=nn.GELU)
        if dim != dim_out:
            self.proj = nn.Linear(dim, dim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x  # [B, H, W, C]
        x = self.norm1(x)
        if self.dim != self.dim_out:  # the widening block projects (and pools) the residual branch
            shortcut = self.proj(x)
            if self.q_stride is not None:
                shortcut = max_pool_nhwc(shortcut, self.q_stride)
        window = self.window_size
        if window > 0:
            hw = (x.shape[1], x.shape[2])
            x, padded_hw = window_partition(x, window)
        x = self.attn(x)
        if window > 0:
            if self.q_stride is not None:  # the pooled windows are q_stride times smaller
                window = window // self.q_stride[0]
                hw = (shortcut.shape[1], shortcut.shape[2])
                padded_hw = padded_size(hw, window)
            x = window_unpartition(x, window, padded_hw, hw)
        x = shortcut + self.drop_path(x)
        return x + self.drop_path(self.mlp(self.norm2(x)))


class Hiera(nn.Module):
    """The Hiera trunk. ``forward`` returns the last block of each stage as NCHW maps, highest
    resolution first (strides 4, 8, 16, 32). ``inference_route`` ("fast" | "reference") and
    ``linear_backend`` ("mkl" | "onednn", ``None``: :func:`.linear.default_backend`) are per-trunk
    settings; see :meth:`set_inference_route`, :meth:`set_linear_backend` and
    :meth:`set_grad_checkpointing`."""

    fast_route: Any  # a .hiera_fast.FastRoute on the fast route, else None

    def __init__(
        self,
        embed_dim: int = 96,
        num_heads: int = 1,
        drop_path_rate: float = 0.0,
        q_pool: int = 3,
        q_stride: tuple[int, int] = (2, 2),
        stages: tuple[int, ...] = (2, 3, 16, 3),
        dim_mul: float = 2.0,
        head_mul: float = 2.0,
        window_pos_embed_bkg_spatial_size: tuple[int, int] = (14, 14),
        window_spec: tuple[int, ...] = (8, 4, 14, 7),
        global_att_blocks: tuple[int, ...] = (12, 16, 20),
        weights_path: str | None = None,
        return_interm_layers: bool = True,
        inference_route: str = "fast",
        linear_backend: str | None = None,
    ) -> None:
        super().__init__()
        if len(stages) != len(window_spec):
            raise ValueError(f"stages {stages} and window_spec {window_spec} must have the same length")
        if weights_path is not None:
            raise ValueError("Hiera(weights_path=...) is not supported; load a SAM 2 checkpoint instead")
        self.window_spec = tuple(window_spec)
        self.q_stride = (q_stride[0], q_stride[1])
        self.stage_ends = [sum(stages[: i + 1]) - 1 for i in range(len(stages))]
        if not 0 <= q_pool <= len(stages) - 1:
            raise ValueError(f"q_pool must be in [0, {len(stages) - 1}], got {q_pool}")
        self.q_pool_blocks = [end + 1 for end in self.stage_ends[:-1]][:q_pool]
        self.return_interm_layers = return_interm_layers
        self.global_att_blocks = tuple(global_att_blocks or ())
        self.patch_embed = PatchEmbed(embed_dim=embed_dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, embed_dim, *window_pos_embed_bkg_spatial_size))
        self.pos_embed_window = nn.Parameter(torch.zeros(1, embed_dim, window_spec[0], window_spec[0]))

        depth = sum(stages)
        drop_rates = torch.linspace(0, drop_path_rate, depth).tolist()
        self.blocks = nn.ModuleList()
        stage = 0
        dim = embed_dim
        for i in range(depth):
            dim_out = dim
            # a stage's first block still uses the previous stage's window size
            window = 0 if i in self.global_att_blocks else self.window_spec[stage]
            if i - 1 in self.stage_ends:
                dim_out = int(dim * dim_mul)
                num_heads = int(num_heads * head_mul)
                stage += 1
            self.blocks.append(
                MultiScaleBlock(
                    dim,
                    dim_out,
                    num_heads,
                    drop_path=drop_rates[i],
                    q_stride=self.q_stride if i in self.q_pool_blocks else None,
                    window_size=window,
                )
            )
            dim = dim_out
        ends = self.stage_ends[::-1] if return_interm_layers else [self.stage_ends[-1]]
        self.channel_list = [self.blocks[i].dim_out for i in ends]
        self.kept_blocks = set(self.stage_ends) if return_interm_layers else {self.stage_ends[-1]}
        self.grad_checkpointing = False
        self.linear_backend = linear_backend  # None: .linear.default_backend() when the fast route is made
        self.fast_route = None
        self.set_inference_route(inference_route)

    def set_inference_route(self, route: str) -> Hiera:
        """``"fast"`` (default): inference runs :mod:`.hiera_fast` (same numbers, rel <= 1e-5).
        Whenever an autograd graph is needed (grad enabled and the input or a parameter requires
        grad), or drop-path is active in training mode, the trunk runs the reference blocks, so
        gradients are the reference ones. ``"reference"``: always the reference blocks."""
        if route not in ROUTES:
            raise ValueError(f"inference_route must be one of {ROUTES}, got {route!r}")
        self.inference_route = route
        if route == "reference":
            self.fast_route = None
        elif self.fast_route is None:
            from .hiera_fast import FastRoute  # the fast route, its backend and its caches live there

            self.fast_route = FastRoute(self.linear_backend)
            self.linear_backend = self.fast_route.backend
        return self

    def set_linear_backend(self, name: str | None) -> Hiera:
        """The fast route's GEMM backend, ``"mkl"`` | ``"onednn"`` (:mod:`.linear`); ``None`` takes
        :func:`.linear.default_backend`. The old backend's packed weight copies are dropped. The
        video predictor encodes frames on ``"mkl"`` whatever this says (:func:`.linear.exact_gemm`)."""
        from .linear import check_backend, default_backend

        self.linear_backend = check_backend(default_backend() if name is None else name)
        if self.fast_route is not None:
            self.fast_route.set_backend(self.linear_backend)
        return self

    def set_grad_checkpointing(self, enable: bool = True) -> Hiera:
        """Recompute each block's activations in the backward pass instead of storing them (less
        memory, one more forward per block), for blocks that build an autograd graph."""
        self.grad_checkpointing = bool(enable)
        return self

    def clear_caches(self) -> None:
        """Free the fast route's weight copies and position embedding (rebuilt on the next call)."""
        if self.fast_route is not None:
            self.fast_route.clear()

    def position_embedding(self, hw: tuple[int, int]) -> torch.Tensor:
        """The background embedding interpolated to the token grid ``hw`` plus the window embedding
        tiled over it: ``[1, H, W, C]`` (channels-last, added to the patch embedding)."""
        h, w = hw
        win = self.pos_embed_window.shape[-1]
        if h % win or w % win:
            raise ValueError(
                f"Hiera needs a token grid that is a multiple of {win} (image sides a multiple of "
                f"{4 * win}); got a {h}x{w} grid (image {4 * h}x{4 * w})"
            )
        pos = F.interpolate(self.pos_embed, size=(h, w), mode="bicubic")
        pos = pos + self.pos_embed_window.tile(1, 1, h // win, w // win)
        return pos.permute(0, 2, 3, 1)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """``x [B, 3, H, W]`` (normalised images, sides multiples of 32) -> the kept stage maps,
        NCHW, highest resolution first."""
        fast = self.fast_route  # read once per forward
        if fast is not None and fast.applies(self, x):
            return fast(self, x)
        x = self.patch_embed(x)  # [B, H/4, W/4, C]
        x = x + self.position_embedding((x.shape[1], x.shape[2]))
        outputs = []
        for i, block in enumerate(self.blocks):
            if self.grad_checkpointing and _builds_graph(block, x):
                x = checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
            if i in self.kept_blocks:
                outputs.append(x.permute(0, 3, 1, 2))
        return outputs

    def get_num_layers(self) -> int:
        return len(self.blocks)

    def get_layer_id(self, layer_name: str) -> int:
        """Layer index for layer-wise learning-rate decay (as the official)."""
        n = self.get_num_layers()
        if "pos_embed" in layer_name or "patch_embed" in layer_name:
            return 0
        if "blocks" in layer_name:
            return int(layer_name.split("blocks")[1].split(".")[1]) + 1
        return n + 1


def _builds_graph(block: nn.Module, x: torch.Tensor) -> bool:
    return torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in block.parameters()))

"""Hiera, SAM 2's hierarchical image trunk (https://arxiv.org/abs/2306.00989).

Four stages of transformer blocks; each stage after the first starts with a block that pools the
queries 2x2 (halving the resolution) and widens the channels. Blocks attend inside windows except
a few global ones. Checkpoint keys follow the official model (``trunk.blocks.<i>.attn.qkv`` ...).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .layers import MLP, DropPath
from .linear import fused_linear


def window_partition(x: torch.Tensor, window: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """``[B, H, W, C]`` -> ``[B * nWindows, window, window, C]``, zero-padding H and W up to a
    multiple of ``window``. Returns the windows and the padded size."""
    b, h, w, c = x.shape
    pad_h, pad_w = (-h) % window, (-w) % window
    if pad_h or pad_w:
        x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
    hp, wp = h + pad_h, w + pad_w
    x = x.view(b, hp // window, window, wp // window, window, c).transpose(2, 3)
    return x.reshape(-1, window, window, c), (hp, wp)


def window_unpartition(windows: torch.Tensor, window: int, padded_hw: tuple[int, int],
                       hw: tuple[int, int]) -> torch.Tensor:
    """Inverse of :func:`window_partition`, dropping the padding."""
    hp, wp = padded_hw
    h, w = hw
    b = windows.shape[0] // ((hp // window) * (wp // window))
    x = windows.view(b, hp // window, wp // window, window, window, -1).transpose(2, 3)
    x = x.reshape(b, hp, wp, -1)
    if hp > h or wp > w:
        x = x[:, :h, :w, :]
    return x


def _max_pool_nhwc(x: torch.Tensor, stride: tuple[int, int]) -> torch.Tensor:
    return F.max_pool2d(x.permute(0, 3, 1, 2), kernel_size=stride, stride=stride).permute(0, 2, 3, 1)


class PatchEmbed(nn.Module):
    """7x7 stride-4 convolution; output channels-last ``[B, H/4, W/4, C]``."""

    def __init__(self, kernel_size=(7, 7), stride=(4, 4), padding=(3, 3), in_chans: int = 3,
                 embed_dim: int = 768) -> None:
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

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        """Attention of ``x [B, H, W, C]``; with ``residual``, returns ``residual + attention``."""
        return fused_linear(self.attend(fused_linear(x, self.qkv)), self.proj, residual=residual)

    def attend(self, qkv: torch.Tensor) -> torch.Tensor:
        """The attention between the projections: ``qkv [B, H, W, 3 * dim_out]`` -> the heads'
        outputs ``[B, H', W', dim_out]`` (``H', W'`` after the query pooling)."""
        b, h, w, _ = qkv.shape
        q, k, v = qkv.view(b, h * w, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)  # [B, heads, HW, d]
        if self.q_stride is not None:
            q = q.transpose(1, 2).reshape(b, h, w, -1)
            q = _max_pool_nhwc(q, self.q_stride)
            h, w = q.shape[1:3]
            q = q.reshape(b, h * w, self.num_heads, -1).transpose(1, 2)
        x = F.scaled_dot_product_attention(q, k, v)
        return x.transpose(1, 2).reshape(b, h, w, -1)

    def forward_padded_windows(self, x: torch.Tensor, window: int,
                               residual: torch.Tensor | None = None) -> torch.Tensor:
        """Windowed attention of ``x [B, H, W, C]`` whose sides are not multiples of ``window``
        (inference). The reference zero-pads ``x`` and projects every padded token; a zero token's
        projections are just the biases, so here only the real tokens go through ``qkv`` and
        ``proj`` and the padding is filled with the bias (same numbers, fewer FLOPs)."""
        b, h, w, _ = x.shape
        qkv = fused_linear(x, self.qkv)
        hp, wp = h + (-h) % window, w + (-w) % window
        padded = qkv.new_empty(b, hp, wp, qkv.shape[-1])
        padded[:, :h, :w] = qkv
        bias = self.qkv.bias if self.qkv.bias is not None else qkv.new_zeros(qkv.shape[-1])
        padded[:, h:] = bias
        padded[:, :h, w:] = bias
        out = self.attend(window_partition(padded, window)[0])
        if self.q_stride is not None:
            window, h, w = window // self.q_stride[0], h // self.q_stride[0], w // self.q_stride[1]
            hp, wp = hp // self.q_stride[0], wp // self.q_stride[1]
        return fused_linear(window_unpartition(out, window, (hp, wp), (h, w)), self.proj, residual=residual)


class MultiScaleBlock(nn.Module):
    """Pre-norm transformer block with optional windowing and query pooling."""

    def __init__(self, dim: int, dim_out: int, num_heads: int, mlp_ratio: float = 4.0,
                 drop_path: float = 0.0, q_stride: tuple[int, int] | None = None,
                 window_size: int = 0) -> None:
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
        if torch.is_grad_enabled():
            return self._forward_reference(x)
        # Inference: the same arithmetic, run over cache-sized chunks of tokens so the large
        # intermediate tensors (qkv, MLP hidden) are never materialised for the whole map.
        if self._windows_fit(x):
            return self._forward_windows_chunked(x)
        if self.window_size > 0 and not self._drop_path_active():
            x = self._padded_attention_residual(x)
        else:
            x = self._attention_residual(x)
        return _rowwise_chunked(x, self._mlp_residual, _chunk_rows(self.mlp))

    def _padded_attention_residual(self, x: torch.Tensor) -> torch.Tensor:
        normed = self.norm1(x)
        return self.attn.forward_padded_windows(normed, self.window_size, residual=self._shortcut(x, normed))

    def _shortcut(self, x: torch.Tensor, normed: torch.Tensor) -> torch.Tensor:
        """The residual branch: ``x``, or where the block widens, the projected (and, with query
        pooling, pooled) normed input."""
        if self.dim == self.dim_out:
            return x
        shortcut = self.proj(normed)
        return _max_pool_nhwc(shortcut, self.q_stride) if self.q_stride is not None else shortcut

    def _drop_path_active(self) -> bool:
        return self.training and not isinstance(self.drop_path, nn.Identity)

    def _mlp_residual(self, x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """``x + mlp(norm2(x))``; ``out`` (inference only) receives it."""
        if self._drop_path_active():
            return x + self.drop_path(self.mlp(self.norm2(x)))
        fc1, fc2 = self.mlp.layers
        return fused_linear(fused_linear(self.norm2(x), fc1, gelu=True), fc2, residual=x, out=out)

    def _attn_residual(self, normed: torch.Tensor, shortcut: torch.Tensor) -> torch.Tensor:
        if self._drop_path_active():
            return shortcut + self.drop_path(self.attn(normed))
        return self.attn(normed, residual=shortcut)

    def _windows_fit(self, x: torch.Tensor) -> bool:
        return self.windows_fit(x.shape[1], x.shape[2])

    def windows_fit(self, h: int, w: int) -> bool:
        """True when an ``h x w`` map tiles into whole windows (no padding) that the query pooling
        keeps whole: then the block can run on windows alone (:meth:`forward_windows`)."""
        window = self.window_size
        if window <= 0 or h % window or w % window:
            return False
        return self.q_stride is None or (window % self.q_stride[0] == 0 and window % self.q_stride[1] == 0)

    def out_window(self) -> int:
        return self.window_size // self.q_stride[0] if self.q_stride is not None else self.window_size

    def _forward_windows_chunked(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[1:3]
        out = self.forward_windows(window_partition(x, self.window_size)[0])
        out_hw = (h // self.q_stride[0], w // self.q_stride[1]) if self.q_stride is not None else (h, w)
        return window_unpartition(out, self.out_window(), out_hw, out_hw)

    def forward_windows(self, windows: torch.Tensor) -> torch.Tensor:
        """Inference on windows ``[B * nW, window, window, C]`` (as :func:`window_partition` makes
        them, no padding): the whole block, one cache-sized group of windows at a time. Returns
        windows of :meth:`out_window` side."""
        window = self.window_size
        out_window = self.out_window()
        out = windows.new_empty(windows.shape[0], out_window, out_window, self.dim_out)
        step = max(1, _chunk_rows(self.mlp) // (window * window))
        for start in range(0, windows.shape[0], step):
            chunk = windows[start: start + step]
            normed = self.norm1(chunk)
            self._mlp_residual(self._attn_residual(normed, self._shortcut(chunk, normed)),
                               out=out[start: start + step])
        return out

    def _attention_residual(self, x: torch.Tensor) -> torch.Tensor:
        normed = self.norm1(x)
        shortcut = self._shortcut(x, normed)
        x = normed
        window = self.window_size
        if window > 0:
            hw = x.shape[1:3]
            x, padded_hw = window_partition(x, window)
        x = self.attn(x)
        if window > 0:
            if self.q_stride is not None:
                # the pooled block keeps the previous stage's window, now q_stride times smaller
                window = window // self.q_stride[0]
                hw = shortcut.shape[1:3]
                padded_hw = (hw[0] + (-hw[0]) % window, hw[1] + (-hw[1]) % window)
            x = window_unpartition(x, window, padded_hw, hw)
        return shortcut + self.drop_path(x)

    def _forward_reference(self, x: torch.Tensor) -> torch.Tensor:
        return self._mlp_residual(self._attention_residual(x))


_CHUNK_ELEMENTS = 1 << 22  # MLP-hidden elements per chunk on the inference path (16 MB in fp32)


def _chunk_rows(mlp: MLP) -> int:
    return max(1024, _CHUNK_ELEMENTS // mlp.layers[0].out_features)


def _rowwise_chunked(x: torch.Tensor, fn, rows: int) -> torch.Tensor:
    """Apply a per-token function ``fn(rows, out=...)`` to ``[..., C]`` in chunks of rows, each
    chunk written straight into one output."""
    flat = x.reshape(-1, x.shape[-1])
    if flat.shape[0] <= rows:
        return fn(x)
    out = torch.empty_like(flat)
    for start in range(0, flat.shape[0], rows):
        fn(flat[start: start + rows], out=out[start: start + rows])
    return out.view(x.shape)


class Hiera(nn.Module):
    """The Hiera trunk. ``forward`` returns the last block of each stage as NCHW maps, highest
    resolution first (strides 4, 8, 16, 32)."""

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
    ) -> None:
        super().__init__()
        if len(stages) != len(window_spec):
            raise ValueError(f"stages {stages} and window_spec {window_spec} must have the same length")
        if weights_path is not None:
            raise ValueError("Hiera(weights_path=...) is not supported; load a SAM 2 checkpoint instead")
        self.window_spec = tuple(window_spec)
        self.q_stride = tuple(q_stride)
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
            self.blocks.append(MultiScaleBlock(
                dim, dim_out, num_heads, drop_path=drop_rates[i],
                q_stride=self.q_stride if i in self.q_pool_blocks else None, window_size=window,
            ))
            dim = dim_out
        ends = self.stage_ends[::-1] if return_interm_layers else [self.stage_ends[-1]]
        self.channel_list = [self.blocks[i].dim_out for i in ends]
        self._pos_cache: dict = {}

    def _get_pos_embed(self, hw: tuple[int, int]) -> torch.Tensor:
        """Background embedding interpolated to ``hw`` plus the window embedding tiled over it
        (channels-last). Cached per size while the embeddings are not being trained."""
        h, w = hw
        win = self.pos_embed_window.shape[-1]
        if h % win or w % win:
            raise ValueError(
                f"Hiera needs a token grid that is a multiple of {win} (image sides a multiple of "
                f"{4 * win}); got a {h}x{w} grid (image {4 * h}x{4 * w})"
            )
        cacheable = not torch.compiler.is_compiling() and not (torch.is_grad_enabled() and (self.pos_embed.requires_grad or self.pos_embed_window.requires_grad))
        key = (h, w, self.pos_embed.device, self.pos_embed.dtype,
               self.pos_embed._version, self.pos_embed_window._version)
        if cacheable and key in self._pos_cache:
            return self._pos_cache[key]
        pos = F.interpolate(self.pos_embed, size=(h, w), mode="bicubic")
        pos = pos + self.pos_embed_window.tile(1, 1, h // win, w // win)
        pos = pos.permute(0, 2, 3, 1)
        if cacheable:
            self._pos_cache = {key: pos.detach()}
        return pos

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.patch_embed(x)
        x = x + self._get_pos_embed(tuple(x.shape[1:3]))
        keep = set(self.stage_ends) if self.return_interm_layers else {self.stage_ends[-1]}
        if not torch.is_grad_enabled():
            return self._forward_inference(x, keep)
        outputs = []
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i in keep:
                outputs.append(x.permute(0, 3, 1, 2))
        return outputs

    def _forward_inference(self, x: torch.Tensor, keep: set[int]) -> list[torch.Tensor]:
        """The same blocks, but consecutive windowed blocks pass the map along as windows: the
        partition / unpartition copies happen only where the window size changes, at global
        blocks and at stage outputs (token order inside a block does not matter)."""
        outputs = []
        window = 0  # > 0 while x holds windows of this side
        h, w = x.shape[1:3]
        for i, block in enumerate(self.blocks):
            if block.windows_fit(h, w):
                if window != block.window_size:
                    if window:
                        x = window_unpartition(x, window, (h, w), (h, w))
                    x, _ = window_partition(x, block.window_size)
                x = block.forward_windows(x)
                window = block.out_window()
                if block.q_stride is not None:
                    h, w = h // block.q_stride[0], w // block.q_stride[1]
            else:
                if window:
                    x, window = window_unpartition(x, window, (h, w), (h, w)), 0
                x = block(x)
                h, w = x.shape[1:3]
            if i in keep:
                fmap = window_unpartition(x, window, (h, w), (h, w)) if window else x
                outputs.append(fmap.permute(0, 3, 1, 2))
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

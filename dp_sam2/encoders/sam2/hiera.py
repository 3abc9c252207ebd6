"""Hiera, SAM 2's hierarchical image trunk (https://arxiv.org/abs/2306.00989).

Four stages of transformer blocks; each stage after the first starts with a block that pools the
queries 2x2 (halving the resolution) and widens the channels. Blocks attend inside windows except
a few global ones. Checkpoint keys follow the official model (``trunk.blocks.<i>.attn.qkv`` ...).
The modules below are the reference computation; :mod:`.hiera_fast` is the same arithmetic
reorganised for inference, chosen per trunk by :meth:`Hiera.set_inference_route`.
"""

from __future__ import annotations

import weakref

import torch
import torch.nn.functional as F
from torch import nn

from . import hiera_fast
from .layers import MLP, DropPath
from .linear import LinearBackend, pack_weight
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
            hw = x.shape[1:3]
            x, padded_hw = window_partition(x, window)
        x = self.attn(x)
        if window > 0:
            if self.q_stride is not None:  # the pooled windows are q_stride times smaller
                window = window // self.q_stride[0]
                hw = shortcut.shape[1:3]
                padded_hw = padded_size(hw, window)
            x = window_unpartition(x, window, padded_hw, hw)
        x = shortcut + self.drop_path(x)
        return x + self.drop_path(self.mlp(self.norm2(x)))


class Hiera(nn.Module):
    """The Hiera trunk. ``forward`` returns the last block of each stage as NCHW maps, highest
    resolution first (strides 4, 8, 16, 32). ``inference_route`` ("fast" | "reference") and
    ``linear_backend`` ("mkl" | "onednn" | "mixed" | "auto", default :func:`.linear.default_backend`) are
    per-trunk settings; see :meth:`set_inference_route` and :meth:`set_linear_backend`."""

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
        self._pos_cache: dict = {}
        self._lowp_cache: dict = {}  # (id(param), dtype, pack) -> (weakref, stamp, copy); never saved
        self.set_inference_route(inference_route)
        self.set_linear_backend(linear_backend)

    def set_inference_route(self, route: str) -> Hiera:
        """``"fast"`` (default): inference runs :mod:`.hiera_fast` (same numbers, rel <= 1e-5).
        Whenever an autograd graph is needed (grad enabled and ``x`` or a parameter requires grad),
        or drop-path is active in training mode, the trunk falls back to the reference route, so
        gradients are the reference ones. ``"reference"``: always the plain blocks."""
        if route not in ROUTES:
            raise ValueError(f"inference_route must be one of {ROUTES}, got {route!r}")
        self.inference_route = route
        return self

    def set_linear_backend(self, name: str | None) -> Hiera:
        """The fast route's GEMM backend, ``"mkl"`` | ``"onednn"`` | ``"mixed"`` | ``"auto"`` (:mod:`.linear`);
        ``None`` takes :func:`.linear.default_backend`. ``"auto"`` starts its timings afresh. The
        previous backend's packed fp32 weight copies are dropped (the new one packs what it needs)."""
        self.linear = LinearBackend(name)
        self._lowp_cache = {k: v for k, v in self._lowp_cache.items() if k[1:] != (torch.float32, True)}
        return self

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
        trains = torch.is_grad_enabled() and (self.pos_embed.requires_grad or self.pos_embed_window.requires_grad)
        cacheable = not torch.compiler.is_compiling() and not trains
        key = (
            h,
            w,
            self.pos_embed.device,
            self.pos_embed.dtype,
            self.pos_embed._version,
            self.pos_embed_window._version,
        )
        if cacheable and key in self._pos_cache:
            return self._pos_cache[key]
        pos = F.interpolate(self.pos_embed, size=(h, w), mode="bicubic")
        pos = pos + self.pos_embed_window.tile(1, 1, h // win, w // win)
        pos = pos.permute(0, 2, 3, 1)
        if cacheable:
            self._pos_cache = {key: pos.detach()}
        return pos

    def lowp_weight(self, t: torch.Tensor | None, dtype: torch.dtype, pack: bool = False) -> torch.Tensor | None:
        """``t`` in ``dtype`` (``pack``: in oneDNN's GEMM layout, :func:`.linear.pack_weight`).
        For a parameter the copy is made once and kept until the parameter changes (in-place update,
        ``load_state_dict``, ``.to()``: keyed on ``_version``, storage and device). Not a buffer:
        never in ``state_dict``. (``p.data.copy_(...)`` bypasses ``_version``: use ``p.copy_``.)"""
        if t is None or (t.dtype == dtype and not pack):
            return t
        if torch.compiler.is_compiling() or not isinstance(t, nn.Parameter) or t.is_inference():
            return pack_weight(t, dtype) if pack else t.detach().to(dtype)
        stamp = (t._version, t.data_ptr(), t.device, t.dtype, t.shape)
        key = (id(t), dtype, pack)
        entry = self._lowp_cache.get(key)
        if entry is not None and entry[0]() is t and entry[1] == stamp:
            return entry[2]
        copy = pack_weight(t, dtype) if pack else t.detach().to(dtype)
        self._lowp_cache[key] = (weakref.ref(t), stamp, copy)
        return copy

    def clear_caches(self) -> None:
        """Drop the position-embedding and low-precision weight caches (rebuilt on the next call)."""
        self._pos_cache, self._lowp_cache = {}, {}

    def _apply(self, fn, *args, **kwargs):  # .to() / .cuda() / .float(): the copies would be stale
        self.clear_caches()
        return super()._apply(fn, *args, **kwargs)

    def _load_from_state_dict(self, *args, **kwargs):
        self.clear_caches()
        return super()._load_from_state_dict(*args, **kwargs)

    def __getstate__(self):  # deepcopy (EMA) and pickling copy the module without its caches
        state = super().__getstate__() if hasattr(super(), "__getstate__") else self.__dict__
        return {**state, "_pos_cache": {}, "_lowp_cache": {}}

    def _use_fast_route(self, x: torch.Tensor) -> bool:
        if self.inference_route != "fast":
            return False
        if self.training and any(not isinstance(b.drop_path, nn.Identity) for b in self.blocks):
            return False
        return not (torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in self.parameters())))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.patch_embed(x)
        x = x + self._get_pos_embed(tuple(x.shape[1:3]))
        if self._use_fast_route(x):
            return hiera_fast.forward_trunk(self, x)
        outputs = []
        for i, block in enumerate(self.blocks):
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

"""Hiera's fast inference route: the reference blocks' arithmetic, reorganised (no autograd).

* windowed blocks run window-group by window-group in cache-sized chunks (attention and MLP
  together), each group's result written straight into the output;
* consecutive windowed blocks pass the map along as windows: partition / unpartition copies only
  where the window size changes, at global blocks and at stage outputs;
* where windows do not tile the map, only real tokens go through ``qkv`` / ``proj`` and the
  padding gets ``qkv``'s bias (what a zero token projects to);
* global blocks run their MLP in row chunks; linears go through the trunk's linear backend
  (:mod:`.linear`).

A trunk on this route holds one :class:`FastRoute` (``Hiera.set_inference_route("fast")``): the
backend's name and the route's caches (weight copies, the position embedding). Equal to the
reference within rel 1e-5 in fp32 (tests/test_fast_paths.py).
"""

from __future__ import annotations

import warnings
import weakref
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from .linear import (
    can_pack,
    check_backend,
    default_backend,
    effective_backend,
    linear_act_residual,
    onednn_bf16,
    onednn_runs,
    pack_weight,
)
from .windows import max_pool_nhwc, padded_size, window_partition, window_unpartition

if TYPE_CHECKING:
    from .hiera import Hiera

CHUNK_ELEMENTS = 1 << 22  # MLP-hidden elements per chunk of tokens (16 MB in fp32)


class FastRoute:
    """One trunk's fast route: its linear backend (``"mkl"`` | ``"onednn"``) and its caches, none of
    them in ``state_dict``, deep copies or pickles.

    ``weight_copies``: ``(id(param), dtype, packed) -> (weakref, stamp, copy)``, a parameter cast to
    the route's dtype (bf16 under autocast) and/or packed into oneDNN's GEMM layout
    (:func:`.linear.pack_weight`; fp32 for ``"onednn"``, bf16 on CPUs with oneDNN bf16 kernels). A
    copy is made once and kept until its parameter changes (in-place update, ``load_state_dict``,
    ``.to()``: keyed on ``_version``, storage and device; ``p.data.copy_(...)`` bypasses
    ``_version``: use ``p.copy_``). ``pos_embed``: the trunk's position embedding at the last size."""

    def __init__(self, backend: str | None = None) -> None:
        self.backend = check_backend(default_backend() if backend is None else backend)
        self.weight_copies: dict[tuple, tuple] = {}
        self.pos_embed: dict[tuple, torch.Tensor] = {}

    def __repr__(self) -> str:
        return f"FastRoute(backend={self.backend!r}, {len(self.weight_copies)} weight copies)"

    @staticmethod
    def _packed_fp32(key: tuple) -> bool:
        return key[1:] == (torch.float32, True)

    def packed_fp32(self) -> set[int]:
        """``id``s of the parameters held as oneDNN-packed fp32 copies (what ``"onednn"`` made)."""
        return {k[0] for k in self.weight_copies if self._packed_fp32(k)}

    def set_backend(self, name: str) -> None:
        """Switch the GEMM backend; the packed fp32 copies the old one made are dropped."""
        self.backend = check_backend(name)
        self.weight_copies = {k: v for k, v in self.weight_copies.items() if not self._packed_fp32(k)}

    def clear(self) -> None:
        self.weight_copies, self.pos_embed = {}, {}

    def __getstate__(self) -> dict:  # deepcopy (DP's EMA) and pickles carry the setting, not the caches
        return {**self.__dict__, "weight_copies": {}, "pos_embed": {}}

    def applies(self, trunk: Hiera, images: torch.Tensor) -> bool:
        """Whether this forward can take the route: no autograd graph needed (grad off, or neither
        the input nor any parameter requires grad) and no drop-path active in training."""
        if trunk.training and any(not isinstance(b.drop_path, nn.Identity) for b in trunk.blocks):
            return False
        if not torch.is_grad_enabled():
            return True
        return not (images.requires_grad or any(p.requires_grad for p in trunk.parameters()))

    def weight(self, t: torch.Tensor | None, dtype: torch.dtype, pack: bool = False) -> torch.Tensor | None:
        """``t`` in ``dtype`` (``pack``: in oneDNN's GEMM layout), cached in ``weight_copies``."""
        if t is None or (t.dtype == dtype and not pack):
            return t
        if torch.compiler.is_compiling() or not isinstance(t, nn.Parameter) or t.is_inference():
            return pack_weight(t, dtype) if pack else t.detach().to(dtype)
        stamp = (t._version, t.data_ptr(), t.device, t.dtype, t.shape)
        key = (id(t), dtype, pack)
        entry = self.weight_copies.get(key)
        if entry is not None and entry[0]() is t and entry[1] == stamp:
            return entry[2]
        copy = pack_weight(t, dtype) if pack else t.detach().to(dtype)
        self.weight_copies[key] = (weakref.ref(t), stamp, copy)
        return copy

    def position_embedding(self, trunk: Hiera, hw: tuple[int, int]) -> torch.Tensor:
        """``trunk.position_embedding(hw)``, kept while the embeddings do not change."""
        key = (
            *hw,
            trunk.pos_embed.device,
            trunk.pos_embed.dtype,
            trunk.pos_embed._version,
            trunk.pos_embed_window._version,
        )
        if torch.compiler.is_compiling():
            return trunk.position_embedding(hw)
        if key not in self.pos_embed:
            self.pos_embed = {key: trunk.position_embedding(hw).detach()}
        return self.pos_embed[key]

    def __call__(self, trunk: Hiera, images: torch.Tensor) -> list[torch.Tensor]:
        """The trunk on ``images [B, 3, H, W]`` -> the kept stage maps (NCHW), as ``Hiera.forward``.

        Under ``torch.autocast(<device>, bfloat16)`` the blocks run in bf16 with autocast off:
        weights cast (on CPU: packed for oneDNN) once per parameter version, not per call;
        attention by SDPA in bf16; the stage maps come out in bf16, as the official's do under
        autocast (the neck, still under autocast, then returns the official's dtypes)."""
        x = trunk.patch_embed(images)
        x = x + self.position_embedding(trunk, (x.shape[1], x.shape[2]))
        device = x.device.type
        if torch.is_autocast_enabled(device) and torch.get_autocast_dtype(device) == torch.bfloat16:
            if device == "cpu" and not torch.compiler.is_compiling() and not onednn_bf16():
                warnings.warn(
                    "bf16 on this CPU runs about 5x slower than fp32 (oneDNN has no bf16 kernels "
                    "here: they need AVX-512 or AVX-NE-CONVERT; docs/speed.md): use fp32 on it",
                    stacklevel=3,
                )
            x = x.to(torch.bfloat16)
            with torch.autocast(device, enabled=False):
                return _run_blocks(_Run(self, torch.bfloat16, pack=can_pack(x)), trunk, x)
        return _run_blocks(_Run(self, x.dtype), trunk, x)


class _Run:
    """One forward's settings: the route (weight copies, backend) and the dtype everything runs in
    (fp32, or bf16 under bf16 autocast; LayerNorm and softmax statistics are accumulated in fp32 by
    the kernels either way). ``pack``: bf16 linears on packed weights. ``backend``: the route's,
    or ``"mkl"`` inside :func:`.linear.exact_gemm` (read once per forward)."""

    def __init__(self, route: FastRoute, dtype: torch.dtype, pack: bool = False) -> None:
        self.route, self.dtype, self.pack = route, dtype, pack
        self.backend = effective_backend(route.backend)

    def weights(self, layer):
        return self.route.weight(layer.weight, self.dtype, pack=self.pack), self.route.weight(layer.bias, self.dtype)

    def linear(self, x, layer, **kwargs):
        weight, bias = self.weights(layer)
        if not self.pack and self.backend == "onednn" and onednn_runs(x, weight):
            weight = self.route.weight(layer.weight, weight.dtype, pack=True)
        return linear_act_residual(x, weight, bias, backend=self.backend, **kwargs)

    def norm(self, x, ln):
        weight, bias = self.route.weight(ln.weight, x.dtype), self.route.weight(ln.bias, x.dtype)
        return F.layer_norm(x, ln.normalized_shape, weight, bias, ln.eps)


def chunk_rows(block) -> int:
    return max(1024, CHUNK_ELEMENTS // block.mlp.layers[0].out_features)


def windows_fit(block, h: int, w: int) -> bool:
    """True when an ``h x w`` map tiles into whole windows that the query pooling keeps whole:
    then the block can run on windows alone (:func:`block_on_windows`)."""
    window = block.window_size
    if window <= 0 or h % window or w % window:
        return False
    return block.q_stride is None or (window % block.q_stride[0] == 0 and window % block.q_stride[1] == 0)


def out_window(block) -> int:
    return block.window_size // block.q_stride[0] if block.q_stride is not None else block.window_size


def _shortcut(route: _Run, block, x, normed):
    if block.dim == block.dim_out:
        return x
    shortcut = route.linear(normed, block.proj)
    return max_pool_nhwc(shortcut, block.q_stride) if block.q_stride is not None else shortcut


def _attention_residual(route: _Run, block, x):
    """``shortcut + attn(norm1(x))`` on windows (or a whole map, for a global block)."""
    normed = route.norm(x, block.norm1)
    qkv = route.linear(normed, block.attn.qkv)
    return route.linear(block.attn.attend(qkv), block.attn.proj, residual=_shortcut(route, block, x, normed))


def _mlp_residual(route: _Run, block, x, out=None):
    fc1, fc2 = block.mlp.layers
    hidden = route.linear(route.norm(x, block.norm2), fc1, gelu=True)
    return route.linear(hidden, fc2, residual=x, out=out)


def block_on_windows(route: _Run, block, windows: torch.Tensor) -> torch.Tensor:
    """The whole block on windows ``[B * nW, window, window, C]`` (no padding), one cache-sized
    group of windows at a time. Returns windows of :func:`out_window` side."""
    side = out_window(block)
    out = windows.new_empty(windows.shape[0], side, side, block.dim_out)
    step = max(1, chunk_rows(block) // (block.window_size**2))
    for start in range(0, windows.shape[0], step):
        chunk = windows[start : start + step]
        _mlp_residual(route, block, _attention_residual(route, block, chunk), out=out[start : start + step])
    return out


def _padded_attention_residual(route: _Run, block, x):
    """Windowed attention on a map whose sides are not multiples of the window."""
    attn, window = block.attn, block.window_size
    normed = route.norm(x, block.norm1)
    shortcut = _shortcut(route, block, x, normed)
    qkv = route.linear(normed, attn.qkv)
    b, h, w, c = qkv.shape
    hp, wp = padded_size((h, w), window)
    padded = qkv.new_empty(b, hp, wp, c)
    padded[:, :h, :w] = qkv
    bias = route.weights(attn.qkv)[1]
    bias = bias if bias is not None else qkv.new_zeros(c)
    padded[:, h:] = bias
    padded[:, :h, w:] = bias
    out = attn.attend(window_partition(padded, window)[0])
    if block.q_stride is not None:
        window, h, w = window // block.q_stride[0], h // block.q_stride[0], w // block.q_stride[1]
        hp, wp = hp // block.q_stride[0], wp // block.q_stride[1]
    return route.linear(window_unpartition(out, window, (hp, wp), (h, w)), attn.proj, residual=shortcut)


def block_on_map(route: _Run, block, x: torch.Tensor) -> torch.Tensor:
    """The whole block on a map ``[B, H, W, C]`` (global block, or windows that need padding)."""
    x = _padded_attention_residual(route, block, x) if block.window_size > 0 else _attention_residual(route, block, x)
    flat = x.reshape(-1, x.shape[-1])
    rows = chunk_rows(block)
    if flat.shape[0] <= rows:
        return _mlp_residual(route, block, x)
    out = torch.empty_like(flat)
    for start in range(0, flat.shape[0], rows):
        _mlp_residual(route, block, flat[start : start + rows], out=out[start : start + rows])
    return out.view(x.shape)


def _run_blocks(route: _Run, trunk, x: torch.Tensor) -> list[torch.Tensor]:
    outputs = []
    window = 0  # > 0 while x holds windows of this side
    h, w = x.shape[1:3]
    for i, block in enumerate(trunk.blocks):
        if windows_fit(block, h, w):
            if window != block.window_size:
                if window:
                    x = window_unpartition(x, window, (h, w), (h, w))
                x, _ = window_partition(x, block.window_size)
            x = block_on_windows(route, block, x)
            window = out_window(block)
            if block.q_stride is not None:
                h, w = h // block.q_stride[0], w // block.q_stride[1]
        else:
            if window:
                x, window = window_unpartition(x, window, (h, w), (h, w)), 0
            x = block_on_map(route, block, x)
            h, w = x.shape[1:3]
        if i in trunk.kept_blocks:
            fmap = window_unpartition(x, window, (h, w), (h, w)) if window else x
            outputs.append(fmap.permute(0, 3, 1, 2))
    return outputs

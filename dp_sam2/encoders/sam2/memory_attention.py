"""Memory attention: the current frame's features attend to the memories of past frames.

Each layer is self-attention over the current frame (with 2-D rotary position encoding), then
cross-attention from the frame to the memory bank (spatial memories, rotary-encoded per frame, plus
object-pointer tokens that are not rotated), then an MLP. Inputs and outputs are sequence-first
``(L, B, C)``, as the tracking code stores them.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .transformer import Attention

_ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {"relu": F.relu, "gelu": F.gelu, "glu": F.glu}


def axial_rope_angles(head_dim: int, side_x: int, side_y: int, theta: float = 10000.0) -> torch.Tensor:
    """Rotation angles ``(side_x * side_y, head_dim // 2)`` of 2-D axial RoPE, row-major tokens.

    The first half of the rotated pairs encode the x coordinate, the second half y.
    """
    if head_dim % 4:
        raise ValueError(f"axial RoPE needs a head width divisible by 4, got {head_dim}")
    freqs = 1.0 / (theta ** (torch.arange(0, head_dim, 4)[: head_dim // 4].float() / head_dim))
    t = torch.arange(side_x * side_y, dtype=torch.float32)
    t_x = t % side_x
    t_y = torch.div(t, side_x, rounding_mode="floor")
    return torch.cat([torch.outer(t_x, freqs), torch.outer(t_y, freqs)], dim=-1)


def rotate_pairs(x: torch.Tensor, rotations: torch.Tensor) -> torch.Tensor:
    """Rotate consecutive channel pairs of ``x (..., N, D)`` by unit complex numbers
    ``rotations (n, D/2)``, ``N`` a multiple of ``n`` (the same rotations for each block of ``n``).

    One complex product in float32, as the reference computes it (bit-identical), cast back to
    ``x``'s dtype; no repeated rotation tables are built for multi-frame keys.
    """
    n, half = rotations.shape
    blocks = x.float().reshape(*x.shape[:-2], x.shape[-2] // n, n, half, 2)
    return torch.view_as_real(torch.view_as_complex(blocks) * rotations).reshape(x.shape).type_as(x)


class RoPEAttention(Attention):
    """Attention with 2-D axial rotary position encoding on queries and (a prefix of) keys.

    ``rope_k_repeat``: the keys hold several frames of the query's size; each frame gets the same
    rotations. The last ``num_k_exclude_rope`` keys (object pointers) are not rotated.
    """

    def __init__(
        self,
        *args,
        rope_theta: float = 10000.0,
        rope_k_repeat: bool = False,
        feat_sizes: tuple[int, int] = (64, 64),
        **kwargs,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.rope_theta = rope_theta
        self.rope_k_repeat = rope_k_repeat
        self.feat_sizes = tuple(feat_sizes)
        self._rope_cache: dict[tuple, torch.Tensor] = {}

    def _rotations(self, num_tokens: int, device: torch.device) -> torch.Tensor:
        side = math.isqrt(num_tokens)
        if side * side != num_tokens:
            raise ValueError(f"RoPE attention expects a square token grid, got {num_tokens} tokens")
        key = (side, device)
        if key not in self._rope_cache:
            angles = axial_rope_angles(self.internal_dim // self.num_heads, side, side, self.rope_theta)
            self._rope_cache[key] = torch.polar(torch.ones_like(angles), angles).to(device)
        return self._rope_cache[key]

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, num_k_exclude_rope: int = 0) -> torch.Tensor:
        q = self._split_heads(self.q_proj(q))
        k = self._split_heads(self.k_proj(k))
        v = self._split_heads(self.v_proj(v))

        n_q = q.shape[-2]
        rotations = self._rotations(n_q, q.device)
        q = rotate_pairs(q, rotations)
        n_rope = k.shape[-2] - num_k_exclude_rope
        if n_rope > 0:
            if n_rope != n_q and not self.rope_k_repeat:
                raise ValueError(f"{n_rope} keys to rotate but {n_q} queries and rope_k_repeat is off")
            if n_rope % n_q:
                raise ValueError(f"{n_rope} rotated keys are not a whole number of {n_q}-token frames")
            k_rot = rotate_pairs(k[:, :, :n_rope], rotations)
            k = torch.cat([k_rot, k[:, :, n_rope:]], dim=2) if num_k_exclude_rope else k_rot

        out = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout_p if self.training else 0.0)
        return self.out_proj(self._merge_heads(out))


class MemoryAttentionLayer(nn.Module):
    """Pre-norm self-attention, cross-attention to memory, and MLP, each with a residual."""

    def __init__(
        self,
        activation: str,
        cross_attention: nn.Module,
        d_model: int,
        dim_feedforward: int,
        dropout: float,
        pos_enc_at_attn: bool,
        pos_enc_at_cross_attn_keys: bool,
        pos_enc_at_cross_attn_queries: bool,
        self_attention: nn.Module,
    ) -> None:
        super().__init__()
        if activation not in _ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(_ACTIVATIONS)}, got {activation!r}")
        self.d_model = d_model
        self.dim_feedforward = dim_feedforward
        self.dropout_value = dropout
        self.self_attn = self_attention
        self.cross_attn_image = cross_attention
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.norm3 = nn.LayerNorm(d_model)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.dropout3 = nn.Dropout(dropout)
        self.activation_str = activation
        self.activation = _ACTIVATIONS[activation]
        self.pos_enc_at_attn = pos_enc_at_attn
        self.pos_enc_at_cross_attn_queries = pos_enc_at_cross_attn_queries
        self.pos_enc_at_cross_attn_keys = pos_enc_at_cross_attn_keys

    @staticmethod
    def _with_pos(memory: torch.Tensor, pos: torch.Tensor | None) -> torch.Tensor:
        if pos is None:
            raise ValueError("this memory attention adds position encodings to the memory keys: pass memory_pos")
        return memory + pos

    def forward(
        self,
        tgt: torch.Tensor,
        memory: torch.Tensor,
        pos: torch.Tensor | None = None,
        query_pos: torch.Tensor | None = None,
        num_k_exclude_rope: int = 0,
    ) -> torch.Tensor:
        # self-attention over the current frame
        x = self.norm1(tgt)
        qk = x + query_pos if self.pos_enc_at_attn else x
        tgt = tgt + self.dropout1(self.self_attn(qk, qk, v=x))
        # cross-attention to the memory bank
        x = self.norm2(tgt)
        extra = {"num_k_exclude_rope": num_k_exclude_rope} if num_k_exclude_rope > 0 else {}
        if extra and not isinstance(self.cross_attn_image, RoPEAttention):
            raise TypeError("object-pointer tokens need a RoPEAttention cross-attention")
        x = self.cross_attn_image(
            q=x + query_pos if self.pos_enc_at_cross_attn_queries else x,
            k=self._with_pos(memory, pos) if self.pos_enc_at_cross_attn_keys else memory,
            v=memory,
            **extra,
        )
        tgt = tgt + self.dropout2(x)
        # MLP
        hidden = self.linear1(self.norm3(tgt))
        if self.activation_str == "relu" and not torch.is_grad_enabled():
            hidden = hidden.relu_()  # inference: no new hidden-sized tensor
        else:
            hidden = self.activation(hidden)
        x = self.linear2(self.dropout(hidden))
        return tgt + self.dropout3(x)


class MemoryAttention(nn.Module):
    """A stack of :class:`MemoryAttentionLayer` and a final LayerNorm."""

    def __init__(
        self, d_model: int, pos_enc_at_input: bool, layer: nn.Module, num_layers: int, batch_first: bool = True
    ) -> None:
        super().__init__()
        self.d_model = d_model
        self.layers = nn.ModuleList(copy.deepcopy(layer) for _ in range(num_layers))
        self.num_layers = num_layers
        self.norm = nn.LayerNorm(d_model)
        self.pos_enc_at_input = pos_enc_at_input
        self.batch_first = batch_first

    def forward(
        self,
        curr: torch.Tensor,
        memory: torch.Tensor,
        curr_pos: torch.Tensor | None = None,
        memory_pos: torch.Tensor | None = None,
        num_obj_ptr_tokens: int = 0,
    ) -> torch.Tensor:
        """``curr (HW, B, C)`` attends to ``memory (M, B, C_mem)``; returns ``(HW, B, C)``."""
        if isinstance(curr, (list, tuple)):  # the official callers pass one-element lists
            if len(curr) != 1 or not isinstance(curr_pos, (list, tuple)) or len(curr_pos) != 1:
                raise ValueError("memory attention takes one feature level (a one-element list)")
            curr, curr_pos = curr[0], curr_pos[0]
        if curr.shape[1] != memory.shape[1]:
            raise ValueError(f"batch sizes differ: current frame {curr.shape[1]}, memory {memory.shape[1]}")
        out = curr
        if self.pos_enc_at_input and curr_pos is not None:
            out = out + 0.1 * curr_pos
        if self.batch_first:
            out, memory = out.transpose(0, 1), memory.transpose(0, 1)
            curr_pos = curr_pos.transpose(0, 1) if curr_pos is not None else None
            memory_pos = memory_pos.transpose(0, 1) if memory_pos is not None else None
        for layer in self.layers:
            extra = (
                {"num_k_exclude_rope": num_obj_ptr_tokens} if isinstance(layer.cross_attn_image, RoPEAttention) else {}
            )
            out = layer(tgt=out, memory=memory, pos=memory_pos, query_pos=curr_pos, **extra)
        out = self.norm(out)
        return out.transpose(0, 1) if self.batch_first else out

"""Finetuning the SAM 2 backbone inside a Diffusion Policy: which weights train, LoRA adapters,
activation checkpointing, and an optimizer factory with a separate backbone learning rate.

Modes (set on :class:`~dp_sam2.encoders.obs.encoder.SAM2ObsEncoder`): ``freeze=True`` (default): only the
pooling heads train, the backbone runs in eval mode without an autograd graph; ``freeze=False``: the whole
image encoder (trunk, neck) and ``no_mem_embed`` train; with ``trainable_blocks=N`` only the last ``N`` Hiera
blocks, the neck and ``no_mem_embed``; with ``lora_rank=r`` only rank-``r`` LoRA adapters on ``attn.qkv`` and
``attn.proj`` of every Hiera block (or the last ``trainable_blocks``), keyed beside the unchanged official
keys (``...attn.qkv.lora_a``). :func:`adamw_param_groups` is a drop-in ``_target_`` for DP's ``optimizer:``
(called with ``params=model.parameters()``): backbone parameters get their own group, ``lr * backbone_lr_scale``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

BACKBONE_TAG = "_dp_sam2_backbone"


@dataclass(frozen=True)
class FinetuneConfig:
    """Which backbone weights train, and how."""

    freeze: bool = True
    trainable_blocks: int | None = None
    lora_rank: int = 0
    lora_alpha: float | None = None  # None -> equal to the rank (scaling 1)
    activation_checkpointing: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.freeze, bool):
            raise TypeError(f"freeze must be true or false, got {self.freeze!r}")
        blocks = self.trainable_blocks
        if blocks is not None and (not isinstance(blocks, int) or blocks < 0):
            raise ValueError(f"trainable_blocks must be null or an int >= 0, got {self.trainable_blocks!r}")
        if not isinstance(self.lora_rank, int) or self.lora_rank < 0:
            raise ValueError(f"lora_rank must be an int >= 0, got {self.lora_rank!r}")
        if self.freeze and (self.lora_rank > 0 or self.trainable_blocks is not None):
            raise ValueError(
                "freeze=true keeps the whole SAM 2 backbone frozen; set freeze=false to train "
                f"LoRA adapters (lora_rank={self.lora_rank}) or the last blocks "
                f"(trainable_blocks={self.trainable_blocks})"
            )

    @property
    def backbone_trains(self) -> bool:
        return not self.freeze and (self.trainable_blocks is None or self.trainable_blocks > 0)


class LoRALinear(nn.Module):
    """A linear layer whose ``weight`` is ``W + B @ A * alpha / rank``: ``W`` (the original,
    frozen) plus a trainable low-rank update; ``B`` starts at zero, so the layer starts equal to
    the original.

    ``weight`` is computed on access, so code that reads ``layer.weight`` directly (the fused
    linear kernels of the Hiera blocks) sees the adapted weight. In the state dict ``W`` keeps the
    official name (``...attn.qkv.weight``) and the adapters sit beside it (``lora_a``, ``lora_b``)."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float | None = None) -> None:
        super().__init__()
        self.in_features, self.out_features = base.in_features, base.out_features
        self.base_weight = base.weight  # reuse the loaded parameter (no copy)
        self.bias = base.bias
        self.rank = rank
        self.scaling = (alpha if alpha is not None else rank) / rank
        kw = {"device": base.weight.device, "dtype": base.weight.dtype}
        self.lora_a = nn.Parameter(torch.empty(rank, self.in_features, **kw))
        self.lora_b = nn.Parameter(torch.zeros(self.out_features, rank, **kw))
        nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))

    @property
    def weight(self) -> torch.Tensor:
        return self.base_weight + (self.lora_b @ self.lora_a) * self.scaling

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        super()._save_to_state_dict(destination, prefix, keep_vars)
        destination[prefix + "weight"] = destination.pop(prefix + "base_weight")

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        if prefix + "weight" in state_dict:
            state_dict[prefix + "base_weight"] = state_dict.pop(prefix + "weight")
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.bias is not None}, rank={self.rank}, scaling={self.scaling:g}"
        )


def add_lora(blocks: Iterable[nn.Module], rank: int, alpha: float | None = None) -> list[nn.Parameter]:
    """Wrap ``attn.qkv`` and ``attn.proj`` of each Hiera block with LoRA; returns the new params."""
    params = []
    for block in blocks:
        for name in ("qkv", "proj"):
            layer = getattr(block.attn, name)
            if isinstance(layer, LoRALinear):
                raise ValueError("LoRA was already added to this backbone")
            lora = LoRALinear(layer, rank, alpha)
            setattr(block.attn, name, lora)
            params += [lora.lora_a, lora.lora_b]
    return params


def configure_backbone(backbone: nn.Module, cfg: FinetuneConfig) -> None:
    """Set ``requires_grad`` on the backbone (an object with ``image_encoder`` and
    ``no_mem_embed``) and add LoRA adapters, as ``cfg`` says."""
    trunk = backbone.image_encoder.trunk
    blocks = list(trunk.blocks)
    n_train = len(blocks) if cfg.trainable_blocks is None else min(cfg.trainable_blocks, len(blocks))
    chosen = blocks[len(blocks) - n_train :] if n_train else []
    backbone.requires_grad_(False)
    if cfg.freeze:
        return
    if cfg.lora_rank > 0:
        for p in add_lora(chosen, cfg.lora_rank, cfg.lora_alpha):
            p.requires_grad_(True)
        return
    if cfg.trainable_blocks is None:
        backbone.requires_grad_(True)
        return
    for block in chosen:
        block.requires_grad_(True)
    if n_train:
        backbone.image_encoder.neck.requires_grad_(True)
        backbone.no_mem_embed.requires_grad_(True)


def tag_backbone_parameters(module: nn.Module) -> None:
    """Mark every parameter of ``module`` as a backbone parameter (for the optimizer factory)."""
    for p in module.parameters():
        setattr(p, BACKBONE_TAG, True)


def split_backbone_parameters(params: Iterable) -> tuple[list, list]:
    """``(other, backbone)`` parameters; accepts parameters or param-group dicts' params."""
    other, backbone = [], []
    for p in params:
        if isinstance(p, dict):
            raise TypeError("pass parameters (model.parameters()), not parameter groups")
        (backbone if getattr(p, BACKBONE_TAG, False) else other).append(p)
    return other, backbone


def adamw_param_groups(
    params,
    lr: float = 1e-4,
    betas=(0.9, 0.999),
    eps: float = 1e-8,
    weight_decay: float = 1e-2,
    backbone_lr_scale: float = 0.1,
    backbone_weight_decay: float | None = None,
    **kwargs,
) -> torch.optim.AdamW:
    """AdamW with the SAM 2 backbone's parameters in their own group (``lr * backbone_lr_scale``).

    Use it as Diffusion Policy's optimizer (``optimizer._target_=dp_sam2.encoders.obs.finetune.adamw_param_groups``
    plus ``+optimizer.backbone_lr_scale=0.1``); DP's learning-rate scheduler scales both groups.
    Group 0 holds everything else, group 1 the backbone (present only when there is one)."""
    if isinstance(params, torch.Tensor):
        raise TypeError("params must be an iterable of parameters, e.g. model.parameters()")
    if not float(backbone_lr_scale) >= 0:
        raise ValueError(f"backbone_lr_scale must be >= 0, got {backbone_lr_scale!r}")
    other, backbone = split_backbone_parameters(params)
    groups = [{"params": other}]
    if backbone:
        groups.append(
            {
                "params": backbone,
                "lr": lr * float(backbone_lr_scale),
                "weight_decay": weight_decay if backbone_weight_decay is None else backbone_weight_decay,
            }
        )
    return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, **kwargs)

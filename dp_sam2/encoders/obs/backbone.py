"""The SAM 2 part of the obs encoder: Hiera trunk + FPN neck + ``no_mem_embed`` under the official
names, returning the stride-16 feature map the official image predictor uses."""

from __future__ import annotations

import os

import torch
from torch import nn


class SAM2Backbone(nn.Module):
    """SAM 2's image encoder (Hiera trunk + FPN neck) and ``no_mem_embed``, under their official
    names, returning the stride-16 map with ``no_mem_embed`` added (as the official image
    predictor does): ``(N, 3, S, S)`` normalised images -> ``(N, 256, S/16, S/16)``."""

    def __init__(self, model_cfg: str, image_size: int) -> None:
        super().__init__()
        from hydra.utils import instantiate

        from dp_sam2.encoders.sam2.build import load_model_config

        cfg = load_model_config(model_cfg, [f"++model.image_size={image_size}"])
        self.image_encoder = instantiate(cfg.model.image_encoder, _recursive_=True, _convert_="all")
        self.channels = int(self.image_encoder.neck.d_model)
        self.add_no_mem_embed = bool(cfg.model.get("directly_add_no_mem_embed", True))
        self.no_mem_embed = nn.Parameter(torch.zeros(1, 1, self.channels))

    @property
    def activation_checkpointing(self) -> bool:
        """The trunk's activation checkpointing (``Hiera.set_grad_checkpointing``)."""
        return self.image_encoder.trunk.grad_checkpointing

    @activation_checkpointing.setter
    def activation_checkpointing(self, enable: bool) -> None:
        self.image_encoder.trunk.set_grad_checkpointing(bool(enable))

    def load_official(self, path: str | os.PathLike, model_cfg: str) -> None:
        """Load the ``image_encoder.*`` and ``no_mem_embed`` weights of an official ``.pt``."""
        from dp_sam2.checkpoints.files import load_checkpoint_state_dict

        state = load_checkpoint_state_dict(path, model_cfg)
        wanted = {k: v for k, v in state.items() if k.startswith("image_encoder.") or k == "no_mem_embed"}
        missing, unexpected = self.load_state_dict(wanted, strict=False)
        if missing or unexpected:
            raise ValueError(
                f"checkpoint {path} does not fit the {model_cfg} image encoder: missing keys "
                f"{missing[:5]}, unexpected keys {unexpected[:5]}"
            )

    def freeze_unused_neck_levels(self) -> None:
        """The neck's stride-4 and stride-8 lateral convs never feed the stride-16 map: keep them
        out of training (they stay in the state dict, under the official names)."""
        neck = self.image_encoder.neck
        n = len(neck.convs)
        level = n - 1 - self.image_encoder.scalp
        for j in range(n - level, n):  # convs[n - 1 - i] serves trunk level i < level
            neck.convs[j].requires_grad_(False)

    def compiled(self, example: torch.Tensor | None = None) -> nn.Module:
        """This backbone through ``torch.compile`` (inductor), made on first use and kept outside the
        module tree: ``state_dict()`` keys do not change (no ``_orig_mod.``), and deep copies (DP's
        EMA) and pickles (dill checkpoints) leave it out; a copy compiles its own on first use.
        ``example``: one eager forward on it first fills the per-size caches (position embeddings,
        chunk plans), so the graph is compiled once instead of once empty and again filled."""
        compiled = self.__dict__.get("_compiled")
        if compiled is None:
            if example is not None:
                with torch.no_grad():
                    self(example)
            compiled = torch.compile(self, backend="inductor")
            object.__setattr__(self, "_compiled", compiled)  # a plain attribute, not a submodule
        return compiled

    def __getstate__(self):
        state = super().__getstate__()
        state.pop("_compiled", None)
        return state

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        feats = self.image_encoder.forward_lowest_kept_level(images)
        if self.add_no_mem_embed:
            feats = feats + self.no_mem_embed.view(1, -1, 1, 1).to(feats.dtype)
        return feats

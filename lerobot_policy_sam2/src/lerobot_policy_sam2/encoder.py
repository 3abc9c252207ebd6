"""The cameras' encoder of ``sam2_diffusion``: dp_sam2's :class:`~dp_sam2.encoders.obs.encoder.SAM2ObsEncoder`
told in LeRobot's words, in place of LeRobot's ``DiffusionRgbEncoder`` (ResNet + spatial softmax).

The plugin translates LeRobot's config (``sam2_model``, ``sam2_checkpoint``, ``image_size``, ``resize_shape``,
``crop_shape``, ``crop_is_random``, ``pooling``, ``spatial_softmax_num_keypoints``, ``feature_dim``, the finetune
fields, ``precision``) into the DP encoder's keys; the preprocessing (``resize_shape`` -> ``crop_shape``, random
per image in training when ``crop_is_random``, centre otherwise -> ``image_size``) and the backbone call are the
DP encoder's. Input: ``(N, n_cameras, 3, H, W)`` images as LeRobot's normaliser hands them (ImageNet mean/std,
SAM 2's own normalisation: ``input_range: imagenet``). Output: ``(N, n_cameras * feature_dim)``, cameras in
``config.image_features`` order. State dict (what saved policies hold): ``backbone.*`` under the official
names, ``heads.<camera index>.*``.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from dp_sam2.checkpoints.registry import get_spec
from dp_sam2.encoders.obs.encoder import SAM2ObsEncoder
from dp_sam2.encoders.obs.heads import SpatialSoftmax, build_head


class SAM2WeightsNotFoundError(FileNotFoundError):
    """The SAM 2 file a policy needs cannot be found."""


def find_sam2_file(config, reloading: bool) -> Path | None:
    """The SAM 2 checkpoint file of ``config``, found as dp_sam2 finds it
    (:func:`dp_sam2.checkpoints.resolve.find_weights`), or ``None`` when it is missing and
    ``DP_SAM2_ALLOW_MISSING_CHECKPOINT=1`` allows random weights for a new policy. ``reloading``: a
    saved policy whose file does not hold the frozen trunk is being loaded (random weights are
    never allowed then: they would silently replace the trunk it was trained with)."""
    from dp_sam2.checkpoints.resolve import (
        CheckpointNotFoundError,
        default_checkpoint,
        find_weights,
        resolve_checkpoint,
    )

    spec = get_spec(config.sam2_model)
    wanted = config.sam2_checkpoint or default_checkpoint(spec.name)
    try:
        return resolve_checkpoint(wanted, spec.name) if reloading else find_weights(spec.name, wanted)
    except CheckpointNotFoundError as err:
        places = "\n".join(f"  - {p}" for p in err.tried)
        hint = (
            f"Download it with `dp-sam2 download {spec.name}`, or set $DP_SAM2_CHECKPOINT_DIR to the folder "
            f"that holds {spec.filename}"
        )
        if reloading:
            raise SAM2WeightsNotFoundError(
                f"this sam2_diffusion policy was saved without its frozen SAM 2 trunk (it equals the official "
                f"file {spec.filename}), and that file was not found. Looked in:\n{places}\n{hint}."
            ) from err
        raise SAM2WeightsNotFoundError(
            f"SAM 2 checkpoint {os.fspath(wanted)!r} ({spec.name}) not found. Looked in:\n{places}\n{hint}, "
            f"or pass --policy.sam2_checkpoint=/path/to/{spec.filename}."
        ) from err


class SAM2CameraEncoder(SAM2ObsEncoder):
    """SAM 2 backbone (stride-16 map + ``no_mem_embed``) shared by the cameras, one head each.

    ``saved_keys``: ``None`` for a new policy; when a saved policy is being loaded, the backbone
    keys its ``model.safetensors`` holds. The official SAM 2 file is read unless they are all of
    them (see :func:`find_sam2_file`)."""

    def __init__(self, config, saved_keys: frozenset[str] | None = None) -> None:
        self.camera_keys = list(config.image_features)
        # read by the hooks below while SAM2ObsEncoder.__init__ runs; dropped after it
        self._building = (config, saved_keys)
        finetune = config.finetune_config()
        meta = {k: {"shape": list(config.image_features[k].shape), "type": "rgb"} for k in self.camera_keys}
        super().__init__(
            {"obs": meta},
            model_cfg=get_spec(config.sam2_model).name,
            checkpoint=config.sam2_checkpoint,
            image_size=config.sam2_image_size,
            freeze=finetune.freeze,
            trainable_blocks=finetune.trainable_blocks,
            lora_rank=finetune.lora_rank,
            lora_alpha=finetune.lora_alpha,
            activation_checkpointing=finetune.activation_checkpointing,
            feature_dim=config.feature_dim,
            pooling=config.pooling,
            input_range="imagenet",
            resize_shape=config.resize_shape,
            crop_shape=config.crop_shape,
            random_crop=bool(config.crop_is_random),
            precision=config.precision,
        )
        del self._building

    def _load_weights(self, backbone, checkpoint, random_weights: bool = False) -> str | None:
        """The SAM 2 file as :func:`find_sam2_file` finds it, unless the saved policy holds the whole backbone."""
        config, saved_keys = self._building
        whole = saved_keys is not None and set(backbone.state_dict()) <= saved_keys
        path = None if whole else find_sam2_file(config, reloading=saved_keys is not None)
        if path is not None:
            backbone.load_official(path, self.model_cfg)
        # True when the backbone's weights are those of a SAM 2 file that a reload can read again
        self.trunk_from_file = path is not None
        self.sam2_file = str(path) if path is not None else None
        return self.sam2_file

    def _build_heads(self, channels: int) -> nn.ModuleList:
        """One head per camera, in ``config.image_features`` order (``heads.<index>``)."""
        config = self._building[0]
        hw = self.feature_shape[1:]
        if self.pooling == "spatial_softmax":
            kp = config.spatial_softmax_num_keypoints
            return nn.ModuleList(SpatialSoftmax(channels, hw, self.feature_dim, num_kp=kp) for _ in self.camera_keys)
        return nn.ModuleList(build_head(self.pooling, channels, hw, self.feature_dim) for _ in self.camera_keys)

    def _head(self, key: str) -> nn.Module:
        return self.heads[self.camera_keys.index(key)]

    @property
    def backbone_trains(self) -> bool:
        return any(p.requires_grad for p in self.backbone.parameters())

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """``(N, n_cameras, 3, H, W)`` ImageNet-normalised images -> ``(N, n_cameras * feature_dim)``."""
        if images.ndim != 5 or images.shape[1] != len(self.camera_keys) or images.shape[2] != 3:
            raise ValueError(
                f"expected images (N, {len(self.camera_keys)} cameras, 3, H, W) for cameras {self.camera_keys}, "
                f"got {tuple(images.shape)}"
            )
        feats = self._rgb_features({k: images[:, i] for i, k in enumerate(self.camera_keys)})
        return torch.cat([self._head(k)(feats[k].to(self._head_dtype(k))) for k in self.camera_keys], dim=-1)

    def frozen_file_keys(self, prefix: str = "") -> list[str]:
        """State-dict keys of backbone weights that never train and equal the SAM 2 file: the keys a
        saved policy can leave out (empty when the weights did not come from a file)."""
        if not self.trunk_from_file:
            return []
        state = self.backbone.state_dict(keep_vars=True)
        return [prefix + k for k, v in state.items() if isinstance(v, nn.Parameter) and not v.requires_grad]

"""The cameras' encoder of ``sam2_diffusion``: one SAM 2 backbone shared by every camera, one
pooling head per camera, in place of LeRobot's ``DiffusionRgbEncoder`` (ResNet + spatial softmax).

Input: ``(N, n_cameras, 3, H, W)`` images as LeRobot's normaliser hands them, i.e. ImageNet
mean/std-normalised, which is SAM 2's own normalisation. Preprocessing, LeRobot's order:
``resize_shape`` (optional) -> ``crop_shape`` (random per image in training when
``crop_is_random``, centre otherwise) -> resize to ``image_size`` (bilinear, antialiased, as SAM 2's
transform). Output: ``(N, n_cameras * feature_dim)``, cameras in ``config.image_features`` order.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from dp_sam2.checkpoints.registry import get_spec
from dp_sam2.encoders.obs.backbone import SAM2Backbone
from dp_sam2.encoders.obs.finetune import configure_backbone
from dp_sam2.encoders.obs.heads import SpatialSoftmax, build_head
from dp_sam2.encoders.obs.inputs import center_crop, random_crop, resize
from dp_sam2.encoders.sam2.precision import precision_autocast


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


class SAM2CameraEncoder(nn.Module):
    """SAM 2 backbone (stride-16 map + ``no_mem_embed``) shared by the cameras, one head each.

    ``saved_keys``: ``None`` for a new policy; when a saved policy is being loaded, the backbone
    keys its ``model.safetensors`` holds. The official SAM 2 file is read unless they are all of
    them (see :func:`find_sam2_file`)."""

    def __init__(self, config, saved_keys: frozenset[str] | None = None) -> None:
        super().__init__()
        spec = get_spec(config.sam2_model)
        self.image_size = config.sam2_image_size
        self.precision = config.precision
        self.finetune = config.finetune_config()
        self.resize_shape = tuple(config.resize_shape) if config.resize_shape else None
        self.crop_shape = tuple(config.crop_shape) if config.crop_shape else None
        self.crop_is_random = bool(config.crop_is_random)
        self.camera_keys = list(config.image_features)

        self.backbone = SAM2Backbone(spec.name, self.image_size)
        whole = saved_keys is not None and set(self.backbone.state_dict()) <= saved_keys
        path = None if whole else find_sam2_file(config, reloading=saved_keys is not None)
        if path is not None:
            self.backbone.load_official(path, spec.name)
        # True when the backbone's weights are those of a SAM 2 file that a reload can read again
        self.trunk_from_file = path is not None
        self.sam2_file = str(path) if path is not None else None
        configure_backbone(self.backbone, self.finetune)
        self.backbone.freeze_unused_neck_levels()
        self.backbone.activation_checkpointing = self.finetune.activation_checkpointing

        side = self.image_size // 16
        channels = self.backbone.channels
        if config.pooling == "spatial_softmax":
            kp = config.spatial_softmax_num_keypoints
            heads = [SpatialSoftmax(channels, (side, side), config.feature_dim, num_kp=kp) for _ in self.camera_keys]
        else:
            heads = [build_head(config.pooling, channels, (side, side), config.feature_dim) for _ in self.camera_keys]
        self.heads = nn.ModuleList(heads)
        self.feature_dim = config.feature_dim

    @property
    def backbone_trains(self) -> bool:
        return any(p.requires_grad for p in self.backbone.parameters())

    def train(self, mode: bool = True):
        super().train(mode)
        if not self.backbone_trains:
            self.backbone.eval()  # a frozen backbone always runs as at inference
        return self

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        if self.resize_shape is not None:
            x = resize(x, self.resize_shape)
        if self.crop_shape is not None:
            x = (
                random_crop(x, self.crop_shape)
                if (self.training and self.crop_is_random)
                else center_crop(x, self.crop_shape)
            )
        return resize(x, (self.image_size, self.image_size))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.ndim != 5 or images.shape[1] != len(self.heads) or images.shape[2] != 3:
            raise ValueError(
                f"expected images (N, {len(self.heads)} cameras, 3, H, W) for cameras {self.camera_keys}, "
                f"got {tuple(images.shape)}"
            )
        n, cams = images.shape[:2]
        x = self.preprocess(images.flatten(0, 1))
        with (
            torch.set_grad_enabled(torch.is_grad_enabled() and self.backbone_trains),
            precision_autocast(x.device, self.precision),
        ):
            feats = self.backbone(x)
        feats = feats.to(images.dtype).unflatten(0, (n, cams))
        return torch.cat([head(feats[:, i]) for i, head in enumerate(self.heads)], dim=-1)

    def frozen_file_keys(self, prefix: str = "") -> list[str]:
        """State-dict keys of backbone weights that never train and equal the SAM 2 file: the keys a
        saved policy can leave out (empty when the weights did not come from a file)."""
        if not self.trunk_from_file:
            return []
        state = self.backbone.state_dict(keep_vars=True)
        return [prefix + k for k, v in state.items() if isinstance(v, nn.Parameter) and not v.requires_grad]

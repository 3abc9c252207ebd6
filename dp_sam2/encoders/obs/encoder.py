"""SAM 2 as Diffusion Policy's observation encoder (a drop-in for DP's ``MultiImageObsEncoder``).

Cached features (the API between this encoder and ``dp-sam2 cache-features``)
-----------------------------------------------------------------------------
A frozen backbone computes the same features for a frame in every epoch, so they can be computed
once and served by the dataset in place of the images:

* **Making them.** ``SAM2ObsEncoder.encode_images(images, key, input_range=None)`` takes
  ``(N, 3, H, W)`` float images of rgb key ``key`` at its ``shape_meta`` resolution, in
  ``input_range`` (default: the encoder's; pass ``input_range=[0, 1]`` for what DP's datasets
  return before DP's normaliser). It applies the deterministic eval preprocessing
  (``resize_shape``, centre crop, resize to ``image_size``, SAM 2 mean/std) and returns the stride-16 map plus ``no_mem_embed``: ``(N, *feature_shape)`` with
  ``feature_shape = (256, image_size // 16, image_size // 16)``. Store them as float16.
* **Serving them.** The dataset returns, under the **same obs key** as the images,
  ``(T, *feature_shape)`` instead of ``(T, 3, H, W)``; ``shape_meta`` and the env runner (which
  keeps sending images) stay as they are.
* **Recognising them.** ``forward`` treats an rgb value whose shape is ``(B, *feature_shape)`` as
  features (an image never has 256 channels), skips preprocessing and the backbone, and feeds
  the head; other rgb values must be ``(B, 3, H, W)`` images. A batch may mix the two per key.
* **Their range.** Features pass through the normaliser DP keeps for that key, and ``forward``
  maps them back with ``input_range`` exactly as it maps images
  (:meth:`SAM2ObsEncoder.features_from_input`: ``(x - lo) / (hi - lo)``). Two consistent set-ups:
  the dataset's own image-range normaliser (``x * 2 - 1``) with the default ``input_range``
  [-1, 1]; or an identity normaliser for the key with ``input_range`` [0, 1] (what
  :class:`dp_sam2.cache.CachedFeatureDataset` does; images at eval then arrive in [0, 1]). Either
  way the cached values are the backbone's raw output; a direct caller (no DP normaliser) passes
  ``encoder.features_to_input(feats)``.
* **Refused** while the backbone trains (``freeze=False`` in training mode): no gradient could
  reach it. ``SAM2ObsEncoder.feature_info(key)`` lists the settings that produce the features
  (model, checkpoint, image size, resize/crop, feature shape): store it with the cache and
  compare it when training.
"""
from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from dp_sam2.encoders.obs.backbone import SAM2Backbone
from dp_sam2.encoders.obs.finetune import FinetuneConfig, configure_backbone, tag_backbone_parameters
from dp_sam2.encoders.obs.guard import _check_parent_accepts_obs_encoder
from dp_sam2.encoders.obs.heads import build_head
from dp_sam2.encoders.obs.inputs import (
    SAM2_MEAN, SAM2_STD, ObsKeys, _per_key_hw, center_crop, parse_input_range, parse_shape_meta, random_crop, resize,
)
from dp_sam2.encoders.sam2.precision import check_precision, precision_autocast

__all__ = ["SAM2ObsEncoder", "SAM2Backbone", "ObsKeys", "parse_shape_meta", "parse_input_range"]


class SAM2ObsEncoder(nn.Module):
    """SAM 2's image encoder as Diffusion Policy's ``obs_encoder``.

    A drop-in for DP's ``MultiImageObsEncoder`` inside ``DiffusionUnetImagePolicy``:
    ``forward(obs_dict) -> (B, D)`` where rgb values are ``(B, 3, H, W)`` (DP passes
    ``B = batch * n_obs_steps``) and low_dim values ``(B, *shape)``; features are concatenated
    rgb keys first, then low_dim keys, each in sorted order. ``output_shape() -> (D,)`` is computed
    without running the backbone, ``D = n_rgb * feature_dim + sum(low_dim sizes)``.

    Preprocessing of each camera (DP's order): optional ``resize_shape`` -> crop to ``crop_shape``
    (random per image in training when ``random_crop``, else centre; ``random_crop: false``
    crops at the centre always, as DP intends) -> resize to ``image_size`` x ``image_size`` as SAM 2's own
    transform does (bilinear, antialiased) -> ``input_range`` to [0, 1] -> SAM 2's mean/std.

    Features: the stride-16 FPN level (256 channels) plus ``no_mem_embed``, as the official image
    predictor computes it. One backbone is shared by all cameras and run once on all of them
    (``share_rgb_model=False`` gives each camera its own copy); each camera has its own pooling
    head (``pooling``: ``attention``, ``spatial_softmax`` or ``mean``) projecting to ``feature_dim``.

    Arguments (every DP ``MultiImageObsEncoder`` argument is accepted, since Hydra merges DP's
    inline keys into a selected group file):

    * ``model_cfg``: registry short name (``sam2_large``, ``sam2.1_tiny``) or official config name.
    * ``checkpoint``: official ``.pt``; a relative path is looked up by
      :func:`dp_sam2.checkpoints.resolve.resolve_checkpoint` (``$DP_SAM2_CHECKPOINT_DIR``, DP repo root, cwd,
      user cache). ``None`` means ``checkpoints/<official file name>``. With
      ``DP_SAM2_ALLOW_MISSING_CHECKPOINT=1`` a missing file only warns and the backbone keeps
      random weights (for ``eval.py`` restoring a DP checkpoint that holds them).
    * ``image_size``: SAM 2 input side, any multiple of 32; default 224 for tiny/small/base+,
      256 for large (window-aligned: the cheapest sizes near DP's 84-320 px cameras).
    * ``freeze`` / ``trainable_blocks`` / ``lora_rank`` / ``lora_alpha`` /
      ``activation_checkpointing``: see :mod:`dp_sam2.encoders.obs.finetune`. With ``freeze=True``
      the backbone has ``requires_grad=False``, stays in eval mode under ``.train()`` and runs
      without an autograd graph; the heads train.
    * ``precision``: ``fp32`` (default) or ``bf16``: the backbone runs under
      ``torch.autocast(bfloat16)`` (CPU or GPU) and its features come back in the input dtype.
      Fast where the hardware has bf16 matmuls (GPUs, CPUs with AVX512-BF16/AMX); on a CPU
      without them it is slower than fp32.
    * ``input_range``: ``[-1, 1]`` (DP's image normaliser output, default) or ``[0, 1]``.
    * ``rgb_model`` must be ``None`` (the group files set it); ``use_group_norm`` and
      ``imagenet_norm`` are accepted and change nothing: Hiera has no BatchNorm, and SAM 2's
      ImageNet mean/std is always applied (after mapping ``input_range`` to [0, 1]).

    Cached features: ``encode_images`` computes them, and ``forward`` accepts ``(B, 256,
    image_size // 16, image_size // 16)`` under an rgb key in place of its images (see the module
    docstring for the exact contract, ranges included).
    """

    def __init__(
        self,
        shape_meta: dict,
        model_cfg: str = "sam2_large",
        checkpoint: str | os.PathLike | None = None,
        image_size: int | None = None,
        freeze: bool = True,
        feature_dim: int = 256,
        pooling: str = "attention",
        input_range="[-1,1]",
        share_rgb_model: bool = True,
        resize_shape=None,
        crop_shape=None,
        random_crop: bool = True,
        trainable_blocks: int | None = None,
        lora_rank: int = 0,
        lora_alpha: float | None = None,
        activation_checkpointing: bool = False,
        rgb_model=None,
        use_group_norm: bool = False,
        imagenet_norm: bool = False,
        precision: str = "fp32",
        random_weights: bool = False,
    ) -> None:
        super().__init__()
        _check_parent_accepts_obs_encoder()
        if rgb_model is not None:
            raise TypeError(
                "SAM2ObsEncoder builds its own SAM 2 backbone; rgb_model must be null, got "
                f"{type(rgb_model).__name__} (set `rgb_model: null` in the obs_encoder config)"
            )
        self.keys = parse_shape_meta(shape_meta)
        self.model_cfg, self.spec = self._lookup_model(model_cfg)
        self.image_size = self._check_image_size(image_size)
        self.finetune = FinetuneConfig(bool(freeze) if isinstance(freeze, (bool, int)) else freeze,
                                       trainable_blocks, int(lora_rank), lora_alpha, bool(activation_checkpointing))
        self.input_range = parse_input_range(input_range)
        self.random_crop = bool(random_crop)
        self.resize_shape = _per_key_hw(resize_shape, self.keys.rgb, "resize_shape")
        self.crop_shape = _per_key_hw(crop_shape, self.keys.rgb, "crop_shape")
        self._check_crops()
        self.share_rgb_model = bool(share_rgb_model)
        self.feature_dim = int(feature_dim) if isinstance(feature_dim, int) else feature_dim
        self.pooling = pooling
        self.precision = check_precision(precision)

        backbone = SAM2Backbone(self.model_cfg, self.image_size)
        self.checkpoint = self._load_weights(backbone, checkpoint, random_weights)
        configure_backbone(backbone, self.finetune)
        backbone.freeze_unused_neck_levels()
        backbone.activation_checkpointing = self.finetune.activation_checkpointing
        if self.share_rgb_model:
            self.backbone = backbone
        else:
            import copy

            self.backbones = nn.ModuleDict({_module_key(k): copy.deepcopy(backbone) for k in self.keys.rgb})
        self.feature_shape = (backbone.channels, self.image_size // 16, self.image_size // 16)
        self.heads = nn.ModuleDict({
            _module_key(k): build_head(pooling, backbone.channels, self.feature_shape[1:], self.feature_dim)
            for k in self.keys.rgb
        })
        self.register_buffer("pixel_mean", torch.tensor(SAM2_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(SAM2_STD).view(1, 3, 1, 1), persistent=False)
        self._tag_backbones()
        self.train(self.training)

    # ---------------------------------------------------------------- construction helpers
    @staticmethod
    def _lookup_model(model_cfg):
        from dp_sam2.checkpoints.registry import get_spec

        if isinstance(model_cfg, (str, os.PathLike)) and Path(os.fspath(model_cfg)).suffix == ".yaml" \
                and Path(os.fspath(model_cfg)).is_file():
            return os.fspath(model_cfg), None  # a custom config file
        spec = get_spec(model_cfg)
        return spec.name, spec

    def _check_image_size(self, image_size) -> int:
        if image_size is None:
            if self.spec is None:
                raise ValueError("image_size is required with a custom model config")
            return self.spec.obs_image_size
        if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 32 or image_size % 32:
            raise ValueError(
                f"image_size must be a positive multiple of 32 (Hiera's windows and strides need it), "
                f"got {image_size!r}; window-aligned sizes are cheapest: 224 for tiny/small/base+, 256 for large"
            )
        return image_size

    def _check_crops(self) -> None:
        for key in self.keys.rgb:
            crop = self.crop_shape[key]
            src = self.resize_shape[key] or self.keys.shapes[key][1:]
            if crop is not None and (crop[0] > src[0] or crop[1] > src[1]):
                raise ValueError(f"crop_shape {list(crop)} for {key!r} is larger than its image {list(src)}")

    def _load_weights(self, backbone: SAM2Backbone, checkpoint, random_weights: bool = False) -> str | None:
        """Load the SAM 2 checkpoint found by :func:`dp_sam2.checkpoints.resolve.find_weights`;
        ``random_weights=True`` keeps the backbone's random init (no file is looked up: seed it
        yourself, e.g. inside ``torch.random.fork_rng()``). Returns the checkpoint as configured."""
        from dp_sam2.checkpoints.resolve import find_weights

        if random_weights:
            if checkpoint is not None:
                raise ValueError(f"give a checkpoint or random_weights=True, not both (got {checkpoint!r})")
            return None
        path = find_weights(self.spec.name if self.spec else self.model_cfg, checkpoint)
        if path is not None:
            backbone.load_official(path, self.model_cfg)
        return os.fspath(checkpoint) if checkpoint is not None else f"checkpoints/{self.spec.filename}"

    def _tag_backbones(self) -> None:
        for backbone in self._all_backbones():
            tag_backbone_parameters(backbone)

    def __setstate__(self, state) -> None:  # deepcopy/pickle: parameter tags are not copied
        super().__setstate__(state)
        if "_modules" in state:
            self._tag_backbones()

    # ---------------------------------------------------------------- DP's interface
    @property
    def device(self) -> torch.device:
        return next(iter(self.parameters())).device

    @property
    def dtype(self) -> torch.dtype:
        return next(iter(self.parameters())).dtype

    def output_shape(self) -> tuple[int]:
        low_dim = sum(math.prod(self.keys.shapes[k]) for k in self.keys.low_dim)
        return (len(self.keys.rgb) * self.feature_dim + low_dim,)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.finetune.freeze:
            for backbone in self._all_backbones():
                backbone.eval()
        return self

    def forward(self, obs_dict: Mapping[str, torch.Tensor]) -> torch.Tensor:
        batch = self._check_obs(obs_dict)
        feats = self._rgb_features(obs_dict)
        parts = [self.heads[_module_key(k)](feats[k].to(self._head_dtype(k))) for k in self.keys.rgb]
        parts += [obs_dict[k].reshape(batch, -1).to(parts[0].dtype) for k in self.keys.low_dim]
        return torch.cat(parts, dim=-1)

    # ---------------------------------------------------------------- images -> features
    def preprocess(self, images: torch.Tensor, key: str | None = None, train: bool | None = None) -> torch.Tensor:
        """Camera images in ``input_range`` -> SAM 2 input ``(N, 3, S, S)`` (normalised).
        ``train`` (default: ``self.training``) picks the random crop over the centre crop."""
        key = self._default_key(key)
        train = self.training if train is None else train
        x = images.to(self._backbone_dtype())
        if self.resize_shape[key] is not None:
            x = resize(x, self.resize_shape[key])
        crop = self.crop_shape[key]
        if crop is not None:
            x = random_crop(x, crop) if (train and self.random_crop) else center_crop(x, crop)
        x = resize(x, (self.image_size, self.image_size))
        lo, hi = self.input_range
        x = (x - lo) / (hi - lo)
        return (x - self.pixel_mean.to(x.dtype)) / self.pixel_std.to(x.dtype)

    def encode_images(self, images: torch.Tensor, key: str | None = None, input_range=None) -> torch.Tensor:
        """Backbone feature maps ``(N, *feature_shape)`` of images of rgb key ``key`` given in
        ``input_range`` (default: the encoder's); deterministic (centre crop). See the module
        docstring for the cached-feature contract."""
        key = self._default_key(key)
        self._check_image_tensor(key, images)
        if input_range is not None:
            lo, hi = parse_input_range(input_range)
            own_lo, own_hi = self.input_range
            images = (images - lo) / (hi - lo) * (own_hi - own_lo) + own_lo
        return self._run_backbone(key, self.preprocess(images, key, train=False))

    def feature_info(self, key: str | None = None) -> dict:
        """The settings that determine the features of rgb key ``key`` (plain Python values):
        store them with a feature cache and compare them before training on it."""
        key = self._default_key(key)
        resize, crop = self.resize_shape[key], self.crop_shape[key]
        return {
            "model_cfg": self.model_cfg, "checkpoint": self.checkpoint, "image_size": self.image_size,
            "image_shape": list(self.keys.shapes[key]), "resize_shape": list(resize) if resize else None,
            "crop_shape": list(crop) if crop else None, "feature_shape": list(self.feature_shape),
            "no_mem_embed": self._backbone(key).add_no_mem_embed, "precision": self.precision,
        }

    def features_from_input(self, value: torch.Tensor) -> torch.Tensor:
        """Precomputed features as they reach ``forward`` -> the backbone's features: the inverse
        of DP's image normaliser, ``input_range`` -> [0, 1], exactly as for images (identity when
        ``input_range`` is [0, 1])."""
        lo, hi = self.input_range
        if (lo, hi) == (0.0, 1.0):
            return value
        return (value.to(torch.promote_types(value.dtype, torch.float32)) - lo) / (hi - lo)

    def features_to_input(self, feats: torch.Tensor) -> torch.Tensor:
        """The inverse of :meth:`features_from_input`: what DP's image normaliser makes of cached
        features (``x * 2 - 1`` for the default ``input_range`` [-1, 1]). For calling ``forward``
        directly (tests, benchmarks) with features from :meth:`encode_images`."""
        lo, hi = self.input_range
        if (lo, hi) == (0.0, 1.0):
            return feats
        return feats.to(torch.promote_types(feats.dtype, torch.float32)) * (hi - lo) + lo

    def _rgb_features(self, obs_dict) -> dict[str, torch.Tensor]:
        feats, pending = {}, {}
        for key in self.keys.rgb:
            value = obs_dict[key]
            if tuple(value.shape[1:]) == self.feature_shape:
                if self.training and self._backbone_trains(key):
                    raise ValueError(
                        f"obs {key!r} holds precomputed features, but the SAM 2 backbone is being "
                        "trained (freeze=false); pass images, or freeze the backbone"
                    )
                feats[key] = self.features_from_input(value)
            else:
                pending[key] = self.preprocess(value, key)
        if not pending:
            return feats
        if self.share_rgb_model:
            keys = list(pending)
            out = self._run_backbone(keys[0], torch.cat([pending[k] for k in keys]))
            feats.update(zip(keys, out.split([pending[k].shape[0] for k in keys])))
        else:
            feats.update({k: self._run_backbone(k, x) for k, x in pending.items()})
        return feats

    def _run_backbone(self, key: str, x: torch.Tensor) -> torch.Tensor:
        backbone = self._backbone(key)
        with torch.set_grad_enabled(torch.is_grad_enabled() and self._backbone_trains(key)), \
                precision_autocast(x.device, self.precision):
            feats = backbone(x)
        return feats.to(x.dtype) if self.precision == "bf16" else feats

    # ---------------------------------------------------------------- checks and lookups
    def _check_obs(self, obs_dict) -> int:
        if not isinstance(obs_dict, Mapping):
            raise TypeError(f"obs_dict must be a dict of tensors, got {type(obs_dict).__name__}")
        wanted = self.keys.rgb + self.keys.low_dim
        missing = [k for k in wanted if k not in obs_dict]
        if missing:
            raise ValueError(f"obs_dict is missing keys {missing}; expected {list(wanted)} (from shape_meta), got {sorted(obs_dict)}")
        sizes = {}
        for key in wanted:
            value = obs_dict[key]
            if not isinstance(value, torch.Tensor):
                raise TypeError(f"obs {key!r} must be a torch.Tensor, got {type(value).__name__}")
            if key in self.keys.rgb:
                if tuple(value.shape[1:]) != self.feature_shape:
                    self._check_image_tensor(key, value)
            elif tuple(value.shape[1:]) != self.keys.shapes[key]:
                raise ValueError(
                    f"obs {key!r} must have shape (B, {', '.join(map(str, self.keys.shapes[key]))}), "
                    f"got {tuple(value.shape)}"
                )
            sizes[key] = value.shape[0]
        if len(set(sizes.values())) > 1:
            raise ValueError(f"obs tensors have different batch sizes: {sizes}")
        return next(iter(sizes.values()))

    def _check_image_tensor(self, key: str, value: torch.Tensor) -> None:
        shape = self.keys.shapes[key]
        if value.ndim != 4 or tuple(value.shape[1:]) != shape:
            raise ValueError(
                f"rgb obs {key!r} must be images (B, {', '.join(map(str, shape))}) in {list(self.input_range)} "
                f"or precomputed features (B, {', '.join(map(str, self.feature_shape))}); got {tuple(value.shape)}"
            )
        if not value.is_floating_point():
            raise TypeError(f"rgb obs {key!r} must be a float tensor in {list(self.input_range)}, got {value.dtype}")

    def _default_key(self, key: str | None) -> str:
        if key is None:
            if len(self.keys.rgb) != 1:
                raise ValueError(f"several rgb keys {list(self.keys.rgb)}: say which one with key=")
            return self.keys.rgb[0]
        if key not in self.keys.rgb:
            raise ValueError(f"{key!r} is not an rgb obs key; rgb keys: {list(self.keys.rgb)}")
        return key

    def _all_backbones(self) -> list[SAM2Backbone]:
        if "backbone" in self._modules:
            return [self.backbone]
        return list(self.backbones.values()) if "backbones" in self._modules else []

    def _backbone(self, key: str) -> SAM2Backbone:
        return self.backbone if self.share_rgb_model else self.backbones[_module_key(key)]

    def _backbone_trains(self, key: str) -> bool:
        return any(p.requires_grad for p in self._backbone(key).parameters())

    def _backbone_dtype(self) -> torch.dtype:
        return self._all_backbones()[0].no_mem_embed.dtype

    def _head_dtype(self, key: str) -> torch.dtype:
        return next(iter(self.heads[_module_key(key)].parameters())).dtype

    def extra_repr(self) -> str:
        return (f"model_cfg={self.model_cfg!r}, image_size={self.image_size}, rgb={list(self.keys.rgb)}, "
                f"low_dim={list(self.keys.low_dim)}, pooling={self.pooling!r}, feature_dim={self.feature_dim}, "
                f"{self.finetune}")


def _module_key(key: str) -> str:
    """ModuleDict keys cannot contain dots."""
    return key.replace(".", "__")

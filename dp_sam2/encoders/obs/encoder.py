"""SAM 2 as Diffusion Policy's observation encoder (a drop-in for DP's ``MultiImageObsEncoder``).

Besides images, :class:`SAM2ObsEncoder` takes cached backbone features (the API between it and
``dp-sam2 cache-features``): :meth:`~SAM2ObsEncoder.encode_images` makes them, ``forward`` recognises them by
shape, :meth:`~SAM2ObsEncoder.features_from_input` maps them back from DP's normaliser. Those docstrings hold
the contract, README.md's "## The feature cache" section the workflow.
"""

from __future__ import annotations

import copy
import inspect
import math
import os
from collections.abc import Mapping

import torch
from torch import nn

from dp_sam2.encoders.obs import inputs
from dp_sam2.encoders.obs.backbone import SAM2Backbone
from dp_sam2.encoders.obs.finetune import FinetuneConfig, configure_backbone, tag_backbone_parameters
from dp_sam2.encoders.obs.guard import _check_parent_accepts_obs_encoder
from dp_sam2.encoders.obs.heads import build_head
from dp_sam2.encoders.obs.inputs import (
    IMAGENET,
    ObsKeys,
    parse_flag,
    parse_input_range,
    parse_shape_meta,
    random_crop,
    resize,
)
from dp_sam2.encoders.sam2.precision import check_precision, precision_autocast

__all__ = ["SAM2ObsEncoder", "SAM2Backbone", "ObsKeys", "parse_shape_meta", "parse_input_range"]


class SAM2ObsEncoder(nn.Module):
    """SAM 2's image encoder as Diffusion Policy's ``obs_encoder`` (DP's ``MultiImageObsEncoder``), in DP's words.

    ``forward(obs_dict) -> (B, D)``: rgb ``(B, 3, H, W)`` images (``B = batch * n_obs_steps``) or cached features
    (:meth:`encode_images`), low_dim ``(B, *shape)``, keys from ``shape_meta``: rgb first, then low_dim, each
    sorted; ``D = n_rgb * feature_dim + sum(low_dim sizes)``, also ``output_shape()`` (no backbone run).
    Per camera (DP's order): ``resize_shape`` -> ``crop_shape`` (random in training if ``random_crop``, else
    centre) -> ``augment``'s crop -> ``image_size`` (bilinear, antialiased) -> ``input_range`` to [0, 1] ->
    ``augment``'s modules (training) -> SAM 2's mean/std. One backbone runs all cameras at once
    (``share_rgb_model=False``: a copy each) for the stride-16 FPN map plus ``no_mem_embed``; a per-camera
    ``pooling`` head -> ``feature_dim``.

    Other vocabularies are translated before they reach it: UMI's ``TimmObsEncoder`` keys by
    :class:`dp_sam2.encoders.obs.umi.UMIObsEncoder` (the ``umi_obs_encoder`` group), LeRobot's config by the
    plugin ``lerobot_policy_sam2``; both subclass this and run its preprocessing and backbone call. Keys that
    0.2.x accepted here (UMI's, and DP's no-effect keys) go through one table,
    :data:`dp_sam2.encoders.obs.old_keys.OLD_KEYS`; any other keyword is a ``TypeError``.
    """

    input_layout = "dp"  # the input convention: rgb (B*To, 3, H, W); UMIObsEncoder: "umi"

    def __new__(cls, *args, **kwargs):
        # A 0.2.x config with `input_layout: umi` names this class: it is UMI's, built as UMIObsEncoder.
        if cls is SAM2ObsEncoder and kwargs.get("input_layout") is not None:
            if inputs.parse_input_layout(kwargs["input_layout"]) == "umi":
                from dp_sam2.encoders.obs.umi import UMIObsEncoder

                cls = UMIObsEncoder
        return super().__new__(cls)

    def __init__(
        self,
        shape_meta: dict,
        # --- which SAM 2, and its weights
        model_cfg: str | os.PathLike = "sam2_large",  # short name (sam2_tiny .. sam2.1_large) or config name/file
        checkpoint: str | os.PathLike | None = None,  # official .pt; None: checkpoints/<official file name>
        random_weights: bool = False,  # True: random backbone weights, no file read (tests, timing, caches)
        image_size: int | None = None,  # SAM 2 input side, a multiple of 32: cost grows ~ size^2; None: 224/256
        # --- what trains (dp_sam2.encoders.obs.finetune); the heads always train
        freeze: bool = True,  # True: backbone frozen, eval mode, no graph (cheap, cacheable); False: it trains
        trainable_blocks: int | None = None,  # freeze=False: only the last N Hiera blocks (+ neck) train
        lora_rank: int = 0,  # freeze=False, > 0: LoRA adapters on attention (few weights, full backward)
        lora_alpha: float | None = None,  # LoRA scale numerator; None: = lora_rank (scale 1)
        activation_checkpointing: bool = False,  # recompute block activations in backward: less memory, more time
        # --- features
        feature_dim: int = 256,  # per camera: the width of each camera's slice of the output
        pooling: str = "attention",  # attention (learned query, best) | spatial_softmax | mean (cheapest)
        # --- what comes in, and how it is cropped (DP's MultiImageObsEncoder keys)
        input_range: str | list = "[-1,1]",  # [-1, 1] (DP's normaliser) | [0, 1] | imagenet (used as it comes)
        resize_shape: int | list | dict | None = None,  # [h, w] (or per key) before the crop; None: none
        crop_shape: int | list | dict | None = None,  # [h, w] (or per key) crop before image_size; None: none
        random_crop: bool = True,  # crop_shape random in training (augmentation) or always centred
        augment: list | None = None,  # UMI's transforms: [{type: RandomCrop, ratio}, modules...], training only
        share_rgb_model: bool = True,  # one backbone for all cameras (one batched run) or a copy per camera
        # --- how it runs
        precision: str = "fp32",  # fp32 | bf16: backbone under autocast, faster on bf16 hardware, less exact
        compile: bool = False,  # torch.compile the backbone: faster steps after a slow first (compiling) call
        **old_keys,  # 0.2.x keys: translated by dp_sam2.encoders.obs.old_keys.OLD_KEYS, anything else: TypeError
    ) -> None:
        """Arguments as commented in the signature; in detail:

        * ``model_cfg``: registry short name (``sam2_large``, ``sam2.1_tiny``), official config name or a ``.yaml``.
        * ``checkpoint``: found by :func:`~dp_sam2.checkpoints.resolve.find_weights` (absolute, or relative to
          ``$DP_SAM2_CHECKPOINT_DIR``, the DP repo root, the current directory, the user cache).
        * ``image_size``: window-aligned sizes are cheapest (224 for tiny/small/base+, 256 for large).
        * ``freeze``, ``trainable_blocks``, ``lora_rank``, ``lora_alpha``, ``activation_checkpointing``: see
          :mod:`dp_sam2.encoders.obs.finetune`.
        * ``resize_shape``, ``crop_shape``: a size (:func:`~dp_sam2.encoders.obs.inputs.parse_hw`) or
          ``{rgb key: size}``; ``augment``: see :func:`~dp_sam2.encoders.obs.inputs.parse_augment`.
        * DP's ``rgb_model`` (must be null), ``use_group_norm``, ``imagenet_norm`` and ``input_layout: dp`` are
          accepted through :data:`~dp_sam2.encoders.obs.old_keys.OLD_KEYS` (DP group files set them: Hydra merges
          a group file into DP's inline ``MultiImageObsEncoder`` dict, so leftover keys reach the constructor).
        """
        if old_keys:  # translate once, then build with the new names only
            from dp_sam2.encoders.obs.old_keys import translate_old_keys

            given = {k: v for k, v in locals().items() if k in _DEFAULTS}
            SAM2ObsEncoder.__init__(self, **translate_old_keys(given, old_keys, _DEFAULTS))
            return
        super().__init__()
        _check_parent_accepts_obs_encoder()
        self.keys = self._parse_shape_meta(shape_meta)
        self.model_cfg, self.spec = inputs.lookup_model(model_cfg)
        self.image_size = inputs.check_image_size(image_size, self.spec)
        freeze = parse_flag("freeze", freeze)
        self.finetune = FinetuneConfig(
            freeze is not False,  # None: 0.2.x's "unset", frozen
            trainable_blocks,
            int(lora_rank),
            lora_alpha,
            bool(activation_checkpointing),
        )
        self.input_range = parse_input_range(input_range)
        self.random_crop = bool(random_crop)
        self.resize_shape = inputs.per_key_hw(resize_shape, self.keys.rgb, "resize_shape")
        self.crop_shape = inputs.per_key_hw(crop_shape, self.keys.rgb, "crop_shape")
        self._check_crops()
        crop_ratio, self.augment = inputs.parse_augment(augment)
        self.ratio_crop = {k: inputs.ratio_crop(self._cropped_hw(k), crop_ratio) for k in self.keys.rgb}
        self.share_rgb_model = bool(share_rgb_model)
        self.feature_dim = int(feature_dim) if isinstance(feature_dim, int) else feature_dim
        self.pooling = pooling
        self.precision = check_precision(precision)
        self.use_compile = bool(parse_flag("compile", compile))

        backbone = SAM2Backbone(self.model_cfg, self.image_size)
        self.checkpoint = self._load_weights(backbone, checkpoint, bool(parse_flag("random_weights", random_weights)))
        configure_backbone(backbone, self.finetune)
        backbone.freeze_unused_neck_levels()
        backbone.activation_checkpointing = self.finetune.activation_checkpointing
        self.feature_shape = (backbone.channels, self.image_size // 16, self.image_size // 16)
        self._attach_backbone(backbone)
        self.heads = self._build_heads(backbone.channels)
        self._build_extra_modules()
        self.register_buffer("pixel_mean", torch.tensor(inputs.SAM2_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(inputs.SAM2_STD).view(1, 3, 1, 1), persistent=False)
        self._tag_backbones()
        self.train(self.training)

    # ---------------------------------------------------------------- layout (subclasses change these)
    def _parse_shape_meta(self, shape_meta) -> ObsKeys:
        return parse_shape_meta(shape_meta, self.input_layout)

    def _attach_backbone(self, backbone: SAM2Backbone) -> None:
        """DP: ``self.backbone`` (shared by the cameras) or ``self.backbones[key]`` (``share_rgb_model=False``)."""
        if self.share_rgb_model:
            self.backbone = backbone
        else:
            self.backbones = nn.ModuleDict({_module_key(k): copy.deepcopy(backbone) for k in self.keys.rgb})

    def _build_heads(self, channels: int) -> nn.Module:
        """One pooling head per camera, ``heads[key]``."""
        return nn.ModuleDict(
            {
                _module_key(k): build_head(self.pooling, channels, self.feature_shape[1:], self.feature_dim)
                for k in self.keys.rgb
            }
        )

    def _build_extra_modules(self) -> None:
        """Modules a subclass adds after the heads (UMI's low_dim token projections)."""

    def _head(self, key: str) -> nn.Module:
        return self.heads[_module_key(key)]

    # ---------------------------------------------------------------- construction helpers
    def _check_crops(self) -> None:  # also for callers that set crop_shape after construction (policies/)
        inputs.check_crops(self.keys, self.crop_shape, self.resize_shape)

    def _cropped_hw(self, key: str) -> tuple[int, int]:
        return self.crop_shape[key] or self.resize_shape[key] or self.keys.shapes[key][1:]

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

    def output_shape(self) -> tuple[int, ...]:
        """``(D,)`` with ``D = n_rgb * feature_dim + sum(low_dim sizes)``. No forward is run."""
        low_dim = sum(math.prod(self.keys.shapes[k]) for k in self.keys.low_dim)
        return (len(self.keys.rgb) * self.feature_dim + low_dim,)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.finetune.freeze:
            for backbone in self._all_backbones():
                backbone.eval()
        return self

    def forward(self, obs_dict: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """``obs_dict`` (see the class docstring) -> ``(B, D)``."""
        batch = inputs.check_obs(obs_dict, self.keys, self.input_layout, self.feature_shape, self.input_range)
        parts = self._pooled_features(obs_dict)
        parts += [obs_dict[k].to(parts[0].dtype) for k in self.keys.low_dim]
        return torch.cat([p.reshape(batch, -1) for p in parts], dim=-1)

    def _pooled_features(self, obs_dict) -> list[torch.Tensor]:
        """Each rgb key's head output ``(N, ...)``, in ``keys.rgb`` order: preprocessing, one backbone run, heads."""
        feats = self._rgb_features(obs_dict)
        return [self._head(k)(feats[k].to(self._head_dtype(k))) for k in self.keys.rgb]

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
            x = random_crop(x, crop) if (train and self.random_crop) else inputs.center_crop(x, crop)
        crop = self.ratio_crop[key]  # UMI's RandomCrop ratio: random in training, centred in eval
        if crop is not None:
            x = random_crop(x, crop) if train else inputs.center_crop(x, crop)
        x = resize(x, (self.image_size, self.image_size))
        augment = train and self.augment is not None
        if self.input_range == IMAGENET and not augment:
            return x  # already normalised with SAM 2's (ImageNet's) mean/std
        x = inputs.to_unit(x, self.input_range)
        if augment:  # UMI's transforms (ColorJitter, ...) in [0, 1], training only
            x = self.augment(x)
        return (x - self.pixel_mean.to(x.dtype)) / self.pixel_std.to(x.dtype)

    def encode_images(self, images: torch.Tensor, key: str | None = None, input_range=None) -> torch.Tensor:
        """Backbone features ``(N, *feature_shape)`` of ``(N, 3, H, W)`` images of rgb key ``key``: what a feature
        cache stores (as float16), ``feature_shape = (256, image_size // 16, image_size // 16)``.

        ``images`` are at the key's ``shape_meta`` resolution, in ``input_range`` (default: the encoder's; ``[0, 1]``
        for DP's dataset images before DP's normaliser). Deterministic eval preprocessing (``resize_shape``, centre
        crop, resize to ``image_size``, SAM 2's mean/std); the stride-16 map plus ``no_mem_embed``. A dataset
        serves them under the **same obs key** as the images, ``(T, *feature_shape)`` per sample (UMI layout:
        ``(B, T, *feature_shape)``); ``forward`` takes an rgb value of shape ``(B, *feature_shape)`` as features (an
        image never has 256 channels; a batch may mix the two per key) and refuses them while the backbone trains.
        :meth:`feature_info` gives the settings to store with a cache and compare when training.
        """
        key = self._default_key(key)
        inputs.check_images(key, images, self.keys, self.feature_shape, self.input_range)
        if input_range is not None and parse_input_range(input_range) != self.input_range:
            images = inputs.from_unit(inputs.to_unit(images, parse_input_range(input_range)), self.input_range)
        return self._run_backbone(key, self.preprocess(images, key, train=False))

    def feature_info(self, key: str | None = None) -> dict:
        """The settings that determine the features of rgb key ``key`` (plain Python values):
        store them with a feature cache and compare them before training on it."""
        key = self._default_key(key)
        resize, crop = self.resize_shape[key], self.crop_shape[key]
        return {
            "model_cfg": self.model_cfg,
            "checkpoint": self.checkpoint,
            "image_size": self.image_size,
            "image_shape": list(self.keys.shapes[key]),
            "resize_shape": list(resize) if resize else None,
            "crop_shape": list(crop) if crop else None,
            "feature_shape": list(self.feature_shape),
            "no_mem_embed": self._backbone(key).add_no_mem_embed,
            "precision": self.precision,
        }

    def features_from_input(self, value: torch.Tensor) -> torch.Tensor:
        """Precomputed features as they reach ``forward`` -> the backbone's raw features.

        Cached features pass through the normaliser DP keeps for their key, so this maps them back with
        ``input_range`` exactly as images are mapped, ``(x - lo) / (hi - lo)``; identity for ``[0, 1]`` and for
        ``imagenet`` (its per-channel statistics do not apply to 256 feature channels: serve them raw). Two consistent
        set-ups: the dataset's image-range normaliser (``x * 2 - 1``) with the default ``input_range`` [-1, 1]; or an
        identity normaliser with ``input_range`` [0, 1] (what :class:`dp_sam2.cache.CachedFeatureDataset` does; live
        images at eval then arrive in [0, 1]). A caller without DP's normaliser passes :meth:`features_to_input` of
        the :meth:`encode_images` output.
        """
        if self.input_range in ((0.0, 1.0), IMAGENET):
            return value
        return inputs.to_unit(value.to(torch.promote_types(value.dtype, torch.float32)), self.input_range)

    def features_to_input(self, feats: torch.Tensor) -> torch.Tensor:
        """The inverse of :meth:`features_from_input`: what DP's image normaliser makes of cached
        features (``x * 2 - 1`` for the default ``input_range`` [-1, 1]). For calling ``forward``
        directly (tests, benchmarks) with features from :meth:`encode_images`."""
        if self.input_range in ((0.0, 1.0), IMAGENET):
            return feats
        return inputs.from_unit(feats.to(torch.promote_types(feats.dtype, torch.float32)), self.input_range)

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
        if len(self._all_backbones()) == 1:  # one backbone: all cameras in one forward
            keys = list(pending)
            out = self._run_backbone(keys[0], torch.cat([pending[k] for k in keys]))
            feats.update(zip(keys, out.split([pending[k].shape[0] for k in keys]), strict=True))
        else:
            feats.update({k: self._run_backbone(k, x) for k, x in pending.items()})
        return feats

    def _run_backbone(self, key: str, x: torch.Tensor) -> torch.Tensor:
        backbone = self._backbone(key)
        run = backbone.compiled(x) if self.use_compile else backbone
        with (
            torch.set_grad_enabled(torch.is_grad_enabled() and self._backbone_trains(key)),
            precision_autocast(x.device, self.precision),
        ):
            feats = run(x)
        return feats.to(x.dtype) if self.precision == "bf16" else feats

    # ---------------------------------------------------------------- checks and lookups
    def _default_key(self, key: str | None) -> str:
        if key is None:
            if len(self.keys.rgb) != 1:
                raise ValueError(f"several rgb keys {list(self.keys.rgb)}: say which one with key=")
            return self.keys.rgb[0]
        if key not in self.keys.rgb:
            raise ValueError(f"{key!r} is not an rgb obs key; rgb keys: {list(self.keys.rgb)}")
        return key

    def _all_backbones(self) -> list[SAM2Backbone]:
        """Each distinct backbone once (``[]`` while the layout is being built)."""
        if "backbone" in self._modules:
            return [self.backbone]
        if "backbones" in self._modules:
            return list(self.backbones.values())
        return []

    def _backbone(self, key: str) -> SAM2Backbone:
        return self.backbone if "backbone" in self._modules else self.backbones[_module_key(key)]

    def _backbone_trains(self, key: str) -> bool:
        return any(p.requires_grad for p in self._backbone(key).parameters())

    def _backbone_dtype(self) -> torch.dtype:
        return self._all_backbones()[0].no_mem_embed.dtype

    def _head_dtype(self, key: str) -> torch.dtype:
        return next(iter(self._head(key).parameters())).dtype

    def extra_repr(self) -> str:
        return (
            f"model_cfg={self.model_cfg!r}, image_size={self.image_size}, input_layout={self.input_layout!r}, "
            f"rgb={list(self.keys.rgb)}, low_dim={list(self.keys.low_dim)}, pooling={self.pooling!r}, "
            f"feature_dim={self.feature_dim}, compile={self.use_compile}, {self.finetune}"
        )


def _module_key(key: str) -> str:
    """ModuleDict keys cannot contain dots."""
    return key.replace(".", "__")


module_key = _module_key  # public name (subclasses in umi.py and the LeRobot plugin use it)

# SAM2ObsEncoder's named parameters and their defaults: the vocabulary old keys are translated into
_DEFAULTS = {
    name: p.default
    for name, p in inspect.signature(SAM2ObsEncoder.__init__).parameters.items()
    if name != "self" and p.kind is not inspect.Parameter.VAR_KEYWORD
}

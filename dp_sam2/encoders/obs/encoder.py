"""SAM 2 as Diffusion Policy's observation encoder (a drop-in for DP's ``MultiImageObsEncoder``).

Besides images, :class:`SAM2ObsEncoder` takes cached backbone features (the API between it and
``dp-sam2 cache-features``): :meth:`~SAM2ObsEncoder.encode_images` makes them, ``forward`` recognises them by
shape, :meth:`~SAM2ObsEncoder.features_from_input` maps them back from DP's normaliser. Those docstrings hold
the contract, README.md's "## The feature cache" section the workflow.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping

import torch
from torch import nn

from dp_sam2.encoders.obs import inputs, umi
from dp_sam2.encoders.obs.backbone import SAM2Backbone
from dp_sam2.encoders.obs.finetune import FinetuneConfig, configure_backbone, tag_backbone_parameters
from dp_sam2.encoders.obs.guard import _check_parent_accepts_obs_encoder
from dp_sam2.encoders.obs.heads import build_head
from dp_sam2.encoders.obs.inputs import IMAGENET, ObsKeys, parse_input_range, parse_shape_meta, random_crop, resize
from dp_sam2.encoders.obs.tokens import build_token_head, check_n_emb, low_dim_projection
from dp_sam2.encoders.sam2.precision import check_precision, precision_autocast

__all__ = ["SAM2ObsEncoder", "SAM2Backbone", "ObsKeys", "parse_shape_meta", "parse_input_range"]


class SAM2ObsEncoder(nn.Module):
    """SAM 2's image encoder as Diffusion Policy's ``obs_encoder`` (DP's ``MultiImageObsEncoder``).

    ``forward(obs_dict) -> (B, D)``: rgb ``(B, 3, H, W)`` images (``B = batch * n_obs_steps``) or cached features
    (:meth:`encode_images`), low_dim ``(B, *shape)``, keys from ``shape_meta``: rgb first, then low_dim, each
    sorted; ``D = n_rgb * feature_dim + sum(low_dim sizes)``, also ``output_shape()`` (no backbone run).
    ``input_layout="umi"``: UMI's ``TimmObsEncoder``, ``(B, T, ...)`` -> ``(B, sum_k T_k * F_k)``, or tokens
    ``(B, N, n_emb)`` with ``n_emb``; UMI's keys map as :mod:`dp_sam2.encoders.obs.umi` says.
    Per camera (DP's order): ``resize_shape`` -> ``crop_shape`` (random in training if ``random_crop``, else
    centre) -> ``image_size`` (bilinear, antialiased) -> ``input_range`` to [0, 1] -> SAM 2's mean/std.
    One backbone runs all cameras at once (``share_rgb_model=False``: a copy each) for the stride-16 FPN map
    plus ``no_mem_embed``; a per-camera ``pooling`` head (attention, spatial_softmax, mean) -> ``feature_dim``.
    """

    def __init__(
        self,
        shape_meta: dict,
        model_cfg: str | None = None,
        checkpoint: str | os.PathLike | None = None,
        image_size: int | None = None,
        freeze: bool | None = None,
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
        input_layout: str = "dp",
        compile: bool = False,
        # UMI's TimmObsEncoder / TransformerObsEncoder keys: dp_sam2.encoders.obs.umi says what each becomes
        model_name: str | None = None,
        pretrained: bool | None = None,
        frozen: bool | None = None,
        global_pool: str | None = "",
        feature_aggregation: str | None = None,
        position_encording: str | None = None,
        downsample_ratio: int | None = None,
        transforms=None,
        n_emb: int | None = None,
    ) -> None:
        """Every DP ``MultiImageObsEncoder`` / UMI ``TimmObsEncoder`` key is accepted; besides those above:

        * ``model_cfg``: registry short name (``sam2_large``, ``sam2.1_tiny``) or official config name.
        * ``checkpoint``: official ``.pt`` found by :func:`~dp_sam2.checkpoints.resolve.find_weights` (``None``:
          ``checkpoints/<official file name>``); ``random_weights=True``: random backbone weights, no file read.
        * ``image_size``: a multiple of 32; default 224 (tiny/small/base+) or 256 (large), window-aligned.
        * ``freeze`` (default: no backbone grad, eval mode; the heads train), ``trainable_blocks``, ``lora_rank``,
          ``lora_alpha``, ``activation_checkpointing``: see :mod:`dp_sam2.encoders.obs.finetune`.
        * ``input_range``: ``[-1, 1]`` (default, DP's normaliser), ``[0, 1]`` or ``imagenet`` (used as it comes);
          ``precision``: ``fp32`` or ``bf16`` (autocast); ``compile``: the backbone through ``torch.compile``.
        * ``rgb_model`` must be ``None``; ``use_group_norm``, ``imagenet_norm``: no effect (UMI's keys: see above).
        """
        super().__init__()
        _check_parent_accepts_obs_encoder()
        if rgb_model is not None:
            raise TypeError(
                "SAM2ObsEncoder builds its own SAM 2 backbone; rgb_model must be null, got "
                f"{type(rgb_model).__name__} (set `rgb_model: null` in the obs_encoder config)"
            )
        self.input_layout = inputs.parse_input_layout(input_layout)
        self.keys = parse_shape_meta(shape_meta, self.input_layout)
        self.n_emb = check_n_emb(n_emb)
        if self.n_emb is not None and self.input_layout != "umi":
            raise ValueError("n_emb (token mode, UMI's DiffusionTransformerTimmPolicy) needs input_layout: umi")
        umi.check_timm_keys(global_pool, downsample_ratio, position_encording)
        freeze, self.pretrained = umi.resolve_freeze(freeze, frozen, pretrained)
        self.model_cfg, self.spec = inputs.lookup_model(umi.resolve_model(model_cfg, model_name))
        self.image_size = inputs.check_image_size(image_size, self.spec)
        self.finetune = FinetuneConfig(
            freeze, trainable_blocks, int(lora_rank), lora_alpha, bool(activation_checkpointing)
        )
        self.input_range = parse_input_range(input_range)
        self.random_crop = bool(random_crop)
        self.resize_shape = inputs._per_key_hw(resize_shape, self.keys.rgb, "resize_shape")
        self.crop_shape = inputs._per_key_hw(crop_shape, self.keys.rgb, "crop_shape")
        self._check_crops()
        crop_ratio, self.augment = umi.parse_transforms(transforms)
        self.ratio_crop = {k: umi.ratio_crop(self._cropped_hw(k), crop_ratio) for k in self.keys.rgb}
        self.share_rgb_model = bool(share_rgb_model)
        self.feature_dim = int(feature_dim) if isinstance(feature_dim, int) else feature_dim
        self.pooling = umi.resolve_pooling(pooling, feature_aggregation, tokens=self.n_emb is not None)
        self.precision = check_precision(precision)
        self.use_compile = bool(umi._flag("compile", compile))

        backbone = SAM2Backbone(self.model_cfg, self.image_size)
        if self.pretrained:
            self.checkpoint = self._load_weights(backbone, checkpoint, random_weights)
        else:  # UMI's pretrained: false: random SAM 2 weights on purpose; the group's checkpoint is not read
            self.checkpoint = self._load_weights(backbone, None, True)
        configure_backbone(backbone, self.finetune)
        backbone.freeze_unused_neck_levels()
        backbone.activation_checkpointing = self.finetune.activation_checkpointing
        module_keys = [_module_key(k) for k in self.keys.rgb]
        if self.input_layout == "umi":  # UMI's name (its optimizer rule looks for it); one shared backbone
            self.key_model_map = nn.ModuleDict({k: backbone for k in module_keys})
        elif self.share_rgb_model:
            self.backbone = backbone
        else:
            import copy

            self.backbones = nn.ModuleDict({k: copy.deepcopy(backbone) for k in module_keys})
        self.feature_shape = (backbone.channels, self.image_size // 16, self.image_size // 16)
        self.heads = self._build_heads(module_keys, backbone.channels)
        if self.n_emb is not None:
            self.low_dim_proj = nn.ModuleDict(
                {_module_key(k): low_dim_projection(self.keys.shapes[k], self.n_emb) for k in self.keys.low_dim}
            )
        self.register_buffer("pixel_mean", torch.tensor(inputs.SAM2_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(inputs.SAM2_STD).view(1, 3, 1, 1), persistent=False)
        self._tag_backbones()
        self.train(self.training)

    # ---------------------------------------------------------------- construction helpers
    def _check_crops(self) -> None:  # also for callers that set crop_shape after construction (policies/)
        inputs.check_crops(self.keys, self.crop_shape, self.resize_shape)

    def _cropped_hw(self, key: str) -> tuple[int, int]:
        return self.crop_shape[key] or self.resize_shape[key] or self.keys.shapes[key][1:]

    def _build_heads(self, module_keys: list[str], channels: int) -> nn.ModuleDict:
        """One head per camera; UMI layout with ``share_rgb_model``: one head under every camera."""

        def make():
            if self.n_emb is None:
                return build_head(self.pooling, channels, self.feature_shape[1:], self.feature_dim)
            return build_token_head(self.pooling, channels, self.feature_shape[1:], self.feature_dim, self.n_emb)

        if self.input_layout == "umi" and self.share_rgb_model:
            head = make()
            return nn.ModuleDict({k: head for k in module_keys})
        return nn.ModuleDict({k: make() for k in module_keys})

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
        """DP: ``(D,)``; UMI: ``(sum_k T_k * F_k,)``; token mode: ``(N, n_emb)``. No forward is run."""
        steps = {k: self.keys.horizons.get(k, 1) for k in self.keys.rgb + self.keys.low_dim}
        if self.n_emb is not None:
            n = sum(steps[k] * self.heads[_module_key(k)].n_tokens for k in self.keys.rgb)
            return (n + sum(steps[k] for k in self.keys.low_dim), self.n_emb)
        low_dim = sum(steps[k] * math.prod(self.keys.shapes[k]) for k in self.keys.low_dim)
        return (sum(steps[k] for k in self.keys.rgb) * self.feature_dim + low_dim,)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.finetune.freeze:
            for backbone in self._all_backbones():
                backbone.eval()
        return self

    def forward(self, obs_dict: Mapping[str, torch.Tensor]) -> torch.Tensor:
        batch = inputs.check_obs(obs_dict, self.keys, self.input_layout, self.feature_shape, self.input_range)
        if self.input_layout == "umi":  # (B, T, ...) -> (B*T, ...)
            obs_dict = {k: obs_dict[k].flatten(0, 1) for k in self.keys.rgb + self.keys.low_dim}
        feats = self._rgb_features(obs_dict)
        parts = [self.heads[_module_key(k)](feats[k].to(self._head_dtype(k))) for k in self.keys.rgb]
        if self.n_emb is not None:
            parts = [p.reshape(batch, -1, self.n_emb) for p in parts]
            parts += [
                self.low_dim_proj[_module_key(k)](
                    obs_dict[k].reshape(batch, self.keys.horizons[k], -1).to(parts[0].dtype)
                )
                for k in self.keys.low_dim
            ]
            return torch.cat(parts, dim=1)
        parts += [obs_dict[k].to(parts[0].dtype) for k in self.keys.low_dim]
        return torch.cat([p.reshape(batch, -1) for p in parts], dim=-1)

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
            feats.update(zip(keys, out.split([pending[k].shape[0] for k in keys])))
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
        if "backbone" in self._modules:
            return [self.backbone]
        for name in ("key_model_map", "backbones"):
            if name in self._modules:  # key_model_map: the one backbone under every camera
                return list({id(m): m for m in self._modules[name].values()}.values())
        return []

    def _backbone(self, key: str) -> SAM2Backbone:
        if "backbone" in self._modules:
            return self.backbone
        return (self.key_model_map if "key_model_map" in self._modules else self.backbones)[_module_key(key)]

    def _backbone_trains(self, key: str) -> bool:
        return any(p.requires_grad for p in self._backbone(key).parameters())

    def _backbone_dtype(self) -> torch.dtype:
        return self._all_backbones()[0].no_mem_embed.dtype

    def _head_dtype(self, key: str) -> torch.dtype:
        return next(iter(self.heads[_module_key(key)].parameters())).dtype

    def extra_repr(self) -> str:
        return (
            f"model_cfg={self.model_cfg!r}, image_size={self.image_size}, input_layout={self.input_layout!r}, "
            f"rgb={list(self.keys.rgb)}, low_dim={list(self.keys.low_dim)}, pooling={self.pooling!r}, "
            f"feature_dim={self.feature_dim}, n_emb={self.n_emb}, compile={self.use_compile}, {self.finetune}"
        )


def _module_key(key: str) -> str:
    """ModuleDict keys cannot contain dots."""
    return key.replace(".", "__")

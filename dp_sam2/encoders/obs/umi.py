"""UMI's ``TimmObsEncoder`` / ``TransformerObsEncoder`` in UMI's own words: :class:`UMIObsEncoder`, the
``umi_obs_encoder`` group's ``_target_``. It translates UMI's keys and builds a
:class:`~dp_sam2.encoders.obs.encoder.SAM2ObsEncoder` with UMI's layout: the same preprocessing and backbone call.

UMI writes its encoder inline in ``train_diffusion_unet_timm_umi_workspace.yaml``; the group file selected with
``+umi_obs_encoder@policy.obs_encoder=sam2_large`` is merged into it, so every key reaches the constructor:
``model_name`` -> ``model_cfg``; ``pretrained: false`` -> random SAM 2 weights, no file read; ``frozen`` ->
``freeze`` (refused with ``pretrained: false``, as UMI does); ``share_rgb_model``: one pooling head for all cameras
or one each (always one backbone, under UMI's ``key_model_map``); ``feature_aggregation``: null -> ``pooling``,
``attention_pool_2d``/``cls`` -> attention, ``avg`` -> mean (token mode: null = one token per map cell);
``transforms`` -> ``augment`` (``{type: RandomCrop, ratio: r}`` then torchvision modules, training only);
``global_pool``: ``''`` only; ``downsample_ratio``: 16 only; ``position_encording``, ``use_group_norm``,
``imagenet_norm``: no effect; ``n_emb``: token mode ``(B, N, n_emb)``.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from dp_sam2.encoders.obs import inputs
from dp_sam2.encoders.obs.encoder import SAM2ObsEncoder, module_key
from dp_sam2.encoders.obs.heads import build_head
from dp_sam2.encoders.obs.inputs import ObsKeys, parse_flag
from dp_sam2.encoders.obs.tokens import build_token_head, check_n_emb, low_dim_projection

# UMI's feature_aggregation names (and ours) -> our pooling head
AGGREGATIONS = {
    "attention_pool_2d": "attention",
    "cls": "attention",
    "avg": "mean",
    "attention": "attention",
    "mean": "mean",
    "spatial_softmax": "spatial_softmax",
}


def resolve_freeze(freeze, frozen, pretrained) -> tuple[bool, bool]:
    """``(freeze, pretrained)`` from DP's ``freeze``, UMI's ``frozen`` and ``pretrained``."""
    freeze = parse_flag("freeze", freeze)
    frozen, pretrained = parse_flag("frozen", frozen), parse_flag("pretrained", pretrained)
    if freeze is not None and frozen is not None and freeze != frozen:
        raise ValueError(
            f"freeze={freeze} and frozen={frozen} disagree: UMI's `frozen` is the freeze switch; "
            "set one of them, or both to the same value"
        )
    freeze = True if freeze is None and frozen is None else (frozen if freeze is None else freeze)
    pretrained = True if pretrained is None else pretrained
    if freeze and not pretrained:
        raise ValueError(
            "frozen/freeze=true with pretrained=false would train nothing of random SAM 2 weights "
            "(UMI refuses it too): set pretrained: true or frozen: false"
        )
    return freeze, pretrained


def resolve_pooling(pooling, feature_aggregation, tokens: bool):
    """Our head name, or ``None`` for token mode's every-cell tokens."""
    if feature_aggregation is None:
        return None if tokens else pooling
    if feature_aggregation not in AGGREGATIONS:
        raise ValueError(
            f"feature_aggregation must be null or one of {', '.join(AGGREGATIONS)} with SAM 2, got "
            f"{feature_aggregation!r}"
        )
    return AGGREGATIONS[feature_aggregation]


def check_timm_keys(global_pool, downsample_ratio, position_encording) -> None:
    if global_pool not in (None, ""):
        raise ValueError(f"global_pool must be '' (as UMI's TimmObsEncoder asserts), got {global_pool!r}")
    if downsample_ratio not in (None, 16):
        raise ValueError(f"downsample_ratio must be 16 with SAM 2 (its stride-16 map), got {downsample_ratio!r}")
    if position_encording not in (None, "learnable", "sinusoidal"):
        raise ValueError(f"position_encording must be null, 'learnable' or 'sinusoidal', got {position_encording!r}")


def check_model_name(model_name) -> str:
    """UMI's ``model_name`` must name a SAM 2 model (registry short name or config name)."""
    from dp_sam2.checkpoints.registry import get_spec

    try:
        get_spec(model_name)
    except (TypeError, ValueError) as err:
        raise ValueError(
            f"model_name must be a SAM 2 model (short name such as sam2_large; UMI's timm names "
            f"do not apply), got {model_name!r}"
        ) from err
    return model_name


def same_model(a, b) -> bool:
    """Whether two model names (short or config names) are the same registry model."""
    from dp_sam2.checkpoints.registry import get_spec

    if a == b:
        return True
    try:
        return get_spec(a).name == get_spec(b).name
    except (TypeError, ValueError):
        return False


def resolve_model(model_cfg, model_name):
    """``model_cfg`` (DP's name) and UMI's ``model_name`` are the same setting; default ``sam2_large``."""
    if model_name is None:
        return "sam2_large" if model_cfg is None else model_cfg
    check_model_name(model_name)
    if model_cfg is not None and not same_model(model_cfg, model_name):
        raise ValueError(
            f"model_cfg {model_cfg!r} and model_name {model_name!r} name different models; set one of them"
        )
    return model_name


class UMIObsEncoder(SAM2ObsEncoder):
    """SAM 2 in place of UMI's ``TimmObsEncoder`` (``(B, sum_k T_k * F_k)``) or, with ``n_emb``, its
    ``TransformerObsEncoder`` (tokens ``(B, N, n_emb)``), taking UMI's keys (see the module docstring).

    Input (UMI's convention): rgb ``(B, T, 3, H, W)``, low_dim ``(B, T, *shape)`` with
    ``T = shape_meta.obs[key].horizon``; low_dim keys with ``ignore_by_policy: true`` are left out; keys sorted,
    rgb first. State dict: the one backbone under ``key_model_map.<camera>`` (UMI's optimizer gives parameters
    named so ``obs_encoder_lr``), heads under ``heads.<camera>``, token projections under ``low_dim_proj``.
    Defaults are 0.2.x's (``frozen``/``freeze`` unset: frozen; ``share_rgb_model``: true); the group files set
    every key. ``encoder_kwargs``: :class:`SAM2ObsEncoder`'s own keys (``checkpoint``, ``image_size``,
    ``input_range``: set ``[0, 1]`` for UMI's datasets, ``pooling``, ``feature_dim``, ``trainable_blocks``,
    ``lora_rank``, ``precision``, ``compile``, ...), and ``freeze`` / ``model_cfg`` as DP's names of ``frozen`` /
    ``model_name`` (null follows UMI's key; set, they must agree).
    """

    input_layout = "umi"

    def __init__(
        self,
        shape_meta: dict,
        model_name: str | None = None,  # a SAM 2 short name (UMI's timm names do not apply); None: model_cfg
        pretrained: bool = True,  # False: random SAM 2 weights, no file read (UMI gives a pretrained one 0.1x lr)
        frozen: bool | None = None,  # UMI's freeze switch; None: follows freeze (default true)
        global_pool: str | None = "",  # must be '' (as UMI asserts)
        transforms: list | None = None,  # [{type: RandomCrop, ratio}, torchvision modules...]: training augmentation
        use_group_norm: bool = False,  # no effect: Hiera has no BatchNorm
        share_rgb_model: bool = True,  # True: one pooling head for all cameras; False: one each (one backbone always)
        imagenet_norm: bool = False,  # no effect: SAM 2's mean/std is always applied
        feature_aggregation: str | None = None,  # null: pooling decides; attention_pool_2d / cls / avg
        downsample_ratio: int | None = 16,  # must be 16: SAM 2's stride-16 map
        position_encording: str | None = None,  # [sic] no effect
        n_emb: int | None = None,  # set: token mode (UMI's DiffusionTransformerTimmPolicy)
        input_layout: str = "umi",  # the input convention the group file states; must be umi
        **encoder_kwargs,
    ) -> None:
        if inputs.parse_input_layout(input_layout) != "umi":
            raise ValueError(f"UMIObsEncoder takes UMI's layout (input_layout: umi), got {input_layout!r}")
        check_timm_keys(global_pool, downsample_ratio, position_encording)
        freeze, pretrained = resolve_freeze(encoder_kwargs.pop("freeze", None), frozen, pretrained)
        model_cfg = resolve_model(encoder_kwargs.pop("model_cfg", None), model_name)
        # plain attributes read by the layout hooks while SAM2ObsEncoder.__init__ runs
        self.n_emb = check_n_emb(n_emb)
        self.share_head = bool(share_rgb_model)
        self.pretrained = pretrained
        pooling = resolve_pooling(
            encoder_kwargs.pop("pooling", "attention"), feature_aggregation, tokens=self.n_emb is not None
        )
        if not pretrained:  # random SAM 2 weights on purpose; the group's checkpoint is not read
            encoder_kwargs.update(checkpoint=None, random_weights=True)
        super().__init__(
            shape_meta, model_cfg=model_cfg, freeze=freeze, pooling=pooling, augment=transforms, **encoder_kwargs
        )

    # ---------------------------------------------------------------- UMI's layout
    def _parse_shape_meta(self, shape_meta) -> ObsKeys:
        return inputs.parse_shape_meta(shape_meta, "umi")

    def _attach_backbone(self, backbone) -> None:
        """One backbone, under every camera's name in UMI's ``key_model_map``."""
        self.key_model_map = nn.ModuleDict({module_key(k): backbone for k in self.keys.rgb})

    def _all_backbones(self) -> list:
        if "key_model_map" not in self._modules:
            return []
        return [next(iter(self.key_model_map.values()))]

    def _backbone(self, key: str):
        return self.key_model_map[module_key(key)]

    def _build_heads(self, channels: int) -> nn.ModuleDict:
        """A pooling head (token mode: a token head) per camera, or one under every camera (``share_rgb_model``)."""

        def make():
            if self.n_emb is None:
                return build_head(self.pooling, channels, self.feature_shape[1:], self.feature_dim)
            return build_token_head(self.pooling, channels, self.feature_shape[1:], self.feature_dim, self.n_emb)

        if self.share_head:
            head = make()
            return nn.ModuleDict({module_key(k): head for k in self.keys.rgb})
        return nn.ModuleDict({module_key(k): make() for k in self.keys.rgb})

    def _build_extra_modules(self) -> None:
        if self.n_emb is not None:
            self.low_dim_proj = nn.ModuleDict(
                {module_key(k): low_dim_projection(self.keys.shapes[k], self.n_emb) for k in self.keys.low_dim}
            )

    # ---------------------------------------------------------------- UMI's interface
    def output_shape(self) -> tuple[int, ...]:
        """``(sum_k T_k * F_k,)``; token mode: ``(N, n_emb)``. No forward is run."""
        steps = self.keys.horizons
        if self.n_emb is not None:
            n = sum(steps[k] * self._head(k).n_tokens for k in self.keys.rgb)
            return (n + sum(steps[k] for k in self.keys.low_dim), self.n_emb)
        low_dim = sum(steps[k] * math.prod(self.keys.shapes[k]) for k in self.keys.low_dim)
        return (sum(steps[k] for k in self.keys.rgb) * self.feature_dim + low_dim,)

    def forward(self, obs_dict) -> torch.Tensor:
        """``(B, T, ...)`` obs -> ``(B, sum_k T_k * F_k)``, or tokens ``(B, N, n_emb)`` with ``n_emb``."""
        batch = inputs.check_obs(obs_dict, self.keys, "umi", self.feature_shape, self.input_range)
        flat = {k: obs_dict[k].flatten(0, 1) for k in self.keys.rgb + self.keys.low_dim}  # (B, T, ...) -> (B*T, ...)
        parts = self._pooled_features(flat)
        if self.n_emb is not None:
            parts = [p.reshape(batch, -1, self.n_emb) for p in parts]
            parts += [
                self.low_dim_proj[module_key(k)](flat[k].reshape(batch, self.keys.horizons[k], -1).to(parts[0].dtype))
                for k in self.keys.low_dim
            ]
            return torch.cat(parts, dim=1)
        parts += [flat[k].to(parts[0].dtype) for k in self.keys.low_dim]
        return torch.cat([p.reshape(batch, -1) for p in parts], dim=-1)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, n_emb={self.n_emb}, share_head={self.share_head}"


_flag = parse_flag  # the 0.2 private name (now dp_sam2.encoders.obs.inputs.parse_flag)

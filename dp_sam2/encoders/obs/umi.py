"""UMI's ``TimmObsEncoder`` keys, mapped onto :class:`~dp_sam2.encoders.obs.encoder.SAM2ObsEncoder`.

UMI writes its encoder inline in ``train_diffusion_unet_timm_umi_workspace.yaml``; the group file selected with
``+umi_obs_encoder@policy.obs_encoder=sam2_large`` is merged into it, so every key reaches the constructor:
``model_name`` = ``model_cfg`` (must agree); ``pretrained: false``: random SAM 2 weights, no file read;
``frozen`` = ``freeze`` (must agree; refused with ``pretrained: false``, as UMI does); ``share_rgb_model``: one
pooling head for all cameras or one each (always one backbone); ``feature_aggregation``: null -> ``pooling``,
``attention_pool_2d``/``cls`` -> attention, ``avg`` -> mean (token mode: null = one token per map cell);
``transforms``: ``{type: RandomCrop, ratio: r}`` (an ``int(H*r) x int(W*r)`` crop, centred in eval), then
torchvision modules on [0, 1] after the resize, in training; ``global_pool``: ``''`` only; ``downsample_ratio``:
16 only; ``position_encording``, ``use_group_norm``, ``imagenet_norm``: no effect; ``n_emb``: token mode.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from torch import nn

# UMI's feature_aggregation names (and ours) -> our pooling head
AGGREGATIONS = {
    "attention_pool_2d": "attention",
    "cls": "attention",
    "avg": "mean",
    "attention": "attention",
    "mean": "mean",
    "spatial_softmax": "spatial_softmax",
}


def resolve_model(model_cfg, model_name):
    """``model_cfg`` and UMI's ``model_name`` are the same setting; default ``sam2_large``."""
    from dp_sam2.checkpoints.registry import get_spec

    if model_name is None:
        return "sam2_large" if model_cfg is None else model_cfg
    try:
        name_spec = get_spec(model_name)
    except (TypeError, ValueError) as err:
        raise ValueError(
            f"model_name must be a SAM 2 model (short name such as sam2_large; UMI's timm names "
            f"do not apply), got {model_name!r}"
        ) from err
    if model_cfg is not None and model_cfg != model_name:
        try:
            same = get_spec(model_cfg).name == name_spec.name
        except (TypeError, ValueError):
            same = False
        if not same:
            raise ValueError(
                f"model_cfg {model_cfg!r} and model_name {model_name!r} name different models; set one of them"
            )
    return model_name


def _flag(name, value):
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    raise TypeError(f"{name} must be true or false, got {value!r}")


def resolve_freeze(freeze, frozen, pretrained) -> tuple[bool, bool]:
    """``(freeze, pretrained)`` from DP's ``freeze``, UMI's ``frozen`` and ``pretrained``."""
    freeze, frozen, pretrained = _flag("freeze", freeze), _flag("frozen", frozen), _flag("pretrained", pretrained)
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


def parse_transforms(transforms) -> tuple[float | None, nn.Module | None]:
    """UMI's ``transforms`` -> ``(crop ratio or None, the other transforms as one module or None)``."""
    if transforms is None:
        return None, None
    if isinstance(transforms, (str, bytes)) or not isinstance(transforms, Sequence):
        raise TypeError(f"transforms must be null or a list (UMI's), got {type(transforms).__name__}")
    ratio, modules = None, []
    for i, item in enumerate(list(transforms)):
        if isinstance(item, Mapping) and "_target_" in item:
            from hydra.utils import instantiate

            item = instantiate(item)
        if isinstance(item, Mapping):
            if i != 0 or item.get("type") != "RandomCrop" or set(item) != {"type", "ratio"}:
                raise ValueError(
                    f"transforms[{i}]: only the first entry may be a {{type: RandomCrop, ratio: r}} "
                    f"dict (as in UMI); got {dict(item)!r}"
                )
            ratio = item["ratio"]
            if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 < ratio <= 1:
                raise ValueError(f"transforms[0].ratio must be in (0, 1], got {ratio!r}")
            ratio = float(ratio)
        elif isinstance(item, nn.Module):
            modules.append(item)
        else:
            raise TypeError(
                f"transforms[{i}] must be a torch.nn.Module (a torchvision transform, instantiated by "
                f"Hydra from its _target_), got {type(item).__name__}"
            )
    return ratio, (nn.Sequential(*modules) if modules else None)


def ratio_crop(hw: tuple[int, int], ratio: float | None) -> tuple[int, int] | None:
    if ratio is None:
        return None
    return max(1, int(hw[0] * ratio)), max(1, int(hw[1] * ratio))

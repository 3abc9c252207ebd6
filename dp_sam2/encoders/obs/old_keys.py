"""The keys :class:`~dp_sam2.encoders.obs.encoder.SAM2ObsEncoder` took in 0.2.x and no longer names: one table.

DP freezes the resolved config into every checkpoint, so configs saved with 0.2.x still pass these keys (UMI's
``TimmObsEncoder`` keys, which 0.2.x accepted beside DP's, and DP's ``MultiImageObsEncoder`` keys that have no
effect with SAM 2 but that Hydra's merge leaves in place, so the DP group files set them). Each is translated
here, to a new parameter or to nothing with the reason; any other unknown keyword is a ``TypeError`` that names
it and lists what is accepted. ``docs/obs_encoder_keys.md`` shows this table (a test keeps them equal).

A new UMI config names :class:`dp_sam2.encoders.obs.umi.UMIObsEncoder`, which speaks UMI's words itself; a 0.2.x
UMI config (``input_layout: umi``) that names ``SAM2ObsEncoder`` is built as one (``SAM2ObsEncoder.__new__``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from dp_sam2.encoders.obs import umi
from dp_sam2.encoders.obs.inputs import parse_flag, parse_input_layout


@dataclass(frozen=True)
class OldKey:
    """``becomes``: what the key turns into, for people; ``why``: the reason; ``translate``: old value ->
    ``{new parameter: value}`` (empty: nothing to set), a ``ValueError`` for a value 0.2.x refused too;
    ``alias``: the key names the same setting as a parameter, so when both are set they must agree."""

    becomes: str
    why: str
    translate: Callable[[Any], dict]
    alias: bool = False


def _nothing(_value) -> dict:
    return {}


def _model_name(value) -> dict:
    return {} if value is None else {"model_cfg": umi.check_model_name(value)}


def _frozen(value) -> dict:
    value = parse_flag("frozen", value)
    return {} if value is None else {"freeze": value}


def _pretrained(value) -> dict:
    value = parse_flag("pretrained", value)
    return {"random_weights": True, "checkpoint": None} if value is False else {}


def _transforms(value) -> dict:
    return {} if value is None else {"augment": value}


def _feature_aggregation(value) -> dict:
    return {} if value is None else {"pooling": umi.resolve_pooling(None, value, tokens=False)}


def _global_pool(value) -> dict:
    umi.check_timm_keys(value, None, None)
    return {}


def _downsample_ratio(value) -> dict:
    umi.check_timm_keys(None, value, None)
    return {}


def _position_encording(value) -> dict:
    umi.check_timm_keys(None, None, value)
    return {}


def _rgb_model(value) -> dict:
    if value is not None:
        raise TypeError(
            "SAM2ObsEncoder builds its own SAM 2 backbone; rgb_model must be null, got "
            f"{type(value).__name__} (set `rgb_model: null` in the obs_encoder config)"
        )
    return {}


def _input_layout(value) -> dict:
    if parse_input_layout(value) == "umi":  # SAM2ObsEncoder.__new__ routes these to UMIObsEncoder
        raise ValueError(
            "input_layout umi is UMI's layout: build dp_sam2.encoders.obs.umi.UMIObsEncoder "
            "(the umi_obs_encoder group's _target_)"
        )
    return {}


def _n_emb(value) -> dict:
    if value is not None:
        raise ValueError("n_emb (token mode, UMI's DiffusionTransformerTimmPolicy) needs input_layout: umi")
    return {}


OLD_KEYS: dict[str, OldKey] = {
    # UMI's TimmObsEncoder keys (0.2.x took them here; UMIObsEncoder takes them now)
    "model_name": OldKey("model_cfg", "UMI's name for the model; both set must name the same model", _model_name, True),
    "frozen": OldKey("freeze", "UMI's name for the freeze switch; both set must agree", _frozen, True),
    "pretrained": OldKey(
        "random_weights = not pretrained",
        "UMI's switch: false builds random SAM 2 weights and reads no checkpoint; with freeze it is refused, as UMI "
        "refuses it",
        _pretrained,
    ),
    "transforms": OldKey("augment", "UMI's training augmentation ({type: RandomCrop, ratio} + modules)", _transforms),
    "feature_aggregation": OldKey(
        "pooling",
        "UMI's pooling names: attention_pool_2d / cls -> attention, avg -> mean; null leaves pooling as it is",
        _feature_aggregation,
    ),
    "global_pool": OldKey("ignored", "UMI's timm switch; must be '' (as UMI asserts): the heads pool", _global_pool),
    "downsample_ratio": OldKey("ignored", "must be 16 or null: SAM 2's feature map has stride 16", _downsample_ratio),
    "position_encording": OldKey(
        "ignored",
        "[sic] UMI uses it only for its transformer aggregation, which SAM 2 does not have",
        _position_encording,
    ),
    "n_emb": OldKey("UMIObsEncoder's n_emb", "UMI's token mode: null ignored, else it needs input_layout: umi", _n_emb),
    "input_layout": OldKey(
        "ignored ('dp'); 'umi' builds UMIObsEncoder",
        "the input convention a group file states; SAM2ObsEncoder takes DP's",
        _input_layout,
    ),
    # DP's MultiImageObsEncoder keys that Hydra's merge leaves in place (group files set them)
    "rgb_model": OldKey("ignored (must be null)", "SAM2ObsEncoder builds its own SAM 2 backbone", _rgb_model),
    "use_group_norm": OldKey("ignored", "Hiera has no BatchNorm to replace", _nothing),
    "imagenet_norm": OldKey(
        "ignored", "SAM 2's (ImageNet's) mean/std is always applied; input_range says what comes in", _nothing
    ),
}


def translate_old_keys(given: dict, old: Mapping[str, Any], defaults: Mapping[str, Any]) -> dict:
    """``given`` (the named parameters as called) updated from the ``old`` keys through :data:`OLD_KEYS`.

    ``defaults``: each named parameter's default (an alias set to its default counts as not set)."""
    unknown = [k for k in old if k not in OLD_KEYS]
    if unknown:
        raise TypeError(
            f"SAM2ObsEncoder got an unexpected keyword argument {unknown[0]!r}"
            + (f" (and {unknown[1:]})" if len(unknown) > 1 else "")
            + f"; it takes {', '.join(defaults)}; and, from 0.2.x configs, {', '.join(OLD_KEYS)} "
            "(see dp_sam2.encoders.obs.old_keys.OLD_KEYS)"
        )
    args = dict(given)
    for name, value in old.items():
        entry = OLD_KEYS[name]
        for new, new_value in entry.translate(value).items():
            if entry.alias and args[new] != defaults[new] and not _same(new, args[new], new_value):
                raise ValueError(
                    f"{name}={value!r} and {new}={args[new]!r} disagree: {name} is {entry.why.split(';')[0]}; "
                    "set one of them, or both to the same value"
                )
            args[new] = new_value
    if parse_flag("pretrained", old.get("pretrained")) is False and args["freeze"] is not False:
        raise ValueError(
            "frozen/freeze=true with pretrained=false would train nothing of random SAM 2 weights "
            "(UMI refuses it too): set pretrained: true or frozen: false"
        )
    return args


def _same(name: str, a, b) -> bool:
    if name == "model_cfg":
        return umi.same_model(a, b)
    return a == b


def table_markdown() -> str:
    """:data:`OLD_KEYS` as the Markdown table of ``docs/obs_encoder_keys.md``."""
    rows = ["| old key | becomes | why |", "|---|---|---|"]
    rows += [f"| `{k}` | {e.becomes} | {e.why} |" for k, e in OLD_KEYS.items()]
    return "\n".join(rows)

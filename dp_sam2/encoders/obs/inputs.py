"""What the obs encoder is given: DP's (or UMI's) ``shape_meta``, per-camera crop/resize settings, the input
range and layout, and the image operations of DP's preprocessing order (resize, crop, resize to SAM 2's size).

Input conventions (each group file says which one it expects; nothing is guessed from shapes or values):

* ``input_layout: dp``: rgb ``(B*To, 3, H, W)``, low_dim ``(B*To, *shape)`` (DP's image policy);
* ``input_layout: umi``: rgb ``(B, T, 3, H, W)``, low_dim ``(B, T, *shape)`` with
  ``T = shape_meta.obs[key].horizon`` (UMI's timm policies);
* ``input_range``: ``[-1, 1]`` (DP's image normaliser), ``[0, 1]`` (UMI, DP's raw dataset images) or
  ``imagenet`` (``([0, 1] - mean) / std`` with ImageNet's mean/std, what LeRobot hands over; SAM 2
  normalises with the same mean/std, so such input is used as it comes).
"""

from __future__ import annotations

import operator
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

SAM2_MEAN = (0.485, 0.456, 0.406)
SAM2_STD = (0.229, 0.224, 0.225)
_RANGES = {"[-1,1]": (-1.0, 1.0), "[0,1]": (0.0, 1.0)}
IMAGENET = "imagenet"  # the input_range value of ImageNet-normalised images (SAM 2's own mean/std)
LAYOUTS = ("dp", "umi")


@dataclass(frozen=True)
class ObsKeys:
    """The obs keys of a DP ``shape_meta``, sorted as DP's ``MultiImageObsEncoder`` sorts them.
    ``horizons`` (UMI layout only): ``T`` of each used key."""

    rgb: tuple[str, ...]
    low_dim: tuple[str, ...]
    shapes: dict
    horizons: dict = field(default_factory=dict)


def parse_shape_meta(shape_meta, layout: str = "dp") -> ObsKeys:
    """The used obs keys. In the UMI layout each key needs its ``horizon``, and low_dim keys with
    ``ignore_by_policy: true`` are left out, as UMI's ``TimmObsEncoder`` does (rgb keys never are)."""
    obs = _obs_meta(shape_meta)
    rgb, low_dim, shapes, horizons = [], [], {}, {}
    for key in obs:
        attr = obs[key]
        if not isinstance(attr, Mapping) or "shape" not in attr:
            raise ValueError(f"shape_meta['obs'][{key!r}] must have a 'shape', got {attr!r}")
        shape = tuple(int(s) for s in _plain(attr["shape"]))
        kind = attr.get("type", "low_dim")
        if layout == "umi":
            if kind == "low_dim" and bool(attr.get("ignore_by_policy", False)):
                continue
            horizons[key] = _horizon(key, attr)
        if kind == "rgb":
            if len(shape) != 3 or shape[0] != 3:
                raise ValueError(f"rgb obs {key!r} must have shape [3, H, W] (SAM 2 takes RGB), got {list(shape)}")
            rgb.append(key)
        elif kind == "low_dim":
            low_dim.append(key)
        else:
            raise ValueError(f"obs {key!r} has type {kind!r}; SAM2ObsEncoder supports 'rgb' and 'low_dim'")
        shapes[key] = shape
    if not rgb:
        raise ValueError("shape_meta has no rgb obs key; SAM2ObsEncoder needs at least one image")
    return ObsKeys(tuple(sorted(rgb)), tuple(sorted(low_dim)), shapes, horizons)


def _obs_meta(shape_meta):
    """``shape_meta['obs']``, read key by key: a DictConfig stays lazy, so entries the encoder never
    reads (UMI's ``latency_steps: ${eval:...}``) are not resolved."""
    obs = shape_meta.get("obs") if isinstance(shape_meta, Mapping) else None
    if not isinstance(obs, Mapping) or not obs:
        raise ValueError(
            f"shape_meta must be a dict with a non-empty 'obs' dict (DP's task shape_meta), got {shape_meta!r}"
        )
    return obs


def _horizon(key, attr) -> int:
    horizon = attr.get("horizon")
    if isinstance(horizon, bool) or not isinstance(horizon, int) or horizon < 1:
        raise ValueError(
            f"input_layout umi needs shape_meta['obs'][{key!r}]['horizon'] (UMI's T, a positive int), got {horizon!r}"
        )
    return horizon


def parse_input_layout(value) -> str:
    """``dp`` (``(B*To, ...)``) or ``umi`` (``(B, T, ...)``); see the module docstring."""
    if isinstance(value, str) and value.strip().lower() in LAYOUTS:
        return value.strip().lower()
    raise ValueError(
        f"input_layout must be 'dp' (DP: rgb (B*To, 3, H, W)) or 'umi' (UMI: rgb (B, T, 3, H, W), "
        f"T = shape_meta.obs[key].horizon), got {value!r}"
    )


def _plain(value):
    """OmegaConf containers -> plain Python (Hydra passes DictConfig/ListConfig)."""
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf
    except ImportError:  # pragma: no cover
        return value
    if isinstance(value, (DictConfig, ListConfig)):
        return OmegaConf.to_container(value, resolve=True)
    return value


def parse_flag(name: str, value):
    """A config switch: ``True``/``False`` (also 1/0) or ``None`` (unset) as given; anything else a ``TypeError``."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    raise TypeError(f"{name} must be true or false, got {value!r}")


def parse_hw(value, what: str) -> tuple[int, int]:
    """A size -> ``(height, width)`` positive ints; the one size parser of the package.

    Accepts an int ``s`` (a square ``(s, s)``), ``[h, w]`` / ``(h, w)`` (a list, tuple or Hydra
    ``ListConfig``) or a string ``"h,w"`` (also ``"h x w"``, ``"[h, w]"``, ``"s"``), as a command
    line or a config holds it. ``what`` names the setting in the error message
    (``ValueError``/``TypeError`` saying what was expected and what came)."""
    value = _plain(value)
    expected = f"{what} must be a size: an int, [height, width] or 'height,width' (positive ints)"
    if isinstance(value, str):
        parts = [p for p in re.split(r"[,x\s]+", value.strip().strip("[]()").lower()) if p]
        if not 1 <= len(parts) <= 2 or not all(p.isdigit() for p in parts):
            raise ValueError(f"{expected}, got {value!r}")
        value = [int(p) for p in parts]
        value = value * 2 if len(value) == 1 else value
    elif isinstance(value, int) and not isinstance(value, bool):
        value = [value, value]
    elif not isinstance(value, Sequence):
        raise TypeError(f"{expected}, got {type(value).__name__} {value!r}")
    items = list(value)
    if len(items) != 2 or not all(_is_int(i) and int(i) > 0 for i in items):
        raise ValueError(f"{expected}, got {value!r}")
    return int(items[0]), int(items[1])


def _is_int(value) -> bool:
    """An int (numpy's too), not a bool or a float."""
    if isinstance(value, bool):
        return False
    try:
        return operator.index(value) == value
    except TypeError:
        return False


def per_key_hw(value, keys: Sequence[str], name: str) -> dict[str, tuple[int, int] | None]:
    """``None`` / a size / ``{key: size or None}`` -> ``{key: (h, w) or None}`` for every key of ``keys``;
    each size as :func:`parse_hw` reads it."""
    value = _plain(value)
    if isinstance(value, Mapping):
        unknown = sorted(set(value) - set(keys))
        if unknown:
            raise ValueError(f"{name} names keys {unknown} that are not rgb obs keys {list(keys)}")
        return {k: None if value.get(k) is None else parse_hw(value[k], f"{name}[{k!r}]") for k in keys}
    hw = None if value is None else parse_hw(value, name)
    return {k: hw for k in keys}


_per_key_hw = per_key_hw  # the 0.2 private name (other modules now use per_key_hw)


def parse_augment(augment) -> tuple[float | None, torch.nn.Module | None]:
    """``augment`` -> ``(crop ratio or None, the training-time modules as one module or None)``.

    ``augment``: ``None`` or a list (UMI's ``transforms``): first, optionally, ``{type: RandomCrop, ratio: r}``
    (an ``int(H*r) x int(W*r)`` crop after ``crop_shape``: random in training, centred in eval), then torch
    modules (torchvision transforms; a ``{_target_: ...}`` dict is instantiated by Hydra) run on [0, 1]
    images after the resize to ``image_size``, in training only."""
    from torch import nn

    augment = _plain(augment)
    if augment is None:
        return None, None
    if isinstance(augment, (str, bytes)) or not isinstance(augment, Sequence):
        raise TypeError(f"augment (UMI's transforms) must be null or a list, got {type(augment).__name__}")
    ratio, modules = None, []
    for i, item in enumerate(list(augment)):
        if isinstance(item, Mapping) and "_target_" in item:
            from hydra.utils import instantiate

            item = instantiate(item)
        if isinstance(item, Mapping):
            if i != 0 or item.get("type") != "RandomCrop" or set(item) != {"type", "ratio"}:
                raise ValueError(
                    f"augment[{i}] (UMI's transforms[{i}]): only the first entry may be a "
                    f"{{type: RandomCrop, ratio: r}} dict (as in UMI's transforms); got {dict(item)!r}"
                )
            ratio = item["ratio"]
            if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 < ratio <= 1:
                raise ValueError(f"augment[0] (UMI's transforms[0]): RandomCrop ratio must be in (0, 1], got {ratio!r}")
            ratio = float(ratio)
        elif isinstance(item, nn.Module):
            modules.append(item)
        else:
            raise TypeError(
                f"augment[{i}] must be a torch.nn.Module (a torchvision transform, instantiated by "
                f"Hydra from its _target_), got {type(item).__name__}"
            )
    return ratio, (nn.Sequential(*modules) if modules else None)


def ratio_crop(hw: tuple[int, int], ratio: float | None) -> tuple[int, int] | None:
    """The ``(h, w)`` of a ``ratio`` crop of an ``hw`` image (at least 1 pixel); ``None`` without a ratio."""
    if ratio is None:
        return None
    return max(1, int(hw[0] * ratio)), max(1, int(hw[1] * ratio))


def parse_input_range(value) -> tuple[float, float] | str:
    """``[-1, 1]`` (DP's normaliser, the default) or ``[0, 1]``, as a list or a string, -> ``(lo, hi)``;
    ``imagenet`` (ImageNet mean/std normalised, LeRobot) -> ``"imagenet"``."""
    value = _plain(value)
    if isinstance(value, str):
        key = value.replace(" ", "").lower()
        if key in _RANGES:
            return _RANGES[key]
        if key == IMAGENET:
            return IMAGENET
    elif isinstance(value, Sequence) and len(value) == 2 and all(isinstance(v, (int, float)) for v in value):
        rng = (float(value[0]), float(value[1]))
        if rng in _RANGES.values():
            return rng
    raise ValueError(
        f"input_range must be [-1, 1] (DP's image normaliser), [0, 1] (UMI) or imagenet "
        f"(ImageNet mean/std normalised, LeRobot), got {value!r}"
    )


def range_name(rng) -> str:
    return IMAGENET if rng == IMAGENET else f"[{rng[0]:g}, {rng[1]:g}]"


def _mean_std(x: torch.Tensor):
    mean = torch.tensor(SAM2_MEAN, dtype=x.dtype, device=x.device).view(3, 1, 1)
    std = torch.tensor(SAM2_STD, dtype=x.dtype, device=x.device).view(3, 1, 1)
    return mean, std


def to_unit(x: torch.Tensor, rng) -> torch.Tensor:
    """Images in ``rng`` (channels at dim -3) -> [0, 1]."""
    if rng == IMAGENET:
        mean, std = _mean_std(x)
        return x * std + mean
    lo, hi = rng
    return x if (lo, hi) == (0.0, 1.0) else (x - lo) / (hi - lo)


def from_unit(x: torch.Tensor, rng) -> torch.Tensor:
    """The inverse of :func:`to_unit`."""
    if rng == IMAGENET:
        mean, std = _mean_std(x)
        return (x - mean) / std
    lo, hi = rng
    return x if (lo, hi) == (0.0, 1.0) else x * (hi - lo) + lo


def lookup_model(model_cfg):
    """``(name, registry spec)``; a custom ``.yaml`` file gives ``(path, None)``."""
    from dp_sam2.checkpoints.registry import get_spec

    if (
        isinstance(model_cfg, (str, os.PathLike))
        and Path(os.fspath(model_cfg)).suffix == ".yaml"
        and Path(os.fspath(model_cfg)).is_file()
    ):
        return os.fspath(model_cfg), None  # a custom config file
    spec = get_spec(model_cfg)
    return spec.name, spec


def check_image_size(image_size, spec) -> int:
    if image_size is None:
        if spec is None:
            raise ValueError("image_size is required with a custom model config")
        return spec.obs_image_size
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 32 or image_size % 32:
        raise ValueError(
            f"image_size must be a positive multiple of 32 (Hiera's windows and strides need it), "
            f"got {image_size!r}; window-aligned sizes are cheapest: 224 for tiny/small/base+, 256 for large"
        )
    return image_size


def check_crops(keys: ObsKeys, crop_shape: dict, resize_shape: dict) -> None:
    for key in keys.rgb:
        crop = crop_shape[key]
        src = resize_shape[key] or keys.shapes[key][1:]
        if crop is not None and (crop[0] > src[0] or crop[1] > src[1]):
            raise ValueError(f"crop_shape {list(crop)} for {key!r} is larger than its image {list(src)}")


def check_obs(obs_dict, keys: ObsKeys, layout: str, feature_shape: tuple[int, ...], rng) -> int:
    """The batch size of a valid ``obs_dict``; a clear error otherwise. Each rgb value is images or
    precomputed features; in the UMI layout every value has its ``T`` after ``B``."""
    if not isinstance(obs_dict, Mapping):
        raise TypeError(f"obs_dict must be a dict of tensors, got {type(obs_dict).__name__}")
    wanted = keys.rgb + keys.low_dim
    missing = [k for k in wanted if k not in obs_dict]
    if missing:
        raise ValueError(
            f"obs_dict is missing keys {missing}; expected {list(wanted)} (from shape_meta), got {sorted(obs_dict)}"
        )
    sizes = {}
    for key in wanted:
        value = obs_dict[key]
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"obs {key!r} must be a torch.Tensor, got {type(value).__name__}")
        steps = (keys.horizons[key],) if layout == "umi" else ()
        if key in keys.rgb:
            if tuple(value.shape[1:]) != steps + tuple(feature_shape):
                check_images(key, value, keys, feature_shape, rng, steps)
        elif tuple(value.shape[1:]) != steps + keys.shapes[key]:
            raise ValueError(
                f"obs {key!r} must have shape {_dims(steps, keys.shapes[key])}{_t_note(steps)}, "
                f"got {tuple(value.shape)}"
            )
        sizes[key] = value.shape[0]
    if len(set(sizes.values())) > 1:
        raise ValueError(f"obs tensors have different batch sizes: {sizes}")
    return next(iter(sizes.values()))


def check_images(key: str, value: torch.Tensor, keys: ObsKeys, feature_shape, rng, steps: tuple = ()) -> None:
    shape, name = keys.shapes[key], range_name(rng)
    if tuple(value.shape[1:]) != steps + shape:
        raise ValueError(
            f"rgb obs {key!r} must be images {_dims(steps, shape)} in {name} or precomputed features "
            f"{_dims(steps, tuple(feature_shape))}{_t_note(steps)}; got {tuple(value.shape)}"
        )
    if not value.is_floating_point():
        raise TypeError(f"rgb obs {key!r} must be a float tensor in {name}, got {value.dtype}")


def _dims(steps: tuple[int, ...], shape: tuple[int, ...]) -> str:
    return "(" + ", ".join(["B", *(f"T={t}" for t in steps), *map(str, shape)]) + ")"


def _t_note(steps: tuple[int, ...]) -> str:
    return " (input_layout umi: T = shape_meta.obs[key].horizon)" if steps else ""


def center_crop(x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    h, w = hw
    top, left = (x.shape[-2] - h) // 2, (x.shape[-1] - w) // 2
    return x[..., top : top + h, left : left + w]


def random_crop(x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    """An independent random ``hw`` crop of each image of ``(N, C, H, W)``."""
    n, _, height, width = x.shape
    h, w = hw
    top = torch.randint(0, height - h + 1, (n,), device=x.device)
    left = torch.randint(0, width - w + 1, (n,), device=x.device)
    rows = (top[:, None] + torch.arange(h, device=x.device))[:, None, :, None]
    cols = (left[:, None] + torch.arange(w, device=x.device))[:, None, None, :]
    batch = torch.arange(n, device=x.device)[:, None, None, None]
    chans = torch.arange(x.shape[1], device=x.device)[None, :, None, None]
    return x[batch, chans, rows, cols]


def resize(x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    """Bilinear with antialiasing, as torchvision's ``Resize`` on tensors (SAM 2's transform)."""
    if tuple(x.shape[-2:]) == tuple(hw):
        return x
    return F.interpolate(x, size=hw, mode="bilinear", align_corners=False, antialias=True)

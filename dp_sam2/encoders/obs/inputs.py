"""What the obs encoder is given: DP's ``shape_meta``, per-camera crop/resize settings, the input
range, and the image operations of DP's preprocessing order (resize, crop, resize to SAM 2's size)."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

SAM2_MEAN = (0.485, 0.456, 0.406)
SAM2_STD = (0.229, 0.224, 0.225)
_RANGES = {"[-1,1]": (-1.0, 1.0), "[0,1]": (0.0, 1.0)}


@dataclass(frozen=True)
class ObsKeys:
    """The obs keys of a DP ``shape_meta``, sorted as DP's ``MultiImageObsEncoder`` sorts them."""

    rgb: tuple[str, ...]
    low_dim: tuple[str, ...]
    shapes: dict


def parse_shape_meta(shape_meta) -> ObsKeys:
    meta = _plain(shape_meta)
    if not isinstance(meta, Mapping) or not isinstance(meta.get("obs"), Mapping) or not meta["obs"]:
        raise ValueError(f"shape_meta must be a dict with a non-empty 'obs' dict (DP's task shape_meta), got {meta!r}")
    rgb, low_dim, shapes = [], [], {}
    for key, attr in meta["obs"].items():
        if not isinstance(attr, Mapping) or "shape" not in attr:
            raise ValueError(f"shape_meta['obs'][{key!r}] must have a 'shape', got {attr!r}")
        shape = tuple(int(s) for s in attr["shape"])
        kind = attr.get("type", "low_dim")
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
    return ObsKeys(tuple(sorted(rgb)), tuple(sorted(low_dim)), shapes)


def _plain(value):
    """OmegaConf containers -> plain Python (Hydra passes DictConfig/ListConfig)."""
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf
    except ImportError:  # pragma: no cover
        return value
    if isinstance(value, (DictConfig, ListConfig)):
        return OmegaConf.to_container(value, resolve=True)
    return value


def _per_key_hw(value, keys: Sequence[str], name: str) -> dict[str, tuple[int, int] | None]:
    """``None`` / ``[h, w]`` / ``{key: [h, w]}`` -> ``{key: (h, w) or None}``."""
    value = _plain(value)

    def as_hw(v, where):
        if v is None:
            return None
        if (not isinstance(v, Sequence) or isinstance(v, str) or len(v) != 2
                or not all(isinstance(i, int) and i > 0 for i in v)):
            raise ValueError(f"{name}{where} must be null or [height, width] positive ints, got {v!r}")
        return (int(v[0]), int(v[1]))

    if isinstance(value, Mapping):
        unknown = sorted(set(value) - set(keys))
        if unknown:
            raise ValueError(f"{name} names keys {unknown} that are not rgb obs keys {list(keys)}")
        return {k: as_hw(value.get(k), f"[{k!r}]") for k in keys}
    hw = as_hw(value, "")
    return {k: hw for k in keys}


def parse_input_range(value) -> tuple[float, float]:
    """``[-1, 1]`` (DP's normaliser, the default) or ``[0, 1]``, as a list or a string."""
    value = _plain(value)
    if isinstance(value, str):
        key = value.replace(" ", "")
        if key in _RANGES:
            return _RANGES[key]
    elif isinstance(value, Sequence) and len(value) == 2 and all(isinstance(v, (int, float)) for v in value):
        rng = (float(value[0]), float(value[1]))
        if rng in _RANGES.values():
            return rng
    raise ValueError(f"input_range must be [-1, 1] (DP's image normaliser) or [0, 1], got {value!r}")


def center_crop(x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    h, w = hw
    top, left = (x.shape[-2] - h) // 2, (x.shape[-1] - w) // 2
    return x[..., top: top + h, left: left + w]


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

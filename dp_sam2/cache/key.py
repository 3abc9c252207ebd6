"""The cache key: what cached SAM 2 features depend on (model, checkpoint digest, image size,
crop, resize, precision), and the comparison that refuses a stale cache."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

GROUP = "dp_sam2_features"
FORMAT_VERSION = 1
RANDOM_INIT = "random-init"


# --------------------------------------------------------------------------- the key
@dataclass(frozen=True)
class CacheKey:
    """What the cached features depend on; a cache with another key is refused."""

    model: str
    checkpoint_sha256: str  # sha256 of the checkpoint file, or "random-init"
    image_size: int
    crop_shape: tuple[int, int] | None = None
    resize_shape: tuple[int, int] | None = None
    precision: str = "fp32"  # the obs encoder's backbone precision (fp32 | bf16)

    @property
    def name(self) -> str:
        name = f"{self.model}-{self.image_size}px-{self.checkpoint_sha256[:12]}"
        if self.crop_shape:
            name += f"-c{self.crop_shape[0]}x{self.crop_shape[1]}"
        if self.resize_shape:
            name += f"-r{self.resize_shape[0]}x{self.resize_shape[1]}"
        if self.precision != "fp32":
            name += f"-{self.precision}"
        return name

    def as_dict(self) -> dict:
        return {
            "model": self.model,
            "checkpoint_sha256": self.checkpoint_sha256,
            "image_size": self.image_size,
            "format_version": FORMAT_VERSION,
            "crop_shape": list(self.crop_shape) if self.crop_shape else None,
            "resize_shape": list(self.resize_shape) if self.resize_shape else None,
            "precision": self.precision,
        }


_DIGESTS: dict[tuple, str] = {}


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 of a file (memoised per path, size and modification time)."""
    path = Path(path).resolve()
    st = path.stat()
    memo = (str(path), st.st_size, st.st_mtime_ns)
    if memo not in _DIGESTS:
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                digest.update(block)
        _DIGESTS[memo] = digest.hexdigest()
    return _DIGESTS[memo]


def _hw(value) -> tuple[int, int] | None:
    if value is None:
        return None
    value = list(value)
    if len(value) != 2 or not all(isinstance(v, (int, np.integer)) and v > 0 for v in value):
        raise ValueError(f"crop_shape / resize_shape must be null or [H, W] positive ints, got {value!r}")
    return int(value[0]), int(value[1])


def resolve_weights(model: str, checkpoint=None, random_weights: bool = False) -> tuple[str, Path | None]:
    """``(digest, path)`` of the checkpoint the encoder ``model`` would load (found by
    :func:`dp_sam2.checkpoints.resolve.find_weights`); ``("random-init", None)`` when none is found
    and ``random_weights`` (or ``DP_SAM2_ALLOW_MISSING_CHECKPOINT``) allows it."""
    from dp_sam2.checkpoints.resolve import find_weights

    path = find_weights(model, checkpoint, random_weights=random_weights, warn=False)
    return (RANDOM_INIT, None) if path is None else (file_sha256(path), path)


def make_key(
    model: str,
    checkpoint=None,
    image_size=None,
    crop_shape=None,
    resize_shape=None,
    random_weights: bool = False,
    precision: str | None = None,
) -> tuple[CacheKey, Path | None]:
    from dp_sam2.checkpoints.registry import get_spec

    spec = get_spec(model)
    size = int(image_size) if image_size is not None else spec.obs_image_size
    precision = precision or "fp32"
    if precision not in ("fp32", "bf16"):
        raise ValueError(f"precision must be 'fp32' or 'bf16', got {precision!r}")
    digest, path = resolve_weights(spec.name, checkpoint, random_weights)
    return CacheKey(spec.name, digest, size, _hw(crop_shape), _hw(resize_shape), precision), path


_COMPARED = (
    "model",
    "checkpoint_sha256",
    "image_size",
    "crop_shape",
    "resize_shape",
    "precision",
    "format_version",
    "n_frames",
    "episode_ends_sha256",
    "feature_shape",
)


def check_attrs(found: dict, wanted: dict, where: str, hint: str) -> None:
    diffs = [
        f"{name}: cache has {found.get(name)!r}, wanted {wanted.get(name)!r}"
        for name in _COMPARED
        if name in wanted and found.get(name) != wanted.get(name)
    ]
    if diffs:
        raise ValueError(f"stale SAM 2 feature cache {where}: " + "; ".join(diffs) + f" ({hint})")

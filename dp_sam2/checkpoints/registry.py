"""The one registry of the eight official SAM 2 models.

Every other part of dp_sam2 (the builder, the checkpoint resolver, the downloader, the CLI and
the Hydra ``obs_encoder`` group files) reads a model's facts from here, so they are written once.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass

_URL_20 = "https://dl.fbaipublicfiles.com/segment_anything_2/072824/"
_URL_21 = "https://dl.fbaipublicfiles.com/segment_anything_2/092824/"


@dataclass(frozen=True)
class ModelSpec:
    """Facts about one official SAM 2 model."""

    name: str  # short name: "sam2_large", "sam2.1_tiny"
    version: str  # "2.0" or "2.1"
    size: str  # "tiny", "small", "base_plus", "large"
    config: str  # official config name: "configs/sam2/sam2_hiera_l.yaml"
    filename: str  # official checkpoint file name: "sam2_hiera_large.pt"
    url: str  # the official host's URL of the file
    hf_repo: str  # the Hugging Face hub repo that holds the same file: "facebook/sam2-hiera-large"
    obs_image_size: int  # window-aligned default input size for the DP obs encoder

    @property
    def short_config(self) -> str:
        """The legacy config name without the folder ("sam2_hiera_l.yaml")."""
        return self.config.rsplit("/", 1)[-1]


_SIZES = (("tiny", "t", 224), ("small", "s", 224), ("base_plus", "b+", 224), ("large", "l", 256))


def _make_registry() -> dict[str, ModelSpec]:
    specs = {}
    for version, prefix, url in (("2.0", "sam2", _URL_20), ("2.1", "sam2.1", _URL_21)):
        for size, letter, obs_size in _SIZES:
            name = f"{prefix}_{size}"
            filename = f"{prefix}_hiera_{size}.pt"
            specs[name] = ModelSpec(
                name=name,
                version=version,
                size=size,
                config=f"configs/{prefix}/{prefix}_hiera_{letter}.yaml",
                filename=filename,
                url=url + filename,
                hf_repo=f"facebook/{prefix}-hiera-{size.replace('_', '-')}",
                obs_image_size=obs_size,
            )
    return specs


MODELS: dict[str, ModelSpec] = _make_registry()

# The one model the demo, ``dp-sam2 segment``, ``track``, ``viz`` and the docs use unless told otherwise (the demo
# downloads this one, so the file it fetches is the file the other commands look for).
DEFAULT_MODEL = "sam2.1_tiny"


def _aliases() -> dict[str, ModelSpec]:
    table = {}
    for spec in MODELS.values():
        stem = spec.config[: -len(".yaml")]
        short_stem = spec.short_config[: -len(".yaml")]
        keys = {spec.name, spec.config, stem, spec.filename, spec.filename[: -len(".pt")]}
        keys |= {spec.config.replace("-", "_")}
        if spec.version == "2.0":  # the July legacy names (symlinks in the official repo)
            keys |= {spec.short_config, short_stem}
        else:
            keys |= {spec.short_config, short_stem}
        for key in keys:
            table[key] = spec
        table[spec.hf_repo] = spec  # the hub ids: facebook/sam2-hiera-tiny, facebook/sam2.1-hiera-base-plus
    return table


_ALIASES = _aliases()


def known_names() -> list[str]:
    """Short names and official config names, for error messages."""
    return list(MODELS) + [spec.config for spec in MODELS.values()]


def get_spec(name: str) -> ModelSpec:
    """Look a model up by short name, official config name (any form) or checkpoint file name."""
    if not isinstance(name, str):
        raise TypeError(f"model name must be a str, got {type(name).__name__}")
    key = name.strip()
    if key in _ALIASES:
        return _ALIASES[key]
    if key.startswith("pkg://") or key.startswith("sam2/"):
        return get_spec(key.split("/", 1)[1] if key.startswith("sam2/") else key[len("pkg://") :])
    raise ValueError(
        f"unknown SAM 2 model or config name {name!r}{did_you_mean(key)}; known names: {', '.join(known_names())}"
    )


def did_you_mean(name: str) -> str:
    """``" (did you mean 'sam2_large'?)"`` for a near miss of a known name, else ``""``."""
    table = {key.lower(): key for key in [*MODELS, *(spec.config for spec in MODELS.values()), *_ALIASES]}
    close = difflib.get_close_matches(name.strip().lower(), list(table), n=1, cutoff=0.75)
    return f" (did you mean {table[close[0]]!r}?)" if close else ""

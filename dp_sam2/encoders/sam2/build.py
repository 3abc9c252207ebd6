"""Building SAM 2 models from the packaged configs, with the official builder signatures.

No Hydra global state is touched: configs are read with OmegaConf, override strings are parsed
with Hydra's own override grammar and applied here, and the model is built with
``hydra.utils.instantiate``. So building works inside a running Hydra app (Diffusion Policy).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from importlib import resources
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf, open_dict

from dp_sam2.checkpoints.registry import did_you_mean, get_spec, known_names

from .precision import check_precision

_POSTPROCESSING = (
    "++model.sam_mask_decoder_extra_args.dynamic_multimask_via_stability=true",
    "++model.sam_mask_decoder_extra_args.dynamic_multimask_stability_delta=0.05",
    "++model.sam_mask_decoder_extra_args.dynamic_multimask_stability_thresh=0.98",
)
_VIDEO_TARGET = "dp_sam2.predictors.video.SAM2VideoPredictor"


def config_path(config_file: str | os.PathLike) -> Path:
    """The yaml file of an official config name (any form), short name, or a path to a yaml."""
    if isinstance(config_file, os.PathLike) or (isinstance(config_file, str) and os.path.isfile(config_file)):
        path = Path(config_file)
        if path.is_file():
            return path
    if not isinstance(config_file, str):
        raise TypeError(f"config_file must be a str, got {type(config_file).__name__}")
    try:
        spec = get_spec(config_file)
    except ValueError:
        raise ValueError(
            f"unknown SAM 2 config {config_file!r}{did_you_mean(config_file)}; known names: "
            f"{', '.join(known_names())} (or a path to a yaml file)"
        ) from None
    rel = spec.config[len("configs/") :]
    return Path(str(resources.files("dp_sam2.configs").joinpath(rel)))


def apply_overrides(cfg: DictConfig, overrides: Iterable[str]) -> DictConfig:
    """Apply Hydra command-line style overrides (``key=v``, ``+key=v``, ``++key=v``, ``~key``)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    if isinstance(overrides, str):
        raise TypeError(f"hydra_overrides_extra must be a list of strings, got the string {overrides!r}")
    overrides = list(overrides)
    for item in overrides:
        if not isinstance(item, str):
            raise TypeError(f"each override must be a str like '++model.image_size=512', got {item!r}")
    parser = OverridesParser.create()
    for ov in parser.parse_overrides(overrides):
        key = ov.key_or_group
        exists = OmegaConf.select(cfg, key, default=_MISSING) is not _MISSING
        if ov.is_delete():
            if not exists:
                raise ValueError(f"cannot delete {key!r}: it is not in the config")
            parent, _, leaf = key.rpartition(".")
            node = OmegaConf.select(cfg, parent) if parent else cfg
            with open_dict(node):
                del node[leaf]
            continue
        value = ov.value()
        if ov.is_add() and exists:
            raise ValueError(f"cannot add {key!r} with '+': it is already in the config (use '++' to force)")
        if not (ov.is_add() or ov.is_force_add()) and not exists:
            raise ValueError(f"cannot override {key!r}: it is not in the config (use '++{key}=...' to add it)")
        OmegaConf.update(cfg, key, value, merge=True, force_add=True)
    return cfg


_MISSING = object()


def load_model_config(config_file: str | os.PathLike, hydra_overrides_extra: Iterable[str] = ()) -> DictConfig:
    """The config of ``config_file`` with the overrides applied (resolved, not instantiated)."""
    cfg = OmegaConf.load(config_path(config_file))
    if not isinstance(cfg, DictConfig):
        raise ValueError(f"config {config_file!r} must be a mapping with a 'model' node, got a list")
    apply_overrides(cfg, hydra_overrides_extra)
    OmegaConf.resolve(cfg)
    if "model" not in cfg:
        raise ValueError(f"config {config_file!r} has no 'model' node")
    return cfg


def resolve_device(device) -> torch.device:
    """``None`` -> CUDA when available, else CPU (docs/design.md, ruling 4)."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} was asked for but CUDA is not available here; use device='cpu' or None")
    return dev


def _build(config_file, ckpt_path, device, mode, overrides) -> torch.nn.Module:
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    from dp_sam2.checkpoints.files import load_into
    from dp_sam2.checkpoints.resolve import locate_checkpoint

    if mode not in ("eval", "train"):
        raise ValueError(f"mode must be 'eval' or 'train', got {mode!r}")
    dev = resolve_device(device)
    cfg = load_model_config(config_file, overrides)
    if ckpt_path is not None:  # a bare or relative name is looked up where the obs encoder looks (docs/design.md §2)
        ckpt_path = locate_checkpoint(ckpt_path, config_file if isinstance(config_file, str) else None)
    try:
        model = instantiate(cfg.model, _recursive_=True, _convert_="all")
    except InstantiationException as err:  # surface our own ValueError/TypeError, not Hydra's wrapper
        if isinstance(err.__cause__, (ValueError, TypeError)):
            raise err.__cause__ from None
        raise
    if ckpt_path is not None:
        load_into(model, ckpt_path, str(config_file))
    model = model.to(dev)
    return model.eval() if mode == "eval" else model.train()


def build_sam2(
    config_file,
    ckpt_path=None,
    device=None,
    mode="eval",
    hydra_overrides_extra=(),
    apply_postprocessing=True,
    **kwargs,
):
    """Build a SAM2Base from an official config name (``"sam2_hiera_t.yaml"``,
    ``"configs/sam2.1/sam2.1_hiera_l.yaml"``, with or without ``.yaml``) or a short name
    (``"sam2_large"``), and load an official checkpoint strictly if given.

    ``device=None`` picks CUDA when available, else the CPU. Extra keyword arguments are accepted
    and ignored, as the official builder does (``from_pretrained`` passes predictor options here).
    """
    overrides = list(hydra_overrides_extra)
    if apply_postprocessing:  # applied after the user's overrides, so they win, as in the official
        overrides += list(_POSTPROCESSING)
    return _build(config_file, ckpt_path, device, mode, overrides)


def build_sam2_video_predictor(
    config_file,
    ckpt_path=None,
    device=None,
    mode="eval",
    hydra_overrides_extra=(),
    apply_postprocessing=True,
    vos_optimized=False,
    precision="fp32",
    **kwargs,
):
    """Build the video predictor (a SAM2Base subclass); same arguments as :func:`build_sam2`,
    plus ``precision`` (``"fp32"`` or ``"bf16"``: the image encoder under bf16 autocast)."""
    overrides = [f"++model._target_={_VIDEO_TARGET}", *hydra_overrides_extra]
    if apply_postprocessing:
        # after the user's overrides, as in the official builder: with postprocessing on,
        # fill_hole_area is 8 whatever the overrides say (set `predictor.fill_hole_area` instead)
        overrides += list(_POSTPROCESSING) + [
            # binarise the mask from clicks before encoding it into memory
            "++model.binarize_mask_from_pts_for_mem_enc=true",
            # fill small holes in the output masks
            "++model.fill_hole_area=8",
        ]
    model = _build(config_file, ckpt_path, device, mode, overrides)
    model.precision = check_precision(precision)
    if vos_optimized and hasattr(model, "compile_for_speed"):
        model.compile_for_speed()
    return model

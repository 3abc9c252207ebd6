"""Reference helpers shared by the tests and the benchmarks, without pytest: the official model
(PyPI ``sam2``) built with perturbed weights, saved in the official format, and the error measure
of docs/design.md, ruling 1. ``tests/conftest.py`` re-exports them; ``benchmarks/_common.py`` imports them."""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch


def rel_err(ours, ref) -> float:
    """docs/design.md, ruling 1: max|ours - official| / max(1, max|official|)."""
    ours = torch.as_tensor(ours).detach().double().cpu()
    ref = torch.as_tensor(ref).detach().double().cpu()
    if ours.shape != ref.shape:
        raise AssertionError(f"shape mismatch: ours {tuple(ours.shape)} vs official {tuple(ref.shape)}")
    if ref.numel() == 0:
        return 0.0
    return float((ours - ref).abs().max() / max(1.0, float(ref.abs().max())))


@contextlib.contextmanager
def _official_hydra():
    """Give the official builder its global Hydra, then leave Hydra as clean as we found it."""
    import sam2  # noqa: F401  (its import initialises GlobalHydra: undo that)
    from hydra import initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    initialize_config_module("sam2", version_base="1.2")
    try:
        yield
    finally:
        GlobalHydra.instance().clear()


def perturb_(module: torch.nn.Module, seed: int = 0, scale: float = 0.05) -> torch.nn.Module:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, tensor in sorted(module.state_dict(keep_vars=True).items()):
            if tensor.is_floating_point():
                tensor.add_(torch.randn(tensor.shape, generator=gen, dtype=tensor.dtype) * scale)
    return module


def build_official(
    config: str,
    *,
    image_size: int | None = None,
    video: bool = False,
    seed: int = 0,
    overrides=(),
    apply_postprocessing: bool = True,
    **kwargs,
):
    """An official SAM2Base (or SAM2VideoPredictor) on CPU in fp32 with perturbed weights."""
    from sam2.build_sam import build_sam2, build_sam2_video_predictor

    extra = list(overrides)
    if image_size is not None:
        extra.append(f"++model.image_size={image_size}")
    torch.manual_seed(seed)
    with _official_hydra():
        builder = build_sam2_video_predictor if video else build_sam2
        model = builder(
            config,
            None,
            device="cpu",
            mode="eval",
            hydra_overrides_extra=extra,
            apply_postprocessing=apply_postprocessing,
            **kwargs,
        )
    return perturb_(model, seed=seed)


def save_official_checkpoint(model: torch.nn.Module, path: Path) -> Path:
    torch.save({"model": model.state_dict()}, path)
    return path

"""``dp-sam2 info``: versions, device, extension, checkpoints found and whether Hydra sees the group."""
from __future__ import annotations

import os
from pathlib import Path


def _version(module: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(module)
    except metadata.PackageNotFoundError:
        return "not installed"


def hydra_sees_obs_encoder_group() -> tuple[bool | None, str]:
    """Whether a fresh Hydra app finds the ``obs_encoder`` group (through dp_sam2's plugin)."""
    import tempfile

    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    if GlobalHydra.instance().is_initialized():
        return None, "not checked (Hydra is already initialised in this process)"
    try:
        with tempfile.TemporaryDirectory() as empty, initialize_config_dir(empty, version_base=None):
            options = GlobalHydra.instance().config_loader().get_group_options("obs_encoder")
    except Exception as err:  # noqa: BLE001 - a diagnosis must not crash
        return False, f"error while checking: {type(err).__name__}: {err}"
    finally:
        GlobalHydra.instance().clear()
    if options:
        return True, "yes: " + ", ".join(sorted(options))
    return False, ("NO - the search-path plugin hydra_plugins/dp_sam2 was not found; `+obs_encoder=...` "
                   "would silently become a string. Reinstall dp_sam2 (pip install .) in this environment.")


def info_lines() -> list[str]:
    import platform

    import torch

    from dp_sam2 import __version__
    from dp_sam2.checkpoints.registry import MODELS
    from dp_sam2.checkpoints.resolve import ENV_ALLOW_MISSING, ENV_CACHE, ENV_CHECKPOINT_DIR, candidates, cache_dir, dp_repo_root

    lines = [f"dp_sam2 {__version__} ({Path(__file__).resolve().parent})",
             f"python {platform.python_version()}, " + ", ".join(
                 f"{m} {_version(m)}" for m in ("torch", "torchvision", "hydra-core", "zarr", "diffusers", "numpy", "pillow", "av")),
             ""]
    cuda = torch.cuda.is_available()
    devices = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())) if cuda else ""
    lines.append(f"device: {'cuda (' + devices + ')' if cuda else 'cpu (no CUDA device visible)'}; "
                 f"torch built with CUDA {torch.version.cuda or 'none'}")
    try:
        from dp_sam2.ext import implementation

        impl = f"cpu: {implementation('cpu')}" + (f"; cuda: {implementation('cuda')}" if cuda else "")
    except Exception as err:  # noqa: BLE001
        impl = f"unavailable ({type(err).__name__}: {err})"
    lines += [f"connected components: {impl}", ""]
    root = dp_repo_root()
    lines.append(f"Diffusion Policy repo root: {root if root else 'diffusion_policy not importable'}")
    for env in (ENV_CHECKPOINT_DIR, ENV_CACHE, ENV_ALLOW_MISSING):
        lines.append(f"${env} = {os.environ.get(env, '(unset)')}")
    lines.append(f"user cache: {cache_dir()}")
    example = f"checkpoints/{MODELS['sam2_large'].filename}"
    lines.append(f"lookup order for {example}: " + " -> ".join(f"{c.path} ({c.origin})" for c in candidates(example)))
    lines.append("checkpoints:")
    from dp_sam2.checkpoints.resolve import CheckpointNotFoundError, resolve_checkpoint

    for spec in MODELS.values():
        try:
            where = str(resolve_checkpoint(f"checkpoints/{spec.filename}", spec.name))
        except CheckpointNotFoundError:
            where = f"not found (dp-sam2 download {spec.name})"
        lines.append(f"  {spec.name:16s} {spec.filename:26s} {where}")
    ok, text = hydra_sees_obs_encoder_group()
    lines += ["", f"Hydra sees the obs_encoder group: {text}"]
    return lines

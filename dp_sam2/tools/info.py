"""``dp-sam2 info``: versions, device, extension, checkpoints found, the download sources, which
optional parts can be used (found with ``importlib.util.find_spec``, never imported), and last whether
Hydra sees the groups: the report ends with the line ``Hydra sees the obs_encoder group: ...``."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

# (what, our module, the third-party module it needs, how to get that)
OPTIONAL_PARTS = (
    (
        "hybrid DP policies",
        "dp_sam2.policies",
        "robomimic",
        "pip install --no-deps robomimic==0.2.0 (see docs/hybrid.md)",
    ),
    ("multi-process workspace", "dp_sam2.workspaces", "torch.distributed", "a torch build with torch.distributed"),
    (
        "  launched by accelerate",
        "dp_sam2.workspaces",
        "accelerate",
        "optional, torchrun works too: pip install accelerate",
    ),
    ("LeRobot plugin", "lerobot_policy_sam2", "lerobot", "pip install lerobot (Python >= 3.12) and this package"),
)
GROUPS = ("obs_encoder", "sam2_policy", "umi_obs_encoder")


def _version(module: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(module)
    except metadata.PackageNotFoundError:
        return "not installed"


def hydra_sees_obs_encoder_group(group: str = "obs_encoder") -> tuple[bool | None, str]:
    """Whether a fresh Hydra app finds the config ``group`` (through dp_sam2's plugin)."""
    return hydra_group_options((group,))[group]


def hydra_group_options(groups=GROUPS) -> dict[str, tuple[bool | None, str]]:
    """For each config group: (found, text), from one fresh Hydra app."""
    import tempfile

    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    if GlobalHydra.instance().is_initialized():
        return {g: (None, "not checked (Hydra is already initialised in this process)") for g in groups}
    try:
        with tempfile.TemporaryDirectory() as empty, initialize_config_dir(empty, version_base=None):
            loader = GlobalHydra.instance().config_loader()
            options = {g: loader.get_group_options(g) for g in groups}
    except Exception as err:  # noqa: BLE001 - a diagnosis must not crash
        return {g: (False, f"error while checking: {type(err).__name__}: {err}") for g in groups}
    finally:
        GlobalHydra.instance().clear()
    out = {}
    plugin_seen = any(options.values())
    for group, found in options.items():
        if found:
            out[group] = (True, "yes: " + ", ".join(sorted(found)))
        elif plugin_seen:
            out[group] = (False, f"NO - this dp_sam2 ships no {group} group")
        else:
            out[group] = (
                False,
                f"NO - the search-path plugin hydra_plugins/dp_sam2 was not found; `+{group}=...` "
                "would silently become a string. Reinstall dp_sam2 (pip install .) here.",
            )
    return out


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent package that fails to import, or a broken spec
        return False


def optional_lines() -> list[str]:
    """Which optional parts can be used here, without importing them."""
    lines = ["optional parts:"]
    for what, ours, needs, how in OPTIONAL_PARTS:
        have_ours, have_needs = _importable(ours), _importable(needs)
        if have_ours and have_needs:
            state = "usable"
        elif not have_ours:
            state = f"not available ({ours} is not importable)"
        else:
            state = f"not usable: {needs} is not installed ({how})"
        lines.append(f"  {what:26s} {ours} + {needs}: {state}")
    return lines


def source_lines() -> list[str]:
    from urllib.parse import urlsplit

    from dp_sam2.checkpoints.registry import MODELS

    host = urlsplit(MODELS["sam2_large"].url)
    lines = [
        "download sources (dp-sam2 download NAME --source ...):",
        f"  official     {host.scheme}://{host.netloc} (or --base-url)",
    ]
    if _importable("huggingface_hub"):
        endpoint = os.environ.get("HF_ENDPOINT")
        hub = f"HF_ENDPOINT={endpoint}" if endpoint else "https://huggingface.co (HF_ENDPOINT unset)"
        if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
            hub += "; HF_HUB_OFFLINE is set: only its cache"
        lines.append(f"  huggingface  {hub}, repos facebook/sam2-hiera-*, facebook/sam2.1-hiera-*")
    else:
        lines.append('  huggingface  not available: pip install "dp-sam2[huggingface]"')
    return lines


def info_lines() -> list[str]:
    import platform

    import torch

    from dp_sam2 import __version__
    from dp_sam2.checkpoints.registry import MODELS
    from dp_sam2.checkpoints.resolve import (
        ENV_ALLOW_MISSING,
        ENV_CACHE,
        ENV_CHECKPOINT_DIR,
        cache_dir,
        candidates,
        dp_repo_root,
    )

    lines = [
        f"dp_sam2 {__version__} ({Path(__file__).resolve().parent})",
        f"python {platform.python_version()}, "
        + ", ".join(
            f"{m} {_version(m)}"
            for m in ("torch", "torchvision", "hydra-core", "zarr", "diffusers", "numpy", "pillow", "av")
        ),
        "",
    ]
    cuda = torch.cuda.is_available()
    devices = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())) if cuda else ""
    lines.append(
        f"device: {'cuda (' + devices + ')' if cuda else 'cpu (no CUDA device visible)'}; "
        f"torch built with CUDA {torch.version.cuda or 'none'}"
    )
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
    lines += ["", *source_lines(), "", *optional_lines(), ""]
    # the Hydra lines close the report, the obs_encoder group's last: the line Troubleshooting points to
    found = hydra_group_options()
    for group in sorted(found, key=lambda g: g == "obs_encoder"):
        lines.append(f"Hydra sees the {group} group: {found[group][1]}")
    return lines

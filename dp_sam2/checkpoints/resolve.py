"""Finding SAM 2 checkpoint files, relative to the Diffusion Policy repo.

A Diffusion Policy (DP) config stores the ``checkpoint`` path exactly as the user wrote it, and
DP freezes the resolved config into every training checkpoint. So paths stay relative
(``checkpoints/sam2_hiera_large.pt``) and are looked up when the encoder is built, in this order:

1. an absolute path is used as given;
2. ``$DP_SAM2_CHECKPOINT_DIR`` (the path below it, then just the file name);
3. the DP repo root: the folder holding the ``diffusion_policy`` package (a namespace package with
   no ``__init__.py``, so it is found through ``__path__``);
4. the current directory (DP's ``train.py`` does not change it);
5. the user cache ``$DP_SAM2_CACHE`` (default ``~/.cache/dp_sam2``; path, then file name), where
   ``dp-sam2 download`` puts files.

When none holds the file the error lists every place tried and the command that downloads it.
``DP_SAM2_ALLOW_MISSING_CHECKPOINT=1`` lets the obs encoder build its architecture without SAM 2
weights (with a warning): meant for ``eval.py`` on a machine whose DP checkpoint already holds
the encoder weights.
"""
from __future__ import annotations

import importlib.util
import os
import sys
from dataclasses import dataclass
from pathlib import Path

ENV_CHECKPOINT_DIR = "DP_SAM2_CHECKPOINT_DIR"
ENV_CACHE = "DP_SAM2_CACHE"
ENV_ALLOW_MISSING = "DP_SAM2_ALLOW_MISSING_CHECKPOINT"


class CheckpointNotFoundError(FileNotFoundError):
    """No candidate location holds the checkpoint; ``tried`` lists them in lookup order."""

    def __init__(self, message: str, tried: list[Path]):
        super().__init__(message)
        self.tried = tried


@dataclass(frozen=True)
class Candidate:
    """One place a relative checkpoint path is looked for."""

    origin: str  # e.g. "$DP_SAM2_CHECKPOINT_DIR", "DP repo root"
    path: Path


def cache_dir() -> Path:
    """The user cache for downloaded checkpoints (``$DP_SAM2_CACHE`` or ``~/.cache/dp_sam2``)."""
    value = os.environ.get(ENV_CACHE, "").strip()
    return Path(value).expanduser() if value else Path.home() / ".cache" / "dp_sam2"


def dp_repo_root() -> Path | None:
    """The folder that holds the ``diffusion_policy`` package, or ``None`` if it is not importable.

    ``diffusion_policy`` has no ``__init__.py``; its location comes from ``__path__`` (of the
    imported module, or of its import spec without importing it)."""
    module = sys.modules.get("diffusion_policy")
    locations = list(getattr(module, "__path__", []) or []) if module is not None else []
    if not locations:
        try:
            spec = importlib.util.find_spec("diffusion_policy")
        except (ImportError, ValueError):
            spec = None
        locations = list(spec.submodule_search_locations or []) if spec is not None else []
    return Path(locations[0]).resolve().parent if locations else None


def allow_missing_checkpoint() -> bool:
    """True when ``DP_SAM2_ALLOW_MISSING_CHECKPOINT`` is set to 1/true/yes."""
    return os.environ.get(ENV_ALLOW_MISSING, "").strip().lower() in ("1", "true", "yes", "on")


def candidates(path: str | os.PathLike) -> list[Candidate]:
    """Every location tried for ``path``, in lookup order (an absolute path is its only one)."""
    rel = Path(os.path.expanduser(os.fspath(path)))
    if rel.is_absolute():
        return [Candidate("absolute path", rel)]
    out: list[Candidate] = []

    def add(origin: str, base: Path, also_name: bool) -> None:
        out.append(Candidate(origin, base / rel))
        if also_name and rel.parent != Path("."):
            out.append(Candidate(origin, base / rel.name))

    env_dir = os.environ.get(ENV_CHECKPOINT_DIR, "").strip()
    if env_dir:
        add(f"${ENV_CHECKPOINT_DIR}", Path(env_dir).expanduser(), also_name=True)
    root = dp_repo_root()
    if root is not None:
        add("DP repo root", root, also_name=False)
    add("current directory", Path.cwd(), also_name=False)
    add(f"user cache (${ENV_CACHE})", cache_dir(), also_name=True)
    unique: dict[Path, Candidate] = {}
    for cand in out:
        unique.setdefault(cand.path, cand)
    return list(unique.values())


def download_hint(path: str | os.PathLike, model: str | None = None) -> str:
    """The command that downloads the file ``path`` names (by registry short name)."""
    from dp_sam2.checkpoints.registry import get_spec

    name = model
    for key in (Path(os.fspath(path)).name, model):
        if key is None:
            continue
        try:
            name = get_spec(key).name
            break
        except (ValueError, TypeError):
            continue
    return f"dp-sam2 download {name or '<model name>'}"


def resolve_checkpoint(path: str | os.PathLike, model: str | None = None) -> Path:
    """The existing file ``path`` refers to (see the module docstring for the order).

    ``model`` (a registry or config name) only improves the download hint of the error."""
    if not isinstance(path, (str, os.PathLike)) or not os.fspath(path).strip():
        raise TypeError(f"checkpoint must be a non-empty path string, got {path!r}")
    tried = candidates(path)
    for cand in tried:
        if cand.path.is_file():
            return cand.path
    lines = "\n".join(f"  - {c.path}  ({c.origin})" for c in tried)
    if not Path(os.path.expanduser(os.fspath(path))).is_absolute() and dp_repo_root() is None:
        lines += "\n  (not the DP repo root: the `diffusion_policy` package is not importable here)"
    raise CheckpointNotFoundError(
        f"SAM 2 checkpoint {os.fspath(path)!r} not found. Looked in:\n{lines}\n"
        f"Download it with `{download_hint(path, model)}` (into the user cache), put the file at "
        f"one of the places above, or set ${ENV_CHECKPOINT_DIR} to the folder that holds it. "
        f"For eval of a Diffusion Policy checkpoint that already holds the encoder weights, set "
        f"{ENV_ALLOW_MISSING}=1 to build the encoder without the SAM 2 file.",
        [c.path for c in tried],
    )

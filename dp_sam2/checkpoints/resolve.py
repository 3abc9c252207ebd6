"""Finding SAM 2 checkpoint files, relative to the Diffusion Policy repo.

DP freezes the ``checkpoint`` path as written into every training checkpoint, so paths stay relative
(``checkpoints/sam2_hiera_large.pt``) and are looked up when the encoder is built, in order: an absolute path
as given; ``$DP_SAM2_CHECKPOINT_DIR`` (path below it, then file name); the DP repo root (the folder holding
the ``diffusion_policy`` namespace package, found through ``__path__``); the current directory; the user cache
``$DP_SAM2_CACHE`` (default ``~/.cache/dp_sam2``; path, then file name), where ``dp-sam2 download`` puts files.
Otherwise the error lists every place tried and the download command. :func:`find_weights` is the one lookup
all of dp_sam2 uses: ``checkpoint`` or ``checkpoints/<official file name>``, or ``None`` (random weights, a
warning) for a missing file when ``random_weights=True`` or ``DP_SAM2_ALLOW_MISSING_CHECKPOINT=1`` (for
``eval.py`` with a DP checkpoint that already holds the encoder weights).
"""

from __future__ import annotations

import importlib.util
import os
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

ENV_CHECKPOINT_DIR = "DP_SAM2_CHECKPOINT_DIR"
ENV_CACHE = "DP_SAM2_CACHE"
ENV_ALLOW_MISSING = "DP_SAM2_ALLOW_MISSING_CHECKPOINT"


class CheckpointNotFoundError(FileNotFoundError):
    """No candidate location holds the checkpoint; ``tried`` lists them in lookup order, ``looked_in``
    is the message's list of them and ``download_command`` the command that fetches the file."""

    def __init__(self, message: str, tried: list[Path], looked_in: str = "", download_command: str = ""):
        super().__init__(message)
        self.tried = tried
        self.looked_in = looked_in
        self.download_command = download_command


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
    """The folder that holds the ``diffusion_policy`` package: where it is importable from, else
    the current folder when it is a DP checkout (``diffusion_policy/`` beside ``train.py``: a
    console script such as ``dp-sam2`` does not put the current folder on ``sys.path``, while DP's
    ``python train.py`` does); ``None`` otherwise.

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
    if locations:
        return Path(locations[0]).resolve().parent
    cwd = Path.cwd()
    return cwd.resolve() if (cwd / "diffusion_policy").is_dir() and (cwd / "train.py").is_file() else None


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

    name = None
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
    command = download_hint(path, model)
    looked_in = f"SAM 2 checkpoint {os.fspath(path)!r} not found. Looked in:\n{lines}"
    raise CheckpointNotFoundError(
        f"{looked_in}\nDownload it with `{command}` (into the user cache), put the file at "
        f"one of the places above, or set ${ENV_CHECKPOINT_DIR} to the folder that holds it. "
        f"For eval of a Diffusion Policy checkpoint that already holds the encoder weights, set "
        f"{ENV_ALLOW_MISSING}=1 to build the encoder without the SAM 2 file.",
        [c.path for c in tried],
        looked_in,
        command,
    )


def locate_checkpoint(path: str | os.PathLike, model: str | None = None) -> Path:
    """The file a builder loads for ``path``: an absolute path as given (its loader says if it is missing),
    a bare or relative name found by :func:`resolve_checkpoint` (whose error lists every place tried)."""
    if isinstance(path, (str, os.PathLike)) and Path(os.path.expanduser(os.fspath(path))).is_absolute():
        return Path(os.path.expanduser(os.fspath(path)))
    return resolve_checkpoint(path, model)


class MissingCheckpointWarning(UserWarning):
    """No checkpoint was found and random weights are used instead (allowed by the caller)."""


def default_checkpoint(model: str) -> str:
    """The relative path a model's weights are looked up under: ``checkpoints/<official file name>``."""
    from dp_sam2.checkpoints.registry import get_spec

    return f"checkpoints/{get_spec(model).filename}"


def find_weights(
    model: str | None, checkpoint: str | os.PathLike | None = None, *, random_weights: bool = False, warn: bool = True
) -> Path | None:
    """The checkpoint file for ``model``: ``checkpoint`` (default ``checkpoints/<official file
    name>``) found by :func:`resolve_checkpoint`.

    When no place holds it: ``None`` (build with random weights) if ``random_weights=True`` or
    ``$DP_SAM2_ALLOW_MISSING_CHECKPOINT`` is set, with a :class:`MissingCheckpointWarning` unless
    ``warn=False``; otherwise the :class:`CheckpointNotFoundError` listing every place tried.
    ``model`` may be ``None`` (or a custom config file) only with an explicit ``checkpoint``."""
    from dp_sam2.checkpoints.registry import get_spec

    try:
        spec = get_spec(model) if model is not None else None
    except ValueError:
        spec = None  # a custom config: no default file name
    if checkpoint is None or (isinstance(checkpoint, str) and not checkpoint.strip()):
        if spec is None:
            raise ValueError(f"checkpoint is required with a custom model config (got model {model!r})")
        checkpoint = default_checkpoint(spec.name)
    try:
        return resolve_checkpoint(checkpoint, spec.name if spec else None)
    except CheckpointNotFoundError as err:
        env = allow_missing_checkpoint()
        if not (random_weights or env):
            raise
        if warn:
            why = f"{ENV_ALLOW_MISSING} is set" if env and not random_weights else "random_weights=True"
            warnings.warn(
                f"{why}: building {spec.name if spec else model} WITHOUT SAM 2 weights (random init; "
                f"{os.fspath(checkpoint)!r} not found). Only do this for tests, or when restoring a Diffusion "
                f"Policy checkpoint that holds the encoder weights. {str(err).splitlines()[0]}",
                MissingCheckpointWarning,
                stacklevel=3,
            )
        return None

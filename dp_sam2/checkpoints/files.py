"""Reading official SAM 2 checkpoints (``{"model": state_dict}``) with clear errors, and checking
one strictly against the official keys and shapes of its model (``state_dict_shapes.json``, the
state dict of each of the 8 official configs: what ``load_state_dict(strict=True)`` would demand)
without building the model."""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path

import torch
from torch import nn

from dp_sam2.checkpoints.registry import MODELS, ModelSpec

# (trunk width, number of Hiera blocks) -> size
_SIZE_BY_TRUNK = {(96, 12): "tiny", (96, 16): "small", (112, 24): "base_plus", (144, 48): "large"}
_KEYS_21_ONLY = ("no_obj_embed_spatial", "obj_ptr_tpos_proj.weight", "obj_ptr_tpos_proj.bias")


# How files that are not PyTorch checkpoints start (what users pass by mistake, or what a failed download
# leaves: an HTML error page, a JSON answer, a Git LFS pointer).
_NOT_A_CHECKPOINT = (
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"\x89PNG\r\n\x1a\n", "a PNG image"),
    (b"GIF8", "a GIF image"),
    (b"BM", "a BMP image"),
    (b"RIFF", "a RIFF file (WebP image or AVI video)"),
    (b"%PDF", "a PDF document"),
    (b"\x1f\x8b", "a gzip archive"),
    (b"version https://git-lfs", "a Git LFS pointer (the file itself was never fetched: git lfs pull)"),
    (b"<!doctype html", "an HTML page (a failed download?)"),
    (b"<html", "an HTML page (a failed download?)"),
    (b"<?xml", "an XML document (a failed download?)"),
    (b"{", "a JSON document (or a safetensors header)"),
)


def sniff_non_checkpoint(path: str | os.PathLike) -> str | None:
    """What the file at ``path`` starts like when that is not a PyTorch checkpoint (``torch.save`` writes a
    zip archive, ``PK``, or in its legacy format a pickle, ``0x80``), else ``None``."""
    with open(path, "rb") as f:
        head = f.read(64)
    if not head:
        return "an empty file"
    if head.startswith(b"PK") or head[:1] == b"\x80":
        return None
    if len(head) >= 10 and head[8:10] == b'{"':  # safetensors: an 8-byte header length, then JSON
        return "a safetensors file (convert it, or pass the official .pt file)"
    if head[4:8] == b"ftyp":
        return "an MP4/MOV video"
    lower = head.lstrip().lower()
    for magic, what in _NOT_A_CHECKPOINT:
        if head.startswith(magic) or lower.startswith(magic):
            return what
    if all(32 <= b < 127 or b in (9, 10, 13) for b in head):
        return "a text file"
    return "an unknown binary format"


def check_is_checkpoint(path: str | os.PathLike) -> None:
    """Raise a ValueError naming what the existing file ``path`` is when it is not a PyTorch checkpoint
    (cheap: reads 64 bytes, so callers can check before they build a model)."""
    kind = sniff_non_checkpoint(path)
    if kind is not None:
        raise ValueError(
            f"{path} is not a PyTorch checkpoint (it starts like {kind}): the wrong file, or a damaged or "
            f"truncated download? Expected an official SAM 2 .pt file (`dp-sam2 download <model name>` fetches one)"
        )


def read_checkpoint_file(path: str | os.PathLike, model: str | None = None) -> dict[str, torch.Tensor]:
    """Load a checkpoint file safely (``weights_only=True``) and return its model state dict (``model``, a
    registry or config name, only names the download command in the error for a missing file)."""
    path = Path(path)
    if not path.exists():
        from dp_sam2.checkpoints.resolve import download_hint

        raise FileNotFoundError(
            f"SAM 2 checkpoint not found: {path} (a path used as given); download the official file with "
            f"`{download_hint(path, model)}`"
        )
    if path.is_dir():
        raise FileNotFoundError(f"SAM 2 checkpoint path is a folder, not a file: {path}")
    check_is_checkpoint(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch.load raises many types on damaged files (IndexError, EOFError, ...)
        if "weights_only" in str(err) and "Unsupported" in str(err):
            raise ValueError(
                f"checkpoint {path} holds Python objects that are not plain tensors and cannot be "
                f"loaded safely (weights_only=True): {str(err).splitlines()[0]}"
            ) from err
        raise ValueError(
            f"checkpoint {path} is damaged or truncated ({type(err).__name__}: "
            f"{str(err).splitlines()[0] if str(err) else 'unreadable'}); download it again "
            f"(e.g. `dp-sam2 download <model name>`)"
        ) from err
    if isinstance(obj, dict) and "model" in obj and isinstance(obj["model"], dict):
        state = obj["model"]
    elif isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        state = obj  # a bare state dict
    else:
        found = sorted(obj)[:8] if isinstance(obj, dict) else type(obj).__name__
        raise ValueError(
            f"checkpoint {path} is not a SAM 2 checkpoint: expected a dict with a 'model' state dict, found {found}"
        )
    return state


def identify_state_dict(state: dict[str, torch.Tensor]) -> ModelSpec | None:
    """Which official model a state dict was made for, or ``None`` if it fits none."""
    pos = state.get("image_encoder.trunk.pos_embed")
    if pos is None or pos.ndim != 4:
        return None
    blocks = {k.split(".")[3] for k in state if k.startswith("image_encoder.trunk.blocks.")}
    size = _SIZE_BY_TRUNK.get((int(pos.shape[1]), len(blocks)))
    if size is None:
        return None
    version = "2.1" if all(k in state for k in _KEYS_21_ONLY) else "2.0"
    return next(s for s in MODELS.values() if s.size == size and s.version == version)


def _describe(spec: ModelSpec) -> str:
    return f"SAM {spec.version} {spec.size} ({spec.name}, config {spec.config}, file {spec.filename})"


def check_fits(state: dict[str, torch.Tensor], expected: ModelSpec | None, path, config_file: str) -> None:
    """Raise a ValueError naming the file and the config it fits when it does not fit ours."""
    if expected is None:
        return
    found = identify_state_dict(state)
    if found is None:
        raise ValueError(
            f"checkpoint {path} does not look like any official SAM 2 model (no recognisable Hiera "
            f"trunk); it cannot be loaded into config {config_file}"
        )
    if found.version != expected.version:
        raise ValueError(
            f"checkpoint {path} is a SAM {found.version} checkpoint but config {config_file!r} is "
            f"SAM {expected.version}; it fits {_describe(found)} — use config {found.config!r}"
        )
    if found.size != expected.size:
        raise ValueError(
            f"checkpoint {path} was made for the {found.size} model but config {config_file!r} is "
            f"{expected.size}; it fits {_describe(found)} — use config {found.config!r}"
        )


def load_checkpoint_state_dict(path: str | os.PathLike, config_file: str | None = None) -> dict[str, torch.Tensor]:
    """Read ``path`` and check it fits ``config_file`` (any official config name or short name)."""
    from dp_sam2.checkpoints.registry import get_spec

    state = read_checkpoint_file(path, config_file)
    if config_file is not None:
        try:
            expected = get_spec(config_file)
        except ValueError:
            expected = None  # a custom config: the strict load will tell
        check_fits(state, expected, path, config_file)
    return state


def load_into(model: nn.Module, path: str | os.PathLike, config_file: str) -> None:
    """Load an official checkpoint strictly into ``model``."""
    state = load_checkpoint_state_dict(path, config_file)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        found = identify_state_dict(state)
        hint = f"; the file fits {_describe(found)}" if found else ""
        raise ValueError(
            f"checkpoint {path} does not match config {config_file!r}{hint}: "
            f"{str(err).strip().splitlines()[0]} ... {_summarise_mismatch(model, state)}"
        ) from err


@functools.cache
def official_shapes(config: str) -> dict[str, tuple[int, ...]]:
    """Every state-dict key of the official model ``config`` (any name form) and its shape."""
    from dp_sam2.checkpoints.registry import get_spec

    table = json.loads((Path(__file__).with_name("state_dict_shapes.json")).read_text())
    return {k: tuple(v) for k, v in table[get_spec(config).config].items()}


def check_strict(state: dict[str, torch.Tensor], config: str, path) -> None:
    """Raise a ValueError unless ``state`` has exactly the official keys of ``config`` with their
    shapes (as a strict ``load_state_dict`` into a model built from that config would)."""
    found = {k: tuple(v.shape) if isinstance(v, torch.Tensor) else type(v).__name__ for k, v in state.items()}
    _check_mismatch(official_shapes(config), found, path, config)


def _check_mismatch(ours: dict[str, tuple], theirs: dict[str, tuple], path, config: str) -> None:
    summary = _mismatch_text(ours, theirs)
    if summary:
        raise ValueError(f"checkpoint {path} does not match config {config!r}: {summary}")


def _mismatch_text(ours: dict[str, tuple], state: dict[str, tuple]) -> str:
    missing = sorted(set(ours) - set(state))
    unexpected = sorted(set(state) - set(ours))
    shapes = [k for k in set(ours) & set(state) if tuple(ours[k]) != tuple(state[k])]
    parts = []
    if missing:
        parts.append(f"missing keys {missing[:5]}{' ...' if len(missing) > 5 else ''}")
    if unexpected:
        parts.append(f"unexpected keys {unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}")
    if shapes:
        k = sorted(shapes)[0]
        parts.append(f"{len(shapes)} shape mismatches, e.g. {k}: file {tuple(state[k])} vs model {tuple(ours[k])}")
    return "; ".join(parts)


def _summarise_mismatch(model: nn.Module, state: dict[str, torch.Tensor]) -> str:
    return _mismatch_text(
        {k: tuple(v.shape) for k, v in model.state_dict().items()}, {k: tuple(v.shape) for k, v in state.items()}
    )

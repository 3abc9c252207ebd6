"""Downloading the official SAM 2 checkpoints (``dp-sam2 download``).

Each file is fetched into ``<dest>/<official file name>.part`` with a progress bar; an interrupted
download resumes from the ``.part`` file with an HTTP ``Range`` request (also automatically, a few
times, within one run). When complete, the file is checked (it loads safely, it is the model its
name says, and every key and shape fits the model's config) and only then renamed atomically to
its final name, so a file with the final name is always whole.

The default destination is ``checkpoints/`` under the Diffusion Policy repo root when run from
inside a DP checkout (where the default obs-encoder configs look), else the user cache
(``$DP_SAM2_CACHE``, default ``~/.cache/dp_sam2``), which the checkpoint resolver also searches.
"""
from __future__ import annotations

import http.client
import os
import socket
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from dp_sam2.checkpoints.registry import ModelSpec, get_spec

CHUNK = 1 << 20
USER_AGENT = "dp-sam2-download/0.1"


class DownloadError(RuntimeError):
    """A download failed (network, server or an incomplete transfer); the ``.part`` file is kept."""


@dataclass(frozen=True)
class DownloadResult:
    spec: ModelSpec
    path: Path
    status: str  # "downloaded", "resumed", "present"
    nbytes: int


def find_dp_root(start: str | os.PathLike | None = None) -> Path | None:
    """The Diffusion Policy checkout that ``start`` (default: the cwd) is inside, if any: the first
    folder upwards that holds a ``diffusion_policy/`` package folder."""
    here = Path(start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        pkg = folder / "diffusion_policy"
        if pkg.is_dir() and ((pkg / "workspace").is_dir() or (folder / "train.py").is_file()):
            return folder
    return None


def default_dest() -> Path:
    """``<DP repo root>/checkpoints`` inside a DP checkout, else the user cache."""
    from dp_sam2.checkpoints.resolve import cache_dir

    root = find_dp_root()
    return root / "checkpoints" if root is not None else cache_dir()


def resolve_names(names) -> list[ModelSpec]:
    """Registry specs for short names / config names / official file names (no duplicates)."""
    if isinstance(names, str):
        names = [names]
    specs: list[ModelSpec] = []
    for name in names:
        spec = get_spec(name)  # ValueError naming every known name
        if spec not in specs:
            specs.append(spec)
    if not specs:
        raise ValueError("no model name given; e.g. `dp-sam2 download sam2_large`")
    return specs


def url_for(spec: ModelSpec, base_url: str | None = None) -> str:
    """The official URL, or ``<base_url>/<file name>`` when a mirror is given."""
    if not base_url:
        return spec.url
    return base_url.rstrip("/") + "/" + spec.filename


def verify_checkpoint(path: str | os.PathLike, spec: ModelSpec) -> None:
    """Raise ValueError unless ``path`` loads safely and fits ``spec``'s config strictly (every
    key and shape), by loading it into a freshly built model."""
    from dp_sam2.encoders.sam2.build import build_sam2
    from dp_sam2.checkpoints.files import load_checkpoint_state_dict

    load_checkpoint_state_dict(path, spec.config)  # readable and the right model (clear errors)
    build_sam2(spec.config, ckpt_path=path, device="cpu", apply_postprocessing=False)


def download_one(spec: ModelSpec, dest: Path, *, base_url: str | None = None, retries: int = 3,
                 verify: bool = True, force: bool = False, progress: bool = True,
                 timeout: float = 60.0) -> DownloadResult:
    dest.mkdir(parents=True, exist_ok=True)
    final = dest / spec.filename
    if final.exists() and not force:
        if verify:
            verify_checkpoint(final, spec)
        return DownloadResult(spec, final, "present", final.stat().st_size)
    part = dest / (spec.filename + ".part")
    if force and part.exists():
        part.unlink()
    resumed_from = part.stat().st_size if part.exists() else 0
    url = url_for(spec, base_url)
    attempt = 0
    while True:
        try:
            _fetch(url, part, progress=progress, timeout=timeout, label=spec.filename)
            break
        except DownloadError as err:
            attempt += 1
            if attempt > retries or not err.args or "retryable" not in str(err):
                raise DownloadError(_final_message(err, url, part, dest, spec)) from err
            time.sleep(min(2.0 * attempt, 5.0) if not base_url else 0.1)
    if verify:
        try:
            verify_checkpoint(part, spec)
        except (ValueError, RuntimeError) as err:
            bad = part.with_name(part.name[: -len(".part")] + ".bad")
            os.replace(part, bad)
            raise ValueError(
                f"downloaded {url} but the file does not hold {spec.name}: {err} (kept as {bad}; "
                f"delete it and try again)"
            ) from err
    os.replace(part, final)  # atomic: a file with the final name is always complete
    status = "resumed" if resumed_from else "downloaded"
    return DownloadResult(spec, final, status, final.stat().st_size)


def _final_message(err: DownloadError, url: str, part: Path, dest: Path, spec: ModelSpec) -> str:
    text = str(err).replace(" (retryable)", "")
    kept = f" The partial file {part} is kept; run the same command again to resume." if part.exists() else ""
    return (f"could not download {spec.name} from {url}: {text}.{kept} Without internet access, "
            f"fetch {spec.url} elsewhere and copy it to {dest / spec.filename} (or into the folder "
            f"named by $DP_SAM2_CHECKPOINT_DIR).")


def _open(url: str, offset: int, timeout: float):
    headers = {"User-Agent": USER_AGENT}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    request = urllib.request.Request(url, headers=headers)
    try:
        return urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as err:
        if err.code == 416 and offset:
            return None  # the .part already holds the whole file (or is longer): caller restarts
        raise DownloadError(f"the server answered HTTP {err.code} {err.reason}") from err
    except urllib.error.URLError as err:
        reason = err.reason
        if isinstance(reason, socket.gaierror):
            raise DownloadError(f"cannot resolve the host (offline? {reason})") from err
        if isinstance(reason, (ConnectionRefusedError, TimeoutError, socket.timeout)):
            raise DownloadError(f"cannot connect ({reason}) (retryable)") from err
        raise DownloadError(f"cannot connect ({reason})") from err
    except (TimeoutError, socket.timeout, ConnectionError, http.client.HTTPException) as err:
        raise DownloadError(f"connection failed ({type(err).__name__}: {err}) (retryable)") from err


def _fetch(url: str, part: Path, *, progress: bool, timeout: float, label: str) -> None:
    """Fetch ``url`` into ``part``, resuming from its current size; DownloadError if incomplete."""
    from tqdm.auto import tqdm

    offset = part.stat().st_size if part.exists() else 0
    response = _open(url, offset, timeout)
    if response is None:  # 416: nothing left to fetch at this offset; start over to be sure
        part.unlink()
        offset = 0
        response = _open(url, 0, timeout)
    with response:
        if offset and response.status != 206:
            offset = 0  # the server ignored the Range header: start over
        length = response.headers.get("Content-Length")
        total = offset + int(length) if length is not None else None
        mode = "ab" if offset else "wb"
        got = offset
        with open(part, mode) as out, tqdm(total=total, initial=offset, unit="B", unit_scale=True,
                                           unit_divisor=1024, desc=label, disable=not progress) as bar:
            try:
                while True:
                    block = response.read(CHUNK)
                    if not block:
                        break
                    out.write(block)
                    got += len(block)
                    bar.update(len(block))
            except (TimeoutError, socket.timeout, ConnectionError, http.client.HTTPException) as err:
                raise DownloadError(f"connection broke after {got} bytes ({type(err).__name__}) (retryable)") from err
    if total is not None and got < total:
        raise DownloadError(f"connection closed after {got} of {total} bytes (retryable)")


def download(names, dest: str | os.PathLike | None = None, **kwargs) -> list[DownloadResult]:
    """Download the named official checkpoints into ``dest`` (default: :func:`default_dest`)."""
    specs = resolve_names(names)
    folder = Path(dest).expanduser() if dest is not None else default_dest()
    return [download_one(spec, folder, **kwargs) for spec in specs]

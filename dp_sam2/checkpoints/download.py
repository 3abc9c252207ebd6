"""Downloading the official SAM 2 checkpoints (``dp-sam2 download``).

Two sources hold the same files: ``"official"`` (``dl.fbaipublicfiles.com``, or a mirror as ``base_url``) and
``"huggingface"`` (``facebook/sam2-hiera-*``, ``facebook/sam2.1-hiera-*`` through ``hf_hub_download``, which
honours ``HF_ENDPOINT``, ``HF_HUB_OFFLINE``, ``HF_TOKEN``; extra ``dp-sam2[huggingface]``). Either way the file
is verified (loads safely, is the model its name says, has exactly its config's keys and shapes) before it
lands at ``<dest>/<official file name>``. From the official host it is fetched into a ``.part`` file (progress
bar; an interruption resumes with an HTTP ``Range`` request, also automatically within a run) and renamed
atomically when complete, so a file with the final name is always whole. Default ``dest``: ``checkpoints/``
under the DP repo root inside a DP checkout, else ``$DP_SAM2_CACHE`` (default ``~/.cache/dp_sam2``).
"""

from __future__ import annotations

import http.client
import os
import socket
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dp_sam2.checkpoints.registry import ModelSpec, get_spec

CHUNK = 1 << 20
USER_AGENT = "dp-sam2-download/0.2"
SOURCES = ("official", "huggingface")
HF_INSTALL = 'pip install "dp-sam2[huggingface]"'


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
    """Raise ValueError unless ``path`` loads safely and fits ``spec``'s config strictly: every
    key and shape of the official model, no other key (what a strict load into the model built
    from that config demands; checked against the official table, without building the model)."""
    from dp_sam2.checkpoints.files import check_strict, load_checkpoint_state_dict

    state = load_checkpoint_state_dict(path, spec.config)  # readable and the right model (clear errors)
    check_strict(state, spec.config, path)


def check_source(source: str) -> str:
    if source not in SOURCES:
        raise ValueError(f"source must be one of {', '.join(SOURCES)}, got {source!r}")
    return source


def download_one(
    spec: ModelSpec,
    dest: Path,
    *,
    source: str = "official",
    base_url: str | None = None,
    retries: int = 3,
    verify: bool = True,
    force: bool = False,
    progress: bool = True,
    timeout: float = 60.0,
) -> DownloadResult:
    """Fetch one model's file into ``dest`` from ``source`` (see the module docstring)."""
    check_source(source)
    if source == "huggingface" and base_url:
        raise ValueError("--base-url is a mirror of the official host; for a Hugging Face mirror set HF_ENDPOINT")
    dest.mkdir(parents=True, exist_ok=True)
    final = dest / spec.filename
    if final.exists() and not force:
        if verify:
            verify_checkpoint(final, spec)
        return DownloadResult(spec, final, "present", final.stat().st_size)
    part = dest / (spec.filename + ".part")
    if source == "huggingface":
        return _from_hub(spec, final, part, verify=verify, force=force, progress=progress)
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
    _verify_and_place(part, final, spec, url, verify)
    status = "resumed" if resumed_from else "downloaded"
    return DownloadResult(spec, final, status, final.stat().st_size)


def _verify_and_place(part: Path, final: Path, spec: ModelSpec, where: str, verify: bool) -> None:
    """Check ``part`` (when ``verify``), then rename it to ``final`` atomically; a bad file is
    kept as ``<name>.bad`` and never gets the final name."""
    if verify:
        try:
            verify_checkpoint(part, spec)
        except (ValueError, RuntimeError) as err:
            bad = part.with_name(part.name[: -len(".part")] + ".bad")
            os.replace(part, bad)
            raise ValueError(
                f"downloaded {where} but the file does not hold {spec.name}: {err} (kept as {bad}; "
                f"delete it and try again)"
            ) from err
    os.replace(part, final)  # atomic: a file with the final name is always complete


def _from_hub(spec: ModelSpec, final: Path, part: Path, *, verify: bool, force: bool, progress: bool) -> DownloadResult:
    """``hf_hub_download`` into the hub's cache, then a byte copy to ``final`` (verified first)."""
    import inspect
    import shutil

    try:
        from huggingface_hub import hf_hub_download
    except ImportError as err:
        raise ImportError(f"--source huggingface needs the huggingface_hub package: {HF_INSTALL}") from err
    kwargs: dict[str, Any] = {"force_download": True} if force else {}
    if "tqdm_class" in inspect.signature(hf_hub_download).parameters:
        from dp_sam2._progress import progress_class

        bar_class = progress_class(enabled=progress)
        if bar_class is not None:
            kwargs["tqdm_class"] = bar_class
    where = f"{spec.hf_repo}/{spec.filename} (Hugging Face hub)"
    try:
        cached = hf_hub_download(repo_id=spec.hf_repo, filename=spec.filename, **kwargs)
    except Exception as err:  # noqa: BLE001 - the hub raises many types (HTTP, offline, cache misses)
        text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise DownloadError(
            f"could not download {spec.name} from the Hugging Face hub ({where}; endpoint "
            f"{os.environ.get('HF_ENDPOINT') or 'https://huggingface.co'}): {type(err).__name__}: {text}. "
            f"Set HF_ENDPOINT to a reachable mirror, unset HF_HUB_OFFLINE, or try `--source official`."
        ) from err
    shutil.copyfile(cached, part)
    _verify_and_place(part, final, spec, where, verify)
    return DownloadResult(spec, final, "downloaded", final.stat().st_size)


def _final_message(err: DownloadError, url: str, part: Path, dest: Path, spec: ModelSpec) -> str:
    text = str(err).replace(" (retryable)", "")
    kept = f" The partial file {part} is kept; run the same command again to resume." if part.exists() else ""
    return (
        f"could not download {spec.name} from {url}: {text}.{kept} Without internet access, "
        f"fetch {spec.url} elsewhere and copy it to {dest / spec.filename} (or into the folder "
        f"named by $DP_SAM2_CHECKPOINT_DIR)."
    )


def check_reachable(url: str, timeout: float = 5.0) -> None:
    """Raise DownloadError unless a TCP connection to ``url``'s host (or the proxy configured for
    it) opens within ``timeout`` seconds, the name lookup included (which a socket timeout does not
    bound, so it runs in a thread)."""
    target = urllib.parse.urlsplit(url)
    proxy = urllib.request.getproxies().get(target.scheme)
    if proxy and not urllib.request.proxy_bypass(target.hostname or ""):
        target = urllib.parse.urlsplit(proxy if "://" in proxy else f"http://{proxy}")
    host = target.hostname or ""
    port = target.port or (443 if target.scheme == "https" else 80)
    failure: list[BaseException] = []

    def connect() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
        except OSError as err:
            failure.append(err)

    thread = threading.Thread(target=connect, name="dp-sam2-reachable", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise DownloadError(f"no answer from {host}:{port} within {timeout:g} s")
    if failure:
        raise DownloadError(f"cannot reach {host}:{port} ({type(failure[0]).__name__}: {failure[0]})")


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
    except (TimeoutError, ConnectionError, http.client.HTTPException) as err:
        raise DownloadError(f"connection failed ({type(err).__name__}: {err}) (retryable)") from err


def _fetch(url: str, part: Path, *, progress: bool, timeout: float, label: str) -> None:
    """Fetch ``url`` into ``part``, resuming from its current size; DownloadError if incomplete."""
    from dp_sam2._progress import progress as progress_bar

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
        with (
            open(part, mode) as out,
            progress_bar(
                total=total,
                initial=offset,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                desc=label,
                disable=not progress,
            ) as bar,
        ):
            try:
                while True:
                    block = response.read(CHUNK)
                    if not block:
                        break
                    out.write(block)
                    got += len(block)
                    bar.update(len(block))
            except (TimeoutError, ConnectionError, http.client.HTTPException) as err:
                raise DownloadError(f"connection broke after {got} bytes ({type(err).__name__}) (retryable)") from err
    if total is not None and got < total:
        raise DownloadError(f"connection closed after {got} of {total} bytes (retryable)")


def download(names, dest: str | os.PathLike | None = None, **kwargs) -> list[DownloadResult]:
    """Download the named official checkpoints into ``dest`` (default: :func:`default_dest`);
    ``kwargs`` go to :func:`download_one` (``source="huggingface"``, ``base_url``, ``progress`` ...)."""
    specs = resolve_names(names)
    folder = Path(dest).expanduser() if dest is not None else default_dest()
    return [download_one(spec, folder, **kwargs) for spec in specs]


def fetch_pretrained(
    model: str, *, source: str = "official", dest: str | os.PathLike | None = None, progress: bool = True
) -> Path:
    """The checkpoint of ``model`` for ``from_pretrained``: the local lookup first (the places of
    :func:`dp_sam2.checkpoints.resolve.find_weights`), then a download from ``source`` into
    ``dest`` (default :func:`default_dest`, a place the lookup searches)."""
    from dp_sam2.checkpoints.resolve import CheckpointNotFoundError, find_weights

    spec = get_spec(model)
    check_source(source)
    try:
        path = find_weights(spec.name, warn=False)
    except CheckpointNotFoundError:
        path = None
    if path is None:  # missing (also when DP_SAM2_ALLOW_MISSING_CHECKPOINT would allow that)
        folder = Path(dest).expanduser() if dest is not None else default_dest()
        path = download_one(spec, folder, source=source, progress=progress).path
    return path

"""Building and loading the compiled connected-components code, lazily (nothing runs at import).

Two libraries, both built with ``torch.utils.cpp_extension`` (ninja) into a cache folder,
``$DP_SAM2_CACHE/ext`` (default ``~/.cache/dp_sam2/ext``), one sub-folder per source hash, torch,
CUDA and Python version, so a prebuilt library is loaded straight away, without a compiler:

* the CPU op (``cc_cpu.cpp``): plain C++ called through ctypes; compiles in about a second;
* the CUDA kernel (``connected_components.cu`` + the torch binding ``connected_components.cpp``),
  registered as ``torch.ops.dp_sam2_ext.connected_components``.

Where no GPU is visible and ``TORCH_CUDA_ARCH_LIST`` is unset, the kernel is built for
:data:`DEFAULT_CUDA_ARCH_LIST` (docs/design.md, ruling 12) instead of letting torch probe for a GPU.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import json
import logging
import os
import shutil
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path

import torch

log = logging.getLogger("dp_sam2.ext")

SOURCE_DIR = Path(__file__).resolve().parent
CPU_NAME = "dp_sam2_cc_cpu"
CUDA_NAME = "dp_sam2_cc_cuda"
CPU_SOURCES = ("cc_cpu.cpp",)
CUDA_SOURCES = ("connected_components.cpp", "connected_components.cu")
DEFAULT_CUDA_ARCH_LIST = "8.0;8.6;8.9;9.0+PTX"
_STAMP = "build.json"


class BuildUnavailable(RuntimeError):
    """The toolchain needed for a build is missing (not a failed compile)."""


def cache_root() -> Path:
    base = os.environ.get("DP_SAM2_CACHE") or os.path.join("~", ".cache", "dp_sam2")
    return Path(base).expanduser() / "ext"


def _source_hash(sources: tuple[str, ...]) -> str:
    digest = hashlib.sha256()
    for name in sources:
        digest.update(name.encode())
        digest.update((SOURCE_DIR / name).read_bytes())
    return digest.hexdigest()[:12]


def build_dir(kind: str) -> Path:
    """The cache folder of one library ('cpu' or 'cuda') for this torch / Python / source."""
    sources = CPU_SOURCES if kind == "cpu" else CUDA_SOURCES
    cuda = f"cu{torch.version.cuda}" if (kind == "cuda" and torch.version.cuda) else "cpu"
    tag = (
        f"{kind}-torch{torch.__version__.split('+')[0]}-{cuda}-"
        f"py{sys.version_info.major}{sys.version_info.minor}-{_source_hash(sources)}"
    )
    return cache_root() / tag


def library_path(kind: str) -> Path:
    name = CPU_NAME if kind == "cpu" else CUDA_NAME
    return build_dir(kind) / (name + (".pyd" if sys.platform == "win32" else ".so"))  # as torch


def read_stamp(kind: str) -> dict | None:
    try:
        return json.loads((build_dir(kind) / _STAMP).read_text())
    except (OSError, ValueError):
        return None


def is_built(kind: str) -> bool:
    return library_path(kind).is_file() and read_stamp(kind) is not None


# --------------------------------------------------------------------------- toolchain checks
def _cpp_extension():
    """torch.utils.cpp_extension, imported without its 'No CUDA runtime is found' log line, with
    CUDA_HOME pointed at a real toolkit when torch guessed a folder without CUDA headers (an
    ``nvcc`` wrapper script in /usr/local/bin makes it guess /usr/local)."""
    quiet = logging.getLogger("torch.utils.cpp_extension")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        from torch.utils import cpp_extension
    finally:
        quiet.setLevel(level)
    home = cpp_extension.CUDA_HOME
    if home is not None and not _is_toolkit(home):
        found = next((c for c in _toolkit_candidates() if _is_toolkit(c)), None)
        if found is not None:
            cpp_extension.CUDA_HOME = found
    return cpp_extension


def _is_toolkit(home: str) -> bool:
    return (Path(home) / "include" / "cuda_runtime.h").is_file() and (Path(home) / "bin" / "nvcc").is_file()


def _toolkit_candidates() -> list[str]:
    found = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH")]
    nvcc = shutil.which("nvcc")
    if nvcc:
        found.append(str(Path(nvcc).resolve().parent.parent))
    found.append("/usr/local/cuda")
    if torch.version.cuda:
        found.append(f"/usr/local/cuda-{torch.version.cuda}")
    return [c for c in found if c]


def compiler() -> str | None:
    return shutil.which(os.environ.get("CXX", "c++"))


def cpu_build_blocker() -> str | None:
    """Why the CPU op cannot be built here, or None."""
    cpp_extension = _cpp_extension()
    if compiler() is None:
        return f"no C++ compiler ({os.environ.get('CXX', 'c++')} not on PATH)"
    if not cpp_extension.is_ninja_available():
        return "ninja is not installed (pip install ninja)"
    return None


def cuda_build_blocker() -> str | None:
    """Why the CUDA kernel cannot be built here, or None."""
    if torch.version.cuda is None:
        return f"this torch ({torch.__version__}) is not a CUDA build"
    home = _cpp_extension().CUDA_HOME
    if home is None or not _is_toolkit(home):
        return f"no CUDA toolkit (nvcc and cuda_runtime.h) found (CUDA_HOME={home}); set CUDA_HOME"
    return cpu_build_blocker()


# --------------------------------------------------------------------------- arch list
def _parse_arch(entry: str) -> tuple[tuple[int, int], bool]:
    ptx = entry.endswith("+PTX")
    major, minor = entry.replace("+PTX", "").rstrip("af").split(".")
    return (int(major), int(minor)), ptx


def arch_list_covers(arch_list: str, capability: tuple[int, int]) -> bool:
    """True if a build for ``arch_list`` runs on a GPU of ``capability`` (SASS of the same major
    and a lower or equal minor, or PTX of a lower or equal version)."""
    for entry in arch_list.replace(",", ";").replace(" ", ";").split(";"):
        if not entry:
            continue
        try:
            (major, minor), ptx = _parse_arch(entry)
        except ValueError:
            continue
        if ptx and (major, minor) <= capability:
            return True
        if major == capability[0] and minor <= capability[1]:
            return True
    return False


def effective_arch_list() -> str:
    """TORCH_CUDA_ARCH_LIST if set; else the visible GPUs' (last +PTX); else the default list."""
    explicit = os.environ.get("TORCH_CUDA_ARCH_LIST")
    if explicit and explicit != "native":
        return explicit
    if torch.cuda.is_available() and torch.cuda.device_count() > 0:
        caps = sorted({torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())})
        archs = [f"{major}.{minor}" for major, minor in caps]
        archs[-1] += "+PTX"
        return ";".join(archs)
    return DEFAULT_CUDA_ARCH_LIST


@contextlib.contextmanager
def _env(name: str, value: str):
    old = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = old


# --------------------------------------------------------------------------- builds
def _compile(kind: str, verbose: bool) -> Path:
    """Compile one library into its cache folder with cpp_extension (it also loads it)."""
    cpp_extension = _cpp_extension()
    blocker = cpu_build_blocker() if kind == "cpu" else cuda_build_blocker()
    if blocker:
        raise BuildUnavailable(blocker)
    directory = build_dir(kind)
    directory.mkdir(parents=True, exist_ok=True)
    stamp: dict = {"torch": torch.__version__, "python": sys.version.split()[0]}
    if kind == "cpu":
        cpp_extension.load(
            name=CPU_NAME,
            sources=[str(SOURCE_DIR / s) for s in CPU_SOURCES],
            build_directory=str(directory),
            is_python_module=False,
            extra_cflags=["-O3", "-pthread"],
            extra_ldflags=["-pthread"],
            verbose=verbose,
        )
    else:
        arch_list = effective_arch_list()
        stamp.update(cuda=torch.version.cuda, arch_list=arch_list)
        with _env("TORCH_CUDA_ARCH_LIST", arch_list):
            cpp_extension.load(
                name=CUDA_NAME,
                sources=[str(SOURCE_DIR / s) for s in CUDA_SOURCES],
                build_directory=str(directory),
                is_python_module=False,
                extra_cflags=["-O3"],
                extra_cuda_cflags=["-O3"],
                verbose=verbose,
            )
        _state.cuda_loaded = str(library_path(kind))
    (directory / _STAMP).write_text(json.dumps(stamp, indent=1))
    return library_path(kind)


def build(kind: str, *, force: bool = False, verbose: bool = False) -> Path:
    """Build (or find already built) the 'cpu' or 'cuda' library; returns its path.

    Raises :class:`BuildUnavailable` when the toolchain is missing and RuntimeError (from
    cpp_extension, with the compiler output) when the compile fails.
    """
    if kind not in ("cpu", "cuda"):
        raise ValueError(f"kind must be 'cpu' or 'cuda', got {kind!r}")
    with _state.lock:
        if force and build_dir(kind).exists():
            if kind == "cuda" and _state.cuda_loaded:
                raise RuntimeError(
                    "the CUDA kernel is loaded in this process: rebuild it from a "
                    "fresh one (python -m dp_sam2.ext build --force)"
                )
            shutil.rmtree(build_dir(kind))
        if is_built(kind) and not _needs_arch_rebuild(kind):
            return library_path(kind)
        return _compile(kind, verbose)


def _needs_arch_rebuild(kind: str) -> bool:
    if kind != "cuda" or not torch.cuda.is_available():
        return False
    built = (read_stamp(kind) or {}).get("arch_list", "")
    caps = {torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())}
    return not all(arch_list_covers(built, cap) for cap in caps)


# --------------------------------------------------------------------------- loading
@dataclass
class _State:
    lock: threading.RLock = field(default_factory=threading.RLock)
    cpu_lib: ctypes.CDLL | None = None
    cuda_loaded: str | None = None  # path of the loaded kernel library
    failures: dict = field(default_factory=dict)  # kind -> message (warned once)


_state = _State()


def _load_cpu_lib(path: Path) -> ctypes.CDLL:
    lib = ctypes.CDLL(str(path))
    fn = lib.dp_sam2_cc_cpu
    fn.argtypes = [ctypes.c_void_p] * 3 + [ctypes.c_int64] * 4
    fn.restype = ctypes.c_int
    return lib


def cpu_library(*, build_if_missing: bool = True) -> ctypes.CDLL | None:
    """The loaded CPU op, building it on first use; None where that is impossible (warned once)."""
    if _state.cpu_lib is not None or "cpu" in _state.failures:
        return _state.cpu_lib
    with _state.lock:
        if _state.cpu_lib is not None or "cpu" in _state.failures:
            return _state.cpu_lib
        if not is_built("cpu") and not build_if_missing:
            return None
        try:
            _state.cpu_lib = _load_cpu_lib(build("cpu"))
        except Exception as exc:  # noqa: BLE001 (any failure means: use the torch fallback)
            _fail("cpu", exc, "the exact (slower) vectorised torch implementation is used instead")
        return _state.cpu_lib


def cuda_kernel(device: torch.device, *, build_if_missing: bool = True) -> bool:
    """Whether torch.ops.dp_sam2_ext.connected_components can run on ``device``, loading (or
    building, once, on first use) the kernel. Failures warn once and return False."""
    if device.type != "cuda" or not torch.cuda.is_available():
        return False
    if "cuda" in _state.failures:
        return False
    if _state.cuda_loaded:
        return _covers(device)
    with _state.lock:
        if not (_state.cuda_loaded or "cuda" in _state.failures):
            if not build_if_missing and (not is_built("cuda") or _needs_arch_rebuild("cuda")):
                return False
            try:
                if not is_built("cuda") or _needs_arch_rebuild("cuda"):
                    log.warning(
                        "dp_sam2.ext: compiling the connected-components CUDA kernel "
                        "(once, cached in %s); `python -m dp_sam2.ext build` does this "
                        "ahead of time",
                        build_dir("cuda"),
                    )
                path = build("cuda")
                if not _state.cuda_loaded:
                    torch.ops.load_library(str(path))
                    _state.cuda_loaded = str(path)
            except Exception as exc:  # noqa: BLE001
                _fail("cuda", exc, "connected components of CUDA tensors run on the CPU instead")
    return bool(_state.cuda_loaded) and "cuda" not in _state.failures and _covers(device)


def disable_cuda(exc: Exception) -> None:
    """The kernel failed at run time: warn once and use the CPU path from now on."""
    with _state.lock:
        if "cuda" not in _state.failures:
            _fail("cuda", exc, "connected components of CUDA tensors run on the CPU instead")


def _covers(device: torch.device) -> bool:
    built = (read_stamp("cuda") or {}).get("arch_list")
    if built is None:
        return True
    return arch_list_covers(built, torch.cuda.get_device_capability(device))


def _fail(kind: str, exc: Exception, consequence: str) -> None:
    import warnings

    what = "CPU connected-components op" if kind == "cpu" else "connected-components CUDA kernel"
    text = str(exc).strip().splitlines()
    detail = "\n".join(text[-15:]) if text else type(exc).__name__
    _state.failures[kind] = detail
    warnings.warn(
        f"dp_sam2.ext: could not build or load the {what} ({type(exc).__name__}): "
        f"{detail}\n{consequence}. Run `python -m dp_sam2.ext build -v` for the full log.",
        RuntimeWarning,
        stacklevel=3,
    )

"""``python -m dp_sam2.ext build|status``: build the connected-components libraries ahead of time,
or tell which implementation is in use."""

from __future__ import annotations

import argparse
import sys

import torch

from dp_sam2.ext import _build


def _build_one(kind: str, args) -> bool:
    """Build one library; False when an attempted build failed."""
    label = "CPU op" if kind == "cpu" else "CUDA kernel"
    try:
        path = _build.build(kind, force=args.force, verbose=args.verbose)
    except _build.BuildUnavailable as exc:
        print(f"{label}: skipped: {exc}")
        return not (kind == "cuda" and args.require_cuda)
    except Exception as exc:  # noqa: BLE001 (report and go on to the other library)
        print(f"{label}: build FAILED ({type(exc).__name__}):\n{exc}", file=sys.stderr)
        return False
    extra = ""
    if kind == "cuda":
        extra = f" (TORCH_CUDA_ARCH_LIST={(_build.read_stamp('cuda') or {}).get('arch_list')})"
    print(f"{label}: built: {path}{extra}")
    return True


def cmd_build(args) -> int:
    kinds = ["cpu"] if args.cpu_only else ["cpu", "cuda"]
    ok = [_build_one(kind, args) for kind in kinds]
    return 0 if all(ok) else 1


def _library_line(kind: str) -> str:
    blocker = _build.cpu_build_blocker() if kind == "cpu" else _build.cuda_build_blocker()
    if _build.is_built(kind):
        stamp = _build.read_stamp(kind) or {}
        archs = f", archs {stamp['arch_list']}" if "arch_list" in stamp else ""
        return f"built: {_build.library_path(kind)}{archs}"
    if blocker:
        return f"not built, cannot be built here: {blocker}"
    return f"not built yet (compiled on first use into {_build.build_dir(kind)})"


def cmd_status(args) -> int:
    from dp_sam2.ext import implementation

    gpu = torch.cuda.is_available()
    print(
        f"torch {torch.__version__} (CUDA {torch.version.cuda}), GPU visible: "
        f"{torch.cuda.get_device_name(0) if gpu else 'no'}"
    )
    print(f"cache: {_build.cache_root()}")
    print(f"CPU op:      {_library_line('cpu')}")
    print(f"CUDA kernel: {_library_line('cuda')}")
    print(f"in use for CPU tensors:  {implementation('cpu')}")
    if gpu:
        print(f"in use for CUDA tensors: {implementation('cuda')}")
    else:
        print("in use for CUDA tensors: (no GPU visible)")
    for kind, message in _build._state.failures.items():
        print(f"{kind} library failed to load: {message}")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dp_sam2.ext", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p_build = sub.add_parser(
        "build", help="compile the CPU op and (where nvcc and a CUDA torch are present) the CUDA kernel into the cache"
    )
    p_build.add_argument("--cpu-only", action="store_true", help="build only the CPU op")
    p_build.add_argument("--require-cuda", action="store_true", help="exit 1 if the CUDA kernel cannot be built here")
    p_build.add_argument("--force", action="store_true", help="rebuild even if cached")
    p_build.add_argument("-v", "--verbose", action="store_true", help="show the compiler output")
    p_build.set_defaults(func=cmd_build)
    p_status = sub.add_parser("status", help="which implementation is in use")
    p_status.set_defaults(func=cmd_status)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())

"""torch.distributed, as dp_sam2 uses it: which process this is, the process group torchrun /
``accelerate launch`` asked for, one shared run folder, rank-0-first file access, sharded data
loaders and cross-rank means. The data-parallel workspace and the feature-cache writer both use it.

Nothing here launches processes or wraps the process group (docs/design.md, ruling 19): the launcher
(``torchrun`` or ``accelerate launch``) sets ``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``, ``MASTER_ADDR``
and ``MASTER_PORT``; :func:`init_from_env` (the workspace) and :func:`torchrun_process_group` (the
cache writer) pass them to ``torch.distributed.init_process_group``. Without them (``python
train.py``) nothing is initialised and :class:`Dist` says world 1.

Old paths: ``dp_sam2.workspaces.dist`` and ``dp_sam2.cache.dist`` (0.2.x) name this module
(dp_sam2/_aliases.py).
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

__all__ = [
    "LAUNCHER_ENV",
    "Dist",
    "check_accelerate_env",
    "current_dist",
    "file_lock",
    "init_from_env",
    "launched_world",
    "make_loader",
    "rank_zero_first",
    "set_epoch",
    "shared_output_dir",
    "torchrun_process_group",
]

LAUNCHER_ENV = ("WORLD_SIZE", "RANK", "LOCAL_RANK")


@dataclass(frozen=True)
class Dist:
    """This process in the job: ``rank`` of ``world``, ``local_rank`` on its machine, and the
    torch device it computes on."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            torch.distributed.barrier()

    def broadcast(self, obj):
        """Rank 0's ``obj`` on every rank (any picklable object)."""
        if not self.enabled:
            return obj
        box = [obj if self.is_main else None]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]

    def mean(self, total: float, count: int) -> float:
        """``sum(total) / sum(count)`` over the ranks (a float on every rank)."""
        if not self.enabled:
            return total / count if count else float("nan")
        t = torch.tensor([float(total), float(count)], dtype=torch.float64, device=self._comm_device())
        torch.distributed.all_reduce(t)
        return float(t[0] / t[1]) if t[1] > 0 else float("nan")

    def _comm_device(self) -> torch.device:
        return self.device if torch.distributed.get_backend() == "nccl" else torch.device("cpu")


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "").strip()
    if not value:
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name} must be an integer, got {value!r}") from None


def launched_world() -> int:
    """``WORLD_SIZE`` as set by torchrun / accelerate launch (1 when not launched by them)."""
    return _env_int("WORLD_SIZE", 1)


def check_accelerate_env() -> None:
    """``accelerate launch`` is used as a launcher only: its mixed-precision setting would not be
    applied here, so refuse it rather than train in fp32 while the user thinks otherwise."""
    mp = os.environ.get("ACCELERATE_MIXED_PRECISION", "no").strip().lower()
    if mp not in ("", "no"):
        raise ValueError(
            f"accelerate launch asked for mixed precision {mp!r}, which this workspace does not apply "
            "(accelerate only launches the processes here). Launch with `--mixed_precision no` (or set "
            "`mixed_precision: 'no'` in your accelerate config) and use policy.obs_encoder.precision=bf16 "
            "for a bf16 SAM 2 backbone"
        )


def init_from_env(device: str, timeout_s: float = 7200.0) -> Dist:
    """The process group of a torchrun / accelerate launch job, or a one-process :class:`Dist`.

    ``device`` is DP's ``training.device``: ``cpu`` gives the gloo backend; ``cuda`` /
    ``cuda:N`` gives nccl with each process on ``cuda:LOCAL_RANK`` (the index in ``device`` only
    matters for one process)."""
    dev = torch.device(device)
    world = launched_world()
    if world <= 1:
        return Dist(device=dev)
    check_accelerate_env()
    rank, local_rank = _env_int("RANK", 0), _env_int("LOCAL_RANK", 0)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"training.device={device!r} but CUDA is not available; use training.device=cpu (gloo)")
        if local_rank >= torch.cuda.device_count():
            raise ValueError(f"LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} GPUs are visible")
        dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)
        backend = "nccl"
    elif dev.type == "cpu":
        backend = "gloo"
    else:
        raise ValueError(f"training.device must be cpu or cuda[:N] with several processes, got {device!r}")
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group(backend, timeout=datetime.timedelta(seconds=float(timeout_s)))
    if torch.distributed.get_world_size() != world or torch.distributed.get_rank() != rank:
        raise RuntimeError("the initialised process group does not match WORLD_SIZE / RANK of the environment")
    return Dist(rank=rank, world=world, local_rank=local_rank, device=dev)


def current_dist() -> Dist:
    """This process in an already initialised process group (world 1 when there is none), on the CPU."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return Dist(
            rank=torch.distributed.get_rank(),
            world=torch.distributed.get_world_size(),
            local_rank=_env_int("LOCAL_RANK", 0),
        )
    return Dist()


@contextlib.contextmanager
def torchrun_process_group():
    """A gloo process group for the block when started by torchrun (``WORLD_SIZE`` > 1) and none is
    initialised yet; torn down after. Enough for barriers and object broadcasts (the cache writer)."""
    if launched_world() <= 1 or not torch.distributed.is_available() or torch.distributed.is_initialized():
        yield
        return
    torch.distributed.init_process_group("gloo")
    try:
        yield
    finally:
        torch.distributed.destroy_process_group()


# --------------------------------------------------------------------------- one run folder
def shared_output_dir(dist: Dist, own_dir: str | os.PathLike) -> str:
    """Rank 0's run folder, on every rank.

    DP's default ``hydra.run.dir`` (``data/outputs/${now:%Y.%m.%d}/${now:%H.%M.%S}_...``) is
    resolved by each process at its own start, so two processes can get two folders, and Hydra has
    already created each one (``.hydra/``, the job log). Every rank uses rank 0's; a rank whose
    own folder differs removes it when it holds nothing but what Hydra put there."""
    own = os.path.abspath(os.fspath(own_dir))
    shared = dist.broadcast(own)
    if not dist.is_main:
        _detach_file_logs(own)
        if shared != own:
            _remove_stray_hydra_dir(Path(own))
    return shared


def _detach_file_logs(folder: str) -> None:
    """Close the log files Hydra opened in ``folder`` for this process (only rank 0 writes logs)."""
    for logger in [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]:
        for handler in list(getattr(logger, "handlers", [])):
            name = getattr(handler, "baseFilename", None)
            if name and os.path.abspath(name).startswith(folder + os.sep):
                logger.removeHandler(handler)
                handler.close()


def _remove_stray_hydra_dir(folder: Path) -> None:
    if not folder.is_dir():
        return
    extra = [p.name for p in folder.iterdir() if p.name != ".hydra" and p.suffix != ".log"]
    if extra:
        return  # not only Hydra's files: leave it alone
    shutil.rmtree(folder, ignore_errors=True)
    with contextlib.suppress(OSError):
        folder.parent.rmdir()  # the date folder, when it is now empty


# --------------------------------------------------------------------------- rank 0 first
@contextlib.contextmanager
def file_lock(path: str | os.PathLike):
    """An exclusive ``flock`` on ``path`` (created if missing) for the duration of the block:
    serialises processes that share the file system, whatever job they belong to."""
    import fcntl

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


@contextlib.contextmanager
def rank_zero_first(dist: Dist, lock_path: str | os.PathLike | None = None):
    """Run the block on rank 0 first (under ``lock_path``'s file lock, if given) while the other
    ranks wait; then on the others, at once. Meant for resolving or downloading the SAM 2 file:
    only rank 0 can create it, the others find it."""
    lock = file_lock(lock_path) if lock_path is not None else contextlib.nullcontext()
    if not dist.enabled:
        with lock:
            yield
        return
    if dist.is_main:
        with lock:
            yield
        dist.barrier()
    else:
        dist.barrier()
        yield


# --------------------------------------------------------------------------- data
def make_loader(dataset, loader_cfg: dict, dist: Dist, seed: int):
    """DP's ``DataLoader(dataset, **cfg.dataloader)``; with several processes each rank reads its
    own shard through a ``DistributedSampler`` (``shuffle`` moves to the sampler, seeded with
    ``training.seed``; call ``loader.sampler.set_epoch(epoch)`` each epoch). ``batch_size`` stays
    per process: the global batch is ``world * batch_size``."""
    from torch.utils.data import DataLoader, DistributedSampler

    kwargs = dict(loader_cfg)
    if not dist.enabled:
        return DataLoader(dataset, **kwargs)
    if kwargs.get("sampler") is not None or kwargs.get("batch_sampler") is not None:
        raise ValueError("dataloader.sampler / batch_sampler cannot be combined with several processes")
    shuffle = bool(kwargs.pop("shuffle", False))
    sampler = DistributedSampler(
        dataset,
        num_replicas=dist.world,
        rank=dist.rank,
        shuffle=shuffle,
        seed=int(seed),
        drop_last=bool(kwargs.get("drop_last", False)),
    )
    return DataLoader(dataset, sampler=sampler, **kwargs)


def set_epoch(loader, epoch: int) -> None:
    sampler = getattr(loader, "sampler", None)
    if hasattr(sampler, "set_epoch"):
        sampler.set_epoch(epoch)

"""torch.distributed facts for the cache writer: this process's rank and a torchrun process group."""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1

    def barrier(self) -> None:
        if self.world > 1:
            torch.distributed.barrier()


def current_dist() -> Dist:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return Dist(torch.distributed.get_rank(), torch.distributed.get_world_size())
    return Dist()


@contextlib.contextmanager
def torchrun_process_group():
    """Initialise a gloo process group when started by torchrun (WORLD_SIZE > 1), tear it down after."""
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world <= 1 or not torch.distributed.is_available() or torch.distributed.is_initialized():
        yield
        return
    torch.distributed.init_process_group("gloo")
    try:
        yield
    finally:
        torch.distributed.destroy_process_group()

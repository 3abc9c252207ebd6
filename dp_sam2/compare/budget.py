"""Training length of a comparison cell: in epochs, or in optimizer steps turned into epochs from the demos.

Kept apart from :mod:`dp_sam2.compare.grid` (which names the budgets of each protocol) because it is the one
place that counts DP's batches per epoch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from dp_sam2.compare.grid import Protocol


@dataclass(frozen=True)
class Budget:
    """Training length of one kind of cell: DP rolls out at every epoch that ``rollout_every``
    divides (epoch 0, an untrained policy, included: it does not count as a periodic evaluation),
    so ``num_epochs = n_evals * rollout_every + 1`` gives exactly ``n_evals`` evaluations after training
    starts, the last one at the final epoch."""

    rollout_every: int
    batch_size: int
    # > 0: a length in optimizer steps instead of epochs. The demos fix how many batches an epoch has (a
    # task with short demos has half as many), so rollout_every is then chosen per task, from the demos,
    # to make n_evals * rollout_every epochs come to about this many steps; rollout_every above is used
    # only where the demos are not known (describing a grid before its demos exist).
    steps: int = 0

    def num_epochs(self, n_evals: int) -> int:
        return n_evals * self.rollout_every + 1

    def for_demos(self, episode_lengths, protocol: Protocol) -> Budget:
        """This budget for a demos buffer whose episodes have ``episode_lengths`` frames: itself when it is
        counted in epochs, else with ``rollout_every`` set so that the training comes to about ``steps``."""
        if self.steps <= 0 or not episode_lengths:
            return self
        per_epoch = steps_per_epoch(episode_lengths, protocol, self.batch_size)
        every = max(1, round(self.steps / (protocol.n_evals * per_epoch)))
        return Budget(rollout_every=every, batch_size=self.batch_size, steps=self.steps)


def steps_per_epoch(episode_lengths, protocol: Protocol, batch_size: int, val_ratio: float = 0.02) -> int:
    """Batches in one of DP's training epochs on these demos: DP's ``SequenceSampler`` gives an episode of
    L frames ``L - horizon + pad_before + pad_after + 1`` sequences (pad_before = n_obs_steps - 1,
    pad_after = n_action_steps - 1, as the MetaWorld task sets them), ``get_val_mask`` holds out
    ``min(max(1, round(n * val_ratio)), n - 1)`` of the n episodes (counted here at the mean length), and
    the loader does not drop the last partial batch."""
    lengths = [int(n) for n in episode_lengths]
    pad = (protocol.n_obs_steps - 1) + (protocol.n_action_steps - 1)
    sequences = sum(max(0, n - protocol.horizon + pad + 1) for n in lengths)
    n = len(lengths)
    n_val = min(max(1, round(n * val_ratio)), n - 1) if val_ratio > 0 and n > 1 else 0
    train = sequences * (n - n_val) / n
    return max(1, math.ceil(train / batch_size))

"""The ``precision`` switch (fp32 | bf16) of the predictors and the obs encoder."""

from __future__ import annotations

import torch

PRECISIONS = ("fp32", "bf16")


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be 'fp32' or 'bf16', got {precision!r}")
    return precision


def precision_autocast(device: torch.device | str, precision: str):
    """The predictors' and obs encoder's precision switch: ``bf16`` runs under
    ``torch.autocast(<device type>, bfloat16)``; ``fp32`` is plain fp32."""
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=check_precision(precision) == "bf16")

"""Classes derived from Diffusion Policy's classes, made on first use.

DP is not a dependency of dp_sam2 (``import dp_sam2`` must work without it), yet DP's workspaces
assert ``isinstance(x, BaseImageDataset)`` / ``BaseImageRunner`` / DP's policy classes. So each
such class of ours is written as a plain *mixin* holding the behaviour, and combined with DP's
base class the first time it is asked for. This module is the one place that does that.

    from dp_sam2.dp_classes import dp_subclass
    cls = dp_subclass(_MyBehaviour, "diffusion_policy.dataset.base_dataset:BaseImageDataset",
                      name="MetaWorldImageDataset", module="dp_sam2.metaworld")

The result is cached per (mixin, DP base), so repeated calls return the same class (``isinstance``
and pickling stay consistent).
"""

from __future__ import annotations

import importlib
from typing import Any

_MADE: dict[tuple[type, type], type] = {}


def import_dp(path: str, *, fallback: Any = None) -> Any:
    """DP's class (or function) at ``"package.module:Name"``. Where DP is not importable: ``fallback``
    when given, else an ``ImportError`` that names the object and says how to make DP importable."""
    module_name, _, attr = path.partition(":")
    if not attr:
        raise ValueError(f"expected 'package.module:ClassName', got {path!r}")
    try:
        return getattr(importlib.import_module(module_name), attr)
    except ImportError as err:
        if fallback is not None:
            return fallback
        raise ImportError(
            f"{attr} comes from Diffusion Policy ({module_name}), which is not importable here: {err}. "
            "Run from the root of your DP checkout (git clone https://github.com/real-stanford/diffusion_policy) "
            "or put it on PYTHONPATH, with dp_sam2 installed in the same Python."
        ) from err


def dp_subclass(
    mixin: type, dp_base: str | type, *, name: str, module: str, fallback: type | None = None, **attrs
) -> type:
    """``class <name>(mixin, <DP's base>)``, made once per (mixin, base) and cached.

    mixin: the behaviour (listed first, so its methods win over the base's).
    dp_base: DP's class, or its ``"package.module:Name"`` path (imported now).
    name, module: ``__name__`` / ``__qualname__`` and ``__module__`` of the new class (where
        pickle finds it: ``module`` should expose ``name``, e.g. through a module ``__getattr__``).
    fallback: the base to use where DP is not importable (default: raise ``ImportError``).
    attrs: extra class attributes (``__doc__``, a reference to the DP class, ...).
    """
    base = import_dp(dp_base, fallback=fallback) if isinstance(dp_base, str) else dp_base
    key = (mixin, base)
    if key not in _MADE:
        body = {"__module__": module, "__qualname__": name, "__doc__": mixin.__doc__, **attrs}
        _MADE[key] = type(name, (mixin, base), body)
    return _MADE[key]

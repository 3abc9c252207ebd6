"""Old import paths, in one table: where each moved, and why it is kept.

Diffusion Policy freezes the resolved config, ``_target_`` strings included, into every checkpoint,
and users evaluate checkpoints months later (docs/design.md, ruling 17). DP also pickles (dill)
objects whose classes are named by module path. So a dotted path that a shipped yaml, the README
or a pickle may hold keeps importing after its code moves: the old module stays as a small shim
whose module ``__getattr__`` looks the name up here (:func:`shim`). Nothing else in dp_sam2 uses
the old paths.

A row is either ``"old.module.Name": "new.module.Name"`` (one name) or ``"old.module":
"new.module"`` (the whole module: every public name of the new one). Add a row when you move
something a config, the README or a pickle may name; never remove one.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

MOVED: dict[str, str] = {
    # 0.1.x: the obs encoder was one module; DP configs saved its _target_ with this path.
    "dp_sam2.encoders.obs_encoder.SAM2ObsEncoder": "dp_sam2.encoders.obs.encoder.SAM2ObsEncoder",
    # 0.1.x: the rest of that module's public names (user code imported them from there).
    "dp_sam2.encoders.obs_encoder.SAM2Backbone": "dp_sam2.encoders.obs.backbone.SAM2Backbone",
    "dp_sam2.encoders.obs_encoder.ObsKeys": "dp_sam2.encoders.obs.inputs.ObsKeys",
    "dp_sam2.encoders.obs_encoder.parse_input_range": "dp_sam2.encoders.obs.inputs.parse_input_range",
    "dp_sam2.encoders.obs_encoder.parse_shape_meta": "dp_sam2.encoders.obs.inputs.parse_shape_meta",
    # 0.1.x: the optimizer _target_ of finetuning configs (and its helpers).
    "dp_sam2.encoders.finetune.adamw_param_groups": "dp_sam2.encoders.obs.finetune.adamw_param_groups",
    "dp_sam2.encoders.finetune.FinetuneConfig": "dp_sam2.encoders.obs.finetune.FinetuneConfig",
    "dp_sam2.encoders.finetune.LoRALinear": "dp_sam2.encoders.obs.finetune.LoRALinear",
    # 0.1.x: the pooling heads (README examples built them by name).
    "dp_sam2.encoders.heads.build_head": "dp_sam2.encoders.obs.heads.build_head",
    "dp_sam2.encoders.heads.AttentionPool": "dp_sam2.encoders.obs.heads.AttentionPool",
    "dp_sam2.encoders.heads.MeanPool": "dp_sam2.encoders.obs.heads.MeanPool",
    "dp_sam2.encoders.heads.SpatialSoftmax": "dp_sam2.encoders.obs.heads.SpatialSoftmax",
    # 0.1.x: the command line (`python -m dp_sam2.cli ...`, e.g. under torchrun).
    "dp_sam2.cli.main": "dp_sam2.tools.cli.main",
    # 0.1.x model yamls (copied by users for custom models) named the image encoder in neck.py.
    "dp_sam2.encoders.sam2.neck.ImageEncoder": "dp_sam2.encoders.sam2.image_encoder.ImageEncoder",
    # 0.2.x: two torch.distributed helpers became one; dill snapshots of the data-parallel
    # workspace hold dp_sam2.workspaces.dist.Dist.
    "dp_sam2.workspaces.dist": "dp_sam2.dist",
    "dp_sam2.cache.dist": "dp_sam2.dist",
    # 0.2.x: the SAM 2 file's lock path needs the checkpoints layer, so it moved to its one user.
    "dp_sam2.workspaces.dist.checkpoint_lock_path": "dp_sam2.workspaces.data_parallel.checkpoint_lock_path",
}


def _import(dotted: str):
    """The module ``dotted``, else the attribute its last part names in the module before it."""
    try:
        return importlib.import_module(dotted)
    except ModuleNotFoundError as err:
        module, _, name = dotted.rpartition(".")
        if not module or err.name not in (dotted, None):
            raise
        return getattr(importlib.import_module(module), name)


def resolve(old: str):
    """What the old dotted path ``old`` names now (a module, class or function)."""
    if old in MOVED:
        return _import(MOVED[old])
    module, _, name = old.rpartition(".")
    if module in MOVED:
        return getattr(importlib.import_module(MOVED[module]), name)
    raise KeyError(f"{old!r} is not an old dp_sam2 path (dp_sam2/_aliases.py lists them)")


def names(module: str) -> list[str]:
    """The public names the old module ``module`` still offers."""
    found = {old.rpartition(".")[2] for old in MOVED if old.rpartition(".")[0] == module}
    if module in MOVED:
        new = importlib.import_module(MOVED[module])
        found |= set(getattr(new, "__all__", None) or (n for n in vars(new) if not n.startswith("_")))
    return sorted(found)


def shim(module: str) -> tuple[Callable[[str], object], Callable[[], list[str]]]:
    """``__getattr__`` and ``__dir__`` for the old module ``module``: each name resolves through
    :data:`MOVED` when it is first asked for (so the shim imports nothing until then)."""

    def __getattr__(name: str):
        if name.startswith("__"):
            raise AttributeError(f"module {module!r} has no attribute {name!r}")
        try:
            return resolve(f"{module}.{name}")
        except (KeyError, AttributeError):
            raise AttributeError(
                f"module {module!r} has no attribute {name!r} (it is an old path kept for saved configs; "
                f"it offers {names(module)})"
            ) from None

    def __dir__() -> list[str]:
        return names(module)

    return __getattr__, __dir__

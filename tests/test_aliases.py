"""The table of old import paths (dp_sam2/_aliases.py): every row still names what moved, through
the old module the way Hydra's ``_target_`` lookup and pickle reach it (docs/design.md, ruling 17);
and the DP-subclass helper (dp_sam2/dp_classes.py) keeps one class per DP base."""

from __future__ import annotations

import importlib
import pickle
import subprocess
import sys

import pytest
import torch

from dp_sam2._aliases import MOVED, names, resolve


def _target(dotted: str):
    """What Hydra's ``_target_`` lookup does: import the longest module prefix, getattr the rest."""
    from hydra.utils import get_object

    return get_object(dotted)


@pytest.mark.parametrize("old", sorted(MOVED))
def test_every_row_names_its_new_home_through_the_old_module(old):
    new = resolve(old)
    assert new is _import_dotted(MOVED[old])
    module, _, name = old.rpartition(".")
    if old.replace(".", "/") + ".py" not in _module_files():  # a name, not a whole module
        assert getattr(importlib.import_module(module), name) is new
        assert _target(old) is new
        assert name in names(module)


def _import_dotted(dotted: str):
    try:
        return importlib.import_module(dotted)
    except ModuleNotFoundError:
        module, _, name = dotted.rpartition(".")
        return getattr(importlib.import_module(module), name)


def _module_files() -> set[str]:
    from pathlib import Path

    root = Path(importlib.import_module("dp_sam2").__file__).parent.parent
    return {str(p.relative_to(root)) for p in (root / "dp_sam2").rglob("*.py")}


def test_old_module_paths_offer_every_public_name_of_the_new_one():
    from dp_sam2 import dist

    for old in ("dp_sam2.workspaces.dist", "dp_sam2.cache.dist"):
        module = importlib.import_module(old)
        assert set(dist.__all__) <= set(names(old)) == set(dir(module))
        assert module.Dist is dist.Dist and module.make_loader is dist.make_loader
        with pytest.raises(AttributeError, match="old path kept for saved configs"):
            module.no_such_name  # noqa: B018
    assert _target("dp_sam2.workspaces.dist.checkpoint_lock_path").__module__ == "dp_sam2.workspaces.data_parallel"


def test_a_pickle_made_with_the_old_module_path_loads():
    """dill snapshots of the data-parallel workspace (0.2.x) hold ``dp_sam2.workspaces.dist.Dist``."""
    from dp_sam2.dist import Dist

    data = pickle.dumps(Dist(rank=1, world=2), protocol=0)
    old = data.replace(b"dp_sam2.dist", b"dp_sam2.workspaces.dist")
    assert old != data and pickle.loads(old) == Dist(rank=1, world=2)


def test_python_m_old_cli_path_runs():
    out = subprocess.run([sys.executable, "-m", "dp_sam2.cli", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "usage: dp-sam2" in out.stdout


def test_dp_subclass_is_made_once_per_base_and_pickles():
    from dp_sam2.dp_classes import dp_subclass, import_dp

    class Mixin:
        """behaviour"""

        def hello(self):
            return "mixin"

    made = dp_subclass(Mixin, torch.nn.Module, name="Made", module=__name__)
    assert made is dp_subclass(Mixin, torch.nn.Module, name="Made", module=__name__)
    assert made.__mro__[1:3] == (Mixin, torch.nn.Module) and made.__doc__ == "behaviour"
    assert (made.__name__, made.__qualname__, made.__module__) == ("Made", "Made", __name__)
    assert dp_subclass(Mixin, "diffusion_policy.not_there:Base", name="M", module=__name__, fallback=object)
    with pytest.raises(ImportError, match="real-stanford/diffusion_policy"):
        import_dp("diffusion_policy.not_there:Base")
    with pytest.raises(ValueError, match="package.module:ClassName"):
        import_dp("diffusion_policy.not_there.Base")

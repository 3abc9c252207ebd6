"""Data flows down the layers (docs/code_map.md): no module of dp_sam2 imports a layer listed
after its own, at module level or inside a function."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "dp_sam2"
# lowest first; a layer may import itself and the layers before it (peers on one line)
LAYERS = [
    ("_progress", "_aliases", "dist", "dp_classes"),  # helpers that import no other layer
    ("checkpoints",),
    ("encoders.sam2", "ext"),
    ("predictors", "encoders.obs"),
    ("cache", "metaworld"),  # DP-shaped data: the feature cache, MetaWorld's buffers / tasks / runner
    ("policies",),
    ("workspaces",),
    ("tools", "compare"),  # the command line and the closed-loop comparison it drives
]
# the old paths kept for saved DP configs (CHANGELOG.md) sit above everything and only re-export
ALIASES = {"__init__", "cli", "encoders.obs_encoder", "encoders.finetune", "encoders.heads", "encoders.__init__"}


def _layer_of(module: str) -> int | None:
    for rank, names in enumerate(LAYERS):
        if any(module == n or module.startswith(n + ".") for n in names):
            return rank
    return None


def _modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = ".".join(path.relative_to(PACKAGE).with_suffix("").parts)
        if rel not in ALIASES and not rel.startswith("configs"):
            yield rel, path


def _imports(path: Path, rel: str) -> set[str]:
    found = set()
    package = rel.split(".")[:-1]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                name = ".".join(["dp_sam2", *base] + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            found.add(name)
            found |= {f"{name}.{a.name}" for a in node.names}
    from dp_sam2 import _EXPORTS  # `from dp_sam2 import X`: X's own module

    found |= {_EXPORTS[n.split(".", 1)[1]] for n in found if n.count(".") == 1 and n.split(".", 1)[1] in _EXPORTS}
    return {n[len("dp_sam2.") :] for n in found if n.startswith("dp_sam2.")}


def test_the_check_sees_imports():
    """The parser finds relative, absolute, function-level and top-level-export imports."""
    src = PACKAGE / "cache" / "writer.py"
    assert {"encoders.obs.encoder", "cache.key", "cache.store"} <= _imports(src, "cache.writer")
    assert _layer_of("tools.cli") > _layer_of("cache.writer") > _layer_of("checkpoints.resolve")


def test_every_module_has_a_layer():
    assert [rel for rel, _ in _modules() if _layer_of(rel) is None] == []


@pytest.mark.parametrize("rel,path", list(_modules()), ids=[rel for rel, _ in _modules()])
def test_no_import_of_a_higher_layer(rel, path):
    own = _layer_of(rel)
    above = sorted(m for m in _imports(path, rel) if (_layer_of(m) or 0) > own)
    assert not above, f"dp_sam2.{rel} (layer {LAYERS[own]}) imports higher layers: {above}"

"""Every benchmark's --help runs from a plain install: no pytest, no scipy at import time."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = sorted((Path(__file__).resolve().parents[1] / "benchmarks").glob("bench_*.py"))


@pytest.mark.slow
@pytest.mark.parametrize("script", BENCHMARKS, ids=lambda p: p.name)
def test_help_without_pytest_or_scipy(script, tmp_path):
    blocked = tmp_path / "blocked"  # shadows the real packages: importing either raises
    (blocked / "scipy").mkdir(parents=True)
    (blocked / "pytest.py").write_text('raise ImportError("pytest is blocked in this test")\n')
    (blocked / "scipy" / "__init__.py").write_text('raise ImportError("scipy is blocked in this test")\n')
    probe = subprocess.run(
        [sys.executable, "-c", "import scipy"], env={"PYTHONPATH": str(blocked)}, capture_output=True, text=True
    )
    assert "scipy is blocked" in probe.stderr  # the block works
    path = f"{blocked}:{script.parents[1]}"  # the blocks first, then this checkout's dp_sam2
    proc = subprocess.run(
        [sys.executable, str(script), "--help"],
        env={"PYTHONPATH": path, "PATH": ""},
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage:")

"""Fixtures of the LeRobot tests. They run only where LeRobot is installed (the Python 3.12 venv that
.ci/run builds); elsewhere every test here is skipped."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # fixtures.py (no lerobot import at module level)

from fixtures import MODEL  # noqa: E402


@pytest.fixture(scope="session")
def sam2_dir(tmp_path_factory):
    """A folder holding a random-weight sam2_tiny checkpoint under its official name; it is
    $DP_SAM2_CHECKPOINT_DIR for the whole session, with an empty user cache."""
    from fixtures import write_random_sam2

    folder = tmp_path_factory.mktemp("sam2_files")
    write_random_sam2(folder, MODEL)
    names = ("DP_SAM2_CHECKPOINT_DIR", "DP_SAM2_CACHE", "DP_SAM2_ALLOW_MISSING_CHECKPOINT")
    saved = {k: os.environ.get(k) for k in names}
    os.environ["DP_SAM2_CHECKPOINT_DIR"] = str(folder)
    os.environ["DP_SAM2_CACHE"] = str(tmp_path_factory.mktemp("empty_cache"))
    os.environ.pop("DP_SAM2_ALLOW_MISSING_CHECKPOINT", None)
    yield folder
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="session")
def dataset_root(tmp_path_factory):
    """A local LeRobotDataset: 2 episodes x 12 frames, cameras top + wrist (48x64), state (3), action (2)."""
    from fixtures import make_dataset

    root = tmp_path_factory.mktemp("data") / "sam2_test"
    make_dataset(root, "local/sam2_test", episodes=2, frames=12)
    return root

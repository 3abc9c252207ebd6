"""Shared test helpers.

Reference models come from the official implementation (PyPI ``sam2==1.1.0``, identical to
facebookresearch/sam2 HEAD), built with its own random initialisation and then perturbed with a
fixed seed so no parameter keeps a trivial value (zeros, ones). The same weights are saved in the
official ``{"model": state_dict}`` format and loaded into ours.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from official_ref import _official_hydra, build_official, perturb_, rel_err, save_official_checkpoint  # noqa: F401

HAVE_OFFICIAL = importlib.util.find_spec("sam2") is not None
requires_official = pytest.mark.skipif(not HAVE_OFFICIAL, reason="official sam2 not installed")


@pytest.fixture(scope="session")
def official_tiny_ckpt(tmp_path_factory):
    """(official model, checkpoint path) for sam2.1 tiny at image_size 512, perturbed weights."""
    if not HAVE_OFFICIAL:
        pytest.skip("official sam2 not installed")
    model = build_official("configs/sam2.1/sam2.1_hiera_t.yaml", image_size=512)
    path = tmp_path_factory.mktemp("ckpt") / "sam2.1_hiera_tiny.pt"
    return model, save_official_checkpoint(model, path)


@pytest.fixture(scope="session")
def tiny_checkpoint_dir(tmp_path_factory):
    """A folder holding ``sam2_hiera_tiny.pt``: an official-format sam2_tiny image-encoder file with
    perturbed weights (``test_obs_encoder.make_checkpoint``, seed 0), made once per session. Point
    ``DP_SAM2_CHECKPOINT_DIR`` at it, or pass the file; do not write into the folder."""
    from test_obs_encoder import make_checkpoint

    folder = tmp_path_factory.mktemp("tiny_ckpt")
    make_checkpoint(folder / "sam2_hiera_tiny.pt")
    return folder


def scipy_connected_components(mask: torch.Tensor):
    """Exact CPU stand-in for the official CUDA kernel: 8-connected labels and per-pixel areas."""
    import numpy as np
    from scipy import ndimage

    m = mask.to(torch.uint8).cpu().numpy()
    labels = np.zeros(m.shape, np.int32)
    areas = np.zeros(m.shape, np.int32)
    for i in range(m.shape[0]):
        lab, _ = ndimage.label(m[i, 0], structure=np.ones((3, 3), dtype=int))
        counts = np.bincount(lab.ravel())
        counts[0] = 0
        labels[i, 0], areas[i, 0] = lab, counts[lab]
    return torch.from_numpy(labels).to(mask.device), torch.from_numpy(areas).to(mask.device)


def synthetic_photo(path: Path, size=(160, 120), shift: int = 0) -> Path:
    """A synthetic photo: a grey background, a blue disc and an orange square, laid out relative to
    ``size`` (at 160 x 120: disc in [40, 90] x [30, 80], square [110, 150] x [60, 110]); ``shift``
    moves the disc right by that many pixels (for video frames)."""
    from PIL import Image, ImageDraw

    w, h = size
    img = Image.new("RGB", size, (200, 200, 200))
    draw = ImageDraw.Draw(img)
    draw.ellipse([w // 4 + shift, h // 4, w * 9 // 16 + shift, h * 2 // 3], fill=(30, 60, 220))
    draw.rectangle([w * 11 // 16, h // 2, w * 15 // 16, h * 11 // 12], fill=(240, 140, 20))
    img.save(path)
    return path

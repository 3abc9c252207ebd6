"""Checkpoint resolution: absolute as given; relative in $DP_SAM2_CHECKPOINT_DIR, the DP repo
root (found through the namespace package ``diffusion_policy``), the current directory, the user
cache; an error listing every place tried and the download command (docs/design.md §2 and ruling 9)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from dp_sam2.checkpoints.resolve import (
    CheckpointNotFoundError,
    allow_missing_checkpoint,
    cache_dir,
    candidates,
    dp_repo_root,
    resolve_checkpoint,
)

REL = "checkpoints/sam2_hiera_tiny.pt"


@pytest.fixture
def places(tmp_path, monkeypatch):
    """Four empty candidate folders, a fake DP clone importable as ``diffusion_policy``."""
    dirs = {name: tmp_path / name for name in ("envdir", "dp_repo", "cwd", "cache")}
    for d in dirs.values():
        d.mkdir()
    (dirs["dp_repo"] / "diffusion_policy" / "workspace").mkdir(parents=True)  # no __init__.py, as DP
    monkeypatch.syspath_prepend(str(dirs["dp_repo"]))
    monkeypatch.delitem(sys.modules, "diffusion_policy", raising=False)
    monkeypatch.chdir(dirs["cwd"])
    monkeypatch.setenv("DP_SAM2_CHECKPOINT_DIR", str(dirs["envdir"]))
    monkeypatch.setenv("DP_SAM2_CACHE", str(dirs["cache"]))
    return dirs


def put(folder: Path, rel: str = REL) -> Path:
    path = folder / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    return path


def test_dp_repo_root_from_the_namespace_package(places):
    assert dp_repo_root() == places["dp_repo"].resolve()
    import diffusion_policy  # noqa: F401  (imported: found through the module's __path__)

    assert not hasattr(sys.modules["diffusion_policy"], "__file__") or sys.modules["diffusion_policy"].__file__ is None
    assert dp_repo_root() == places["dp_repo"].resolve()


def test_dp_repo_root_is_the_current_dp_checkout_when_dp_is_not_importable(tmp_path, monkeypatch):
    """A console script (``dp-sam2 download``) run in a DP checkout cannot import ``diffusion_policy``
    (the current folder is not on its ``sys.path``); the checkout is still DP's repo root."""
    monkeypatch.delitem(sys.modules, "diffusion_policy", raising=False)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", ".", os.getcwd())])
    monkeypatch.chdir(tmp_path)
    assert dp_repo_root() is None  # an empty folder is no DP checkout
    (tmp_path / "diffusion_policy").mkdir()
    assert dp_repo_root() is None  # a package folder without DP's train.py beside it is not either
    (tmp_path / "train.py").write_text("")
    assert dp_repo_root() == tmp_path.resolve()


def test_lookup_order(places, monkeypatch):
    order = [("cache", REL), ("cwd", REL), ("dp_repo", REL), ("envdir", REL)]
    found = []
    for name, rel in order:  # each new copy takes precedence over the ones before
        path = put(places[name], rel)
        found.append(resolve_checkpoint(REL))
        assert found[-1] == path
    # the env folder and the cache may hold the bare file name too
    for name in ("envdir", "dp_repo", "cwd"):
        (places[name] / REL).unlink()
    (places["cache"] / REL).unlink()
    bare = put(places["cache"], "sam2_hiera_tiny.pt")
    assert resolve_checkpoint(REL) == bare
    env_bare = put(places["envdir"], "sam2_hiera_tiny.pt")
    assert resolve_checkpoint(REL) == env_bare


def test_absolute_path_used_as_given(places, tmp_path):
    path = put(tmp_path / "elsewhere", "my.pt")
    put(places["envdir"], "my.pt")
    assert resolve_checkpoint(str(path)) == path
    assert [c.path for c in candidates(str(path))] == [path]
    with pytest.raises(CheckpointNotFoundError) as err:
        resolve_checkpoint(str(tmp_path / "missing" / "sam2_hiera_large.pt"))
    assert err.value.tried == [tmp_path / "missing" / "sam2_hiera_large.pt"]
    assert "dp-sam2 download sam2_large" in str(err.value)


def test_error_lists_every_place_tried_and_the_download_command(places):
    with pytest.raises(CheckpointNotFoundError) as err:
        resolve_checkpoint("checkpoints/sam2.1_hiera_base_plus.pt")
    message = str(err.value)
    expected = [
        places["envdir"] / "checkpoints/sam2.1_hiera_base_plus.pt",
        places["envdir"] / "sam2.1_hiera_base_plus.pt",
        places["dp_repo"].resolve() / "checkpoints/sam2.1_hiera_base_plus.pt",
        places["cwd"] / "checkpoints/sam2.1_hiera_base_plus.pt",
        places["cache"] / "checkpoints/sam2.1_hiera_base_plus.pt",
        places["cache"] / "sam2.1_hiera_base_plus.pt",
    ]
    assert err.value.tried == expected
    positions = [message.index(str(p)) for p in expected]
    assert positions == sorted(positions)
    for origin in ("$DP_SAM2_CHECKPOINT_DIR", "DP repo root", "current directory", "user cache"):
        assert origin in message
    assert "dp-sam2 download sam2.1_base_plus" in message and "DP_SAM2_ALLOW_MISSING_CHECKPOINT=1" in message
    assert isinstance(err.value, FileNotFoundError)


def test_without_dp_or_env_folder(tmp_path, monkeypatch):
    monkeypatch.delenv("DP_SAM2_CHECKPOINT_DIR", raising=False)
    monkeypatch.delenv("DP_SAM2_CACHE", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("dp_sam2.checkpoints.resolve.dp_repo_root", lambda: None)
    assert cache_dir() == tmp_path / "home" / ".cache" / "dp_sam2"
    with pytest.raises(CheckpointNotFoundError, match="diffusion_policy` package is not importable") as err:
        resolve_checkpoint(REL, "sam2_tiny")
    assert err.value.tried[0] == tmp_path / REL
    assert "dp-sam2 download sam2_tiny" in str(err.value)


@pytest.mark.parametrize("value, expected", [("1", True), ("true", True), ("yes", True), ("0", False), ("", False)])
def test_allow_missing_flag(monkeypatch, value, expected):
    monkeypatch.setenv("DP_SAM2_ALLOW_MISSING_CHECKPOINT", value)
    assert allow_missing_checkpoint() is expected


@pytest.mark.parametrize("bad", [None, "", "  ", 3])
def test_bad_paths(bad):
    with pytest.raises(TypeError, match="non-empty path"):
        resolve_checkpoint(bad)


# --------------------------------------------------------------------------- the one resolver
def test_find_weights_default_file_and_explicit_checkpoint(places):
    from dp_sam2.checkpoints.resolve import find_weights

    found = put(places["cache"], "sam2_hiera_tiny.pt")
    assert find_weights("sam2_tiny") == found  # default checkpoints/<official file>, then by name
    assert find_weights("facebook/sam2-hiera-tiny") == found
    other = put(places["cwd"], "mine/weights.pt")
    assert find_weights("sam2_tiny", "mine/weights.pt") == other
    with pytest.raises(ValueError, match="checkpoint is required with a custom model config"):
        find_weights("my_config.yaml")
    assert find_weights("my_config.yaml", "mine/weights.pt") == other


def test_find_weights_missing(places, monkeypatch):
    from dp_sam2.checkpoints.resolve import MissingCheckpointWarning, find_weights

    monkeypatch.delenv("DP_SAM2_ALLOW_MISSING_CHECKPOINT", raising=False)
    with pytest.raises(CheckpointNotFoundError, match="dp-sam2 download sam2.1_small"):
        find_weights("sam2.1_small")
    with pytest.warns(MissingCheckpointWarning, match="random_weights=True: building sam2.1_small WITHOUT"):
        assert find_weights("sam2.1_small", random_weights=True) is None
    monkeypatch.setenv("DP_SAM2_ALLOW_MISSING_CHECKPOINT", "1")
    with pytest.warns(MissingCheckpointWarning, match="DP_SAM2_ALLOW_MISSING_CHECKPOINT is set"):
        assert find_weights("sam2.1_small") is None
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert find_weights("sam2.1_small", warn=False) is None


# --------------------------------------------------------------------------- builders and predictors
@pytest.fixture(scope="module")
def tiny21_file(tmp_path_factory) -> Path:
    """A sam2.1_tiny checkpoint in the official format (random weights), as `dp-sam2 download` names it."""
    import torch

    from dp_sam2 import build_sam2

    torch.manual_seed(5)
    model = build_sam2("sam2.1_tiny", device="cpu", apply_postprocessing=False)
    path = tmp_path_factory.mktemp("tiny21") / "sam2.1_hiera_tiny.pt"
    torch.save({"model": model.state_dict()}, path)
    return path


@pytest.fixture
def only_in_user_cache(tmp_path, monkeypatch, tiny21_file):
    """The checkpoint only where `dp-sam2 download` puts it (the user cache, by file name); no DP, no
    $DP_SAM2_CHECKPOINT_DIR, an empty current folder."""
    import shutil

    cache = tmp_path / "user_cache"
    cache.mkdir()
    shutil.copy(tiny21_file, cache / tiny21_file.name)
    monkeypatch.setenv("DP_SAM2_CACHE", str(cache))
    monkeypatch.delenv("DP_SAM2_CHECKPOINT_DIR", raising=False)
    monkeypatch.delenv("DP_SAM2_ALLOW_MISSING_CHECKPOINT", raising=False)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", ".")])
    monkeypatch.delitem(sys.modules, "diffusion_policy", raising=False)
    empty = tmp_path / "elsewhere"
    empty.mkdir()
    monkeypatch.chdir(empty)
    return cache / tiny21_file.name


def test_builders_resolve_a_relative_checkpoint_like_the_obs_encoder(only_in_user_cache, tiny21_file):
    """The README's first snippet: the relative name finds the file in the user cache (issue 26)."""
    import torch

    from dp_sam2 import build_sam2, build_sam2_video_predictor

    expected = torch.load(tiny21_file, weights_only=True)["model"]["image_encoder.trunk.pos_embed"]
    for rel in ("checkpoints/sam2.1_hiera_tiny.pt", "sam2.1_hiera_tiny.pt"):
        model = build_sam2("configs/sam2.1/sam2.1_hiera_t.yaml", rel, device="cpu")
        assert torch.equal(model.image_encoder.trunk.pos_embed, expected)
    video = build_sam2_video_predictor("sam2.1_hiera_t.yaml", "checkpoints/sam2.1_hiera_tiny.pt", device="cpu")
    assert torch.equal(video.image_encoder.trunk.pos_embed, expected)
    # an absolute path is used as given
    assert torch.equal(
        build_sam2("sam2.1_tiny", str(tiny21_file), device="cpu").no_mem_embed,
        build_sam2("sam2.1_tiny", "checkpoints/sam2.1_hiera_tiny.pt", device="cpu").no_mem_embed,
    )


def test_builder_error_lists_places_and_the_download_command(only_in_user_cache):
    from dp_sam2 import build_sam2

    only_in_user_cache.unlink()
    with pytest.raises(CheckpointNotFoundError) as info:
        build_sam2("configs/sam2.1/sam2.1_hiera_t.yaml", "checkpoints/sam2.1_hiera_tiny.pt", device="cpu")
    text = str(info.value)
    assert "dp-sam2 download sam2.1_tiny" in text
    assert str(Path.cwd() / "checkpoints/sam2.1_hiera_tiny.pt") in text  # current folder
    assert str(only_in_user_cache) in text  # the user cache, by file name
    assert info.value.download_command == "dp-sam2 download sam2.1_tiny" and len(info.value.tried) >= 3
    # an absolute path is used as given, and its error names the download command too
    with pytest.raises(FileNotFoundError, match=r"not found: .*elsewhere.*`dp-sam2 download sam2.1_tiny`"):
        build_sam2("sam2.1_tiny", str(Path.cwd() / "model.pt"), device="cpu")


def test_from_pretrained_resolves_a_relative_checkpoint(only_in_user_cache, monkeypatch):
    from dp_sam2 import SAM2ImagePredictor
    from dp_sam2.checkpoints import download as dl

    monkeypatch.setattr(dl, "fetch_pretrained", lambda *a, **k: pytest.fail("an explicit checkpoint is not fetched"))
    predictor = SAM2ImagePredictor.from_pretrained(
        "facebook/sam2.1-hiera-tiny", ckpt_path="checkpoints/sam2.1_hiera_tiny.pt", device="cpu"
    )
    assert predictor.model.image_encoder is not None
    only_in_user_cache.unlink()
    with pytest.raises(CheckpointNotFoundError, match="dp-sam2 download sam2.1_tiny"):
        SAM2ImagePredictor.from_pretrained("sam2.1_tiny", checkpoint="sam2.1_hiera_tiny.pt", device="cpu")


def test_near_miss_model_names_get_a_suggestion():
    from dp_sam2 import build_sam2
    from dp_sam2.checkpoints.registry import get_spec

    with pytest.raises(ValueError, match=r"did you mean 'sam2_large'\?"):
        get_spec("sam2_larg")
    with pytest.raises(ValueError, match=r"did you mean 'sam2.1_tiny'\?"):
        build_sam2("sam2.1_tinny", device="cpu")
    with pytest.raises(ValueError) as info:
        get_spec("resnet18")
    assert "did you mean" not in str(info.value)

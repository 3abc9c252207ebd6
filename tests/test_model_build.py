"""The built model: official keys and shapes for all 8 configs, config-name forms, overrides,
checkpoint round trips and every checkpoint / config error with its message."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dp_sam2 import build_sam2
from dp_sam2.checkpoints.registry import MODELS, get_spec
from dp_sam2.encoders.sam2.build import load_model_config

# the official keys and shapes of the 8 models, recorded from sam2==1.1.0 (shipped: download verification uses it)
SHAPES = json.loads((Path(__file__).parents[1] / "dp_sam2" / "checkpoints" / "state_dict_shapes.json").read_text())
ALL_CONFIGS = sorted(SHAPES)


@pytest.fixture(scope="module")
def tiny_models():
    """Randomly initialised tiny 2.0 and 2.1 models at image_size 256 (cheap)."""
    torch.manual_seed(0)
    return {
        v: build_sam2(
            f"sam2{'.1' if v == '2.1' else ''}_tiny", device="cpu", hydra_overrides_extra=["++model.image_size=256"]
        )
        for v in ("2.0", "2.1")
    }


@pytest.mark.parametrize("config", ALL_CONFIGS)
def test_state_dict_keys_and_shapes_equal_official(config):
    model = build_sam2(config, device="cpu")
    ours = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert list(ours) == list(SHAPES[config])  # same keys, same (registration) order
    assert ours == SHAPES[config]


@pytest.mark.parametrize(
    "name",
    [
        "sam2_hiera_t.yaml",
        "sam2_hiera_t",
        "configs/sam2/sam2_hiera_t.yaml",
        "configs/sam2/sam2_hiera_t",
        "sam2_tiny",
        "sam2_hiera_tiny.pt",
    ],
)
def test_config_name_forms_sam20(name):
    assert get_spec(name).config == "configs/sam2/sam2_hiera_t.yaml"
    assert load_model_config(name).model.image_size == 1024


@pytest.mark.parametrize(
    "name",
    [
        "configs/sam2.1/sam2.1_hiera_b+.yaml",
        "configs/sam2.1/sam2.1_hiera_b+",
        "sam2.1_hiera_b+.yaml",
        "sam2.1_base_plus",
    ],
)
def test_config_name_forms_sam21(name):
    cfg = load_model_config(name)
    assert cfg.model.image_encoder.trunk.embed_dim == 112
    assert cfg.model.no_obj_embed_spatial is True


def test_unknown_config_lists_known_names():
    with pytest.raises(
        ValueError,
        match=r"unknown SAM 2 config 'sam2_hiera_xl.yaml'.*sam2_large"
        r".*configs/sam2.1/sam2.1_hiera_t.yaml",
    ):
        build_sam2("sam2_hiera_xl.yaml", device="cpu")


def test_overrides_official_syntax():
    cfg = load_model_config(
        "sam2_tiny",
        [
            "++model.image_size=512",
            "model.num_maskmem=5",
            "++model.new_option.nested=3",
            "~model.compile_image_encoder",
        ],
    )
    assert cfg.model.image_size == 512 and cfg.model.num_maskmem == 5
    assert cfg.model.new_option.nested == 3 and "compile_image_encoder" not in cfg.model
    with pytest.raises(ValueError, match="not in the config"):
        load_model_config("sam2_tiny", ["model.not_a_key=1"])
    with pytest.raises(ValueError, match="already in the config"):
        load_model_config("sam2_tiny", ["+model.image_size=512"])
    with pytest.raises(TypeError, match="list of strings"):
        load_model_config("sam2_tiny", "++model.image_size=512")


def test_image_size_must_be_multiple_of_32():
    with pytest.raises(ValueError, match="multiple of 32, got 500"):
        build_sam2("sam2_tiny", device="cpu", hydra_overrides_extra=["++model.image_size=500"])


def test_device_and_mode(tiny_models):
    model = tiny_models["2.0"]
    assert model.device.type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert not model.training
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            build_sam2("sam2_tiny", device="cuda")
    with pytest.raises(ValueError, match="mode must be 'eval' or 'train', got 'test'"):
        build_sam2("sam2_tiny", device="cpu", mode="test")
    assert build_sam2(
        "sam2_tiny", device="cpu", mode="train", hydra_overrides_extra=["++model.image_size=256"]
    ).training


def test_postprocessing_flags(tiny_models):
    dec = tiny_models["2.0"].sam_mask_decoder
    assert dec.dynamic_multimask_via_stability and dec.dynamic_multimask_stability_thresh == 0.98
    plain = build_sam2(
        "sam2_tiny", device="cpu", apply_postprocessing=False, hydra_overrides_extra=["++model.image_size=256"]
    )
    assert not plain.sam_mask_decoder.dynamic_multimask_via_stability


@pytest.mark.parametrize("version", ["2.0", "2.1"])
def test_checkpoint_round_trip_bit_exact(tiny_models, tmp_path, version):
    model = tiny_models[version]
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    path = tmp_path / "ckpt.pt"
    torch.save({"model": model.state_dict()}, path)
    name = "sam2.1_tiny" if version == "2.1" else "sam2_tiny"
    loaded = build_sam2(name, ckpt_path=str(path), device="cpu", hydra_overrides_extra=["++model.image_size=256"])
    a, b = model.state_dict(), loaded.state_dict()
    assert list(a) == list(b)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_missing_checkpoint_names_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"checkpoint not found: .*nope\.pt"):
        build_sam2("sam2_tiny", ckpt_path=str(tmp_path / "nope.pt"), device="cpu")


def test_truncated_checkpoint_says_damaged(tiny_models, tmp_path):
    path = tmp_path / "sam2_hiera_tiny.pt"
    torch.save({"model": tiny_models["2.0"].state_dict()}, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"sam2_hiera_tiny\.pt is damaged or truncated.*download it again"):
        build_sam2("sam2_tiny", ckpt_path=str(path), device="cpu")
    path.write_bytes(b"this is not a checkpoint at all")
    with pytest.raises(ValueError, match="damaged or truncated"):
        build_sam2("sam2_tiny", ckpt_path=str(path), device="cpu")


def test_checkpoint_without_model_key(tmp_path):
    path = tmp_path / "other.pt"
    torch.save({"optimizer": {"lr": 1}}, path)
    with pytest.raises(ValueError, match=r"other\.pt is not a SAM 2 checkpoint.*'model'"):
        build_sam2("sam2_tiny", ckpt_path=str(path), device="cpu")


def test_version_mismatch_names_fitting_config(tiny_models, tmp_path):
    p21 = tmp_path / "sam2.1_hiera_tiny.pt"
    torch.save({"model": tiny_models["2.1"].state_dict()}, p21)
    with pytest.raises(
        ValueError,
        match=r"sam2\.1_hiera_tiny\.pt is a SAM 2\.1 checkpoint but config "
        r"'sam2_hiera_t.yaml' is SAM 2\.0.*configs/sam2\.1/sam2\.1_hiera_t\.yaml",
    ):
        build_sam2("sam2_hiera_t.yaml", ckpt_path=str(p21), device="cpu")
    p20 = tmp_path / "sam2_hiera_tiny.pt"
    torch.save({"model": tiny_models["2.0"].state_dict()}, p20)
    with pytest.raises(
        ValueError, match=r"is a SAM 2\.0 checkpoint but config .* is SAM 2\.1.*configs/sam2/sam2_hiera_t\.yaml"
    ):
        build_sam2("configs/sam2.1/sam2.1_hiera_t.yaml", ckpt_path=str(p20), device="cpu")


def test_size_mismatch_names_size(tiny_models, tmp_path):
    path = tmp_path / "sam2_hiera_tiny.pt"
    torch.save({"model": tiny_models["2.0"].state_dict()}, path)
    with pytest.raises(
        ValueError, match=r"was made for the tiny model but config 'sam2_small' is small.*sam2_hiera_t\.yaml"
    ):
        build_sam2("sam2_small", ckpt_path=str(path), device="cpu")


def test_tampered_checkpoint_reports_keys(tiny_models, tmp_path):
    state = dict(tiny_models["2.0"].state_dict())
    state.pop("sam_mask_decoder.iou_token.weight")
    state["sam_mask_decoder.conv_s0.weight"] = torch.zeros(1, 2, 3, 3)
    path = tmp_path / "tampered.pt"
    torch.save({"model": state}, path)
    with pytest.raises(
        ValueError,
        match=r"tampered\.pt does not match config 'sam2_tiny'.*missing keys "
        r"\['sam_mask_decoder\.iou_token\.weight'\].*shape mismatches",
    ):
        build_sam2("sam2_tiny", ckpt_path=str(path), device="cpu")


def test_registry_has_the_eight_models():
    assert len(MODELS) == 8
    assert {s.filename for s in MODELS.values()} == {
        f"{p}_hiera_{s}.pt" for p in ("sam2", "sam2.1") for s in ("tiny", "small", "base_plus", "large")
    }
    assert get_spec("sam2_large").url.endswith("/072824/sam2_hiera_large.pt")
    assert get_spec("sam2.1_large").url.endswith("/092824/sam2.1_hiera_large.pt")


_NO_HYDRA_SCRIPT = """
import dp_sam2
from dp_sam2 import build_sam2, SAM2ImagePredictor
from hydra.core.global_hydra import GlobalHydra
assert not GlobalHydra.instance().is_initialized(), "import touched GlobalHydra"
m = build_sam2("sam2_tiny", device="cpu", hydra_overrides_extra=["++model.image_size=256"])
assert not GlobalHydra.instance().is_initialized(), "build touched GlobalHydra"
print("ok")
"""

_HYDRA_APP_SCRIPT = """
import hydra
from omegaconf import DictConfig
@hydra.main(version_base=None, config_path=None)
def main(cfg: DictConfig) -> None:
    from dp_sam2 import build_sam2
    m = build_sam2("sam2.1_hiera_t", device="cpu", hydra_overrides_extra=["++model.image_size=256"])
    print("built", type(m).__name__)
main()
"""


@pytest.mark.slow
def test_import_and_build_have_no_hydra_side_effects(tmp_path):
    out = subprocess.run([sys.executable, "-c", _NO_HYDRA_SCRIPT], capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "ok" in out.stdout


@pytest.mark.slow
def test_build_inside_running_hydra_app(tmp_path):
    script = tmp_path / "app.py"
    script.write_text(_HYDRA_APP_SCRIPT)
    out = subprocess.run(
        [sys.executable, str(script), "hydra.run.dir=" + str(tmp_path / "run")],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr
    assert "built SAM2Base" in out.stdout

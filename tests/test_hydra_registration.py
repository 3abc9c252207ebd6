"""The Hydra side: the `obs_encoder` group, the search-path plugin and every way of selecting it.

The DP-shaped yamls in tests/fixtures/dp/config are our own small stand-ins for Diffusion
Policy's (same defaults-list shape, same inline MultiImageObsEncoder keys). Composition runs
in-process, and in subprocesses outside the checkout (docs/design.md, ruling 6) with the editable install
of the current environment and with a wheel installed into a fresh virtualenv.
"""

from __future__ import annotations

import inspect
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

from dp_sam2 import SAM2ObsEncoder
from dp_sam2.checkpoints.registry import MODELS

ROOT = Path(__file__).resolve().parents[1]
FIXTURE_CONFIG = ROOT / "tests" / "fixtures" / "dp" / "config"
GROUP_DIR = ROOT / "dp_sam2" / "configs" / "obs_encoder"
WORKSPACE = "train_diffusion_unet_sam2_image_workspace"
# every argument of DP's MultiImageObsEncoder (diffusion_policy/model/vision/multi_image_obs_encoder.py)
DP_ENCODER_KEYS = (
    "shape_meta",
    "rgb_model",
    "resize_shape",
    "crop_shape",
    "random_crop",
    "use_group_norm",
    "share_rgb_model",
    "imagenet_norm",
)
SIZE = 64


# ----------------------------------------------------------------------------- fake DP policies
class FakeImagePolicy(nn.Module):
    """The part of DP's DiffusionUnetImagePolicy that touches the encoder."""

    def __init__(self, shape_meta, obs_encoder, n_obs_steps=2, **_):
        super().__init__()
        self.obs_encoder = obs_encoder
        self.obs_feature_dim = obs_encoder.output_shape()[0]


class FakeHybridPolicy(nn.Module):
    """DP's hybrid policies: no obs_encoder argument, **kwargs swallow everything else."""

    def __init__(self, shape_meta, crop_shape=(76, 76), obs_encoder_group_norm=False, **kwargs):
        super().__init__()
        self.kwargs = kwargs


# ----------------------------------------------------------------------------- the group files
def _group_files():
    return sorted(GROUP_DIR.glob("*.yaml"))


def test_one_group_file_per_registry_model():
    assert sorted(p.stem for p in _group_files()) == sorted(MODELS)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_group_file_contents(name):
    path = GROUP_DIR / f"{name}.yaml"
    text = path.read_text()
    assert text.splitlines()[0] == "# @package policy.obs_encoder"
    cfg = yaml.safe_load(text)
    spec = MODELS[name]
    assert cfg["_target_"] == "dp_sam2.SAM2ObsEncoder"
    assert cfg["model_cfg"] == name
    assert cfg["checkpoint"] == f"checkpoints/{spec.filename}"
    assert cfg["image_size"] == spec.obs_image_size and cfg["freeze"] is True
    assert cfg["rgb_model"] is None and cfg["shape_meta"] == "${shape_meta}"
    assert set(DP_ENCODER_KEYS) <= set(cfg)
    from dp_sam2.encoders.obs.old_keys import OLD_KEYS

    params = inspect.signature(SAM2ObsEncoder.__init__).parameters
    # every key reaches a real argument, or is a 0.2.x / DP leftover key the one table translates
    assert set(cfg) - {"_target_"} <= set(params) | set(OLD_KEYS)


def test_no_runtime_interpolations_in_shipped_paths():
    """train.py freezes the resolved config into the DP checkpoint: no ${hydra:} / ${oc.env:}."""
    for path in [*_group_files(), ROOT / "dp_sam2" / "configs" / f"{WORKSPACE}.yaml"]:
        cfg = yaml.safe_load(path.read_text())
        text = json.dumps(cfg)
        assert "${hydra:" not in text and "${oc.env:" not in text, path


def test_plugin_layout_is_a_namespace_package():
    assert not (ROOT / "hydra_plugins" / "__init__.py").exists()
    assert (ROOT / "hydra_plugins" / "dp_sam2" / "__init__.py").exists()


def test_plugin_is_discovered_and_adds_the_package_configs():
    from hydra.core.config_search_path import ConfigSearchPath
    from hydra.core.plugins import Plugins
    from hydra.plugins.search_path_plugin import SearchPathPlugin

    plugins = [
        p for p in Plugins.instance().discover(SearchPathPlugin) if p.__module__.startswith("hydra_plugins.dp_sam2")
    ]
    assert len(plugins) == 1
    from hydra._internal.config_search_path_impl import ConfigSearchPathImpl

    search_path: ConfigSearchPath = ConfigSearchPathImpl()
    search_path.append("main", "file:///somewhere")
    plugins[0]().manipulate_search_path(search_path)
    plugins[0]().manipulate_search_path(search_path)  # idempotent
    paths = [e.path for e in search_path.get_path()]
    assert paths == ["file:///somewhere", "pkg://dp_sam2.configs"]


# ----------------------------------------------------------------------------- composing in-process
def compose(config_name, overrides=()):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(FIXTURE_CONFIG), version_base=None):
        return hydra_compose(config_name=config_name, overrides=list(overrides))


def encoder_node(cfg):
    from omegaconf import OmegaConf

    return OmegaConf.to_container(cfg.policy.obs_encoder, resolve=True)


SELECTIONS = {
    "plus_group": ("train_dp_shaped_workspace", ["+obs_encoder=sam2_tiny"]),
    "plus_group_at_package": ("train_dp_shaped_workspace", ["+obs_encoder@policy.obs_encoder=sam2_tiny"]),
    "user_defaults_list": ("train_user_sam2_workspace", []),
    "shipped_workspace": (WORKSPACE, ["obs_encoder=sam2_tiny"]),
}


@pytest.mark.parametrize("style", sorted(SELECTIONS))
def test_each_selection_style_composes_the_encoder(style):
    name, overrides = SELECTIONS[style]
    node = encoder_node(compose(name, overrides))
    assert node["_target_"] == "dp_sam2.SAM2ObsEncoder"
    assert node["model_cfg"] == "sam2_tiny" and node["checkpoint"] == "checkpoints/sam2_hiera_tiny.pt"
    assert node["rgb_model"] is None  # DP's inline ResNet is replaced, not merged into
    assert node["shape_meta"]["obs"]["image"]["shape"] == [3, 96, 96]
    if style.startswith("plus_group") or style == "user_defaults_list":
        # the group comes after _self_ in DP's defaults list: its values win over DP's inline ones
        assert node["crop_shape"] is None and node["use_group_norm"] is False
    else:  # the shipped workspace lists _self_ last: its DP-style crop wins
        assert node["crop_shape"] == [76, 76]


def test_shipped_workspace_defaults_to_large_and_keeps_dp_keys():
    from omegaconf import OmegaConf

    cfg = compose(WORKSPACE)
    assert encoder_node(cfg)["model_cfg"] == "sam2_large" and encoder_node(cfg)["image_size"] == 256
    assert cfg._target_.endswith("TrainDiffusionUnetImageWorkspace")
    assert cfg.policy._target_.endswith("DiffusionUnetImagePolicy")
    assert cfg.optimizer._target_ == "dp_sam2.encoders.obs.finetune.adamw_param_groups"
    assert cfg.training.freeze_encoder is False
    assert "${hydra:" not in OmegaConf.to_yaml(cfg.policy)


def test_overrides_reach_the_encoder():
    cfg = compose(
        "train_dp_shaped_workspace",
        ["+obs_encoder=sam2.1_small", "policy.obs_encoder.freeze=false", "policy.obs_encoder.image_size=128"],
    )
    node = encoder_node(cfg)
    assert (node["model_cfg"], node["freeze"], node["image_size"]) == ("sam2.1_small", False, 128)


# ----------------------------------------------------------------------------- instantiating
@pytest.fixture(scope="module")
def checkpoint_dir(tiny_checkpoint_dir):
    return tiny_checkpoint_dir


def test_dp_shaped_yaml_instantiates_the_policy_with_sam2(checkpoint_dir, monkeypatch):
    from hydra.utils import instantiate

    monkeypatch.setenv("DP_SAM2_CHECKPOINT_DIR", str(checkpoint_dir))
    cfg = compose(
        "train_dp_shaped_workspace",
        ["+obs_encoder=sam2_tiny", f"policy.obs_encoder.image_size={SIZE}", "policy.obs_encoder.crop_shape=[76,76]"],
    )
    policy = instantiate(cfg.policy)
    enc = policy.obs_encoder
    assert isinstance(enc, SAM2ObsEncoder) and enc.image_size == SIZE
    assert policy.obs_feature_dim == 256 + 2
    assert enc.crop_shape["image"] == (76, 76) and enc.checkpoint == "checkpoints/sam2_hiera_tiny.pt"
    obs = {"image": torch.rand(3, 3, 96, 96) * 2 - 1, "agent_pos": torch.rand(3, 2)}
    assert enc(obs).shape == (3, 258)
    opt = instantiate(
        {"_target_": "dp_sam2.encoders.obs.finetune.adamw_param_groups", "lr": 1e-4}, params=policy.parameters()
    )
    assert len(opt.param_groups) == 2


def test_multi_camera_task_instantiates(checkpoint_dir, monkeypatch):
    from hydra.utils import instantiate

    monkeypatch.setenv("DP_SAM2_CHECKPOINT_DIR", str(checkpoint_dir))
    cfg = compose(
        "train_dp_shaped_workspace",
        ["task=two_cam_image", "+obs_encoder@policy.obs_encoder=sam2_tiny", f"policy.obs_encoder.image_size={SIZE}"],
    )
    enc = instantiate(cfg.policy).obs_encoder
    assert enc.keys.rgb == ("agentview_image", "robot0_eye_in_hand_image")
    assert enc.keys.low_dim == ("robot0_eef_pos", "robot0_gripper_qpos")
    assert enc.output_shape() == (2 * 256 + 3 + 2,)


def test_hybrid_workspace_selection_fails_clearly(checkpoint_dir, monkeypatch):
    """docs/design.md, ruling 10: DP's hybrid policies ignore policy.obs_encoder; selecting it there fails."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    monkeypatch.setenv("DP_SAM2_CHECKPOINT_DIR", str(checkpoint_dir))
    cfg = compose("train_hybrid_shaped_workspace", ["+obs_encoder=sam2_tiny", f"policy.obs_encoder.image_size={SIZE}"])
    expected = r"(?s)FakeHybridPolicy takes no obs_encoder.*DiffusionUnetImagePolicy"
    with pytest.raises(InstantiationException, match=expected):
        instantiate(cfg.policy)


# ----------------------------------------------------------------------------- outside the checkout
APP = """
import json, sys
import hydra
from omegaconf import OmegaConf

@hydra.main(version_base=None, config_path=sys.argv.pop(1))
def main(cfg):
    import dp_sam2, hydra_plugins
    node = OmegaConf.to_container(cfg.policy.obs_encoder, resolve=True) if "obs_encoder" in cfg.policy else None
    print("RESULT " + json.dumps({"node": node, "top_level": OmegaConf.to_container(cfg).get("obs_encoder"),
                                  "dp_sam2": dp_sam2.__file__, "plugins": list(hydra_plugins.__path__)}))

main()
"""


def run_app(python, workdir, config_name, *overrides):
    """A Hydra app (DP's train.py shape) run by ``python`` in ``workdir``; returns its RESULT."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    cmd = [
        str(python),
        "app.py",
        str(workdir / "config"),
        f"--config-name={config_name}",
        *overrides,
        "hydra.run.dir=outputs",
        "hydra.output_subdir=null",
        "hydra/job_logging=disabled",
        "hydra/hydra_logging=disabled",
    ]
    proc = subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True, timeout=240)
    if proc.returncode:
        raise AssertionError(f"{' '.join(cmd)} failed:\n{proc.stdout}\n{proc.stderr}")
    line = next(line for line in proc.stdout.splitlines() if line.startswith("RESULT "))
    return json.loads(line[len("RESULT ") :])


def _app_dir(tmp_path):
    work = tmp_path / "dp_clone"
    shutil.copytree(FIXTURE_CONFIG, work / "config")
    (work / "app.py").write_text(textwrap.dedent(APP))
    return work


def _check_install(python, work, expect_under):
    for style in ("plus_group", "plus_group_at_package", "user_defaults_list", "shipped_workspace"):
        name, overrides = SELECTIONS[style]
        result = run_app(python, work, name, *overrides)
        assert result["node"]["_target_"] == "dp_sam2.SAM2ObsEncoder", style
        assert result["node"]["rgb_model"] is None and result["top_level"] is None, style
        assert Path(result["dp_sam2"]).resolve().is_relative_to(expect_under), result["dp_sam2"]


@pytest.mark.slow
def test_compose_outside_checkout_with_the_current_install(tmp_path):
    work = _app_dir(tmp_path)
    _check_install(sys.executable, work, ROOT)  # the editable install of this checkout


def _wheel_tools_available() -> str | None:
    try:
        import setuptools
    except ImportError:
        return "setuptools is not installed"
    major, minor = (int(x) for x in setuptools.__version__.split(".")[:2])
    if (major, minor) < (70, 1):
        try:
            import wheel  # noqa: F401
        except ImportError:
            return f"setuptools {setuptools.__version__} needs the 'wheel' package to build wheels"
    return None


@pytest.mark.slow
def test_compose_outside_checkout_after_a_wheel_install(tmp_path):
    """pip wheel + a fresh venv (its site-packages first, this environment's for torch/hydra
    after it, through a path-only .pth: this environment's editable finder is not loaded)."""
    missing = _wheel_tools_available()
    if missing:
        pytest.skip(missing)
    src = tmp_path / "src"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", "build")
    src.mkdir()
    for item in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / item, src / item)
    for item in ("dp_sam2", "hydra_plugins"):
        shutil.copytree(ROOT / item, src / item, ignore=ignore)
    dist = tmp_path / "dist"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run(
        [*pip, "wheel", str(src), "--no-deps", "--no-build-isolation", "-w", str(dist)],
        check=True,
        capture_output=True,
        timeout=240,
        cwd=tmp_path,
    )
    wheels = list(dist.glob("dp_sam2-*.whl"))
    assert len(wheels) == 1, list(dist.iterdir())
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    site = Path(
        subprocess.run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
    )
    here = [p for p in sys.path if p.endswith("site-packages") and Path(p).is_dir()]
    (site / "zz_parent_env.pth").write_text("\n".join(here) + "\n")
    subprocess.run(
        [*pip, "--python", str(python), "install", "--no-deps", "--no-index", str(wheels[0])],
        check=True,
        capture_output=True,
        timeout=240,
    )
    assert not (site / "hydra_plugins" / "__init__.py").exists()
    _check_install(python, _app_dir(tmp_path), site)

"""The README and docs/ are tests: every fenced ```bash command, ```python block and ```yaml block in
README.md and docs/*.md is run or checked here (docs/design.md, rulings 18 and 27).

* Python blocks: each runs alone, as written, in a fresh process started from a temporary folder
  outside the checkout, with HOME pointing at a temporary home whose user cache
  (``~/.cache/dp_sam2``, where ``dp-sam2 download`` puts files outside a DP checkout) holds a
  random-weight checkpoint of the default model in the official format, and with Diffusion Policy,
  matplotlib and the official ``sam2`` made unimportable (a venv with only dp_sam2 installed).
  Fragments that are not meant to run are ```text blocks.
* Bash commands run (or are checked) in a sandbox folder with generated inputs (a photo, JPEG
  frames, a small replay buffer, generated checkpoints under their official names in
  ./checkpoints). Each must match a handler below; a new command without one fails
  `test_every_bash_command_is_handled`.

What is not run for real, and where it is checked instead:
* `pip install ...`, `git clone ...`, `python3.11 -m venv ...`, `source ...`: .ci/run installs the
  checkout with pip before the tests run; here the pins are checked against pyproject.toml and
  each other; tests/test_hydra_registration.py::test_compose_outside_checkout_after_a_wheel_install
  installs a wheel.
* `bash .ci/run`: the CI entry point itself.
* `dp-sam2 download ...`: needs the internet; the names are checked against the registry here,
  the command against a local server in tests/test_download.py::test_cli_download_and_bad_file.
* `dp-sam2 demo --out DIR`: parsed here; run (with `--quick`: same code, smaller sizes) by
  tests/test_cli.py::test_demo_writes_pictures.
* predictor commands run as written, but the models that `build_sam2` and
  `build_sam2_video_predictor` build get a 256 px input instead of 1024 px (see SMALL_INPUT).
* `python train.py ...` needs Diffusion Policy: the config it would compose is composed here
  from DP-shaped fixture yamls (tests/fixtures/dp/config) and its obs encoder checked.
* `torchrun ... train.py` / `accelerate launch ... train.py` (the data-parallel workspace) and
  `python ray_train_multirun.py ...` need DP too: their configs are composed here the same way
  (Ray's through `hydra.initialize` + `hydra.compose`, as DP's script does); the workspace itself
  runs under torchrun on a stand-in DP checkout in tests/test_ddp.py.
* sandbox commands run with DP_SAM2_ALLOW_MISSING_CHECKPOINT=1, for a model without a file there
  (random weights), on a two-frame replay buffer.
* `lerobot-train ...` needs LeRobot (Python >= 3.12): lerobot_policy_sam2/tests runs the README's line.
"""

from __future__ import annotations

import ast
import json
import math
import os
import re
import shlex
import shutil
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import yaml

from conftest import synthetic_photo

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
# docs pages whose commands and blocks other tests run (they need MetaWorld, DP and long runs that
# belong with those features), so this file leaves them out:
RUN_ELSEWHERE = {
    "metaworld.md": "tests/test_metaworld.py runs its commands (MetaWorld closed loop)",
    "compare.md": "tests/test_compare.py runs its commands (the encoder comparison grid)",
}
# pages other engineers write; the README links them before they exist
PENDING_PAGES = ("docs/metaworld.md", "docs/compare.md", "docs/design.md")
MAX_README_LINES = 300
FIXTURE_CONFIG = ROOT / "tests" / "fixtures" / "dp" / "config"
DP_WORKSPACE_STANDINS = {"train_diffusion_unet_image_workspace": "train_dp_shaped_workspace"}


def doc_files() -> list[Path]:
    """README first, then every docs page this file runs, in name order (the reading order)."""
    return [README] + [p for p in sorted(DOCS.glob("*.md")) if p.name not in RUN_ELSEWHERE]


def default_model() -> str:
    from dp_sam2.checkpoints import registry

    return getattr(registry, "DEFAULT_MODEL", "sam2.1_tiny")


@dataclass(frozen=True)
class Block:
    lang: str
    text: str
    line: int
    path: Path

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def file_blocks(path: Path) -> list[Block]:
    blocks, lang, start, lines = [], None, 0, []
    for i, line in enumerate(path.read_text().splitlines(), 1):
        stripped = line.strip()
        if lang is None and stripped.startswith("```") and len(stripped) > 3:
            lang, start, lines = stripped[3:].strip(), i, []
        elif lang is not None and stripped == "```":
            blocks.append(Block(lang, textwrap.dedent("\n".join(lines)), start, path))
            lang = None
        elif lang is not None:
            lines.append(line)
    return blocks


def readme_blocks() -> list[Block]:
    return [b for path in doc_files() for b in file_blocks(path)]


def bash_commands(paths=None) -> list[str]:
    cmds = []
    for path in paths or doc_files():
        for block in file_blocks(path):
            if block.lang != "bash":
                continue
            text = block.text.replace("\\\n", " ")
            for line in text.splitlines():
                line = line.split(" #")[0].strip()
                if line and not line.startswith("#"):
                    cmds += [part.strip() for part in line.split("&&")]
    return cmds


# --------------------------------------------------------------------------- the sandbox
@pytest.fixture(scope="module")
def sandbox(tmp_path_factory):
    from dp_sam2 import build_sam2
    from dp_sam2.checkpoints.registry import MODELS

    box = tmp_path_factory.mktemp("readme")
    synthetic_photo(box / "photo.jpg", size=(640, 480))
    (box / "frames").mkdir()
    for i in range(3):
        synthetic_photo(box / "frames" / f"{i:05d}.jpg", size=(640, 480), shift=10 * i)
    (box / "checkpoints").mkdir()
    for name in ("sam2_tiny", "sam2.1_tiny"):
        torch.manual_seed(5)
        state = build_sam2(name, device="cpu", apply_postprocessing=False).state_dict()
        torch.save({"model": {k: v.half() for k, v in state.items()}}, box / "checkpoints" / MODELS[name].filename)
    from test_cache import write_replay

    (box / "data" / "pusht").mkdir(parents=True)
    write_replay(box / "data" / "pusht" / "pusht_cchi_v7_replay.zarr", episodes=(2,), hw=(96, 96))  # 2 frames
    return box


def _env(box: Path) -> dict:
    env = dict(
        os.environ, OMP_NUM_THREADS="1", DP_SAM2_CACHE=str(box / "user_cache"), DP_SAM2_ALLOW_MISSING_CHECKPOINT="1"
    )  # for the sam2_large commands (no such file here)
    env.pop("DP_SAM2_CHECKPOINT_DIR", None)
    return env


def _run(cmd: str, box: Path, timeout=400) -> str:
    proc = subprocess.run(cmd, shell=True, cwd=box, env=_env(box), capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"README command failed: {cmd}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


# SAM 2 models built by build_sam2 / build_sam2_video_predictor get a 256 px input instead of the
# configs' 1024 px, so the predictor commands and snippets run in seconds on a CPU (same code).
SMALL_INPUT = """
import dp_sam2.encoders.sam2.build as _build_module
_original_build = _build_module._build
def _small_input(config_file, ckpt_path, device, mode, overrides):
    return _original_build(config_file, ckpt_path, device, mode, list(overrides) + ["++model.image_size=256"])
_build_module._build = _small_input
"""


def _run_python(code: str, box: Path, args=(), timeout=400) -> str:
    proc = subprocess.run(
        [sys.executable, "-c", SMALL_INPUT + code, *args],
        cwd=box,
        env=_env(box),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, f"README code failed: {args or code}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


def _run_cli(cmd: str, box: Path) -> str:
    """``dp-sam2 ...`` run as written, in a fresh process, with the small predictor input."""
    args = shlex.split(cmd)
    assert args[0] == "dp-sam2"
    return _run_python("import sys\nfrom dp_sam2.tools.cli import main\nsys.exit(main(sys.argv[1:]))", box, args[1:])


# --------------------------------------------------------------------------- bash handlers
def _pyproject() -> dict:
    import tomllib

    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _requirements() -> dict:
    from packaging.requirements import Requirement

    return {Requirement(r).name: Requirement(r) for r in _pyproject()["dependencies"]}


# The pins DP needs (docs/design.md §1); the README's recipe installs exactly these
DP_PINS = {"hydra-core": ">=1.3,<1.4", "zarr": "<3", "diffusers": "<0.37"}


def h_pip(cmd, box):
    """``pip install ...`` is not run here (.ci/run installed the checkout). Checked instead:
    * ``pip install ./dp_sam2`` / ``.`` / ``-e .``: what is installed is this checkout (same version)
      and the console script it declares resolves;
    * ``pip install ".[extra]"``: the extra exists;
    * ``pip install torch==X torchvision==Y``: meets dp_sam2's floors;
    * DP's pins: exactly docs/design.md's (§1), and none of them excluded by dp_sam2's own requirements
      (which carry no upper pins);
    * robomimic: as DP pins it, the command `dp-sam2 info` names."""
    import importlib
    from importlib import metadata

    from packaging.requirements import Requirement

    import dp_sam2

    args = shlex.split(cmd)
    assert args[:2] == ["pip", "install"], cmd
    rest = args[2:]
    project, reqs = _pyproject(), _requirements()
    if rest in (["./dp_sam2"], ["."], ["-e", "."]):
        assert dp_sam2.__version__ == project["version"] and metadata.version("dp-sam2") == project["version"]
        module, _, attr = project["scripts"]["dp-sam2"].partition(":")
        assert callable(getattr(importlib.import_module(module), attr))
    elif len(rest) == 1 and rest[0].startswith(".["):
        extras = rest[0][2:-1].split(",")
        assert set(extras) <= set(project["optional-dependencies"]), (extras, project["optional-dependencies"])
    elif rest and rest[0].startswith("torch=="):
        pins = dict(a.split("==") for a in rest)
        assert set(pins) == {"torch", "torchvision"}, pins
        for name, version in pins.items():
            assert reqs[name].specifier.contains(version), (name, version, reqs[name])
    elif "zarr<3" in rest:
        named = {Requirement(a).name: str(Requirement(a).specifier) for a in rest}
        for name, spec in DP_PINS.items():
            assert Requirement(f"{name}{named[name]}").specifier == Requirement(f"{name}{spec}").specifier, name
        for name in named:
            if name in reqs:  # dp_sam2 asks only for floors: DP's pins stay possible
                assert not any(s.operator in ("<", "<=", "==", "~=") for s in reqs[name].specifier), reqs[name]
    elif "--no-deps" in rest:
        from dp_sam2.tools.info import OPTIONAL_PARTS

        assert rest == ["--no-deps", "robomimic==0.2.0"], cmd
        assert any(cmd in how for *_, how in OPTIONAL_PARTS), "dp-sam2 info names another install command"
    elif "h5py" in rest:  # robomimic 0.2.0's runtime imports, without its egl_probe (docs/design.md, ruling 22)
        assert set(rest) == {"six", "h5py", "psutil", "termcolor", "tensorboard", "tensorboardX", "imageio"} | {
            "imageio-ffmpeg"
        }, cmd
    else:
        raise AssertionError(f"no check for {cmd}")


def h_git_clone(cmd, box):
    """``git clone``: dp_sam2 from its repository (not on an index: the URL is wherever the reader found
    it), cloned into the folder the next command installs; DP from real-stanford, then ``cd`` into it."""
    args = shlex.split(cmd)
    cmds = bash_commands()
    following = cmds[cmds.index(cmd) + 1]
    if args[-1] == "dp_sam2":
        assert re.fullmatch(r"git clone <[^<>]+> dp_sam2", cmd), cmd
        assert following == "pip install ./dp_sam2", following
    else:
        assert args[2:] == ["https://github.com/real-stanford/diffusion_policy"], cmd
        assert following == "cd diffusion_policy", following


def h_venv(cmd, box):
    """``python3.X -m venv NAME``: a Python dp_sam2 supports (DP's own conda file pins 3.9); the next
    line activates that venv."""
    from packaging.specifiers import SpecifierSet

    args = shlex.split(cmd)
    version = args[0].removeprefix("python")
    assert args[1:3] == ["-m", "venv"] and SpecifierSet(_pyproject()["requires-python"]).contains(version + ".0")
    assert not SpecifierSet(_pyproject()["requires-python"]).contains("3.9.0")  # why DP's conda file does not do
    cmds = bash_commands()
    assert cmds[cmds.index(cmd) + 1] == f"source {args[3]}/bin/activate"


def h_source(cmd, box):
    name = shlex.split(cmd)[1].split("/")[0]
    assert any(c.endswith(f"-m venv {name}") for c in bash_commands()), cmd


def h_ci(cmd, box):
    assert cmd == "bash .ci/run"
    assert "python -m pytest tests -q" in (ROOT / ".ci" / "run").read_text()


def h_quick_tests(cmd, box):
    """The quick inner loop: collect it (running it from inside the suite would recurse) and check it
    keeps the tiny-config parity and bad-input tests and leaves out the slow ones."""
    args = shlex.split(cmd)
    assert args[:4] == ["python", "-m", "pytest", "tests"] and args[-2:] == ["-m", "not slow"], cmd
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", *args[4:]],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    collected = proc.stdout
    assert "test_model_parity.py" in collected and "test_image_predictor.py" in collected
    assert "test_readme.py::test_python_block" not in collected and "test_readme.py::test_bash_command" not in collected
    assert "test_compose_outside_checkout" not in collected


def h_cd(cmd, box):
    """``cd diffusion_policy``: from a DP checkout, dp_sam2 finds the DP repo root (where relative
    checkpoint paths are looked up) through the imported ``diffusion_policy`` package."""
    target = shlex.split(cmd)[1]
    assert target == "diffusion_policy", cmd
    repo = box / target
    (repo / "diffusion_policy").mkdir(parents=True, exist_ok=True)  # DP's package has no __init__.py
    code = "from dp_sam2.checkpoints.resolve import dp_repo_root; print(dp_repo_root())"
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=repo,
        env=dict(_env(box), PYTHONPATH=str(repo)),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0 and Path(proc.stdout.strip()) == repo.resolve(), proc.stdout + proc.stderr


def h_demo(cmd, box):
    from dp_sam2.tools.cli import build_parser

    args = build_parser().parse_args(shlex.split(cmd)[1:])  # valid as written
    assert args.command == "demo" and args.steps is None and not args.quick
    assert args.offline == (cmd != "dp-sam2 demo --out demo_out")  # the first one downloads; the other is offline
    # the run itself, never on the network (--offline; --quick: same code, smaller sizes):
    # tests/test_cli.py::test_demo_writes_pictures and ::test_demo_log_fits_in_150_lines; the
    # download-or-fall-back step against loopback servers: ::test_demo_weights_fall_back_fast_or_download


def h_run(cmd, box):
    out = _run(cmd, box)
    if cmd.endswith(" info"):
        assert "Hydra sees the obs_encoder group: yes" in out
    else:
        assert "usage: dp-sam2" in out


def h_outputs(cmd, box):
    args = shlex.split(cmd)
    target = box / args[args.index("--out") + 1]
    if target.exists():
        shutil.rmtree(target) if target.is_dir() else target.unlink()
    _run_cli(cmd, box)
    assert target.exists() and (target.is_file() or any(target.iterdir())), cmd


def h_download(cmd, box):
    from dp_sam2.checkpoints.download import resolve_names
    from dp_sam2.tools.cli import build_parser

    assert build_parser().parse_args(shlex.split(cmd)[1:]).command == "download"  # valid as written
    args = shlex.split(cmd)[2:]
    names = [a for i, a in enumerate(args) if not a.startswith("--") and (i == 0 or not args[i - 1].startswith("--"))]
    assert resolve_names(names)  # the command itself: tests/test_download.py (--source huggingface too)


def h_cache(cmd, box):
    out = _run(cmd, box)
    assert "complete" in out or "rank 1:" in out, out


def h_train(cmd, box):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf

    args = shlex.split(cmd)[2:]
    name = next(a.split("=", 1)[1] for a in args if a.startswith("--config-name="))
    overrides = [a for a in args if not a.startswith("--")]
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(str(FIXTURE_CONFIG), version_base=None):
            cfg = compose(DP_WORKSPACE_STANDINS.get(name, name), overrides=overrides)
    finally:
        GlobalHydra.instance().clear()
    node = OmegaConf.to_container(cfg.policy.obs_encoder, resolve=False)
    chosen = [o.split("=", 1)[1] for o in overrides if o.split("=")[0].split("@")[0].lstrip("+") == "obs_encoder"]
    assert node["_target_"] == "dp_sam2.SAM2ObsEncoder" and node["rgb_model"] is None
    assert node["model_cfg"] == (chosen[-1] if chosen else "sam2_large")


UMI_CONFIG = ROOT / "tests" / "fixtures" / "umi" / "config"  # UMI-shaped stand-ins (tests/test_umi.py)
# the umi_obs_encoder group's target: SAM2ObsEncoder in 0.2.x, its UMI-keyed subclass since
UMI_TARGETS = ("dp_sam2.SAM2ObsEncoder", "dp_sam2.encoders.obs.umi.UMIObsEncoder")


def h_umi_train(cmd, box):
    """UMI's train.py needs UMI: its command is composed against the UMI-shaped fixture yamls and
    the encoder it selects is built (random weights, 64 px) and run on UMI-shaped obs."""
    import numpy as np
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from dp_sam2 import SAM2ObsEncoder

    args = shlex.split(cmd)[2:]
    name = next(a.split("=", 1)[1] for a in args if a.startswith("--config-name="))
    overrides = [a for a in args if not a.startswith("--")]
    chosen = [o.split("=", 1)[1] for o in overrides if o.startswith("+umi_obs_encoder@policy.obs_encoder=")]
    assert chosen, f"no +umi_obs_encoder@policy.obs_encoder= selection in {cmd}"
    OmegaConf.register_new_resolver("eval", eval, replace=True)  # as UMI's train.py does
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(str(UMI_CONFIG), version_base=None):
            cfg = compose(
                name, overrides=overrides + ["policy.obs_encoder.pretrained=false", "policy.obs_encoder.image_size=64"]
            )
        node = cfg.policy.obs_encoder
        assert node._target_ in UMI_TARGETS and node.model_name == chosen[-1]
        assert node.get("input_layout", "umi") == "umi"
        enc = instantiate(node).train()
        assert isinstance(enc, SAM2ObsEncoder)
        meta = OmegaConf.to_container(cfg.task.shape_meta, resolve=True)
        obs = {k: torch.rand(1, a["horizon"], *a["shape"]) for k, a in meta["obs"].items()}
        out = enc(obs)
        assert out.shape[0] == 1 and out[0].numel() == int(np.prod(enc.output_shape()))
    finally:
        GlobalHydra.instance().clear()
        OmegaConf.clear_resolver("eval")


def h_train_hybrid(cmd, box):
    """The hybrid-workspace commands (`+sam2_policy@policy=`): composed from the DP-shaped fixtures
    (`--config-dir=.` is DP's root, where the flattened paper yaml sits: tests/fixtures/dp) with the
    small overrides the issue appends; tests/test_hybrid.py builds and trains the policies."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    args = shlex.split(cmd)[2:]
    name = next(a.split("=", 1)[1] for a in args if a.startswith("--config-name="))
    config_dir = FIXTURE_CONFIG.parent if any(a == "--config-dir=." for a in args) else FIXTURE_CONFIG
    overrides = [a for a in args if not a.startswith("--")]
    model = next(o.split("=", 1)[1] for o in overrides if o.startswith("+sam2_policy@policy="))
    extra = ["policy.obs_encoder.image_size=64", "policy.num_inference_steps=4"]
    extra += (
        ["task=pusht_image", "policy.n_layer=2", "policy.n_emb=64"]
        if "transformer" in name
        else ["policy.down_dims=[32,64,128]"]
    )
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(str(config_dir), version_base=None):
            cfg = compose(name, overrides=overrides + extra)
    finally:
        GlobalHydra.instance().clear()
    assert cfg.policy._target_ == "dp_sam2.policies.sam2_diffusion_policy"
    enc = cfg.policy.obs_encoder
    assert (enc._target_, enc.model_cfg, enc.image_size) == ("dp_sam2.SAM2ObsEncoder", model, 64)
    assert cfg.task.name == "pusht_image" and cfg.policy.crop_shape is not None


DDP_TARGET = "dp_sam2.workspaces.data_parallel.TrainDiffusionDataParallelWorkspace"


def h_train_parallel(cmd, box):
    """torchrun / accelerate launch of DP's train.py: the same composition as `python train.py`."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    args = shlex.split(cmd)
    rest = args[args.index("train.py") + 1 :]
    h_train(shlex.join(["python", "train.py", *rest]), box)
    name = next(a.split("=", 1)[1] for a in rest if a.startswith("--config-name="))
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(str(FIXTURE_CONFIG), version_base=None):
            cfg = compose(name, overrides=[a for a in rest if not a.startswith("--")])
    finally:
        GlobalHydra.instance().clear()
    assert cfg._target_ == DDP_TARGET and cfg.policy._target_.endswith("DiffusionUnetImagePolicy")
    assert cfg.task.name == "pusht_image"


def h_ray(cmd, box):
    """DP's ray_train_multirun.py composes with hydra.initialize(config_path=<relative>) + compose."""
    import hydra
    from hydra.core.global_hydra import GlobalHydra

    args = shlex.split(cmd)
    name = next(a.split("=", 1)[1] for a in args if a.startswith("--config-name="))
    overrides = args[args.index("--") + 1 :]
    GlobalHydra.instance().clear()
    try:
        with hydra.initialize(version_base=None, config_path="fixtures/dp/config"):
            cfg = hydra.compose(config_name=name, overrides=overrides + ["training.seed=43"])
    finally:
        GlobalHydra.instance().clear()
    chosen = [o.split("=", 1)[1] for o in overrides if o.split("=")[0].split("@")[0].lstrip("+") == "obs_encoder"]
    assert cfg.policy.obs_encoder._target_ == "dp_sam2.SAM2ObsEncoder"
    assert cfg.policy.obs_encoder.model_cfg == chosen[-1]
    assert cfg.training.seed == 43 and "run_dir" in cfg.multi_run  # what the script reads


PLUGIN = ROOT / "lerobot_policy_sam2"


def h_lerobot_pip(cmd, box):
    """``pip install "lerobot[...]==0.6.1" . ./lerobot_policy_sam2`` needs Python >= 3.12: .ci/run's LeRobot
    block builds its venv with this very line. Here: the pins, and that the plugin distribution is named
    as LeRobot's discovery needs (``lerobot_policy_*``, the package of the same name) and depends on dp-sam2."""
    import tomllib

    args = shlex.split(cmd)
    assert args == ["pip", "install", "lerobot[dataset,training,diffusion]==0.6.1", ".", "./lerobot_policy_sam2"], cmd
    project = tomllib.loads((PLUGIN / "pyproject.toml").read_text())["project"]
    assert project["name"] == "lerobot_policy_sam2" and project["requires-python"] == ">=3.12"
    assert any(re.match(r"dp-sam2\b", dep) for dep in project["dependencies"])
    assert (PLUGIN / "src" / "lerobot_policy_sam2" / "__init__.py").is_file()
    assert cmd.replace("pip install", '"$LR_VENV/bin/pip" install -q', 1) in (ROOT / ".ci" / "run").read_text()


def h_lerobot_train(cmd, box):
    """``lerobot-train --policy.type=sam2_diffusion ...`` needs LeRobot (Python >= 3.12): it runs for real, as
    written with sam2_tiny and CPU overrides appended, in lerobot_policy_sam2/tests (the LeRobot venv of
    .ci/run). Here: one line of ``--key=value`` options, the registered type, the model by a registry short
    name, and every ``--policy.*`` option a field of the plugin's config class (or of LeRobot's base)."""
    import ast

    from dp_sam2.checkpoints.registry import MODELS

    args = shlex.split(cmd)
    assert args[0] == "lerobot-train" and all(re.fullmatch(r"--[\w.]+=\S+", a) for a in args[1:]), cmd
    opts = dict(a[2:].split("=", 1) for a in args[1:])
    assert opts["policy.type"] == "sam2_diffusion" and opts["policy.sam2_model"] in MODELS, opts
    source = PLUGIN / "src" / "lerobot_policy_sam2" / "configuration_sam2_diffusion.py"
    cls = next(
        n for n in ast.parse(source.read_text()).body if isinstance(n, ast.ClassDef) and n.name == "SAM2DiffusionConfig"
    )
    registered = [d.args[0].value for d in cls.decorator_list if isinstance(d, ast.Call) and d.args]
    assert registered == ["sam2_diffusion"]
    fields = {n.target.id for n in cls.body if isinstance(n, ast.AnnAssign)}
    fields |= {"type", "device", "push_to_hub", "repo_id"}  # LeRobot's PreTrainedConfig
    assert {k.split(".", 1)[1] for k in opts if k.startswith("policy.")} <= fields, opts
    assert "def readme_lerobot_train" in (PLUGIN / "tests" / "test_sam2_diffusion.py").read_text()


HANDLERS = [
    (r"^pip install (?!\"lerobot)", h_pip),
    (r"^pip install \"lerobot\[", h_lerobot_pip),
    (r"^git clone \S", h_git_clone),
    (r"^python3\.\d+ -m venv \S+$", h_venv),
    (r"^source \S+/bin/activate$", h_source),
    (r"^bash \.ci/run$", h_ci),
    (r"^python -m pytest tests ", h_quick_tests),
    (r"^cd \S+$", h_cd),
    (r"^dp-sam2 demo --out \S+( --offline)?$", h_demo),
    (r"^dp-sam2 (--help|info)$", h_run),
    (r"^dp-sam2 (segment|track|viz) .*--out \S+", h_outputs),
    (r"^dp-sam2 download ", h_download),
    (r"^(dp-sam2|torchrun --standalone --nproc_per_node \d+ -m dp_sam2\.cli) cache-features ", h_cache),
    (r"^python train\.py --config-name=(?!\S*_umi_)(?!.*\+sam2_policy@)\S+", h_train),
    (r"^python train\.py (--config-dir=\S+ )?--config-name=\S+ \+sam2_policy@policy=\S+$", h_train_hybrid),
    (r"^python train\.py --config-name=train_diffusion_\w*_umi_workspace ", h_umi_train),
    (
        r"^(torchrun --standalone --nproc_per_node \d+|accelerate launch --num_processes \d+)"
        r" train\.py --config-name=\S+",
        h_train_parallel,
    ),
    (r"^python ray_train_multirun\.py --config-name=\S+ .* -- ", h_ray),
    (r"^lerobot-train --policy\.type=", h_lerobot_train),
]


def handler_for(cmd: str):
    found = [h for pattern, h in HANDLERS if re.search(pattern, cmd)]
    return found[0] if len(found) == 1 else None


# --------------------------------------------------------------------------- the pages themselves
def test_readme_is_at_most_300_lines():
    n = len(README.read_text().splitlines())
    assert n <= MAX_README_LINES, f"README.md has {n} lines; move material to a docs/ page"


def _links(path: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)
    return [t.split("#")[0] for t in re.findall(r"\]\(([^)\s]+)\)", text) if not re.match(r"[a-z]+://", t)]


def test_every_docs_page_is_linked_from_the_readme():
    linked = {(ROOT / t).resolve() for t in _links(README) if t}
    pages = {p.resolve() for p in DOCS.glob("*.md")} | {(ROOT / p).resolve() for p in PENDING_PAGES}
    missing = sorted(str(p.relative_to(ROOT)) for p in pages - linked)
    assert not missing, f"docs pages not linked from README.md: {missing}"


def test_relative_links_resolve():
    broken = []
    for path in doc_files():
        for target in _links(path):
            resolved = (path.parent / target).resolve() if target else path
            if not resolved.exists() and str(resolved.relative_to(ROOT)) not in PENDING_PAGES:
                broken.append(f"{path.relative_to(ROOT)}: {target}")
    assert not broken, broken


def test_fresh_machine_commands_come_first():
    cmds = bash_commands()
    assert cmds[0].startswith("git clone <") and cmds[1:3] == ["pip install ./dp_sam2", "dp-sam2 demo --out demo_out"]


def _selection_key(cmd: str):
    """(program, config name) of a training command (ruling 18), or None."""
    args = shlex.split(cmd)
    name = next((a.split("=", 1)[1] for a in args if a.startswith("--config-name=")), None)
    return (args[0] if args[0] != "python" else " ".join(args[:2]), name) if name else None


def test_commands_follow_ruling_18():
    """One line each, the program first, groups selected in the loud form, and in the README one
    command per program and config name (a variant may follow in docs/, never precede)."""
    from dp_sam2.checkpoints.registry import MODELS

    cmds = bash_commands()
    short = [c for c in cmds if re.search(r"(^|\s)\+(obs_encoder|sam2_policy|umi_obs_encoder)=", c)]
    assert not short, f"the short +group= form fails silently without the plugin: {short}"
    for cmd in cmds:
        pattern = r"(?:^|\s)\+?(?:obs_encoder|sam2_policy|umi_obs_encoder)(?:@[\w.]+)?=(\S+)|--policy\.sam2_model=(\S+)"
        for sel in ["".join(m) for m in re.findall(pattern, cmd)]:
            assert sel in MODELS, (cmd, sel)
    keys = [_selection_key(c) for c in bash_commands([README]) if _selection_key(c)]
    assert len(keys) == len(set(keys)), keys


def test_every_bash_command_is_handled():
    cmds = bash_commands()
    assert len(cmds) >= 20
    unhandled = [c for c in cmds if handler_for(c) is None]
    assert not unhandled, f"commands without a test handler in tests/test_readme.py: {unhandled}"


@pytest.mark.slow
@pytest.mark.parametrize("cmd", sorted(set(bash_commands()), key=bash_commands().index))
def test_bash_command(cmd, sandbox):
    handler_for(cmd)(cmd, sandbox)


# --------------------------------------------------------------------------- python blocks
PY_BLOCKS = [b for b in readme_blocks() if b.lang == "python"]

# What each block prints (a regex on its last line), keyed by a line of the block: a new block
# without an expectation fails, and so does one that prints something else.
SNIPPET_OUTPUT = {
    "predictor = SAM2ImagePredictor(model)": r"^\(3, 480, 640\) \[",
    "predictor.propagate_in_video(state)": r"^3 frames tracked$",
    "SAM2AutomaticMaskGenerator.from_pretrained": r"^(0 masks; none|[1-9]\d* masks; \[.*'segmentation'.*\])$",
    "encoder = SAM2ObsEncoder(shape_meta": r"^torch\.Size\(\[4, 258\]\) \(258,\)$",
}

# Makes Diffusion Policy, matplotlib and the official sam2 unimportable in the block's process: the
# blocks must run in a venv with only dp_sam2 (and its dependencies) installed.
RUNNER = """
import importlib.abc, runpy, sys

class _NotInstalled(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("diffusion_policy", "matplotlib", "sam2"):
            raise ModuleNotFoundError(f"No module named {name!r} (not installed in a dp_sam2-only venv)")
        return None

sys.meta_path.insert(0, _NotInstalled())
runpy.run_path("block.py", run_name="__main__")
"""


def test_python_blocks_are_whole_programs():
    """Each ```python block parses on its own and names only the default model (fragments are ```text)."""
    model = default_model()
    from dp_sam2.checkpoints.registry import MODELS

    spec = MODELS[model]
    allowed = {model, f"checkpoints/{spec.filename}", spec.config, Path(spec.config).name, spec.hf_repo}
    assert PY_BLOCKS
    for key in SNIPPET_OUTPUT:  # no stale expectation, none that two blocks share
        assert sum(key in b.text for b in PY_BLOCKS) == 1, key
    for block in PY_BLOCKS:
        assert sum(key in block.text for key in SNIPPET_OUTPUT) == 1, f"{block.where} needs one SNIPPET_OUTPUT entry"
        strings = [n.value for n in ast.walk(ast.parse(block.text)) if isinstance(n, ast.Constant)]
        names = [v for v in strings if isinstance(v, str) and "sam2" in v]
        assert names and set(names) <= allowed, f"{block.where}: {names} (the default model is {model})"


@pytest.fixture(scope="module")
def user_home(tmp_path_factory):
    """A home folder outside the checkout whose user cache holds the default model, as
    ``dp-sam2 download`` leaves it there: a random-weight checkpoint in the official format."""
    from dp_sam2 import build_sam2
    from dp_sam2.checkpoints.registry import MODELS

    home = tmp_path_factory.mktemp("home")
    cache = home / ".cache" / "dp_sam2"
    cache.mkdir(parents=True)
    torch.manual_seed(5)
    model = build_sam2(default_model(), device="cpu", apply_postprocessing=False)
    torch.save(
        {"model": {k: v.half() for k, v in model.state_dict().items()}}, cache / MODELS[default_model()].filename
    )
    assert not str(home.resolve()).startswith(str(ROOT))
    return home


@pytest.mark.slow
@pytest.mark.parametrize("block", PY_BLOCKS, ids=[b.where for b in PY_BLOCKS])
def test_python_block(block, user_home, tmp_path):
    expected = [regex for key, regex in SNIPPET_OUTPUT.items() if key in block.text]
    assert len(expected) == 1, f"the python block at {block.where} needs one entry in SNIPPET_OUTPUT"
    work = tmp_path / "work"
    work.mkdir()
    (work / "block.py").write_text(block.text)
    env = {k: v for k, v in os.environ.items() if not k.startswith("DP_SAM2_") and k != "PYTHONPATH"}
    env.update(HOME=str(user_home), OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "2"), HF_HUB_OFFLINE="1")
    proc = subprocess.run(
        [sys.executable, "-c", RUNNER], cwd=work, env=env, capture_output=True, text=True, timeout=900
    )
    assert proc.returncode == 0, f"{block.where} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    out = proc.stdout.strip().splitlines()
    assert out and re.search(expected[0], out[-1]), out[-5:]


# --------------------------------------------------------------------------- yaml blocks
def _yaml_blocks():
    return [yaml.safe_load(b.text) for b in readme_blocks() if b.lang == "yaml"]


def test_defaults_list_snippet_composes(tmp_path):
    """The README's defaults list, put into a DP-shaped yaml, selects the encoder."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    snippet = next(y for y in _yaml_blocks() if "defaults" in y)
    entries = [e if isinstance(e, str) else next(iter(e)) for e in snippet["defaults"]]
    assert entries.index("_self_") < entries.index("obs_encoder")
    chosen = next(e["obs_encoder"] for e in snippet["defaults"] if isinstance(e, dict) and "obs_encoder" in e)
    cfg_dir = tmp_path / "config"
    shutil.copytree(FIXTURE_CONFIG, cfg_dir)
    base = yaml.safe_load((FIXTURE_CONFIG / "train_dp_shaped_workspace.yaml").read_text())
    base["defaults"] = snippet["defaults"]
    (cfg_dir / "readme_user.yaml").write_text(yaml.safe_dump(base))
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(str(cfg_dir), version_base=None):
            cfg = compose("readme_user")
    finally:
        GlobalHydra.instance().clear()
    assert cfg.policy.obs_encoder._target_ == "dp_sam2.SAM2ObsEncoder"
    assert cfg.policy.obs_encoder.model_cfg == chosen == default_model()


@pytest.mark.slow
def test_cached_dataset_snippet_instantiates(sandbox, tmp_path, monkeypatch):
    """docs/feature_cache.md's task.dataset block in a DP-shaped config, with a stand-in for DP's
    PushTImageDataset (tests/test_cache.py) and the command-line overrides the page names."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    import test_cache
    from dp_sam2 import cache as C

    page = DOCS / "feature_cache.md"
    text = page.read_text()
    overrides = ["policy.obs_encoder.input_range=[0,1]", "policy.obs_encoder.crop_shape=null"]
    assert "`" + " ".join(overrides) + "`" in text.replace("\n", " ")
    snippet = next(yaml.safe_load(b.text) for b in file_blocks(page) if b.lang == "yaml" and "task:" in b.text)
    fake = tmp_path / "fake_dp"
    for rel, body in test_cache.FAKE_DP.items():
        (fake / rel).parent.mkdir(parents=True, exist_ok=True)
        (fake / rel).write_text(textwrap.dedent(body))
    monkeypatch.syspath_prepend(str(fake))
    monkeypatch.chdir(sandbox)
    C.cache_features(
        sandbox / "data/pusht/pusht_cchi_v7_replay.zarr",
        "sam2_tiny",
        "checkpoints/sam2_hiera_tiny.pt",
        224,
        progress=False,
    )
    config = {
        "defaults": ["_self_"],
        "horizon": 4,
        "n_obs_steps": 2,
        "n_action_steps": 2,
        "shape_meta": {
            "obs": {"image": {"shape": [3, 96, 96], "type": "rgb"}, "agent_pos": {"shape": [2], "type": "low_dim"}},
            "action": {"shape": [2]},
        },
        "policy": {"obs_encoder": {}},
        **snippet,
    }
    cfg_dir = tmp_path / "config"
    cfg_dir.mkdir()
    (cfg_dir / "cached.yaml").write_text(yaml.safe_dump(config))
    OmegaConf.register_new_resolver("eval", eval, replace=True)
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(str(cfg_dir), version_base=None):
            cfg = compose("cached", overrides=["+obs_encoder@policy.obs_encoder=sam2_tiny", *overrides])
    finally:
        GlobalHydra.instance().clear()
    try:
        ds = instantiate(cfg.task.dataset)
        assert type(ds).__mro__[1].__module__ == "dp_sam2.cache.dataset" and len(ds) == 1
        assert tuple(ds[0]["obs"]["image"].shape) == (2, 256, 14, 14)
        assert float(ds.get_normalizer()["image"].scale[0]) == 1.0
    finally:
        for name in [m for m in sys.modules if m == "diffusion_policy" or m.startswith("diffusion_policy.")]:
            del sys.modules[name]


# --------------------------------------------------------------------------- facts in the prose
def _table(header_start: str, path: Path = README) -> list[list[str]]:
    lines = path.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header_start))
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append([c.strip().strip("`") for c in line.strip("|").split("|")])
    return rows


OFFICIAL_SHAPES = json.loads((ROOT / "dp_sam2" / "checkpoints" / "state_dict_shapes.json").read_text())


def test_models_table_matches_the_registry():
    from dp_sam2.checkpoints.registry import MODELS

    rows = _table("| name | SAM |")
    assert [r[0] for r in rows] == list(MODELS)
    for row in rows:
        spec = MODELS[row[0]]
        side = spec.obs_image_size // 16
        kib = 256 * side * side * 2 / 1024
        n_params = sum(math.prod(shape) for shape in OFFICIAL_SHAPES[spec.config].values())
        assert row[1:6] == [spec.version, spec.size, spec.config, spec.filename, f"{n_params / 1e6:.1f} M"]
        assert row[6] == str(spec.obs_image_size) and row[7] == f"256 x {side} x {side}" and row[8] == f"{kib:.0f} KiB"


def test_environment_variables_are_exactly_the_three():
    from dp_sam2.checkpoints import resolve

    rows = _table("| variable | meaning |")
    names = [r[0].split("=")[0] for r in rows]
    assert names == [resolve.ENV_CHECKPOINT_DIR, resolve.ENV_CACHE, resolve.ENV_ALLOW_MISSING]


def test_stated_versions_match_pyproject():
    """The README's and docs/tested_versions.md's "dp_sam2 needs" name every floor of pyproject.toml,
    and DP's pins as docs/design.md (§1) states them."""
    readme = " ".join(README.read_text().split())
    versions = readme[readme.index("**Versions.**") :][:1200]
    table = " ".join(" | ".join(r) for r in _table("| | needs | why |", DOCS / "tested_versions.md"))
    for name, req in _requirements().items():
        floor = next(s.version for s in req.specifier if s.operator == ">=")
        if name in ("torch", "torchvision", "hydra-core", "omegaconf", "diffusers", "zarr"):
            assert f"{name} >= {floor}" in versions, (name, floor)
        assert f"{name} >= {floor}" in table, (name, floor)
    assert f"Python >= {_pyproject()['requires-python'].removeprefix('>=')}" in versions
    for pin in ("`zarr<3`", "`diffusers<0.37`", "hydra-core 1.3"):
        assert pin in versions, pin
    extras = set(_pyproject()["optional-dependencies"]) - {"test"}
    assert {e for e in extras if f'".[{e}]"' not in readme} == set(), "the README names every extra"


def test_troubleshooting_names_the_last_line_of_info():
    """Troubleshooting and the README say which line `dp-sam2 info` ends with: it does."""
    text = " ".join((DOCS / "troubleshooting.md").read_text().split())
    stated = re.search(r"its last line must start with `([^`]+)`", text).group(1)
    code = "import sys\nfrom dp_sam2.tools.cli import main\nsys.exit(main(['info']))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    last = [line for line in proc.stdout.splitlines() if line.strip()][-1]
    assert last.startswith(stated), f"`dp-sam2 info` ends with {last!r}, the docs say {stated!r}"
    assert "on its last line, whether Hydra sees dp_sam2's `obs_encoder` group" in " ".join(README.read_text().split())


def test_sections():
    text = README.read_text()
    for title in (
        "## Install",
        "### In a Diffusion Policy environment",
        "## Get a checkpoint",
        "## Train Diffusion Policy with SAM 2",
        "## The command line",
        "## The Python API",
        "## Where to go next",
    ):
        assert title in text, title
    for line in ("Closed loop on MetaWorld", "Which encoder? (compare)", "Design notes"):
        assert f"[{line}](docs/" in text, line

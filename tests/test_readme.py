"""The README is a test: every fenced ```bash command, ```python snippet and ```yaml block in
README.md is run or checked here, in a sandbox folder with generated inputs (a photo, JPEG
frames, a small replay buffer, generated checkpoints under their official names in
./checkpoints). Each bash command must match a handler below; a new command in the README
without one fails `test_every_bash_command_is_handled`.

What is not run for real, and where it is checked instead:
* `pip install ...`: `.ci/run` installs the checkout with pip before the tests run;
  tests/test_hydra_registration.py::test_compose_outside_checkout_after_a_wheel_install installs a wheel.
* `bash .ci/run`: the CI entry point itself.
* `dp-sam2 download ...`: needs the internet; the names are checked against the registry here,
  the command against a local server in tests/test_download.py::test_cli_download_and_bad_file.
* `dp-sam2 demo --out DIR`: parsed here; run (with `--quick`: same code, smaller sizes) by
  tests/test_cli.py::test_demo_writes_pictures.
* predictor commands and snippets run as written, but the models that `build_sam2` and
  `build_sam2_video_predictor` build get a 256 px input instead of 1024 px (see SMALL_INPUT).
* `python train.py ...` needs Diffusion Policy: the config it would compose is composed here
  from DP-shaped fixture yamls (tests/fixtures/dp/config) and its obs encoder checked.
* `torchrun ... train.py` / `accelerate launch ... train.py` (the data-parallel workspace) and
  `python ray_train_multirun.py ...` need DP too: their configs are composed here the same way
  (Ray's through `hydra.initialize` + `hydra.compose`, as DP's script does); the workspace itself
  runs under torchrun on a stand-in DP checkout in tests/test_ddp.py.
* `sam2_large` commands run with DP_SAM2_ALLOW_MISSING_CHECKPOINT=1 (random weights) on a
  two-frame replay buffer.
"""

from __future__ import annotations

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

# Every README command and snippet runs in a fresh process: the whole file is in the slow set.
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
FIXTURE_CONFIG = ROOT / "tests" / "fixtures" / "dp" / "config"
DP_WORKSPACE_STANDINS = {"train_diffusion_unet_image_workspace": "train_dp_shaped_workspace"}


@dataclass(frozen=True)
class Block:
    lang: str
    text: str
    line: int


def readme_blocks() -> list[Block]:
    blocks, lang, start, lines = [], None, 0, []
    for i, line in enumerate(README.read_text().splitlines(), 1):
        stripped = line.strip()
        if lang is None and stripped.startswith("```") and len(stripped) > 3:
            lang, start, lines = stripped[3:].strip(), i, []
        elif lang is not None and stripped == "```":
            blocks.append(Block(lang, textwrap.dedent("\n".join(lines)), start))
            lang = None
        elif lang is not None:
            lines.append(line)
    return blocks


def bash_commands() -> list[str]:
    cmds = []
    for block in readme_blocks():
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
def h_pip(cmd, box):
    """``pip install .`` / ``pip install /path/to/dp_sam2``: .ci/run did the install; check that what is
    installed is this checkout (same version) and that the console script it declares resolves."""
    import importlib
    from importlib import metadata

    import tomllib

    import dp_sam2

    args = shlex.split(cmd)
    assert args[:2] == ["pip", "install"] and len(args) == 3, cmd
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert dp_sam2.__version__ == project["version"] and metadata.version("dp-sam2") == project["version"]
    module, _, attr = project["scripts"]["dp-sam2"].partition(":")
    assert callable(getattr(importlib.import_module(module), attr))


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
    assert "test_readme.py" not in collected and "test_compose_outside_checkout" not in collected


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
    assert args.command == "demo" and args.steps is None and not args.quick and not args.offline
    # the run itself, never on the network (--offline; --quick: same code, smaller sizes):
    # tests/test_cli.py::test_demo_writes_pictures and ::test_demo_log_fits_in_150_lines; the
    # download-or-fall-back step against loopback servers: ::test_demo_weights_fall_back_fast_or_download


def h_run(cmd, box):
    out = _run(cmd, box)
    if cmd.endswith(" info"):
        assert "Hydra sees the obs_encoder group: yes" in out


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


def h_umi_train(cmd, box):
    """UMI's train.py needs UMI: its command is composed against the UMI-shaped fixture yamls and
    the encoder it selects is built (random weights, 64 px) and run on UMI-shaped obs."""
    import numpy as np
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

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
        assert node._target_ == "dp_sam2.SAM2ObsEncoder" and node.model_name == chosen[-1]
        assert node.input_layout == "umi"
        enc = instantiate(node).train()
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
    (r"^bash \.ci/run$", h_ci),
    (r"^python -m pytest tests ", h_quick_tests),
    (r"^cd \S+$", h_cd),
    (r"^dp-sam2 demo --out \S+$", h_demo),
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


def test_every_bash_command_is_handled():
    cmds = bash_commands()
    assert len(cmds) >= 12
    unhandled = [c for c in cmds if handler_for(c) is None]
    assert not unhandled, f"README commands without a test handler in tests/test_readme.py: {unhandled}"


def test_fresh_machine_commands_come_first():
    cmds = bash_commands()
    assert cmds[:3] == ["pip install .", "dp-sam2 demo --out demo_out", "bash .ci/run"]


@pytest.mark.parametrize("cmd", sorted(set(bash_commands()), key=bash_commands().index))
def test_bash_command(cmd, sandbox):
    handler_for(cmd)(cmd, sandbox)


# --------------------------------------------------------------------------- python and yaml
PY_BLOCKS = [b for b in readme_blocks() if b.lang == "python"]


# What each snippet prints (a regex on its output), keyed by a line of the snippet: a new snippet
# without an expectation fails, and so does one that prints something else.
SNIPPET_OUTPUT = {
    "predictor = SAM2ImagePredictor(model)": r"^\(3, 480, 640\) \[",
    "predictor.propagate_in_video(state)": r"^3 frames tracked$",
    "SAM2AutomaticMaskGenerator.from_pretrained": r"^(0 masks; none|[1-9]\d* masks; \[.*'segmentation'.*\])$",
    "encoder = SAM2ObsEncoder(shape_meta": r"^torch\.Size\(\[4, 258\]\) \(258,\)$",
}


@pytest.mark.parametrize("block", PY_BLOCKS, ids=[f"line{b.line}" for b in PY_BLOCKS])
def test_python_snippet(block, sandbox):
    expected = [regex for key, regex in SNIPPET_OUTPUT.items() if key in block.text]
    assert len(expected) == 1, f"README snippet at line {block.line} needs one entry in SNIPPET_OUTPUT"
    out = _run_python(block.text, sandbox).strip().splitlines()
    assert out and re.search(expected[0], out[-1]), out[-5:]


def _yaml_blocks():
    return [yaml.safe_load(b.text) for b in readme_blocks() if b.lang == "yaml"]


def test_defaults_list_snippet_composes(tmp_path):
    """The README's defaults list, put into a DP-shaped yaml, selects the encoder."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    snippet = next(y for y in _yaml_blocks() if "defaults" in y)
    entries = [e if isinstance(e, str) else next(iter(e)) for e in snippet["defaults"]]
    assert entries.index("_self_") < entries.index("obs_encoder")
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
    assert cfg.policy.obs_encoder.model_cfg == "sam2_large"


def test_cached_dataset_snippet_instantiates(sandbox, tmp_path, monkeypatch):
    """The README's task.dataset block in a DP-shaped config, with a stand-in for DP's
    PushTImageDataset (tests/test_cache.py) and the command-line overrides the README names."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    import test_cache
    from dp_sam2 import cache as C

    text = README.read_text()
    overrides = ["policy.obs_encoder.input_range=[0,1]", "policy.obs_encoder.crop_shape=null"]
    assert "`" + " ".join(overrides) + "`" in text.replace("\n", " ")
    snippet = next(y for y in _yaml_blocks() if "task" in y)
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


# --------------------------------------------------------------------------- tables and sections
def _table(header_start: str) -> list[list[str]]:
    lines = README.read_text().splitlines()
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


def test_sections():
    text = README.read_text()
    for title in (
        "## On a fresh machine",
        "## Install beside Diffusion Policy",
        "## Selecting the encoder",
        "## Checkpoints",
        "## The feature cache",
        "## Training on many GPUs",
        "## The command line",
        "## The predictors",
        "## Troubleshooting",
        "## Speed",
        "## Running the real Diffusion Policy",
    ):
        assert title in text, title
    assert "Hybrid workspaces are not supported" not in text
    assert "### Hybrid workspaces (the paper's configs)" in text

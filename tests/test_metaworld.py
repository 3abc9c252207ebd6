"""MetaWorld tasks for Diffusion Policy (issue 24): demos, datasets, the lock-step runner, the task
files, the errors, and the commands of docs/metaworld.md (ruling 27; tests/test_readme.py leaves
that page to this file).

CI has no Diffusion Policy: DP's base classes, sampler and normalize_util are the stand-ins in
tests/fixtures/fake_dp, and its workspaces the DP-shaped yamls in tests/fixtures/dp/config. The same
code ran by hand on real DP 5ba07ac (train.py and eval.py): benchmarks/metaworld_run/README.md.
Everything here is small: 32 px images, a few episodes of `reach`, a few steps.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shlex
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

if importlib.util.find_spec("metaworld") is None:  # found, not imported: MuJoCo reads MUJOCO_GL at import
    pytest.skip("the 'metaworld' extra is not installed", allow_module_level=True)

ROOT = Path(__file__).resolve().parents[1]
FAKE_DP = ROOT / "tests" / "fixtures" / "fake_dp"
FIXTURE_CONFIG = ROOT / "tests" / "fixtures" / "dp" / "config"
DOC = ROOT / "docs" / "metaworld.md"
SIZE, CAMERA, TASK = 32, "corner2", "reach"
SHAPE_META = {
    "obs": {"image": {"shape": [3, SIZE, SIZE], "type": "rgb"}, "agent_pos": {"shape": [4], "type": "low_dim"}},
    "action": {"shape": [4]},
}


# ----------------------------------------------------------------------------- set-up
@pytest.fixture(scope="module", autouse=True)
def fake_dp():
    """DP's stand-in on sys.path for this module only (other tests must not see it)."""
    from omegaconf import OmegaConf

    OmegaConf.register_new_resolver("eval", eval, replace=True)  # DP's train.py registers it
    sys.path.insert(0, str(FAKE_DP))
    yield
    sys.path.remove(str(FAKE_DP))
    for name in [m for m in sys.modules if m == "diffusion_policy" or m.startswith("diffusion_policy.")]:
        del sys.modules[name]


@pytest.fixture(scope="module")
def buffer(tmp_path_factory):
    from dp_sam2.metaworld.demos import collect_demos

    out = tmp_path_factory.mktemp("demos") / "reach.zarr"
    summary = collect_demos(TASK, 3, out, image_size=SIZE, camera=CAMERA, seed=0, show_progress=False)
    assert summary["episodes"] == 3
    return out


class RecordingPolicy(torch.nn.Module):
    """Seeded random action chunks; remembers every observation batch and action chunk."""

    def __init__(self, n_action_steps: int, seed: int = 0):
        super().__init__()
        self.n_action_steps, self.rng = n_action_steps, np.random.default_rng(seed)
        self.calls: list[tuple[dict, np.ndarray]] = []
        self.device = torch.device("cpu")

    def predict_action(self, obs):
        batch = next(iter(obs.values())).shape[0]
        action = self.rng.uniform(-1, 1, size=(batch, self.n_action_steps, 4)).astype(np.float32)
        self.calls.append(({k: v.numpy().copy() for k, v in obs.items()}, action))
        return {"action": torch.from_numpy(action)}


class ExpertPolicy(torch.nn.Module):
    """MetaWorld's scripted expert on the latest full state, its action repeated over the chunk."""

    def __init__(self, n_action_steps: int):
        super().__init__()
        from dp_sam2.metaworld.env import expert

        self.expert, self.n_action_steps = expert(TASK), n_action_steps

    def predict_action(self, obs):
        latest = obs["obs"][:, -1].numpy().astype(np.float64)
        with warnings.catch_warnings():  # the experts warn that their gains exceed the clipped range
            warnings.simplefilter("ignore", UserWarning)
            actions = np.stack([np.clip(self.expert.get_action(o), -1, 1) for o in latest]).astype(np.float32)
        return {"action": torch.from_numpy(np.repeat(actions[:, None], self.n_action_steps, axis=1))}


def image_runner(tmp_path, **kwargs):
    from dp_sam2.metaworld import MetaWorldImageRunner

    args = dict(env_name=TASK, image_size=SIZE, camera=CAMERA, n_test=2, n_test_vis=0, max_steps=6)
    return MetaWorldImageRunner(output_dir=str(tmp_path), **{**args, **kwargs})


# ----------------------------------------------------------------------------- demos
def test_demos_layout_read_back(buffer):
    import zarr

    root = zarr.open_group(str(buffer), mode="r")
    ends = root["meta/episode_ends"][:]
    n = int(ends[-1])
    assert len(ends) == 3 and ends.dtype == np.int64
    assert root["data/img"].shape == (n, SIZE, SIZE, 3) and root["data/img"].dtype == np.uint8
    assert root["data/agent_pos"].shape == (n, 4) and root["data/state"].shape == (n, 39)
    assert root["data/action"].shape == (n, 4) and np.abs(root["data/action"][:]).max() <= 1.0
    # agent_pos is proprioception only: hand xyz + gripper = the state's first four floats
    np.testing.assert_array_equal(root["data/agent_pos"][:], root["data/state"][:, :4])
    assert dict(root.attrs["dp_sam2_metaworld"]) == {
        "task": "reach-v3", "camera": CAMERA, "image_size": SIZE, "seed": 0, "episodes": 3,
    }  # fmt: skip
    # zarr format 2 with numcodecs' Blosc: what DP's ReplayBuffer reads under zarr 2.x
    meta = json.loads((buffer / "data" / "img" / ".zarray").read_text())
    assert meta["zarr_format"] == 2 and meta["compressor"]["id"] == "blosc"
    assert not [p for p in buffer.parent.iterdir() if p.name.startswith(".")]  # no temporary folder left


def test_demo_images_are_upright_and_match_mujocos_renderer():
    import mujoco

    from dp_sam2.metaworld import env as mw

    env = mw.make_env(TASK, 0)
    mw.reset(env, 7)
    ours = mw.SceneRenderer(env.model, SIZE, CAMERA).render(env)
    theirs = mujoco.Renderer(env.model, SIZE, SIZE)
    theirs.update_scene(env.data, camera=CAMERA)
    np.testing.assert_array_equal(ours, theirs.render()[::-1, ::-1])  # MetaWorld's cameras: rotate 180
    theirs.close()
    # upright: the table (bright, low) fills more of the bottom half than the top half
    grey = ours.mean(-1)
    assert grey[SIZE // 2 :].mean() != grey[: SIZE // 2].mean()


def test_moved_camera_is_mujocos_camera_at_dp3s_position_and_leaves_the_model_as_it_was():
    import mujoco

    from dp_sam2.metaworld import env as mw

    env = mw.make_env(TASK, 0)
    mw.reset(env, 7)
    mujoco.mj_forward(env.model, env.data)  # the sites reset moved, so that the hand-moved render below sees one state
    cam = mujoco.mj_name2id(env.model, mujoco.mjtObj.mjOBJ_CAMERA, "corner2")
    before = env.model.cam_pos[cam].copy(), env.data.cam_xpos[cam].copy()
    renderer = mw.SceneRenderer(env.model, SIZE, "corner2_dp3")
    ours = renderer.render(env)
    renderer.close()
    # the model and its camera poses are as they were: a plain corner2 render after it is unmoved
    np.testing.assert_array_equal(env.model.cam_pos[cam], before[0])
    np.testing.assert_array_equal(env.data.cam_xpos[cam], before[1])
    plain = mw.SceneRenderer(env.model, SIZE, "corner2")
    far = plain.render(env)
    plain.close()
    # MuJoCo's own renderer with corner2 moved by hand to where DP3's code puts it
    env.model.cam_pos[cam] = [0.6, 0.295, 0.8]
    mujoco.mj_forward(env.model, env.data)
    theirs = mujoco.Renderer(env.model, SIZE, SIZE)
    theirs.update_scene(env.data, camera="corner2")
    np.testing.assert_array_equal(ours, theirs.render()[::-1, ::-1])
    theirs.close()
    assert np.abs(ours.astype(int) - far).mean() > 10  # a different view, not the far one
    assert mw.check_camera("corner2_dp3") == "corner2_dp3"


@pytest.mark.slow
def test_same_seed_same_file_and_interrupted_run_leaves_nothing(buffer, tmp_path, monkeypatch):
    from dp_sam2.metaworld import demos

    again = tmp_path / "again.zarr"
    demos.collect_demos(TASK, 3, again, image_size=SIZE, camera=CAMERA, seed=0, show_progress=False)
    files = sorted(p.relative_to(buffer) for p in buffer.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(again) for p in again.rglob("*") if p.is_file())
    assert all((buffer / f).read_bytes() == (again / f).read_bytes() for f in files)

    calls = []

    def interrupted(*args, **kwargs):
        if calls:
            raise KeyboardInterrupt
        calls.append(1)
        return real(*args, **kwargs)

    real = demos.rollout_expert
    monkeypatch.setattr(demos, "rollout_expert", interrupted)
    out = tmp_path / "cut" / "reach.zarr"
    with pytest.raises(KeyboardInterrupt):
        demos.collect_demos(TASK, 2, out, image_size=SIZE, camera=CAMERA, seed=0, max_steps=5, show_progress=False)
    assert not out.exists() and not list(out.parent.glob(".*")) if out.parent.exists() else True


# ----------------------------------------------------------------------------- datasets
def test_image_dataset_samples_with_dps_sampler_semantics(buffer, monkeypatch):
    from diffusion_policy.dataset.base_dataset import BaseImageDataset

    from dp_sam2.metaworld import MetaWorldImageDataset

    ds = MetaWorldImageDataset(
        str(buffer), horizon=4, pad_before=1, pad_after=3, env_name="reach-v3", image_size=SIZE, camera=CAMERA
    )
    assert isinstance(ds, BaseImageDataset)
    lengths = np.diff(np.concatenate([[0], ds.replay_buffer.episode_ends]))
    assert len(ds) == int(np.sum(lengths - 4 + 3 + 1 + 1))  # DP: starts -pad_before ... len - horizon + pad_after
    first = ds[0]
    assert first["obs"]["image"].shape == (4, 3, SIZE, SIZE) and first["obs"]["image"].dtype == torch.float32
    assert 0.0 <= float(first["obs"]["image"].min()) and float(first["obs"]["image"].max()) <= 1.0
    assert first["obs"]["agent_pos"].shape == (4, 4) and first["action"].shape == (4, 4)
    torch.testing.assert_close(first["action"][0], first["action"][1])  # padded before: the first step repeated
    torch.testing.assert_close(first["action"][1], torch.from_numpy(ds.replay_buffer["action"][0]))
    assert ds.get_all_actions().shape == (int(ds.replay_buffer.episode_ends[-1]), 4)

    split = type(ds)(str(buffer), horizon=4, val_ratio=0.34)
    val = split.get_validation_dataset()
    assert split.train_mask.sum() == 2 and val.train_mask.sum() == 1 and len(val) > 0

    fitted = {}

    class Recorder(dict):
        def fit(self, data, last_n_dims, mode, **kwargs):
            fitted.update({k: np.asarray(v).shape for k, v in data.items()}, mode=mode)

    monkeypatch.setattr("diffusion_policy.model.common.normalizer.LinearNormalizer", Recorder)
    normalizer = ds.get_normalizer()
    assert fitted == {
        "action": (len(ds.get_all_actions()), 4),
        "agent_pos": (len(ds.get_all_actions()), 4),
        "mode": "limits",
    }
    assert "image" in normalizer


def test_lowdim_dataset_gives_the_full_state(buffer):
    from diffusion_policy.dataset.base_dataset import BaseLowdimDataset

    from dp_sam2.metaworld import MetaWorldLowdimDataset

    ds = MetaWorldLowdimDataset(str(buffer), horizon=3, pad_before=1, pad_after=2, env_name=TASK)
    assert isinstance(ds, BaseLowdimDataset)
    item = ds[5]
    assert item["obs"].shape == (3, 39) and item["action"].shape == (3, 4)


def test_buffer_mismatch_and_bad_layout_are_named(buffer, tmp_path):
    import shutil

    from dp_sam2.metaworld import MetaWorldImageDataset, MetaWorldLowdimDataset

    for key, value, made in [("image_size", 64, SIZE), ("camera", "corner3", CAMERA), ("env_name", "push", "reach-v3")]:
        with pytest.raises(
            ValueError, match=rf"made with {key}={made!r}.*task\.{key}={value if key != 'env_name' else 'push-v3'!r}"
        ):
            MetaWorldImageDataset(str(buffer), **{key: value})
    broken = tmp_path / "broken.zarr"
    shutil.copytree(buffer, broken)
    shutil.rmtree(broken / "data" / "agent_pos")
    with pytest.raises(ValueError, match=r"no 'data/agent_pos'.*data/img, data/agent_pos, data/state, data/action"):
        MetaWorldImageDataset(str(broken))
    from dp_sam2.metaworld.buffer import write_buffer

    bad = {"img": np.zeros((5, 8, 8, 3), np.uint8), "agent_pos": np.zeros((5, 4)), "state": np.zeros((5, 12)),
           "action": np.zeros((5, 4))}  # fmt: skip
    write_buffer(tmp_path / "bad.zarr", [bad], {"task": "reach-v3"})
    with pytest.raises(ValueError, match=r"data/state should be \(N, 39\) float32.*got shape \(5, 12\)"):
        MetaWorldLowdimDataset(str(tmp_path / "bad.zarr"))
    with pytest.raises(FileNotFoundError, match="metaworld-demos"):
        MetaWorldImageDataset(str(tmp_path / "missing.zarr"))


# ----------------------------------------------------------------------------- the runner
def _alone(seed: int, chunks: list[np.ndarray], n_obs: int, max_steps: int, renderer_env=None):
    """One episode stepped by itself with the given action chunks: the observation stacks the
    policy should see at each call, and whether it succeeded (every frame rendered)."""
    from dp_sam2.metaworld import env as mw

    env = mw.make_env(TASK, 12345)
    renderer = mw.SceneRenderer(env.model, SIZE, CAMERA)
    states, images = [mw.reset(env, seed)], [renderer.render(env)]
    stacks, steps, success = [], 0, False
    for chunk in chunks:
        if steps >= max_steps:
            break
        pad = lambda xs: np.stack(([xs[0]] * n_obs + xs)[-n_obs:])  # noqa: E731 (DP's stack_last_n_obs)
        stacks.append((pad(states)[:, :4].astype(np.float32), pad(images)))
        for action in chunk[: max_steps - steps]:
            result = mw.step(env, np.clip(action, -1, 1))
            steps += 1
            success |= result.success
            states.append(result.obs)
            images.append(renderer.render(env))
    renderer.close()
    return stacks, success


@pytest.mark.slow
def test_lockstep_gives_each_episode_what_stepping_it_alone_gives(tmp_path):
    runner = image_runner(tmp_path, n_test=3, n_obs_steps=2, n_action_steps=3, max_steps=7, stop_at_success=False)
    policy = RecordingPolicy(n_action_steps=3)
    log = runner.run(policy)
    assert len(policy.calls) == 3  # ceil(7 / 3) decisions, each one call for all three episodes
    for b, seed in enumerate([100000, 100001, 100002]):
        stacks, success = _alone(seed, [a[b] for _, a in policy.calls], n_obs=2, max_steps=7)
        for (obs, _), (agent_pos, images) in zip(policy.calls, stacks):
            np.testing.assert_array_equal(obs["agent_pos"][b], agent_pos)
            np.testing.assert_array_equal(obs["image"][b], np.moveaxis(images, -1, 1).astype(np.float32) / 255.0)
        assert log[f"test/sim_max_reward_{seed}"] == float(success)
        assert log[f"test/sim_steps_{seed}"] == 7


@pytest.mark.slow
def test_lowdim_runner_expert_succeeds_stops_early_and_saves_a_gif(tmp_path):
    from diffusion_policy.env_runner.base_lowdim_runner import BaseLowdimRunner

    from dp_sam2.metaworld import MetaWorldLowdimRunner

    args = dict(env_name=TASK, image_size=SIZE, camera=CAMERA, n_test=2, n_obs_steps=2, n_action_steps=2, max_steps=120)
    runner = MetaWorldLowdimRunner(output_dir=str(tmp_path), n_test_vis=1, **args)
    assert isinstance(runner, BaseLowdimRunner)
    log = runner.run(ExpertPolicy(2))
    json.dumps(log)  # eval.py dumps it
    assert log["test_mean_score"] == 1.0
    assert all(log[f"test/sim_steps_{s}"] < 120 for s in (100000, 100001))
    from PIL import Image

    gif = Image.open(log["test/sim_video_100000"])
    assert Path(log["test/sim_video_100000"]).parent == tmp_path / "media" and gif.n_frames > 2
    full = MetaWorldLowdimRunner(output_dir=str(tmp_path), n_test_vis=0, stop_at_success=False, **args)
    log_full = full.run(ExpertPolicy(2))
    assert log_full["test_mean_score"] == 1.0 and log_full["test/sim_steps_100001"] == 120
    again = runner.run(ExpertPolicy(2))  # the environments are reused: same seeds, same episodes
    assert again["test/sim_steps_100001"] == log["test/sim_steps_100001"]
    one_at_a_time = MetaWorldLowdimRunner(output_dir=str(tmp_path), n_test_vis=0, n_envs=1, **args)
    chunked = one_at_a_time.run(ExpertPolicy(2))  # n_envs < n_test: episodes in batches, same results
    assert {k: v for k, v in chunked.items() if "/sim_" in k} == {
        k: v for k, v in log.items() if "/sim_" in k and "video" not in k
    }


class _ToyEncoder(torch.nn.Module):
    def __init__(self, shape_meta):
        super().__init__()
        self.net = torch.nn.Linear(3 + 4, 8)

    def forward(self, obs):
        return self.net(torch.cat([obs["image"].mean((-1, -2)), obs["agent_pos"]], -1))

    def output_shape(self):
        return (8,)


@pytest.mark.slow
def test_dp_policy_stand_in_trains_on_the_dataset_and_runs_through_the_runner(buffer, tmp_path):
    from diffusers.schedulers.scheduling_ddpm import DDPMScheduler
    from diffusion_policy.policy.diffusion_unet_image_policy import DiffusionUnetImagePolicy

    from dp_sam2.metaworld import MetaWorldImageDataset

    shape_meta = SHAPE_META
    policy = DiffusionUnetImagePolicy(
        shape_meta, DDPMScheduler(num_train_timesteps=10), _ToyEncoder(shape_meta), horizon=8, n_action_steps=4,
        n_obs_steps=2, num_inference_steps=2,
    )  # fmt: skip
    ds = MetaWorldImageDataset(str(buffer), horizon=8, pad_before=1, pad_after=3, image_size=SIZE, camera=CAMERA)
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=4)))
    policy.compute_loss(batch).backward()
    log = image_runner(tmp_path, n_test=2, n_test_vis=1, max_steps=5, n_action_steps=4).run(policy.eval())
    assert set(log) >= {"test_mean_score", "test/sim_max_reward_100000", "test/sim_video_100000"}
    assert json.loads(json.dumps(log)) == log and Path(log["test/sim_video_100000"]).is_file()


def test_runner_refuses_bad_settings(tmp_path):
    with pytest.raises(ValueError, match="at most 500"):
        image_runner(tmp_path, max_steps=501)
    with pytest.raises(ValueError, match="past_action"):
        image_runner(tmp_path, past_action=True)
    with pytest.raises(ValueError, match="valid cameras: corner, corner2"):
        image_runner(tmp_path, camera="front")


# ----------------------------------------------------------------------------- task files (Hydra)
LOWDIM_WORKSPACE = """\
defaults:
  - _self_
  - task: pusht_image
name: train_diffusion_unet_lowdim
_target_: diffusion_policy.workspace.train_diffusion_unet_lowdim_workspace.TrainDiffusionUnetLowdimWorkspace
obs_dim: ${task.obs_dim}
action_dim: ${task.action_dim}
keypoint_dim: ${task.keypoint_dim}
task_name: ${task.name}
horizon: 16
n_obs_steps: 2
n_action_steps: 8
n_latency_steps: 0
past_action_visible: False
policy:
  _target_: diffusion_policy.policy.diffusion_unet_lowdim_policy.DiffusionUnetLowdimPolicy
  obs_dim: ${obs_dim}
  action_dim: ${action_dim}
training: {device: "cuda:0"}
logging: {mode: online}
"""


def compose(config_name: str, overrides, tmp_path=None):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    config_dir = FIXTURE_CONFIG
    if config_name == "train_diffusion_unet_lowdim_workspace":  # no such fixture yaml: a DP-shaped one here
        config_dir = tmp_path / "lowdim_config"
        (config_dir / "task").mkdir(parents=True, exist_ok=True)
        (config_dir / "task" / "pusht_image.yaml").write_text(
            (FIXTURE_CONFIG / "task" / "pusht_image.yaml").read_text()
        )
        (config_dir / f"{config_name}.yaml").write_text(LOWDIM_WORKSPACE)
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(config_dir), version_base=None):
        return hydra_compose(config_name=config_name, overrides=list(overrides))


@pytest.mark.parametrize(
    "config_name, selection",
    [
        ("train_diffusion_unet_image_workspace", []),
        ("train_diffusion_unet_image_workspace", ["+obs_encoder@policy.obs_encoder=sam2.1_tiny"]),
        ("train_diffusion_unet_hybrid_workspace", ["+sam2_policy@policy=sam2.1_tiny"]),
    ],
)
def test_task_composes_with_image_and_hybrid_workspaces(config_name, selection, buffer, tmp_path):
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    cfg = compose(config_name, ["task=metaworld", "task.env_name=reach", f"task.image_size={SIZE}", *selection])
    assert cfg.task.name == "metaworld" and cfg.task.dataset._target_ == "dp_sam2.metaworld.MetaWorldImageDataset"
    meta = OmegaConf.to_container(cfg.shape_meta, resolve=True)
    assert meta == SHAPE_META
    if selection:
        assert OmegaConf.select(cfg, "policy.obs_encoder._target_", default="").startswith("dp_sam2")
    ds = instantiate(cfg.task.dataset, zarr_path=str(buffer))
    assert ds.horizon == cfg.horizon and ds.pad_before == cfg.n_obs_steps - 1 and ds.pad_after == cfg.n_action_steps - 1
    runner = instantiate(cfg.task.env_runner, output_dir=str(tmp_path))
    assert (runner.env_name, runner.image_size, runner.n_obs_steps, runner.n_action_steps) == ("reach-v3", SIZE, 2, 8)


def test_lowdim_task_composes_with_the_lowdim_workspace(buffer, tmp_path):
    from hydra.utils import instantiate

    cfg = compose("train_diffusion_unet_lowdim_workspace", ["task=metaworld_lowdim", "task.env_name=reach"], tmp_path)
    assert (cfg.obs_dim, cfg.action_dim) == (39, 4)
    ds = instantiate(cfg.task.dataset, zarr_path=str(buffer))
    assert ds[0]["obs"].shape == (16, 39)
    runner = instantiate(cfg.task.env_runner, output_dir=str(tmp_path))
    assert type(runner).__name__ == "MetaWorldLowdimRunner" and runner.n_latency_steps == 0


# ----------------------------------------------------------------------------- errors, optional extra
def test_unknown_task_lists_the_valid_names(capsys):
    from dp_sam2.tools.cli import main

    assert main(["metaworld-demos", "--task", "reech", "--episodes", "1", "--out", "x.zarr"]) == 1
    err = capsys.readouterr().err
    assert "unknown MetaWorld task 'reech'" in err and "reach, reach-wall" in err and "pick-place" in err


def _python(code: str, **env) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code], env={**os.environ, **env}, capture_output=True, text=True, timeout=120
    )


def test_no_opengl_names_the_packages_and_mujoco_gl_values():
    proc = _python("from dp_sam2.metaworld.env import make_env; make_env('reach', 0)", MUJOCO_GL="nonexistent")
    assert proc.returncode != 0
    for text in ("libosmesa6", "MUJOCO_GL=osmesa", "MUJOCO_GL=egl", "libegl1"):
        assert text in proc.stderr, proc.stderr[-2000:]


@pytest.mark.slow
def test_without_the_extra_the_command_and_the_task_say_how_to_install(tmp_path):
    block = "import sys; sys.modules['metaworld'] = None\n"  # as if MetaWorld were not installed
    cli = _python(block + "from dp_sam2.tools.cli import main; sys.exit(main(['metaworld-demos', '--task', 'reach', "
                  "'--episodes', '1', '--out', 'x.zarr']))")  # fmt: skip
    assert cli.returncode == 1 and 'pip install "dp-sam2[metaworld]"' in cli.stderr, cli.stderr[-2000:]
    task = _python(
        block + f"sys.path.insert(0, {str(FAKE_DP)!r})\n"
        "from dp_sam2.metaworld import MetaWorldImageRunner\n"
        f"MetaWorldImageRunner(output_dir={str(tmp_path)!r}, env_name='reach')"
    )
    assert task.returncode != 0 and 'pip install "dp-sam2[metaworld]"' in task.stderr, task.stderr[-2000:]


def test_importing_dp_sam2_imports_neither_metaworld_nor_mujoco():
    proc = _python(
        "import sys, dp_sam2, dp_sam2.metaworld, dp_sam2.tools.cli\n"
        "dp_sam2.tools.cli.build_parser()\n"
        "print([m for m in ('metaworld', 'mujoco', 'diffusion_policy') if m in sys.modules])"
    )
    assert proc.returncode == 0 and proc.stdout.strip() == "[]", proc.stdout + proc.stderr[-2000:]


# ----------------------------------------------------------------------------- docs/metaworld.md (ruling 27)
def doc_commands() -> list[str]:
    text = DOC.read_text()
    blocks = re.findall(r"```bash\n(.*?)```", text, flags=re.S)
    return [line.strip() for block in blocks for line in block.splitlines() if line.strip()]


@pytest.mark.slow
def test_docs_commands_run(tmp_path, monkeypatch):
    """Every ```bash line of docs/metaworld.md, in order, in one folder: `dp-sam2 metaworld-demos` runs
    as written with a smaller size appended (argparse keeps the last value); `python train.py` needs
    DP, so its config is composed from the DP-shaped fixture yamls and the task's dataset and runner
    are built on the demos just written; `python eval.py` must name a checkpoint of a run above;
    `pip` / `apt-get` lines are checked against pyproject.toml and the OpenGL error message."""
    from hydra.utils import instantiate

    from dp_sam2.metaworld.env import GL_HELP
    from dp_sam2.tools.cli import main

    monkeypatch.chdir(tmp_path)
    extra = re.search(r"^metaworld = \[(.*)\]$", (ROOT / "pyproject.toml").read_text(), flags=re.M)
    run_dirs, handled = [], []
    for line in doc_commands():
        argv = shlex.split(line)
        if argv[:2] == ["pip", "install"]:
            assert argv[2] == "dp-sam2[metaworld]" and extra and '"metaworld' in extra.group(1), line
        elif argv[:2] == ["apt-get", "install"]:
            assert all(pkg in GL_HELP for pkg in argv[3:]), line
        elif argv[0] == "dp-sam2":
            assert main(argv[1:] + ["--episodes", "2", "--image-size", str(SIZE)]) == 0, line
        elif argv[:2] == ["python", "train.py"]:
            name = next(a.split("=", 1)[1] for a in argv if a.startswith("--config-name="))
            overrides = [a for a in argv[2:] if not a.startswith("--config-name=")]
            cfg = compose(name, overrides + ([f"task.image_size={SIZE}"] if "lowdim" not in name else []), tmp_path)
            run_dirs.append(next(a.split("=", 1)[1] for a in overrides if a.startswith("hydra.run.dir=")))
            ds = instantiate(cfg.task.dataset)  # the buffer the demos line wrote, found by its default path
            assert len(ds) > 0 and instantiate(cfg.task.env_runner, output_dir=str(tmp_path)).n_test == 20
        elif argv[:2] == ["python", "eval.py"]:
            ckpt = argv[argv.index("--checkpoint") + 1]
            assert any(ckpt.startswith(d + "/checkpoints/") for d in run_dirs), (ckpt, run_dirs)
        else:
            pytest.fail(f"docs/metaworld.md command without a handler here: {line}")
        handled.append(argv[0])
    assert handled.count("dp-sam2") == 1 and handled.count("python") == 5

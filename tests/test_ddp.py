"""The data-parallel workspace (dp_sam2.workspaces.data_parallel) on 2 CPU processes (gloo).

CI has no Diffusion Policy: a tiny stand-in checkout is built in a temporary folder from the one DP
stand-in package (tests/fixtures/fake_dp: small versions of the DP classes the workspace uses) and
tests/fixtures/dp/ddp_checkout (train.py, eval.py, DP's config/ and the test's dataset, runner and
policy), with a random-weight sam2_tiny file in the official format at checkpoints/. The shipped
train_diffusion_unet_sam2_ddp_workspace.yaml runs there under `torchrun`, as on real DP (by hand:
benchmarks/ddp_run/README.md).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import dill
import pytest
import torch

from dp_sam2 import dist as D

ROOT = Path(__file__).resolve().parents[1]
CHECKOUT = ROOT / "tests" / "fixtures" / "dp" / "ddp_checkout"
FAKE_DP = ROOT / "tests" / "fixtures" / "fake_dp"
CONFIG = "train_diffusion_unet_sam2_ddp_workspace"
SMALL = [
    "task=pusht_image",
    "obs_encoder=sam2_tiny",
    "training.device=cpu",
    "logging.mode=disabled",
    "dataloader.num_workers=0",
    "val_dataloader.num_workers=0",
    "dataloader.pin_memory=false",
    "val_dataloader.pin_memory=false",
    "dataloader.shuffle=false",
    "policy.down_dims=[16]",
    "policy.num_inference_steps=2",
    "policy.obs_encoder.image_size=64",
    "policy.obs_encoder.crop_shape=null",
    "policy.obs_encoder.random_crop=false",
    "policy.obs_encoder.feature_dim=16",
    "policy._target_=ddp_fixtures.FixedNoisePolicy",
    # SGD with momentum: after one step its momentum buffer is exactly that step's gradient
    "optimizer._target_=torch.optim.SGD",
    "optimizer.lr=0.1",
    "+optimizer.momentum=0.9",
    "optimizer.weight_decay=0",
    "~optimizer.betas",
    "~optimizer.eps",
    "~optimizer.backbone_lr_scale",
    "training.lr_scheduler=constant",
    "training.lr_warmup_steps=0",
    "training.num_epochs=1",
    "training.max_train_steps=1",
    "training.max_val_steps=1",
    "training.rollout_every=1",
    "training.checkpoint_every=1",
    "training.val_every=1",
    "training.sample_every=1",
]
GLOBAL_BATCH = 4


# --------------------------------------------------------------------------- the stand-in checkout
@pytest.fixture(scope="module")
def checkout(tmp_path_factory):
    from dp_sam2 import build_sam2

    box = build_checkout(tmp_path_factory.mktemp("ddp") / "dp")
    (box / "checkpoints").mkdir()
    torch.manual_seed(3)
    state = build_sam2("sam2_tiny", device="cpu", apply_postprocessing=False).state_dict()
    torch.save({"model": {k: v.half() for k, v in state.items()}}, box / "checkpoints" / "sam2_hiera_tiny.pt")
    return box


def build_checkout(box: Path) -> Path:
    """A DP-checkout-shaped folder: the stand-in package as ``diffusion_policy/`` (without its
    ``__init__.py``: DP has none), ``config/`` inside it, ``train.py``, ``eval.py`` and
    ``ddp_fixtures.py`` beside it."""
    shutil.copytree(
        FAKE_DP / "diffusion_policy", box / "diffusion_policy", ignore=shutil.ignore_patterns("__pycache__")
    )
    (box / "diffusion_policy" / "__init__.py").unlink()
    shutil.copytree(CHECKOUT / "config", box / "diffusion_policy" / "config")
    for name in ("train.py", "eval.py", "ddp_fixtures.py"):
        shutil.copy2(CHECKOUT / name, box / name)
    return box


def _env(box: Path) -> dict:
    env = dict(
        os.environ,
        OMP_NUM_THREADS="1",
        PYTHONPATH=os.pathsep.join([str(box), str(ROOT)]),
        DP_SAM2_CACHE=str(box / "user_cache"),
        PYTHONUNBUFFERED="1",
    )
    for name in ("DP_SAM2_CHECKPOINT_DIR", "DP_SAM2_ALLOW_MISSING_CHECKPOINT", "WORLD_SIZE", "RANK", "LOCAL_RANK"):
        env.pop(name, None)
    return env


def _train(box: Path, nproc: int, overrides: list[str], timeout: int = 300) -> str:
    launch = (
        [sys.executable, "train.py"]
        if nproc == 1
        else [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc), "train.py"]
    )
    cmd = [*launch, f"--config-name={CONFIG}", *SMALL, *overrides]
    proc = subprocess.run(cmd, cwd=box, env=_env(box), capture_output=True, text=True, timeout=timeout)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{' '.join(cmd)}\n{out[-6000:]}"
    return out


def _payload(path: Path) -> dict:
    return torch.load(path, pickle_module=dill, weights_only=False, map_location="cpu")


@pytest.fixture(scope="module")
def one_proc(checkout):
    out = _train(
        checkout, 1, [f"dataloader.batch_size={GLOBAL_BATCH}", "val_dataloader.batch_size=4", "hydra.run.dir=runs/one"]
    )
    return checkout / "runs" / "one", out


@pytest.fixture(scope="module")
def two_proc(checkout):
    # each rank gets its own hydra.run.dir, as DP's ${now:...} default can: rank 0's must win
    out = _train(
        checkout,
        2,
        [
            f"dataloader.batch_size={GLOBAL_BATCH // 2}",
            "val_dataloader.batch_size=2",
            "hydra.run.dir=runs/two_${oc.env:RANK,0}",
        ],
    )
    return checkout / "runs" / "two_0", out


def _grads(run: Path) -> dict[str, torch.Tensor]:
    """The first step's gradient of every parameter that had one (SGD's momentum buffer)."""
    payload = _payload(run / "checkpoints" / "latest.ckpt")
    names = list(payload["state_dicts"]["model"])
    opt = payload["state_dicts"]["optimizer"]
    indices = [i for group in opt["param_groups"] for i in group["params"]]
    assert len(indices) == len(names)  # state dict = parameters, in order (no persistent buffers)
    return {names[i]: s["momentum_buffer"] for i, s in opt["state"].items()}


def _samples(out: str) -> dict[int, list[int]]:
    seen: dict[int, list[int]] = {}
    for rank, ids in re.findall(r"SAMPLES rank (\d) \[([\d, ]*)\]", out):
        seen.setdefault(int(rank), []).extend(int(i) for i in ids.split(","))
    return seen


# --------------------------------------------------------------------------- correctness
@pytest.mark.slow
def test_two_processes_give_the_gradients_of_one(one_proc, two_proc):
    """Same global batch (4 = 1 x 4 = 2 x 2), same seed, noise and timesteps fixed per sample, no
    random crop: the step's gradients on 2 processes equal those of 1 process."""
    (run1, out1), (run2, out2) = one_proc, two_proc
    assert _samples(out1) == {0: [0, 1, 2, 3]}
    seen = _samples(out2)
    assert sorted(seen) == [0, 1] and sorted(seen[0] + seen[1]) == [0, 1, 2, 3]  # each rank its own shard
    g1, g2 = _grads(run1), _grads(run2)
    assert sorted(g1) == sorted(g2) and len(g1) > 4
    assert not [n for n in g1 if n.startswith("obs_encoder.backbone.")]  # frozen: no gradient at all
    assert any(n.startswith("obs_encoder.heads.") for n in g1) and any(n.startswith("model.") for n in g1)
    for name in g1:
        ref = g1[name].double()
        err = float((g2[name].double() - ref).abs().max() / max(1.0, float(ref.abs().max())))
        assert err <= 1e-5, (name, err)
    assert max(float(g.abs().max()) for g in g1.values()) > 1e-4  # a real gradient, not zeros


@pytest.mark.slow
def test_rank_zero_writes_one_run_folder(two_proc, checkout):
    run, out = two_proc
    assert sorted(p.name for p in (checkout / "runs").iterdir() if p.name.startswith("two")) == ["two_0"]
    names = sorted(p.name for p in run.iterdir())
    assert names == [".hydra", "checkpoints", "logs.json.txt", "train.log"] or names == [
        ".hydra",
        "checkpoints",
        "logs.json.txt",
        "train.log",
        "wandb",
    ], names
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == [
        "epoch=0000-test_mean_score=0.000.ckpt",
        "latest.ckpt",
    ]
    assert re.findall(r"RUNNER rank (\d)", out) == ["0"]  # env runner on rank 0 only
    assert re.findall(r"NORMALIZER rank (\d)", out) == ["0"]  # computed once, broadcast
    logs = [json.loads(line) for line in (run / "logs.json.txt").read_text().splitlines()]
    assert len(logs) == 2  # DP's rows: the step's, then the epoch's
    assert logs[-1]["epoch"] == 0 and "val_loss" in logs[-1] and "train_action_mse_error" in logs[-1]


@pytest.mark.slow
def test_checkpoint_is_dps_payload_with_unwrapped_weights(two_proc, checkout):
    from dp_sam2.checkpoints.files import load_checkpoint_state_dict

    run, _ = two_proc
    payload = _payload(run / "checkpoints" / "latest.ckpt")
    assert sorted(payload) == ["cfg", "pickles", "state_dicts"]
    assert sorted(payload["state_dicts"]) == ["ema_model", "model", "optimizer"]
    assert sorted(payload["pickles"]) == ["_output_dir", "epoch", "global_step"]
    assert dill.loads(payload["pickles"]["_output_dir"]) is None  # as DP's one-process payload
    assert payload["cfg"]._target_ == "dp_sam2.workspaces.data_parallel.TrainDiffusionDataParallelWorkspace"
    official = load_checkpoint_state_dict(checkout / "checkpoints" / "sam2_hiera_tiny.pt", "sam2_tiny")
    for key in ("model", "ema_model"):
        state = payload["state_dicts"][key]
        assert not [k for k in state if k.startswith("module.") or k.startswith("policy.")]
        trunk = {
            k.split("obs_encoder.backbone.", 1)[1]: v
            for k, v in state.items()
            if k.startswith("obs_encoder.backbone.image_encoder.trunk.")
        }
        assert len(trunk) > 50
        for name, value in trunk.items():  # the frozen trunk equals the SAM 2 file
            assert torch.equal(value, official[name].float()), name


@pytest.mark.slow
def test_eval_loads_the_checkpoint_from_another_folder(two_proc, checkout, tmp_path, monkeypatch):
    """The stand-in checkout's eval.py (what DP's does), run from another folder in this process."""
    import importlib

    run, _ = two_proc
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(checkout))
    for name in D.LAUNCHER_ENV:
        monkeypatch.delenv(name, raising=False)
    try:
        eval_module = importlib.import_module("eval")
        assert Path(eval_module.__file__).parent == checkout
        eval_module.main(str(run / "checkpoints" / "latest.ckpt"), "out")
    finally:
        for name in [m for m in sys.modules if m in ("eval", "ddp_fixtures") or m.startswith("diffusion_policy")]:
            del sys.modules[name]
    assert json.loads((tmp_path / "out" / "eval_log.json").read_text()) == {"test_mean_score": 0.0}
    assert not torch.distributed.is_initialized()


@pytest.mark.slow
def test_resume_from_latest(two_proc, checkout):
    run, _ = two_proc
    again = checkout / "runs" / "resume_0"
    shutil.copytree(run, again)
    before = _payload(again / "checkpoints" / "latest.ckpt")
    out = _train(
        checkout,
        2,
        [
            "dataloader.batch_size=2",
            "val_dataloader.batch_size=2",
            "training.num_epochs=2",
            "hydra.run.dir=runs/resume_${oc.env:RANK,0}",
        ],
    )
    assert out.count("Resuming from checkpoint") == 1  # printed by rank 0; every rank loads
    after = _payload(again / "checkpoints" / "latest.ckpt")
    # DP saves inside the epoch (epoch 0 of the first run), resumes at that number and runs num_epochs more
    assert dill.loads(before["pickles"]["epoch"]) == 0 and dill.loads(after["pickles"]["epoch"]) == 1
    assert dill.loads(after["pickles"]["global_step"]) > dill.loads(before["pickles"]["global_step"])
    logs = [json.loads(line) for line in (again / "logs.json.txt").read_text().splitlines()]
    assert [row["epoch"] for row in logs if "val_loss" in row] == [0, 0, 1]  # the json log appends
    changed = [
        k for k, v in after["state_dicts"]["model"].items() if not torch.equal(v, before["state_dicts"]["model"][k])
    ]
    assert changed and not [k for k in changed if k.startswith("obs_encoder.backbone.")]
    assert not (checkout / "runs" / "resume_1").exists()


# --------------------------------------------------------------------------- DDP and the lock
def _lock_job(out: Path, index: int, log: list) -> None:
    """What a resolver that downloads would do, as one job's rank 0 (world 1) under the file lock.
    flock locks belong to an open file description, so two threads exclude each other as two
    processes would."""
    with D.rank_zero_first(D.Dist(), out / "checkpoints" / ".dp_sam2.lock"):
        target = out / "checkpoints" / "shared.pt"
        if not target.exists():
            time.sleep(0.3)
            target.write_text(f"job {index}\n")
            log.append(index)


@pytest.mark.slow
def test_frozen_backbone_is_not_synchronised(two_proc):
    """A frozen SAM 2 backbone (and DP's empty _dummy_variable) trains under DDP without an
    unused-parameter error; each step all-reduces exactly the trainable elements, no buffers."""
    _, out = two_proc
    held = re.findall(r"DDP rank (\d) trainable (\d+) frozen (\d+) sync_buffers (\w+)", out)
    assert sorted(r for r, *_ in held) == ["0", "1"]
    _, trainable, frozen, sync = held[0]
    assert int(frozen) > 1_000_000 and int(trainable) < int(frozen) / 20 and sync == "False"
    sent = [int(n) for r, n in re.findall(r"ALLREDUCE rank (\d) (\d+)", out) if r == "0"]
    assert sum(sent) == int(trainable)  # one step: the trainable elements, no frozen weight


@pytest.mark.slow
def test_only_rank_zero_resolves_the_sam2_file_under_a_lock(two_proc, checkout, tmp_path):
    _, out = two_proc
    built = {int(r): (float(a), float(b)) for r, a, b in re.findall(r"BUILD rank (\d) ([\d.]+) ([\d.]+)", out)}
    assert sorted(built) == [0, 1] and built[1][0] >= built[0][1]  # rank 1 waited for rank 0's policy
    assert (checkout / "checkpoints" / ".dp_sam2.lock").is_file()  # taken by rank 0 around it
    # two independent jobs (e.g. rank 0 of two machines sharing the file system): the file lock
    # lets one of them create the file; the other finds it
    log: list = []
    jobs = [threading.Thread(target=_lock_job, args=(tmp_path, i, log)) for i in range(2)]
    for job in jobs:
        job.start()
    for job in jobs:
        job.join(timeout=60)
    assert len(log) == 1 and (tmp_path / "checkpoints" / "shared.pt").read_text() == f"job {log[0]}\n"


# --------------------------------------------------------------------------- pieces
from test_cache import SHAPE_META, SIZE, cached, ckpts, fake_dp  # noqa: E402,F401  (fixtures)


@pytest.mark.slow
def test_cached_features_are_sharded(fake_dp, cached, ckpts):  # noqa: F811
    """Each rank's loader reads its own part of the frozen-feature cache, together all of it."""
    from diffusion_policy.dataset.pusht_image_dataset import PushTImageDataset

    from dp_sam2.cache import CachedFeatureDataset

    path, _ = cached
    inner = PushTImageDataset(str(path), horizon=4, pad_before=1, pad_after=3)
    ds = CachedFeatureDataset(
        inner,
        cache_path=str(path),
        model_cfg="sam2_tiny",
        checkpoint=str(ckpts[0]),
        image_size=SIZE,
        input_range=[0, 1],
        shape_meta=SHAPE_META,
        n_obs_steps=2,
    )
    cfg = {"batch_size": 3, "num_workers": 0, "shuffle": True}
    shards = []
    for rank in range(2):
        loader = D.make_loader(ds, cfg, D.Dist(rank=rank, world=2), seed=42)
        D.set_epoch(loader, 1)
        assert isinstance(loader.sampler, torch.utils.data.DistributedSampler)
        shards.append(list(loader.sampler))
        batch = next(iter(loader))
        first = ds[shards[-1][0]]
        assert torch.equal(batch["obs"]["image"][0], first["obs"]["image"])  # cached features, not images
        assert tuple(batch["obs"]["image"].shape[2:]) == (256, SIZE // 16, SIZE // 16)
    assert len(shards[0]) == len(shards[1]) == (len(ds) + 1) // 2
    assert set(shards[0]) | set(shards[1]) == set(range(len(ds)))
    assert len(set(shards[0]) & set(shards[1])) <= len(ds) % 2  # DistributedSampler pads to equal length


def test_each_rank_loads_its_own_shard():
    """The quick loop's check of the sharded loader (test_cached_features_are_sharded does it on
    the feature cache): two ranks together read every sample once, DistributedSampler seeded."""
    ds = torch.utils.data.TensorDataset(torch.arange(10))
    shards = []
    for rank in range(2):
        loader = D.make_loader(ds, {"batch_size": 2, "shuffle": True}, D.Dist(rank=rank, world=2), seed=42)
        D.set_epoch(loader, 1)
        assert isinstance(loader.sampler, torch.utils.data.DistributedSampler) and loader.sampler.seed == 42
        shards.append([int(i) for batch in loader for i in batch[0]])
    assert len(shards[0]) == len(shards[1]) == 5 and sorted(shards[0] + shards[1]) == list(range(10))
    with pytest.raises(ValueError, match="sampler / batch_sampler cannot be combined"):
        D.make_loader(ds, {"sampler": [0]}, D.Dist(rank=0, world=2), seed=0)


def test_one_process_loader_is_dps():
    ds = torch.utils.data.TensorDataset(torch.arange(10))
    loader = D.make_loader(ds, {"batch_size": 4, "shuffle": True}, D.Dist(), seed=0)
    assert isinstance(loader.sampler, torch.utils.data.RandomSampler)  # DataLoader(dataset, **cfg.dataloader)


def test_launcher_environment(monkeypatch):
    for name in D.LAUNCHER_ENV:
        monkeypatch.delenv(name, raising=False)
    assert D.init_from_env("cpu") == D.Dist()  # python train.py: nothing distributed
    assert not torch.distributed.is_initialized()
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(ValueError, match="WORLD_SIZE must be an integer"):
        D.launched_world()
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    with pytest.raises(ValueError, match="mixed_precision no"):
        D.check_accelerate_env()


def test_workspace_class_needs_dp_lazily(monkeypatch):
    import importlib

    mod = importlib.import_module("dp_sam2.workspaces.data_parallel")  # no DP needed to import
    monkeypatch.setitem(sys.modules, "diffusion_policy", None)
    with pytest.raises(ImportError, match="real-stanford/diffusion_policy"):
        mod.TrainDiffusionDataParallelWorkspace  # noqa: B018


def test_transformer_policies_get_their_own_optimizer(monkeypatch, tmp_path):
    """cfg.optimizer with transformer_weight_decay -> policy.get_optimizer(**cfg.optimizer), as
    DP's transformer workspaces do; otherwise instantiate(cfg.optimizer, params=...)."""
    from omegaconf import OmegaConf

    monkeypatch.syspath_prepend(str(FAKE_DP))
    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    for name in D.LAUNCHER_ENV:
        monkeypatch.delenv(name, raising=False)
    try:
        from dp_sam2.workspaces.data_parallel import workspace_class

        cls = workspace_class()
        base = {
            "training": {"device": "cpu", "seed": 0, "use_ema": False},
            "policy": {"_target_": "test_ddp.TinyTransformerPolicy"},
        }
        opt = {
            "transformer_weight_decay": 1e-3,
            "obs_encoder_weight_decay": 1e-6,
            "learning_rate": 1e-4,
            "betas": [0.9, 0.95],
        }
        ws = cls(OmegaConf.create({**base, "optimizer": opt}), output_dir=str(tmp_path))
        assert ws.model.optimizer_kwargs == opt and ws.optimizer.param_groups[0]["weight_decay"] == 1e-3
        ws = cls(
            OmegaConf.create({**base, "optimizer": {"_target_": "torch.optim.AdamW", "lr": 1e-3}}),
            output_dir=str(tmp_path),
        )
        assert isinstance(ws.optimizer, torch.optim.AdamW) and ws.output_dir == str(tmp_path)
    finally:
        for name in [m for m in sys.modules if m == "diffusion_policy" or m.startswith("diffusion_policy.")]:
            del sys.modules[name]


class TinyTransformerPolicy(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(2, 2)

    def get_optimizer(self, transformer_weight_decay, obs_encoder_weight_decay, learning_rate, betas):
        self.optimizer_kwargs = {
            "transformer_weight_decay": transformer_weight_decay,
            "obs_encoder_weight_decay": obs_encoder_weight_decay,
            "learning_rate": learning_rate,
            "betas": list(betas),
        }
        return torch.optim.AdamW(
            self.parameters(), lr=learning_rate, betas=tuple(betas), weight_decay=transformer_weight_decay
        )


# --------------------------------------------------------------------------- Ray (DP's multirun)
def test_obs_encoder_group_through_hydra_initialize_and_compose():
    """DP's ray_train_multirun.py composes with hydra.initialize(config_path=<relative>) +
    hydra.compose(...): the obs_encoder group and the shipped workspaces are visible there."""
    import hydra
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    try:
        with hydra.initialize(version_base=None, config_path="fixtures/dp/config"):
            cfg = hydra.compose(
                config_name="train_dp_shaped_workspace",
                overrides=["+obs_encoder@policy.obs_encoder=sam2_tiny", "n_obs_steps=3"],
            )
            assert cfg.policy.obs_encoder._target_ == "dp_sam2.SAM2ObsEncoder"
            assert cfg.policy.obs_encoder.model_cfg == "sam2_tiny" and cfg.policy.n_obs_steps == 3
            cfg = hydra.compose(config_name=CONFIG, overrides=["obs_encoder=sam2.1_tiny"])
            assert cfg._target_ == "dp_sam2.workspaces.data_parallel.TrainDiffusionDataParallelWorkspace"
            assert cfg.policy.obs_encoder.model_cfg == "sam2.1_tiny" and "run_dir" in cfg.multi_run
    finally:
        GlobalHydra.instance().clear()

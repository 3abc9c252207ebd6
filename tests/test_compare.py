"""dp-sam2 compare (issue 25) without DP or real training: the grid, shards, the Hydra overrides each cell
passes, resume / interrupted-cell cleanup / duplicate cells, results.csv, score_dp3, the table and picture,
and the whole command driving a fake DP checkout (train.py / eval.py that write what DP writes, a workspace
class the probe loads). The bash lines of docs/compare.md run here, against that fake checkout."""

from __future__ import annotations

import gzip
import json
import re
import shlex
import sys
import textwrap
from pathlib import Path

import pytest

from dp_sam2.compare import cells as cells_mod
from dp_sam2.compare import grid, report, results
from dp_sam2.tools.cli import main as cli_main

REPO = Path(__file__).resolve().parents[1]

# --------------------------------------------------------------------------- the fake DP checkout
FAKE_WORKSPACE = '''
import copy, dill, torch
from torch import nn

class Model(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.head = nn.Linear(4, 4)
        self.sam2 = "obs_encoder" in cfg.get("policy", {}) and "model_cfg" in cfg.policy.obs_encoder
        if self.sam2:
            self.obs_encoder = nn.Module()
            self.obs_encoder.backbone = nn.Linear(4, 4)
        self.num_inference_steps = int(cfg.policy.get("num_inference_steps", 100))

    def predict_action(self, obs):
        x = next(iter(obs.values()))
        return {"action": torch.zeros(x.shape[0], 8, 4)}

class FakeWorkspace:
    """What DP's BaseWorkspace keeps: model, ema_model, optimizer; DP's payload layout."""
    def __init__(self, cfg, output_dir=None):
        self.cfg = cfg
        self.model = Model(cfg)
        self.ema_model = copy.deepcopy(self.model)
        mode = cfg.get("fake_mode", "head")
        for n, p in self.model.named_parameters():
            p.requires_grad_(mode == "all" or not n.startswith("obs_encoder.backbone"))
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=1e-3)

    def train_one_step(self):
        loss = sum(p.sum() for p in self.model.parameters() if p.requires_grad)
        loss.backward()
        self.optimizer.step()

    def payload(self):
        return {"cfg": self.cfg, "state_dicts": {"model": self.model.state_dict(),
                "ema_model": self.ema_model.state_dict(), "optimizer": self.optimizer.state_dict()},
                "pickles": {"_output_dir": dill.dumps("x")}}

    def load_payload(self, payload, exclude_keys=None, include_keys=None, **kwargs):
        for key, value in payload["state_dicts"].items():
            getattr(self, key).load_state_dict(value)
'''

FAKE_TRAIN = '''
"""Writes what DP's train.py writes: <hydra.run.dir>/logs.json.txt and checkpoints/latest.ckpt."""
import json, os, sys, pathlib, dill, torch
from omegaconf import OmegaConf
from fake_workspace import FakeWorkspace

args = sys.argv[1:]
kv = dict(a.split("=", 1) for a in args if "=" in a and not a.startswith(("--", "~")))
with open(os.environ["FAKE_DP_CALLS"], "a") as f:
    f.write(json.dumps(args) + "\\n")
if os.environ.get("FAKE_DP_FAIL") and os.environ["FAKE_DP_FAIL"] in kv["hydra.run.dir"]:
    sys.exit(3)
run = pathlib.Path(kv["hydra.run.dir"])
(run / "checkpoints").mkdir(parents=True)
epochs, every = int(kv["training.num_epochs"]), int(kv["training.rollout_every"])
seed = int(kv["training.seed"])
sam2 = any(a.startswith("+obs_encoder@") for a in args)
mode = "all" if kv.get("policy.obs_encoder.freeze") == "false" else "head"
cfg = OmegaConf.create({"_target_": "fake_workspace.FakeWorkspace", "n_obs_steps": 2, "obs_dim": 39,
    "fake_mode": mode, "training": {"use_ema": True},
    "policy": {"num_inference_steps": int(kv["policy.num_inference_steps"]),
               **({"obs_encoder": {"model_cfg": "sam2_tiny"}} if sam2 else {})},
    "task": {"env_runner": {"n_test": int(kv["task.env_runner.n_test"])}}})
with open(run / "logs.json.txt", "w") as log:
    step = 0
    for epoch in range(epochs):
        line = {"epoch": epoch, "global_step": step, "train_loss": 1.0 / (epoch + 1)}
        if epoch % every == 0:
            line["test_mean_score"] = round(min(1.0, 0.1 * epoch / every + 0.05 * seed), 4)
        log.write(json.dumps(line) + "\\n")
        step += 3
ws = FakeWorkspace(cfg)
if not os.environ.get("FAKE_DP_NO_TRAIN"):
    ws.train_one_step()
torch.save(ws.payload(), open(run / "checkpoints" / "latest.ckpt", "wb"), pickle_module=dill)
'''

FAKE_EVAL = '''
"""Writes what DP's eval.py writes: <output_dir>/eval_log.json with test_mean_score."""
import json, os, sys, pathlib, dill, torch
args = dict(zip(sys.argv[1::2], sys.argv[2::2]))
out = pathlib.Path(args["-o"])
assert not out.exists(), "eval.py asks before overwriting"
out.mkdir(parents=True)
payload = torch.load(open(args["-c"], "rb"), pickle_module=dill, weights_only=False)
n = payload["cfg"].task.env_runner.n_test
assert "optimizer" not in payload["state_dicts"]
score = 0.5 + 0.01 * (n % 7)
json.dump({"test_mean_score": score, "n_test_seen": n}, open(out / "eval_log.json", "w"))
'''


@pytest.fixture
def fake_dp(tmp_path, monkeypatch):
    """A DP root with fake train.py / eval.py / workspace; SAM 2 weights, demos and the feature cache
    stubbed (the real ones need MetaWorld and minutes of CPU)."""
    root = tmp_path / "dp"
    root.mkdir()
    (root / "train.py").write_text(textwrap.dedent(FAKE_TRAIN))
    (root / "eval.py").write_text(textwrap.dedent(FAKE_EVAL))
    (root / "fake_workspace.py").write_text(textwrap.dedent(FAKE_WORKSPACE))
    calls = tmp_path / "calls.jsonl"
    calls.touch()
    monkeypatch.setenv("FAKE_DP_CALLS", str(calls))
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    weights = tmp_path / "sam2_random.pt"
    weights.write_bytes(b"x")
    monkeypatch.setattr(cells_mod, "sam2_weights", lambda ctx, model: ("random", weights))
    monkeypatch.setattr(cells_mod, "ensure_feature_cache", lambda ctx, zarr_path, model, ckpt: zarr_path)
    monkeypatch.setattr(cells_mod, "task_dataset_target", lambda *a: "dp_sam2.metaworld.dataset.Fake")

    def fake_demos(ctx, task):
        path = cells_mod.demos_path(ctx, task)
        if not path.exists():
            write_buffer(path, ctx.protocol.image_size, n_episodes=ctx.protocol.n_demos)
        return path

    monkeypatch.setattr(cells_mod, "ensure_demos", fake_demos)
    return root, calls


def write_buffer(path: Path, size: int, n_episodes: int) -> None:
    import numpy as np
    import zarr

    root = zarr.open_group(str(path), mode="w")
    ends = np.arange(1, n_episodes + 1, dtype=np.int64) * 5
    data, meta = root.create_group("data"), root.create_group("meta")
    make = "create_array" if hasattr(data, "create_array") else "create_dataset"  # zarr 3 / zarr 2
    getattr(data, make)("img", shape=(int(ends[-1]), size, size, 3), dtype="uint8")
    getattr(meta, make)("episode_ends", data=ends)


def calls_of(calls: Path) -> list[list[str]]:
    return [json.loads(line) for line in calls.read_text().splitlines()]


def compare(*argv) -> int:
    return cli_main(["compare", *argv])


# --------------------------------------------------------------------------- the grid as data
def test_grid_expansion_order_and_names():
    settings = grid.parse_settings("lowdim,resnet18,sam2_tiny", "frozen,lora,finetune")
    assert [(s.encoder, s.mode) for s in settings] == [
        ("lowdim", "state"),
        ("resnet18", "scratch"),
        ("sam2_tiny", "frozen"),
        ("sam2_tiny", "lora"),
        ("sam2_tiny", "finetune"),
    ]
    cells = grid.expand_grid("reach-v3,hammer", settings, [0, 1, 2])
    assert len(cells) == 2 * 5 * 3
    assert cells[0].key == ("reach", "lowdim", "state", 0) and cells[-1].key == ("hammer", "sam2_tiny", "finetune", 2)
    assert len({c.name for c in cells}) == len(cells)
    # any short name, modes only for SAM 2
    assert [s.encoder for s in grid.parse_settings("sam2.1_large,lowdim", "lora")] == ["sam2.1_large", "lowdim"]


@pytest.mark.parametrize(
    "call",
    [
        lambda: grid.parse_settings("resnet50", "frozen"),
        lambda: grid.parse_settings("sam2_tiny", "frozen,partial"),
        lambda: grid.parse_settings("lowdim,lowdim", "frozen"),
        lambda: grid.parse_seeds("0,a"),
        lambda: grid.parse_seeds("0,0"),
        lambda: grid.expand_grid("reach,reach-v3", [grid.Setting("lowdim", "state")], [0]),
        lambda: grid.parse_shard("2/2"),
        lambda: grid.parse_shard("1-2"),
        lambda: grid.get_protocol("tpu"),
    ],
)
def test_bad_grid_input_is_a_value_error(call):
    with pytest.raises(ValueError):
        call()


def test_shards_partition_the_grid():
    cells = grid.expand_grid("a,b,c", grid.parse_settings("lowdim,resnet18,sam2_tiny", "frozen,lora"), [0, 1])
    for n in (1, 2, 3, 7):
        parts = [grid.shard_cells(cells, (i, n)) for i in range(n)]
        assert sorted(c.name for p in parts for c in p) == sorted(c.name for c in cells)
        assert sum(len(p) for p in parts) == len(cells)
    assert grid.parse_shard(None) == (0, 1) and grid.parse_shard("1/4") == (1, 4)


def _paths(frozen=False):
    return grid.CellPaths(
        run_dir="/o/cells/x/train",
        zarr="/o/demos/reach.zarr",
        sam2_checkpoint="/o/w.pt",
        feature_cache="/o/demos/reach.zarr" if frozen else None,
        dataset_target="pkg.Dataset" if frozen else None,
    )


def _kv(overrides):
    return dict(o.split("=", 1) for o in overrides if "=" in o)


def test_overrides_cpu_protocol_per_setting():
    p = grid.get_protocol("cpu")
    lowdim = grid.train_overrides(grid.Cell("reach", grid.Setting("lowdim", "state"), 1), p, _paths())
    kv = _kv(lowdim)
    assert lowdim[0] == "--config-name=train_diffusion_unet_lowdim_workspace" and kv["task"] == "metaworld_lowdim"
    assert kv["policy.model.down_dims"] == "[64,128,256]" and kv["policy.num_inference_steps"] == "10"
    assert kv["policy.noise_scheduler._target_"] == "diffusers.schedulers.scheduling_ddim.DDIMScheduler"
    assert "~policy.noise_scheduler.variance_type" in lowdim
    assert kv["task.env_runner.max_steps"] == "200" and kv["task.env_runner.stop_at_success"] == "true"
    assert kv["task.env_runner.n_test"] == "10" and kv["training.seed"] == "1" and kv["training.device"] == "cpu"
    # 3 periodic evaluations after epoch 0: epochs R, 2R, 3R (the last)
    R = int(kv["training.rollout_every"])
    assert int(kv["training.num_epochs"]) == 3 * R + 1
    assert (
        "task.image_size" not in kv and kv["logging.mode"] == "disabled" and kv["hydra.run.dir"] == "/o/cells/x/train"
    )
    assert kv["checkpoint.topk.k"] == "0"

    res = _kv(grid.train_overrides(grid.Cell("reach", grid.Setting("resnet18", "scratch"), 0), p, _paths()))
    assert res["task"] == "metaworld" and res["policy.down_dims"] == "[64,128,256]"
    assert res["task.image_size"] == "96" and res["task.camera"] == "corner2_dp3"  # objects twice as large
    assert res["policy.obs_encoder.crop_shape"] == "[86,86]" and not any(k.startswith("+obs_encoder") for k in res)

    fro = grid.train_overrides(grid.Cell("reach", grid.Setting("sam2_tiny", "frozen"), 0), p, _paths(frozen=True))
    kf = _kv(fro)
    assert kf["+obs_encoder@policy.obs_encoder"] == "sam2_tiny" and kf["policy.obs_encoder.checkpoint"] == "/o/w.pt"
    assert kf["policy.obs_encoder.freeze"] == "true" and kf["policy.obs_encoder.input_range"] == "[0,1]"
    assert kf["task.dataset._target_"] == "dp_sam2.compare.cached.CachedTaskDataset"
    assert kf["+task.dataset.inner_target"] == "pkg.Dataset"
    assert kf["+task.dataset.cache"].startswith("{cache_path:'/o/demos/reach.zarr',")

    lora = _kv(grid.train_overrides(grid.Cell("reach", grid.Setting("sam2_tiny", "lora"), 0), p, _paths()))
    assert lora["policy.obs_encoder.freeze"] == "false" and int(lora["policy.obs_encoder.lora_rank"]) > 0
    fine = _kv(grid.train_overrides(grid.Cell("reach", grid.Setting("sam2_tiny", "finetune"), 0), p, _paths()))
    assert fine["policy.obs_encoder.freeze"] == "false" and "policy.obs_encoder.lora_rank" not in fine
    assert fine["optimizer._target_"] == "dp_sam2.encoders.obs.finetune.adamw_param_groups"
    with pytest.raises(ValueError, match="feature cache"):
        grid.train_overrides(grid.Cell("reach", grid.Setting("sam2_tiny", "frozen"), 0), p, _paths())


def _dp_train_batches(lengths, p, batch_size, n_val=1):
    """DP's own count, spelled out: create_indices gives an episode a sequence for every start in
    [-pad_before, L - horizon + pad_after]; the n_val held-out episodes (here the longest, the worst case) are not
    trained on; the last partial batch is kept."""
    pad_before, pad_after = p.n_obs_steps - 1, p.n_action_steps - 1
    train = sorted(lengths)[: len(lengths) - n_val]
    sequences = sum(len(range(-pad_before, n - p.horizon + pad_after + 1)) for n in train)
    return -(-sequences // batch_size)


def test_resnet18_cpu_budget_is_counted_in_steps_whatever_the_demos_length():
    """A task with half as long demos has half the batches per epoch: the ResNet-18 cpu budget sets its epochs
    from the demos so both train about the same number of steps (97 epochs of 23 batches reached only 0.68
    on handle-press, 97 of 48 reached 0.90 on button-press); the low-dim budget stays in epochs."""
    p = grid.get_protocol("cpu")
    budget = p.budget("resnet18")
    long_demos, short_demos = [56, 60, 63] * 10, [19, 32, 46] * 10  # as button-press's / handle-press's
    per_long = grid.steps_per_epoch(long_demos, p, budget.batch_size)
    per_short = grid.steps_per_epoch(short_demos, p, budget.batch_size)
    for lengths, per in ((long_demos, per_long), (short_demos, per_short)):
        assert _dp_train_batches(lengths, p, budget.batch_size) <= per <= _dp_train_batches(lengths, p, 32, n_val=0)
    assert per_short < per_long / 1.8
    steps = {}
    for lengths, per in ((long_demos, per_long), (short_demos, per_short)):
        kv = _kv(grid.train_overrides(grid.Cell("t", grid.Setting("resnet18", "scratch"), 0), p, _paths(), (), lengths))
        epochs, every = int(kv["training.num_epochs"]), int(kv["training.rollout_every"])
        assert epochs == 3 * every + 1 and kv["training.checkpoint_every"] == str(every)
        steps[per] = epochs * per
        assert abs(steps[per] - budget.steps) <= 0.05 * budget.steps, (lengths[:3], epochs, per)
    assert grid.train_overrides(grid.Cell("t", grid.Setting("lowdim", "state"), 0), p, _paths(), (), short_demos) == (
        grid.train_overrides(grid.Cell("t", grid.Setting("lowdim", "state"), 0), p, _paths())
    )
    assert "about" in grid.describe_budget(p, "resnet18", short_demos)
    assert grid.describe_budget(p, "lowdim", short_demos) == grid.describe_budget(p, "lowdim")


def test_overrides_gpu_protocol():
    p = grid.get_protocol("gpu")
    kv = _kv(grid.train_overrides(grid.Cell("reach", grid.Setting("resnet18", "scratch"), 2), p, _paths()))
    assert kv["training.device"] == "cuda:0" and kv["training.rollout_every"] == "200"
    assert kv["training.num_epochs"] == "3001" and kv["task.env_runner.n_test"] == "20"
    assert "policy.down_dims" not in kv  # DP's own U-Net
    assert p.n_demos == 10 and p.default_seeds == (0, 1, 2)


# --------------------------------------------------------------------------- results
def test_score_dp3_top5_and_fewer():
    assert results.score_dp3([0.1, 0.9, 0.5, 0.7, 0.3, 1.0, 0.2]) == (
        pytest.approx((1.0 + 0.9 + 0.7 + 0.5 + 0.3) / 5),
        5,
    )
    assert results.score_dp3([0.4, 0.6, 0.8]) == (pytest.approx(0.6), 3)
    with pytest.raises(ValueError):
        results.score_dp3([])
    log = [
        {"epoch": 0, "global_step": 0, "test_mean_score": 0.0},
        {"epoch": 5, "global_step": 50, "test_mean_score": 0.5},
        {"epoch": 6, "global_step": 61},
    ]
    assert results.periodic_scores(log) == [(5, 0.5)] and results.train_steps(log) == 62


def test_dp_log_torn_last_line(tmp_path):
    p = tmp_path / "logs.json.txt"
    p.write_text('{"epoch": 0, "global_step": 0}\n{"epoch": 1, "glo')
    assert results.read_dp_log(p) == [{"epoch": 0, "global_step": 0}]


def _row(task="reach", enc="lowdim", mode="state", seed=0, s=0.9, weights="n/a"):
    return {
        "task": task,
        "encoder": enc,
        "mode": mode,
        "weights": weights,
        "image_size": 96,
        "seed": seed,
        "n_demos": 10,
        "train_steps": 100,
        "wall_s": 60.0,
        "success_last": s,
        "score_dp3": s,
        "latency_ms": 5.0,
        "trainable_params": 1000,
    }


def test_csv_columns_exact_and_merge_duplicate_is_error(tmp_path):
    text = results.to_csv([_row(seed=1), _row(seed=0)])
    assert (
        text.splitlines()[0]
        == ",".join(results.COLUMNS)
        == (
            "task,encoder,mode,weights,image_size,seed,n_demos,train_steps,wall_s,success_last,score_dp3,"
            "latency_ms,trainable_params"
        )
    )
    with pytest.raises(ValueError, match="exactly the columns"):
        results.to_csv([{**_row(), "extra": 1}])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        results.to_csv([_row(s=1.5)])
    with pytest.raises(ValueError, match="written twice"):
        results.merge_rows([("a", [_row()]), ("b", [_row(s=0.1)])])
    assert len(results.merge_rows([("a", [_row()]), ("b", [_row(seed=1)])])) == 2


def test_table_and_picture_agree_with_csv(tmp_path):
    pytest.importorskip("matplotlib")
    rows = [
        _row(seed=0, s=0.8),
        _row(seed=1, s=1.0),
        _row(enc="resnet18", mode="scratch", s=0.6, weights="scratch"),
        _row(enc="sam2_tiny", mode="frozen", s=0.2, weights="random"),
        _row(task="hammer", enc="sam2_tiny", mode="lora", s=0.4, weights="random"),
    ]
    (tmp_path / "results.csv").write_text(results.to_csv(rows))
    back = results.read_csv(tmp_path / "results.csv")
    report.write_report(tmp_path, back)
    md = (tmp_path / "results.md").read_text()
    table = [line for line in md.splitlines() if line.startswith("| ") and "---" not in line][1:]
    parsed = {}
    for line in table:
        cells = [c.strip() for c in line.strip("|").split("|")]
        parsed[(cells[0], cells[1])] = float(cells[3].split("±")[0])
    assert parsed == {
        ("hammer", "sam2_tiny lora (random weights)"): 0.4,
        ("reach", "lowdim"): 0.9,
        ("reach", "resnet18"): 0.6,
        ("reach", "sam2_tiny frozen (random weights)"): 0.2,
    }
    fig = report.plot(back, tmp_path / "p.png")
    ax = fig.axes[0]
    heights = {}
    for container in ax.containers:
        if hasattr(container, "patches"):
            heights[container.get_label()] = sorted(round(b.get_height(), 6) for b in container.patches)
    assert heights == {
        "lowdim": [0.9],
        "resnet18": [0.6],
        "sam2_tiny frozen (random weights)": [0.2],
        "sam2_tiny lora (random weights)": [0.4],
    }
    assert (tmp_path / "results.png").stat().st_size > 1000


def test_picture_without_matplotlib_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(ImportError, match="pip install matplotlib"):
        report.plot([_row()], tmp_path / "p.png")


# --------------------------------------------------------------------------- the command on a fake DP
@pytest.mark.slow
def test_compare_end_to_end_resume_and_rerun_skips(fake_dp, tmp_path):
    pytest.importorskip("matplotlib")
    root, calls = fake_dp
    out = tmp_path / "out"
    argv = ["--tasks", "reach-v3", "--encoders", "lowdim,sam2_tiny", "--modes", "frozen,lora", "--seeds", "0,1"]
    argv += ["--protocol", "cpu", "--dp-root", str(root), "--out", str(out)]
    assert compare(*argv) == 0
    rows = results.read_csv(out / "results.csv")
    assert len(rows) == 3 * 2 and len(calls_of(calls)) == 6
    assert {r["weights"] for r in rows if r["encoder"] == "sam2_tiny"} == {"random"}
    assert {r["weights"] for r in rows if r["encoder"] == "lowdim"} == {"n/a"}
    r0 = next(r for r in rows if r["task"] == "reach" and r["encoder"] == "lowdim" and r["seed"] == "0")
    # the fake logs 0.1 per periodic evaluation: epochs R, 2R, 3R -> 0.1, 0.2, 0.3; eval.py saw 50 episodes
    assert float(r0["score_dp3"]) == pytest.approx(0.2)
    assert float(r0["success_last"]) == pytest.approx(0.5 + 0.01 * (50 % 7))
    budget = grid.get_protocol("cpu").budget("lowdim")
    epochs, every = budget.num_epochs(3), budget.rollout_every  # the fake DP runs 3 steps an epoch
    assert int(r0["train_steps"]) == 3 * epochs - 2 and r0["image_size"] == "n/a"
    assert r0["n_demos"] == str(grid.get_protocol("cpu").n_demos)
    assert all(int(r["trainable_params"]) > 0 for r in rows) and all(float(r["latency_ms"]) >= 0 for r in rows)
    lora = next(r for r in rows if r["mode"] == "lora")
    frozen = next(r for r in rows if r["mode"] == "frozen")
    assert int(lora["trainable_params"]) > int(frozen["trainable_params"])  # the backbone trained too
    res = json.loads((out / "cells" / "reach__lowdim__state__seed0" / "result.json").read_text())
    assert res["score_dp3_of"] == 3 and [e for e, _ in res["periodic"]] == [every, 2 * every, 3 * every]
    assert not list((out / "cells").glob("*/final_eval.ckpt"))  # removed after eval.py
    assert (out / "results.png").is_file() and "random weights" in (out / "results.md").read_text()
    # a rerun skips every finished cell: no train.py call
    assert compare(*argv) == 0
    assert len(calls_of(calls)) == 6
    assert results.read_csv(out / "results.csv") == rows


@pytest.mark.slow
def test_interrupted_cell_starts_again_cleanly(fake_dp, tmp_path, monkeypatch):
    root, calls = fake_dp
    out = tmp_path / "out"
    argv = ["--tasks", "reach", "--encoders", "lowdim", "--seeds", "0,1", "--dp-root", str(root), "--out", str(out)]
    monkeypatch.setenv("FAKE_DP_FAIL", "seed1")
    assert compare(*argv) == 1  # seed 1 failed, seed 0 finished
    tmp = out / "cells" / ".reach__lowdim__state__seed1.tmp"
    assert tmp.is_dir() and not (out / "cells" / "reach__lowdim__state__seed1").exists()
    assert [r["seed"] for r in results.read_csv(out / "results.csv")] == ["0"]
    (tmp / "stale_marker").write_text("from the interrupted attempt")
    monkeypatch.delenv("FAKE_DP_FAIL")
    assert compare(*argv) == 0
    done = out / "cells" / "reach__lowdim__state__seed1"
    assert done.is_dir() and not tmp.exists() and not (done / "stale_marker").exists()
    assert len(calls_of(calls)) == 3  # seed 0 once, seed 1 twice
    assert [r["seed"] for r in results.read_csv(out / "results.csv")] == ["0", "1"]


def test_setting_that_trains_nothing_is_a_defect(fake_dp, tmp_path, monkeypatch, capsys):
    root, _ = fake_dp
    monkeypatch.setenv("FAKE_DP_NO_TRAIN", "1")
    out = tmp_path / "out"
    argv = ["--tasks", "reach", "--encoders", "sam2_tiny", "--modes", "lora", "--seeds", "0"]
    assert compare(*argv, "--dp-root", str(root), "--out", str(out)) == 1
    assert results.read_csv(out / "results.csv") == []
    assert "no parameter trained" in capsys.readouterr().err
    assert not (out / "cells" / "reach__sam2_tiny__lora__seed0").exists()


@pytest.mark.slow
def test_shards_merge_and_duplicate_cell_is_an_error(fake_dp, tmp_path):
    root, calls = fake_dp
    common = ["--tasks", "reach", "--encoders", "lowdim,resnet18", "--seeds", "0,1", "--dp-root", str(root)]
    for i in range(2):
        assert compare(*common, "--shard", f"{i}/2", "--out", str(tmp_path / f"s{i}")) == 0
    s0, s1 = (results.read_csv(tmp_path / f"s{i}" / "results.csv") for i in range(2))
    assert len(s0) == len(s1) == 2 and not {results.row_key(r) for r in s0} & {results.row_key(r) for r in s1}
    merged = tmp_path / "merged"
    assert compare("--merge", str(tmp_path / "s0"), str(tmp_path / "s1"), "--out", str(merged)) == 0
    assert len(results.read_csv(merged / "results.csv")) == 4
    assert not list((merged / "cells").rglob("*.ckpt"))
    # merging a shard again: every cell would be written twice
    with pytest.raises(ValueError, match="written twice"):
        from dp_sam2.compare.run import merge_dirs

        merge_dirs([str(tmp_path / "s0")], merged)
    assert compare("--merge", str(tmp_path / "s0"), "--out", str(merged)) == 1


def test_out_folder_keeps_its_protocol(fake_dp, tmp_path):
    root, _ = fake_dp
    out = tmp_path / "out"
    base = ["--tasks", "reach", "--encoders", "lowdim", "--seeds", "0", "--dp-root", str(root), "--out", str(out)]
    assert compare(*base) == 0
    assert compare(*base, "--train-override", "training.num_epochs=4") == 1  # ValueError -> exit 1


def test_folder_of_the_far_camera_is_not_resumed_under_the_moved_one(tmp_path):
    from dp_sam2.compare.run import _check_run_config

    cpu = grid.get_protocol("cpu")
    (tmp_path / "compare.json").write_text(json.dumps({"protocol": "cpu", "train_override": []}))  # as 0.3.2 wrote
    with pytest.raises(ValueError, match=r"was made with .*'protocol': 'cpu'.* asks for .*'camera': 'corner2_dp3'"):
        _check_run_config(tmp_path, cpu, [])
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    _check_run_config(fresh, cpu, [])
    _check_run_config(fresh, cpu, [])  # the same protocol again: accepted
    assert json.loads((fresh / "compare.json").read_text())["camera"] == "corner2_dp3"


def test_cli_errors(tmp_path):
    assert compare("--out", str(tmp_path)) == 1  # nothing to do
    assert compare("--tasks", "reach", "--out", str(tmp_path)) == 1  # no --dp-root
    assert compare("--tasks", "reach", "--dp-root", str(tmp_path), "--out", str(tmp_path / "o")) == 1  # no train.py


def test_latency_skipped_when_measured(tmp_path, capsys):
    (tmp_path / "latency.csv").write_text("model\n")
    assert compare("--latency", "--dp-root", str(tmp_path), "--out", str(tmp_path)) == 0
    assert "not re-measured" in capsys.readouterr().out


def test_cpu_class_names():
    from dp_sam2.compare.latency import cpu_class, has_bf16

    assert cpu_class("flags\t: fpu avx2 fma\n") == "AVX2"
    assert cpu_class("flags\t: avx2 avx512f\n") == "AVX-512 (no BF16)"
    c = cpu_class("flags\t: avx2 avx512f avx512_bf16 amx_tile\n")
    assert c == "AVX-512 + AVX512-BF16 + AMX" and has_bf16(c) and not has_bf16("AVX-512 (no BF16)")


# --------------------------------------------------------------------------- docs/compare.md
def docs_commands() -> list[str]:
    text = (REPO / "docs" / "compare.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", text, flags=re.S)
    return [line for b in blocks for line in b.splitlines() if line.strip() and not line.startswith("#")]


def test_docs_first_compare_line_is_cpu_and_one_line_each():
    lines = docs_commands()
    compare_lines = [c for c in lines if c.startswith("dp-sam2 compare")]
    assert compare_lines and "--protocol cpu" in compare_lines[0]
    assert all(not c.endswith("\\") for c in lines)


@pytest.mark.slow
def test_docs_commands_run_against_a_fake_dp(fake_dp, tmp_path, monkeypatch):
    """Each ``dp-sam2 compare`` line of docs/compare.md, as written, with the DP path pointing at the fake
    checkout and the output folder in a temporary one (latency lines are run with a measured file present)."""
    pytest.importorskip("matplotlib")
    root, calls = fake_dp
    monkeypatch.chdir(tmp_path)
    ran = 0
    for line in docs_commands():
        argv = shlex.split(line)
        if argv[:2] != ["dp-sam2", "compare"]:
            continue
        argv = [str(root) if a == "/path/to/diffusion_policy" else a for a in argv[2:]]
        if "--protocol" in argv and argv[argv.index("--protocol") + 1] == "gpu":
            continue  # needs CUDA: its overrides are tested above
        if "--latency" in argv:
            out = Path(argv[argv.index("--out") + 1])
            out.mkdir(parents=True, exist_ok=True)
            (out / "latency.csv").write_text("model\n")
        assert compare(*argv) == 0, line
        ran += 1
    assert ran >= 5
    assert len(results.read_csv(tmp_path / "compare_merged" / "results.csv")) == 4


def test_random_weights_file_loads_as_an_official_checkpoint(tmp_path):
    """Without the official file, every SAM 2 cell of a folder (and its feature cache) loads one random-init file
    written in the official format, through the real loading path."""
    import torch

    from dp_sam2 import SAM2ObsEncoder

    path = tmp_path / "sam2_hiera_tiny.random-init-seed0.pt"
    cells_mod.write_random_weights("sam2_tiny", path)
    state = torch.load(path, weights_only=True)["model"]
    shape_meta = {"obs": {"image": {"shape": [3, 64, 64], "type": "rgb"}}, "action": {"shape": [4]}}
    enc = SAM2ObsEncoder(shape_meta, model_cfg="sam2_tiny", checkpoint=str(path), image_size=64)
    w = enc.backbone.image_encoder.trunk.patch_embed.proj.weight
    assert torch.equal(w, state["image_encoder.trunk.patch_embed.proj.weight"])
    before = path.stat().st_mtime_ns
    cells_mod.write_random_weights("sam2_tiny", tmp_path / "again.pt")  # seed 0: the same weights every time
    again = torch.load(tmp_path / "again.pt", weights_only=True)["model"]
    assert all(torch.equal(state[k], again[k]) for k in ("image_encoder.trunk.patch_embed.proj.weight", "no_mem_embed"))
    assert path.stat().st_mtime_ns == before


# --------------------------------------------------------------------------- the measured table as committed
MEASURED = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "compare_cpu"
DOCS_COMPARE = Path(__file__).resolve().parents[1] / "docs" / "compare.md"


def test_measured_results_come_from_their_runs():
    """benchmarks/results/compare_cpu: results.csv and results.md are what the cells' result.json give, and each
    row's train_steps, periodic evaluations and score_dp3 are DP's own step log, success_last eval.py's log,
    trainable_params the probe's count; the docs' table says the same numbers."""
    found = results.cell_rows(MEASURED)
    rows = results.merge_rows(found)
    assert len(rows) >= 6
    assert (MEASURED / "results.csv").read_text() == results.to_csv(rows)
    md = (MEASURED / "results.md").read_text()
    assert md == report.markdown_table(rows, "dp-sam2 compare, cpu protocol")
    # docs/compare.md "Measured here": | task (set) | encoder | weights | train steps | success_last | score_dp3 | ...
    docs = [
        [c.strip() for c in line.split("|")[1:-1]]
        for line in DOCS_COMPARE.read_text().splitlines()
        if re.match(r"\| [a-z-]+ \((easy|medium|hard|very hard)\) \|", line)
    ]
    for where, (row,) in found:
        cell = Path(where)
        res = json.loads((cell / "result.json").read_text())
        with gzip.open(cell / "train" / "logs.json.txt.gz", "rt") as f:
            log = [json.loads(line) for line in f if line.strip()]
        periodic = results.periodic_scores(log)
        assert [list(p) for p in periodic] == res["periodic"], cell.name
        assert row["train_steps"] == results.train_steps(log), cell.name
        assert row["score_dp3"] == pytest.approx(results.score_dp3([s for _, s in periodic])[0]), cell.name
        assert row["success_last"] == json.loads((cell / "eval" / "eval_log.json").read_text())["test_mean_score"]
        assert row["trainable_params"] == json.loads((cell / "probe.json").read_text())["trainable_params"] > 0
        label = grid.Setting(row["encoder"], row["mode"]).label
        line = [d for d in docs if d[0].split(" (")[0] == row["task"] and d[1] == label]
        assert len(line) == 1, f"docs/compare.md: one measured line for {cell.name}, found {line}"
        steps, success, score = line[0][3:6]
        assert (steps, success.strip("*"), score) == (
            f"{row['train_steps']:,}",
            f"{row['success_last']:.2f}",
            f"{row['score_dp3']:.2f}",
        ), line[0]
        assert ("random weights" in line[0][2]) == (row["weights"] == "random"), line[0]

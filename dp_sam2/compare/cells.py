"""Running one cell: demos (once per task), SAM 2 weights and feature cache (once per task and model),
DP's ``train.py``, the probe (trained parameters, latency), DP's ``eval.py`` on the final episodes, and
the row.

A cell is built in ``cells/.<cell>.tmp`` and renamed to ``cells/<cell>`` only when its
``result.json`` is written: a folder without the dot is a finished cell (skipped on rerun); a ``.tmp``
folder is an interrupted or failed one, removed when the cell starts again. Every DP program runs as a
subprocess in the user's DP checkout (``cwd = --dp-root``) with the Python given (default: this one).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from dp_sam2.compare import grid
from dp_sam2.compare.results import periodic_scores, read_dp_log, score_dp3, train_steps


class CellError(RuntimeError):
    """A cell that did not produce a row (the message says which step and where its log is)."""


@dataclass
class Context:
    """What every cell of one run shares."""

    dp_root: Path
    out_dir: Path
    protocol: grid.Protocol
    python: str
    extra_overrides: list[str] = field(default_factory=list)
    env: dict = field(default_factory=dict)  # added to the subprocesses' environment
    log: object = print

    def __post_init__(self) -> None:
        self.dp_root = Path(self.dp_root).resolve()
        self.out_dir = Path(self.out_dir).resolve()
        for name in ("train.py", "eval.py"):
            if not (self.dp_root / name).is_file():
                raise FileNotFoundError(
                    f"--dp-root must be a Diffusion Policy checkout holding train.py and eval.py; "
                    f"{self.dp_root / name} does not exist"
                )

    @property
    def cells_dir(self) -> Path:
        return self.out_dir / "cells"


def run_logged(cmd: list[str], cwd: Path, log_path: Path, env: dict, what: str) -> float:
    """Run ``cmd`` with stdout+stderr into ``log_path``; the wall time in seconds. A non-zero exit is a
    :class:`CellError` quoting the log's last lines."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    full_env = {**os.environ, **env}
    t0 = time.perf_counter()
    with open(log_path, "w") as log:
        log.write("$ " + " ".join(cmd) + f"\n# cwd: {cwd}\n")
        log.flush()
        rc = subprocess.call(cmd, cwd=cwd, stdout=log, stderr=subprocess.STDOUT, env=full_env)
    wall = time.perf_counter() - t0
    if rc != 0:
        tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-15:])
        raise CellError(f"{what} exited with {rc} (log: {log_path}); its last lines:\n{tail}")
    return wall


# --------------------------------------------------------------------------- shared per task / model
def demos_path(ctx: Context, task: str) -> Path:
    p = ctx.protocol
    name = f"{task}-{p.camera}-{p.image_size}px-{p.n_demos}demos-seed{p.demo_seed}.zarr"
    return ctx.out_dir / "demos" / name


def ensure_demos(ctx: Context, task: str) -> Path:
    """The task's expert demos (``dp-sam2 metaworld-demos``), collected once and reused by every cell;
    written under a temporary name and renamed when complete."""
    final = demos_path(ctx, task)
    if final.exists():
        return final
    p = ctx.protocol
    tmp = final.with_name(f".tmp-{os.getpid()}-{final.name}")
    shutil.rmtree(tmp, ignore_errors=True)
    cmd = [ctx.python, "-m", "dp_sam2.cli", "metaworld-demos", "--task", task, "--episodes", str(p.n_demos)]
    cmd += ["--image-size", str(p.image_size), "--camera", p.camera, "--seed", str(p.demo_seed), "--out", str(tmp)]
    ctx.log(f"[compare] collecting {p.n_demos} demos of {task}")
    run_logged(cmd, ctx.dp_root, final.with_name(final.name + ".log"), ctx.env, f"metaworld-demos for {task}")
    if not tmp.exists():
        raise CellError(f"metaworld-demos exited 0 but wrote nothing at {tmp}")
    try:
        os.rename(tmp, final)
    except OSError:  # another shard finished the same (deterministic) demos first
        if not final.exists():
            raise
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def buffer_facts(zarr_path: Path) -> dict:
    """``n_demos``, ``image_size``, ``n_frames`` and ``episode_lengths`` of a replay buffer."""
    import zarr

    root = zarr.open_group(str(zarr_path), mode="r")
    ends = root["meta"]["episode_ends"][:]
    img = root["data"]["img"].shape if "img" in root["data"] else None
    return {
        "n_demos": int(len(ends)),
        "image_size": int(img[1]) if img is not None else None,
        "n_frames": int(ends[-1]),
        "episode_lengths": [int(b - a) for a, b in zip([0, *ends[:-1]], ends, strict=True)],
    }


def sam2_weights(ctx: Context, model: str) -> tuple[str, Path]:
    """``("official", path)`` when the official file is found (dp_sam2's lookup, then ``<dp-root>/checkpoints``),
    else ``("random", path)`` of a random-init file in the official format (seed 0), made once under
    ``<out>/weights``: the feature cache and every SAM 2 policy of the run then share the same weights."""
    from dp_sam2.checkpoints.registry import get_spec
    from dp_sam2.checkpoints.resolve import find_weights

    spec = get_spec(model)
    found = find_weights(spec.name, None, random_weights=True, warn=False)
    if found is None and (ctx.dp_root / "checkpoints" / spec.filename).is_file():
        found = ctx.dp_root / "checkpoints" / spec.filename
    if found is not None:
        return "official", Path(found).resolve()
    path = ctx.out_dir / "weights" / f"{Path(spec.filename).stem}.random-init-seed0.pt"
    if not path.exists():
        ctx.log(f"[compare] no official {spec.name} file: writing random-init weights (seed 0) to {path}")
        write_random_weights(spec.name, path)
    return "random", path


def write_random_weights(model: str, path: Path) -> None:
    """A SAM 2 checkpoint in the official format (``{"model": state_dict}``, every official key) holding
    the random init drawn from seed 0."""
    import torch

    from dp_sam2 import build_sam2
    from dp_sam2.checkpoints.registry import get_spec

    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        sam = build_sam2(get_spec(model).config, ckpt_path=None, device="cpu")
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    torch.save({"model": sam.state_dict()}, tmp)
    os.replace(tmp, path)


def ensure_feature_cache(ctx: Context, zarr_path: Path, model: str, checkpoint: Path) -> Path:
    """``dp-sam2 cache-features`` on the task's demos (inside the buffer; it resumes by itself)."""
    cmd = [ctx.python, "-m", "dp_sam2.cli", "cache-features", "--zarr", str(zarr_path), "--obs-encoder", model]
    cmd += ["--checkpoint", str(checkpoint), "--no-progress"]
    if ctx.protocol.device != "cpu":
        cmd += ["--device", ctx.protocol.device]
    log = zarr_path.with_name(f"{zarr_path.name}.cache-{model}.log")
    ctx.log(f"[compare] caching {model} features of {zarr_path.name}")
    run_logged(cmd, ctx.dp_root, log, ctx.env, f"cache-features for {zarr_path.name}")
    return zarr_path


def task_dataset_target(task_group_file: str = "metaworld") -> str:
    """The ``_target_`` of the image task's dataset (read from dp_sam2's task group file)."""
    from importlib.resources import files

    from omegaconf import OmegaConf

    path = files("dp_sam2.configs").joinpath("task", f"{task_group_file}.yaml")
    if not path.is_file():
        raise FileNotFoundError(f"the MetaWorld DP task is not installed: {path} does not exist (issue 24)")
    cfg = OmegaConf.load(str(path))
    target = OmegaConf.select(cfg, "dataset._target_")
    if not isinstance(target, str):
        raise ValueError(f"{path}: expected dataset._target_ to be a dotted path, got {target!r}")
    return target


# --------------------------------------------------------------------------- one cell
def is_done(ctx: Context, cell: grid.Cell) -> bool:
    return (ctx.cells_dir / cell.name / "result.json").is_file()


def run_cell(ctx: Context, cell: grid.Cell, dataset_target=None) -> dict:
    """Run ``cell`` and return its row (``result.json``'s ``row``). A finished cell is not redone."""
    final = ctx.cells_dir / cell.name
    if (final / "result.json").is_file():
        return json.loads((final / "result.json").read_text())["row"]
    tmp = ctx.cells_dir / f".{cell.name}.tmp"
    if tmp.exists():
        ctx.log(f"[compare] {cell.name}: removing the interrupted attempt {tmp}")
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    p = ctx.protocol
    t_start = time.time()

    zarr_path = ensure_demos(ctx, cell.task)
    facts = buffer_facts(zarr_path)
    weights, ckpt, cache = ("scratch" if cell.encoder == grid.RESNET18 else "n/a"), None, None
    cache_s = 0.0
    if cell.setting.is_sam2:
        weights, ckpt = sam2_weights(ctx, cell.encoder)
        if cell.mode == "frozen":
            t0 = time.perf_counter()
            cache = ensure_feature_cache(ctx, zarr_path, cell.encoder, ckpt)
            cache_s = time.perf_counter() - t0
            if dataset_target is None:
                dataset_target = task_dataset_target(grid.TASK_KEYS["image_task"])
    run_dir = tmp / "train"
    paths = grid.CellPaths(
        run_dir=str(run_dir),
        zarr=str(zarr_path),
        sam2_checkpoint=str(ckpt) if ckpt else None,
        feature_cache=str(cache) if cache else None,
        dataset_target=dataset_target if cache else None,
    )
    overrides = grid.train_overrides(cell, p, paths, ctx.extra_overrides, facts["episode_lengths"])
    spec = {"cell": cell.name, "protocol": p.as_dict(), "train_overrides": overrides, "weights": weights}
    (tmp / "cell.json").write_text(json.dumps(spec, indent=2))

    budget = grid.describe_budget(p, cell.setting.kind, facts["episode_lengths"])
    if ctx.extra_overrides:
        budget += ", then " + " ".join(ctx.extra_overrides)
    ctx.log(f"[compare] {cell.name}: training ({budget})")
    train_s = run_logged([ctx.python, "train.py", *overrides], ctx.dp_root, tmp / "train.log", ctx.env, "train.py")
    log = read_dp_log(_find(run_dir, "logs.json.txt"))
    periodic = periodic_scores(log)
    dp3, k_used = score_dp3([s for _, s in periodic])
    latest = _find(run_dir / "checkpoints", "latest.ckpt")

    eval_ckpt = tmp / "final_eval.ckpt"
    sets = [f"--set={k}={json.dumps(v)}" for k, v in grid.eval_overrides(p).items()]
    probe_cmd = [ctx.python, "-m", "dp_sam2.compare.probe", "--checkpoint", str(latest), "--eval-ckpt", str(eval_ckpt)]
    probe_cmd += [*sets, "--device", p.device, "--out", str(tmp / "probe.json")]
    probe_s = run_logged(probe_cmd, ctx.dp_root, tmp / "probe.log", ctx.env, "the probe (trained parameters, latency)")
    probe = json.loads((tmp / "probe.json").read_text())
    check_trained(cell, probe)

    ctx.log(f"[compare] {cell.name}: final evaluation ({p.final_episodes} episodes, eval.py)")
    eval_cmd = [ctx.python, "eval.py", "-c", str(eval_ckpt), "-o", str(tmp / "eval"), "-d", p.device]
    eval_s = run_logged(eval_cmd, ctx.dp_root, tmp / "eval.log", ctx.env, "eval.py")
    eval_ckpt.unlink(missing_ok=True)
    eval_log = json.loads((tmp / "eval" / "eval_log.json").read_text())
    success = float(eval_log["test_mean_score"])
    if not 0.0 <= success <= 1.0:
        raise CellError(f"{cell.name}: eval.py's test_mean_score is {success}, expected a success rate in [0, 1]")

    row = {
        "task": cell.task,
        "encoder": cell.encoder,
        "mode": cell.mode,
        "weights": weights,
        "image_size": facts["image_size"] if cell.encoder != grid.LOWDIM else "n/a",
        "seed": cell.seed,
        "n_demos": facts["n_demos"],
        "train_steps": train_steps(log),
        "wall_s": round(train_s + probe_s + eval_s, 1),
        "success_last": success,
        "score_dp3": dp3,
        "latency_ms": round(float(probe["latency_ms"]), 2),
        "trainable_params": int(probe["trainable_params"]),
    }
    result = {
        "row": row,
        "periodic": periodic,
        "score_dp3_of": k_used,
        "probe": probe,
        "seconds": {"train": train_s, "probe": probe_s, "eval": eval_s, "feature_cache": cache_s},
        "started": t_start,
        "finished": time.time(),
    }
    (tmp / "result.json").write_text(json.dumps(result, indent=2))
    try:
        os.rename(tmp, final)
    except OSError as err:
        raise ValueError(
            f"cell {cell.name} was written twice: {final} already exists (another run or shard finished it); "
            f"this attempt is left in {tmp}"
        ) from err
    return row


def check_trained(cell: grid.Cell, probe: dict) -> None:
    """A cell whose encoder setting trained nothing is a defect, not a row."""
    n = int(probe.get("trainable_params", 0))
    if n <= 0:
        raise CellError(f"{cell.name}: no parameter trained (the optimizer holds no state); this setting is broken")
    if cell.setting.is_sam2 and cell.mode in ("lora", "finetune") and int(probe.get("backbone_trained", 0)) <= 0:
        raise CellError(f"{cell.name}: mode {cell.mode} trained no SAM 2 backbone parameter (only {n} in the rest)")


def _find(root: Path, name: str) -> Path:
    hits = sorted(Path(root).rglob(name))
    if not hits:
        raise CellError(f"DP wrote no {name} under {root}")
    return hits[0]

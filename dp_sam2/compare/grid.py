"""The comparison grid as data: protocols, encoder settings, cells, shards, and the Hydra overrides
each cell hands to Diffusion Policy's unchanged ``train.py``.

Nothing here runs anything: :mod:`dp_sam2.compare.cells` runs a cell, :mod:`dp_sam2.compare.run`
the grid. Every DP / MetaWorld-task key the harness sets is written once, in :data:`TASK_KEYS` and
:func:`train_overrides`, so a renamed key is a one-line change.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from dp_sam2.compare.budget import Budget, steps_per_epoch

# The encoders that are not SAM 2 (SAM 2 encoders are any registry short name: sam2_tiny, sam2.1_large ...)
LOWDIM = "lowdim"
RESNET18 = "resnet18"
SAM2_MODES = ("frozen", "lora", "finetune")
# the `mode` column of the rows that are not SAM 2
MODE_OF = {LOWDIM: "state", RESNET18: "scratch"}

# The MetaWorld DP task's keys (issue 24's interface; dp_sam2/configs/task/metaworld*.yaml).
TASK_KEYS = {
    "image_task": "metaworld",  # task=metaworld (image; DP's train_diffusion_unet_image_workspace)
    "lowdim_task": "metaworld_lowdim",  # task=metaworld_lowdim (DP's train_diffusion_unet_lowdim_workspace)
    "env_name": "task.env_name",
    "zarr_path": "task.dataset.zarr_path",
    "image_size": "task.image_size",
    "camera": "task.camera",
    "n_test": "task.env_runner.n_test",
    "n_test_vis": "task.env_runner.n_test_vis",
    "max_steps": "task.env_runner.max_steps",
    "test_start_seed": "task.env_runner.test_start_seed",
    "stop_at_success": "task.env_runner.stop_at_success",
}
IMAGE_WORKSPACE = "train_diffusion_unet_image_workspace"
LOWDIM_WORKSPACE = "train_diffusion_unet_lowdim_workspace"
DDIM = "diffusers.schedulers.scheduling_ddim.DDIMScheduler"


@dataclass(frozen=True)
class Protocol:
    """One documented way to train and evaluate every cell (``cpu`` or ``gpu``)."""

    name: str
    device: str
    n_demos: int
    image_size: int  # camera image (px), as rendered into the demos and by the runner
    camera: str
    horizon: int
    n_obs_steps: int
    n_action_steps: int
    ddim_steps: int
    down_dims: tuple[int, ...] | None  # None: DP's default U-Net
    max_steps: int  # episode length; episodes stop at success
    n_evals: int  # periodic evaluations after training starts
    eval_episodes: int  # per periodic evaluation
    final_episodes: int  # the last checkpoint, evaluated once more (success_last)
    final_seed: int  # test_start_seed of the final evaluation (the periodic ones use the task's)
    demo_seed: int
    lr_warmup_steps: int
    num_workers: int
    budgets: dict = field(default_factory=dict)  # kind -> Budget; kinds: lowdim, resnet18, frozen, lora, finetune
    default_seeds: tuple[int, ...] = (0,)

    def budget(self, kind: str) -> Budget:
        return self.budgets[kind]

    @property
    def crop(self) -> int:
        """DP's random-crop size for image encoders that train end to end (DP: 76 of 84 px)."""
        return 2 * round(0.9 * self.image_size / 2)

    def as_dict(self) -> dict:
        d = asdict(self)
        d["budgets"] = {k: asdict(v) for k, v in self.budgets.items()}
        return d


PROTOCOLS = {
    # Two loaded CPU cores. Small U-Net, DDIM 10, episodes <= 200 steps stopping at success, 3 periodic
    # evaluations of 10 episodes, 50 final ones; 30 demos (10 left test starts outside the demos' range).
    # Budgets aim at ~20 min for low-dim / cached cells and ~2 h for end-to-end image cells, measured one
    # thread per cell (docs/compare.md): low-dim ~0.2 s a step at batch 64 (~5,000 steps), ResNet-18 + this
    # U-Net ~2-3 s at 86 px crops, batch 32 x 2 frames (0.83 s alone on two idle cores, two threads; 97 epochs:
    # 4,656 steps on button-press reached 0.90, where 49 epochs reached only 0.52), SAM 2 tiny LoRA / finetune
    # at 224 px ~40 s (~190 steps: the path trains, no more). Camera corner2_dp3 (corner2 moved closer, as DP3's
    # code): from MetaWorld's far corner2, ResNet-18 on handle-press could not place the handle (training action
    # MSE stuck at 0.27, button-press 0.07) and reached 0.68 at 2,231 steps, 0.60 at 4,646.
    "cpu": Protocol(
        name="cpu",
        device="cpu",
        n_demos=30,
        image_size=96,
        camera="corner2_dp3",
        horizon=16,
        n_obs_steps=2,
        n_action_steps=8,
        ddim_steps=10,
        down_dims=(64, 128, 256),
        max_steps=200,
        n_evals=3,
        eval_episodes=10,
        final_episodes=50,
        final_seed=200000,
        demo_seed=0,
        lr_warmup_steps=100,
        num_workers=0,
        budgets={
            "lowdim": Budget(rollout_every=70, batch_size=64),
            # 3 x 32 epochs of button-press's 48 batches: 4,656 steps there reached 0.90 (2,352: 0.52); handle-press,
            # 23 batches an epoch, reached only 0.68 on 97 epochs (2,231 steps), so the length is in steps
            "resnet18": Budget(rollout_every=32, batch_size=32, steps=3 * 32 * 48),
            "frozen": Budget(rollout_every=15, batch_size=32),
            "lora": Budget(rollout_every=1, batch_size=32),
            "finetune": Budget(rollout_every=1, batch_size=32),
        },
        default_seeds=(0,),
    ),
    # As close to the 3D Diffusion Policy paper's as is reasonable: 10 demos, 3 seeds, 3000 epochs, evaluation
    # every 200 epochs (15 periodic evaluations of 20 episodes), 128 px corner2 moved where DP3's code puts it,
    # DP's U-Net, DDIM 10 inference steps, batch 128, horizon 16 / obs 2 / action 8 (DP3's code).
    "gpu": Protocol(
        name="gpu",
        device="cuda:0",
        n_demos=10,
        image_size=128,
        camera="corner2_dp3",
        horizon=16,
        n_obs_steps=2,
        n_action_steps=8,
        ddim_steps=10,
        down_dims=None,
        max_steps=200,
        n_evals=15,
        eval_episodes=20,
        final_episodes=50,
        final_seed=200000,
        demo_seed=0,
        lr_warmup_steps=500,
        num_workers=4,
        budgets={
            k: Budget(rollout_every=200, batch_size=128) for k in ("lowdim", "resnet18", "frozen", "lora", "finetune")
        },
        default_seeds=(0, 1, 2),
    ),
}


def get_protocol(name: str) -> Protocol:
    if name not in PROTOCOLS:
        raise ValueError(f"--protocol must be one of {sorted(PROTOCOLS)}, got {name!r}")
    return PROTOCOLS[name]


@dataclass(frozen=True)
class Setting:
    """One encoder setting: ``lowdim``, ``resnet18``, or a SAM 2 model in a mode."""

    encoder: str
    mode: str

    @property
    def is_sam2(self) -> bool:
        return self.encoder not in MODE_OF

    @property
    def kind(self) -> str:
        """The budget kind: lowdim, resnet18, frozen, lora or finetune."""
        return self.mode if self.is_sam2 else self.encoder

    @property
    def label(self) -> str:
        return self.encoder if not self.is_sam2 else f"{self.encoder} {self.mode}"


@dataclass(frozen=True)
class Cell:
    task: str
    setting: Setting
    seed: int

    @property
    def encoder(self) -> str:
        return self.setting.encoder

    @property
    def mode(self) -> str:
        return self.setting.mode

    @property
    def key(self) -> tuple[str, str, str, int]:
        """What makes a row unique in results.csv."""
        return (self.task, self.encoder, self.mode, self.seed)

    @property
    def name(self) -> str:
        """The cell's folder name."""
        return f"{self.task}__{self.encoder}__{self.mode}__seed{self.seed}"


def _csv_list(text, what: str) -> list[str]:
    if isinstance(text, (list, tuple)):
        items = [str(t).strip() for t in text]
    elif isinstance(text, str):
        items = [t.strip() for t in text.split(",")]
    else:
        raise TypeError(f"{what} must be a comma-separated string, got {type(text).__name__}")
    items = [t for t in items if t]
    if not items:
        raise ValueError(f"{what} must name at least one item, got {text!r}")
    if len(set(items)) != len(items):
        raise ValueError(f"{what} lists an item twice: {text!r}")
    return items


def parse_seeds(text) -> list[int]:
    items = _csv_list(text, "--seeds")
    try:
        seeds = [int(s) for s in items]
    except ValueError:
        raise ValueError(f"--seeds must be comma-separated integers, e.g. 0,1,2, got {text!r}") from None
    if any(s < 0 for s in seeds):
        raise ValueError(f"--seeds must be >= 0, got {text!r}")
    return seeds


def normalise_task(name: str) -> str:
    """MetaWorld task names are taken with or without ``-v3``; cells use the bare name."""
    return name[: -len("-v3")] if name.endswith("-v3") else name


def parse_settings(encoders, modes) -> list[Setting]:
    """``--encoders lowdim,resnet18,sam2_tiny`` x ``--modes frozen,lora,finetune`` (modes apply to SAM 2)."""
    from dp_sam2.checkpoints.registry import get_spec

    mode_list = _csv_list(modes, "--modes")
    bad = [m for m in mode_list if m not in SAM2_MODES]
    if bad:
        raise ValueError(f"--modes takes {', '.join(SAM2_MODES)}; got {bad}")
    settings = []
    for enc in _csv_list(encoders, "--encoders"):
        if enc in MODE_OF:
            settings.append(Setting(enc, MODE_OF[enc]))
            continue
        try:
            name = get_spec(enc).name
        except ValueError as err:
            raise ValueError(
                f"--encoders takes {LOWDIM}, {RESNET18} or a SAM 2 short name (sam2_tiny ... sam2.1_large); "
                f"got {enc!r}: {err}"
            ) from None
        settings.extend(Setting(name, m) for m in mode_list)
    if len(set(settings)) != len(settings):
        raise ValueError(f"--encoders names one encoder twice: {encoders!r}")
    return settings


def expand_grid(tasks, settings: list[Setting], seeds: list[int]) -> list[Cell]:
    """Every cell, task-major then setting then seed: the order shards are cut from."""
    task_list = [normalise_task(t) for t in _csv_list(tasks, "--tasks")]
    if len(set(task_list)) != len(task_list):
        raise ValueError(f"--tasks names one task twice (with and without -v3?): {tasks!r}")
    return [Cell(t, s, seed) for t in task_list for s in settings for seed in seeds]


def parse_shard(text) -> tuple[int, int]:
    """``I/N`` (0 <= I < N): this run takes every N-th cell from offset I."""
    if text is None:
        return 0, 1
    parts = str(text).split("/")
    try:
        i, n = (int(p) for p in parts)
    except ValueError:
        raise ValueError(f"--shard must be I/N with integers 0 <= I < N, e.g. 0/4, got {text!r}") from None
    if n < 1 or not 0 <= i < n:
        raise ValueError(f"--shard must be I/N with 0 <= I < N, got {text!r}")
    return i, n


def shard_cells(cells: list[Cell], shard: tuple[int, int]) -> list[Cell]:
    i, n = shard
    return cells[i::n]


# --------------------------------------------------------------------------- Hydra overrides
def _dims(dims) -> str:
    return "[" + ",".join(str(d) for d in dims) + "]"


@dataclass(frozen=True)
class CellPaths:
    """What a cell's overrides point at (absolute paths, made by the runner)."""

    run_dir: str  # hydra.run.dir: DP's output folder for this cell
    zarr: str  # the task's demos
    sam2_checkpoint: str | None = None  # SAM 2 weights file (official or the random-init file)
    feature_cache: str | None = None  # the zarr store holding the cached features (frozen)
    dataset_target: str | None = None  # the image task's own dataset _target_ (wrapped for the cache)


def workspace_of(setting: Setting) -> str:
    return LOWDIM_WORKSPACE if setting.encoder == LOWDIM else IMAGE_WORKSPACE


def train_overrides(
    cell: Cell, protocol: Protocol, paths: CellPaths, extra: list[str] = (), episode_lengths=None
) -> list[str]:
    """``train.py``'s arguments for ``cell`` (``--config-name=...`` first), exactly as passed. ``episode_lengths``:
    the demos' episodes (frames each), which set the epochs of a budget counted in steps."""
    k = TASK_KEYS
    s = cell.setting
    budget = protocol.budget(s.kind).for_demos(episode_lengths, protocol)
    lowdim = s.encoder == LOWDIM
    out = [
        f"--config-name={workspace_of(s)}",
        f"task={k['lowdim_task'] if lowdim else k['image_task']}",
        f"{k['env_name']}={cell.task}",
        f"{k['zarr_path']}={paths.zarr}",
        f"{k['n_test']}={protocol.eval_episodes}",
        f"{k['n_test_vis']}=0",
        f"{k['max_steps']}={protocol.max_steps}",
        f"{k['stop_at_success']}=true",
        f"horizon={protocol.horizon}",
        f"n_obs_steps={protocol.n_obs_steps}",
        f"n_action_steps={protocol.n_action_steps}",
    ]
    if not lowdim:
        out += [f"{k['image_size']}={protocol.image_size}", f"{k['camera']}={protocol.camera}"]
    # DDIM with DP's settings (as DP's ddim workspaces); DDPM's variance_type is not a DDIM argument
    out += [
        f"policy.noise_scheduler._target_={DDIM}",
        "~policy.noise_scheduler.variance_type",
        "+policy.noise_scheduler.set_alpha_to_one=true",
        "+policy.noise_scheduler.steps_offset=0",
        f"policy.num_inference_steps={protocol.ddim_steps}",
    ]
    if protocol.down_dims is not None:
        out.append(f"policy.{'model.' if lowdim else ''}down_dims={_dims(protocol.down_dims)}")
    if s.is_sam2:
        out += sam2_overrides(cell, protocol, paths)
    elif s.encoder == RESNET18:  # DP's MultiImageObsEncoder as shipped (ResNet-18, no weights, GroupNorm)
        out.append(f"policy.obs_encoder.crop_shape=[{protocol.crop},{protocol.crop}]")
    out += [
        f"training.seed={cell.seed}",
        f"training.device={protocol.device}",
        f"training.num_epochs={budget.num_epochs(protocol.n_evals)}",
        f"training.rollout_every={budget.rollout_every}",
        f"training.checkpoint_every={budget.rollout_every}",
        f"training.lr_warmup_steps={protocol.lr_warmup_steps}",
        f"dataloader.batch_size={budget.batch_size}",
        f"val_dataloader.batch_size={budget.batch_size}",
        f"dataloader.num_workers={protocol.num_workers}",
        f"val_dataloader.num_workers={protocol.num_workers}",
        "checkpoint.topk.k=0",  # only latest.ckpt (the final evaluation's); DP's top-k copies would fill the disk
        "logging.mode=disabled",
        f"hydra.run.dir={paths.run_dir}",
    ]
    return out + list(extra)


def sam2_overrides(cell: Cell, protocol: Protocol, paths: CellPaths) -> list[str]:
    """The obs_encoder group, the weights file and the mode's keys (dp_sam2/encoders/obs/finetune.py)."""
    if paths.sam2_checkpoint is None:
        raise ValueError(f"cell {cell.name}: a SAM 2 cell needs a weights file (official or random-init)")
    enc = "policy.obs_encoder"
    out = [f"+obs_encoder@{enc}={cell.encoder}", f"{enc}.checkpoint={paths.sam2_checkpoint}"]
    if cell.mode == "frozen":  # trained on the feature cache (dp-sam2 cache-features), the heads only
        if paths.feature_cache is None or paths.dataset_target is None:
            raise ValueError(f"cell {cell.name}: a frozen SAM 2 cell needs the feature cache and the task's dataset")
        out += [
            f"{enc}.freeze=true",
            f"{enc}.crop_shape=null",
            f"{enc}.input_range=[0,1]",
            "task.dataset._target_=dp_sam2.compare.cached.CachedTaskDataset",
            f"+task.dataset.inner_target={paths.dataset_target}",
            "+task.dataset.cache={"
            f"cache_path:'{paths.feature_cache}',"
            f"model_cfg:'${{{enc}.model_cfg}}',"
            f"checkpoint:'${{{enc}.checkpoint}}',"
            f"image_size:'${{{enc}.image_size}}',"
            f"crop_shape:'${{{enc}.crop_shape}}',"
            f"resize_shape:'${{{enc}.resize_shape}}',"
            f"input_range:'${{{enc}.input_range}}',"
            f"precision:'${{{enc}.precision}}',"
            "shape_meta:'${shape_meta}',"
            "n_obs_steps:'${n_obs_steps}'}",
        ]
    elif cell.mode == "lora":
        out += [f"{enc}.freeze=false", f"{enc}.lora_rank=8", f"{enc}.crop_shape=[{protocol.crop},{protocol.crop}]"]
    elif cell.mode == "finetune":  # the whole backbone, at a tenth of the learning rate (DP paper, Table 5)
        out += [
            f"{enc}.freeze=false",
            f"{enc}.crop_shape=[{protocol.crop},{protocol.crop}]",
            "optimizer._target_=dp_sam2.encoders.obs.finetune.adamw_param_groups",
            "+optimizer.backbone_lr_scale=0.1",
        ]
    else:
        raise ValueError(f"SAM 2 mode must be one of {SAM2_MODES}, got {cell.mode!r}")
    return out


def eval_overrides(protocol: Protocol) -> dict[str, object]:
    """What the final evaluation changes in the checkpoint's frozen config (dotted key -> value)."""
    k = TASK_KEYS
    return {
        k["n_test"]: protocol.final_episodes,
        k["n_test_vis"]: 0,
        k["test_start_seed"]: protocol.final_seed,
        k["max_steps"]: protocol.max_steps,
    }


def describe_budget(protocol: Protocol, kind: str, episode_lengths=None) -> str:
    b = protocol.budget(kind).for_demos(episode_lengths, protocol)
    text = f"{b.num_epochs(protocol.n_evals)} epochs, rollout every {b.rollout_every}, batch {b.batch_size}"
    if b.steps > 0 and episode_lengths:
        per_epoch = steps_per_epoch(episode_lengths, protocol, b.batch_size)
        text += (
            f": about {b.num_epochs(protocol.n_evals) * per_epoch:,} steps of {per_epoch} batches (aim: {b.steps:,})"
        )
    return text

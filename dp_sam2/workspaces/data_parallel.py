"""Diffusion Policy's training workspace, data-parallel under ``torchrun`` or ``accelerate launch``.

Selected by ``_target_`` (``train_diffusion_unet_sam2_ddp_workspace.yaml``), so DP's ``train.py`` runs it
unchanged: DP's ``TrainDiffusionUnetImageWorkspace`` loop (same config keys, checkpoint payload, logs) for any
policy with ``compute_loss``, ``predict_action``, ``set_normalizer``; ``policy.get_optimizer(**cfg.optimizer)``
if ``cfg.optimizer`` has ``transformer_weight_decay``, else ``instantiate(cfg.optimizer, params=...)``. One
process: exactly DP's workspace. N processes (gloo for ``training.device=cpu``, else nccl on ``cuda:LOCAL_RANK``):
DDP wraps the policy for the training step only (saved weights have no ``module.`` prefix; frozen weights are
not in the reducer; buffers broadcast only with BatchNorm statistics); ``DistributedSampler`` seeded by
``training.seed``, ``batch_size`` per process; rank 0's run folder for all; only rank 0 writes checkpoints and
logs, runs the env runner, samples and builds the policy first (SAM 2 file under a lock); noise ``seed + rank``.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import os
import random

import numpy as np
import torch
from torch import nn

from dp_sam2 import dist as D
from dp_sam2.dp_classes import dp_subclass, import_dp

CLASS_NAME = "TrainDiffusionDataParallelWorkspace"
TARGET = f"{__name__}.{CLASS_NAME}"


def checkpoint_lock_path():
    """``.dp_sam2.lock`` in the folder ``dp-sam2 download`` writes to (``checkpoints/`` of the DP
    repo, else the user cache): rank 0 resolves (or downloads) the SAM 2 file under it."""
    from dp_sam2.checkpoints.download import default_dest

    return default_dest() / ".dp_sam2.lock"


class LossForward(nn.Module):
    """What DDP wraps: ``forward(batch)`` is the policy's ``compute_loss(batch)`` (DDP only
    synchronises gradients of a call that goes through its own ``forward``)."""

    def __init__(self, policy: nn.Module) -> None:
        super().__init__()
        self.policy = policy

    def forward(self, batch):
        return self.policy.compute_loss(batch)


def has_running_stats(module: nn.Module) -> bool:
    from torch.nn.modules.batchnorm import _BatchNorm

    return any(isinstance(m, _BatchNorm) and m.track_running_stats for m in module.modules())


def wrap_ddp(policy: nn.Module, dist: D.Dist, ddp_cfg) -> nn.Module:
    """``DistributedDataParallel(LossForward(policy))`` for this rank's device."""
    from torch.nn.parallel import DistributedDataParallel

    broadcast = ddp_cfg.get("broadcast_buffers", "auto")
    if broadcast == "auto":
        broadcast = has_running_stats(policy)
    for p in policy.parameters():
        if p.requires_grad and p.numel() == 0:
            # DP's ModuleAttrMixin._dummy_variable: an empty parameter that only tells the device and never
            # gets a gradient (DP issue #83); DDP would wait for it forever. Empty: nothing to train or sync.
            p.requires_grad_(False)
    if not any(p.requires_grad for p in policy.parameters()):
        raise ValueError("the policy has no trainable parameter: nothing to train in parallel")
    kwargs = {
        "device_ids": [dist.device.index] if dist.device.type == "cuda" else None,
        "find_unused_parameters": bool(ddp_cfg.get("find_unused_parameters", False)),
    }
    # per-forward buffer sync (torch >= 2.14 names it forward_sync_buffers; both sync once at init)
    if "forward_sync_buffers" in inspect.signature(DistributedDataParallel.__init__).parameters:
        kwargs["forward_sync_buffers"] = bool(broadcast)
    else:
        kwargs["broadcast_buffers"] = bool(broadcast)
    return DistributedDataParallel(LossForward(policy), **kwargs)


class _NullLog:
    """Stands in for wandb's run and DP's JsonLogger on ranks > 0 (and for a disabled wandb run
    where wandb is not installed)."""

    def log(self, *args, **kwargs) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        return None


def _dp(module: str, name: str):
    """DP's ``module.name``, or an ImportError that says how to make DP importable."""
    return import_dp(f"{module}:{name}")


def _init_wandb(cfg, output_dir: str):
    """DP's ``wandb.init`` + ``wandb.config.update`` (rank 0)."""
    from omegaconf import OmegaConf

    try:
        import wandb
    except ImportError:
        if cfg.logging.get("mode") == "disabled":
            return _NullLog()
        raise ImportError(
            "logging.mode is not 'disabled' and wandb is not installed: pip install wandb, "
            "or pass logging.mode=disabled"
        ) from None
    run = wandb.init(dir=str(output_dir), config=OmegaConf.to_container(cfg, resolve=True), **cfg.logging)
    wandb.config.update({"output_dir": output_dir})
    return run


class DataParallelTraining:
    """The workspace's behaviour; combined with DP's ``BaseWorkspace`` (imported lazily) into
    :data:`TARGET` so that DP's checkpoint payload, ``load_payload`` and ``eval.py`` stay DP's."""

    include_keys = ["global_step", "epoch"]

    def __init__(self, cfg, output_dir=None):
        super().__init__(cfg, output_dir=output_dir)
        ddp_cfg = cfg.get("ddp") or {}
        self._dist = D.init_from_env(str(cfg.training.device), float(ddp_cfg.get("timeout_s", 7200)))
        self._shared_output_dir = None
        if self._dist.enabled:
            self._shared_output_dir = D.shared_output_dir(self._dist, self._own_output_dir())

        seed = cfg.training.seed
        torch.manual_seed(seed)
        np.random.seed(seed)
        random.seed(seed)

        import hydra

        lock = checkpoint_lock_path() if self._dist.enabled else None
        with D.rank_zero_first(self._dist, lock):  # rank 0 resolves (or downloads) the SAM 2 file first
            self.model = hydra.utils.instantiate(cfg.policy)
        self.ema_model = None
        if cfg.training.use_ema:
            self.ema_model = copy.deepcopy(self.model)
        if "transformer_weight_decay" in cfg.optimizer:
            self.optimizer = self.model.get_optimizer(**cfg.optimizer)
        else:
            self.optimizer = hydra.utils.instantiate(cfg.optimizer, params=self.model.parameters())
        self.global_step = 0
        self.epoch = 0
        if self._dist.rank > 0:  # own noise, timesteps and crops per rank (rank 0 keeps DP's stream)
            torch.manual_seed(seed + self._dist.rank)
            np.random.seed(seed + self._dist.rank)
            random.seed(seed + self._dist.rank)

    def _own_output_dir(self) -> str:
        if self._output_dir is not None:
            return self._output_dir
        from hydra.core.hydra_config import HydraConfig

        return HydraConfig.get().runtime.output_dir

    @property
    def output_dir(self):
        shared = self.__dict__.get("_shared_output_dir")
        return shared if shared is not None else super().output_dir

    # ------------------------------------------------------------------ the loop (DP's)
    def run(self):
        import hydra
        import tqdm

        cfg = copy.deepcopy(self.cfg)
        dist, main = self._dist, self._dist.is_main
        dict_apply = _dp("diffusion_policy.common.pytorch_util", "dict_apply")
        optimizer_to = _dp("diffusion_policy.common.pytorch_util", "optimizer_to")
        get_scheduler = _dp("diffusion_policy.model.common.lr_scheduler", "get_scheduler")

        if cfg.training.resume:
            latest = self.get_checkpoint_path()
            if latest.is_file():
                if main:
                    print(f"Resuming from checkpoint {latest}")
                self.load_checkpoint(path=latest)

        dataset = hydra.utils.instantiate(cfg.task.dataset)
        if not hasattr(dataset, "get_normalizer"):
            raise TypeError(f"task.dataset must be a DP dataset with get_normalizer(), got {type(dataset).__name__}")
        train_dataloader = D.make_loader(dataset, cfg.dataloader, dist, cfg.training.seed)
        normalizer = dist.broadcast(dataset.get_normalizer() if main else None)  # computed once, on rank 0
        val_dataloader = D.make_loader(dataset.get_validation_dataset(), cfg.val_dataloader, dist, cfg.training.seed)
        self.model.set_normalizer(normalizer)
        if cfg.training.use_ema:
            self.ema_model.set_normalizer(normalizer)

        lr_scheduler = get_scheduler(
            cfg.training.lr_scheduler,
            optimizer=self.optimizer,
            num_warmup_steps=cfg.training.lr_warmup_steps,
            num_training_steps=(len(train_dataloader) * cfg.training.num_epochs)
            // cfg.training.gradient_accumulate_every,
            last_epoch=self.global_step - 1,
        )
        ema = hydra.utils.instantiate(cfg.ema, model=self.ema_model) if cfg.training.use_ema else None

        env_runner = wandb_run = topk_manager = None
        if main:
            env_runner = hydra.utils.instantiate(cfg.task.env_runner, output_dir=self.output_dir)
            wandb_run = _init_wandb(cfg, self.output_dir)
            topk_cls = _dp("diffusion_policy.common.checkpoint_util", "TopKCheckpointManager")
            topk_manager = topk_cls(save_dir=os.path.join(self.output_dir, "checkpoints"), **cfg.checkpoint.topk)
        else:
            wandb_run = _NullLog()

        device = dist.device if dist.enabled else torch.device(cfg.training.device)
        self.model.to(device)
        if self.ema_model is not None:
            self.ema_model.to(device)
        optimizer_to(self.optimizer, device)

        loss_fn = self.model.compute_loss
        ddp_model = None
        if dist.enabled:
            if cfg.training.get("freeze_encoder", False):  # before DDP sees the parameters
                self.model.obs_encoder.eval()
                self.model.obs_encoder.requires_grad_(False)
            ddp_model = wrap_ddp(self.model, dist, cfg.get("ddp") or {})
            loss_fn = ddp_model

        train_sampling_batch = None
        if cfg.training.debug:
            cfg.training.num_epochs = 2
            cfg.training.max_train_steps = 3
            cfg.training.max_val_steps = 3
            cfg.training.rollout_every = 1
            cfg.training.checkpoint_every = 1
            cfg.training.val_every = 1
            cfg.training.sample_every = 1

        accumulate = cfg.training.gradient_accumulate_every
        log_path = os.path.join(self.output_dir, "logs.json.txt")
        json_cm = _dp("diffusion_policy.common.json_logger", "JsonLogger")(log_path) if main else _NullLog()
        with json_cm as json_logger:
            for _ in range(cfg.training.num_epochs):
                step_log = dict()
                D.set_epoch(train_dataloader, self.epoch)
                if cfg.training.get("freeze_encoder", False):
                    self.model.obs_encoder.eval()
                    self.model.obs_encoder.requires_grad_(False)

                train_losses = list()
                with tqdm.tqdm(
                    train_dataloader,
                    desc=f"Training epoch {self.epoch}",
                    leave=False,
                    mininterval=cfg.training.tqdm_interval_sec,
                    disable=not main,
                ) as tepoch:
                    for batch_idx, batch in enumerate(tepoch):
                        batch = dict_apply(batch, lambda x: x.to(device, non_blocking=True))
                        if train_sampling_batch is None:
                            train_sampling_batch = batch

                        steps = self.global_step % accumulate == 0
                        no_sync = ddp_model is not None and not steps  # accumulating: no all-reduce yet
                        with ddp_model.no_sync() if no_sync else contextlib.nullcontext():
                            raw_loss = loss_fn(batch)
                            loss = raw_loss / accumulate
                            loss.backward()
                        if steps:
                            self.optimizer.step()
                            self.optimizer.zero_grad()
                            lr_scheduler.step()
                        if cfg.training.use_ema:
                            ema.step(self.model)

                        raw_loss_cpu = dist.mean(raw_loss.item(), 1)  # all ranks' mean (one process: its own)
                        tepoch.set_postfix(loss=raw_loss_cpu, refresh=False)
                        train_losses.append(raw_loss_cpu)
                        step_log = {
                            "train_loss": raw_loss_cpu,
                            "global_step": self.global_step,
                            "epoch": self.epoch,
                            "lr": lr_scheduler.get_last_lr()[0],
                        }
                        is_last_batch = batch_idx == (len(train_dataloader) - 1)
                        if not is_last_batch:
                            wandb_run.log(step_log, step=self.global_step)
                            json_logger.log(step_log)
                            self.global_step += 1
                        if cfg.training.max_train_steps is not None and batch_idx >= (cfg.training.max_train_steps - 1):
                            break

                step_log["train_loss"] = np.mean(train_losses)
                policy = self.ema_model if cfg.training.use_ema else self.model
                policy.eval()

                if main and (self.epoch % cfg.training.rollout_every) == 0:
                    step_log.update(env_runner.run(policy))

                if (self.epoch % cfg.training.val_every) == 0:
                    val_loss = self._validate(val_dataloader, cfg, device, dict_apply, tqdm)
                    if val_loss is not None:
                        step_log["val_loss"] = val_loss

                if main and (self.epoch % cfg.training.sample_every) == 0:
                    with torch.no_grad():
                        batch = dict_apply(train_sampling_batch, lambda x: x.to(device, non_blocking=True))
                        result = policy.predict_action(batch["obs"])
                        mse = torch.nn.functional.mse_loss(result["action_pred"], batch["action"])
                        step_log["train_action_mse_error"] = mse.item()
                        del batch, result, mse

                if main and (self.epoch % cfg.training.checkpoint_every) == 0:
                    self._save(cfg, step_log, topk_manager)
                policy.train()

                wandb_run.log(step_log, step=self.global_step)
                json_logger.log(step_log)
                self.global_step += 1
                self.epoch += 1
        self._finish()

    def _validate(self, val_dataloader, cfg, device, dict_apply, tqdm):
        """DP's validation loss (the mean of the batch losses), over every rank's shard."""
        val_losses = list()
        with torch.no_grad():
            with tqdm.tqdm(
                val_dataloader,
                desc=f"Validation epoch {self.epoch}",
                leave=False,
                mininterval=cfg.training.tqdm_interval_sec,
                disable=not self._dist.is_main,
            ) as tepoch:
                for batch_idx, batch in enumerate(tepoch):
                    batch = dict_apply(batch, lambda x: x.to(device, non_blocking=True))
                    val_losses.append(self.model.compute_loss(batch))
                    if cfg.training.max_val_steps is not None and batch_idx >= (cfg.training.max_val_steps - 1):
                        break
        if self._dist.enabled:
            value = self._dist.mean(float(sum(float(v) for v in val_losses)), len(val_losses))
            return None if np.isnan(value) else value
        return torch.mean(torch.tensor(val_losses)).item() if len(val_losses) > 0 else None

    def _save(self, cfg, step_log, topk_manager) -> None:
        """DP's checkpointing (rank 0): latest.ckpt, optional snapshot, top-k."""
        if cfg.checkpoint.save_last_ckpt:
            self.save_checkpoint()
        if cfg.checkpoint.save_last_snapshot:
            self.save_snapshot()
        metric_dict = {key.replace("/", "_"): value for key, value in step_log.items()}
        topk_ckpt_path = topk_manager.get_ckpt_path(metric_dict)
        if topk_ckpt_path is not None:
            self.save_checkpoint(path=topk_ckpt_path)

    def _finish(self) -> None:
        if self._dist.enabled:
            thread = getattr(self, "_saving_thread", None)
            if thread is not None:
                thread.join()
            self._dist.barrier()
            torch.distributed.destroy_process_group()

    def __getstate__(self):  # save_snapshot pickles the workspace: not the process facts
        state = dict(self.__dict__)
        state["_dist"] = D.Dist()
        return state


def workspace_class() -> type:
    """:data:`TARGET`: :class:`DataParallelTraining` on DP's ``BaseWorkspace`` (imported here, not
    when dp_sam2 is imported)."""
    return dp_subclass(
        DataParallelTraining,
        "diffusion_policy.workspace.base_workspace:BaseWorkspace",
        name=CLASS_NAME,
        module=__name__,
        __doc__=__doc__,
    )


def __getattr__(name):
    if name == CLASS_NAME:
        return workspace_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

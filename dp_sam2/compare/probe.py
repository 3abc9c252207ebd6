"""Run inside the DP checkout (``python -m dp_sam2.compare.probe``, cwd = DP's root): load a cell's
checkpoint as DP's ``eval.py`` does, count the parameters that trained, time one policy call at batch 1,
and write the checkpoint ``eval.py`` evaluates at the end (the same weights; the runner's settings for
the final episodes set in its frozen config; no optimizer state).

"Trained" means the optimizer holds state for the parameter (AdamW keeps none for a parameter that never
got a gradient), read from the checkpoint's optimizer state: what actually trained, not what could.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time


def _parse_set(items: list[str]) -> dict:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--set takes KEY=JSON_VALUE, got {item!r}")
        out[key] = json.loads(value)
    return out


def trained_parameters(workspace) -> dict:
    """``{"trainable_params", "backbone_trained", "requires_grad"}`` from the loaded optimizer state."""
    opt = workspace.optimizer
    names = {id(p): n for n, p in workspace.model.named_parameters()}
    trained = backbone = 0
    for group in opt.param_groups:
        for p in group["params"]:
            if len(opt.state.get(p, {})) == 0:
                continue
            trained += p.numel()
            if ".backbone" in names.get(id(p), ""):
                backbone += p.numel()
    requires = sum(p.numel() for p in workspace.model.parameters() if p.requires_grad)
    return {"trainable_params": trained, "backbone_trained": backbone, "requires_grad": requires}


def example_obs(cfg, batch: int = 1):
    """A batch of observations as the env runner sends them (images in [0, 1])."""
    import torch

    to = int(cfg.n_obs_steps)
    if "shape_meta" in cfg:
        obs = {}
        for key, attr in cfg.shape_meta.obs.items():
            shape = tuple(attr.shape)
            kind = attr.get("type", "low_dim")
            obs[key] = torch.rand(batch, to, *shape) if kind == "rgb" else torch.zeros(batch, to, *shape)
        return obs
    return {"obs": torch.zeros(batch, to, int(cfg.obs_dim))}


def time_policy(policy, obs: dict, device, repeats: int = 5, warmup: int = 1) -> list[float]:
    """Milliseconds of ``policy.predict_action(obs)`` per call (after ``warmup`` calls)."""
    import torch

    obs = {k: v.to(device) for k, v in obs.items()}
    times = []
    with torch.no_grad():
        for i in range(warmup + repeats):
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            t0 = time.perf_counter()
            policy.predict_action(obs)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if i >= warmup:
                times.append((time.perf_counter() - t0) * 1000.0)
    return times


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m dp_sam2.compare.probe", description=__doc__)
    p.add_argument("--checkpoint", required=True, help="DP checkpoint (latest.ckpt of the cell's run)")
    p.add_argument("--eval-ckpt", required=True, help="where to write the checkpoint for the final eval.py run")
    p.add_argument("--set", action="append", default=[], help="KEY=JSON: a change to the frozen config (runner)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", required=True, help="JSON file with the counts and the latency")
    args = p.parse_args(argv)

    import dill
    import hydra
    import torch
    from omegaconf import OmegaConf, open_dict

    OmegaConf.register_new_resolver("eval", eval, replace=True)  # as DP's train.py / eval.py
    with open(args.checkpoint, "rb") as f:
        payload = torch.load(f, pickle_module=dill, map_location="cpu", weights_only=False)
    cfg = payload["cfg"]
    with tempfile.TemporaryDirectory() as tmp:
        workspace = hydra.utils.get_class(cfg._target_)(cfg, output_dir=tmp)
        workspace.load_payload(payload, exclude_keys=None, include_keys=None)
        counts = trained_parameters(workspace)
        policy = workspace.ema_model if cfg.training.get("use_ema", False) else workspace.model
        device = torch.device(args.device)
        policy.to(device).eval()
        times = time_policy(policy, example_obs(cfg), device, repeats=args.repeats)

    eval_cfg = payload["cfg"]
    with open_dict(eval_cfg):
        for key, value in _parse_set(args.set).items():
            OmegaConf.update(eval_cfg, key, value, merge=False)
    payload["state_dicts"] = {k: v for k, v in payload["state_dicts"].items() if k != "optimizer"}
    with open(args.eval_ckpt, "wb") as f:
        torch.save(payload, f, pickle_module=dill)

    result = {
        **counts,
        "latency_ms": statistics.median(times),
        "latency_ms_all": times,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "num_inference_steps": int(getattr(policy, "num_inference_steps", -1) or -1),
    }
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

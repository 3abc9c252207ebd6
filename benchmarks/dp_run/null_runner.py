"""A stand-in for Diffusion Policy's env runners (pusht's imports gym/pymunk): it runs the policy
once on random observations shaped by ``shape_meta`` (so eval exercises ``predict_action``) and
reports ``test_mean_score`` 0.0 (DP's top-k checkpointing monitors that key).

Use: ``task.env_runner._target_=null_runner.NullImageRunner`` with this folder on PYTHONPATH.
"""

from __future__ import annotations

import torch
from diffusion_policy.env_runner.base_image_runner import BaseImageRunner


class NullImageRunner(BaseImageRunner):
    def __init__(self, output_dir, n_obs_steps=2, shape_meta=None, **_):
        super().__init__(output_dir)
        self.n_obs_steps = n_obs_steps
        self.shape_meta = shape_meta

    def run(self, policy) -> dict:
        meta = self.shape_meta or {
            "obs": {"image": {"shape": [3, 96, 96], "type": "rgb"}, "agent_pos": {"shape": [2], "type": "low_dim"}}
        }
        gen = torch.Generator().manual_seed(0)
        obs = {
            key: torch.rand((1, self.n_obs_steps, *attr["shape"]), generator=gen).to(policy.device)
            for key, attr in meta["obs"].items()
        }  # images in [0, 1], as the env runners pass them
        with torch.no_grad():
            action = policy.predict_action(obs)["action"]
        if not torch.isfinite(action).all():
            raise RuntimeError("policy produced non-finite actions")
        print(f"NullImageRunner: predict_action -> {tuple(action.shape)}")
        return {"test_mean_score": 0.0}

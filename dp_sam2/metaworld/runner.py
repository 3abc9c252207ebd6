"""Closed-loop evaluation on MetaWorld for Diffusion Policy (``task.env_runner``).

Every test episode runs in lock-step in this one process: at each decision point one
``policy.predict_action`` call serves all episodes (DP's own runners start a process per
environment, too many for a small machine). Per episode it behaves as DP's ``MultiStepWrapper``:
the policy sees the last ``n_obs_steps`` observations (the first repeated at the start), its first
``n_action_steps`` actions run one by one, and an episode stops at ``max_steps`` steps, or at its
first success when ``stop_at_success``; a stopped episode takes no more actions. Episode ``i``
starts from the state of seed ``test_start_seed + i``, the same for every policy.

Behaviour only: :mod:`dp_sam2.metaworld` combines these mixins with DP's ``BaseImageRunner`` /
``BaseLowdimRunner``; nothing of DP is imported here.
"""

from __future__ import annotations

import time
from collections import deque
from pathlib import Path

import numpy as np
import torch

from dp_sam2._progress import progress
from dp_sam2.metaworld import env as mw


class _Episode:
    """One test episode's state: its environment, the recent observations, success, step count."""

    def __init__(self, env, seed: int, n_obs_steps: int, keep_frames: bool):
        self.env, self.seed = env, seed
        self.states: deque = deque(maxlen=n_obs_steps)
        self.images: deque = deque(maxlen=n_obs_steps)
        self.frames: list | None = [] if keep_frames else None
        self.steps, self.success, self.done = 0, False, False


class _LockstepRunner:
    """Shared by the image and low-dim runners; ``_obs_dict`` makes the policy's input."""

    _needs_images = True

    def __init__(
        self,
        output_dir,
        env_name: str,
        image_size: int = 128,
        camera: str = "corner2",
        n_test: int = 20,
        n_test_vis: int = 2,
        test_start_seed: int = 100000,
        max_steps: int = 200,
        n_obs_steps: int = 2,
        n_action_steps: int = 8,
        n_latency_steps: int = 0,
        stop_at_success: bool = True,
        past_action: bool = False,
        n_envs: int | None = None,
        fps: int = 10,
        tqdm_interval_sec: float = 5.0,
    ):
        """output_dir: the run folder (rollout GIFs go to ``<output_dir>/media``).
        env_name: a MetaWorld task, with or without ``-v3``; image_size, camera: as the demos.
        n_test: test episodes (seeds ``test_start_seed`` ...); n_test_vis: how many of them are saved
            as GIFs. max_steps: steps per episode (MetaWorld allows at most 500).
        n_obs_steps, n_action_steps, n_latency_steps: as DP's (the first ``n_latency_steps`` predicted
            actions are skipped, as DP's low-dim runners do).
        stop_at_success: end an episode at its first success (saves time; the score is the same).
        past_action: DP's ``past_action_visible``; not supported (must be False).
        n_envs: episodes run at once (default: all ``n_test``); fewer bound memory.
        """
        super().__init__(output_dir)
        self.env_name = mw.canonical_task(env_name)
        self.image_size, self.camera = mw.check_image_size(image_size), mw.check_camera(camera)
        for name, value, low in [
            ("n_test", n_test, 1),
            ("n_test_vis", n_test_vis, 0),
            ("n_obs_steps", n_obs_steps, 1),
            ("n_action_steps", n_action_steps, 1),
            ("n_latency_steps", n_latency_steps, 0),
            ("max_steps", max_steps, 1),
        ]:
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"env_runner.{name} must be an integer >= {low}, got {value!r}")
        if max_steps > mw.MAX_PATH_LENGTH:
            raise ValueError(
                f"env_runner.max_steps must be at most {mw.MAX_PATH_LENGTH} (MetaWorld's limit), got {max_steps}"
            )
        if past_action:
            raise ValueError(
                "env_runner.past_action (DP's past_action_visible) is not supported by the MetaWorld runner"
            )
        if n_envs is not None and (not isinstance(n_envs, int) or n_envs < 1):
            raise ValueError(f"env_runner.n_envs must be a positive integer or null, got {n_envs!r}")
        self.n_test, self.n_test_vis, self.test_start_seed = n_test, min(n_test_vis, n_test), int(test_start_seed)
        self.max_steps, self.n_obs_steps, self.n_action_steps = max_steps, n_obs_steps, n_action_steps
        self.n_latency_steps, self.stop_at_success = n_latency_steps, bool(stop_at_success)
        self.n_envs = min(n_envs or n_test, n_test)
        self.fps, self.tqdm_interval_sec = fps, tqdm_interval_sec
        self._envs: list = []
        self._renderer = None
        self._runs = 0

    # ------------------------------------------------------------------ environments
    def _pool(self) -> list:
        """The environments, made on the first ``run`` and reused (each costs ~0.7 s to build)."""
        mw.load_metaworld()
        while len(self._envs) < self.n_envs:
            self._envs.append(mw.make_env(self.env_name, self.test_start_seed))
        if self._renderer is None and (self._needs_images or self.n_test_vis > 0):
            self._renderer = mw.SceneRenderer(self._envs[0].model, self.image_size, self.camera)
        return self._envs

    def _observe(self, ep: _Episode, obs: np.ndarray, render: bool) -> None:
        ep.states.append(obs.astype(np.float32))
        image = self._renderer.render(ep.env) if render else None
        ep.images.append(image)
        if ep.frames is not None and image is not None:
            ep.frames.append(image)

    def _stack(self, ep: _Episode, items: deque) -> np.ndarray:
        """The last ``n_obs_steps`` items, the earliest repeated where fewer exist (DP's
        ``stack_last_n_obs``); a frame not rendered (possible only after an episode ended) takes
        the latest rendered one."""
        items = list(items)
        items = [items[0]] * (self.n_obs_steps - len(items)) + items
        if any(x is None for x in items):
            latest = next(x for x in reversed(items) if x is not None) if any(x is not None for x in items) else None
            if latest is None:
                latest = self._renderer.render(ep.env)
            items = [latest if x is None else x for x in items]
        return np.stack(items)

    # ------------------------------------------------------------------ the loop
    def run(self, policy) -> dict:
        device = _policy_device(policy)
        envs = self._pool()
        seeds = [self.test_start_seed + i for i in range(self.n_test)]
        results: dict[int, _Episode] = {}
        started = time.time()
        bar = progress(
            total=self.n_test, desc=f"MetaWorld {self.env_name} rollouts", mininterval=self.tqdm_interval_sec
        )
        for start in range(0, self.n_test, self.n_envs):
            batch = [
                _Episode(env, seed, self.n_obs_steps, keep_frames=(seed - self.test_start_seed) < self.n_test_vis)
                # the last batch may be shorter than the environments
                for env, seed in zip(envs, seeds[start : start + self.n_envs], strict=False)
            ]
            self._run_batch(policy, batch, device)
            results.update({ep.seed: ep for ep in batch})
            bar.update(len(batch))
        bar.close()
        self._runs += 1
        return self._log(results, time.time() - started)

    def _run_batch(self, policy, batch: list[_Episode], device) -> None:
        for ep in batch:
            self._observe(ep, mw.reset(ep.env, ep.seed), render=self._needs_images or ep.frames is not None)
        if hasattr(policy, "reset"):
            policy.reset()
        while not all(ep.done for ep in batch):
            obs = self._obs_dict(batch)
            with torch.no_grad():
                out = policy.predict_action({k: torch.from_numpy(v).to(device) for k, v in obs.items()})
            actions = out["action"].detach().to("cpu").numpy()[:, self.n_latency_steps :][:, : self.n_action_steps]
            for ep, chunk in zip(batch, actions, strict=True):
                self._act(ep, chunk)

    def _act(self, ep: _Episode, chunk: np.ndarray) -> None:
        """Run ``chunk``'s actions in ``ep`` until it ends; render only the frames the next policy
        call will see (the chunk's last ``n_obs_steps``) unless the episode is saved as a GIF."""
        planned = min(len(chunk), self.max_steps - ep.steps)
        for j in range(planned):
            if ep.done:
                break
            result = mw.step(ep.env, np.clip(chunk[j], -1.0, 1.0))
            ep.steps += 1
            ep.success = ep.success or result.success
            ep.done = ep.steps >= self.max_steps or (self.stop_at_success and result.success)
            render = ep.frames is not None or (self._needs_images and j >= planned - self.n_obs_steps)
            self._observe(ep, result.obs, render=render)
        if planned <= 0:
            ep.done = True

    def _log(self, results: dict[int, _Episode], seconds: float) -> dict:
        log: dict = {}
        for seed, ep in sorted(results.items()):
            log[f"test/sim_max_reward_{seed}"] = float(ep.success)
            log[f"test/sim_steps_{seed}"] = int(ep.steps)
            if ep.frames:
                log[f"test/sim_video_{seed}"] = self._save_gif(ep)
        log["test_mean_score"] = float(np.mean([float(ep.success) for ep in results.values()]))
        log["test/rollout_seconds"] = float(seconds)
        return log

    def _save_gif(self, ep: _Episode) -> str:
        from PIL import Image

        folder = Path(self.output_dir) / "media"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"rollout{self._runs:03d}_{self.env_name}_seed{ep.seed}.gif"
        frames = [Image.fromarray(f) for f in ep.frames]
        frames[0].save(path, save_all=True, append_images=frames[1:], duration=int(1000 / self.fps), loop=0)
        return str(path)

    def close(self) -> None:
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None
        for env in self._envs:
            env.close()
        self._envs = []


def _policy_device(policy) -> torch.device:
    device = getattr(policy, "device", None)
    if device is not None:
        return torch.device(device)
    params = list(policy.parameters()) if hasattr(policy, "parameters") else []
    return params[0].device if params else torch.device("cpu")


class MetaWorldImageRunnerMixin(_LockstepRunner):
    """Feeds ``{'image': (B, To, 3, S, S) float32 in [0, 1], 'agent_pos': (B, To, 4)}``."""

    _needs_images = True

    def _obs_dict(self, batch: list[_Episode]) -> dict:
        images = np.stack([self._stack(ep, ep.images) for ep in batch])  # (B, To, S, S, 3) uint8
        states = np.stack([self._stack(ep, ep.states) for ep in batch])
        return {
            "image": np.moveaxis(images, -1, 2).astype(np.float32) / 255.0,
            "agent_pos": np.ascontiguousarray(states[..., : mw.AGENT_POS_DIM]),
        }


class MetaWorldLowdimRunnerMixin(_LockstepRunner):
    """Feeds ``{'obs': (B, To, 39) float32}`` (the full state); renders only the GIF episodes."""

    _needs_images = False

    def _obs_dict(self, batch: list[_Episode]) -> dict:
        return {"obs": np.stack([self._stack(ep, ep.states) for ep in batch])}

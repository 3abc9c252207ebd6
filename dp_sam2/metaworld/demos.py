"""Demonstrations from MetaWorld's scripted experts (``dp-sam2 metaworld-demos``).

One environment seeded with ``seed`` is reset for every attempt (a fresh start state each time,
the same sequence for the same seed); the expert acts until the task succeeds or ``max_steps``
pass; only successful attempts are kept, each recorded up to and including the step that
succeeded. The same arguments give the same file.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from dp_sam2._progress import progress
from dp_sam2.metaworld import env as mw
from dp_sam2.metaworld.buffer import write_buffer


def rollout_expert(env, policy, renderer, seed: int, max_steps: int) -> tuple[dict[str, np.ndarray], bool]:
    """One expert episode from the start state of ``seed``: (arrays by buffer key, succeeded)."""
    obs = mw.reset(env, seed)
    steps = {"img": [], "agent_pos": [], "state": [], "action": []}
    success = False
    for _ in range(max_steps):
        with warnings.catch_warnings():  # the experts warn that their gains exceed the clipped range
            warnings.filterwarnings("ignore", message="Constant", category=UserWarning)
            raw = policy.get_action(obs)
        action = np.clip(raw, -1.0, 1.0).astype(np.float32)
        steps["img"].append(renderer.render(env))
        steps["agent_pos"].append(obs[: mw.AGENT_POS_DIM])
        steps["state"].append(obs)
        steps["action"].append(action)
        result = mw.step(env, action)
        obs = result.obs
        if result.success:
            success = True
            break
    return {key: np.stack(value) for key, value in steps.items()}, success


def collect_demos(
    task: str,
    episodes: int,
    out,
    *,
    image_size: int = 128,
    camera: str = "corner2",
    seed: int = 0,
    max_steps: int = mw.MAX_PATH_LENGTH,
    max_attempts: int | None = None,
    overwrite: bool = False,
    show_progress: bool = True,
) -> dict:
    """Roll out the expert until ``episodes`` successes and write them to ``out`` (a zarr folder).

    max_steps: steps allowed per attempt (MetaWorld's limit is 500); an attempt that has not
        succeeded by then is dropped.
    max_attempts: give up (``RuntimeError``) after this many attempts (default ``2 * episodes + 10``).
    Returns a summary: path, episodes, attempts, steps.
    """
    if isinstance(episodes, bool) or not isinstance(episodes, int) or episodes < 1:
        raise ValueError(f"--episodes must be a positive integer, got {episodes!r}")
    if not 1 <= int(max_steps) <= mw.MAX_PATH_LENGTH:
        raise ValueError(f"max_steps must be in [1, {mw.MAX_PATH_LENGTH}] (MetaWorld's limit), got {max_steps}")
    out = Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; delete it, choose another --out, or pass --overwrite")
    task, camera, image_size = mw.canonical_task(task), mw.check_camera(camera), mw.check_image_size(image_size)
    max_attempts = 2 * episodes + 10 if max_attempts is None else int(max_attempts)
    env = mw.make_env(task, seed)
    renderer = mw.SceneRenderer(env.model, image_size, camera)
    policy = mw.expert(task)
    rng = np.random.default_rng(seed)  # one start-state seed per attempt, from --seed
    kept, attempts = [], 0
    bar = progress(total=episodes, desc=f"{task} demos", disable=not show_progress)
    try:
        while len(kept) < episodes:
            if attempts >= max_attempts:
                raise RuntimeError(
                    f"the {task} expert succeeded in only {len(kept)} of {attempts} attempts "
                    f"(within {max_steps} steps); ask for fewer --episodes or allow more attempts"
                )
            arrays, success = rollout_expert(env, policy, renderer, int(rng.integers(2**31 - 1)), max_steps)
            attempts += 1
            if success:
                kept.append(arrays)
                bar.update(1)
            bar.set_postfix(attempts=attempts)
    finally:
        bar.close()
        renderer.close()
    attrs = {"task": task, "camera": camera, "image_size": image_size, "seed": int(seed), "episodes": len(kept)}
    path = write_buffer(out, kept, attrs, overwrite=overwrite)
    return {
        "path": str(path),
        "episodes": len(kept),
        "attempts": attempts,
        "steps": sum(len(k["action"]) for k in kept),
    }

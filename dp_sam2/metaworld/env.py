"""MetaWorld environments as the demos and the runner use them: seeded start states, fast headless
rendering, upright images.

Nothing here runs at import time: :func:`load_metaworld` sets ``MUJOCO_GL=osmesa`` when it is unset
(before MuJoCo is imported) and imports MetaWorld, or raises an ``ImportError`` that says how to
install the ``metaworld`` extra. Facts used here (docs/design.md, ruling 24):

- the goal-observable class of each v3 task, with ``seeded_rand_vec`` on and ``_freeze_rand_vec``
  off, draws a fresh start state from its own seeded RNG at every ``reset``; ``seed(s)`` then
  ``reset()`` gives the same start state whatever the environment did before;
- every fixed camera renders upside down: images are rotated 180 degrees;
- shadows, reflections and multisampling cost ~10x the frame time: they are switched off before
  the first render, and one GL context serves every environment of a task (building one costs
  about a second and tens of MB).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

INSTALL = 'pip install "dp-sam2[metaworld]"'
# our cameras: a MetaWorld camera moved to another position, its orientation and field of view kept.
# "corner2_dp3" is corner2 where 3D Diffusion Policy's code puts it (model.cam_pos = [0.6, 0.295, 0.8],
# after arXiv 2212.05698), 1.8-1.9x closer to the objects than MetaWorld's [1.3, -0.2, 1.1]: twice as large across
MOVED_CAMERAS = {"corner2_dp3": ("corner2", (0.6, 0.295, 0.8))}
CAMERAS = ("corner", "corner2", "corner3", "corner4", "topview", "gripperPOV", "behindGripper", *MOVED_CAMERAS)
MAX_PATH_LENGTH = 500  # MetaWorld raises ValueError on a step past this
OBS_DIM, ACTION_DIM, AGENT_POS_DIM = 39, 4, 4
GL_HELP = (
    "MuJoCo found no usable OpenGL backend. On a machine without a GPU install OSMesa "
    "(Debian/Ubuntu: apt-get install libosmesa6) and set MUJOCO_GL=osmesa (dp_sam2's default when "
    "MUJOCO_GL is unset); with a GPU or Mesa's EGL (apt-get install libegl1 libegl-mesa0 libgl1-mesa-dri) "
    "MUJOCO_GL=egl also works. MuJoCo's backend here: {backend}; it failed with: {err}"
)


def _gl_backend() -> str:
    """The backend MuJoCo chose (it reads ``MUJOCO_GL`` once, when it is first imported)."""
    import sys

    mujoco = sys.modules.get("mujoco")
    ctx = getattr(mujoco, "GLContext", None)
    chosen = ctx.__module__.rsplit(".", 1)[-1] if ctx is not None else "none"
    text = f"{chosen} (MUJOCO_GL={os.environ.get('MUJOCO_GL')!r} now)"
    if _STATE.get("mujoco_before_default"):
        text += "; mujoco was imported before dp_sam2 could default MUJOCO_GL to osmesa: set it in the environment"
    return text


_STATE: dict = {}


def load_metaworld():
    """Import MetaWorld (``MUJOCO_GL`` defaults to ``osmesa`` first); a clear ``ImportError`` without it."""
    import sys

    if "MUJOCO_GL" not in os.environ:
        _STATE["mujoco_before_default"] = "mujoco" in sys.modules
        os.environ["MUJOCO_GL"] = "osmesa"
    if "mujoco" not in sys.modules:
        _load_triton_first()
    try:
        import metaworld  # noqa: F401
        import metaworld.env_dict
        import metaworld.policies
    except ImportError as err:
        raise ImportError(
            f"MetaWorld tasks need the optional extra 'metaworld' (MetaWorld, MuJoCo, packaging): {INSTALL}. "
            f"Import failed with: {err}"
        ) from err
    except RuntimeError as err:  # mujoco refuses an unknown MUJOCO_GL at import
        raise RuntimeError(GL_HELP.format(backend=repr(os.environ.get("MUJOCO_GL")), err=err)) from err
    return metaworld


def task_names() -> list[str]:
    """The 50 MetaWorld v3 task names (``reach-v3`` ...), sorted."""
    return sorted(load_metaworld().env_dict.ALL_V3_ENVIRONMENTS)


def canonical_task(name: str) -> str:
    """``name`` with its ``-v3`` suffix (``reach`` -> ``reach-v3``); a ``ValueError`` listing the valid
    names for anything else."""
    if not isinstance(name, str):
        raise TypeError(f"expected a MetaWorld task name (str), got {type(name).__name__}: {name!r}")
    valid = task_names()
    full = name if name.endswith("-v3") else f"{name}-v3"
    if full not in valid:
        shown = ", ".join(n.removesuffix("-v3") for n in valid)
        raise ValueError(f"unknown MetaWorld task {name!r}; valid names (with or without '-v3'): {shown}")
    return full


def check_camera(camera: str) -> str:
    if camera not in CAMERAS:
        raise ValueError(f"unknown MetaWorld camera {camera!r}; valid cameras: {', '.join(CAMERAS)}")
    return camera


def check_image_size(image_size) -> int:
    if isinstance(image_size, bool) or not isinstance(image_size, (int, np.integer)) or image_size < 8:
        raise ValueError(f"image_size must be an integer of at least 8 pixels, got {image_size!r}")
    return int(image_size)


def make_env(task: str, seed: int):
    """MetaWorld's goal-observable ``task`` environment whose resets draw fresh start states from an
    RNG seeded with ``seed`` (``env.seed(s)`` re-seeds it)."""
    mw = load_metaworld()
    env = mw.env_dict.ALL_V3_ENVIRONMENTS_GOAL_OBSERVABLE[f"{canonical_task(task)}-goal-observable"](seed=seed)
    env._freeze_rand_vec = False  # a fresh start state at every reset ...
    env.seeded_rand_vec = True  # ... drawn from env.np_random, which env.seed() resets
    return env


def expert(task: str):
    """MetaWorld's scripted expert for ``task`` (``.get_action(obs) -> (4,)``)."""
    return load_metaworld().policies.ENV_POLICY_MAP[canonical_task(task)]()


def fast_render_settings(model) -> None:
    """No shadows, reflections or multisampling (set before the GL context is made)."""
    model.vis.quality.offsamples = 0
    model.vis.quality.shadowsize = 0
    model.light_castshadow[:] = 0
    model.mat_reflectance[:] = 0


def reset(env, seed: int) -> np.ndarray:
    """The start observation (39 floats) of the episode with this seed."""
    env.seed(int(seed))
    obs, _ = env.reset()
    return obs


@dataclass
class Step:
    obs: np.ndarray  # (39,) float64
    success: bool


def step(env, action) -> Step:
    obs, _reward, _terminated, _truncated, info = env.step(np.asarray(action, dtype=np.float32))
    return Step(obs=obs, success=bool(info.get("success", 0.0) >= 1.0))


def _load_triton_first() -> None:
    """Import triton (when installed) before MuJoCo loads Mesa's OpenGL: both carry their own LLVM,
    and loading triton's after Mesa's crashes the process (measured: a segfault when ``torch._dynamo``
    first imports triton after ``import mujoco`` with MUJOCO_GL=osmesa). DP's train.py and eval.py
    import it early; other callers may not."""
    import importlib.util

    if "triton" not in __import__("sys").modules and importlib.util.find_spec("triton") is not None:
        try:
            import triton  # noqa: F401
        except Exception:  # a broken triton is torch's business, not the renderer's
            pass


class SceneRenderer:
    """One offscreen GL context for every environment of a task: ``render(env)`` draws ``env``'s own
    model and state from ``camera`` and returns an upright ``(size, size, 3)`` uint8 image.

    The environments must be of the same task (they share meshes and textures, uploaded once);
    each keeps its own object placement, which lives in its model and data.
    """

    def __init__(self, model, size: int, camera: str):
        import mujoco

        self.size, self.camera = check_image_size(size), check_camera(camera)
        fast_render_settings(model)
        model.vis.global_.offwidth = max(model.vis.global_.offwidth, self.size)
        model.vis.global_.offheight = max(model.vis.global_.offheight, self.size)
        base, self._position = MOVED_CAMERAS.get(camera, (camera, None))
        self._camera_id = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_CAMERA, base)
        try:
            if mujoco.GLContext is None:
                raise RuntimeError("mujoco.GLContext is None")
            self._gl = mujoco.GLContext(self.size, self.size)
            self._gl.make_current()
            self._context = mujoco.MjrContext(model, mujoco.mjtFontScale.mjFONTSCALE_150)
            mujoco.mjr_setBuffer(mujoco.mjtFramebuffer.mjFB_OFFSCREEN, self._context)
        except Exception as err:  # GLFW without a display, EGL without a device, missing libraries
            raise RuntimeError(GL_HELP.format(backend=_gl_backend(), err=err)) from err
        self._scene = mujoco.MjvScene(model, maxgeom=10_000)
        self._option = mujoco.MjvOption()
        self._cam = mujoco.MjvCamera()
        self._cam.type = mujoco.mjtCamera.mjCAMERA_FIXED
        self._cam.fixedcamid = self._camera_id
        self._rect = mujoco.MjrRect(0, 0, self.size, self.size)
        self._mujoco = mujoco

    def render(self, env) -> np.ndarray:
        mj = self._mujoco
        fast_render_settings(env.model)
        self._gl.make_current()
        cam_pos = env.model.cam_pos[self._camera_id].copy()
        if self._position is not None:  # a moved camera: moved in env's model for this one scene, then put back
            env.model.cam_pos[self._camera_id] = self._position
            mj.mj_camlight(env.model, env.data)  # the cameras' world poses from their model positions
        mj.mjv_updateScene(env.model, env.data, self._option, None, self._cam, mj.mjtCatBit.mjCAT_ALL, self._scene)
        if self._position is not None:
            env.model.cam_pos[self._camera_id] = cam_pos
            mj.mj_camlight(env.model, env.data)
        mj.mjr_render(self._rect, self._scene, self._context)
        raw = np.empty((self.size, self.size, 3), dtype=np.uint8)
        mj.mjr_readPixels(raw, None, self._rect, self._context)
        # OpenGL's rows run bottom-up (a vertical flip), and MetaWorld's cameras are upside down (a
        # 180-degree rotation): together, a horizontal flip
        return np.ascontiguousarray(raw[:, ::-1])

    def close(self) -> None:
        if getattr(self, "_context", None) is not None:
            self._context.free()
            self._context = None
        if getattr(self, "_gl", None) is not None:
            self._gl.free()
            self._gl = None

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

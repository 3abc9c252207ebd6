"""``dp-sam2 demo``: the whole pipeline offline in a few minutes on a CPU.

1. the obs encoder of the default model (``DEFAULT_MODEL``, ``sam2.1_tiny``: the one ``segment``, ``track``
   and ``viz`` use): official weights when the resolver finds them, else downloaded as ``dp-sam2 download
   sam2.1_tiny`` does; with ``offline=True``, or when the network fails (5 s connect timeout), random
   weights and a loud warning that says how to get real ones;
2. a small synthetic Push-T-style replay buffer (zarr format 2, which DP's zarr 2.x reads; DP's layout:
   ``data/img`` float32 0-255, ``data/state``, ``data/action``, ``meta/episode_ends``);
3. its SAM 2 features, cached (:mod:`dp_sam2.cache`);
4. a small diffusion action head (diffusers' ``DDPMScheduler``, an MLP noise predictor
   conditioned on the obs encoder's pooled features) trained on the cached features;
5. pictures: the loss curve, predicted vs demonstrated actions, a mask overlay from the image
   predictor, a short track from the video predictor, a PCA colouring of the feature map. Made with
   random weights, every picture says so in its title, and so does its summary line.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from dp_sam2.checkpoints.registry import DEFAULT_MODEL

WORLD = 512.0  # Push-T's coordinate frame (pixels of its 512 x 512 window)
TARGET = (256.0, 256.0, math.pi / 4)  # the goal pose of the T


@dataclass(frozen=True)
class DemoSize:
    episodes: int
    steps_per_episode: int
    image_size: int  # obs encoder input
    predictor_size: int  # image / video predictor input
    track_frames: int
    train_steps: int
    batch_size: int


FULL = DemoSize(
    episodes=4, steps_per_episode=16, image_size=224, predictor_size=512, track_frames=6, train_steps=200, batch_size=32
)
QUICK = DemoSize(
    episodes=2, steps_per_episode=8, image_size=128, predictor_size=256, track_frames=3, train_steps=20, batch_size=8
)


# --------------------------------------------------------------------------- a Push-T-like world
def t_polygons(x: float, y: float, angle: float, scale: float = 1.0):
    """The two rectangles of a T (bar and stem) centred at its bar, in world coordinates."""
    parts = [((-60, -15), (60, -15), (60, 15), (-60, 15)), ((-15, 15), (15, 15), (15, 105), (-15, 105))]
    c, s = math.cos(angle), math.sin(angle)
    return [[(x + scale * (px * c - py * s), y + scale * (px * s + py * c)) for px, py in part] for part in parts]


def render(agent, block, size: int) -> np.ndarray:
    """A Push-T-style frame ``(size, size, 3)`` uint8: goal T (green), block T (grey), agent (blue)."""
    from PIL import Image, ImageDraw

    k = size / WORLD
    img = Image.new("RGB", (size, size), (240, 240, 240))
    draw = ImageDraw.Draw(img)
    for poly in t_polygons(*TARGET):
        draw.polygon([(px * k, py * k) for px, py in poly], fill=(144, 238, 144))
    for poly in t_polygons(*block):
        draw.polygon([(px * k, py * k) for px, py in poly], fill=(119, 136, 153))
    r = 15 * k
    draw.ellipse([agent[0] * k - r, agent[1] * k - r, agent[0] * k + r, agent[1] * k + r], fill=(65, 105, 225))
    return np.array(img)


def episode(rng: np.random.Generator, steps: int):
    """A scripted push: the agent walks behind the block, then pushes it towards the goal.
    Returns agent positions ``(T, 2)`` and block poses ``(T, 3)``."""
    block0 = np.array([rng.uniform(150, 360), rng.uniform(150, 360), rng.uniform(-math.pi, math.pi)])
    agent0 = rng.uniform(60, 450, size=2)
    goal = np.array(TARGET)
    approach = steps // 3
    agents, blocks = [], []
    for t in range(steps):
        if t < approach:
            a = t / max(approach, 1)
            block = block0
            behind = block0[:2] + 70 * (block0[:2] - goal[:2]) / (np.linalg.norm(block0[:2] - goal[:2]) + 1e-6)
            agent = (1 - a) * agent0 + a * behind
        else:
            a = (t - approach) / max(steps - approach - 1, 1) * 0.8
            block = (1 - a) * block0 + a * goal
            direction = (block[:2] - goal[:2]) / (np.linalg.norm(block[:2] - goal[:2]) + 1e-6)
            agent = block[:2] + 70 * direction
        agents.append(np.clip(agent, 15, WORLD - 15))
        blocks.append(block)
    return np.array(agents), np.array(blocks)


def write_replay(path: Path, size: DemoSize, seed: int):
    """DP's replay-buffer layout in zarr format 2 (DP's zarr 2.x reads it, whichever zarr is installed here);
    actions are the agent's next position."""
    from dp_sam2.cache.store import open_group

    rng = np.random.default_rng(seed)
    imgs, states, actions, ends, poses = [], [], [], [], []
    for _ in range(size.episodes):
        agents, blocks = episode(rng, size.steps_per_episode)
        for t in range(len(agents)):
            imgs.append(render(agents[t], blocks[t], 96).astype(np.float32))
            states.append(np.concatenate([agents[t], blocks[t]]))
            actions.append(agents[min(t + 1, len(agents) - 1)])
            poses.append((agents[t], blocks[t]))
        ends.append(len(imgs))
    from dp_sam2.cache import write_array

    root = open_group(path, "w")
    data, meta = root.require_group("data"), root.require_group("meta")
    states_arr, actions_arr = np.stack(states).astype(np.float32), np.stack(actions).astype(np.float32)
    write_array(data, "img", np.stack(imgs), (16, 96, 96, 3))
    write_array(data, "state", states_arr, states_arr.shape)
    write_array(data, "action", actions_arr, actions_arr.shape)
    write_array(meta, "episode_ends", np.array(ends, dtype=np.int64), (len(ends),))
    return states_arr, actions_arr, np.array(ends), poses


# --------------------------------------------------------------------------- the action head
class NoisePredictor(nn.Module):
    """An MLP that predicts the noise of an action chunk from (noisy chunk, step, condition)."""

    def __init__(self, horizon: int, action_dim: int, cond_dim: int, hidden: int = 256):
        super().__init__()
        self.horizon, self.action_dim = horizon, action_dim
        self.net = nn.Sequential(
            nn.Linear(horizon * action_dim + 32 + cond_dim, hidden),
            nn.Mish(),
            nn.Linear(hidden, hidden),
            nn.Mish(),
            nn.Linear(hidden, horizon * action_dim),
        )

    @staticmethod
    def embed(t: torch.Tensor, dim: int = 32) -> torch.Tensor:
        freqs = torch.exp(-math.log(10000.0) * torch.arange(dim // 2, device=t.device) / (dim // 2))
        angles = t.float()[:, None] * freqs[None]
        return torch.cat([angles.sin(), angles.cos()], dim=-1)

    def forward(self, noisy: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        x = torch.cat([noisy.flatten(1), self.embed(t), cond], dim=-1)
        return self.net(x).view(-1, self.horizon, self.action_dim)


def chunks(actions: np.ndarray, ends: np.ndarray, horizon: int) -> np.ndarray:
    """For every frame, the next ``horizon`` actions of its episode (the last one repeated)."""
    out = np.empty((len(actions), horizon, actions.shape[1]), dtype=np.float32)
    start = 0
    for end in ends:
        for t in range(start, end):
            idx = np.minimum(np.arange(t, t + horizon), end - 1)
            out[t] = actions[idx]
        start = end
    return out


def to_unit(x):
    return x / WORLD * 2 - 1


def from_unit(x):
    return (x + 1) / 2 * WORLD


def train_head(
    encoder,
    feats: torch.Tensor,
    agent_pos: torch.Tensor,
    targets: torch.Tensor,
    size: DemoSize,
    steps: int,
    seed: int,
    device,
):
    """DDPM training of the pooling head + noise predictor on cached features; returns the losses."""
    from diffusers import DDPMScheduler

    from dp_sam2._progress import progress

    torch.manual_seed(seed)
    scheduler = DDPMScheduler(
        num_train_timesteps=50, beta_schedule="squaredcos_cap_v2", clip_sample=True, prediction_type="epsilon"
    )
    head = NoisePredictor(targets.shape[1], targets.shape[2], encoder.output_shape()[0]).to(device)
    params = [p for p in encoder.parameters() if p.requires_grad] + list(head.parameters())
    optim = torch.optim.AdamW(params, lr=2e-3, weight_decay=1e-6)
    encoder.train()
    losses = []
    bar = progress(range(steps), desc="training the diffusion action head", unit="step")
    for _ in bar:
        idx = torch.randint(0, len(feats), (min(size.batch_size, len(feats)),))
        cond = encoder({"image": feats[idx].to(device), "agent_pos": agent_pos[idx].to(device)})
        clean = targets[idx].to(device)
        noise = torch.randn_like(clean)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (len(idx),), device=device)
        loss = nn.functional.mse_loss(head(scheduler.add_noise(clean, noise, t), t, cond), noise)
        optim.zero_grad()
        loss.backward()
        optim.step()
        losses.append(float(loss.detach()))
        bar.set_postfix(loss=f"{losses[-1]:.4f}")
    encoder.eval()
    return head, scheduler, losses


@torch.no_grad()
def sample_actions(encoder, head, scheduler, feats, agent_pos, seed: int):
    gen = torch.Generator().manual_seed(seed)
    cond = encoder({"image": feats, "agent_pos": agent_pos})
    x = torch.randn((len(feats), head.horizon, head.action_dim), generator=gen).to(cond.device)
    scheduler.set_timesteps(scheduler.config.num_train_timesteps)
    for t in scheduler.timesteps:
        eps = head(x, t.expand(len(x)).to(cond.device), cond)
        x = scheduler.step(eps, t, x).prev_sample
    return x


# --------------------------------------------------------------------------- pictures
def draw_actions(frame: np.ndarray, demo: np.ndarray, pred: np.ndarray, scale: int = 4):
    from PIL import Image, ImageDraw

    img = Image.fromarray(frame).resize((frame.shape[1] * scale, frame.shape[0] * scale), Image.NEAREST)
    draw = ImageDraw.Draw(img)
    k = frame.shape[0] * scale / WORLD
    for pts, color in ((demo, (0, 160, 0)), (pred, (220, 20, 60))):
        xy = [(float(x) * k, float(y) * k) for x, y in pts]
        draw.line(xy, fill=color, width=2)
        for x, y in xy:
            draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=color)
    return img


def demo_weights(offline: bool = False, base_url: str | None = None, timeout: float = 5.0):
    """The checkpoint of ``DEFAULT_MODEL``: found locally, else downloaded (unless ``offline``), else
    ``None`` (random weights) after a loud warning. A network that does not answer within
    ``timeout`` seconds, or drops the connection, means random weights, not an error."""
    from dp_sam2.checkpoints import download as dl
    from dp_sam2.checkpoints.registry import get_spec
    from dp_sam2.checkpoints.resolve import candidates, default_checkpoint, find_weights
    from dp_sam2.tools.commands import random_weights_warning

    spec = get_spec(DEFAULT_MODEL)
    path = find_weights(spec.name, random_weights=True, warn=False)
    if path is None and not offline:
        url = dl.url_for(spec, base_url)
        print(f"      no local {spec.filename}: downloading it from {url} (--offline to skip)", flush=True)
        try:
            dl.check_reachable(url, timeout)
            path = dl.download_one(spec, dl.default_dest(), base_url=base_url, retries=0, timeout=timeout).path
        except (dl.DownloadError, OSError, ValueError) as err:
            print(f"      download failed, continuing without it: {str(err).splitlines()[0]}", flush=True)
    if path is None:
        random_weights_warning(spec, [c.path for c in candidates(default_checkpoint(spec.name))])
    return path


def run_demo(out, steps: int | None = None, quick: bool = False, device=None, seed: int = 0, offline: bool = False):
    """Run the demo into ``out``; returns ``[(path, description), ...]`` of what it wrote.
    ``offline=True`` never downloads the checkpoint (see :func:`demo_weights`)."""
    from dp_sam2 import cache as C
    from dp_sam2.encoders.sam2.build import resolve_device
    from dp_sam2.tools.draw import grid, line_plot, pca_rgb, save_picture, titled

    size = QUICK if quick else FULL
    steps = size.train_steps if steps is None else int(steps)
    if steps < 1:
        raise ValueError(f"--steps must be >= 1, got {steps}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    dev = resolve_device(device)
    written = []

    print(f"[1/5] {DEFAULT_MODEL} weights")
    ckpt = demo_weights(offline)
    random = ckpt is None
    print(f"      {'official checkpoint ' + str(ckpt) if ckpt else 'RANDOM weights (see the warning above)'}")
    tag = " (RANDOM weights: not a result)" if random else ""

    print("[2/5] synthetic Push-T replay buffer")
    zarr_path = out / "pusht_demo.zarr"
    states, actions, ends, poses = write_replay(zarr_path, size, seed)
    written.append((zarr_path, f"replay buffer: {len(states)} frames in {len(ends)} episodes (DP's zarr layout)"))

    print("[3/5] caching the SAM 2 features")
    res = C.cache_features(
        zarr_path,
        DEFAULT_MODEL,
        str(ckpt) if ckpt else None,
        size.image_size,
        batch_size=16,
        device=dev,
        random_weights=True,
    )
    handle = C.open_cache(zarr_path, res.key)
    feats = torch.from_numpy(np.asarray(handle.arrays()["img"][:]))
    per_frame = feats[0].numel() * 2 / 1024
    written.append(
        (zarr_path / res.group, f"feature cache: {tuple(feats.shape)} float16, {per_frame:.0f} KiB per frame{tag}")
    )

    print("[4/5] training a diffusion action head on the cached features")
    source = C.Source(("image",), len(states), "", {"image": (96, 96, 3)})
    encoder = C.build_encoder(
        res.key, source, ckpt, dev, low_dim={"agent_pos": (2,)}, pooling="attention", feature_dim=64, input_range=[0, 1]
    )
    agent_pos = torch.from_numpy(to_unit(states[:, :2]))
    targets = torch.from_numpy(to_unit(chunks(actions, ends, 8)))
    head, scheduler, losses = train_head(encoder, feats, agent_pos, targets, size, steps, seed, dev)
    window = max(1, min(20, len(losses) // 5))
    smooth = np.convolve(losses, np.ones(window) / window, mode="valid")
    path = out / "loss_curve.png"
    what = f"DDPM noise-prediction loss ({DEFAULT_MODEL} features, {steps} steps)"
    plot = line_plot(
        {"loss": losses, f"moving average ({window})": np.concatenate([[np.nan] * (window - 1), smooth])},
        title=what,
        ylabel="MSE",
        log_y=True,
    )
    save_picture(titled(plot, what, random), path)
    written.append((path, f"loss curve: {losses[0]:.3f} -> {np.mean(losses[-10:]):.3f}{tag}"))

    show = np.linspace(0, len(states) - 1, 4).astype(int)
    sampled = sample_actions(encoder, head, scheduler, feats[show].to(dev), agent_pos[show].to(dev), seed)
    pred = from_unit(sampled.cpu().numpy())
    frames96 = zarr_open_frames(zarr_path)
    tiles = [draw_actions(frames96[i], from_unit(targets[i].numpy()), pred[k]) for k, i in enumerate(show)]
    path = out / "actions.png"
    sheet = grid(tiles, [f"frame {i}: demo (green) vs sampled (red)" for i in show], columns=4, height=256)
    save_picture(titled(sheet, "sampled action chunks vs the demonstration", random), path)
    written.append((path, f"sampled action chunks vs the demonstration{tag}"))

    pcas = []
    colours = pca_rgb(feats[show[:3]].float().numpy())  # one PCA for all three: comparable colours
    for k, i in enumerate(show[:3]):
        pcas += [frames96[i].astype(np.uint8), colours[k]]
    path = out / "features_pca.png"
    sheet = grid(
        pcas,
        [f"frame {i}" if j % 2 == 0 else "PCA of features" for i in show[:3] for j in range(2)],
        columns=6,
        height=192,
    )
    what = f"PCA colouring of the cached stride-16 feature maps ({feats.shape[2]}x{feats.shape[3]})"
    save_picture(titled(sheet, what, random), path)
    written.append((path, what + tag))

    print("[5/5] image and video predictors")
    written += predictor_pictures(out, ckpt, size, poses, dev)
    return written


def zarr_open_frames(path: Path) -> np.ndarray:
    import zarr

    return np.asarray(zarr.open_group(str(path), mode="r")["data"]["img"][:]).astype(np.uint8)


def predictor_pictures(out: Path, ckpt, size: DemoSize, poses, device):
    import torch

    from dp_sam2.checkpoints.registry import get_spec
    from dp_sam2.encoders.sam2.build import build_sam2, build_sam2_video_predictor
    from dp_sam2.predictors.image import SAM2ImagePredictor
    from dp_sam2.tools.commands import segment_array, track_frames
    from dp_sam2.tools.draw import grid, mask_note, overlay, save_picture, titled

    spec = get_spec(DEFAULT_MODEL)
    random = ckpt is None
    overrides = [f"++model.image_size={size.predictor_size}"]
    written = []
    render_size = 256
    k = render_size / WORLD
    agent, block = poses[0]
    frame = render(agent, block, render_size)
    click = (float(block[0] * k), float(block[1] * k))
    torch.manual_seed(0)
    model = build_sam2(spec.config, str(ckpt) if ckpt else None, device=device, hydra_overrides_extra=overrides)
    mask, score = segment_array(SAM2ImagePredictor(model), frame, point=click)
    path = out / "mask_overlay.png"
    area = int(mask.sum())
    what = f"image predictor, one click on the block: a mask of {area} px, {100 * area / mask.size:.0f}% of the image"
    if mask_note(mask):  # empty, or most of the image
        what += ": EMPTY" if area == 0 else ": most likely not the block"
    what += f" (score {score:.2f})"
    short = f"mask for one click on the block: {100 * area / mask.size:.0f}% of the image"
    save_picture(titled(overlay(frame, [mask], points=[click]), short, random), path)
    written.append((path, ("RANDOM weights, not a result - " if random else "") + what))
    del model

    torch.manual_seed(0)
    video = build_sam2_video_predictor(
        spec.config, str(ckpt) if ckpt else None, device=device, hydra_overrides_extra=overrides
    )
    video.show_progress = False if hasattr(video, "show_progress") else None
    n = min(size.track_frames, size.steps_per_episode)
    step = max(1, size.steps_per_episode // n)
    frames = [render(*poses[t], render_size) for t in range(0, step * n, step)]
    masks = track_frames(video, frames, (0, *click))
    tiles = [
        overlay(f, [m], points=[click] if i == 0 else ()) for i, (f, m) in enumerate(zip(frames, masks, strict=True))
    ]
    path = out / "track.png"
    with_mask = sum(int(np.asarray(m).any()) for m in masks)
    big = sum(int(bool(mask_note(m)) and np.asarray(m).any()) for m in masks)
    what = f"video predictor: {len(frames)} frames from one click on the block in the first; a mask on {with_mask}"
    what += f" of {len(frames)} frames" + (f", {big} of them covering most of the image" if big else "")
    sheet = grid(tiles, [f"t={i * step}" for i in range(len(tiles))], columns=4, height=192)
    save_picture(titled(sheet, what, random), path)
    written.append((path, ("RANDOM weights, not a result - " if random else "") + what))
    return written

"""Pictures for debugging (mask overlays, video tracks, PCA of encoder features, line plots) and
the commands behind ``dp-sam2 segment``, ``track``, ``viz`` and ``info``.

Drawing uses Pillow only (matplotlib is not a dependency).
"""
from __future__ import annotations

import os
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

COLORS = ((30, 144, 255), (255, 99, 71), (50, 205, 50), (238, 130, 238), (255, 215, 0))
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
VIDEO_SUFFIXES = (".mp4", ".mov", ".avi", ".mkv", ".webm")


# --------------------------------------------------------------------------- drawing
def load_image(path: str | os.PathLike) -> np.ndarray:
    """An image file as ``(H, W, 3)`` uint8 RGB."""
    from PIL import Image

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image not found: {path}")
    with Image.open(path) as img:
        return np.array(img.convert("RGB"))


def overlay(image: np.ndarray, masks, colors=COLORS, alpha: float = 0.5, points=(), box=None):
    """``image`` (H, W, 3) uint8 with boolean ``masks`` (each H x W) tinted, their outlines, and
    the prompt ``points`` (x, y) and ``box`` drawn. Returns a PIL image."""
    from PIL import Image, ImageDraw, ImageFilter

    out = image.astype(np.float32).copy()
    edges = []
    for i, mask in enumerate(masks):
        mask = np.asarray(mask, dtype=bool)
        color = np.array(colors[i % len(colors)], dtype=np.float32)
        out[mask] = (1 - alpha) * out[mask] + alpha * color
        pil_mask = Image.fromarray(mask.astype(np.uint8) * 255)
        edge = np.asarray(pil_mask.filter(ImageFilter.FIND_EDGES)) > 0
        edges.append((edge, color))
    for edge, color in edges:
        out[edge] = color
    pil = Image.fromarray(out.clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(pil)
    r = max(3, min(image.shape[:2]) // 60)
    for x, y in points:
        draw.ellipse([x - r, y - r, x + r, y + r], fill=(0, 255, 0), outline=(255, 255, 255), width=max(1, r // 3))
    if box is not None:
        draw.rectangle(list(box), outline=(0, 255, 0), width=max(2, r // 2))
    return pil


def pca_rgb(features) -> np.ndarray:
    """``(C, h, w)`` features -> ``(h, w, 3)`` uint8: the first three principal components,
    each scaled to [0, 255] (robustly, 1st-99th percentile). ``(N, C, h, w)`` -> ``(N, h, w, 3)``
    with one PCA fitted on all N maps, so colours mean the same in every picture."""
    feats = np.asarray(features, dtype=np.float64)
    if feats.ndim == 4:
        n, c, h, w = feats.shape
        joint = pca_rgb(feats.transpose(1, 0, 2, 3).reshape(c, n * h, w))
        return joint.reshape(n, h, w, 3)
    if feats.ndim != 3:
        raise ValueError(f"features must be (C, h, w) or (N, C, h, w), got shape {feats.shape}")
    c, h, w = feats.shape
    x = feats.reshape(c, -1).T
    x = x - x.mean(0, keepdims=True)
    _, _, vt = np.linalg.svd(x, full_matrices=False)
    comps = x @ vt[:3].T
    if comps.shape[1] < 3:
        comps = np.pad(comps, ((0, 0), (0, 3 - comps.shape[1])))
    lo, hi = np.percentile(comps, 1, axis=0), np.percentile(comps, 99, axis=0)
    comps = (comps - lo) / np.maximum(hi - lo, 1e-12)
    return (comps.clip(0, 1).reshape(h, w, 3) * 255).astype(np.uint8)


def side_by_side(images, labels=(), height: int = 256, pad: int = 6):
    """PIL images in a row, each scaled to ``height`` (nearest for small maps), with captions."""
    from PIL import Image, ImageDraw

    scaled = []
    for img in images:
        img = img if isinstance(img, Image.Image) else Image.fromarray(np.asarray(img))
        resample = Image.NEAREST if img.height < height / 2 else Image.BILINEAR
        scaled.append(img.resize((max(1, round(img.width * height / img.height)), height), resample))
    caption = 16 if labels else 0
    sheet = Image.new("RGB", (sum(i.width for i in scaled) + pad * (len(scaled) + 1), height + 2 * pad + caption), "white")
    draw = ImageDraw.Draw(sheet)
    x = pad
    for i, img in enumerate(scaled):
        sheet.paste(img, (x, pad + caption))
        if i < len(labels):
            draw.text((x, pad), str(labels[i]), fill=(0, 0, 0))
        x += img.width + pad
    return sheet


def grid(images, labels=(), columns: int = 4, height: int = 192):
    """Rows of :func:`side_by_side` stacked vertically."""
    from PIL import Image

    rows = [side_by_side(images[i: i + columns], labels[i: i + columns], height)
            for i in range(0, len(images), columns)]
    sheet = Image.new("RGB", (max(r.width for r in rows), sum(r.height for r in rows)), "white")
    y = 0
    for row in rows:
        sheet.paste(row, (0, y))
        y += row.height
    return sheet


def line_plot(series: dict, title: str = "", xlabel: str = "step", ylabel: str = "", size=(640, 400), log_y=False):
    """A line plot of ``{label: values}`` drawn with Pillow (axes, ticks, legend)."""
    from PIL import Image, ImageDraw

    width, height = size
    left, right, top, bottom = 64, 16, 32, 44
    img = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(img)
    values = [np.asarray(v, dtype=np.float64) for v in series.values() if len(v)]
    if not values:
        raise ValueError("line_plot needs at least one non-empty series")
    tf = (lambda v: np.log10(np.maximum(v, 1e-12))) if log_y else (lambda v: v)
    ys = np.concatenate([tf(v) for v in values])
    ys = ys[np.isfinite(ys)]
    if not len(ys):
        raise ValueError("line_plot needs at least one finite value")
    y0, y1 = float(ys.min()), float(ys.max())
    y1 = y1 if y1 > y0 else y0 + 1.0
    n = max(len(v) for v in values)
    px = lambda i: left + (width - left - right) * (i / max(n - 1, 1))  # noqa: E731
    py = lambda y: top + (height - top - bottom) * (1 - (y - y0) / (y1 - y0))  # noqa: E731
    draw.rectangle([left, top, width - right, height - bottom], outline=(0, 0, 0))
    for k in range(5):
        yv = y0 + (y1 - y0) * k / 4
        label = f"{10 ** yv:.3g}" if log_y else f"{yv:.3g}"
        draw.line([left - 4, py(yv), left, py(yv)], fill=(0, 0, 0))
        draw.line([left, py(yv), width - right, py(yv)], fill=(230, 230, 230))
        draw.text((4, py(yv) - 6), label, fill=(0, 0, 0))
    for k in range(5):
        iv = (n - 1) * k / 4
        draw.line([px(iv), height - bottom, px(iv), height - bottom + 4], fill=(0, 0, 0))
        draw.text((px(iv) - 8, height - bottom + 6), f"{int(round(iv))}", fill=(0, 0, 0))
    for j, (label, v) in enumerate(series.items()):
        v = tf(np.asarray(v, dtype=np.float64))
        color = COLORS[j % len(COLORS)]
        points = [(px(i), py(float(y))) for i, y in enumerate(v) if np.isfinite(y)]
        if len(points) > 1:
            draw.line(points, fill=color, width=2)
        draw.text((width - right - 8 - 7 * len(str(label)), top + 6 + 14 * j), str(label), fill=color)
    draw.text((left, 10), title, fill=(0, 0, 0))
    draw.text(((width - left) // 2 + left - 10, height - 18), xlabel, fill=(0, 0, 0))
    if ylabel:
        draw.text((4, 10), ylabel, fill=(0, 0, 0))
    return img


# --------------------------------------------------------------------------- models
def loud_warning(lines) -> None:
    """A warning that cannot be missed: a banner on stderr and a Python warning."""
    text = "\n".join(lines)
    bar = "!" * 78
    print(f"\n{bar}\n{text}\n{bar}\n", file=sys.stderr, flush=True)
    warnings.warn(text.replace("\n", " "), stacklevel=3)


def find_checkpoint(model: str, checkpoint=None, random_weights: bool = False):
    """The checkpoint file of ``model`` (``checkpoint`` or ``checkpoints/<official name>``, found
    by :mod:`dp_sam2.resolve`), or ``None`` with a loud warning when ``random_weights`` (or
    ``DP_SAM2_ALLOW_MISSING_CHECKPOINT=1``) allows it."""
    from dp_sam2.registry import get_spec
    from dp_sam2.resolve import CheckpointNotFoundError, allow_missing_checkpoint, resolve_checkpoint

    spec = get_spec(model)
    wanted = checkpoint or f"checkpoints/{spec.filename}"
    try:
        return resolve_checkpoint(wanted, spec.name)
    except CheckpointNotFoundError as err:
        if not (random_weights or allow_missing_checkpoint()):
            raise
        loud_warning([f"WARNING: no {spec.name} checkpoint found: using RANDOM weights.",
                      "Masks, tracks and features are then meaningless (the pipeline still runs).",
                      f"Get the official weights with:  dp-sam2 download {spec.name}",
                      f"(or put {spec.filename} in $DP_SAM2_CHECKPOINT_DIR). Looked in:",
                      *[f"  {p}" for p in err.tried]])
        return None


def build_model(model: str, checkpoint=None, image_size=None, device=None, random_weights=False, video=False):
    """A SAM 2 model (or video predictor) for the debugging commands."""
    import torch

    from dp_sam2.encoders.sam2.build import build_sam2, build_sam2_video_predictor
    from dp_sam2.registry import get_spec

    spec = get_spec(model)
    path = find_checkpoint(spec.name, checkpoint, random_weights)
    overrides = [f"++model.image_size={int(image_size)}"] if image_size else []
    if path is None:
        torch.manual_seed(0)
    builder = build_sam2_video_predictor if video else build_sam2
    return builder(spec.config, ckpt_path=str(path) if path else None, device=device, hydra_overrides_extra=overrides)


@dataclass(frozen=True)
class SegmentResult:
    path: Path
    score: float
    area: int
    mask: np.ndarray


def segment_array(predictor, image: np.ndarray, point=None, box=None):
    """Best mask of ``image`` for a positive ``point`` (x, y) and/or ``box``; (mask, score)."""
    if point is None and box is None:
        raise ValueError("give a prompt: --point X,Y and/or --box x0,y0,x1,y1")
    predictor.set_image(image)
    coords = np.array([point], dtype=np.float32) if point is not None else None
    labels = np.array([1], dtype=np.int32) if point is not None else None
    masks, scores, _ = predictor.predict(point_coords=coords, point_labels=labels,
                                         box=np.array(box, dtype=np.float32) if box is not None else None,
                                         multimask_output=box is None)
    best = int(np.argmax(scores))
    return np.asarray(masks[best]) > 0, float(scores[best])


def segment_image(image, point=None, box=None, model="sam2.1_tiny", checkpoint=None, out="mask.png",
                  device=None, image_size=None, random_weights=False) -> SegmentResult:
    from dp_sam2.encoders.predictors.image import SAM2ImagePredictor

    rgb = load_image(image)
    _check_inside(point, box, rgb.shape)
    predictor = SAM2ImagePredictor(build_model(model, checkpoint, image_size, device, random_weights))
    mask, score = segment_array(predictor, rgb, point, box)
    out = _out_file(out)
    overlay(rgb, [mask], points=[point] if point else (), box=box).save(out)
    return SegmentResult(out, score, int(mask.sum()), mask)


def _check_inside(point, box, shape) -> None:
    h, w = shape[:2]
    if point is not None and not (0 <= point[0] < w and 0 <= point[1] < h):
        raise ValueError(f"point {point} is outside the {w}x{h} (WxH) image")
    if box is not None and not (box[0] < box[2] and box[1] < box[3]):
        raise ValueError(f"box must be x0,y0,x1,y1 with x0 < x1 and y0 < y1, got {box}")


def _out_file(out) -> Path:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix.lower() not in (".png", ".jpg", ".jpeg"):
        raise ValueError(f"--out must be a .png or .jpg file, got {out}")
    return out


def read_frames(video, max_frames=None) -> list[np.ndarray]:
    """Frames of a video file (PyAV) or a folder of images named in order, as uint8 RGB."""
    path = Path(video)
    if not path.exists():
        raise FileNotFoundError(f"video not found: {path}")
    if path.is_dir():
        files = [p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES]
        if not files:
            raise ValueError(f"no image frames ({', '.join(IMAGE_SUFFIXES)}) in the folder {path}")
        files.sort(key=lambda p: (int(p.stem), "") if p.stem.isdigit() else (1 << 62, p.name))
        files = files[:max_frames] if max_frames else files
        return [load_image(p) for p in files]
    if path.suffix.lower() not in VIDEO_SUFFIXES:
        raise ValueError(f"expected a video file ({', '.join(VIDEO_SUFFIXES)}) or a folder of frames, got {path}")
    from dp_sam2.encoders.predictors.video_io import decode_video_file

    frames = []
    for frame in decode_video_file(path):
        frames.append(frame)
        if max_frames and len(frames) >= max_frames:
            break
    if not frames:
        raise ValueError(f"{path} has no frames")
    return frames


def track_frames(predictor, frames: list[np.ndarray], point) -> list[np.ndarray]:
    """Masks (bool H x W) of the object clicked at ``point`` = (frame, x, y), for every frame."""
    import torch

    frame_idx, x, y = point
    if not 0 <= frame_idx < len(frames):
        raise ValueError(f"the click is on frame {frame_idx} but the video has {len(frames)} frames")
    with torch.inference_mode():
        state = predictor.init_state(video_path=frames)
        predictor.add_new_points_or_box(state, frame_idx=frame_idx, obj_id=1,
                                        points=np.array([[x, y]], dtype=np.float32), labels=np.array([1], np.int32))
        masks = [None] * len(frames)
        for reverse in (False, True):
            if reverse and frame_idx == 0:
                continue
            for idx, _, logits in predictor.propagate_in_video(state, start_frame_idx=frame_idx, reverse=reverse):
                masks[idx] = (logits[0, 0] > 0).cpu().numpy()
    return masks


def track_video(video, point, model="sam2.1_tiny", checkpoint=None, out_dir="track", device=None,
                image_size=None, max_frames=None, random_weights=False) -> list[Path]:
    frames = read_frames(video, max_frames)
    frame_idx, x, y = point
    if frame_idx < len(frames):
        _check_inside((x, y), None, frames[frame_idx].shape)
    predictor = build_model(model, checkpoint, image_size, device, random_weights, video=True)
    masks = track_frames(predictor, frames, point)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths, tiles = [], []
    for i, (frame, mask) in enumerate(zip(frames, masks)):
        pic = overlay(frame, [mask], points=[(x, y)] if i == frame_idx else ())
        path = out / f"{i:05d}.png"
        pic.save(path)
        paths.append(path)
        tiles.append(pic)
    sheet = out / "track_sheet.png"
    grid(tiles, [f"frame {i}" for i in range(len(tiles))]).save(sheet)
    return paths + [sheet]


def visualize_features(image, obs_encoder="sam2_large", checkpoint=None, out="features.png", image_size=None,
                       device=None, random_weights=False) -> Path:
    """The image beside the PCA colouring of the obs encoder's stride-16 features."""
    import torch

    from dp_sam2.cache import CacheKey, RANDOM_INIT, Source, build_encoder
    from dp_sam2.registry import get_spec

    rgb = load_image(image)
    spec = get_spec(obs_encoder)
    path = find_checkpoint(spec.name, checkpoint, random_weights)
    size = int(image_size) if image_size else spec.obs_image_size
    key = CacheKey(spec.name, RANDOM_INIT if path is None else "file", size)
    source = Source(("image",), 1, "", {"image": rgb.shape})
    encoder = build_encoder(key, source, path, device)
    x = torch.from_numpy(rgb).float().permute(2, 0, 1)[None] / 255 * 2 - 1
    with torch.inference_mode():
        feats = encoder.encode_images(x.to(encoder.device), "image")[0].float().cpu().numpy()
    out = _out_file(out)
    h, w = feats.shape[1:]
    side_by_side([rgb, pca_rgb(feats)], [f"input ({rgb.shape[1]}x{rgb.shape[0]})",
                                         f"PCA of {spec.name} stride-16 features ({feats.shape[0]}x{h}x{w})"]).save(out)
    return out


# --------------------------------------------------------------------------- info
def _version(module: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(module)
    except metadata.PackageNotFoundError:
        return "not installed"


def hydra_sees_obs_encoder_group() -> tuple[bool | None, str]:
    """Whether a fresh Hydra app finds the ``obs_encoder`` group (through dp_sam2's plugin)."""
    import tempfile

    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    if GlobalHydra.instance().is_initialized():
        return None, "not checked (Hydra is already initialised in this process)"
    try:
        with tempfile.TemporaryDirectory() as empty, initialize_config_dir(empty, version_base=None):
            options = GlobalHydra.instance().config_loader().get_group_options("obs_encoder")
    except Exception as err:  # noqa: BLE001 - a diagnosis must not crash
        return False, f"error while checking: {type(err).__name__}: {err}"
    finally:
        GlobalHydra.instance().clear()
    if options:
        return True, "yes: " + ", ".join(sorted(options))
    return False, ("NO - the search-path plugin hydra_plugins/dp_sam2 was not found; `+obs_encoder=...` "
                   "would silently become a string. Reinstall dp_sam2 (pip install .) in this environment.")


def info_lines() -> list[str]:
    import platform

    import torch

    from dp_sam2 import __version__
    from dp_sam2.registry import MODELS
    from dp_sam2.resolve import ENV_ALLOW_MISSING, ENV_CACHE, ENV_CHECKPOINT_DIR, candidates, cache_dir, dp_repo_root

    lines = [f"dp_sam2 {__version__} ({Path(__file__).resolve().parent})",
             f"python {platform.python_version()}, " + ", ".join(
                 f"{m} {_version(m)}" for m in ("torch", "torchvision", "hydra-core", "zarr", "diffusers", "numpy", "pillow", "av")),
             ""]
    cuda = torch.cuda.is_available()
    devices = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())) if cuda else ""
    lines.append(f"device: {'cuda (' + devices + ')' if cuda else 'cpu (no CUDA device visible)'}; "
                 f"torch built with CUDA {torch.version.cuda or 'none'}")
    try:
        from dp_sam2.ext import implementation

        impl = f"cpu: {implementation('cpu')}" + (f"; cuda: {implementation('cuda')}" if cuda else "")
    except Exception as err:  # noqa: BLE001
        impl = f"unavailable ({type(err).__name__}: {err})"
    lines += [f"connected components: {impl}", ""]
    root = dp_repo_root()
    lines.append(f"Diffusion Policy repo root: {root if root else 'diffusion_policy not importable'}")
    for env in (ENV_CHECKPOINT_DIR, ENV_CACHE, ENV_ALLOW_MISSING):
        lines.append(f"${env} = {os.environ.get(env, '(unset)')}")
    lines.append(f"user cache: {cache_dir()}")
    example = f"checkpoints/{MODELS['sam2_large'].filename}"
    lines.append(f"lookup order for {example}: " + " -> ".join(f"{c.path} ({c.origin})" for c in candidates(example)))
    lines.append("checkpoints:")
    from dp_sam2.resolve import CheckpointNotFoundError, resolve_checkpoint

    for spec in MODELS.values():
        try:
            where = str(resolve_checkpoint(f"checkpoints/{spec.filename}", spec.name))
        except CheckpointNotFoundError:
            where = f"not found (dp-sam2 download {spec.name})"
        lines.append(f"  {spec.name:16s} {spec.filename:26s} {where}")
    ok, text = hydra_sees_obs_encoder_group()
    lines += ["", f"Hydra sees the obs_encoder group: {text}"]
    return lines

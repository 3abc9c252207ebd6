"""The commands behind ``dp-sam2 segment``, ``track`` and ``viz``: build a model, run it on the
user's image or video, write the pictures."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dp_sam2.tools.draw import grid, load_image, loud_warning, overlay, pca_rgb, side_by_side

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
VIDEO_SUFFIXES = (".mp4", ".mov", ".avi", ".mkv", ".webm")


def find_checkpoint(model: str, checkpoint=None, random_weights: bool = False):
    """The checkpoint file of ``model`` (:func:`dp_sam2.checkpoints.resolve.find_weights`), or
    ``None`` with a loud warning when ``random_weights`` (or ``DP_SAM2_ALLOW_MISSING_CHECKPOINT=1``)
    allows random weights."""
    from dp_sam2.checkpoints.registry import get_spec
    from dp_sam2.checkpoints.resolve import candidates, default_checkpoint, find_weights

    spec = get_spec(model)
    path = find_weights(spec.name, checkpoint, random_weights=random_weights, warn=False)
    if path is None:
        random_weights_warning(spec, [c.path for c in candidates(checkpoint or default_checkpoint(spec.name))])
    return path


def random_weights_warning(spec, tried) -> None:
    loud_warning(
        [
            f"WARNING: no {spec.name} checkpoint found: using RANDOM weights.",
            "Masks, tracks and features are then meaningless (the pipeline still runs).",
            f"Get the official weights with:  dp-sam2 download {spec.name}",
            f"(or put {spec.filename} in $DP_SAM2_CHECKPOINT_DIR). Looked in:",
            *[f"  {p}" for p in tried],
        ]
    )


def build_model(model: str, checkpoint=None, image_size=None, device=None, random_weights=False, video=False):
    """A SAM 2 model (or video predictor) for the debugging commands; random weights (when allowed
    and no file is found) are drawn from seed 0 without touching the caller's random state."""
    import torch

    from dp_sam2.checkpoints.registry import get_spec
    from dp_sam2.encoders.sam2.build import build_sam2, build_sam2_video_predictor

    spec = get_spec(model)
    path = find_checkpoint(spec.name, checkpoint, random_weights)
    overrides = [f"++model.image_size={int(image_size)}"] if image_size else []
    builder = build_sam2_video_predictor if video else build_sam2
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return builder(
            spec.config, ckpt_path=str(path) if path else None, device=device, hydra_overrides_extra=overrides
        )


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
    masks, scores, _ = predictor.predict(
        point_coords=coords,
        point_labels=labels,
        box=np.array(box, dtype=np.float32) if box is not None else None,
        multimask_output=box is None,
    )
    best = int(np.argmax(scores))
    return np.asarray(masks[best]) > 0, float(scores[best])


def segment_image(
    image,
    point=None,
    box=None,
    model="sam2.1_tiny",
    checkpoint=None,
    out="mask.png",
    device=None,
    image_size=None,
    random_weights=False,
) -> SegmentResult:
    from dp_sam2.predictors.image import SAM2ImagePredictor

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
    from dp_sam2.predictors.video_io import decode_video_file

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
        predictor.add_new_points_or_box(
            state,
            frame_idx=frame_idx,
            obj_id=1,
            points=np.array([[x, y]], dtype=np.float32),
            labels=np.array([1], np.int32),
        )
        masks = [None] * len(frames)
        for reverse in (False, True):
            if reverse and frame_idx == 0:
                continue
            for idx, _, logits in predictor.propagate_in_video(state, start_frame_idx=frame_idx, reverse=reverse):
                masks[idx] = (logits[0, 0] > 0).cpu().numpy()
    return masks


def track_video(
    video,
    point,
    model="sam2.1_tiny",
    checkpoint=None,
    out_dir="track",
    device=None,
    image_size=None,
    max_frames=None,
    random_weights=False,
) -> list[Path]:
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


def visualize_features(
    image,
    obs_encoder="sam2_large",
    checkpoint=None,
    out="features.png",
    image_size=None,
    device=None,
    random_weights=False,
) -> Path:
    """The image beside the PCA colouring of the obs encoder's stride-16 features."""
    import torch

    from dp_sam2.cache import RANDOM_INIT, CacheKey, Source, build_encoder
    from dp_sam2.checkpoints.registry import get_spec

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
    side_by_side(
        [rgb, pca_rgb(feats)],
        [f"input ({rgb.shape[1]}x{rgb.shape[0]})", f"PCA of {spec.name} stride-16 features ({feats.shape[0]}x{h}x{w})"],
    ).save(out)
    return out

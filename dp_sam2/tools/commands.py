"""The commands behind ``dp-sam2 segment``, ``track`` and ``viz``: build a model, run it on the
user's image or video, write the pictures."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dp_sam2.checkpoints.registry import DEFAULT_MODEL
from dp_sam2.tools.draw import (
    grid,
    load_image,
    loud_warning,
    mask_note,
    overlay,
    pca_rgb,
    save_picture,
    side_by_side,
    titled,
)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
VIDEO_SUFFIXES = (".mp4", ".mov", ".avi", ".mkv", ".webm")


def find_checkpoint(model: str, checkpoint=None, random_weights: bool = False):
    """The checkpoint file of ``model``, or ``None`` (random weights) with a loud warning.

    An explicit ``checkpoint`` must exist (absolute as given, a relative one looked up as everywhere,
    :func:`dp_sam2.checkpoints.resolve.resolve_checkpoint`): ``random_weights`` never replaces a file the
    caller named. Without one, ``checkpoints/<official file name>`` is looked up and, when no place has it,
    ``random_weights`` (or ``DP_SAM2_ALLOW_MISSING_CHECKPOINT=1``) allows random weights
    (:func:`dp_sam2.checkpoints.resolve.find_weights`)."""
    from dp_sam2.checkpoints.files import check_is_checkpoint
    from dp_sam2.checkpoints.registry import get_spec
    from dp_sam2.checkpoints.resolve import candidates, default_checkpoint, find_weights, resolve_checkpoint

    spec = get_spec(model)
    if checkpoint is not None and not (isinstance(checkpoint, str) and not checkpoint.strip()):
        path = resolve_checkpoint(checkpoint, spec.name)
    else:
        path = find_weights(spec.name, None, random_weights=random_weights, warn=False)
    if path is None:
        random_weights_warning(spec, [c.path for c in candidates(default_checkpoint(spec.name))])
    else:
        check_is_checkpoint(path)  # a JPEG passed as --checkpoint is named before a model is built
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


def check_image_size(image_size) -> int | None:
    """``None`` or a positive multiple of 32 (Hiera's windows and position embedding need it), as an int."""
    if image_size is None:
        return None
    if isinstance(image_size, bool) or not isinstance(image_size, (int, np.integer)):
        raise TypeError(f"image_size must be an int (a multiple of 32, e.g. 512), got {image_size!r}")
    if image_size <= 0 or image_size % 32:
        below, above = max(32, image_size // 32 * 32), (image_size // 32 + 1) * 32
        raise ValueError(f"image_size must be a positive multiple of 32, got {image_size} (e.g. {below} or {above})")
    return int(image_size)


def build_model(model: str, checkpoint=None, image_size=None, device=None, random_weights=False, video=False):
    """A SAM 2 model (or video predictor) for the debugging commands; random weights (when allowed
    and no file is found) are drawn from seed 0 without touching the caller's random state."""
    from dp_sam2.checkpoints.registry import get_spec

    spec = get_spec(model)
    check_image_size(image_size)
    return build_with(spec.name, find_checkpoint(spec.name, checkpoint, random_weights), image_size, device, video)


def build_with(model: str, path, image_size=None, device=None, video=False):
    """The model of :func:`build_model` with the weights of ``path`` (``None``: random, seed 0)."""
    import torch

    from dp_sam2.checkpoints.registry import get_spec
    from dp_sam2.encoders.sam2.build import build_sam2, build_sam2_video_predictor

    spec = get_spec(model)
    overrides = [f"++model.image_size={check_image_size(image_size)}"] if image_size else []
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
    random_weights: bool = False  # the picture and the mask come from random weights: not a result
    note: str = ""  # what looks wrong with the mask (empty, covers most of the image), else ""
    model: str = DEFAULT_MODEL

    @property
    def fraction(self) -> float:
        """The share of the image's pixels in the mask."""
        return self.area / max(1, self.mask.size)


def check_prompt(point=None, box=None) -> None:
    if point is None and box is None:
        raise ValueError("give a prompt: --point X,Y and/or --box x0,y0,x1,y1")


def segment_array(predictor, image: np.ndarray, point=None, box=None):
    """Best mask of ``image`` for a positive ``point`` (x, y) and/or ``box``; (mask, score)."""
    check_prompt(point, box)
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
    model=DEFAULT_MODEL,
    checkpoint=None,
    out="mask.png",
    device=None,
    image_size=None,
    random_weights=False,
) -> SegmentResult:
    """The best mask of ``image`` for the prompt, drawn over it into ``out``. Every argument is checked
    before the model is built; a picture made with random weights says so in its title."""
    from dp_sam2.checkpoints.registry import get_spec
    from dp_sam2.predictors.image import SAM2ImagePredictor

    check_prompt(point, box)
    spec = get_spec(model)
    check_image_size(image_size)
    out = _out_file(out)
    rgb = load_image(image)
    _check_inside(point, box, rgb.shape)
    path = find_checkpoint(spec.name, checkpoint, random_weights)
    predictor = SAM2ImagePredictor(build_with(spec.name, path, image_size, device))
    mask, score = segment_array(predictor, rgb, point, box)
    area = int(mask.sum())
    what = f"{spec.name} mask, score {score:.2f}, {area} px ({100 * area / mask.size:.0f}% of the image)"
    save_picture(titled(overlay(rgb, [mask], points=[point] if point else (), box=box), what, path is None), out)
    return SegmentResult(out, score, area, mask, path is None, mask_note(mask), spec.name)


def _check_inside(point, box, shape) -> None:
    h, w = shape[:2]
    if point is not None and not (0 <= point[0] < w and 0 <= point[1] < h):
        raise ValueError(f"point {point} is outside the {w}x{h} (WxH) image")
    if box is not None and not (box[0] < box[2] and box[1] < box[3]):
        raise ValueError(f"box must be x0,y0,x1,y1 with x0 < x1 and y0 < y1, got {box}")


def _out_file(out) -> Path:
    out = Path(out)
    if out.suffix.lower() not in (".png", ".jpg", ".jpeg"):
        raise ValueError(f"--out must be a .png or .jpg file, got {out}")
    out.parent.mkdir(parents=True, exist_ok=True)
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


@dataclass(frozen=True)
class TrackResult:
    paths: list  # one overlay per frame, then the contact sheet
    n_frames: int
    frames_with_mask: int  # frames whose mask has at least one pixel
    random_weights: bool
    notes: list  # (frame, what looks wrong with its mask), for the frames where something does
    model: str = DEFAULT_MODEL

    def summary(self) -> str:
        """One line: how many frames have a mask, and whether the weights were random."""
        text = f"a mask on {self.frames_with_mask} of {self.n_frames} frames"
        if self.random_weights:
            text += " (RANDOM weights: the track is not a result)"
        return text


def track_video(
    video,
    point,
    model=DEFAULT_MODEL,
    checkpoint=None,
    out_dir="track",
    device=None,
    image_size=None,
    max_frames=None,
    random_weights=False,
) -> TrackResult:
    """Track the object clicked at ``point`` = (frame, x, y) through ``video``; an overlay per frame and a
    contact sheet in ``out_dir``, titled RANDOM WEIGHTS when made with random weights."""
    from dp_sam2.checkpoints.registry import get_spec

    spec = get_spec(model)
    check_image_size(image_size)
    if max_frames is not None and (isinstance(max_frames, bool) or int(max_frames) < 1):
        raise ValueError(f"max_frames must be a positive number of frames, got {max_frames!r}")
    frames = read_frames(video, max_frames)
    frame_idx, x, y = point
    if not 0 <= frame_idx < len(frames):
        raise ValueError(f"the click is on frame {frame_idx} but the video has {len(frames)} frames")
    _check_inside((x, y), None, frames[frame_idx].shape)
    path = find_checkpoint(spec.name, checkpoint, random_weights)
    predictor = build_with(spec.name, path, image_size, device, video=True)
    masks = track_frames(predictor, frames, point)
    random = path is None
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths, tiles, notes = [], [], []
    for i, (frame, mask) in enumerate(zip(frames, masks, strict=True)):
        pic = overlay(frame, [mask], points=[(x, y)] if i == frame_idx else ())
        note = mask_note(mask)
        if note:
            notes.append((i, note))
        label = f"{spec.name} track, frame {i}" + (f": {note}" if note else "")
        paths.append(save_picture(titled(pic, label, random), out / f"{i:05d}.png"))
        tiles.append(pic)
    with_mask = sum(int(np.asarray(m).any()) for m in masks)
    sheet = grid(tiles, [f"frame {i}" for i in range(len(tiles))])
    what = f"{spec.name} track from a click on frame {frame_idx}: a mask on {with_mask} of {len(frames)} frames"
    paths.append(save_picture(titled(sheet, what, random), out / "track_sheet.png"))
    return TrackResult(paths, len(frames), with_mask, random, notes, spec.name)


@dataclass(frozen=True)
class PictureResult:
    """A picture written to ``path``; ``random_weights``: it was made with random weights (and says so)."""

    path: Path
    random_weights: bool

    def __str__(self) -> str:
        return str(self.path)

    def __fspath__(self) -> str:
        return str(self.path)


def visualize_features(
    image,
    obs_encoder=DEFAULT_MODEL,
    checkpoint=None,
    out="features.png",
    image_size=None,
    device=None,
    random_weights=False,
) -> PictureResult:
    """The image beside the PCA colouring of the obs encoder's stride-16 features (titled RANDOM WEIGHTS
    when made with random weights)."""
    import torch

    from dp_sam2.cache import RANDOM_INIT, CacheKey, Source, build_encoder
    from dp_sam2.checkpoints.registry import get_spec

    spec = get_spec(obs_encoder)
    check_image_size(image_size)
    out = _out_file(out)
    rgb = load_image(image)
    path = find_checkpoint(spec.name, checkpoint, random_weights)
    size = int(image_size) if image_size else spec.obs_image_size
    key = CacheKey(spec.name, RANDOM_INIT if path is None else "file", size)
    source = Source(("image",), 1, "", {"image": rgb.shape})
    encoder = build_encoder(key, source, path, device)
    x = torch.from_numpy(rgb).float().permute(2, 0, 1)[None] / 255 * 2 - 1
    with torch.inference_mode():
        feats = encoder.encode_images(x.to(encoder.device), "image")[0].float().cpu().numpy()
    h, w = feats.shape[1:]
    sheet = side_by_side(
        [rgb, pca_rgb(feats)],
        [f"input ({rgb.shape[1]}x{rgb.shape[0]})", f"PCA of {spec.name} stride-16 features ({feats.shape[0]}x{h}x{w})"],
    )
    save_picture(titled(sheet, f"PCA of {spec.name} stride-16 features at {size} px", path is None), out)
    return PictureResult(out, path is None)


# --------------------------------------------------------------------------- what the command line says
def report_lines(result) -> list[str]:
    """The lines the command line prints after a segment or track result: what looks wrong with the masks
    (empty, covering most of the image) and, with random weights, that the pictures are not a result."""
    lines = []
    if isinstance(result, SegmentResult):
        if result.note:
            lines.append(f"note: {result.note}")
    elif isinstance(result, TrackResult):
        for frame, note in result.notes[:5]:
            lines.append(f"note: frame {frame}: {note}")
        if len(result.notes) > 5:
            lines.append(f"note: ... and {len(result.notes) - 5} more frames like these")
    if getattr(result, "random_weights", False):
        lines.append(
            "note: made with RANDOM weights (the pictures say so in their title): masks mean nothing. "
            f"Get real weights with `dp-sam2 download {getattr(result, 'model', DEFAULT_MODEL)}`."
        )
    return lines


def explain_error(err: BaseException, args) -> str:
    """The message the command line prints for ``err``: a missing checkpoint names every place tried and
    what to do from the command line (`dp-sam2 download <name>`, or ``--random-weights`` where the command
    has it; an explicit ``--checkpoint`` is never replaced by random weights)."""
    from dp_sam2.checkpoints.resolve import CheckpointNotFoundError

    if not isinstance(err, CheckpointNotFoundError) or not err.looked_in:
        return str(err)
    download = f"`{err.download_command}`" if err.download_command else "`dp-sam2 download <model name>`"
    if getattr(args, "checkpoint", None):
        return (
            f"{err.looked_in}\n--checkpoint names a file that does not exist (random weights never replace an "
            f"explicit --checkpoint). Give the right path, or download the official file with {download}, "
            f"or drop --checkpoint and add --random-weights to run with random weights."
        )
    if hasattr(args, "random_weights"):
        return (
            f"{err.looked_in}\nDownload it with {download} (into the user cache), or add --random-weights to "
            f"run with random weights (the pictures then mean nothing, and say so)."
        )
    return str(err)

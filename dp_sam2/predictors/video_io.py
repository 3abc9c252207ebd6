"""Reading video frames for the video predictor.

Sources: a folder of JPEG frames named by index (``00000.jpg``, as the official demo), an mp4 (or
other container PyAV can open), a list of ``HxWx3`` uint8 arrays, or a ``Tx3xHxW`` tensor (uint8,
or float in [0, 1]). Every frame is resized to ``image_size x image_size`` as the official loader
does (PIL's default resampling on the uint8 RGB image), scaled to [0, 1] and normalised with the
ImageNet mean and std.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

IMG_MEAN = (0.485, 0.456, 0.406)
IMG_STD = (0.229, 0.224, 0.225)
JPEG_SUFFIXES = (".jpg", ".jpeg", ".JPG", ".JPEG")
VIDEO_SUFFIXES = (".mp4", ".MP4", ".mov", ".MOV", ".avi", ".AVI", ".mkv", ".webm")


@dataclass
class LoadedVideo:
    images: torch.Tensor  # [T, 3, S, S] float32, normalised
    video_height: int
    video_width: int


def _progress(items, enabled: bool, desc: str, total: int | None = None):
    if not enabled:
        return items
    from dp_sam2._progress import progress

    return progress(items, desc=desc, total=total)


def _normalise_(images: torch.Tensor) -> torch.Tensor:
    """In place: ``(x - mean) / std`` per channel, as the official loader."""
    mean = torch.tensor(IMG_MEAN, dtype=torch.float32, device=images.device)[:, None, None]
    std = torch.tensor(IMG_STD, dtype=torch.float32, device=images.device)[:, None, None]
    images -= mean
    images /= std
    return images


def resize_rgb_uint8(frame: np.ndarray, image_size: int) -> torch.Tensor:
    """``HxWx3`` uint8 -> ``3xSxS`` float32 in [0, 1] (PIL resize, as the official loader)."""
    from PIL import Image

    resized = np.asarray(Image.fromarray(frame).resize((image_size, image_size)))
    return torch.from_numpy(resized / 255.0).permute(2, 0, 1).float()


def _check_rgb_array(frame, index: int) -> np.ndarray:
    if isinstance(frame, torch.Tensor):
        frame = frame.detach().cpu().numpy()
    if not isinstance(frame, np.ndarray):
        raise TypeError(f"frame {index} must be an HxWx3 uint8 array, got {type(frame).__name__}")
    if frame.ndim != 3 or frame.shape[2] != 3:
        raise ValueError(f"frame {index} must be an HxWx3 RGB array, got shape {tuple(frame.shape)}")
    if frame.dtype != np.uint8:
        raise TypeError(f"frame {index} must be uint8 (0..255), got dtype {frame.dtype}")
    return np.ascontiguousarray(frame)


def prepare_frame(frame, image_size: int, index: int = 0) -> tuple[torch.Tensor, int, int]:
    """One frame (``HxWx3`` uint8 array, or ``3xHxW`` tensor uint8 / float in [0, 1]) ->
    ``(normalised 3xSxS float32, height, width)``."""
    if isinstance(frame, torch.Tensor) and frame.ndim == 3 and frame.shape[0] == 3 and frame.shape[2] != 3:
        return _prepare_chw_tensor(frame, image_size, index)
    arr = _check_rgb_array(frame, index)
    img = resize_rgb_uint8(arr, image_size)
    return _normalise_(img), arr.shape[0], arr.shape[1]


def _prepare_chw_tensor(frame: torch.Tensor, image_size: int, index: int) -> tuple[torch.Tensor, int, int]:
    h, w = frame.shape[-2:]
    if frame.dtype == torch.uint8:
        return prepare_frame(frame.permute(1, 2, 0).cpu().numpy(), image_size, index)
    if not frame.is_floating_point():
        raise TypeError(f"frame {index}: a 3xHxW tensor must be uint8 or float in [0, 1], got {frame.dtype}")
    img = F.interpolate(
        frame[None].float().cpu(), size=(image_size, image_size), mode="bicubic", align_corners=False, antialias=True
    )[0].clamp_(0, 1)
    return _normalise_(img), h, w


def _stack_frames(frames: Iterable, count: int | None, image_size: int, progress: bool, desc: str) -> LoadedVideo:
    images, size = [], None
    for i, frame in enumerate(_progress(frames, progress, desc, total=count)):
        img, h, w = prepare_frame(frame, image_size, i)
        if size is None:
            size = (h, w)
        elif (h, w) != size:
            raise ValueError(
                f"all frames must have the same size: frame 0 is {size[0]}x{size[1]} (HxW), frame {i} is {h}x{w}"
            )
        images.append(img)
    if not images:
        raise ValueError("the video has no frames")
    return LoadedVideo(torch.stack(images), size[0], size[1])


def jpeg_frame_paths(folder: Path) -> list[Path]:
    """The JPEG files of ``folder`` sorted by their integer stem (``0.jpg``, ``00001.jpg`` ...)."""
    paths = [p for p in folder.iterdir() if p.suffix in JPEG_SUFFIXES]
    if not paths:
        raise ValueError(f"no JPEG frames (*.jpg / *.jpeg) found in the folder {str(folder)!r}")
    bad = [p.name for p in paths if not p.stem.lstrip("-").isdigit()]
    if bad:
        raise ValueError(f"JPEG frames must be named by their index (e.g. 00000.jpg); got {bad[:3]} in {str(folder)!r}")
    return sorted(paths, key=lambda p: int(p.stem))


def _load_jpeg_folder(folder: Path, image_size: int, progress: bool) -> LoadedVideo:
    from PIL import Image

    paths = jpeg_frame_paths(folder)
    images = torch.zeros(len(paths), 3, image_size, image_size, dtype=torch.float32)
    height = width = None
    for i, path in enumerate(_progress(paths, progress, "frame loading (JPEG)")):
        with Image.open(path) as pil:
            rgb = np.asarray(pil.convert("RGB"))
        if height is not None and rgb.shape[:2] != (height, width):
            raise ValueError(
                f"all frames must have the same size: {paths[0].name} is {height}x{width}, "
                f"{path.name} is {rgb.shape[0]}x{rgb.shape[1]}"
            )
        height, width = rgb.shape[:2]
        images[i] = resize_rgb_uint8(rgb, image_size)
    return LoadedVideo(_normalise_(images), height, width)


def decode_video_file(path: Path) -> Iterable[np.ndarray]:
    """RGB ``HxWx3`` uint8 frames of a video file, decoded with PyAV."""
    try:
        import av
    except ImportError:
        raise ImportError("reading video files needs PyAV: pip install av") from None
    with av.open(str(path)) as container:
        if not container.streams.video:
            raise ValueError(f"{str(path)!r} has no video stream")
        for frame in container.decode(video=0):
            yield frame.to_ndarray(format="rgb24")


def _count_video_frames(path: Path) -> int | None:
    try:
        import av

        with av.open(str(path)) as container:
            return container.streams.video[0].frames or None
    except Exception:
        return None


def load_video_frames(
    video,
    image_size: int,
    offload_video_to_cpu: bool = False,
    compute_device: torch.device | str = "cpu",
    progress: bool = True,
) -> LoadedVideo:
    """Frames of ``video`` resized and normalised, on ``compute_device`` unless offloaded to CPU."""
    loaded = _load(video, image_size, progress)
    if not offload_video_to_cpu:
        loaded.images = loaded.images.to(compute_device)
    return loaded


def _load(video, image_size: int, progress: bool) -> LoadedVideo:
    if isinstance(video, (str, os.PathLike)):
        path = Path(video)
        if str(video) == "":
            raise ValueError("video_path is empty: give a folder of JPEG frames, a video file, or frames")
        if not path.exists():
            raise FileNotFoundError(f"video path {str(path)!r} does not exist")
        if path.is_dir():
            return _load_jpeg_folder(path, image_size, progress)
        if path.suffix in VIDEO_SUFFIXES:
            return _stack_frames(
                decode_video_file(path), _count_video_frames(path), image_size, progress, "frame loading (video)"
            )
        raise ValueError(
            f"unsupported video file {str(path)!r}: expected a folder of JPEG frames or one of "
            f"{', '.join(VIDEO_SUFFIXES)}"
        )
    if isinstance(video, torch.Tensor):
        if video.ndim != 4 or video.shape[1] != 3:
            raise ValueError(f"a video tensor must be T x 3 x H x W, got shape {tuple(video.shape)}")
        return _stack_frames(list(video), len(video), image_size, progress, "frame loading")
    if isinstance(video, np.ndarray) and video.ndim == 4:
        return _stack_frames(list(video), len(video), image_size, progress, "frame loading")
    if isinstance(video, Sequence) and not isinstance(video, (bytes, str)):
        return _stack_frames(video, len(video), image_size, progress, "frame loading")
    raise TypeError(
        "video must be a folder of JPEG frames, a video file path, a list of HxWx3 uint8 arrays or a "
        f"T x 3 x H x W tensor; got {type(video).__name__}"
    )

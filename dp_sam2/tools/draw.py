"""Pictures for debugging: mask overlays, PCA of encoder features, grids, line plots (Pillow only;
matplotlib is not a dependency), titles (a picture made with random weights says so in a red strip on
top and in the file's Title), mask sanity notes, and the loud banner of a random-weights run."""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path

import numpy as np

COLORS = ((30, 144, 255), (255, 99, 71), (50, 205, 50), (238, 130, 238), (255, 215, 0))


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
    width = sum(i.width for i in scaled) + pad * (len(scaled) + 1)
    sheet = Image.new("RGB", (width, height + 2 * pad + caption), "white")
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

    rows = [
        side_by_side(images[i : i + columns], labels[i : i + columns], height) for i in range(0, len(images), columns)
    ]
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
        label = f"{10**yv:.3g}" if log_y else f"{yv:.3g}"
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


def loud_warning(lines) -> None:
    """A warning that cannot be missed: a banner on stderr and a Python warning."""
    text = "\n".join(lines)
    bar = "!" * 78
    print(f"\n{bar}\n{text}\n{bar}\n", file=sys.stderr, flush=True)
    warnings.warn(text.replace("\n", " "), stacklevel=3)


# --------------------------------------------------------------------------- titles: random weights say so
RANDOM_WEIGHTS_TITLE = "RANDOM WEIGHTS - not a result"


def picture_title(what: str, random_weights: bool) -> str:
    """The title of a picture of ``what``: led by :data:`RANDOM_WEIGHTS_TITLE` when made with random weights."""
    return f"{RANDOM_WEIGHTS_TITLE}: {what}" if random_weights else what


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)  # Pillow >= 10.1 with FreeType
    except (TypeError, OSError, AttributeError):
        return ImageFont.load_default()


def _wrap(draw, text: str, font, width: int) -> list[str]:
    lines, line = [], ""
    for word in text.split():
        trial = f"{line} {word}".strip()
        if line and draw.textlength(trial, font=font) > width:
            lines.append(line)
            line = word
        else:
            line = trial
    return lines + ([line] if line else [])


def titled(image, what: str, random_weights: bool):
    """``image`` (PIL or ``(H, W, 3)`` uint8) titled ``what``: with random weights, a red strip above it that
    says so (the text wrapped to the width) and the title led by :data:`RANDOM_WEIGHTS_TITLE`; with real
    weights the pixels are left as they are. The title goes in ``info["title"]``, which :func:`save_picture`
    writes into the file."""
    from PIL import Image, ImageDraw

    img = image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image))
    title = picture_title(what, random_weights)
    if random_weights:
        size = int(np.clip(img.width // 32, 10, 22))
        font = _font(size)
        probe = ImageDraw.Draw(img.copy())
        pad = max(2, size // 4)
        lines = _wrap(probe, title, font, img.width - 2 * pad) or [title]
        line_h = size + max(2, size // 4)
        strip = len(lines) * line_h + 2 * pad
        out = Image.new("RGB", (img.width, img.height + strip), (200, 0, 0))
        out.paste(img.convert("RGB"), (0, strip))
        draw = ImageDraw.Draw(out)
        for i, line in enumerate(lines):
            draw.text((pad, pad + i * line_h), line, fill=(255, 255, 255), font=font)
        img = out
    else:
        img = img.copy()
    img.info["title"] = title
    return img


def save_picture(image, path) -> Path:
    """Save a PIL image; its ``info["title"]`` (see :func:`titled`) becomes the PNG's ``Title`` text chunk
    (the JPEG's comment), so the file says what it shows and with which weights."""
    from PIL.PngImagePlugin import PngInfo

    path = Path(path)
    title = image.info.get("title")
    if title and path.suffix.lower() == ".png":
        meta = PngInfo()
        meta.add_text("Title", title)
        image.save(path, pnginfo=meta)
    elif title and path.suffix.lower() in (".jpg", ".jpeg"):
        image.save(path, comment=title.encode())
    else:
        image.save(path)
    return path


def mask_note(mask, most: float = 0.5) -> str:
    """``""`` for a plausible mask, else what is wrong with it: empty, or covering most of the image
    (more than ``most`` of its pixels: with random weights SAM 2 often answers with a dot pattern over the
    whole image)."""
    mask = np.asarray(mask, dtype=bool)
    area = int(mask.sum())
    if area == 0:
        return "the mask is EMPTY (no pixel selected)"
    if area > most * mask.size:
        return f"the mask covers {100 * area / mask.size:.0f}% of the image: most likely not the object"
    return ""

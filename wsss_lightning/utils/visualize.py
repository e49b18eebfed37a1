"""Pictures of WSSS outputs: VOC-coloured labels, CAM / saliency heatmaps, overlays and captioned strips.

Pure numpy + PIL (no torch, no matplotlib), shared by the W&B media callback, the notebooks and the docs figures.
Conventions:

* images: ``uint8 (H, W, 3)`` RGB;
* label maps: ``uint8``/integer ``(H, W)`` class indices, 255 = ignore (drawn in the VOC boundary colour);
* score maps (CAM, saliency): float ``(H, W)`` in [0, 1] (values outside are clipped).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from wsss_lightning.data.io import atomic_write_bytes, encode_png
from wsss_lightning.data.palette import voc_palette

__all__ = [
    "blend",
    "caption_image",
    "colorize_label",
    "grey",
    "heatmap",
    "jet",
    "make_grid",
    "make_strip",
    "overlay_heatmap",
    "overlay_label",
    "resize_image",
    "resize_label",
    "save_png",
]

_PALETTE = voc_palette()
CAPTION_HEIGHT = 16
BACKGROUND = (255, 255, 255)


def _as_rgb(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) image, got shape {image.shape}")
    if image.dtype != np.uint8:
        raise ValueError(f"expected a uint8 image, got {image.dtype}")
    return image


def colorize_label(label: np.ndarray, palette: np.ndarray | None = None) -> np.ndarray:
    """Class indices ``(H, W)`` -> ``uint8 (H, W, 3)`` in the VOC colours (255 -> (224, 224, 192))."""
    label = np.asarray(label)
    if label.ndim != 2:
        raise ValueError(f"expected an (H, W) label map, got shape {label.shape}")
    if label.size and (label.min() < 0 or label.max() > 255):
        raise ValueError("label values must lie in 0..255")
    colours = _PALETTE if palette is None else np.asarray(palette, dtype=np.uint8)
    return colours[label.astype(np.int64)]


def jet(values: np.ndarray) -> np.ndarray:
    """The classic ``jet`` colour map: float ``(H, W)`` in [0, 1] -> ``uint8 (H, W, 3)``.

    Piecewise linear (as matplotlib's ``jet``): 0 -> dark blue (0, 0, 128), 0.5 -> (128, 255, 128),
    1 -> dark red (128, 0, 0). Non-finite values count as 0.
    """
    x = np.nan_to_num(np.asarray(values, dtype=np.float64), nan=0.0, posinf=1.0, neginf=0.0).clip(0.0, 1.0)
    channels = [np.clip(1.5 - np.abs(4.0 * x - offset), 0.0, 1.0) for offset in (3.0, 2.0, 1.0)]
    return np.round(np.stack(channels, axis=-1) * 255.0).astype(np.uint8)


def grey(values: np.ndarray) -> np.ndarray:
    """Float ``(H, W)`` in [0, 1] -> grey ``uint8 (H, W, 3)`` (0 black, 1 white; saliency maps)."""
    x = np.nan_to_num(np.asarray(values, dtype=np.float64), nan=0.0).clip(0.0, 1.0)
    return np.repeat(np.round(x * 255.0).astype(np.uint8)[..., None], 3, axis=2)


def heatmap(values: np.ndarray, colormap: str = "jet") -> np.ndarray:
    """Float ``(H, W)`` in [0, 1] -> ``uint8 (H, W, 3)`` with ``colormap`` ``jet`` or ``grey``."""
    if colormap == "jet":
        return jet(values)
    if colormap == "grey":
        return grey(values)
    raise ValueError(f"unknown colormap {colormap!r}; use 'jet' or 'grey'")


def blend(image: np.ndarray, colour: np.ndarray, alpha: float | np.ndarray = 0.5) -> np.ndarray:
    """``(1 - alpha) * image + alpha * colour``, rounded; ``alpha`` a number or an ``(H, W)`` map in [0, 1]."""
    image, colour = _as_rgb(image), _as_rgb(colour)
    if image.shape != colour.shape:
        raise ValueError(f"image {image.shape} and colour {colour.shape} differ in shape")
    weight = np.asarray(alpha, dtype=np.float64)
    if weight.ndim == 2:
        weight = weight[..., None]
    out = (1.0 - weight) * image.astype(np.float64) + weight * colour.astype(np.float64)
    return np.round(out).clip(0, 255).astype(np.uint8)


def overlay_label(image: np.ndarray, label: np.ndarray, alpha: float = 0.5, keep: Sequence[int] = (0,)) -> np.ndarray:
    """The image with its label map painted on top in VOC colours; classes in ``keep`` (background) stay unpainted."""
    label = np.asarray(label)
    painted = blend(image, colorize_label(label), alpha)
    untouched = np.isin(label, list(keep))
    return np.where(untouched[..., None], _as_rgb(image), painted)


def overlay_heatmap(image: np.ndarray, values: np.ndarray, alpha: float = 0.5, colormap: str = "jet") -> np.ndarray:
    """A CAM / saliency heatmap blended over the image (CAM-paper style)."""
    return blend(image, heatmap(values, colormap), alpha)


def resize_image(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of an ``uint8 (H, W, 3)`` image to ``size = (H', W')``."""
    image = _as_rgb(image)
    if image.shape[:2] == tuple(size):
        return image
    return np.asarray(Image.fromarray(image).resize((size[1], size[0]), Image.Resampling.BILINEAR))


def resize_label(label: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of a ``uint8 (H, W)`` label map to ``size = (H', W')`` (no new class values)."""
    label = np.asarray(label, dtype=np.uint8)
    if label.shape == tuple(size):
        return label
    return np.asarray(Image.fromarray(label).resize((size[1], size[0]), Image.Resampling.NEAREST))


def _font(size: int = 11) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def caption_image(image: np.ndarray, caption: str, height: int = CAPTION_HEIGHT) -> np.ndarray:
    """The image with a white band of ``height`` pixels above it holding ``caption`` (clipped to the width)."""
    image = _as_rgb(image)
    band = Image.new("RGB", (image.shape[1], height), BACKGROUND)
    ImageDraw.Draw(band).text((2, 1), caption, fill=(0, 0, 0), font=_font(max(height - 5, 8)))
    return np.concatenate([np.asarray(band), image], axis=0)


def make_strip(
    panels: Sequence[np.ndarray],
    captions: Sequence[str] | None = None,
    height: int | None = None,
    gap: int = 4,
) -> np.ndarray:
    """Panels side by side (left to right), each scaled to ``height`` (default: the first panel's), optional captions.

    Args:
        panels: ``uint8 (H_i, W_i, 3)`` images (label maps and heatmaps colourised beforehand).
        captions: one per panel, drawn above it.
        height: common panel height in pixels; widths keep each panel's aspect ratio.
        gap: white pixels between panels.

    Returns:
        ``uint8 (height [+ caption band], sum of widths + gaps, 3)``.
    """
    if not panels:
        raise ValueError("make_strip needs at least one panel")
    if captions is not None and len(captions) != len(panels):
        raise ValueError(f"{len(captions)} captions for {len(panels)} panels")
    panels = [_as_rgb(p) for p in panels]
    height = height or panels[0].shape[0]
    scaled = []
    for index, panel in enumerate(panels):
        width = max(1, round(panel.shape[1] * height / panel.shape[0]))
        panel = resize_image(panel, (height, width))
        if captions is not None:
            panel = caption_image(panel, captions[index])
        scaled.append(panel)
    total_height = scaled[0].shape[0]
    spacer = np.full((total_height, gap, 3), 255, dtype=np.uint8)
    pieces: list[np.ndarray] = []
    for index, panel in enumerate(scaled):
        if index:
            pieces.append(spacer)
        pieces.append(panel)
    return np.concatenate(pieces, axis=1)


def make_grid(rows: Sequence[np.ndarray], gap: int = 4) -> np.ndarray:
    """Strips (from :func:`make_strip`) stacked top to bottom, left-aligned, padded white to the widest."""
    if not rows:
        raise ValueError("make_grid needs at least one row")
    rows = [_as_rgb(r) for r in rows]
    width = max(r.shape[1] for r in rows)
    pieces: list[np.ndarray] = []
    for index, row in enumerate(rows):
        if index:
            pieces.append(np.full((gap, width, 3), 255, dtype=np.uint8))
        pad = np.full((row.shape[0], width - row.shape[1], 3), 255, dtype=np.uint8)
        pieces.append(np.concatenate([row, pad], axis=1))
    return np.concatenate(pieces, axis=0)


def save_png(path: str | Path, image: np.ndarray) -> Path:
    """Atomically write an ``uint8 (H, W, 3)`` image as PNG; returns the path."""
    path = Path(path)
    atomic_write_bytes(path, encode_png(Image.fromarray(_as_rgb(image), mode="RGB")))
    return path

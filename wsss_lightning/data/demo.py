"""A small synthetic WSSS dataset in the published VOC / DUTS / ECSSD layouts (``wsss data demo``).

It feeds ``make demo`` (the whole pipeline on a laptop CPU), the tests and the benchmarks. Five foreground
classes are told apart by shape *and* texture; their colours come from overlapping hue ranges, so colour
alone does not name the class and a CAM has to find the discriminative parts, as on real photographs:

==========  ==========  =====================================================
class       shape       texture
==========  ==========  =====================================================
disc        ellipse     stripes
square      rectangle   checkerboard
triangle    triangle    dots
star        5-point     solid colour with a soft shading
ring        annulus     linear colour gradient
==========  ==========  =====================================================

Backgrounds mix smooth colour noise, gradients, faint stripes and low-contrast clutter blobs (background,
never labelled). A VOC image holds 1-3 objects of 1-2 classes covering about 8-40 % of it; label maps carry
a 3-pixel 255 band around every object, as VOC's do. The "off-the-shelf" saliency maps are deliberately
imperfect (blurred, low resolution, parts of objects missed, false positives on clutter): maxF about
0.85 against the VOC masks (pysodmetrics protocol), about 0.89 with the 255 band ignored.

Everything is drawn with vectorised numpy and encoded with PIL; the same seed gives byte-identical files.
"""

from __future__ import annotations

import argparse
import colorsys
import functools
import io
import json
import math
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

import numpy as np
from PIL import Image

from wsss_lightning.data.io import atomic_write_bytes, write_grey_png, write_palette_png

DEMO_CLASSES: tuple[str, ...] = ("background", "disc", "square", "triangle", "star", "ring")

MARKER_NAME = ".wsss_demo"
ID_YEAR = 2026  # VOC-like ids "2026_000001": a year no real VOC id uses
JPEG_QUALITY = 90

# The --tiny preset: a few dozen images for unit tests (well under a second to generate).
TINY_SETTINGS = MappingProxyType(
    {
        "num_train_aug": 24,
        "num_train": 8,
        "num_val": 8,
        "num_duts_train": 12,
        "num_duts_test": 6,
        "num_ecssd": 6,
        "size_range": (64, 96),
    }
)

# Independent random streams: an image's content depends only on (seed, stream, index), so changing one
# count never changes the images of another set.
_STREAM_SPLIT, _STREAM_VOC, _STREAM_DUTS_TR, _STREAM_DUTS_TE, _STREAM_ECSSD = range(5)

# Hue centre of every foreground class; each class draws hues within +-0.17 of its centre, so neighbouring
# classes (0.2 apart) share colours.
_CLASS_HUE = (0.0, 0.0, 0.2, 0.4, 0.6, 0.8)
_HUE_SPREAD = 0.17


# ------------------------------------------------------------------------------------------------ shapes


def _shape_mask(cls: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Inside-test of class ``cls``'s shape in normalised object coordinates (object radius about 1)."""
    rho = np.hypot(u, v)
    if cls == 1:  # disc (an ellipse once the aspect ratio is applied)
        return rho <= 1.0
    if cls == 2:  # square (a rectangle)
        return np.maximum(np.abs(u), np.abs(v)) <= 0.85
    if cls == 3:  # equilateral triangle with circumradius 1.2, apex up: three half-planes at the inradius
        inside = np.ones(u.shape, dtype=bool)
        for angle in (math.pi / 2, math.pi / 2 + 2 * math.pi / 3, math.pi / 2 + 4 * math.pi / 3):
            inside &= u * math.cos(angle) - v * math.sin(angle) >= -0.6
        return inside
    if cls == 4:  # five-pointed star: radius zig-zags between 0.5 and 1.15 with the polar angle
        phase = np.mod(np.arctan2(v, u) * 5.0 / (2.0 * math.pi) + 0.25, 1.0)
        return rho <= 0.5 + 0.65 * (1.0 - np.abs(2.0 * phase - 1.0))
    if cls == 5:  # ring
        return (rho >= 0.55) & (rho <= 1.05)
    raise ValueError(f"unknown demo class {cls}")


@functools.cache
def _unit_area(cls: int) -> float:
    """Area of a class's shape at radius 1 (a fine grid count), to size objects by their pixel area."""
    grid = np.linspace(-1.3, 1.3, 521)
    u, v = np.meshgrid(grid, grid)
    return float(_shape_mask(cls, u, v).mean()) * 2.6 * 2.6


def _texture(cls: int, x: np.ndarray, y: np.ndarray, radius: float, rng: np.random.Generator) -> np.ndarray:
    """Mixing weight in [0, 1] between an object's two colours; ``x, y`` are rotated pixel offsets."""
    if cls == 1:  # stripes, period at least 6 px so JPEG keeps them
        period = max(7.0, rng.uniform(0.4, 0.6) * radius)
        return (np.mod(x / period + rng.uniform(), 1.0) < 0.5).astype(np.float32)
    if cls == 2:  # checkerboard
        cell = max(6.0, 1.7 * radius / rng.integers(3, 5))
        return (np.mod(np.floor(x / cell + rng.uniform()) + np.floor(y / cell + rng.uniform()), 2.0)).astype(np.float32)
    if cls == 3:  # dots on a square grid
        cell = max(8.0, rng.uniform(0.35, 0.5) * radius)
        gx = np.mod(x / cell + rng.uniform(), 1.0) - 0.5
        gy = np.mod(y / cell + rng.uniform(), 1.0) - 0.5
        return (gx * gx + gy * gy < rng.uniform(0.3, 0.38) ** 2).astype(np.float32)
    if cls == 4:  # solid: the second colour only enters through the shading below
        return np.zeros(x.shape, dtype=np.float32)
    if cls == 5:  # linear gradient across the ring
        return np.clip(0.5 + 0.5 * x / radius, 0.0, 1.0).astype(np.float32)
    raise ValueError(f"unknown demo class {cls}")


# ------------------------------------------------------------------------------------------------ colours


def _hsv(hue: float, saturation: float, value: float) -> np.ndarray:
    return np.asarray(colorsys.hsv_to_rgb(hue % 1.0, saturation, value), dtype=np.float32)


def _object_colours(cls: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Main and secondary colour of one object: hue from the class's (overlapping) range, contrast by value."""
    hue = _CLASS_HUE[cls] + rng.uniform(-_HUE_SPREAD, _HUE_SPREAD)
    saturation, value = rng.uniform(0.45, 0.95), rng.uniform(0.55, 0.95)
    main = _hsv(hue, saturation, value)
    kind = rng.integers(3)
    if kind == 0:  # darker shade
        second = main * rng.uniform(0.2, 0.45)
    elif kind == 1:  # lighter tint
        second = main + (1.0 - main) * rng.uniform(0.55, 0.8)
    else:  # another hue at a clearly different value
        second = _hsv(hue + rng.uniform(0.3, 0.7), rng.uniform(0.3, 0.9), value * rng.uniform(0.25, 0.5))
    return main, second.astype(np.float32)


def _background_colour(rng: np.random.Generator) -> np.ndarray:
    return _hsv(rng.uniform(), rng.uniform(0.0, 0.5), rng.uniform(0.25, 0.9))


# ------------------------------------------------------------------------------------------------ fields


def _smooth_field(rng: np.random.Generator, height: int, width: int, cells: int, channels: int) -> np.ndarray:
    """Smooth random field ``float32 (H, W, C)`` in [-1, 1]: a coarse random grid, smoothstep-interpolated."""
    grid = rng.uniform(-1.0, 1.0, size=(cells + 1, cells + 1, channels)).astype(np.float32)
    ys = np.linspace(0.0, cells, height, endpoint=False, dtype=np.float32)
    xs = np.linspace(0.0, cells, width, endpoint=False, dtype=np.float32)
    y0, x0 = ys.astype(np.int64), xs.astype(np.int64)
    fy, fx = ys - y0, xs - x0
    fy = (fy * fy * (3 - 2 * fy))[:, None, None]
    fx = (fx * fx * (3 - 2 * fx))[None, :, None]
    rows = grid[:, x0] * (1 - fx) + grid[:, x0 + 1] * fx  # (cells + 1, W, C): along x first, then y
    return rows[y0] * (1 - fy) + rows[y0 + 1] * fy


def _gaussian_blur(values: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur of the first two axes (edge padding); loops over kernel taps, not pixels."""
    radius = max(1, int(math.ceil(3.0 * sigma)))
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    taps = (taps / taps.sum()).astype(np.float32)
    height, width = values.shape[:2]
    pad = [(radius, radius), (0, 0)] + [(0, 0)] * (values.ndim - 2)
    padded = np.pad(values, pad, mode="edge")
    rows = sum(t * padded[i : i + height] for i, t in enumerate(taps))
    pad = [(0, 0), (radius, radius)] + [(0, 0)] * (values.ndim - 2)
    padded = np.pad(rows, pad, mode="edge")
    return sum(t * padded[:, i : i + width] for i, t in enumerate(taps)).astype(np.float32)


def _dilate(mask: np.ndarray) -> np.ndarray:
    """3x3 binary dilation."""
    height, width = mask.shape
    padded = np.pad(mask, 1, mode="constant", constant_values=False)
    out = np.zeros_like(mask)
    for dy in range(3):
        for dx in range(3):
            out |= padded[dy : dy + height, dx : dx + width]
    return out


def _inner_edge(mask: np.ndarray) -> np.ndarray:
    """Pixels of ``mask`` with a 4-neighbour outside it; the image border is not an edge (as in VOC)."""
    p = np.pad(mask, 1, mode="edge")
    interior = p[1:-1, 1:-1] & p[:-2, 1:-1] & p[2:, 1:-1] & p[1:-1, :-2] & p[1:-1, 2:]
    return mask & ~interior


# ------------------------------------------------------------------------------------------------ scenes


@dataclass
class _Object:
    cls: int
    mask: np.ndarray  # bool (H, W): the whole shape inside the image
    visible: np.ndarray  # bool (H, W): what later objects leave of it
    x: np.ndarray  # rotated pixel offsets from the centre (texture coordinates)
    y: np.ndarray
    radius: float
    truncated: bool


@dataclass
class _Scene:
    image: np.ndarray  # uint8 (H, W, 3)
    objects: list[_Object]
    clutter: list[np.ndarray]  # bool (H, W) masks of background clutter blobs
    band: np.ndarray  # bool (H, W): the 255 boundary band

    @property
    def foreground(self) -> np.ndarray:
        union = np.zeros(self.image.shape[:2], dtype=bool)
        for obj in self.objects:
            union |= obj.mask
        return union

    def label(self) -> np.ndarray:
        """Class indices ``uint8 (H, W)``: 0 background, 1..5 classes, 255 boundary band."""
        label = np.zeros(self.image.shape[:2], dtype=np.uint8)
        for obj in self.objects:
            label[obj.visible] = obj.cls
        label[self.band] = 255
        return label


def _place_object(cls: int, area: float, height: int, width: int, rng: np.random.Generator) -> _Object:
    radius = math.sqrt(area / _unit_area(cls))
    aspect = math.exp(rng.uniform(math.log(0.7), math.log(1.45)))
    theta = rng.uniform(0.0, 2.0 * math.pi)
    # most objects lie wholly inside the image; the others may be cut by the border ("truncated" in the XML)
    reach = radius * max(math.sqrt(aspect), 1.0 / math.sqrt(aspect)) * 1.15
    inside = rng.random() < 0.7 and 2 * reach < min(height, width)
    mx, my = (reach, reach) if inside else (0.12 * width, 0.12 * height)
    cx, cy = rng.uniform(mx, width - mx), rng.uniform(my, height - my)
    dy = np.arange(height, dtype=np.float32)[:, None] - cy
    dx = np.arange(width, dtype=np.float32)[None, :] - cx
    x = dx * math.cos(theta) + dy * math.sin(theta)
    y = -dx * math.sin(theta) + dy * math.cos(theta)
    u, v = x / (radius * math.sqrt(aspect)), y * math.sqrt(aspect) / radius
    mask = _shape_mask(cls, u, v)
    truncated = bool(mask[0].any() or mask[-1].any() or mask[:, 0].any() or mask[:, -1].any())
    return _Object(cls, mask, mask.copy(), x, y, radius, truncated)


def _layout(
    rng: np.random.Generator,
    height: int,
    width: int,
    num_objects: Sequence[float],
    two_class_prob: float,
    coverage: tuple[float, float],
) -> tuple[list[_Object], np.ndarray]:
    """Objects (drawing order = depth order) and the boundary band, by rejection sampling.

    ``num_objects[k]`` is the probability of ``k + 1`` objects. A layout is kept when the union covers
    ``coverage`` (with some slack), every object keeps at least 40 % of itself visible and at least 16
    pixels outside the band (so the label map names every class the XML names).
    """
    pixels = height * width
    for _ in range(200):
        count = int(rng.choice(len(num_objects), p=np.asarray(num_objects) / np.sum(num_objects))) + 1
        first, second = (int(c) for c in rng.choice(np.arange(1, len(DEMO_CLASSES)), size=2, replace=False))
        classes = [first] * count
        if count > 1 and rng.random() < two_class_prob:  # both classes appear, in a random depth order
            classes = [first, second] + [int(rng.choice([first, second])) for _ in range(count - 2)]
            classes = [classes[i] for i in rng.permutation(count)]
        target = rng.uniform(*coverage) * pixels
        shares = rng.dirichlet(np.full(count, 2.0))
        objects = [_place_object(c, s * target, height, width, rng) for c, s in zip(classes, shares)]
        covered = np.zeros((height, width), dtype=bool)
        for obj in reversed(objects):  # the last drawn is on top
            obj.visible = obj.mask & ~covered
            covered |= obj.mask
        if not coverage[0] * 0.75 <= covered.mean() <= coverage[1] * 1.15:
            continue
        band = np.zeros((height, width), dtype=bool)
        for obj in objects:
            band |= _dilate(_inner_edge(obj.visible))
        if all(o.visible.sum() >= 0.4 * o.mask.sum() and (o.visible & ~band).sum() >= 16 for o in objects):
            return objects, band
    raise RuntimeError(f"could not lay out objects on a {width}x{height} image; use a larger size_range")


def _background(rng: np.random.Generator, height: int, width: int) -> tuple[np.ndarray, list[np.ndarray]]:
    """Background ``float32 (H, W, 3)`` in about [0, 1] and its clutter blob masks."""
    first, second = _background_colour(rng), _background_colour(rng)
    angle = rng.uniform(0.0, 2.0 * math.pi)
    yy = np.arange(height, dtype=np.float32)[:, None] / height
    xx = np.arange(width, dtype=np.float32)[None, :] / width
    ramp = xx * math.cos(angle) + yy * math.sin(angle)
    ramp = (ramp - ramp.min()) / max(float(ramp.max() - ramp.min()), 1e-6)
    if rng.random() < 0.5:  # gradient between two colours
        image = first * (1 - ramp[..., None]) + second * ramp[..., None]
    else:  # flat colour
        image = np.broadcast_to(first, (height, width, 3)).copy()
    cells = int(rng.integers(2, 7))
    # colour noise, mostly in brightness: chroma-only noise looks like rainbow paint, not like clutter
    noise = 0.6 * _smooth_field(rng, height, width, cells, 1) + 0.4 * _smooth_field(rng, height, width, cells, 3)
    image = image + rng.uniform(0.08, 0.22) * noise
    if rng.random() < 0.4:  # faint stripes (texture that is *not* the disc's)
        period = rng.uniform(5.0, 18.0)
        phase = (xx * width * math.cos(angle + 1.0) + yy * height * math.sin(angle + 1.0)) / period
        image = image + rng.uniform(0.03, 0.08) * np.sin(2 * math.pi * phase)[..., None]

    clutter = []
    scale = min(height, width)
    speckle = 0.05 * _smooth_field(rng, height, width, 4, 1)  # the clutter's own faint texture
    for _ in range(int(rng.choice(5, p=[0.1, 0.3, 0.3, 0.2, 0.1]))):
        blob = np.zeros((height, width), dtype=bool)
        cx, cy = rng.uniform(0, width), rng.uniform(0, height)
        for _ in range(int(rng.integers(1, 4))):  # a union of ellipses: irregular outline
            ex, ey = cx + rng.normal(0, 0.06 * scale), cy + rng.normal(0, 0.06 * scale)
            ax, ay = rng.uniform(0.05, 0.16) * scale, rng.uniform(0.05, 0.16) * scale
            t = rng.uniform(0, math.pi)
            dx = np.arange(width, dtype=np.float32)[None, :] - ex
            dy = np.arange(height, dtype=np.float32)[:, None] - ey
            a = dx * math.cos(t) + dy * math.sin(t)
            b = -dx * math.sin(t) + dy * math.cos(t)
            blob |= (a / ax) ** 2 + (b / ay) ** 2 <= 1.0
        if not blob.any():
            continue
        # low contrast: the local background colour, shifted a little (sometimes a little more)
        shift = rng.normal(0.0, 0.07, size=3) + rng.choice([-1.0, 1.0]) * rng.uniform(0.05, 0.18)
        colour = image[blob].mean(axis=0) + shift.astype(np.float32)
        image[blob] = colour + speckle[blob]
        clutter.append(blob)
    return image.astype(np.float32), clutter


def _render(
    rng: np.random.Generator,
    height: int,
    width: int,
    num_objects: Sequence[float],
    two_class_prob: float,
    coverage: tuple[float, float],
) -> _Scene:
    objects, band = _layout(rng, height, width, num_objects, two_class_prob, coverage)
    image, clutter = _background(rng, height, width)
    for obj in objects:
        main, second = _object_colours(obj.cls, rng)
        weight = _texture(obj.cls, obj.x, obj.y, obj.radius, rng)[obj.mask][:, None]
        colour = main * (1 - weight) + second * weight
        # soft directional shading (the only structure of the solid star) so no object is flat
        angle = rng.uniform(0, 2 * math.pi)
        shade = 1.0 + rng.uniform(0.1, 0.25) * (obj.x * math.cos(angle) + obj.y * math.sin(angle)) / obj.radius
        image[obj.mask] = colour * shade[obj.mask][:, None]
        for blob in clutter:  # objects hide the clutter behind them
            blob &= ~obj.mask
    # light, camera blur and sensor noise
    illumination = 1.0 + rng.uniform(0.05, 0.2) * _smooth_field(rng, height, width, 2, 1)
    image = image * illumination
    if rng.random() < 0.5:
        image = _gaussian_blur(image, rng.uniform(0.5, 0.9))
    image = image + rng.uniform(0.01, 0.035) * rng.standard_normal(image.shape, dtype=np.float32)
    pixels = np.clip(np.round(image * 255.0), 0, 255).astype(np.uint8)
    return _Scene(pixels, objects, [b for b in clutter if b.any()], band)


def _offtheshelf_saliency(scene: _Scene, rng: np.random.Generator) -> np.ndarray:
    """An imperfect saliency map ``uint8 (H, W)`` in 0..255, as a detector trained elsewhere would give.

    Each object gets its own confidence; some objects are partly (rarely wholly) missed; some clutter blobs
    and random spots fire; the map is computed at 1/4 resolution, upsampled, blurred, and squashed by a
    sigmoid so values pile up near 0 and 1 but stay grey at edges.
    """
    height, width = scene.image.shape[:2]
    sal = np.zeros((height, width), dtype=np.float32)
    for obj in scene.objects:
        region = obj.visible.astype(np.float32) * rng.uniform(0.7, 1.0)
        if rng.random() < 0.4:  # a part of the object (beyond a random cut) is missed
            angle = rng.uniform(0, 2 * math.pi)
            side = obj.x * math.cos(angle) + obj.y * math.sin(angle) > rng.uniform(-0.3, 0.5) * obj.radius
            region[side] *= rng.uniform(0.0, 0.35)
        if len(scene.objects) > 1 and rng.random() < 0.1:  # the whole object is missed
            region *= rng.uniform(0.1, 0.35)
        sal = np.maximum(sal, region)
    for blob in scene.clutter:  # false positives on background clutter
        if rng.random() < 0.4:
            sal[blob] = np.maximum(sal[blob], rng.uniform(0.35, 0.75))
    if rng.random() < 0.3:  # a diffuse false-positive spot anywhere
        cy, cx = rng.uniform(0, height), rng.uniform(0, width)
        spread = rng.uniform(0.05, 0.12) * min(height, width)
        yy = (np.arange(height, dtype=np.float32)[:, None] - cy) / spread
        xx = (np.arange(width, dtype=np.float32)[None, :] - cx) / spread
        sal = np.maximum(sal, rng.uniform(0.3, 0.6) * np.exp(-0.5 * (yy * yy + xx * xx)))
    # a stride-4 network: low resolution, bilinear upsampling, soft edges
    low = Image.fromarray(sal).resize((max(1, width // 4), max(1, height // 4)), Image.Resampling.BOX)
    sal = np.asarray(low.resize((width, height), Image.Resampling.BILINEAR), dtype=np.float32)
    sal = _gaussian_blur(sal, rng.uniform(0.8, 1.8))
    sal = sal + 0.06 * _smooth_field(rng, height, width, 3, 1)[..., 0]
    gain, centre = rng.uniform(6.0, 10.0), 0.45
    low_end, high_end = 1 / (1 + math.exp(gain * centre)), 1 / (1 + math.exp(-gain * (1 - centre)))
    sal = (1 / (1 + np.exp(-gain * (sal - centre))) - low_end) / (high_end - low_end)
    return np.clip(np.round(sal * 255.0), 0, 255).astype(np.uint8)


# ------------------------------------------------------------------------------------------------ files


def _jpeg_bytes(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=JPEG_QUALITY)
    return buffer.getvalue()


def _voc_xml(image_id: str, scene: _Scene) -> bytes:
    """VOC-style annotation: one ``object`` per instance, box of its visible part (1-based, inclusive)."""
    height, width = scene.image.shape[:2]
    root = ET.Element("annotation")
    ET.SubElement(root, "folder").text = "VOC2012"
    ET.SubElement(root, "filename").text = f"{image_id}.jpg"
    source = ET.SubElement(root, "source")
    ET.SubElement(source, "database").text = "wsss_lightning synthetic demo"
    size = ET.SubElement(root, "size")
    ET.SubElement(size, "width").text = str(width)
    ET.SubElement(size, "height").text = str(height)
    ET.SubElement(size, "depth").text = "3"
    ET.SubElement(root, "segmented").text = "1"
    for obj in scene.objects:
        rows, cols = np.nonzero(obj.visible)
        node = ET.SubElement(root, "object")
        ET.SubElement(node, "name").text = DEMO_CLASSES[obj.cls]
        ET.SubElement(node, "pose").text = "Unspecified"
        ET.SubElement(node, "truncated").text = str(int(obj.truncated))
        ET.SubElement(node, "difficult").text = "0"
        box = ET.SubElement(node, "bndbox")
        for key, value in (("xmin", cols.min()), ("ymin", rows.min()), ("xmax", cols.max()), ("ymax", rows.max())):
            ET.SubElement(box, key).text = str(int(value) + 1)
    ET.indent(root, space="\t")
    return (ET.tostring(root, encoding="unicode") + "\n").encode("utf-8")


def _image_size(rng: np.random.Generator, size_range: tuple[int, int]) -> tuple[int, int]:
    low, high = size_range
    return int(rng.integers(low, high + 1)), int(rng.integers(low, high + 1))


def _voc_scene(seed: int, index: int, size_range: tuple[int, int]) -> tuple[_Scene, np.ndarray]:
    rng = np.random.default_rng([seed, _STREAM_VOC, index])
    height, width = _image_size(rng, size_range)
    scene = _render(rng, height, width, num_objects=(0.5, 0.3, 0.2), two_class_prob=0.65, coverage=(0.1, 0.38))
    return scene, _offtheshelf_saliency(scene, rng)


def _saliency_scene(seed: int, stream: int, index: int, size_range: tuple[int, int]) -> _Scene:
    rng = np.random.default_rng([seed, stream, index])
    height, width = _image_size(rng, size_range)
    return _render(rng, height, width, num_objects=(0.75, 0.25), two_class_prob=0.5, coverage=(0.12, 0.4))


# ------------------------------------------------------------------------------------------------ plan


@dataclass(frozen=True)
class _Plan:
    voc_ids: list[str]  # every VOC image, index order
    train_aug: list[str]
    train: list[str]
    val: list[str]
    duts_tr: list[str]
    duts_te: list[str]
    ecssd: list[str]

    def files(self) -> list[str]:
        """Every path the generator writes, relative to the output folder (the marker's manifest)."""
        voc = "VOCdevkit/VOC2012"
        labelled = set(self.train) | set(self.val)
        paths = [f"{voc}/ImageSets/Segmentation/{n}.txt" for n in ("train", "val", "train_aug")]
        paths += ["class_names.txt", "README.txt", MARKER_NAME]
        for image_id in self.voc_ids:
            paths += [f"{voc}/JPEGImages/{image_id}.jpg", f"{voc}/SegmentationClassAug/{image_id}.png"]
            paths += [f"{voc}/Annotations/{image_id}.xml", f"saliency_maps/{image_id}.png"]
            if image_id in labelled:
                paths.append(f"{voc}/SegmentationClass/{image_id}.png")
        for split, names in (("DUTS-TR", self.duts_tr), ("DUTS-TE", self.duts_te)):
            for name in names:
                paths += [f"DUTS/{split}/{split}-Image/{name}.jpg", f"DUTS/{split}/{split}-Mask/{name}.png"]
        for name in self.ecssd:
            paths += [f"ECSSD/images/{name}.jpg", f"ECSSD/ground_truth_mask/{name}.png"]
        return sorted(paths)


def _plan(
    seed: int, num_train_aug: int, num_train: int, num_val: int, num_duts_train: int, num_duts_test: int, num_ecssd: int
) -> _Plan:
    voc_ids = [f"{ID_YEAR}_{k:06d}" for k in range(1, num_train_aug + num_val + 1)]
    rng = np.random.default_rng([seed, _STREAM_SPLIT])
    order = rng.permutation(len(voc_ids))  # val ids interleave with train ids, as in VOC
    val = sorted(voc_ids[i] for i in order[:num_val])
    train_aug = sorted(voc_ids[i] for i in order[num_val:])
    train = sorted(train_aug[i] for i in rng.permutation(len(train_aug))[:num_train])
    return _Plan(
        voc_ids=voc_ids,
        train_aug=train_aug,
        train=train,
        val=val,
        duts_tr=[f"ILSVRC2014_train_{k:08d}" for k in range(1, num_duts_train + 1)],
        duts_te=[f"ILSVRC2012_test_{k:08d}" for k in range(1, num_duts_test + 1)],
        ecssd=[f"{k:04d}" for k in range(1, num_ecssd + 1)],
    )


def _prepare_output(out: Path, planned: list[str], overwrite: bool) -> None:
    """Refuse a foreign non-empty folder (unless ``overwrite``); in our own, remove only our stale files."""
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out} exists and is not a directory; pass another --out")
    marker = out / MARKER_NAME
    previous: list[str] = []
    if marker.is_file():
        try:
            previous = list(json.loads(marker.read_text(encoding="utf-8")).get("files", []))
        except (ValueError, AttributeError):
            previous = []  # a damaged marker: overwrite our files, delete nothing
    elif out.is_dir() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(
            f"{out} is not empty and was not written by `wsss data demo` (no {MARKER_NAME} marker); "
            "pass an empty or new directory, or --overwrite to write into it anyway (nothing is deleted)"
        )
    root = out.resolve()
    for relative in sorted(set(previous) - set(planned)):
        path = (out / str(relative)).resolve()
        # the manifest is data: only plain files strictly inside the output folder are ever removed
        if root in path.parents and path.is_file() and not path.is_symlink():
            path.unlink()


# ------------------------------------------------------------------------------------------------ API


def generate_demo(
    out: str | Path,
    seed: int = 0,
    *,
    num_train_aug: int = 240,
    num_train: int = 80,
    num_val: int = 60,
    num_duts_train: int = 160,
    num_duts_test: int = 40,
    num_ecssd: int = 40,
    size_range: tuple[int, int] = (112, 160),
    overwrite: bool = False,
) -> dict:
    """Write the synthetic demo dataset under ``out`` and return a summary (counts, paths, class names).

    Layout (the published ones): ``VOCdevkit/VOC2012/{JPEGImages, SegmentationClass (palette PNGs, train and
    val), SegmentationClassAug (mode-L index PNGs, train_aug and val), Annotations, ImageSets/Segmentation/
    {train,val,train_aug}.txt}``, ``saliency_maps/<id>.png`` (off-the-shelf style, train_aug and val),
    ``DUTS/DUTS-{TR,TE}/DUTS-{TR,TE}-{Image,Mask}``, ``ECSSD/{images,ground_truth_mask}``,
    ``class_names.txt``, ``README.txt`` and the ``.wsss_demo`` marker.

    Image sides are drawn uniformly from ``size_range`` (pixels, inclusive). A non-empty ``out`` without
    the marker is refused unless ``overwrite``; nothing but files this generator listed in its own marker is
    ever deleted. The same ``seed`` gives byte-identical files.
    """
    counts = {
        "train_aug": num_train_aug,
        "train": num_train,
        "val": num_val,
        "duts_train": num_duts_train,
        "duts_test": num_duts_test,
        "ecssd": num_ecssd,
    }
    if any(n < 0 for n in counts.values()) or num_train_aug < 1:
        raise ValueError(f"counts must be non-negative and num_train_aug >= 1, got {counts}")
    if num_train > num_train_aug:
        raise ValueError(f"num_train ({num_train}) must not exceed num_train_aug ({num_train_aug}): train ⊂ train_aug")
    low, high = int(size_range[0]), int(size_range[1])
    if not 48 <= low <= high:
        raise ValueError(f"size_range must satisfy 48 <= low <= high, got {size_range}")
    if seed < 0:
        raise ValueError(f"seed must be non-negative, got {seed}")

    out = Path(out)
    plan = _plan(seed, num_train_aug, num_train, num_val, num_duts_train, num_duts_test, num_ecssd)
    manifest = plan.files()
    _prepare_output(out, manifest, overwrite)
    out.mkdir(parents=True, exist_ok=True)
    # the marker goes first, so an interrupted run still leaves a folder we recognise as ours
    marker = {
        "generator": "wsss_lightning.data.demo",
        "version": 1,
        "seed": seed,
        "counts": counts,
        "size_range": [low, high],
        "files": manifest,
    }
    atomic_write_bytes(out / MARKER_NAME, (json.dumps(marker, indent=1) + "\n").encode("utf-8"))

    voc = out / "VOCdevkit" / "VOC2012"
    labelled = set(plan.train) | set(plan.val)
    for index, image_id in enumerate(plan.voc_ids):
        scene, saliency = _voc_scene(seed, index, (low, high))
        label = scene.label()
        atomic_write_bytes(voc / "JPEGImages" / f"{image_id}.jpg", _jpeg_bytes(scene.image))
        write_grey_png(voc / "SegmentationClassAug" / f"{image_id}.png", label)  # uint8 -> mode L as is
        if image_id in labelled:
            write_palette_png(voc / "SegmentationClass" / f"{image_id}.png", label)
        atomic_write_bytes(voc / "Annotations" / f"{image_id}.xml", _voc_xml(image_id, scene))
        write_grey_png(out / "saliency_maps" / f"{image_id}.png", saliency)

    lists = voc / "ImageSets" / "Segmentation"
    atomic_write_bytes(lists / "train.txt", "".join(f"{i}\n" for i in plan.train).encode())
    atomic_write_bytes(lists / "val.txt", "".join(f"{i}\n" for i in plan.val).encode())
    aug_lines = "".join(f"/JPEGImages/{i}.jpg /SegmentationClassAug/{i}.png\n" for i in plan.train_aug)
    atomic_write_bytes(lists / "train_aug.txt", aug_lines.encode())

    sets = (
        (_STREAM_DUTS_TR, plan.duts_tr, out / "DUTS/DUTS-TR/DUTS-TR-Image", out / "DUTS/DUTS-TR/DUTS-TR-Mask"),
        (_STREAM_DUTS_TE, plan.duts_te, out / "DUTS/DUTS-TE/DUTS-TE-Image", out / "DUTS/DUTS-TE/DUTS-TE-Mask"),
        (_STREAM_ECSSD, plan.ecssd, out / "ECSSD/images", out / "ECSSD/ground_truth_mask"),
    )
    for stream, names, image_dir, mask_dir in sets:
        for index, name in enumerate(names):
            scene = _saliency_scene(seed, stream, index, (low, high))
            atomic_write_bytes(image_dir / f"{name}.jpg", _jpeg_bytes(scene.image))
            write_grey_png(mask_dir / f"{name}.png", scene.foreground.astype(np.uint8) * 255)

    atomic_write_bytes(out / "class_names.txt", "".join(f"{n}\n" for n in DEMO_CLASSES).encode())
    atomic_write_bytes(out / "README.txt", _readme(seed, counts, (low, high)).encode())
    return {
        "root": str(out),
        "seed": seed,
        "counts": counts,
        "class_names": list(DEMO_CLASSES),
        "paths": {
            "voc_root": str(voc),
            "saliency_maps": str(out / "saliency_maps"),
            "duts_train": str(out / "DUTS" / "DUTS-TR"),
            "duts_test": str(out / "DUTS" / "DUTS-TE"),
            "ecssd": str(out / "ECSSD"),
            "class_names": str(out / "class_names.txt"),
        },
        "num_files": len(manifest),
    }


def _readme(seed: int, counts: dict[str, int], size_range: tuple[int, int]) -> str:
    classes = ", ".join(f"{i} {n}" for i, n in enumerate(DEMO_CLASSES))
    return f"""wsss_lightning synthetic demo dataset (seed {seed}; written by `wsss data demo`, regenerate at will)

Classes: {classes}; 255 = boundary band / ignore.
Foreground classes differ by shape and texture: disc/stripes, square/checkerboard, triangle/dots,
star/solid, ring/gradient; colours overlap between classes. Image sides {size_range[0]}-{size_range[1]} px.

VOCdevkit/VOC2012/JPEGImages/<id>.jpg              train_aug + val images ({counts["train_aug"]} + {counts["val"]})
VOCdevkit/VOC2012/SegmentationClass/<id>.png       palette PNGs (VOC colours), train + val ids only
VOCdevkit/VOC2012/SegmentationClassAug/<id>.png    index PNGs (mode L), train_aug + val ids
VOCdevkit/VOC2012/Annotations/<id>.xml             VOC XML, one object per instance (box of its visible part)
VOCdevkit/VOC2012/ImageSets/Segmentation/train.txt      {counts["train"]} ids (a subset of train_aug)
VOCdevkit/VOC2012/ImageSets/Segmentation/val.txt        {counts["val"]} ids
VOCdevkit/VOC2012/ImageSets/Segmentation/train_aug.txt  {counts["train_aug"]} lines, DeepLab style:
                                                   "/JPEGImages/<id>.jpg /SegmentationClassAug/<id>.png"
saliency_maps/<id>.png                             imperfect off-the-shelf saliency maps (grey 0..255), train_aug + val
DUTS/DUTS-TR/DUTS-TR-{{Image,Mask}}/                 {counts["duts_train"]} saliency training pairs (masks 0/255)
DUTS/DUTS-TE/DUTS-TE-{{Image,Mask}}/                 {counts["duts_test"]} saliency test pairs
ECSSD/{{images,ground_truth_mask}}/                  {counts["ecssd"]} saliency test pairs (0001, 0002, ...)
class_names.txt                                    one class name per line, index order
.wsss_demo                                         marker + manifest: lets the generator rewrite this folder
"""


def main(argv: list[str] | None = None) -> int:
    """``wsss data demo --out DIR [--seed 0] [--tiny] [--overwrite]``; returns the exit status."""
    parser = argparse.ArgumentParser(prog="wsss data demo", description="Write the synthetic demo dataset.")
    parser.add_argument("--out", required=True, help="output folder (new, empty, or an earlier demo output)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (same seed, same bytes)")
    parser.add_argument("--tiny", action="store_true", help="a few dozen 64-96 px images, for unit tests")
    parser.add_argument("--overwrite", action="store_true", help="write into a foreign non-empty folder")
    args = parser.parse_args(argv)
    settings = dict(TINY_SETTINGS) if args.tiny else {}
    start = time.perf_counter()
    try:
        summary = generate_demo(args.out, args.seed, overwrite=args.overwrite, **settings)
    except (FileExistsError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    counts = ", ".join(f"{k} {v}" for k, v in summary["counts"].items())
    print(f"wrote {summary['num_files']} files to {summary['root']} in {time.perf_counter() - start:.1f} s ({counts})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

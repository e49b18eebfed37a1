"""A small synthetic stand-in for PASCAL VOC 2012 + SBD + DUTS + ECSSD, in their published layouts (``wsss data demo``).

It feeds ``make demo`` (the whole pipeline on a laptop CPU), the tests and the benchmarks, and a config written for
it moves to the real data by changing ``--data.root`` only. The 20 VOC classes (real names, background 0) are
procedural object families (``data/demo_objects.py``): a silhouette x a texture x two shared palettes, with random
size (about 4-45 % of the image), aspect, rotation, outline deformation, colour jitter, shading, texture scale and
phase, occlusion and truncation. Some classes share a silhouette, others a texture, and colours overlap, so a
classifier needs both and a CAM has to find the telling parts.

A VOC image holds 1-4 objects of 1-3 classes (about 35 % two classes, 10 % three). About a third of the images
also hold one or two *salient distractors*: flat, saturated, sharp-edged blobs, bars, rings or discs that are
none of the classes (label 0, absent from the XML) but that the off-the-shelf saliency map fires on, so "image
label + saliency" is an imperfect labelling, as on real photographs. Backgrounds mix smooth colour noise,
gradients, faint stripes and low-contrast clutter blobs; label maps carry a ~3-pixel 255 band around every
object, as VOC's do. The off-the-shelf saliency maps (``VOCdevkit/VOC2012/saliency_map``, as the AuxSegNet DSS
maps are distributed) are imperfect: low resolution, blurred, parts of objects missed, false positives on
distractors and clutter; their maxF against the VOC mask foreground (255 band ignored) is about 0.84.

Every image's content depends only on (seed, set, index): class choice, scene and saliency map each draw from
their own random stream, so changing one count never changes another set's images, and the same seed gives
byte-identical files. The split is stratified by each image's first class, so every class is in train_aug, val
and train once they hold at least 20 images. Everything is vectorised numpy, encoded with PIL.
"""

from __future__ import annotations

import argparse
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

from wsss_lightning.data.demo_objects import (
    CLASS_DESIGNS,
    DISTRACTOR_KINDS,
    SHAPE_EXTENT,
    Shape,
    dilate,
    distractor_colour,
    distractor_inside,
    draw_shape,
    gaussian_blur,
    hsv,
    inner_edge,
    object_colours,
    shape_inside,
    smooth_field,
    texture_weight,
    unit_area,
)
from wsss_lightning.data.io import atomic_write_bytes, write_grey_png, write_palette_png
from wsss_lightning.data.palette import VOC_CLASSES

DEMO_CLASSES: tuple[str, ...] = VOC_CLASSES
NUM_FOREGROUND = len(DEMO_CLASSES) - 1

MARKER_NAME = ".wsss_demo"
ID_YEAR = 2026  # VOC-like ids "2026_000001": a year no real VOC id uses
JPEG_QUALITY = 90
VOC_DIR = "VOCdevkit/VOC2012"
SALIENCY_DIR = "saliency_map"  # under VOC_DIR, as the AuxSegNet DSS maps unpack

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

# Independent random streams: an image's content depends only on (seed, stream, index).
_STREAM_SPLIT, _STREAM_VOC, _STREAM_DUTS_TR, _STREAM_DUTS_TE, _STREAM_ECSSD, _STREAM_CLASS_ORDER = range(6)
_PART_CLASSES, _PART_SCENE, _PART_SALIENCY = range(3)  # sub-streams of one image

# VOC scenes: P(1, 2, 3 classes) and, per number of classes k, P(k, k+1, ... objects) (at most 4 objects)
_VOC_NUM_CLASSES = (0.55, 0.35, 0.10)
_VOC_EXTRA_OBJECTS = {1: (0.62, 0.24, 0.1, 0.04), 2: (0.68, 0.24, 0.08), 3: (0.75, 0.25)}
_VOC_DISTRACTORS = (0.55, 0.3, 0.15)  # P(0, 1, 2 salient distractors)
_SAL_NUM_OBJECTS = (0.75, 0.25)  # DUTS / ECSSD: one or two objects
_SAL_DISTRACTORS = (0.9, 0.1)
_AREA_RANGE = (0.04, 0.45)  # one object's area, fraction of the image


# ------------------------------------------------------------------------------------------------ scenes


@dataclass
class _Object:
    cls: int
    shape: Shape
    mask: np.ndarray  # bool (H, W): the whole shape inside the image
    visible: np.ndarray  # bool (H, W): what later objects leave of it
    cx: float
    cy: float
    theta: float
    radius: float  # pixels
    aspect: float
    truncated: bool

    def frame(self, rows: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Pixel offsets ``(x, y)`` from the centre along the object's axes, float32 of the inputs' shape."""
        dx, dy = cols.astype(np.float32) - self.cx, rows.astype(np.float32) - self.cy
        cos, sin = math.cos(self.theta), math.sin(self.theta)
        return dx * cos + dy * sin, -dx * sin + dy * cos

    @property
    def extent(self) -> float:
        """Radius in pixels along the longer axis."""
        return self.radius * max(math.sqrt(self.aspect), 1.0 / math.sqrt(self.aspect))


@dataclass
class _Scene:
    image: np.ndarray  # uint8 (H, W, 3)
    objects: list[_Object]
    distractors: list[np.ndarray]  # bool (H, W): visible part of each salient distractor (label 0)
    clutter: list[np.ndarray]  # bool (H, W): low-contrast background blobs
    band: np.ndarray  # bool (H, W): the 255 boundary band

    @property
    def foreground(self) -> np.ndarray:
        """bool (H, W): union of the class objects (the saliency ground truth of DUTS / ECSSD)."""
        union = np.zeros(self.image.shape[:2], dtype=bool)
        for obj in self.objects:
            union |= obj.mask
        return union

    def label(self) -> np.ndarray:
        """Class indices ``uint8 (H, W)``: 0 background, 1..20 classes, 255 boundary band."""
        label = np.zeros(self.image.shape[:2], dtype=np.uint8)
        for obj in self.objects:
            label[obj.visible] = obj.cls
        label[self.band] = 255
        return label


def _window(cx: float, cy: float, reach: float, height: int, width: int) -> tuple[slice, slice]:
    rows = slice(max(0, int(cy - reach)), min(height, int(math.ceil(cy + reach)) + 1))
    cols = slice(max(0, int(cx - reach)), min(width, int(math.ceil(cx + reach)) + 1))
    return rows, cols


def _place(cls: int, area: float, height: int, width: int, rng: np.random.Generator) -> _Object:
    """One object of class ``cls`` covering about ``area`` pixels, 70 % wholly inside the image."""
    shape = draw_shape(CLASS_DESIGNS[cls - 1].silhouette, rng)
    radius = math.sqrt(area / unit_area(shape))
    aspect = math.exp(rng.uniform(math.log(0.7), math.log(1.45)))
    theta = rng.uniform(0.0, 2.0 * math.pi)
    stretch = max(math.sqrt(aspect), 1.0 / math.sqrt(aspect))
    reach = radius * stretch * 1.05  # most outlines stay within 1.05 radii
    inside = rng.random() < 0.7 and 2 * reach < min(height, width)
    mx, my = (reach, reach) if inside else (0.1 * width, 0.1 * height)
    cx, cy = rng.uniform(mx, width - mx), rng.uniform(my, height - my)
    obj = _Object(cls, shape, np.zeros((height, width), bool), np.zeros(0, bool), cx, cy, theta, radius, aspect, False)
    rows, cols = _window(cx, cy, radius * stretch * SHAPE_EXTENT, height, width)
    x, y = obj.frame(np.arange(rows.start, rows.stop)[:, None], np.arange(cols.start, cols.stop)[None, :])
    obj.mask[rows, cols] = shape_inside(shape, x / (radius * math.sqrt(aspect)), y * math.sqrt(aspect) / radius)
    mask = obj.mask
    obj.truncated = bool(mask[0].any() or mask[-1].any() or mask[:, 0].any() or mask[:, -1].any())
    return obj


def _choose(rng: np.random.Generator, probabilities: Sequence[float]) -> int:
    return int(rng.choice(len(probabilities), p=np.asarray(probabilities) / np.sum(probabilities)))


def _voc_classes(rng: np.random.Generator, primary: int) -> list[int]:
    """Class of every object of a VOC image (drawing order): ``primary`` and 0-2 other classes, 1-4 objects."""
    num_classes = _choose(rng, _VOC_NUM_CLASSES) + 1
    others = [c for c in range(1, NUM_FOREGROUND + 1) if c != primary]
    classes = [primary] + [int(c) for c in rng.choice(others, size=num_classes - 1, replace=False)]
    extra = _choose(rng, _VOC_EXTRA_OBJECTS[num_classes])
    objects = classes + [int(c) for c in rng.choice(classes, size=extra)]
    return [objects[i] for i in rng.permutation(len(objects))]


def _saliency_set_classes(rng: np.random.Generator) -> list[int]:
    count = _choose(rng, _SAL_NUM_OBJECTS) + 1
    return [int(c) for c in rng.integers(1, NUM_FOREGROUND + 1, size=count)]


def _layout(rng: np.random.Generator, height: int, width: int, classes: list[int]) -> tuple[list[_Object], np.ndarray]:
    """Objects (drawing order = depth order) and the boundary band, by rejection sampling.

    Each object covers about 4-45 % of the image; a layout is kept when every object keeps at least 40 % of
    itself visible and at least 16 pixels outside the band (so the label map names every class the XML names)
    and the union covers 4-70 % of the image. Small images that keep failing get smaller objects and looser
    rules, and at last one object per class (the image's classes never change).
    """
    pixels = height * width
    for attempt in range(400):
        relaxed = attempt >= 200
        chosen = classes if attempt < 300 else list(dict.fromkeys(classes))
        count = len(chosen)
        total = rng.uniform(0.08 + 0.06 * count, 0.4 + 0.06 * count) * (0.8 if relaxed else 1.0)
        areas = np.clip(rng.dirichlet(np.full(count, 2.5)) * total, *_AREA_RANGE) * pixels
        objects = [_place(c, a, height, width, rng) for c, a in zip(chosen, areas)]
        covered = np.zeros((height, width), dtype=bool)
        for obj in reversed(objects):  # the last drawn is on top
            obj.visible = obj.mask & ~covered
            covered |= obj.mask
        if not 0.04 <= covered.mean() <= 0.7:
            continue
        band = np.zeros((height, width), dtype=bool)
        for obj in objects:
            band |= dilate(inner_edge(obj.visible))
        share, core = (0.25, 8) if relaxed else (0.4, 16)
        if all(o.visible.sum() >= share * o.mask.sum() and (o.visible & ~band).sum() >= core for o in objects):
            return objects, band
    raise RuntimeError(f"could not lay out {len(classes)} objects on a {width}x{height} image; use a larger size_range")


def _background(rng: np.random.Generator, height: int, width: int) -> tuple[np.ndarray, list[np.ndarray]]:
    """Background ``float32 (H, W, 3)`` in about [0, 1] and its low-contrast clutter blob masks."""
    first = hsv(rng.uniform(), rng.uniform(0.0, 0.5), rng.uniform(0.25, 0.9))
    second = hsv(rng.uniform(), rng.uniform(0.0, 0.5), rng.uniform(0.25, 0.9))
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
    noise = 0.6 * smooth_field(rng, height, width, cells, 1) + 0.4 * smooth_field(rng, height, width, cells, 3)
    image = image + rng.uniform(0.08, 0.22) * noise
    if rng.random() < 0.4:  # faint stripes: a texture that names no class
        period = rng.uniform(5.0, 18.0)
        phase = (xx * width * math.cos(angle + 1.0) + yy * height * math.sin(angle + 1.0)) / period
        image = image + rng.uniform(0.03, 0.08) * np.sin(2 * math.pi * phase)[..., None]

    clutter = []
    scale = min(height, width)
    speckle = 0.05 * smooth_field(rng, height, width, 4, 1)  # the clutter's own faint texture
    cols = np.arange(width, dtype=np.float32)[None, :]
    rows = np.arange(height, dtype=np.float32)[:, None]
    for _ in range(_choose(rng, (0.1, 0.3, 0.3, 0.2, 0.1))):
        blob = np.zeros((height, width), dtype=bool)
        cx, cy = rng.uniform(0, width), rng.uniform(0, height)
        for _ in range(int(rng.integers(1, 4))):  # a union of ellipses: irregular outline
            ex, ey = cx + rng.normal(0, 0.06 * scale), cy + rng.normal(0, 0.06 * scale)
            ax, ay = rng.uniform(0.05, 0.16) * scale, rng.uniform(0.05, 0.16) * scale
            t = rng.uniform(0, math.pi)
            a = (cols - ex) * math.cos(t) + (rows - ey) * math.sin(t)
            b = -(cols - ex) * math.sin(t) + (rows - ey) * math.cos(t)
            blob |= (a / ax) ** 2 + (b / ay) ** 2 <= 1.0
        if not blob.any():
            continue
        # low contrast: the local background colour, shifted a little (sometimes a little more)
        shift = rng.normal(0.0, 0.07, size=3) + rng.choice([-1.0, 1.0]) * rng.uniform(0.05, 0.18)
        image[blob] = image[blob].mean(axis=0) + shift.astype(np.float32) + speckle[blob]
        clutter.append(blob)
    return image.astype(np.float32), clutter


def _distractors(rng: np.random.Generator, image: np.ndarray, count: int) -> list[np.ndarray]:
    """Paint ``count`` salient distractors (flat colour, sharp edge, 1.5-8 % of the image) into ``image``."""
    height, width = image.shape[:2]
    masks = []
    for _ in range(count):
        kind = DISTRACTOR_KINDS[int(rng.integers(len(DISTRACTOR_KINDS)))]
        radius = math.sqrt(rng.uniform(0.015, 0.08) * height * width / (2.0 if kind == "bar" else 2.5))
        aspect = math.exp(rng.uniform(math.log(0.75), math.log(1.35)))
        cx, cy = rng.uniform(0.1 * width, 0.9 * width), rng.uniform(0.1 * height, 0.9 * height)
        theta = rng.uniform(0, 2 * math.pi)
        rows, cols = _window(cx, cy, radius * 1.3, height, width)
        dy = np.arange(rows.start, rows.stop, dtype=np.float32)[:, None] - cy
        dx = np.arange(cols.start, cols.stop, dtype=np.float32)[None, :] - cx
        x = dx * math.cos(theta) + dy * math.sin(theta)
        y = -dx * math.sin(theta) + dy * math.cos(theta)
        mask = np.zeros((height, width), dtype=bool)
        mask[rows, cols] = distractor_inside(
            kind, x / (radius * math.sqrt(aspect)), y * math.sqrt(aspect) / radius, rng
        )
        image[mask] = distractor_colour(rng)
        masks.append(mask)
    return masks


def _paint(image: np.ndarray, obj: _Object, rng: np.random.Generator) -> None:
    """Fill ``obj.mask`` of ``image`` (float32 (H, W, 3)) with its class's texture, colours and shading."""
    design = CLASS_DESIGNS[obj.cls - 1]
    rows, cols = np.nonzero(obj.mask)
    if rows.size == 0:
        return
    x, y = obj.frame(rows, cols)
    period = float(np.clip(rng.uniform(0.28, 0.45) * obj.radius, 8.0, 18.0))
    weight = texture_weight(design.texture, x, y, period, obj.extent, rng)[:, None]
    main, second = object_colours(design, rng)
    colour = main * (1 - weight) + second * weight
    angle = rng.uniform(0, 2 * math.pi)  # soft directional shading and a per-object colour cast
    shade = 1.0 + rng.uniform(0.05, 0.2) * (x * math.cos(angle) + y * math.sin(angle)) / obj.extent
    gain = rng.normal(1.0, 0.04, size=3).astype(np.float32)
    image[rows, cols] = colour * shade[:, None] * gain


def _render(
    rng: np.random.Generator, height: int, width: int, classes: list[int], distractor_probs: Sequence[float]
) -> _Scene:
    objects, band = _layout(rng, height, width, classes)
    image, clutter = _background(rng, height, width)
    distractors = _distractors(rng, image, _choose(rng, distractor_probs))
    covered = np.zeros((height, width), dtype=bool)
    for obj in objects:
        _paint(image, obj, rng)
        covered |= obj.mask
    # objects hide what lies behind them; a distractor mostly hidden is no longer salient
    distractors = [d & ~covered for d in distractors if (d & ~covered & ~band).sum() >= max(12, 0.4 * d.sum())]
    clutter = [c & ~covered for c in clutter]
    # light, camera blur and sensor noise
    image = image * (1.0 + rng.uniform(0.05, 0.2) * smooth_field(rng, height, width, 2, 1))
    if rng.random() < 0.5:
        image = gaussian_blur(image, rng.uniform(0.5, 0.9))
    image = image + rng.uniform(0.01, 0.035) * rng.standard_normal(image.shape, dtype=np.float32)
    pixels = np.clip(np.round(image * 255.0), 0, 255).astype(np.uint8)
    return _Scene(pixels, objects, distractors, [c for c in clutter if c.any()], band)


def _offtheshelf_saliency(scene: _Scene, rng: np.random.Generator) -> np.ndarray:
    """An imperfect saliency map ``uint8 (H, W)`` in 0..255, as a detector trained elsewhere would give.

    Each object gets its own confidence; some objects are partly (rarely wholly) missed; most salient
    distractors and some clutter blobs fire; random diffuse spots appear; the map is computed at 1/4
    resolution, upsampled, blurred, and squashed by a sigmoid so values pile up near 0 and 1 but stay grey
    at edges.
    """
    height, width = scene.image.shape[:2]
    rows, cols = np.arange(height)[:, None], np.arange(width)[None, :]
    sal = np.zeros((height, width), dtype=np.float32)
    for obj in scene.objects:
        region = obj.visible.astype(np.float32) * rng.uniform(0.7, 1.0)
        if rng.random() < 0.5:  # a part of the object (beyond a random cut) is missed
            x, y = obj.frame(rows, cols)
            angle = rng.uniform(0, 2 * math.pi)
            side = x * math.cos(angle) + y * math.sin(angle) > rng.uniform(-0.3, 0.5) * obj.extent
            region[side] *= rng.uniform(0.0, 0.35)
        if len(scene.objects) > 1 and rng.random() < 0.1:  # the whole object is missed
            region *= rng.uniform(0.1, 0.35)
        sal = np.maximum(sal, region)
    for distractor in scene.distractors:  # salient things that are no class: the detector fires on most
        if rng.random() < 0.85:
            sal[distractor] = np.maximum(sal[distractor], rng.uniform(0.6, 1.0))
    for blob in scene.clutter:  # false positives on background clutter
        if rng.random() < 0.3:
            sal[blob] = np.maximum(sal[blob], rng.uniform(0.35, 0.75))
    if rng.random() < 0.3:  # a diffuse false-positive spot anywhere
        cy, cx = rng.uniform(0, height), rng.uniform(0, width)
        spread = rng.uniform(0.05, 0.12) * min(height, width)
        spot = np.exp(-0.5 * (((rows - cy) / spread) ** 2 + ((cols - cx) / spread) ** 2)).astype(np.float32)
        sal = np.maximum(sal, rng.uniform(0.3, 0.6) * spot)
    # a stride-4 network: low resolution, bilinear upsampling, soft edges
    low = Image.fromarray(sal).resize((max(1, width // 4), max(1, height // 4)), Image.Resampling.BOX)
    sal = np.asarray(low.resize((width, height), Image.Resampling.BILINEAR), dtype=np.float32)
    sal = gaussian_blur(sal, rng.uniform(0.8, 1.8))
    sal = sal + 0.06 * smooth_field(rng, height, width, 3, 1)[..., 0]
    gain, centre = rng.uniform(6.0, 10.0), 0.45
    low_end, high_end = 1 / (1 + math.exp(gain * centre)), 1 / (1 + math.exp(-gain * (1 - centre)))
    sal = (1 / (1 + np.exp(-gain * (sal - centre))) - low_end) / (high_end - low_end)
    return np.clip(np.round(sal * 255.0), 0, 255).astype(np.uint8)


def _image_size(rng: np.random.Generator, size_range: tuple[int, int]) -> tuple[int, int]:
    low, high = size_range
    return int(rng.integers(low, high + 1)), int(rng.integers(low, high + 1))


def _rng(seed: int, stream: int, index: int, part: int) -> np.random.Generator:
    return np.random.default_rng([seed, stream, index, part])


@functools.cache
def _class_order(seed: int) -> tuple[int, ...]:
    """The first class of VOC image k is ``_class_order(seed)[k % 20]``: every class equally often."""
    return tuple(int(c) + 1 for c in np.random.default_rng([seed, _STREAM_CLASS_ORDER]).permutation(NUM_FOREGROUND))


def voc_image_classes(seed: int, index: int) -> list[int]:
    """Class (1..20) of every object of VOC image ``index`` (0-based), without drawing the image."""
    primary = _class_order(seed)[index % NUM_FOREGROUND]
    return _voc_classes(_rng(seed, _STREAM_VOC, index, _PART_CLASSES), primary)


def _voc_scene(seed: int, index: int, size_range: tuple[int, int]) -> tuple[_Scene, np.ndarray]:
    rng = _rng(seed, _STREAM_VOC, index, _PART_SCENE)
    height, width = _image_size(rng, size_range)
    scene = _render(rng, height, width, voc_image_classes(seed, index), _VOC_DISTRACTORS)
    return scene, _offtheshelf_saliency(scene, _rng(seed, _STREAM_VOC, index, _PART_SALIENCY))


def _saliency_scene(seed: int, stream: int, index: int, size_range: tuple[int, int]) -> _Scene:
    classes = _saliency_set_classes(_rng(seed, stream, index, _PART_CLASSES))
    rng = _rng(seed, stream, index, _PART_SCENE)
    height, width = _image_size(rng, size_range)
    return _render(rng, height, width, classes, _SAL_DISTRACTORS)


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
        labelled = set(self.train) | set(self.val)
        paths = [f"{VOC_DIR}/ImageSets/Segmentation/{n}.txt" for n in ("train", "val", "train_aug")]
        paths += ["class_names.txt", "README.txt", MARKER_NAME]
        for image_id in self.voc_ids:
            paths += [f"{VOC_DIR}/JPEGImages/{image_id}.jpg", f"{VOC_DIR}/SegmentationClassAug/{image_id}.png"]
            paths += [f"{VOC_DIR}/Annotations/{image_id}.xml", f"{VOC_DIR}/{SALIENCY_DIR}/{image_id}.png"]
            if image_id in labelled:
                paths.append(f"{VOC_DIR}/SegmentationClass/{image_id}.png")
        for split, names in (("DUTS-TR", self.duts_tr), ("DUTS-TE", self.duts_te)):
            for name in names:
                paths += [f"{split}/{split}-Image/{name}.jpg", f"{split}/{split}-Mask/{name}.png"]
        for name in self.ecssd:
            paths += [f"ECSSD/images/{name}.jpg", f"ECSSD/ground_truth_mask/{name}.png"]
        return sorted(paths)


def _stratified(indices: Sequence[int], primary: Sequence[int], rng: np.random.Generator) -> list[int]:
    """``indices`` in a random order that cycles through the first classes (round robin): any prefix of
    length n holds every class at least ``n // 20`` times when the classes are balanced in ``indices``."""
    order = [indices[i] for i in rng.permutation(len(indices))]
    seen: dict[int, int] = {}
    rank = {}
    for index in order:
        rank[index] = seen.get(primary[index], 0)
        seen[primary[index]] = rank[index] + 1
    class_rank = rng.permutation(NUM_FOREGROUND + 1)
    return sorted(order, key=lambda i: (rank[i], class_rank[primary[i]]))


def _plan(
    seed: int, num_train_aug: int, num_train: int, num_val: int, num_duts_train: int, num_duts_test: int, num_ecssd: int
) -> _Plan:
    count = num_train_aug + num_val
    voc_ids = [f"{ID_YEAR}_{k:06d}" for k in range(1, count + 1)]
    primary = [_class_order(seed)[k % NUM_FOREGROUND] for k in range(count)]
    rng = np.random.default_rng([seed, _STREAM_SPLIT])
    order = _stratified(range(count), primary, rng)  # val ids interleave with train ids, as in VOC
    val, rest = order[:num_val], order[num_val:]
    train = _stratified(rest, primary, rng)[:num_train]
    return _Plan(
        voc_ids=voc_ids,
        train_aug=sorted(voc_ids[i] for i in rest),
        train=sorted(voc_ids[i] for i in train),
        val=sorted(voc_ids[i] for i in val),
        duts_tr=[f"ILSVRC2014_train_{k:08d}" for k in range(1, num_duts_train + 1)],
        duts_te=[f"ILSVRC2012_test_{k:08d}" for k in range(1, num_duts_test + 1)],
        ecssd=[f"{k:04d}" for k in range(1, num_ecssd + 1)],
    )


def class_counts(
    seed: int = 0, *, num_train_aug: int = 400, num_train: int = 100, num_val: int = 100
) -> dict[str, np.ndarray]:
    """Images holding each class per split, ``int64 (21,)`` (index 0 unused), without drawing any image.

    Exact: the classes of an image come from their own random stream, and the layout keeps every one of them.
    """
    plan = _plan(seed, num_train_aug, num_train, num_val, 0, 0, 0)
    index = {image_id: k for k, image_id in enumerate(plan.voc_ids)}
    counts = {}
    for split, ids in (("train_aug", plan.train_aug), ("train", plan.train), ("val", plan.val)):
        total = np.zeros(NUM_FOREGROUND + 1, dtype=np.int64)
        for image_id in ids:
            total[sorted(set(voc_image_classes(seed, index[image_id])))] += 1
        counts[split] = total
    return counts


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
    num_train_aug: int = 400,
    num_train: int = 100,
    num_val: int = 100,
    num_duts_train: int = 200,
    num_duts_test: int = 50,
    num_ecssd: int = 50,
    size_range: tuple[int, int] = (128, 176),
    overwrite: bool = False,
) -> dict:
    """Write the synthetic demo dataset under ``out`` and return a summary (counts, paths, class names).

    Layout (the published ones): ``VOCdevkit/VOC2012/{JPEGImages, Annotations, SegmentationClass (palette PNGs,
    train and val), SegmentationClassAug (mode-L index PNGs, train_aug and val), saliency_map (grey off-the-shelf
    maps, train_aug and val), ImageSets/Segmentation/{train,val,train_aug}.txt}``, ``DUTS-{TR,TE}/DUTS-{TR,TE}-
    {Image,Mask}``, ``ECSSD/{images,ground_truth_mask}``, ``class_names.txt``, ``README.txt`` and the marker.

    Image sides are drawn uniformly from ``size_range`` (pixels, inclusive). A non-empty ``out`` without the
    marker is refused unless ``overwrite``; nothing but files this generator listed in its own marker is ever
    deleted. The same ``seed`` gives byte-identical files.
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
        "version": 2,
        "seed": seed,
        "counts": counts,
        "size_range": [low, high],
        "files": manifest,
    }
    atomic_write_bytes(out / MARKER_NAME, (json.dumps(marker, indent=1) + "\n").encode("utf-8"))

    voc = out / VOC_DIR
    labelled = set(plan.train) | set(plan.val)
    for index, image_id in enumerate(plan.voc_ids):
        scene, saliency = _voc_scene(seed, index, (low, high))
        label = scene.label()
        atomic_write_bytes(voc / "JPEGImages" / f"{image_id}.jpg", _jpeg_bytes(scene.image))
        write_grey_png(voc / "SegmentationClassAug" / f"{image_id}.png", label)  # uint8 -> mode L as is
        if image_id in labelled:
            write_palette_png(voc / "SegmentationClass" / f"{image_id}.png", label)
        atomic_write_bytes(voc / "Annotations" / f"{image_id}.xml", _voc_xml(image_id, scene))
        write_grey_png(voc / SALIENCY_DIR / f"{image_id}.png", saliency)

    lists = voc / "ImageSets" / "Segmentation"
    atomic_write_bytes(lists / "train.txt", "".join(f"{i}\n" for i in plan.train).encode())
    atomic_write_bytes(lists / "val.txt", "".join(f"{i}\n" for i in plan.val).encode())
    aug_lines = "".join(f"/JPEGImages/{i}.jpg /SegmentationClassAug/{i}.png\n" for i in plan.train_aug)
    atomic_write_bytes(lists / "train_aug.txt", aug_lines.encode())

    sets = (
        (_STREAM_DUTS_TR, plan.duts_tr, out / "DUTS-TR/DUTS-TR-Image", out / "DUTS-TR/DUTS-TR-Mask"),
        (_STREAM_DUTS_TE, plan.duts_te, out / "DUTS-TE/DUTS-TE-Image", out / "DUTS-TE/DUTS-TE-Mask"),
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
            "saliency_maps": str(voc / SALIENCY_DIR),
            "duts_train": str(out / "DUTS-TR"),
            "duts_test": str(out / "DUTS-TE"),
            "ecssd": str(out / "ECSSD"),
            "class_names": str(out / "class_names.txt"),
        },
        "num_files": len(manifest),
    }


def _readme(seed: int, counts: dict[str, int], size_range: tuple[int, int]) -> str:
    designs = "\n".join(
        f"  {i:2d} {d.name:<12s} {d.silhouette:<9s} {d.texture:<9s} {' / '.join(d.palettes)}"
        for i, d in enumerate(CLASS_DESIGNS, start=1)
    )
    return f"""wsss_lightning synthetic demo dataset (seed {seed}; written by `wsss data demo`, regenerate at will)

A small stand-in for PASCAL VOC 2012 + SBD + DUTS + ECSSD in their published layouts: a config written for it
moves to the real data by changing --data.root only. Everything here is synthetic (procedural numpy drawings).

Classes: the 20 PASCAL VOC classes, 0 = background, 255 = boundary band / ignore. Each class is a procedural
object family: a silhouette (random parameters, aspect, rotation, outline deformation) x a texture (random
scale and phase) x colours from two shared palettes (colour alone never names the class):
   # class        silhouette texture   palettes
{designs}
VOC images: {size_range[0]}-{size_range[1]} px sides, 1-4 objects of 1-3 classes (about 35 % two classes, 10 % three),
each object 4-45 % of the image, partly occluded or cut by the border at times. About a third of the images hold
salient distractors: flat, saturated, sharp-edged blobs / bars / rings / discs that are no class (label 0, not
in the XML) but fire in the off-the-shelf saliency map. Backgrounds: colour noise, gradients, faint stripes,
low-contrast clutter blobs. Saliency maps: imperfect on purpose (low resolution, blur, missed parts, false
positives on distractors and clutter).

VOCdevkit/VOC2012/JPEGImages/<id>.jpg              train_aug + val images ({counts["train_aug"]} + {counts["val"]})
VOCdevkit/VOC2012/Annotations/<id>.xml             VOC XML, one object per instance (box of its visible part)
VOCdevkit/VOC2012/SegmentationClass/<id>.png       palette PNGs (VOC colours), train + val ids only
VOCdevkit/VOC2012/SegmentationClassAug/<id>.png    index PNGs (mode L, 255 = band), train_aug + val ids
VOCdevkit/VOC2012/saliency_map/<id>.png            off-the-shelf saliency maps (grey 0..255), train_aug + val ids
VOCdevkit/VOC2012/ImageSets/Segmentation/train.txt      {counts["train"]} ids (a subset of train_aug)
VOCdevkit/VOC2012/ImageSets/Segmentation/val.txt        {counts["val"]} ids (disjoint from train_aug)
VOCdevkit/VOC2012/ImageSets/Segmentation/train_aug.txt  {counts["train_aug"]} lines, DeepLab style:
                                                   "/JPEGImages/<id>.jpg /SegmentationClassAug/<id>.png"
DUTS-TR/DUTS-TR-{{Image,Mask}}/                      {counts["duts_train"]} saliency training pairs (masks 0/255)
DUTS-TE/DUTS-TE-{{Image,Mask}}/                      {counts["duts_test"]} saliency test pairs
ECSSD/{{images,ground_truth_mask}}/                  {counts["ecssd"]} saliency test pairs (0001, 0002, ...)
class_names.txt                                    one class name per line, index order
.wsss_demo                                         marker + manifest: lets the generator rewrite this folder

Saliency sets hold one or two objects of the same families; their masks are the class objects (a rare
distractor there is background).
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

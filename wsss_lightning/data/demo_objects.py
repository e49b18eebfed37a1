"""Procedural object families of the synthetic demo (``wsss data demo``): silhouettes, textures, palettes.

Each of the 20 VOC classes is one *family*: a silhouette (drawn with random parameters, aspect, rotation and a
random low-frequency radial deformation of its outline) filled with a texture (random scale and phase) in two
colours from two of eight shared palettes. Silhouettes and textures are shared between classes on purpose
(``bus``/``car`` share the rounded box and differ by texture, ``aeroplane``/``boat`` share stripes and differ by
silhouette, ...), and every palette serves several classes, so neither colour nor outline nor texture alone
names the class: a classifier has to combine them and a CAM has to find the telling parts.

Coordinates: an object lives in its own rotated frame; ``x, y`` are pixel offsets from its centre along its
axes and ``u = x / (r sqrt(a)), v = y sqrt(a) / r`` the normalised coordinates (radius ``r`` px, aspect ``a``)
in which every silhouette spans about [-1, 1]. Everything is vectorised numpy; the only Python loops run over
polygon sides, parts or kernel taps, never over pixels.
"""

from __future__ import annotations

import colorsys
import math
from dataclasses import dataclass, field
from types import MappingProxyType

import numpy as np

from wsss_lightning.data.palette import VOC_CLASSES


@dataclass(frozen=True)
class ClassDesign:
    """How one class looks: silhouette family, texture family and the two palettes its colours come from."""

    name: str
    silhouette: str
    texture: str
    palettes: tuple[str, str]


# Shared silhouettes: bus/car, diningtable/train, cow/dog, bicycle/motorbike, bird/horse, chair/sofa,
# bottle/person. Shared textures: aeroplane/boat, bus/train, car/pottedplant, bicycle/chair, bird/diningtable,
# cat/cow, dog/horse, motorbike/tvmonitor, bottle/sofa.
CLASS_DESIGNS: tuple[ClassDesign, ...] = (
    ClassDesign("aeroplane", "cross", "stripes", ("neutral", "cool")),
    ClassDesign("bicycle", "wheels", "hatching", ("vivid", "dark")),
    ClassDesign("bird", "crescent", "waves", ("earth", "warm")),
    ClassDesign("boat", "arrow", "stripes", ("cool", "vivid")),
    ClassDesign("bottle", "capsule", "gradient", ("green", "cool")),
    ClassDesign("bus", "box", "checker", ("warm", "vivid")),
    ClassDesign("car", "box", "dots", ("vivid", "neutral")),
    ClassDesign("cat", "heart", "spots", ("earth", "neutral")),
    ClassDesign("chair", "lshape", "hatching", ("earth", "dark")),
    ClassDesign("cow", "animal", "spots", ("neutral", "dark")),
    ClassDesign("diningtable", "ngon", "waves", ("earth", "pastel")),
    ClassDesign("dog", "animal", "marble", ("earth", "warm")),
    ClassDesign("horse", "crescent", "marble", ("dark", "earth")),
    ClassDesign("motorbike", "wheels", "zigzag", ("vivid", "warm")),
    ClassDesign("person", "capsule", "scales", ("warm", "pastel")),
    ClassDesign("pottedplant", "star", "dots", ("green", "earth")),
    ClassDesign("sheep", "blob", "rings", ("pastel", "neutral")),
    ClassDesign("sofa", "lshape", "gradient", ("purple", "cool")),
    ClassDesign("train", "ngon", "checker", ("cool", "purple")),
    ClassDesign("tvmonitor", "ring", "zigzag", ("dark", "purple")),
)
assert tuple(d.name for d in CLASS_DESIGNS) == VOC_CLASSES[1:], "designs must follow palette.VOC_CLASSES"

# Palettes as (hue ranges, saturation range, value range); hue ranges may wrap around 1. Every palette serves
# 2-5 classes and "vivid", "neutral", "pastel" and "dark" span all hues, so colour never names the class.
PALETTES = MappingProxyType(
    {
        "warm": (((0.94, 1.12),), (0.5, 0.95), (0.55, 0.95)),
        "earth": (((0.03, 0.16),), (0.3, 0.75), (0.3, 0.75)),
        "cool": (((0.48, 0.7),), (0.35, 0.9), (0.45, 0.95)),
        "green": (((0.2, 0.45),), (0.35, 0.9), (0.35, 0.85)),
        "purple": (((0.7, 0.93),), (0.3, 0.85), (0.35, 0.9)),
        "neutral": (((0.0, 1.0),), (0.0, 0.18), (0.3, 0.95)),
        "vivid": (((0.0, 1.0),), (0.7, 1.0), (0.7, 1.0)),
        "pastel": (((0.0, 1.0),), (0.12, 0.4), (0.8, 1.0)),
        "dark": (((0.0, 1.0),), (0.2, 0.8), (0.18, 0.42)),
    }
)

SHAPE_EXTENT = 1.35  # |u|, |v| of every (deformed) silhouette stay below this: the evaluation window


# ------------------------------------------------------------------------------------------------ fields


def smooth_field(rng: np.random.Generator, height: int, width: int, cells: int, channels: int) -> np.ndarray:
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


def value_noise(x: np.ndarray, y: np.ndarray, cell: float, rng: np.random.Generator) -> np.ndarray:
    """Smooth noise in [-1, 1] at arbitrary points ``x, y`` (same shape, pixels) with feature size ``cell``."""
    gx, gy = (x - x.min()) / cell, (y - y.min()) / cell
    grid = rng.uniform(-1.0, 1.0, size=(int(gy.max()) + 2, int(gx.max()) + 2)).astype(np.float32)
    x0, y0 = gx.astype(np.int64), gy.astype(np.int64)
    fx, fy = gx - x0, gy - y0
    fx, fy = fx * fx * (3 - 2 * fx), fy * fy * (3 - 2 * fy)
    top = grid[y0, x0] * (1 - fx) + grid[y0, x0 + 1] * fx
    bottom = grid[y0 + 1, x0] * (1 - fx) + grid[y0 + 1, x0 + 1] * fx
    return (top * (1 - fy) + bottom * fy).astype(np.float32)


def gaussian_blur(values: np.ndarray, sigma: float) -> np.ndarray:
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


def dilate(mask: np.ndarray) -> np.ndarray:
    """3x3 binary dilation of ``bool (H, W)``."""
    height, width = mask.shape
    padded = np.pad(mask, 1, mode="constant", constant_values=False)
    out = np.zeros_like(mask)
    for dy in range(3):
        for dx in range(3):
            out |= padded[dy : dy + height, dx : dx + width]
    return out


def inner_edge(mask: np.ndarray) -> np.ndarray:
    """Pixels of ``mask`` with a 4-neighbour outside it; the image border is not an edge (as in VOC)."""
    p = np.pad(mask, 1, mode="edge")
    interior = p[1:-1, 1:-1] & p[:-2, 1:-1] & p[2:, 1:-1] & p[1:-1, :-2] & p[1:-1, 2:]
    return mask & ~interior


def _segment_distance(u: np.ndarray, v: np.ndarray, a: tuple[float, float], b: tuple[float, float]) -> np.ndarray:
    """Distance of the points ``(u, v)`` to the segment ``a``-``b``."""
    du, dv = b[0] - a[0], b[1] - a[1]
    t = np.clip(((u - a[0]) * du + (v - a[1]) * dv) / (du * du + dv * dv), 0.0, 1.0)
    return np.hypot(u - a[0] - t * du, v - a[1] - t * dv)


# ------------------------------------------------------------------------------------------------ silhouettes


@dataclass(frozen=True)
class Shape:
    """A silhouette with drawn parameters and an outline deformation ``sum_k amp_k cos(k phi + phase_k)``."""

    kind: str
    params: dict[str, float] = field(default_factory=dict)
    harmonics: tuple[tuple[int, float, float], ...] = ()  # (k, amplitude, phase)


def _draw_params(kind: str, rng: np.random.Generator) -> dict[str, float]:
    u = rng.uniform
    if kind == "box":  # rounded box (superellipse), wider than tall before the random aspect
        return {"exponent": u(2.6, 6.0), "height": u(0.5, 0.8)}
    if kind == "ngon":  # triangle, pentagon or hexagon
        return {"sides": float(rng.choice([3, 5, 6])), "phase": u(0, 2 * math.pi)}
    if kind == "star":
        return {"points": float(rng.integers(4, 8)), "inner": u(0.38, 0.58), "phase": u(0, 1)}
    if kind == "ring":  # a round or squarish frame
        return {"exponent": u(2.0, 4.5), "inner": u(0.5, 0.66)}
    if kind == "crescent":
        return {"offset": u(0.35, 0.6), "cut": u(0.75, 0.95), "tilt": u(-0.5, 0.5)}
    if kind == "cross":  # fuselage + wings + tail
        return {"body": u(0.14, 0.22), "wing": u(0.16, 0.26), "span": u(0.7, 1.0), "at": u(-0.05, 0.25)}
    if kind == "heart":
        return {"squash": u(0.85, 1.1)}
    if kind == "arrow":
        return {"shaft": u(0.18, 0.3), "neck": u(0.05, 0.35), "head": u(0.55, 0.85)}
    if kind == "lshape":
        return {"arm": u(0.45, 0.7), "foot": u(0.45, 0.7), "flip": float(rng.integers(2))}
    if kind == "capsule":
        return {"half": u(0.3, 0.6)}
    if kind == "blob":
        return {f"b{k}": u(0.0, 0.3 / k) for k in range(2, 6)} | {f"p{k}": u(0, 2 * math.pi) for k in range(2, 6)}
    if kind == "animal":  # body + head + 2-4 legs
        return {
            "legs": float(rng.integers(2, 5)),
            "leg": u(0.08, 0.13),
            "head": u(0.22, 0.3),
            "side": float(rng.choice([-1.0, 1.0])),
            "body": u(0.32, 0.42),
        }
    if kind == "wheels":  # two wheels + a frame
        return {"wheel": u(0.34, 0.44), "hole": u(0.45, 0.62), "bar": u(0.07, 0.11), "seat": u(-0.25, 0.0)}
    raise ValueError(f"unknown silhouette {kind!r}")


def draw_shape(kind: str, rng: np.random.Generator, deformation: float = 0.1) -> Shape:
    """A silhouette of family ``kind`` with random parameters and a random outline deformation."""
    params = _draw_params(kind, rng)
    harmonics = tuple(
        (k, float(rng.uniform(0.0, deformation / (k - 1))), float(rng.uniform(0, 2 * math.pi))) for k in range(2, 6)
    )
    return Shape(kind, params, harmonics)


def _inside(kind: str, p: dict[str, float], u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Inside-test of an undeformed silhouette at normalised points ``(u, v)`` -> bool, same shape."""
    rho = np.hypot(u, v)
    if kind == "box":
        e = p["exponent"]
        return np.abs(u) ** e + np.abs(v / p["height"]) ** e <= 1.0
    if kind == "ngon":
        n = int(p["sides"])
        inside = np.ones(u.shape, dtype=bool)
        for k in range(n):
            angle = p["phase"] + 2 * math.pi * k / n
            inside &= u * math.cos(angle) + v * math.sin(angle) <= math.cos(math.pi / n)
        return inside
    if kind == "star":
        phase = np.mod(np.arctan2(v, u) * p["points"] / (2 * math.pi) + p["phase"], 1.0)
        return rho <= p["inner"] + (1.0 - p["inner"]) * (1.0 - np.abs(2.0 * phase - 1.0))
    if kind == "ring":
        e = p["exponent"]
        norm = (np.abs(u) ** e + np.abs(v) ** e) ** (1.0 / e)
        return (norm <= 1.0) & (norm >= p["inner"])
    if kind == "crescent":
        du, dv = p["offset"] * math.cos(p["tilt"]), p["offset"] * math.sin(p["tilt"])
        return (rho <= 1.0) & (np.hypot(u - du, v - dv) > p["cut"])
    if kind == "cross":
        body = (np.abs(u) <= 1.0) & (np.abs(v) <= p["body"])
        wings = (np.abs(u - p["at"]) <= p["wing"]) & (np.abs(v) <= p["span"])
        tail = (np.abs(u + 0.85) <= 0.12) & (np.abs(v) <= 0.4)
        return body | wings | tail
    if kind == "heart":
        x, y = 1.15 * u, -1.15 * v * p["squash"] + 0.15
        return (x * x + y * y - 1.0) ** 3 - x * x * y**3 <= 0.0
    if kind == "arrow":
        shaft = (u >= -1.0) & (u <= p["neck"]) & (np.abs(v) <= p["shaft"])
        head = (u >= p["neck"]) & (u <= 1.0) & (np.abs(v) <= p["head"] * (1.0 - u) / (1.0 - p["neck"]))
        return shaft | head
    if kind == "lshape":
        w = -u if p["flip"] else u
        upright = (w >= -0.9) & (w <= -0.9 + p["arm"]) & (np.abs(v) <= 0.9)
        foot = (np.abs(w) <= 0.9) & (v >= 0.9 - p["foot"]) & (v <= 0.9)
        return upright | foot
    if kind == "capsule":
        return np.hypot(np.maximum(np.abs(u) - p["half"], 0.0), v) <= 1.0 - p["half"]
    if kind == "blob":
        angle = np.arctan2(v, u)
        radius = 0.85 * (1.0 + sum(p[f"b{k}"] * np.cos(k * angle + p[f"p{k}"]) for k in range(2, 6)))
        return rho <= radius
    if kind == "animal":
        side, head = p["side"], p["head"]
        inside = (u / 0.72) ** 2 + ((v + 0.05) / p["body"]) ** 2 <= 1.0
        inside |= np.hypot(u - side * 0.8, v + 0.42) <= head
        inside |= _segment_distance(u, v, (side * 0.5, -0.1), (side * 0.8, -0.42)) <= 0.12
        legs = int(p["legs"])
        for k in range(legs):
            at = -0.5 + (k + 0.5) / legs if legs > 2 else (-0.45 if k == 0 else 0.45)
            inside |= (np.abs(u - at) <= p["leg"]) & (v >= 0.0) & (v <= 0.85)
        return inside
    if kind == "wheels":
        wheel, hole = p["wheel"], p["wheel"] * p["hole"]
        rear, front, seat, handle = (-0.58, 0.3), (0.58, 0.3), (-0.15, p["seat"] - 0.1), (0.4, p["seat"] - 0.15)
        inside = np.zeros(u.shape, dtype=bool)
        for cx, cy in (rear, front):
            d = np.hypot(u - cx, v - cy)
            inside |= (d <= wheel) & (d >= hole)
        for a, b in ((rear, seat), (seat, handle), (handle, front), (seat, (0.05, 0.3)), ((0.05, 0.3), rear)):
            inside |= _segment_distance(u, v, a, b) <= p["bar"]
        return inside
    raise ValueError(f"unknown silhouette {kind!r}")


def shape_inside(shape: Shape, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Inside-test of a deformed silhouette: the outline radius is scaled by ``1 + sum_k amp cos(k phi + ph)``."""
    if shape.harmonics:
        angle = np.arctan2(v, u)
        scale = 1.0 + sum(amp * np.cos(k * angle + phase) for k, amp, phase in shape.harmonics)
        u, v = u / scale, v / scale
    return _inside(shape.kind, shape.params, u, v)


_AREA_GRID = np.linspace(-SHAPE_EXTENT, SHAPE_EXTENT, 81, dtype=np.float32)


def unit_area(shape: Shape) -> float:
    """Area of ``shape`` at radius 1 and aspect 1 (an 81 x 81 grid count), to size objects by pixel area."""
    u, v = np.meshgrid(_AREA_GRID, _AREA_GRID)
    return float(shape_inside(shape, u, v).mean()) * (2 * SHAPE_EXTENT) ** 2


# ------------------------------------------------------------------------------------------------ textures


def _hex_norm(x: np.ndarray, y: np.ndarray, apothem: float) -> np.ndarray:
    """Hexagonal distance in [0, 1] of each point to the centre of its cell (pointy-top hexagons with the given
    apothem): 0 at the centre, 1 on the cell wall. Cube-coordinate rounding, vectorised."""
    size = apothem * 2 / math.sqrt(3)  # circumradius
    q = (math.sqrt(3) / 3 * x - y / 3) / size
    r = (2 / 3 * y) / size
    cube = np.stack([q, -q - r, r])
    rounded = np.round(cube)
    worst = np.argmax(np.abs(rounded - cube), axis=0)  # fix the coordinate rounded furthest: sum stays 0
    fixed = -(rounded.sum(axis=0) - np.take_along_axis(rounded, worst[None], axis=0)[0])
    np.put_along_axis(rounded, worst[None], fixed[None], axis=0)
    rq, rr = rounded[0], rounded[2]
    dx = np.abs(x - size * math.sqrt(3) * (rq + rr / 2))
    dy = np.abs(y - size * 1.5 * rr)
    return np.maximum(dx, dx / 2 + dy * math.sqrt(3) / 2) / apothem


def texture_weight(
    kind: str, x: np.ndarray, y: np.ndarray, period: float, radius: float, rng: np.random.Generator
) -> np.ndarray:
    """Mixing weight in [0, 1] between an object's two colours at its pixels.

    ``x, y``: float32 pixel offsets from the object centre along its axes (1-D, the object's pixels);
    ``period``: the texture's repeat in pixels (kept >= 8 by the caller so JPEG keeps it); ``radius``: the
    object's radius in pixels (for textures tied to the object, as the gradient).
    """
    phase = rng.uniform()

    def band(t: np.ndarray, duty: float = 0.5) -> np.ndarray:
        return (np.mod(t + phase, 1.0) < duty).astype(np.float32)

    if kind == "stripes":  # broad straight bands
        return band(x / period, rng.uniform(0.4, 0.6))
    if kind == "checker":
        cell = period / 2
        return np.mod(np.floor(x / cell + phase) + np.floor(y / cell + rng.uniform()), 2.0).astype(np.float32)
    if kind == "dots":  # round dots on a square grid
        gx = np.mod(x / period + phase, 1.0) - 0.5
        gy = np.mod(y / period + rng.uniform(), 1.0) - 0.5
        return (gx * gx + gy * gy < rng.uniform(0.27, 0.34) ** 2).astype(np.float32)
    if kind == "hatching":  # thin crossing diagonal lines
        d = period / math.sqrt(2)
        return np.maximum(band((x + y) / (2 * d), 0.22), band((x - y) / (2 * d), 0.22))
    if kind == "waves":  # sinusoidal bands
        return band((y + 0.35 * period * np.sin(2 * math.pi * x / (2.2 * period))) / period)
    if kind == "zigzag":  # chevrons
        tri = np.abs(2.0 * np.mod(x / (1.3 * period), 1.0) - 1.0)
        return band((y + 0.8 * period * tri) / period)
    if kind == "rings":  # concentric circles around a point near the centre
        ox, oy = rng.uniform(-0.3, 0.3, size=2) * radius
        return band(np.hypot(x - ox, y - oy) / period)
    if kind == "marble":  # veins: a sine of a turbulent coordinate
        turbulence = value_noise(x, y, 1.6 * period, rng) + 0.5 * value_noise(x, y, 0.8 * period, rng)
        return (0.5 + 0.5 * np.sin(2 * math.pi * (x / (1.5 * period) + 1.2 * turbulence + phase))).astype(np.float32)
    if kind == "gradient":  # smooth ramp across the object, with a soft highlight
        angle = rng.uniform(0, 2 * math.pi)
        ramp = 0.5 + 0.6 * (x * math.cos(angle) + y * math.sin(angle)) / radius
        return np.clip(ramp, 0.0, 1.0).astype(np.float32)
    if kind == "scales":  # honeycomb: hexagonal cells (centres ``period`` apart) with thick walls
        return (_hex_norm(x + phase * period, y, period / 2) > rng.uniform(0.62, 0.72)).astype(np.float32)
    if kind == "spots":  # irregular patches (a thresholded noise)
        noise = value_noise(x, y, 1.1 * period, rng)
        return (noise > rng.uniform(0.1, 0.3)).astype(np.float32)
    raise ValueError(f"unknown texture {kind!r}")


# ------------------------------------------------------------------------------------------------ colours


def hsv(hue: float, saturation: float, value: float) -> np.ndarray:
    """RGB ``float32 (3,)`` in [0, 1] of an HSV colour (hue taken modulo 1)."""
    return np.asarray(colorsys.hsv_to_rgb(hue % 1.0, saturation, value), dtype=np.float32)


def palette_colour(name: str, rng: np.random.Generator) -> tuple[float, float, float]:
    """(hue, saturation, value) drawn from a named palette."""
    hues, saturation, value = PALETTES[name]
    low, high = hues[int(rng.integers(len(hues)))]
    return rng.uniform(low, high) % 1.0, rng.uniform(*saturation), rng.uniform(*value)


def object_colours(design: ClassDesign, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Main and secondary colour (RGB ``float32 (3,)``) of one object; the two differ clearly in value."""
    hue, saturation, value = palette_colour(design.palettes[int(rng.integers(2))], rng)
    main = hsv(hue, saturation, value)
    kind = int(rng.integers(3))
    if kind == 0 or (kind == 2 and value < 0.45):  # a darker or lighter shade of the same hue
        second = main * rng.uniform(0.2, 0.45) if value >= 0.45 else main + (1.0 - main) * rng.uniform(0.5, 0.75)
    elif kind == 1:  # a lighter tint
        second = main + (1.0 - main) * rng.uniform(0.5, 0.8)
    else:  # another hue at a clearly lower value
        second = hsv(hue + rng.uniform(0.3, 0.7), rng.uniform(0.3, 0.9), value * rng.uniform(0.2, 0.45))
    return main, second.astype(np.float32)


# ------------------------------------------------------------------------------------------------ distractors

DISTRACTOR_KINDS = ("blob", "bar", "ring", "disc")


def distractor_inside(kind: str, u: np.ndarray, v: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Salient background things that are none of the classes: flat shapes with sharp, smooth outlines."""
    rho = np.hypot(u, v)
    if kind == "blob":  # a smooth ellipse-like blob
        angle = np.arctan2(v, u)
        return rho <= 0.9 * (1.0 + rng.uniform(0, 0.15) * np.cos(2 * angle + rng.uniform(0, 6.3)))
    if kind == "bar":  # a long thin bar
        return (np.abs(u) <= 1.0) & (np.abs(v) <= rng.uniform(0.1, 0.2))
    if kind == "ring":  # a thin ring (the tvmonitor frame is thicker and textured)
        inner = rng.uniform(0.7, 0.82)
        return (rho <= 1.0) & (rho >= inner)
    if kind == "disc":
        return rho <= 0.85
    raise ValueError(f"unknown distractor {kind!r}")


def distractor_colour(rng: np.random.Generator) -> np.ndarray:
    """A flat, saturated (or near-black / near-white) colour: salient, but unlike any textured class object."""
    roll = rng.random()
    if roll < 0.12:
        return np.full(3, rng.uniform(0.02, 0.1), dtype=np.float32)
    if roll < 0.24:
        return np.full(3, rng.uniform(0.92, 1.0), dtype=np.float32)
    return hsv(rng.uniform(), rng.uniform(0.8, 1.0), rng.uniform(0.8, 1.0))

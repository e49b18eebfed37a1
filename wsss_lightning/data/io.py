"""Reading and writing images, label maps and saliency maps, with clear errors and atomic writes.

Every reader returns numpy arrays in one canonical form, whatever the file holds:

* images: ``uint8`` RGB, shape ``(H, W, 3)``; EXIF orientation applied; grey, palette, RGBA, CMYK and
  16-bit files converted (documented conversions, see :func:`read_image`);
* label maps: ``uint8`` class indices, shape ``(H, W)``; palette PNGs are read as indices (never as
  colours), 255 = ignore;
* saliency maps: ``uint8`` grey levels 0..255, shape ``(H, W)`` (divide by 255 for [0, 1]).

Writers encode in memory and publish with ``os.replace`` so a crash never leaves half a file behind.
"""

from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from wsss_lightning.data.palette import voc_palette

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


class DatasetError(RuntimeError):
    """A problem with a dataset file or layout; the message names the file and the fix."""


def _open(path: Path) -> Image.Image:
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path} does not exist")
    try:
        image = Image.open(path)
        image.load()  # decode now: truncated files fail here, not deep inside a transform
    except Image.DecompressionBombError as error:  # a header claiming billions of pixels: refuse, do not allocate
        raise DatasetError(
            f"{path} claims {error}; it is damaged or not a photograph: replace it (or raise "
            "PIL.Image.MAX_IMAGE_PIXELS if the huge image is intended)"
        ) from error
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise DatasetError(
            f"{path} cannot be read as an image ({error}); the file is truncated or not an image: "
            "re-extract or re-download it"
        ) from error
    return image


def _to_uint8(array: np.ndarray) -> np.ndarray:
    """16-bit / 32-bit integer and float images to uint8 by their nominal range."""
    if array.dtype == np.uint8:
        return array
    if array.dtype == np.bool_:
        return array.astype(np.uint8) * 255
    if array.dtype == np.uint16:  # 16-bit files (I;16): nominal range 0..65535, however dark the content
        return np.clip(np.round(array.astype(np.float64) * 255.0 / 65535.0), 0, 255).astype(np.uint8)
    if np.issubdtype(array.dtype, np.integer):
        # 32-bit "I" images carry no nominal range: 8-bit content stays, larger values are taken as 16-bit
        maximum = 65535 if array.max(initial=0) > 255 else 255
        return np.clip(np.round(array.astype(np.float64) * 255.0 / maximum), 0, 255).astype(np.uint8)
    finite = np.nan_to_num(array.astype(np.float64))
    scale = 255.0 if finite.max(initial=0.0) <= 1.0 else 1.0
    return np.clip(np.round(finite * scale), 0, 255).astype(np.uint8)


def read_image(path: str | Path) -> np.ndarray:
    """Read an RGB image as ``uint8 (H, W, 3)``.

    Conversions: EXIF orientation is applied (the pixels are rotated as a viewer shows them); grey (L),
    palette (P), CMYK and 16-bit (I;16 / I) files become RGB; RGBA / LA are composited on black
    (alpha dropped), as VOC-trained models expect opaque photographs.
    """
    image = _open(Path(path))
    image = ImageOps.exif_transpose(image)
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        grey = _to_uint8(np.asarray(image))
        return np.repeat(grey[:, :, None], 3, axis=2)
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        image = image.convert("RGBA")
        rgba = np.asarray(image).astype(np.float32)
        rgb = rgba[:, :, :3] * (rgba[:, :, 3:4] / 255.0)
        return np.round(rgb).astype(np.uint8)
    if image.mode != "RGB":
        image = image.convert("RGB")
    return np.asarray(image, dtype=np.uint8).copy()


def read_label(path: str | Path) -> np.ndarray:
    """Read a class-index label map as ``uint8 (H, W)``.

    Palette PNGs (VOC ``SegmentationClass``) and single-channel PNGs (``SegmentationClassAug``, COCO
    WSSS masks, our pseudo-labels) are both read as indices. An RGB file is rejected: it holds colours,
    not class indices.
    """
    path = Path(path)
    image = _open(path)
    if image.mode in ("P", "L"):
        return np.asarray(image, dtype=np.uint8).copy()
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        array = np.asarray(image)
        if array.max(initial=0) > 255:
            raise DatasetError(f"{path} holds label values above 255; save class indices as an 8-bit PNG")
        return array.astype(np.uint8)
    if image.mode in ("RGB", "RGBA"):
        raise DatasetError(
            f"{path} is an {image.mode} colour image, not a class-index map; save it as a palette (P) or "
            "grey (L) PNG whose pixel values are class indices (VOC SegmentationClass/SegmentationClassAug do)"
        )
    return np.asarray(image.convert("L"), dtype=np.uint8).copy()


def existing_label_state(path: str | Path, size: tuple[int, int]) -> bool | None:
    """Whether a converter may keep ``path``: ``None`` no file; ``True`` a readable label PNG of ``size`` ``(H, W)``;
    ``False`` damaged or of another size (to be rewritten)."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        return read_label(path).shape == tuple(size)
    except DatasetError:
        return False


def read_saliency(path: str | Path) -> np.ndarray:
    """Read a saliency map (prediction or ground truth) as grey levels ``uint8 (H, W)``.

    A palette PNG whose palette is not grey (e.g. the one-entry black palette that saving index arrays in
    mode "P" produces) is read by its indices, never through the palette: that bug turns every map black
    (method_notes §7.2). RGB maps are averaged to grey.
    """
    image = _open(Path(path))
    if image.mode == "P":
        indices = np.asarray(image, dtype=np.uint8)
        palette = np.asarray(image.getpalette() or [], dtype=np.uint8).reshape(-1, 3)
        used = np.unique(indices)
        if len(palette) > used.max(initial=0):
            colours = palette[used]
            grey = np.all(colours[:, 0] == colours[:, 1]) and np.all(colours[:, 1] == colours[:, 2])
            # A palette that sends distinct indices to one level (a one-entry black palette padded with black
            # to 256 entries) holds no information: read the indices, as for a short palette.
            if grey and np.unique(colours[:, 0]).size == used.size:
                return colours[:, 0][np.searchsorted(used, indices)].astype(np.uint8)
        return indices.copy()
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F", "1"):
        return _to_uint8(np.asarray(image))
    if image.mode in ("RGB", "RGBA", "CMYK", "YCbCr", "LA"):
        image = image.convert("RGB")
        return np.round(np.asarray(image, dtype=np.float32).mean(axis=2)).astype(np.uint8)
    return np.asarray(image.convert("L"), dtype=np.uint8).copy()


def image_size(path: str | Path) -> tuple[int, int]:
    """``(H, W)`` of an image file from its header (EXIF orientation applied), without decoding pixels."""
    path = Path(path)
    try:
        with Image.open(path) as image:
            width, height = image.size
            orientation = image.getexif().get(0x0112, 1)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise DatasetError(f"{path} cannot be read as an image ({error})") from error
    if orientation in (5, 6, 7, 8):  # rotated by 90 or 270 degrees
        width, height = height, width
    return height, width


# ------------------------------------------------------------------------------------------------ writes


def _read_umask() -> int:
    """The process umask (reading it means setting it; restored at once). Read once at import: ``os.umask`` is
    process-wide, and flipping it while writer threads create files would race."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _read_umask()


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically: a temporary file in the same folder, fsync, then rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
            # mkstemp creates 0600; give the file the mode a plain open() would (0666 minus the umask), so
            # labels and predictions on a shared cluster stay readable by the group as usual.
            os.fchmod(stream.fileno(), 0o666 & ~_UMASK)
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def encode_png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def palette_png_bytes(label: np.ndarray) -> bytes:
    """Encode class indices ``uint8 (H, W)`` (255 = ignore) as a VOC-palette PNG."""
    label = np.asarray(label)
    if label.ndim != 2:
        raise ValueError(f"label map must be 2-D, got shape {label.shape}")
    image = Image.fromarray(label.astype(np.uint8), mode="P")
    image.putpalette(voc_palette().reshape(-1).tolist())
    return encode_png(image)


def grey_png_bytes(values: np.ndarray) -> bytes:
    """Encode a grey map as an 8-bit "L" PNG; float input in [0, 1] is scaled by 255 and rounded."""
    values = np.asarray(values)
    if values.ndim != 2:
        raise ValueError(f"grey map must be 2-D, got shape {values.shape}")
    if values.dtype != np.uint8:
        values = np.clip(np.round(values.astype(np.float64) * 255.0), 0, 255).astype(np.uint8)
    return encode_png(Image.fromarray(values, mode="L"))


def write_palette_png(path: str | Path, label: np.ndarray) -> None:
    """Atomically write class indices as a palette PNG (what VOC tools and viewers expect)."""
    atomic_write_bytes(path, palette_png_bytes(label))


def write_grey_png(path: str | Path, values: np.ndarray) -> None:
    """Atomically write a saliency / probability map as an 8-bit grey PNG (mode "L", never "P")."""
    atomic_write_bytes(path, grey_png_bytes(values))


def list_images(folder: str | Path, extensions: tuple[str, ...] = IMAGE_EXTENSIONS) -> dict[str, Path]:
    """Map file stem to path for every image file directly inside ``folder`` (sorted by stem).

    Every caller matches files across folders by stem, so two files of one stem (``a.jpg`` and ``a.png``)
    would make one of them vanish silently (an image scored against itself, a prediction for the wrong
    file): that raises DatasetError naming both. A caller whose folder holds two kinds of file on purpose
    (images next to their masks) lists each kind with ``extensions`` selecting it. Hidden files are skipped:
    archives made on macOS carry an AppleDouble ``._0001.jpg`` of resource data beside every ``0001.jpg``.
    """
    folder = Path(folder)
    found: dict[str, Path] = {}
    for path in folder.iterdir():
        if path.name.startswith(".") or path.suffix.lower() not in extensions or not path.is_file():
            continue
        kept = found.setdefault(path.stem, path)
        if kept is not path:
            raise _duplicate_stem(folder, kept, path, extensions)
    return dict(sorted(found.items()))


def _duplicate_stem(folder: Path, first: Path, second: Path, extensions: tuple[str, ...]) -> DatasetError:
    """The error for two files of one stem in a folder listed by :func:`list_images`."""
    first, second = sorted((first, second))
    return DatasetError(
        f"{folder} holds both {first.name} and {second.name}: files are matched by name without extension, "
        f"so one of them would be ignored (looking for {', '.join(extensions)}); move or delete one of them "
        "(a saliency folder holding images next to their .png masks: give it as both image_dir and mask_dir)"
    )

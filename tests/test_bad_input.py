"""Malformed files fed to the readers and to the dataset: a DatasetError naming the file, or a documented conversion.

Property-based (hypothesis): random bytes, truncated PNG/JPEG, every PIL mode the readers meet (grey, palette,
RGBA, LA, CMYK, 16-bit, 32-bit, float, 1-bit), random sizes and random mask values. Whatever the input, the only
exception allowed out of ``read_image`` / ``read_label`` / ``read_saliency`` / ``SegmentationDataset.__getitem__``
is :class:`DatasetError` with the offending path in its message; a successful read returns the canonical form
(``uint8`` RGB ``(H, W, 3)``, ``uint8`` ``(H, W)``).
"""

from __future__ import annotations

import io
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from wsss_lightning.data.dataset import SegmentationDataset
from wsss_lightning.data.io import DatasetError, read_image, read_label, read_saliency
from wsss_lightning.data.splits import ListEntry

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
READERS = {"image": read_image, "label": read_label, "saliency": read_saliency}
MODES = ["1", "L", "P", "RGB", "RGBA", "LA", "CMYK", "I;16", "I", "F", "YCbCr"]


def _encode(array: np.ndarray, mode: str, fmt: str) -> bytes:
    """An image of ``mode`` from random ``uint8 (H, W, 4)`` data, encoded as ``fmt`` (PNG/JPEG/TIFF/BMP)."""
    h, w = array.shape[:2]
    if mode in ("RGB", "YCbCr"):
        image = Image.fromarray(array[:, :, :3], "RGB").convert(mode)
    elif mode == "RGBA":
        image = Image.fromarray(array, "RGBA")
    elif mode == "CMYK":
        image = Image.fromarray(array, "RGBA").convert("CMYK")
    elif mode == "LA":
        image = Image.fromarray(array[:, :, :2].copy(), "LA")
    elif mode == "I;16":
        image = Image.fromarray(array[:, :, 0].astype(np.uint16) * 257)  # mode I;16
    elif mode == "I":
        image = Image.fromarray(array[:, :, 0].astype(np.int32) * 300)  # mode I
    elif mode == "F":
        image = Image.fromarray(array[:, :, 0].astype(np.float32) / 255.0)  # mode F
    else:
        image = Image.fromarray(array[:, :, 0], "L").convert(mode)
    buffer = io.BytesIO()
    try:
        image.save(buffer, format=fmt)
    except (OSError, KeyError, ValueError):  # this format cannot hold this mode: PNG always can hold a fallback
        buffer = io.BytesIO()
        image.convert("RGB" if mode in ("CMYK", "YCbCr") else "L").save(buffer, format="PNG")
    return buffer.getvalue()


def _check_read(kind: str, path: Path) -> np.ndarray | None:
    """Read ``path``; a DatasetError must name the path, any other exception fails the test."""
    try:
        array = READERS[kind](path)
    except DatasetError as error:
        assert str(path) in str(error), f"the error does not name the file: {error}"
        return None
    assert array.dtype == np.uint8
    assert array.ndim == (3 if kind == "image" else 2)
    if kind == "image":
        assert array.shape[2] == 3
    return array


images = st.integers(1, 12).flatmap(
    lambda h: st.integers(1, 12).flatmap(
        lambda w: st.binary(min_size=h * w * 4, max_size=h * w * 4).map(
            lambda raw: np.frombuffer(raw, dtype=np.uint8).reshape(h, w, 4)
        )
    )
)


@SETTINGS
@given(data=st.binary(max_size=300), kind=st.sampled_from(sorted(READERS)), suffix=st.sampled_from([".png", ".jpg"]))
def test_random_bytes_give_a_dataset_error_naming_the_file(data: bytes, kind: str, suffix: str) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"x{suffix}"
        path.write_bytes(data)
        _check_read(kind, path)


@SETTINGS
@given(array=images, mode=st.sampled_from(MODES), fmt=st.sampled_from(["PNG", "JPEG", "TIFF", "BMP"]),
       cut=st.floats(0.0, 1.0), kind=st.sampled_from(sorted(READERS)))  # fmt: skip
def test_any_mode_any_truncation_reads_canonically_or_fails_clearly(array, mode, fmt, cut, kind) -> None:
    encoded = _encode(array, mode, fmt)
    data = encoded if cut > 0.9 else encoded[: int(len(encoded) * cut)]
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "sample.img"
        path.write_bytes(data)
        result = _check_read(kind, path)
        if result is not None and data == encoded:
            assert result.shape[:2] == array.shape[:2], "a complete file keeps its size"


def test_documented_conversions() -> None:
    """Hand-computed values of the conversions read_image documents (16-bit, RGBA on black, grey)."""
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        Image.fromarray(np.array([[0, 65535, 257 * 10]], dtype=np.uint16)).save(folder / "deep.png")
        assert read_image(folder / "deep.png")[0, :, 0].tolist() == [0, 255, 10]
        rgba = np.array([[[200, 100, 50, 255], [200, 100, 50, 0], [200, 100, 50, 128]]], dtype=np.uint8)
        Image.fromarray(rgba, "RGBA").save(folder / "alpha.png")
        expected = [[200, 100, 50], [0, 0, 0], [round(200 * 128 / 255), round(100 * 128 / 255), round(50 * 128 / 255)]]
        assert read_image(folder / "alpha.png")[0].tolist() == expected
        Image.fromarray(np.array([[7, 9]], dtype=np.uint8), "L").save(folder / "grey.png")
        assert read_image(folder / "grey.png")[0].tolist() == [[7, 7, 7], [9, 9, 9]]
        Image.fromarray(np.zeros((2, 2, 3), np.uint8), "RGB").save(folder / "colour.png")
        with pytest.raises(DatasetError, match="colour.png.*not a class-index map"):
            read_label(folder / "colour.png")


def test_exif_rotation_is_applied() -> None:
    """An EXIF orientation 6 (rotate 90° clockwise to view) turns a 2x3 stored image into 3x2."""
    with tempfile.TemporaryDirectory() as folder:
        stored = np.zeros((2, 3, 3), np.uint8)
        stored[0, 0] = 255  # top-left pixel as stored
        image = Image.fromarray(stored, "RGB")
        exif = image.getexif()
        exif[0x0112] = 6
        path = Path(folder) / "rotated.jpg"
        image.save(path, exif=exif, quality=100)
        array = read_image(path)
        assert array.shape == (3, 2, 3)
        assert array[0, 1].mean() > 200 and array[0, 0].mean() < 50  # the stored top-left is now top-right


def _dataset(folder: Path, num_classes: int = 4) -> SegmentationDataset:
    entry = ListEntry("a", folder / "train.txt", 1)
    return SegmentationDataset(
        [entry], folder / "img", num_classes, seg_dir=folder / "seg", sal_dir=folder / "sal",
        seg_required=True, sal_required=True,
    )  # fmt: skip


@SETTINGS
@given(
    image=images,
    seg_hw=st.tuples(st.integers(1, 12), st.integers(1, 12)),
    sal_hw=st.tuples(st.integers(1, 12), st.integers(1, 12)),
    seg_values=st.lists(st.integers(0, 255), min_size=1, max_size=4),
    image_mode=st.sampled_from(MODES),
    broken=st.sampled_from(["none", "image", "seg", "sal", "missing_seg"]),
)
def test_dataset_getitem_never_crashes_inside_a_library(image, seg_hw, sal_hw, seg_values, image_mode, broken):
    """Random sizes, random mask values, any image mode, one broken or missing file: DatasetError or a sample."""
    num_classes = 4
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        for sub in ("img", "seg", "sal"):
            (folder / sub).mkdir()
        (folder / "img" / "a.png").write_bytes(_encode(image, image_mode, "PNG"))
        seg = np.resize(np.array(seg_values, np.uint8), seg_hw)
        Image.fromarray(seg, "L").save(folder / "seg" / "a.png")
        Image.fromarray(np.full(sal_hw, 128, np.uint8), "L").save(folder / "sal" / "a.png")
        if broken in ("image", "seg", "sal"):
            target = folder / {"image": "img", "seg": "seg", "sal": "sal"}[broken] / "a.png"
            target.write_bytes(target.read_bytes()[:20])
        if broken == "missing_seg":
            (folder / "seg" / "a.png").unlink()
        try:
            sample = _dataset(folder, num_classes)[0]
        except DatasetError as error:
            assert "a.png" in str(error) or "a.jpg" in str(error), error
            return
        h, w = image.shape[:2]
        assert broken == "none" and seg_hw == sal_hw == (h, w)
        assert set(np.unique(seg).tolist()) <= set(range(num_classes)) | {255}
        assert tuple(sample["image"].shape) == (3, h, w)
        assert sample["seg"].tolist() == seg.tolist()


def test_dataset_errors_name_file_and_fix(tmp_path: Path) -> None:
    for sub in ("img", "seg", "sal"):
        (tmp_path / sub).mkdir()
    Image.fromarray(np.zeros((4, 5, 3), np.uint8)).save(tmp_path / "img" / "a.png")
    Image.fromarray(np.full((4, 5), 9, np.uint8), "L").save(tmp_path / "seg" / "a.png")
    Image.fromarray(np.zeros((4, 5), np.uint8), "L").save(tmp_path / "sal" / "a.png")
    with pytest.raises(DatasetError, match=r"seg/a.png holds class values \[9\] outside 0..3.*train.txt line 1"):
        _dataset(tmp_path)[0]
    Image.fromarray(np.zeros((4, 5), np.uint8), "L").save(tmp_path / "seg" / "a.png")
    Image.fromarray(np.zeros((5, 4), np.uint8), "L").save(tmp_path / "sal" / "a.png")
    with pytest.raises(DatasetError, match=r"sal/a.png is 4x5 but .*img/a.png is 5x4; maps must have their image's"):
        _dataset(tmp_path)[0]
    (tmp_path / "img" / "a.png").unlink()
    with pytest.raises(DatasetError, match=r"img/a.jpg is missing \(listed in train.txt line 1\)"):
        _dataset(tmp_path)[0]


def test_decompression_bomb_header_is_refused_before_allocating(tmp_path: Path) -> None:
    """A 60000x60000 PNG header (a few dozen bytes) gives a DatasetError, not PIL's DecompressionBombError."""
    import struct
    import zlib

    from wsss_lightning.data.io import image_size

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", 60000, 60000, 8, 0, 0, 0, 0)
    path = tmp_path / "bomb.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b""))
    for reader in (read_image, read_label, read_saliency, image_size):
        with pytest.raises(DatasetError, match="bomb.png"):
            reader(path)

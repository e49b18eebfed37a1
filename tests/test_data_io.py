"""Readers and writers: canonical arrays from every file flavour, clear errors, atomic writes."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from wsss_lightning.data.io import (
    DatasetError,
    atomic_write_bytes,
    image_size,
    list_images,
    read_image,
    read_label,
    read_saliency,
    write_grey_png,
    write_palette_png,
)
from wsss_lightning.data.palette import voc_palette


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _palette_png(indices: np.ndarray, palette: np.ndarray) -> bytes:
    """An 8-bit palette PNG written byte by byte, so the palette is exactly ``palette`` (Pillow would shrink
    a one-entry palette to a 1-bit file and destroy the indices)."""
    height, width = indices.shape
    rows = b"".join(b"\x00" + indices[row].astype(np.uint8).tobytes() for row in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 3, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", header)
        + _chunk(b"PLTE", np.asarray(palette, np.uint8).reshape(-1).tobytes())
        + _chunk(b"IDAT", zlib.compress(rows))
        + _chunk(b"IEND", b"")
    )


# ------------------------------------------------------------------------------------------------ images


def test_exif_orientation_6_is_applied(tmp_path: Path) -> None:
    """Orientation 6 = rotate 90 degrees clockwise to display: the stored top row becomes the right column."""
    stored = np.zeros((4, 6, 3), np.uint8)
    stored[0, :] = 255
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(stored).save(tmp_path / "rotated.jpg", exif=exif, quality=100)
    image = read_image(tmp_path / "rotated.jpg")
    assert image.shape == (6, 4, 3) and image.dtype == np.uint8
    assert np.all(image[:, -1] > 200) and np.all(image[:, :-2] < 50)
    assert image_size(tmp_path / "rotated.jpg") == (6, 4)  # the header-only size agrees


def test_grey_and_palette_images_become_rgb(tmp_path: Path) -> None:
    grey = np.array([[0, 100], [200, 255]], np.uint8)
    Image.fromarray(grey, mode="L").save(tmp_path / "grey.png")
    np.testing.assert_array_equal(read_image(tmp_path / "grey.png"), np.repeat(grey[:, :, None], 3, axis=2))
    write_palette_png(tmp_path / "palette.png", np.array([[0, 1], [15, 255]], np.uint8))
    expected = voc_palette()[np.array([[0, 1], [15, 255]])]
    np.testing.assert_array_equal(read_image(tmp_path / "palette.png"), expected)


def test_rgba_is_composited_on_black(tmp_path: Path) -> None:
    rgba = np.array([[[200, 100, 50, 255], [200, 100, 50, 0], [200, 100, 50, 128]]], np.uint8)
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "rgba.png")
    image = read_image(tmp_path / "rgba.png")
    # 128/255 of (200, 100, 50) = (100.39, 50.2, 25.1) -> rounded
    np.testing.assert_array_equal(image, [[[200, 100, 50], [0, 0, 0], [100, 50, 25]]])


def test_cmyk_is_converted_to_rgb(tmp_path: Path) -> None:
    rgb = np.zeros((2, 2, 3), np.uint8)
    rgb[..., 0] = 255
    Image.fromarray(rgb).convert("CMYK").save(tmp_path / "cmyk.tif")
    assert Image.open(tmp_path / "cmyk.tif").mode == "CMYK"
    np.testing.assert_array_equal(read_image(tmp_path / "cmyk.tif"), rgb)


def test_16_bit_png_is_scaled_by_65535(tmp_path: Path) -> None:
    values = np.array([[0, 65535], [32768, 257 * 10]], np.uint16)
    Image.fromarray(values).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode == "I;16"
    image = read_image(tmp_path / "deep.png")
    assert image.shape == (2, 2, 3)
    np.testing.assert_array_equal(image[..., 0], [[0, 255], [128, 10]])
    np.testing.assert_array_equal(image[..., 0], image[..., 2])
    # a dark 16-bit image stays dark: its nominal range is 0..65535 whatever its maximum
    Image.fromarray(np.array([[0, 200, 255]], np.uint16)).save(tmp_path / "dark.png")
    np.testing.assert_array_equal(read_image(tmp_path / "dark.png")[..., 0], [[0, 1, 1]])


@pytest.mark.parametrize("suffix", [".jpg", ".png"])
def test_truncated_files_raise_a_dataset_error_naming_the_file(tmp_path: Path, suffix: str) -> None:
    rng = np.random.default_rng(0)
    path = tmp_path / f"broken{suffix}"
    Image.fromarray(rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)).save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DatasetError) as error:
        read_image(path)
    assert str(path) in str(error.value) and "truncated" in str(error.value)


def test_missing_and_non_image_files(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"absent\.jpg does not exist"):
        read_image(tmp_path / "absent.jpg")
    (tmp_path / "text.png").write_text("not an image")
    with pytest.raises(DatasetError, match=r"text\.png cannot be read as an image"):
        read_label(tmp_path / "text.png")
    with pytest.raises(DatasetError, match=r"text\.png"):
        image_size(tmp_path / "text.png")


# ------------------------------------------------------------------------------------------------ labels


def test_read_label_reads_palette_pngs_as_indices(tmp_path: Path) -> None:
    label = np.array([[0, 1, 2], [20, 255, 7]], np.uint8)
    write_palette_png(tmp_path / "label.png", label)
    assert Image.open(tmp_path / "label.png").mode == "P"
    read = read_label(tmp_path / "label.png")
    assert read.dtype == np.uint8
    np.testing.assert_array_equal(read, label)
    write_grey_png(tmp_path / "aug.png", label)  # SegmentationClassAug style: mode L holding indices
    np.testing.assert_array_equal(read_label(tmp_path / "aug.png"), label)


def test_read_label_rejects_colour_label_files(tmp_path: Path) -> None:
    colours = voc_palette()[np.array([[0, 1], [2, 3]])]
    Image.fromarray(colours, mode="RGB").save(tmp_path / "colour.png")
    with pytest.raises(DatasetError) as error:
        read_label(tmp_path / "colour.png")
    assert "colour.png" in str(error.value) and "not a class-index map" in str(error.value)
    Image.fromarray(np.array([[0, 300]], np.uint16)).save(tmp_path / "wide.png")
    with pytest.raises(DatasetError, match=r"wide\.png holds label values above 255"):
        read_label(tmp_path / "wide.png")


# ------------------------------------------------------------------------------------------------ saliency


def test_read_saliency_of_a_one_entry_black_palette_returns_the_indices(tmp_path: Path) -> None:
    """The AuxSegNet bug: maps saved in mode "P" without a palette. Through the palette they are all black."""
    indices = np.array([[0, 10], [128, 255]], np.uint8)
    (tmp_path / "auxsegnet.png").write_bytes(_palette_png(indices, [[0, 0, 0]]))
    image = Image.open(tmp_path / "auxsegnet.png")
    assert image.mode == "P" and image.getpalette() == [0, 0, 0]
    assert not np.asarray(image.convert("L")).any()  # the bug we must not repeat
    np.testing.assert_array_equal(read_saliency(tmp_path / "auxsegnet.png"), indices)
    # the same palette padded with black to 256 entries (what some writers store) is no better
    (tmp_path / "padded.png").write_bytes(_palette_png(indices, np.zeros((256, 3))))
    np.testing.assert_array_equal(read_saliency(tmp_path / "padded.png"), indices)


def test_read_saliency_of_a_grey_palette_returns_the_grey_levels(tmp_path: Path) -> None:
    indices = np.array([[0, 10], [128, 255]], np.uint8)
    halves = np.repeat((np.arange(256) // 2)[:, None], 3, axis=1)  # index i -> grey level i // 2
    (tmp_path / "grey_palette.png").write_bytes(_palette_png(indices, halves))
    saliency = read_saliency(tmp_path / "grey_palette.png")
    assert saliency.dtype == np.uint8
    np.testing.assert_array_equal(saliency, [[0, 5], [64, 127]])
    # a colour palette (e.g. VOC colours) is not grey: indices again
    write_palette_png(tmp_path / "voc.png", np.array([[0, 1]], np.uint8))
    np.testing.assert_array_equal(read_saliency(tmp_path / "voc.png"), [[0, 1]])


def test_read_saliency_of_grey_16_bit_and_rgb_maps(tmp_path: Path) -> None:
    grey = np.array([[0, 77], [128, 255]], np.uint8)
    write_grey_png(tmp_path / "grey.png", grey)
    np.testing.assert_array_equal(read_saliency(tmp_path / "grey.png"), grey)
    Image.fromarray(np.array([[0, 65535]], np.uint16)).save(tmp_path / "deep.png")
    np.testing.assert_array_equal(read_saliency(tmp_path / "deep.png"), [[0, 255]])
    Image.fromarray(np.array([[[30, 60, 90], [255, 255, 255]]], np.uint8)).save(tmp_path / "rgb.png")
    np.testing.assert_array_equal(read_saliency(tmp_path / "rgb.png"), [[60, 255]])


# ------------------------------------------------------------------------------------------------ writes


def test_write_palette_png_round_trips_and_carries_the_voc_palette(tmp_path: Path) -> None:
    label = np.arange(24, dtype=np.uint8).reshape(4, 6)
    label[0, 0] = 255
    write_palette_png(tmp_path / "sub" / "label.png", label)  # parent folders are created
    image = Image.open(tmp_path / "sub" / "label.png")
    assert image.mode == "P"
    np.testing.assert_array_equal(np.asarray(image.getpalette(), np.uint8).reshape(-1, 3), voc_palette())
    np.testing.assert_array_equal(read_label(tmp_path / "sub" / "label.png"), label)
    assert sorted(p.name for p in (tmp_path / "sub").iterdir()) == ["label.png"]  # no temporary file left
    with pytest.raises(ValueError, match="2-D"):
        write_palette_png(tmp_path / "bad.png", np.zeros((2, 2, 3), np.uint8))


def test_write_grey_png_round_trips_uint8_and_scales_floats(tmp_path: Path) -> None:
    grey = np.array([[0, 1, 254, 255]], np.uint8)
    write_grey_png(tmp_path / "a.png", grey)
    assert Image.open(tmp_path / "a.png").mode == "L"  # never "P": that is the bug above
    np.testing.assert_array_equal(read_saliency(tmp_path / "a.png"), grey)
    write_grey_png(tmp_path / "b.png", np.array([[0.0, 0.5, 1.0, 1.7, -0.2]], np.float32))
    np.testing.assert_array_equal(read_saliency(tmp_path / "b.png"), [[0, 128, 255, 255, 0]])
    write_grey_png(tmp_path / "a.png", grey[:, ::-1])  # overwrite in place
    np.testing.assert_array_equal(read_saliency(tmp_path / "a.png"), grey[:, ::-1])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png", "b.png"]


def test_atomic_write_leaves_the_old_file_when_publishing_fails(tmp_path: Path, monkeypatch) -> None:
    target = tmp_path / "out.bin"
    atomic_write_bytes(target, b"old")

    def crash(source, destination):
        raise OSError("crash before the rename")

    monkeypatch.setattr("wsss_lightning.data.io.os.replace", crash)
    with pytest.raises(OSError, match="crash before the rename"):
        atomic_write_bytes(target, b"new")
    assert target.read_bytes() == b"old"  # never half-written
    assert [p.name for p in tmp_path.iterdir()] == ["out.bin"]  # the temporary file is removed


def test_list_images_maps_stems_to_files(tmp_path: Path) -> None:
    for name in ("b.jpg", "a.PNG", "c.txt", "d.jpeg"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "e.png").mkdir()
    assert list(list_images(tmp_path)) == ["a", "b", "d"]
    assert list_images(tmp_path)["a"] == tmp_path / "a.PNG"


def test_list_images_refuses_two_files_of_one_stem(tmp_path: Path) -> None:
    """``a.jpg`` next to ``a.png`` must not make one of them vanish (an image scored against itself)."""
    for name in ("a.jpg", "a.png", "b.jpg"):
        (tmp_path / name).write_bytes(b"")
    with pytest.raises(DatasetError, match=r"holds both a\.jpg and a\.png: files are matched by name without"):
        list_images(tmp_path)
    # a caller selecting one kind by extension lists each kind without a clash
    assert list_images(tmp_path, (".jpg",)) == {"a": tmp_path / "a.jpg", "b": tmp_path / "b.jpg"}
    assert list_images(tmp_path, (".png",)) == {"a": tmp_path / "a.png"}


def test_list_images_skips_hidden_files_such_as_macos_appledouble(tmp_path: Path) -> None:
    """A tar made on macOS holds ``._0001.jpg`` (resource data, not a JPEG) beside ``0001.jpg``."""
    for name in ("0001.jpg", "._0001.jpg", ".hidden.png", "0002.jpg"):
        (tmp_path / name).write_bytes(b"")
    assert list_images(tmp_path) == {"0001": tmp_path / "0001.jpg", "0002": tmp_path / "0002.jpg"}


def test_atomic_write_gives_the_permissions_of_a_plain_write(tmp_path: Path) -> None:
    """mkstemp's 0600 must not leak: the file gets 0666 minus the umask, like ``open(path, "wb")``."""
    import stat

    from wsss_lightning.data import io as wio

    plain = tmp_path / "plain.bin"
    plain.write_bytes(b"x")
    atomic = tmp_path / "atomic.bin"
    wio.atomic_write_bytes(atomic, b"x")
    assert stat.S_IMODE(atomic.stat().st_mode) == stat.S_IMODE(plain.stat().st_mode) == 0o666 & ~wio._UMASK

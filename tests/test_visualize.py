"""Pictures of WSSS outputs (utils/visualize.py): VOC colours, heatmaps, blends, resizes, strips, PNG output."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from wsss_lightning.data.palette import voc_palette
from wsss_lightning.utils.visualize import (
    CAPTION_HEIGHT,
    blend,
    caption_image,
    colorize_label,
    grey,
    heatmap,
    jet,
    make_grid,
    make_strip,
    overlay_heatmap,
    overlay_label,
    resize_image,
    resize_label,
    save_png,
)


def test_colorize_label_uses_the_voc_colours_and_the_ignore_colour():
    label = np.array([[0, 1], [255, 15]], dtype=np.uint8)
    rgb = colorize_label(label)
    assert rgb.dtype == np.uint8 and rgb.shape == (2, 2, 3)
    # VOC: background black, aeroplane (128, 0, 0), person (192, 128, 128), boundary/ignore (224, 224, 192).
    assert rgb[0, 0].tolist() == [0, 0, 0]
    assert rgb[0, 1].tolist() == [128, 0, 0]
    assert rgb[1, 1].tolist() == [192, 128, 128]
    assert rgb[1, 0].tolist() == [224, 224, 192]
    assert np.array_equal(colorize_label(label), voc_palette()[label])


def test_colorize_label_rejects_bad_input():
    with pytest.raises(ValueError, match="label map"):
        colorize_label(np.zeros((2, 2, 3), dtype=np.uint8))
    with pytest.raises(ValueError, match="0..255"):
        colorize_label(np.array([[-1, 0]]))


def test_jet_endpoints_and_middle():
    values = np.array([[0.0, 0.5, 1.0, np.nan, 2.0, -1.0]])
    colours = jet(values)[0].tolist()
    assert colours[0] == [0, 0, 128]  # dark blue
    assert colours[1] == [128, 255, 128]  # green-ish middle
    assert colours[2] == [128, 0, 0]  # dark red
    assert colours[3] == [0, 0, 128]  # NaN counts as 0
    assert colours[4] == colours[2] and colours[5] == colours[0]  # clipped to [0, 1]


def test_grey_and_heatmap_dispatch():
    values = np.array([[0.0, 0.5, 1.0, 1.7]])
    assert grey(values)[0, :, 0].tolist() == [0, 128, 255, 255]
    assert np.array_equal(grey(values)[..., 0], grey(values)[..., 2])
    assert np.array_equal(heatmap(values, "grey"), grey(values))
    assert np.array_equal(heatmap(values, "jet"), jet(values))
    with pytest.raises(ValueError, match="colormap"):
        heatmap(values, "viridis")


def test_blend_with_a_scalar_and_a_per_pixel_alpha():
    image = np.full((1, 2, 3), 100, dtype=np.uint8)
    colour = np.full((1, 2, 3), 200, dtype=np.uint8)
    assert blend(image, colour, 0.25)[0, 0].tolist() == [125, 125, 125]
    per_pixel = blend(image, colour, np.array([[0.0, 1.0]]))
    assert per_pixel[0, 0].tolist() == [100] * 3 and per_pixel[0, 1].tolist() == [200] * 3
    with pytest.raises(ValueError, match="differ in shape"):
        blend(image, np.zeros((2, 2, 3), dtype=np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        blend(image.astype(np.float32), colour)


def test_overlay_label_leaves_background_untouched():
    image = np.full((1, 2, 3), 100, dtype=np.uint8)
    label = np.array([[0, 1]], dtype=np.uint8)
    out = overlay_label(image, label, alpha=0.5)
    assert out[0, 0].tolist() == [100, 100, 100]
    assert out[0, 1].tolist() == [114, 50, 50]  # (100 + 128) / 2, 100 / 2, 100 / 2


def test_overlay_heatmap_is_a_blend_with_jet():
    image = np.zeros((2, 2, 3), dtype=np.uint8)
    values = np.array([[0.0, 1.0], [0.5, 0.5]])
    assert np.array_equal(overlay_heatmap(image, values, alpha=1.0), jet(values))
    assert overlay_heatmap(image, values, alpha=0.5)[0, 1].tolist() == [64, 0, 0]


def test_resize_label_is_nearest_and_resize_image_bilinear():
    label = np.array([[0, 255], [3, 7]], dtype=np.uint8)
    big = resize_label(label, (4, 4))
    assert big.shape == (4, 4) and set(np.unique(big).tolist()) == {0, 3, 7, 255}
    assert np.array_equal(big, np.kron(label, np.ones((2, 2), dtype=np.uint8)))
    assert resize_label(label, (2, 2)) is not None and np.array_equal(resize_label(label, (2, 2)), label)
    image = np.zeros((2, 2, 3), dtype=np.uint8)
    image[:, 1] = 200
    wide = resize_image(image, (2, 6))
    assert wide.shape == (2, 6, 3)
    assert wide[0, 0, 0] == 0 and wide[0, -1, 0] == 200 and 0 < wide[0, 3, 0] < 200  # interpolated in between


def test_caption_image_adds_a_white_band_with_dark_text():
    image = np.zeros((10, 60, 3), dtype=np.uint8)
    out = caption_image(image, "CAM disc")
    assert out.shape == (10 + CAPTION_HEIGHT, 60, 3)
    band = out[:CAPTION_HEIGHT]
    assert (band == 255).mean() > 0.5 and (band < 128).any()  # mostly white, some text pixels
    assert np.array_equal(out[CAPTION_HEIGHT:], image)


def test_make_strip_scales_panels_to_one_height_with_gaps():
    a = np.full((10, 20, 3), 10, dtype=np.uint8)
    b = np.full((20, 20, 3), 200, dtype=np.uint8)
    strip = make_strip([a, b], gap=4)
    assert strip.shape == (10, 20 + 4 + 10, 3)  # b scaled to 10x10
    assert (strip[:, :20] == 10).all() and (strip[:, 20:24] == 255).all() and (strip[:, 24:] == 200).all()
    captioned = make_strip([a, b], ["image", "label"], height=10)
    assert captioned.shape == (10 + CAPTION_HEIGHT, 34, 3)
    with pytest.raises(ValueError, match="captions"):
        make_strip([a, b], ["only one"])
    with pytest.raises(ValueError, match="at least one"):
        make_strip([])


def test_make_grid_pads_rows_to_the_widest():
    rows = [np.zeros((5, 10, 3), dtype=np.uint8), np.zeros((6, 4, 3), dtype=np.uint8)]
    grid = make_grid(rows, gap=2)
    assert grid.shape == (5 + 2 + 6, 10, 3)
    assert (grid[5:7] == 255).all()  # the gap
    assert (grid[7:, 4:] == 255).all() and (grid[7:, :4] == 0).all()  # second row padded white on the right


def test_save_png_round_trip(tmp_path):
    image = np.random.default_rng(0).integers(0, 256, size=(7, 9, 3), dtype=np.uint8)
    path = save_png(tmp_path / "sub" / "strip.png", image)
    with Image.open(path) as png:
        assert png.mode == "RGB"
        assert np.array_equal(np.asarray(png), image)

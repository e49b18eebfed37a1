"""The synthetic demo dataset: layouts, file formats, labels, saliency quality, determinism, safety."""

from __future__ import annotations

import colorsys
import hashlib
import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from wsss_lightning.data.demo import DEMO_CLASSES, MARKER_NAME, TINY_SETTINGS, _object_colours, generate_demo, main
from wsss_lightning.data.io import read_label, read_saliency
from wsss_lightning.data.palette import voc_palette

VOC = "VOCdevkit/VOC2012"
# smaller than --tiny, for the tests that generate several times
MICRO = dict(TINY_SETTINGS, num_train_aug=6, num_train=2, num_val=2, num_duts_train=2, num_duts_test=2, num_ecssd=2)


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The --tiny set, written through the CLI entry point."""
    root = tmp_path_factory.mktemp("demo") / "out"
    assert main(["--out", str(root), "--tiny"]) == 0
    return root


def _ids(path: Path) -> list[str]:
    return path.read_text().splitlines()


def _splits(root: Path) -> dict[str, list[str]]:
    lists = root / VOC / "ImageSets/Segmentation"
    aug = []
    for number, line in enumerate(_ids(lists / "train_aug.txt"), start=1):
        match = re.fullmatch(r"/JPEGImages/(\d{4}_\d{6})\.jpg /SegmentationClassAug/(\d{4}_\d{6})\.png", line)
        assert match and match[1] == match[2], f"train_aug.txt line {number}: {line!r}"
        aug.append(match[1])
    return {"train_aug": aug, "train": _ids(lists / "train.txt"), "val": _ids(lists / "val.txt")}


def _voc_ids(root: Path) -> list[str]:
    splits = _splits(root)
    return sorted(splits["train_aug"] + splits["val"])


def _tree_hashes(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*") if p.is_file()
    }


def _max_f(saliency_maps: list[np.ndarray], labels: list[np.ndarray]) -> float:
    """maxF (beta^2 = 0.3) of the mean per-image F curve over thresholds 0..255; 255 label pixels ignored."""
    curves = []
    for sal, label in zip(saliency_maps, labels):
        valid = label != 255
        truth, scores = (label[valid] > 0), sal[valid].astype(np.int64)
        predicted = scores[None, :] >= np.arange(256)[:, None]  # (256 thresholds, pixels)
        hits = (predicted & truth).sum(axis=1)
        precision = hits / np.maximum(predicted.sum(axis=1), 1)
        recall = hits / max(int(truth.sum()), 1)
        curves.append(1.3 * precision * recall / np.maximum(0.3 * precision + recall, 1e-12))
    return float(np.mean(curves, axis=0).max())


def test_max_f_helper_matches_hand_computed_values() -> None:
    label = np.array([[0, 1], [1, 255]], dtype=np.uint8)
    perfect = np.array([[0, 255], [255, 7]], dtype=np.uint8)
    assert _max_f([perfect], [label]) == pytest.approx(1.0)
    # one false positive at full confidence: P = 2/3, R = 1, F = 1.3 * 2/3 / (0.2 + 1) = 13/18
    noisy = np.array([[255, 255], [255, 0]], dtype=np.uint8)
    assert _max_f([noisy], [label]) == pytest.approx(13 / 18)


def test_layout_and_splits(demo: Path) -> None:
    splits = _splits(demo)
    assert len(splits["train_aug"]) == TINY_SETTINGS["num_train_aug"]
    assert len(splits["train"]) == TINY_SETTINGS["num_train"]
    assert len(splits["val"]) == TINY_SETTINGS["num_val"]
    assert set(splits["train"]) <= set(splits["train_aug"])
    assert not set(splits["val"]) & set(splits["train_aug"])
    assert all(ids == sorted(ids) for ids in splits.values())
    labelled = set(splits["train"]) | set(splits["val"])
    for image_id in _voc_ids(demo):
        assert re.fullmatch(r"2026_\d{6}", image_id)
        for relative in (
            f"JPEGImages/{image_id}.jpg",
            f"SegmentationClassAug/{image_id}.png",
            f"Annotations/{image_id}.xml",
        ):
            assert (demo / VOC / relative).is_file(), relative
        assert (demo / "saliency_maps" / f"{image_id}.png").is_file()
        # SegmentationClass only for train and val, as in VOC
        assert (demo / VOC / "SegmentationClass" / f"{image_id}.png").is_file() == (image_id in labelled)
    assert (demo / "class_names.txt").read_text().splitlines() == list(DEMO_CLASSES)
    assert (demo / "README.txt").read_text().startswith("wsss_lightning synthetic demo dataset")
    # the marker's manifest is exactly what is on disk
    manifest = json.loads((demo / MARKER_NAME).read_text())["files"]
    assert sorted(manifest) == sorted(str(p.relative_to(demo)) for p in demo.rglob("*") if p.is_file())


def test_label_files(demo: Path) -> None:
    splits = _splits(demo)
    palette = voc_palette().reshape(-1).tolist()
    low, high = TINY_SETTINGS["size_range"]
    for image_id in _voc_ids(demo):
        with Image.open(demo / VOC / "JPEGImages" / f"{image_id}.jpg") as image:
            assert image.mode == "RGB" and image.format == "JPEG"
            width, height = image.size
        assert low <= width <= high and low <= height <= high
        with Image.open(demo / VOC / "SegmentationClassAug" / f"{image_id}.png") as aug:
            assert aug.mode == "L" and aug.size == (width, height)
            label = np.asarray(aug)
        with Image.open(demo / "saliency_maps" / f"{image_id}.png") as sal:
            assert sal.mode == "L" and sal.size == (width, height)
        assert set(np.unique(label).tolist()) <= {0, 1, 2, 3, 4, 5, 255}
        objects = (label > 0) & (label < 255)
        assert objects.any(), f"{image_id} has no object"
        assert 0.04 <= (label > 0).mean() <= 0.55  # objects (with their band) cover roughly 8-40 %
        if image_id in splits["train"] or image_id in splits["val"]:
            with Image.open(demo / VOC / "SegmentationClass" / f"{image_id}.png") as palette_png:
                assert palette_png.mode == "P"
                assert palette_png.getpalette()[: len(palette)] == palette
                np.testing.assert_array_equal(np.asarray(palette_png), label)


def test_boundary_band(demo: Path) -> None:
    band_fractions = []
    for image_id in _voc_ids(demo):
        label = read_label(demo / VOC / "SegmentationClassAug" / f"{image_id}.png")
        band = label == 255
        assert band.any()
        # the band separates every region: two 4-neighbours with different labels always include a 255
        for a, b in ((label[1:], label[:-1]), (label[:, 1:], label[:, :-1])):
            differ = a != b
            assert np.all((a[differ] == 255) | (b[differ] == 255)), image_id
        # and it is thin (2-3 px): band pixels lie within 2 px of a non-band pixel, except in thin parts
        # (star tips, triangle corners, narrow slivers) that the band swallows whole, as in VOC
        near = np.zeros_like(band)
        padded = np.pad(~band, 2, constant_values=False)
        for dy in range(5):
            for dx in range(5):
                near |= padded[dy : dy + band.shape[0], dx : dx + band.shape[1]]
        assert near[band].mean() > 0.9, image_id
        band_fractions.append(band.mean())
    assert 0.01 < float(np.mean(band_fractions)) < 0.25


def test_xml_names_the_classes_in_the_mask(demo: Path) -> None:
    for image_id in _voc_ids(demo):
        label = read_label(demo / VOC / "SegmentationClassAug" / f"{image_id}.png")
        root = ET.parse(demo / VOC / "Annotations" / f"{image_id}.xml").getroot()
        assert root.findtext("folder") == "VOC2012" and root.findtext("filename") == f"{image_id}.jpg"
        height, width = label.shape
        assert int(root.findtext("size/width")) == width and int(root.findtext("size/height")) == height
        assert root.findtext("size/depth") == "3"
        names = set()
        for obj in root.findall("object"):
            names.add(obj.findtext("name"))
            assert obj.findtext("pose") == "Unspecified" and obj.findtext("difficult") == "0"
            assert obj.findtext("truncated") in ("0", "1")
            xmin, ymin, xmax, ymax = (int(obj.findtext(f"bndbox/{k}")) for k in ("xmin", "ymin", "xmax", "ymax"))
            assert 1 <= xmin <= xmax <= width and 1 <= ymin <= ymax <= height
            # the 1-based box holds pixels of its class
            crop = label[ymin - 1 : ymax, xmin - 1 : xmax]
            assert (crop == DEMO_CLASSES.index(obj.findtext("name"))).any()
        present = {DEMO_CLASSES[c] for c in np.unique(label) if 0 < c < 255}
        assert names == present, image_id
        assert 1 <= len(root.findall("object")) <= 3 and 1 <= len(names) <= 2


def test_saliency_sets(demo: Path) -> None:
    sets = {
        "DUTS/DUTS-TR": ("DUTS-TR-Image", "DUTS-TR-Mask", TINY_SETTINGS["num_duts_train"]),
        "DUTS/DUTS-TE": ("DUTS-TE-Image", "DUTS-TE-Mask", TINY_SETTINGS["num_duts_test"]),
        "ECSSD": ("images", "ground_truth_mask", TINY_SETTINGS["num_ecssd"]),
    }
    for folder, (images, masks, count) in sets.items():
        image_stems = sorted(p.stem for p in (demo / folder / images).glob("*.jpg"))
        mask_stems = sorted(p.stem for p in (demo / folder / masks).glob("*.png"))
        assert image_stems == mask_stems and len(image_stems) == count
        for stem in image_stems:
            with (
                Image.open(demo / folder / images / f"{stem}.jpg") as image,
                Image.open(demo / folder / masks / f"{stem}.png") as mask,
            ):
                assert image.mode == "RGB" and mask.mode == "L" and image.size == mask.size
                values = np.asarray(mask)
            assert set(np.unique(values).tolist()) == {0, 255}  # binary, no band
            assert 0.05 <= (values == 255).mean() <= 0.6
    assert sorted(p.stem for p in (demo / "ECSSD/images").glob("*.jpg"))[:2] == ["0001", "0002"]


def test_offtheshelf_saliency_is_imperfect_but_useful(demo: Path) -> None:
    saliency_maps, labels = [], []
    for image_id in _voc_ids(demo):
        saliency_maps.append(read_saliency(demo / "saliency_maps" / f"{image_id}.png"))
        labels.append(read_label(demo / VOC / "SegmentationClassAug" / f"{image_id}.png"))
    max_f = _max_f(saliency_maps, labels)
    assert 0.78 <= max_f <= 0.93, max_f
    values = np.concatenate([s.ravel() for s in saliency_maps])
    assert ((values > 10) & (values < 245)).mean() > 0.03  # soft, not a binary mask
    # the maps are not the ground truth: some object pixels are weak, some background pixels fire
    truth = np.concatenate([(lab.ravel() > 0) & (lab.ravel() < 255) for lab in labels])
    background = np.concatenate([lab.ravel() == 0 for lab in labels])
    assert (values[truth] < 128).mean() > 0.02
    assert (values[background] >= 128).mean() > 0.002


def test_same_seed_same_bytes_other_seed_differs(tmp_path: Path) -> None:
    summary = generate_demo(tmp_path / "first", seed=0, **MICRO)
    assert summary["counts"]["train_aug"] == 6 and summary["class_names"] == list(DEMO_CLASSES)
    assert summary["paths"]["voc_root"] == str(tmp_path / "first" / VOC)
    generate_demo(tmp_path / "again", seed=0, **MICRO)
    reference = _tree_hashes(tmp_path / "first")
    assert len(reference) == summary["num_files"]
    assert _tree_hashes(tmp_path / "again") == reference
    generate_demo(tmp_path / "other", seed=1, **MICRO)
    other = _tree_hashes(tmp_path / "other")
    jpegs = [k for k in reference if k.endswith(".jpg") and k in other]
    assert jpegs and all(reference[k] != other[k] for k in jpegs)


def test_refuses_a_foreign_non_empty_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("precious")
    with pytest.raises(FileExistsError, match="not empty"):
        generate_demo(foreign, **MICRO)
    assert main(["--out", str(foreign), "--tiny"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert sorted(p.name for p in foreign.iterdir()) == ["thesis.tex"]  # nothing written, nothing deleted
    # a file is refused too
    with pytest.raises(FileExistsError):
        generate_demo(foreign / "thesis.tex", **MICRO)
    # --overwrite writes next to the user's file and keeps it
    generate_demo(foreign, overwrite=True, **MICRO)
    assert (foreign / "thesis.tex").read_text() == "precious" and (foreign / MARKER_NAME).is_file()


def test_rewrites_its_own_output_and_deletes_only_its_own_stale_files(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    generate_demo(out, **MICRO)
    (out / "notes.txt").write_text("mine")
    outside = tmp_path / "outside.txt"
    outside.write_text("keep")
    # a tampered manifest must not reach outside the folder or foreign files
    marker = json.loads((out / MARKER_NAME).read_text())
    marker["files"] += ["../outside.txt", str(outside)]
    (out / MARKER_NAME).write_text(json.dumps(marker))
    generate_demo(out, **dict(MICRO, num_ecssd=1))  # the folder is ours: rewritten without --overwrite
    assert outside.read_text() == "keep" and (out / "notes.txt").read_text() == "mine"
    assert sorted(p.stem for p in (out / "ECSSD/images").glob("*.jpg")) == ["0001"]
    assert not (out / "ECSSD/ground_truth_mask/0002.png").exists()


def test_invalid_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="train_aug"):
        generate_demo(tmp_path / "a", num_train_aug=4, num_train=5)
    with pytest.raises(ValueError, match="size_range"):
        generate_demo(tmp_path / "b", size_range=(100, 80))
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_class_colours_overlap_between_classes() -> None:
    """Colour alone does not name the class: neighbouring classes' main hues share a range."""
    rng = np.random.default_rng(0)
    hues = {}
    for cls in range(1, len(DEMO_CLASSES)):
        samples = [colorsys.rgb_to_hsv(*_object_colours(cls, rng)[0].tolist())[0] for _ in range(200)]
        hues[cls] = np.asarray(samples)
    # classes 2 and 3 (hue centres 0.2 and 0.4) both produce hues in [0.25, 0.35]
    for cls in (2, 3):
        assert ((hues[cls] > 0.25) & (hues[cls] < 0.35)).mean() > 0.1

"""The synthetic demo dataset: layouts, file formats, labels, saliency quality, determinism, safety."""

from __future__ import annotations

import colorsys
import hashlib
import json
import re
import time
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from wsss_lightning.data.baselines import saliency_max_f
from wsss_lightning.data.demo import (
    DEMO_CLASSES,
    MARKER_NAME,
    TINY_SETTINGS,
    _voc_scene,
    class_counts,
    generate_demo,
    main,
    voc_image_classes,
)
from wsss_lightning.data.demo_objects import CLASS_DESIGNS, PALETTES, object_colours
from wsss_lightning.data.io import read_label, read_saliency
from wsss_lightning.data.labels import labels_from_xml
from wsss_lightning.data.palette import VOC_CLASSES, voc_palette

VOC = "VOCdevkit/VOC2012"
SAL = f"{VOC}/saliency_map"
# smaller than --tiny, for the tests that generate several times
MICRO = dict(TINY_SETTINGS, num_train_aug=6, num_train=2, num_val=2, num_duts_train=2, num_duts_test=2, num_ecssd=2)
DEFAULT_SIZE = (128, 176)


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The --tiny set, written through the CLI entry point."""
    root = tmp_path_factory.mktemp("demo") / "out"
    assert main(["--out", str(root), "--tiny"]) == 0
    return root


@pytest.fixture(scope="module")
def scenes() -> list[tuple]:
    """A moderate sample of default-size VOC scenes (drawn in memory, not written): (scene, saliency map)."""
    return [_voc_scene(0, index, DEFAULT_SIZE) for index in range(80)]


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


# ------------------------------------------------------------------------------------------------ layout


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
            f"saliency_map/{image_id}.png",
        ):
            assert (demo / VOC / relative).is_file(), relative
        # SegmentationClass only for train and val, as in VOC
        assert (demo / VOC / "SegmentationClass" / f"{image_id}.png").is_file() == (image_id in labelled)
    assert not (demo / "saliency_maps").exists() and not (demo / "DUTS").exists()  # the old layout is gone
    assert (demo / "class_names.txt").read_text().splitlines() == list(VOC_CLASSES)
    readme = (demo / "README.txt").read_text()
    assert readme.startswith("wsss_lightning synthetic demo dataset") and "saliency_map" in readme
    # the marker's manifest is exactly what is on disk
    manifest = json.loads((demo / MARKER_NAME).read_text())["files"]
    assert sorted(manifest) == sorted(str(p.relative_to(demo)) for p in demo.rglob("*") if p.is_file())


def test_demo_classes_are_the_voc_classes() -> None:
    assert DEMO_CLASSES == VOC_CLASSES and len(DEMO_CLASSES) == 21
    assert [d.name for d in CLASS_DESIGNS] == list(VOC_CLASSES[1:])


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
        with Image.open(demo / SAL / f"{image_id}.png") as sal:
            assert sal.mode == "L" and sal.size == (width, height)
        assert set(np.unique(label).tolist()) <= set(range(21)) | {255}
        assert ((label > 0) & (label < 255)).any(), f"{image_id} has no object"
        assert 0.03 <= (label > 0).mean() <= 0.8  # objects with their band: 4-70 % of the image
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
        # (star tips, wheel spokes, narrow slivers) that the band swallows whole, as in VOC
        near = np.zeros_like(band)
        padded = np.pad(~band, 2, constant_values=False)
        for dy in range(5):
            for dx in range(5):
                near |= padded[dy : dy + band.shape[0], dx : dx + band.shape[1]]
        assert near[band].mean() > 0.75, image_id
        band_fractions.append(band.mean())
    assert 0.01 < float(np.mean(band_fractions)) < 0.25


def test_xml_names_the_classes_in_the_mask(demo: Path) -> None:
    for image_id in _voc_ids(demo):
        label = read_label(demo / VOC / "SegmentationClassAug" / f"{image_id}.png")
        path = demo / VOC / "Annotations" / f"{image_id}.xml"
        root = ET.parse(path).getroot()
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
            assert (crop == VOC_CLASSES.index(obj.findtext("name"))).any()
        present = {VOC_CLASSES[c] for c in np.unique(label) if 0 < c < 255}
        assert names == present, image_id
        assert 1 <= len(root.findall("object")) <= 4 and 1 <= len(names) <= 3
        # what a `dataset: voc` config reads (VOC class names, no class_names given)
        vector = labels_from_xml(path, VOC_CLASSES)
        assert {VOC_CLASSES[i + 1] for i in np.flatnonzero(vector)} == present


def test_saliency_sets(demo: Path) -> None:
    sets = {
        "DUTS-TR": ("DUTS-TR-Image", "DUTS-TR-Mask", TINY_SETTINGS["num_duts_train"]),
        "DUTS-TE": ("DUTS-TE-Image", "DUTS-TE-Mask", TINY_SETTINGS["num_duts_test"]),
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
            assert 0.03 <= (values == 255).mean() <= 0.75
    assert sorted(p.stem for p in (demo / "ECSSD/images").glob("*.jpg"))[:2] == ["0001", "0002"]


# ------------------------------------------------------------------------------------------------ content


def test_every_class_appears_in_every_split_at_the_default_size() -> None:
    counts = class_counts(0)  # default counts: 400 train_aug, 100 train, 100 val
    for split, minimum in (("train_aug", 15), ("train", 3), ("val", 3)):
        assert counts[split][1:].min() >= minimum, (split, counts[split])


def test_class_counts_match_the_written_files(demo: Path) -> None:
    counts = class_counts(0, **{k: TINY_SETTINGS[k] for k in ("num_train_aug", "num_train", "num_val")})
    for split, ids in _splits(demo).items():
        found = np.zeros(21, dtype=np.int64)
        for image_id in ids:
            label = read_label(demo / VOC / "SegmentationClassAug" / f"{image_id}.png")
            found[[c for c in np.unique(label) if 0 < c < 255]] += 1
        np.testing.assert_array_equal(found, counts[split], err_msg=split)


def test_classes_and_objects_per_image() -> None:
    per_image = [voc_image_classes(0, index) for index in range(2000)]
    num_classes = Counter(len(set(classes)) for classes in per_image)
    num_objects = Counter(len(classes) for classes in per_image)
    assert 0.3 <= num_classes[2] / 2000 <= 0.4 and 0.07 <= num_classes[3] / 2000 <= 0.13
    assert set(num_classes) == {1, 2, 3} and set(num_objects) == {1, 2, 3, 4}
    assert all(c in range(1, 21) for classes in per_image for c in classes)


def test_scenes_hold_their_classes_and_vary_in_size(scenes: list[tuple]) -> None:
    areas, truncated = [], []
    for index, (scene, _) in enumerate(scenes):
        label = scene.label()
        present = {int(c) for c in np.unique(label) if 0 < c < 255}
        assert present == set(voc_image_classes(0, index))
        areas += [obj.mask.mean() for obj in scene.objects]
        truncated += [obj.truncated for obj in scene.objects]
    assert min(areas) >= 0.02 and max(areas) <= 0.5 and max(areas) > 0.3  # about 4-45 % (truncated: less)
    assert 0.15 <= np.mean(truncated) <= 0.6  # some objects are cut by the border


def test_offtheshelf_saliency_is_imperfect_but_useful(scenes: list[tuple]) -> None:
    labels = [scene.label() for scene, _ in scenes]
    saliency_maps = [sal for _, sal in scenes]
    max_f = saliency_max_f(saliency_maps, labels)
    assert 0.80 <= max_f <= 0.88, max_f
    values = np.concatenate([s.ravel() for s in saliency_maps])
    assert ((values > 10) & (values < 245)).mean() > 0.03  # soft, not a binary mask
    # the maps are not the ground truth: some object pixels are weak, some background pixels fire
    truth = np.concatenate([(lab.ravel() > 0) & (lab.ravel() < 255) for lab in labels])
    background = np.concatenate([lab.ravel() == 0 for lab in labels])
    assert (values[truth] < 128).mean() > 0.05
    assert (values[background] >= 128).mean() > 0.01


def test_distractors_are_background_but_salient(scenes: list[tuple]) -> None:
    with_distractors, salient = 0, []
    for scene, sal in scenes:
        label = scene.label()
        with_distractors += bool(scene.distractors)
        for distractor in scene.distractors:
            # label 0 (255 where the band of an object touching it reaches over), and absent from the XML
            values = label[distractor]
            assert np.all((values == 0) | (values == 255)) and (values == 0).mean() > 0.5
            salient.append(sal[distractor].mean() > 128)
    assert 0.25 <= with_distractors / len(scenes) <= 0.5
    assert np.mean(salient) >= 0.6  # the off-the-shelf map fires on most of them


def test_saliency_maps_on_disk_score_in_the_target_band(demo: Path) -> None:
    ids = _voc_ids(demo)
    maps = [read_saliency(demo / SAL / f"{i}.png") for i in ids]
    labels = [read_label(demo / VOC / "SegmentationClassAug" / f"{i}.png") for i in ids]
    assert 0.7 <= saliency_max_f(maps, labels) <= 0.92  # 32 tiny images: a loose band


def test_class_designs_share_parts_so_that_no_single_cue_names_the_class() -> None:
    pairs = {(d.silhouette, d.texture) for d in CLASS_DESIGNS}
    assert len(pairs) == 20  # every class is its own combination
    silhouettes = Counter(d.silhouette for d in CLASS_DESIGNS)
    textures = Counter(d.texture for d in CLASS_DESIGNS)
    assert sum(n > 1 for n in silhouettes.values()) >= 5 and sum(n > 1 for n in textures.values()) >= 5
    palettes = Counter(p for d in CLASS_DESIGNS for p in d.palettes)
    assert set(palettes) <= set(PALETTES) and min(palettes.values()) >= 2


def test_class_colours_overlap_between_classes() -> None:
    """Colour alone does not name the class: each class's most common hue is common in other classes too."""
    rng = np.random.default_rng(0)
    histograms = []
    for design in CLASS_DESIGNS:
        hues = [colorsys.rgb_to_hsv(*object_colours(design, rng)[0].tolist())[0] for _ in range(300)]
        histograms.append(np.histogram(hues, bins=12, range=(0, 1))[0] / 300)
    histograms = np.asarray(histograms)
    for k, histogram in enumerate(histograms):
        mode = int(histogram.argmax())
        others = np.delete(histograms[:, mode], k)
        assert (others > 0.05).sum() >= 3, CLASS_DESIGNS[k].name


# ------------------------------------------------------------------------------------------------ machinery


def test_same_seed_same_bytes_other_seed_differs(tmp_path: Path) -> None:
    summary = generate_demo(tmp_path / "first", seed=0, **MICRO)
    assert summary["counts"]["train_aug"] == 6 and summary["class_names"] == list(VOC_CLASSES)
    assert summary["paths"]["voc_root"] == str(tmp_path / "first" / VOC)
    assert summary["paths"]["saliency_maps"] == str(tmp_path / "first" / SAL)
    assert summary["paths"]["duts_train"] == str(tmp_path / "first" / "DUTS-TR")
    generate_demo(tmp_path / "again", seed=0, **MICRO)
    reference = _tree_hashes(tmp_path / "first")
    assert len(reference) == summary["num_files"]
    assert _tree_hashes(tmp_path / "again") == reference
    generate_demo(tmp_path / "other", seed=1, **MICRO)
    other = _tree_hashes(tmp_path / "other")
    jpegs = [k for k in reference if k.endswith(".jpg") and k in other]
    assert jpegs and all(reference[k] != other[k] for k in jpegs)


def test_changing_one_count_keeps_the_other_sets(tmp_path: Path) -> None:
    generate_demo(tmp_path / "a", **MICRO)
    generate_demo(tmp_path / "b", **dict(MICRO, num_duts_train=4, num_ecssd=1))
    a, b = _tree_hashes(tmp_path / "a"), _tree_hashes(tmp_path / "b")
    shared = [k for k in a if k in b and not k.endswith((".txt", MARKER_NAME))]
    assert all(a[k] == b[k] for k in shared) and any(k.startswith("DUTS-TR/") for k in shared)


def test_tiny_is_fast(tmp_path: Path) -> None:
    start = time.process_time()  # CPU time: the test machine may be shared
    generate_demo(tmp_path / "tiny", **TINY_SETTINGS)
    assert time.process_time() - start < 1.5  # about 0.3 s


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


@pytest.mark.slow
def test_default_dataset(tmp_path: Path) -> None:
    """The default set: counts, every class in the val masks, and the time (about 10 s on one core)."""
    start = time.process_time()
    summary = generate_demo(tmp_path / "demo")
    elapsed = time.process_time() - start
    root = tmp_path / "demo"
    splits = _splits(root)
    assert {k: len(v) for k, v in splits.items()} == {"train_aug": 400, "train": 100, "val": 100}
    assert len(list((root / "DUTS-TR/DUTS-TR-Image").glob("*.jpg"))) == 200
    found = set()
    for image_id in splits["val"]:
        found |= set(np.unique(read_label(root / VOC / "SegmentationClass" / f"{image_id}.png")).tolist())
    assert set(range(21)) <= found
    assert summary["num_files"] == 2806 and elapsed < 30.0, elapsed

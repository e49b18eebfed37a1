"""COCO instances -> WSSS masks + labels: exact pixels on a hand-built instances JSON."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from wsss_lightning.data.coco_convert import (
    _counts_from_string,
    convert_coco_instances,
    instance_rle,
    main,
    paint_mask,
)
from wsss_lightning.data.io import DatasetError, write_grey_png

# pycocotools 2.0.x's decode predates NumPy 2's __array__(copy=) protocol; the converter silences it too.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

NAME_A = "COCO_train2014_000000000009"
NAME_B = "COCO_train2014_000000000025"
NAME_C = "COCO_train2014_000000000030"

# Image A (6x8): dog box rows 0-4 x cols 0-5 (area 30), person box rows 2-5 x cols 4-7 (area 16) on top.
MASK_A = np.array(
    [
        [2, 2, 2, 2, 2, 2, 0, 0],
        [2, 2, 2, 2, 2, 2, 0, 0],
        [2, 2, 2, 2, 1, 1, 1, 1],
        [2, 2, 2, 2, 1, 1, 1, 1],
        [2, 2, 2, 2, 1, 1, 1, 1],
        [0, 0, 0, 0, 1, 1, 1, 1],
    ],
    dtype=np.uint8,
)
# Image B (5x7): bottle triangle (0,0),(6,0),(0,4) -> pixels whose centre is inside; a person crowd region
# rows 2-4 x cols 3-6 (uncompressed RLE); a dog rows 3-4 x cols 5-6 (compressed RLE) inside the crowd.
TRIANGLE_B = np.array(
    [
        [3, 3, 3, 3, 3, 0, 0],
        [3, 3, 3, 3, 0, 0, 0],
        [3, 3, 0, 0, 0, 0, 0],
        [3, 0, 0, 0, 0, 0, 0],
        [0, 0, 0, 0, 0, 0, 0],
    ],
    dtype=np.uint8,
)


def _mask_b(crowd_value: int) -> np.ndarray:
    mask = TRIANGLE_B.copy()
    mask[2:5, 3:7] = crowd_value
    mask[3:5, 5:7] = 2
    return mask


def _instances() -> dict:
    return {
        "info": {"description": "tiny"},
        "images": [
            {"id": 25, "file_name": f"{NAME_B}.jpg", "height": 5, "width": 7},
            {"id": 9, "file_name": f"{NAME_A}.jpg", "height": 6, "width": 8},
            {"id": 30, "file_name": f"{NAME_C}.jpg", "height": 3, "width": 4},
        ],
        # Non-contiguous, unsorted ids: sorted order 1, 18, 44 -> classes 1, 2, 3.
        "categories": [
            {"id": 18, "name": "dog", "supercategory": "animal"},
            {"id": 1, "name": "person", "supercategory": "person"},
            {"id": 44, "name": "bottle", "supercategory": "kitchen"},
        ],
        "annotations": [
            # The small person comes first: JSON-order painting would bury it under the dog.
            {"id": 102, "image_id": 9, "category_id": 1, "iscrowd": 0, "segmentation": [[4, 2, 8, 2, 8, 6, 4, 6]]},
            {"id": 101, "image_id": 9, "category_id": 18, "iscrowd": 0, "segmentation": [[0, 0, 6, 0, 6, 5, 0, 5]]},
            {"id": 201, "image_id": 25, "category_id": 44, "iscrowd": 0, "segmentation": [[0, 0, 6, 0, 0, 4]]},
            {
                "id": 202,
                "image_id": 25,
                "category_id": 1,
                "iscrowd": 1,
                # column-major: 15 zeros (cols 0-2) + 2, then 3 ones / 2 zeros for cols 3-6
                "segmentation": {"size": [5, 7], "counts": [17, 3, 2, 3, 2, 3, 2, 3]},
            },
            # compressed counts "l0230" = [28, 2, 3, 2]: ones at rows 3-4 of cols 5 and 6
            {
                "id": 203,
                "image_id": 25,
                "category_id": 18,
                "iscrowd": 0,
                "segmentation": {"size": [5, 7], "counts": "l0230"},
            },
        ],
    }  # fmt: skip


def _write(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "instances_train2014.json"
    path.write_text(json.dumps(data))
    return path


def _read(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        assert image.mode == "L"
        return np.asarray(image).copy()


def test_masks_labels_and_summary_default_crowd_ignore(tmp_path: Path) -> None:
    out, labels = tmp_path / "SegmentationClass" / "train2014", tmp_path / "cls_labels.json"
    summary = convert_coco_instances(_write(tmp_path, _instances()), out, labels, progress=False)

    np.testing.assert_array_equal(_read(out / f"{NAME_A}.png"), MASK_A)
    np.testing.assert_array_equal(_read(out / f"{NAME_B}.png"), _mask_b(255))
    np.testing.assert_array_equal(_read(out / f"{NAME_C}.png"), np.zeros((3, 4), np.uint8))
    assert sorted(p.name for p in out.iterdir()) == [f"{NAME_A}.png", f"{NAME_B}.png", f"{NAME_C}.png"]
    assert json.loads(labels.read_text()) == {
        "num_classes": 4,
        "class_names": ["background", "person", "dog", "bottle"],
        "category_ids": [0, 1, 18, 44],
        "labels": {NAME_A: [1, 2], NAME_B: [2, 3], NAME_C: []},
    }
    assert summary == {
        "images": 3,
        "written": 3,
        "skipped": 0,
        "repaired": 0,
        "annotations": 5,
        "crowd_annotations": 1,
        "images_without_annotations": 1,
        "images_without_labels": 1,
        "num_classes": 4,
    }


@pytest.mark.parametrize(("crowd", "crowd_value", "labels_b"), [("class", 1, [1, 2, 3]), ("skip", 0, [2, 3])])
def test_crowd_modes(tmp_path: Path, crowd: str, crowd_value: int, labels_b: list[int]) -> None:
    out, labels = tmp_path / "masks", tmp_path / "labels.json"
    convert_coco_instances(_write(tmp_path, _instances()), out, labels, crowd=crowd, progress=False)  # type: ignore[arg-type]
    # "class": the crowd (area 12) is painted before the smaller dog (area 4), so the dog stays on top.
    np.testing.assert_array_equal(_read(out / f"{NAME_B}.png"), _mask_b(crowd_value))
    np.testing.assert_array_equal(_read(out / f"{NAME_A}.png"), MASK_A)
    assert json.loads(labels.read_text())["labels"][NAME_B] == labels_b


def test_crowd_ignore_lies_under_non_crowd_instances() -> None:
    # A crowd region covering the whole image stays 255 only where no non-crowd instance is.
    everything = instance_rle([[0, 0, 4, 0, 4, 3, 0, 3]], 3, 4)
    box = instance_rle([[1, 1, 3, 1, 3, 2, 1, 2]], 3, 4)
    expected = np.full((3, 4), 255, np.uint8)
    expected[1, 1:3] = 7
    np.testing.assert_array_equal(paint_mask(3, 4, [(7, box)], [everything]), expected)


def test_equal_areas_keep_json_order() -> None:
    left = instance_rle([[0, 0, 2, 0, 2, 1, 0, 1]], 1, 3)  # cols 0-1
    right = instance_rle([[1, 0, 3, 0, 3, 1, 1, 1]], 1, 3)  # cols 1-2, same area: painted later, wins col 1
    np.testing.assert_array_equal(paint_mask(1, 3, [(1, left), (2, right)], []), [[1, 2, 2]])
    np.testing.assert_array_equal(paint_mask(1, 3, [(2, right), (1, left)], []), [[1, 1, 2]])


def test_resume_skips_valid_rewrites_damaged_and_never_deletes(tmp_path: Path) -> None:
    instances, out = _write(tmp_path, _instances()), tmp_path / "masks"
    out.mkdir()
    sentinel = np.full((6, 8), 7, np.uint8)
    write_grey_png(out / f"{NAME_A}.png", sentinel)  # valid and right size: must be kept as is
    (out / f"{NAME_B}.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")  # unreadable: rewritten
    write_grey_png(out / f"{NAME_C}.png", np.zeros((2, 2), np.uint8))  # wrong size: rewritten
    (out / "unrelated.txt").write_text("keep me")

    summary = convert_coco_instances(instances, out, progress=False)
    assert (summary["written"], summary["skipped"], summary["repaired"]) == (2, 1, 2)
    np.testing.assert_array_equal(_read(out / f"{NAME_A}.png"), sentinel)
    np.testing.assert_array_equal(_read(out / f"{NAME_B}.png"), _mask_b(255))
    np.testing.assert_array_equal(_read(out / f"{NAME_C}.png"), np.zeros((3, 4), np.uint8))

    again = convert_coco_instances(instances, out, progress=False)
    assert (again["written"], again["skipped"], again["repaired"]) == (0, 3, 0)

    forced = convert_coco_instances(instances, out, overwrite=True, progress=False)
    assert (forced["written"], forced["skipped"], forced["repaired"]) == (3, 0, 0)
    np.testing.assert_array_equal(_read(out / f"{NAME_A}.png"), MASK_A)
    assert (out / "unrelated.txt").read_text() == "keep me"
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]


def test_image_ids_subset(tmp_path: Path) -> None:
    out, labels = tmp_path / "masks", tmp_path / "labels.json"
    summary = convert_coco_instances(_write(tmp_path, _instances()), out, labels, image_ids=[25], progress=False)
    assert [p.name for p in out.iterdir()] == [f"{NAME_B}.png"]
    assert json.loads(labels.read_text())["labels"] == {NAME_B: [2, 3]}
    assert (summary["images"], summary["annotations"]) == (1, 3)
    with pytest.raises(DatasetError, match=r"image ids \[12345\] are not in 'images'"):
        convert_coco_instances(_write(tmp_path, _instances()), out, image_ids=[25, 12345], progress=False)


def test_degenerate_polygons_are_dropped_not_read_as_boxes() -> None:
    # pycocotools reads a 4-number list as a box [x, y, w, h]; two points enclose nothing.
    assert instance_rle([[1, 1, 3, 3]], 4, 4) is None
    assert instance_rle([], 4, 4) is None
    rle = instance_rle([[1, 1, 3, 3], [0, 0, 2, 0, 2, 2, 0, 2]], 4, 4)
    expected = np.zeros((4, 4), np.uint8)
    expected[0:2, 0:2] = 1
    np.testing.assert_array_equal(mask_utils.decode(rle), expected)


def test_counts_string_decoder_matches_pycocotools() -> None:
    assert _counts_from_string(b"l0230") == [28, 2, 3, 2]
    generator = np.random.default_rng(0)
    for height, width in [(5, 7), (13, 9), (40, 33)]:
        mask = (generator.random((height, width)) < 0.4).astype(np.uint8)
        mask[height // 2 :, : width // 2] = 1  # a long run: multi-chunk values and negative deltas
        encoded = mask_utils.encode(np.asfortranarray(mask))
        counts = _counts_from_string(encoded["counts"])
        assert sum(counts) == height * width
        again = mask_utils.frPyObjects({"size": [height, width], "counts": counts}, height, width)
        np.testing.assert_array_equal(mask_utils.decode(again), mask)


def test_missing_and_invalid_json_name_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "annotations" / "instances_val2014.json"
    with pytest.raises(DatasetError, match=r"instances_val2014\.json does not exist"):
        convert_coco_instances(missing, tmp_path / "out", progress=False)
    broken = tmp_path / "instances_train2014.json"
    broken.write_text('{"images": [\n{"id": 1,')
    with pytest.raises(DatasetError, match=r"instances_train2014\.json is not valid JSON \(line 2"):
        convert_coco_instances(broken, tmp_path / "out", progress=False)
    broken.write_text('{"images": [], "annotations": []}')
    with pytest.raises(DatasetError, match=r"instances_train2014\.json has no 'categories' list"):
        convert_coco_instances(broken, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def test_unknown_image_or_category_id_fails_before_writing(tmp_path: Path) -> None:
    data = _instances()
    data["annotations"].append({"id": 999, "image_id": 77, "category_id": 1, "iscrowd": 0, "segmentation": []})
    with pytest.raises(DatasetError, match=r"annotations\[5\] \(id 999\) refers to image_id 77, which is not in"):
        convert_coco_instances(_write(tmp_path, data), tmp_path / "out", tmp_path / "l.json", progress=False)
    data["annotations"][-1].update(image_id=9, category_id=12)
    with pytest.raises(DatasetError, match=r"\(id 999\) refers to category_id 12, which is not in 'categories'"):
        convert_coco_instances(_write(tmp_path, data), tmp_path / "out", tmp_path / "l.json", progress=False)
    assert not (tmp_path / "out").exists() and not (tmp_path / "l.json").exists()


@pytest.mark.parametrize(
    ("segmentation", "message"),
    [
        ({"size": [5, 7], "counts": [17, 3, 2]}, "sum to 5x7 = 35 pixels"),
        ({"size": [5, 7], "counts": "l02;"}, "sum to 5x7 = 35 pixels"),
        ({"size": [5, 7], "counts": "l"}, "ends inside a value"),
        ({"size": [6, 7], "counts": [42]}, r"RLE size \[6, 7\] differs from the image size \[5, 7\]"),
        ([[0, 0, 6, 0, 0]], "odd number of coordinates"),
    ],
)
def test_malformed_segmentation_names_the_annotation(tmp_path: Path, segmentation: object, message: str) -> None:
    data = _instances()
    data["annotations"][3]["segmentation"] = segmentation
    with pytest.raises(DatasetError, match=rf"annotation id 202 of {NAME_B} has a malformed segmentation.*{message}"):
        convert_coco_instances(_write(tmp_path, data), tmp_path / "out", progress=False)


def test_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    instances, out, labels = _write(tmp_path, _instances()), tmp_path / "masks", tmp_path / "labels.json"
    argv = ["--instances", str(instances), "--out", str(out), "--labels", str(labels), "--crowd", "skip"]
    assert main([*argv, "--no-progress", "--list", str(tmp_path / "train.txt")]) == 0
    printed = capsys.readouterr().out
    assert "3 images: 3 masks written" in printed and "list of the 2 labelled" in printed
    # the split list WSSS work uses: the images with a class (C has no annotation), sorted
    assert (tmp_path / "train.txt").read_text() == "".join(f"{name}\n" for name in sorted((NAME_A, NAME_B)))
    np.testing.assert_array_equal(_read(out / f"{NAME_B}.png"), _mask_b(0))
    assert main(["--instances", str(tmp_path / "nope.json"), "--out", str(out), "--no-progress"]) == 1
    assert "nope.json does not exist" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--instances", str(instances), "--out", str(out), "--crowd", "maybe"])

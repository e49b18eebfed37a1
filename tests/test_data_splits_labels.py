"""Split list files (both published line styles, safety, aliases) and image-level label sources."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest

from wsss_lightning.data.io import DatasetError, write_grey_png, write_palette_png
from wsss_lightning.data.labels import AugmentedCopyLabels, ImageLabels, labels_from_mask, labels_from_xml
from wsss_lightning.data.palette import VOC_CLASSES
from wsss_lightning.data.splits import ListEntry, read_id_list, resolve_split_file, split_candidates

# ------------------------------------------------------------------------------------------------ splits


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def test_plain_ids_and_deeplab_pairs_give_the_same_ids(tmp_path: Path) -> None:
    plain = _write(tmp_path / "plain.txt", "2007_000032\n2007_000039\n2008_000002\n")
    pairs = _write(
        tmp_path / "pairs.txt",
        "/JPEGImages/2007_000032.jpg /SegmentationClassAug/2007_000032.png\n"
        "/JPEGImages/2007_000039.jpg /SegmentationClassAug/2007_000039.png\n"
        "JPEGImages/2008_000002.jpg SegmentationClassAug/2008_000002.png\n",
    )
    expected = ["2007_000032", "2007_000039", "2008_000002"]
    assert [e.id for e in read_id_list(plain)] == expected
    assert [e.id for e in read_id_list(pairs)] == expected
    # AuxSegNet's test.txt style: a single image path per line
    single = _write(tmp_path / "test.txt", "/JPEGImages/2008_000006.jpg\n")
    assert [e.id for e in read_id_list(single)] == ["2008_000006"]


def test_comments_and_blank_lines_are_skipped_and_lines_are_counted(tmp_path: Path) -> None:
    path = _write(tmp_path / "val.txt", "# header comment\n\n2007_000033  # inline comment\n   \n2007_000042\r\n")
    entries = read_id_list(path)
    assert entries == [ListEntry("2007_000033", path, 3), ListEntry("2007_000042", path, 5)]
    assert entries[1].where() == "listed in val.txt line 5"


@pytest.mark.parametrize(
    ("text", "line", "needle"),
    [
        ("2007_000032\n2007_000039\n2007_000032\n", 3, "listed twice (first on line 1)"),
        ("2007_000032\n../../etc/passwd\n", 2, "'..'"),
        ("2007_000032\n/JPEGImages/../x.jpg /SegmentationClassAug/x.png\n", 2, "'..'"),
        ("2007_000032\n\n2007$000039 x\n", 3, "not a valid image id"),
        ("2007_000032\nfoo;rm\n", 2, "not a valid image id"),
    ],
)
def test_bad_lines_are_rejected_with_file_and_line(tmp_path: Path, text: str, line: int, needle: str) -> None:
    path = _write(tmp_path / "train_aug.txt", text)
    with pytest.raises(DatasetError) as error:
        read_id_list(path)
    message = str(error.value)
    assert str(path) in message and f"line {line}" in message and needle in message


def test_a_missing_list_file_is_a_dataset_error(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="does not exist"):
        read_id_list(tmp_path / "nope.txt")


@pytest.mark.parametrize(
    "relative",
    [
        "ImageSets/Segmentation/trainaug.txt",
        "ImageSets/Segmentation/train_aug_id.txt",
        "train_aug_id.txt",
        "ImageSets/Segmentation/aug.txt",  # mmsegmentation's name
        "list/train_aug.txt",  # DeepLab's exper/voc12/list/, copied under the root
    ],
)
def test_train_aug_is_found_under_its_aliases(tmp_path: Path, relative: str) -> None:
    target = _write(tmp_path / relative, "2007_000032\n")
    assert resolve_split_file(tmp_path, "train_aug") == target
    assert resolve_split_file(tmp_path, "trainaug") == target


def test_resolve_prefers_the_first_candidate_and_accepts_paths(tmp_path: Path) -> None:
    first = _write(tmp_path / "ImageSets/Segmentation/train_aug.txt", "a\n")
    _write(tmp_path / "ImageSets/Segmentation/trainaug.txt", "b\n")
    assert resolve_split_file(tmp_path, "train_aug") == first
    assert split_candidates(tmp_path, "val")[:2] == [
        tmp_path / "ImageSets/Segmentation/val.txt",
        tmp_path / "ImageSets/Segmentation/val_id.txt",
    ]
    # a path relative to the root, and an absolute one
    assert resolve_split_file(tmp_path, "ImageSets/Segmentation/trainaug.txt") == tmp_path / (
        "ImageSets/Segmentation/trainaug.txt"
    )
    elsewhere = _write(tmp_path.parent / f"{tmp_path.name}_lists" / "mine.txt", "c\n")
    assert resolve_split_file(tmp_path, str(elsewhere)) == elsewhere
    with pytest.raises(DatasetError, match="does not exist"):
        resolve_split_file(tmp_path, "lists/absent.txt")


def test_unresolved_split_reports_the_places_tried(tmp_path: Path) -> None:
    with pytest.raises(DatasetError) as error:
        resolve_split_file(tmp_path, "train_aug")
    message = str(error.value)
    for tried in (
        "ImageSets/Segmentation/train_aug.txt",
        "ImageSets/Segmentation/trainaug.txt",
        "ImageSets/Segmentation/train_aug_id.txt",
    ):
        assert tried in message
    assert str(tmp_path) in message and "--data.root" in message
    # VOC without SBD's set: the message names the command that builds it and the plain-VOC alternative
    assert "wsss data sbd-masks --sbd benchmark_RELEASE" in message and "--data.train_split train" in message
    with pytest.raises(DatasetError) as error:
        resolve_split_file(tmp_path, "val")
    assert "sbd-masks" not in str(error.value)


def test_files_saved_with_a_utf8_byte_order_mark_read_like_plain_ones(tmp_path: Path) -> None:
    """Windows editors save UTF-8 with a BOM; it must not become part of the first id or label key."""
    bom = b"\xef\xbb\xbf"
    listing = tmp_path / "train.txt"
    listing.write_bytes(bom + b"2007_000032\r\n2007_000039\r\n")
    assert [entry.id for entry in read_id_list(listing)] == ["2007_000032", "2007_000039"]
    as_json = tmp_path / "labels.json"
    as_json.write_bytes(bom + json.dumps({"a": [1, 3]}).encode())
    as_txt = tmp_path / "labels.txt"
    as_txt.write_bytes(bom + b"a 1 3\r\n")
    for path, source in ((as_json, "json"), (as_txt, "txt")):
        np.testing.assert_array_equal(ImageLabels(source, 4, CLASSES, labels_file=path).get("a"), [1, 0, 1])


# ------------------------------------------------------------------------------------------------ labels

CLASSES = ("background", "cat", "dog", "potted plant")


def _xml(path: Path, objects: list[tuple[str, int]]) -> Path:
    body = "".join(
        f"<object><name>{name}</name><difficult>{difficult}</difficult><bndbox><xmin>1</xmin></bndbox></object>"
        for name, difficult in objects
    )
    return _write(path, f"<annotation><filename>x.jpg</filename>{body}</annotation>")


def test_xml_labels_include_difficult_objects(tmp_path: Path) -> None:
    path = _xml(tmp_path / "a.xml", [("dog", 0), ("cat", 1), ("dog", 1)])
    np.testing.assert_array_equal(labels_from_xml(path, CLASSES), [1.0, 1.0, 0.0])
    # names are matched ignoring case and spaces (VOC "pottedplant" vs "potted plant")
    path = _xml(tmp_path / "b.xml", [("PottedPlant", 0)])
    np.testing.assert_array_equal(labels_from_xml(path, CLASSES), [0.0, 0.0, 1.0])
    assert labels_from_xml(path, CLASSES).dtype == np.float32


def test_xml_unknown_class_or_broken_file_names_the_file(tmp_path: Path) -> None:
    path = _xml(tmp_path / "2007_000032.xml", [("dog", 0), ("unicorn", 0)])
    with pytest.raises(DatasetError, match=r"2007_000032\.xml.*'unicorn'") as error:
        labels_from_xml(path, CLASSES)
    # the message names the configured classes and the setting that fixes it
    assert "(cat, dog, potted plant)" in str(error.value) and "--data.class_names" in str(error.value)
    background = _xml(tmp_path / "bg.xml", [("background", 0)])
    with pytest.raises(DatasetError, match=r"bg\.xml"):
        labels_from_xml(background, CLASSES)
    broken = _write(tmp_path / "broken.xml", "<annotation><object>")
    with pytest.raises(DatasetError, match=r"broken\.xml is not valid XML"):
        labels_from_xml(broken, CLASSES)


def test_mask_labels_ignore_background_and_255() -> None:
    mask = np.array([[0, 0, 255], [3, 255, 3]], dtype=np.uint8)
    np.testing.assert_array_equal(labels_from_mask(mask, 4), [0.0, 0.0, 1.0])
    np.testing.assert_array_equal(labels_from_mask(np.full((2, 2), 255, np.uint8), 4), [0.0, 0.0, 0.0])
    with pytest.raises(DatasetError, match=r"m\.png: class index 7 is outside 1\.\.3"):
        labels_from_mask(np.array([[7]], np.uint8), 4, where="m.png")


def test_image_labels_from_masks_folder(tmp_path: Path) -> None:
    write_palette_png(tmp_path / "gt" / "a.png", np.array([[0, 2], [255, 2]], np.uint8))
    write_grey_png(tmp_path / "gt" / "b.png", np.array([[1, 3], [0, 0]], np.uint8))
    labels = ImageLabels("masks", 4, CLASSES, mask_dir=tmp_path / "gt")
    np.testing.assert_array_equal(labels.get("a"), [0.0, 1.0, 0.0])
    np.testing.assert_array_equal(labels.get("b"), [1.0, 0.0, 1.0])
    assert labels.has("a") and not labels.has("c")
    with pytest.raises(DatasetError, match=r"c\.png does not exist"):
        labels.get("c")


def test_image_labels_from_json_and_txt(tmp_path: Path) -> None:
    nested = _write(tmp_path / "labels.json", json.dumps({"labels": {"a": [1, 3], "b": []}}))
    flat = _write(tmp_path / "flat.json", json.dumps({"a": [2]}))
    text = _write(tmp_path / "labels.txt", "# id classes\na 1 3\nb\n\nc 2  # a comment\n")
    for path, expected in ((nested, {"a": [1, 0, 1], "b": [0, 0, 0]}), (flat, {"a": [0, 1, 0]})):
        labels = ImageLabels("auto", 4, CLASSES, labels_file=path)
        assert labels.source == "json"
        for key, vector in expected.items():
            np.testing.assert_array_equal(labels.get(key), vector)
    labels = ImageLabels("txt", 4, CLASSES, labels_file=text)
    np.testing.assert_array_equal(labels.get("c"), [0, 1, 0])
    np.testing.assert_array_equal(labels.get("b"), [0, 0, 0])
    assert labels.unknown_ids(["a", "b"]) == ["c"]
    with pytest.raises(DatasetError, match=r"labels\.txt has no label for id zzz"):
        labels.get("zzz")
    bad = _write(tmp_path / "bad.json", json.dumps({"a": [9]}))
    with pytest.raises(DatasetError, match=r"bad\.json id a: class index 9"):
        ImageLabels("json", 4, CLASSES, labels_file=bad)
    bad_txt = _write(tmp_path / "bad.txt", "a 1\nb one\n")
    with pytest.raises(DatasetError, match=r"bad\.txt line 2"):
        ImageLabels("txt", 4, CLASSES, labels_file=bad_txt)


def test_npy_labels_need_the_explicit_pickle_opt_in(tmp_path: Path) -> None:
    path = tmp_path / "cls_labels.npy"
    np.save(path, {"a": np.array([0, 1, 0], np.float32), 7: np.array([1, 0, 1], np.float32)}, allow_pickle=True)
    with pytest.raises(DatasetError) as error:
        ImageLabels("auto", 4, CLASSES, labels_file=path)
    message = str(error.value)
    assert "cls_labels.npy" in message and "--data.allow_pickle_labels true" in message
    labels = ImageLabels("npy", 4, CLASSES, labels_file=path, allow_pickle=True)
    np.testing.assert_array_equal(labels.get("a"), [0, 1, 0])
    np.testing.assert_array_equal(labels.get("7"), [1, 0, 1])  # integer keys (COCO ids) become strings
    # IRN's cls_labels.npy keys VOC ids by encode_int_filename: 2007_000032 -> 2007000032 (np.int64 from loadtxt)
    irn = tmp_path / "irn_cls_labels.npy"
    np.save(irn, {np.int64(2007000032): np.array([0, 0, 1], np.float32), 2011003276: np.ones(3)}, allow_pickle=True)
    irn_labels = ImageLabels("npy", 4, CLASSES, labels_file=irn, allow_pickle=True)
    np.testing.assert_array_equal(irn_labels.get("2007_000032"), [0, 0, 1])
    assert irn_labels.has("2011_003276") and not irn_labels.has("2011003276")
    assert irn_labels.unknown_ids(["2007_000032", "2011_003276"]) == []
    wrong = tmp_path / "wrong.npy"
    np.save(wrong, {"a": np.ones(5, np.float32)}, allow_pickle=True)
    with pytest.raises(DatasetError, match="has 5 entries, expected 3"):
        ImageLabels("npy", 4, CLASSES, labels_file=wrong, allow_pickle=True)


def test_npy_refusal_happens_before_unpickling(tmp_path: Path) -> None:
    """Without the opt-in the file is never opened: a malicious pickle cannot run."""

    class Boom:
        def __reduce__(self):  # would raise on load if the file were unpickled
            return (int, ("not a number",))

    path = tmp_path / "evil.npy"
    path.write_bytes(pickle.dumps(Boom()))
    with pytest.raises(DatasetError, match="unpickling can run code"):
        ImageLabels("npy", 4, CLASSES, labels_file=path)


def test_auto_source_picks_xml_when_annotations_exist(tmp_path: Path) -> None:
    annotations, masks = tmp_path / "Annotations", tmp_path / "SegmentationClassAug"
    _xml(annotations / "a.xml", [("cat", 0)])
    write_grey_png(masks / "a.png", np.array([[0, 2]], np.uint8))  # disagrees on purpose: xml must win
    labels = ImageLabels("auto", 4, CLASSES, annotation_dir=annotations, mask_dir=masks)
    assert labels.source == "xml"
    np.testing.assert_array_equal(labels.get("a"), [1, 0, 0])
    assert labels.path_for("a") == annotations / "a.xml"
    fallback = ImageLabels("auto", 4, CLASSES, annotation_dir=tmp_path / "absent", mask_dir=masks)
    assert fallback.source == "masks"
    np.testing.assert_array_equal(fallback.get("a"), [0, 1, 0])
    with pytest.raises(DatasetError, match="needs an Annotations folder"):
        ImageLabels("xml", 4, CLASSES, annotation_dir=tmp_path / "absent")
    with pytest.raises(DatasetError, match="needs --data.labels_file"):
        ImageLabels("json", 4, CLASSES)


def test_augmented_copies_take_their_parents_label(tmp_path: Path) -> None:
    _xml(tmp_path / "2007_000032.xml", [("dog", 0)])
    parent = ImageLabels("xml", len(VOC_CLASSES), VOC_CLASSES, annotation_dir=tmp_path)
    copies = AugmentedCopyLabels(parent)
    assert AugmentedCopyLabels.parent_id("2007_000032_3") == "2007_000032"
    assert AugmentedCopyLabels.parent_id("2007_000032_12") == "2007_000032"
    assert AugmentedCopyLabels.parent_id("COCO_train2014_000000000009_0") == "COCO_train2014_000000000009"
    assert AugmentedCopyLabels.parent_id("image") == "image"  # no numeric suffix: itself
    expected = np.zeros(20, np.float32)
    expected[VOC_CLASSES.index("dog") - 1] = 1.0
    np.testing.assert_array_equal(copies.get("2007_000032_3"), expected)
    assert copies.has("2007_000032_0") and not copies.has("2007_000099_0")
    assert copies.path_for("2007_000032_5") == tmp_path / "2007_000032.xml"
    assert copies.source == "xml"

"""``wsss data sbd-masks``: SBD's ``cls/*.mat`` + VOC's masks -> ``SegmentationClassAug`` and ``train_aug.txt``.

A hand-made SBD release (MATLAB v5 files written by scipy with the ``GTcls`` struct of the real ones) next to a
hand-made VOC 2012 tree; every expected mask and list is written out here.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy.io import savemat
from scipy.sparse import csc_matrix

from wsss_lightning.cli import main as cli_main
from wsss_lightning.data.io import DatasetError, read_label
from wsss_lightning.data.palette import voc_palette
from wsss_lightning.data.sbd_convert import convert_sbd, read_sbd_mask, train_aug_ids

H, W = 6, 8
# SBD train {a, b, c}, SBD val {d, v1}; VOC train {a, t1}, VOC val {v1}.
SBD_TRAIN, SBD_VAL = ["2008_000a", "2008_000b", "2008_000c"], ["2008_000d", "2007_00v1"]
VOC_TRAIN, VOC_VAL = ["2008_000a", "2007_00t1"], ["2007_00v1"]


def _sbd_mask(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 21, size=(H, W)).astype(np.uint8)


def _voc_mask(seed: int) -> np.ndarray:
    mask = _sbd_mask(seed + 100)
    mask[0] = 255  # VOC's boundary / void label
    return mask


def _write_mat(path: Path, segmentation: np.ndarray) -> None:
    """The release's ``GTcls``: ``Segmentation`` (uint8), ``Boundaries`` (a 20×1 cell of sparse logical maps, one
    per class) and ``CategoriesPresent``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    boundaries = np.empty((20, 1), dtype=object)
    for k in range(20):
        boundaries[k, 0] = csc_matrix(segmentation == k + 1)
    gtcls = {
        "Segmentation": segmentation,
        "Boundaries": boundaries,
        "CategoriesPresent": np.unique(segmentation[segmentation > 0]).astype(np.uint8).reshape(-1, 1),
    }
    savemat(str(path), {"GTcls": gtcls})


def _write_palette_png(path: Path, mask: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(mask, mode="P")
    image.putpalette(voc_palette().reshape(-1).tolist())
    image.save(path)


def _tree(tmp_path: Path) -> tuple[Path, Path, dict[str, np.ndarray]]:
    """Write both trees; return the SBD root, the VOC root and the expected mask of every id."""
    sbd = tmp_path / "benchmark_RELEASE" / "dataset"
    voc = tmp_path / "VOCdevkit" / "VOC2012"
    expected: dict[str, np.ndarray] = {}
    for seed, identifier in enumerate(SBD_TRAIN + SBD_VAL):
        mask = _sbd_mask(seed)
        _write_mat(sbd / "cls" / f"{identifier}.mat", mask)
        expected[identifier] = mask
    (sbd / "train.txt").write_text("".join(f"{i}\n" for i in SBD_TRAIN))
    (sbd / "val.txt").write_text("".join(f"{i}\n" for i in SBD_VAL))
    for seed, identifier in enumerate(VOC_TRAIN + VOC_VAL):
        mask = _voc_mask(seed)
        _write_palette_png(voc / "SegmentationClass" / f"{identifier}.png", mask)
        expected[identifier] = mask  # VOC wins over SBD (2008_000a, 2007_00v1)
    lists = voc / "ImageSets" / "Segmentation"
    lists.mkdir(parents=True)
    (lists / "train.txt").write_text("".join(f"{i}\n" for i in VOC_TRAIN))
    (lists / "val.txt").write_text("".join(f"{i}\n" for i in VOC_VAL))
    (voc / "JPEGImages").mkdir(parents=True)
    for identifier in expected:
        Image.new("RGB", (W, H), (90, 120, 40)).save(voc / "JPEGImages" / f"{identifier}.jpg")
    return sbd.parent, voc, expected


def test_train_aug_is_sbd_and_voc_train_minus_voc_val() -> None:
    assert train_aug_ids(SBD_TRAIN, SBD_VAL, VOC_TRAIN, VOC_VAL) == [
        "2007_00t1",
        "2008_000a",
        "2008_000b",
        "2008_000c",
        "2008_000d",
    ]


def test_masks_and_list_are_written_with_voc_winning(tmp_path: Path) -> None:
    sbd, voc, expected = _tree(tmp_path)
    summary = convert_sbd(sbd, voc, progress=False)
    assert summary == {
        "sbd_masks": 3,  # b, c, d (a and v1 are VOC ids)
        "voc_masks": 3,
        "written": 6,
        "skipped": 0,
        "repaired": 0,
        "train_aug": 5,
        "train_aug_file": "written",
    }
    for identifier, mask in expected.items():
        path = voc / "SegmentationClassAug" / f"{identifier}.png"
        assert Image.open(path).mode == "L"
        np.testing.assert_array_equal(read_label(path), mask, err_msg=identifier)
    assert (voc / "SegmentationClassAug" / "2008_000a.png").is_file()
    assert read_label(voc / "SegmentationClassAug" / "2008_000a.png")[0].tolist() == [255] * W  # VOC's, not SBD's
    listed = (voc / "ImageSets" / "Segmentation" / "train_aug.txt").read_text().split()
    assert listed == train_aug_ids(SBD_TRAIN, SBD_VAL, VOC_TRAIN, VOC_VAL)


def test_a_rerun_keeps_valid_masks_and_repairs_damaged_ones(tmp_path: Path) -> None:
    sbd, voc, expected = _tree(tmp_path)
    convert_sbd(sbd, voc, progress=False)
    (voc / "SegmentationClassAug" / "2008_000b.png").write_bytes(b"not a png")
    summary = convert_sbd(sbd, voc, progress=False)
    assert (summary["written"], summary["skipped"], summary["repaired"]) == (1, 5, 1)
    assert summary["train_aug_file"] == "unchanged"
    np.testing.assert_array_equal(read_label(voc / "SegmentationClassAug" / "2008_000b.png"), expected["2008_000b"])


def test_an_existing_different_train_aug_list_is_kept_unless_overwritten(tmp_path: Path) -> None:
    sbd, voc, _ = _tree(tmp_path)
    list_path = voc / "ImageSets" / "Segmentation" / "train_aug.txt"
    list_path.write_text("2008_000a\n")
    assert convert_sbd(sbd, voc, progress=False)["train_aug_file"] == "kept"
    assert list_path.read_text() == "2008_000a\n"
    assert convert_sbd(sbd, voc, overwrite=True, progress=False)["train_aug_file"] == "written"
    assert len(list_path.read_text().split()) == 5


def test_the_cli_accepts_the_release_folder_and_reports_counts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sbd, voc, _ = _tree(tmp_path)
    assert sbd.name == "benchmark_RELEASE"  # the folder benchmark.tgz unpacks to; dataset/ is found below it
    assert cli_main(["data", "sbd-masks", "--sbd", str(sbd), "--voc", str(voc), "--no-progress"]) == 0
    captured = capsys.readouterr()
    assert "3 masks from SBD, 3 from VOC SegmentationClass: 6 written" in captured.out
    assert "train_aug: 5 ids" in captured.out
    assert "the real SBD + VOC 2012 sets give 10582" in captured.err


def test_read_sbd_mask_rejects_what_is_not_a_class_mask(tmp_path: Path) -> None:
    inst = tmp_path / "inst.mat"
    savemat(str(inst), {"GTinst": {"Segmentation": np.zeros((H, W), np.uint8)}})
    with pytest.raises(DatasetError, match="no GTcls.Segmentation.*inst"):
        read_sbd_mask(inst)
    broken = tmp_path / "broken.mat"
    broken.write_bytes(b"MATLAB 5.0 MAT-file, truncated")
    with pytest.raises(DatasetError, match="broken.mat is not a readable MATLAB file"):
        read_sbd_mask(broken)
    out_of_range = tmp_path / "range.mat"
    _write_mat(out_of_range, np.full((H, W), 40, np.uint8))
    with pytest.raises(DatasetError, match=r"values \[40\], outside the class indices 0..20"):
        read_sbd_mask(out_of_range)
    with pytest.raises(DatasetError, match="missing.mat does not exist; re-extract benchmark.tgz"):
        read_sbd_mask(tmp_path / "missing.mat")
    # re-saved from MATLAB as double: whole numbers read as the class map, anything else is refused
    doubled = tmp_path / "double.mat"
    _write_mat(doubled, _sbd_mask(3).astype(np.float64))
    read = read_sbd_mask(doubled)
    assert read.dtype == np.uint8
    np.testing.assert_array_equal(read, _sbd_mask(3))
    fractional = tmp_path / "fraction.mat"
    savemat(str(fractional), {"GTcls": {"Segmentation": np.full((H, W), 0.5)}})
    with pytest.raises(DatasetError, match="GTcls.Segmentation is float64 of shape"):
        read_sbd_mask(fractional)


def test_a_mask_of_the_wrong_size_fails_before_anything_is_written(tmp_path: Path) -> None:
    sbd, voc, _ = _tree(tmp_path)
    _write_mat(sbd / "dataset" / "cls" / "2008_000d.mat", np.zeros((H + 1, W), np.uint8))
    with pytest.raises(DatasetError, match=r"2008_000d.mat is 8x7 but .*2008_000d.jpg is 8x6"):
        convert_sbd(sbd, voc, progress=False)
    assert not any((voc / "SegmentationClassAug").glob("*.png"))
    assert not (voc / "ImageSets" / "Segmentation" / "train_aug.txt").exists()


def test_missing_inputs_name_the_folder_to_pass(tmp_path: Path) -> None:
    sbd, voc, _ = _tree(tmp_path)
    with pytest.raises(DatasetError, match="holds no SBD release"):
        convert_sbd(tmp_path / "elsewhere", voc, progress=False)
    (voc / "JPEGImages" / "2008_000c.jpg").unlink()
    with pytest.raises(DatasetError, match=r"2008_000c.jpg does not exist.*VOCdevkit/VOC2012"):
        convert_sbd(sbd, voc, progress=False)

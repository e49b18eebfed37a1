"""Set-level saliency sanity (data/saliency_sanity.py): 0/1, constant and inverted map sets are found on hand-made
maps, healthy sets (including odd single maps) are not, and the dataset check refuses to train on such a folder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from wsss_lightning.data.check import check_datamodule
from wsss_lightning.data.datamodule import WSSSDataModule
from wsss_lightning.data.io import DatasetError, read_saliency, write_grey_png
from wsss_lightning.data.saliency_sanity import diagnose_saliency_maps, map_statistics

VOC = Path("VOCdevkit/VOC2012")


def _object(height: int = 40, width: int = 40, top: int = 12, left: int = 10, size: int = 16) -> np.ndarray:
    """A white square object on black: a right-way-up saliency map."""
    saliency = np.zeros((height, width), np.uint8)
    saliency[top : top + size, left : left + size] = 255
    return saliency


def _write(folder: Path, maps: list[np.ndarray]) -> list[Path]:
    paths = []
    for index, saliency in enumerate(maps):
        paths.append(folder / f"{index:04d}.png")
        write_grey_png(paths[-1], saliency)
    return paths


def test_map_statistics_by_hand() -> None:
    saliency = np.zeros((20, 20), np.uint8)
    saliency[:2, :] = 255  # the top border band (20 // 10 = 2 rows) is white
    saliency[5:15, 5:15] = 51  # the centre (rows / columns 5..14) is 0.2
    stats = map_statistics(saliency)
    assert stats.maximum == 255 and not stats.single_level
    # the frame: 400 - 16 * 16 = 144 pixels, of which the 40 top-band ones are 1.0 (the centre square is inside)
    assert stats.border_mean == pytest.approx(40 / 144)
    assert stats.centre_mean == pytest.approx(0.2)
    assert stats.mean == pytest.approx((40 + 100 * 0.2) / 400)
    flat = map_statistics(np.full((3, 5), 7, np.uint8))  # tiny maps: a one-pixel band
    assert flat.single_level and flat.maximum == 7 and flat.border_mean == pytest.approx(7 / 255)


def test_healthy_sets_pass_with_odd_single_maps(tmp_path: Path) -> None:
    maps = [_object(top=4 + i % 20, left=2 + (3 * i) % 20) for i in range(30)]
    maps[3] = np.zeros((40, 40), np.uint8)  # an image with no salient object
    maps[7] = 255 - _object()  # one map bright on the border (an object filling the frame)
    maps[9] = (_object() > 0).astype(np.uint8)  # one 0/1 map among 0/255 ones
    assert diagnose_saliency_maps(_write(tmp_path, maps)) is None
    assert diagnose_saliency_maps([]) is None


def test_zero_one_maps_are_named_with_the_fix(tmp_path: Path) -> None:
    maps = [(_object(top=4 + i) > 0).astype(np.uint8) for i in range(10)]
    fault = diagnose_saliency_maps(_write(tmp_path, maps))
    assert fault is not None and "10 of 10 sampled maps hold only the grey levels 0 and 1" in fault
    assert "value * 255" in fault


def test_constant_maps_are_named(tmp_path: Path) -> None:
    maps = [np.full((30, 30), 255, np.uint8)] * 6 + [_object()] * 4
    fault = diagnose_saliency_maps(_write(tmp_path, maps))
    assert fault is not None and "6 of 10 sampled maps are a single grey level (255)" in fault


def test_inverted_maps_are_named(tmp_path: Path) -> None:
    maps = [255 - _object(top=4 + i, left=4 + 2 * i) for i in range(12)]
    fault = diagnose_saliency_maps(_write(tmp_path, maps))
    assert fault is not None and "look inverted" in fault and "12 of 12 sampled maps" in fault
    assert "255 - value" in fault
    # bright on the border but dark on average (small objects touching the frame): not called inverted
    dim = [np.zeros((40, 40), np.uint8) for _ in range(12)]
    for saliency in dim:
        saliency[:4, :] = 255
    assert diagnose_saliency_maps(_write(tmp_path / "dim", dim)) is None


def test_the_sample_is_evenly_spaced_and_skips_missing_files(tmp_path: Path) -> None:
    good = _write(tmp_path / "good", [_object()] * 4)
    bad = _write(tmp_path / "bad", [(_object() > 0).astype(np.uint8)] * 4)
    # 8 paths, 2 of them missing; a sample of 4 takes indices 0, 2, 5, 7 (np.linspace rounded)
    paths = [bad[0], tmp_path / "gone.png", bad[1], good[0], good[1], bad[2], tmp_path / "gone2.png", bad[3]]
    fault = diagnose_saliency_maps(paths, sample=4)
    assert fault is not None and "4 of 4 sampled maps" in fault
    assert diagnose_saliency_maps(paths, sample=3) is not None  # indices 0, 4, 7: two 0/1 maps of three


def _settings(demo: Path) -> dict:
    return {
        "root": str(demo / VOC),
        "dataset": "voc",
        "saliency_dir": str(demo / VOC / "saliency_map"),
        "saliency_test_sets": {"ECSSD": "../../ECSSD"},
        "num_workers": 0,
    }


def test_the_dataset_check_refuses_inverted_training_maps(tiny_demo_copy: Path) -> None:
    folder = tiny_demo_copy / VOC / "saliency_map"
    for path in sorted(folder.glob("*.png")):
        write_grey_png(path, 255 - read_saliency(path))
    report = check_datamodule(WSSSDataModule(**_settings(tiny_demo_copy)), stage="fit")
    faults = [p for p in report.errors if p.kind == "saliency maps carry no saliency"]
    assert len(faults) == 1 and faults[0].path == str(folder)
    assert "the off-the-shelf maps: the maps look inverted" in faults[0].message
    with pytest.raises(DatasetError, match="look inverted"):
        WSSSDataModule(**_settings(tiny_demo_copy)).setup("fit")


def test_the_dataset_check_refuses_zero_one_saliency_test_masks(tiny_demo_copy: Path) -> None:
    folder = tiny_demo_copy / "ECSSD" / "ground_truth_mask"
    for path in sorted(folder.glob("*.png")):
        write_grey_png(path, (read_saliency(path) > 127).astype(np.uint8))
    report = check_datamodule(WSSSDataModule(**_settings(tiny_demo_copy)), stage="test")
    faults = [p for p in report.errors if p.kind == "saliency maps carry no saliency"]
    assert len(faults) == 1 and Path(faults[0].path).resolve() == folder.resolve()
    assert faults[0].message.startswith("the ECSSD masks: ") and "0 and 1" in faults[0].message

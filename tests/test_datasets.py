"""SegmentationDataset on the tiny demo: the design's sample keys, dtypes and values, and its file errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from wsss_lightning.data.dataset import SegmentationDataset, find_image
from wsss_lightning.data.demo import DEMO_CLASSES
from wsss_lightning.data.io import DatasetError, read_image, read_label, read_saliency, write_grey_png
from wsss_lightning.data.labels import ImageLabels, labels_from_mask
from wsss_lightning.data.splits import ListEntry, read_id_list
from wsss_lightning.data.transforms import IMAGENET_MEAN, IMAGENET_STD, ScaleCropFlip

VOC = Path("VOCdevkit/VOC2012")
C = len(DEMO_CLASSES)


def _dataset(demo: Path, split: str = "train_aug", **kwargs) -> SegmentationDataset:
    root = demo / VOC
    defaults = dict(
        labels=ImageLabels("xml", C, DEMO_CLASSES, annotation_dir=root / "Annotations"),
        seg_dir=root / "SegmentationClassAug",
        sal_dir=root / "saliency_map",
    )
    defaults.update(kwargs)
    return SegmentationDataset(
        read_id_list(root / f"ImageSets/Segmentation/{split}.txt"), root / "JPEGImages", C, **defaults
    )


def test_sample_keys_dtypes_and_values(tiny_demo: Path) -> None:
    dataset = _dataset(tiny_demo)
    assert len(dataset) == 24 and dataset.ids == sorted(dataset.ids) and dataset.ids[0].startswith("2026_")
    sample = dataset[0]
    assert set(sample) == {"image", "cls_label", "seg", "sal", "name", "ori_size", "full_size", "index"}
    name = sample["name"]
    image = read_image(tiny_demo / VOC / "JPEGImages" / f"{name}.jpg")
    height, width = image.shape[:2]
    assert sample["image"].dtype == torch.float32 and sample["image"].shape == (3, height, width)
    expected = (image[5, 7, 1] / 255.0 - IMAGENET_MEAN[1]) / IMAGENET_STD[1]
    assert sample["image"][1, 5, 7].item() == pytest.approx(expected, abs=1e-5)
    gt = read_label(tiny_demo / VOC / "SegmentationClassAug" / f"{name}.png")
    assert sample["seg"].dtype == torch.uint8
    np.testing.assert_array_equal(sample["seg"].numpy(), gt)
    assert 255 in gt  # the demo's boundary band survives
    assert sample["sal"].dtype == torch.float32
    grey = read_saliency(tiny_demo / VOC / "saliency_map" / f"{name}.png")
    np.testing.assert_allclose(sample["sal"].numpy(), grey / np.float32(255.0), atol=1e-7)
    assert sample["sal"].min() >= 0.0 and sample["sal"].max() <= 1.0
    assert sample["cls_label"].dtype == torch.float32 and sample["cls_label"].shape == (C - 1,)
    np.testing.assert_array_equal(sample["cls_label"].numpy(), labels_from_mask(gt, C))  # XML agrees with mask
    assert sample["ori_size"].dtype == torch.int64 and sample["ori_size"].tolist() == [height, width]
    assert sample["index"] == 0


def test_every_label_matches_its_mask(tiny_demo: Path) -> None:
    dataset = _dataset(tiny_demo, sal_dir=None)
    for index in range(len(dataset)):
        arrays = dataset.load_arrays(index)
        np.testing.assert_array_equal(arrays["cls_label"], labels_from_mask(arrays["seg"], C))
        assert arrays["cls_label"].any()


def test_optional_maps_default_to_ignore(tiny_demo: Path) -> None:
    dataset = _dataset(tiny_demo, seg_dir=None, sal_dir=tiny_demo / "absent", labels=None)
    sample = dataset[1]
    assert torch.all(sample["seg"] == 255) and torch.all(sample["sal"] == 255.0)
    assert sample["seg"].shape == sample["image"].shape[1:] == sample["sal"].shape
    assert torch.all(sample["cls_label"] == 0) and sample["cls_label"].shape == (C - 1,)


def test_return_raw_and_transform(tiny_demo: Path) -> None:
    dataset = _dataset(tiny_demo, return_raw=True)
    raw = dataset[2]["raw"]
    name = dataset.ids[2]
    np.testing.assert_array_equal(raw.numpy(), read_image(tiny_demo / VOC / "JPEGImages" / f"{name}.jpg"))
    cropped = _dataset(tiny_demo, transform=ScaleCropFlip(crop_size=40, scale_range=(0.5, 0.6)))[2]
    assert cropped["image"].shape == (3, 40, 40) and cropped["seg"].shape == (40, 40)
    assert cropped["ori_size"].tolist() == list(raw.shape[:2])  # the size before the transform
    deferred = _dataset(tiny_demo, transform=ScaleCropFlip(crop_size=40), defer_transform=True)[2]
    assert isinstance(deferred["image"], np.ndarray) and deferred["image"].shape == raw.shape  # raw arrays


def test_required_maps_missing_name_the_file_and_list_line(tiny_demo_copy: Path) -> None:
    ids = _dataset(tiny_demo_copy).ids
    (tiny_demo_copy / VOC / "saliency_map" / f"{ids[3]}.png").unlink()
    dataset = _dataset(tiny_demo_copy, sal_required=True)
    with pytest.raises(DatasetError) as error:
        dataset[3]
    message = str(error.value)
    assert f"saliency_map/{ids[3]}.png is missing" in message and "train_aug.txt line 4" in message
    assert torch.all(_dataset(tiny_demo_copy)[3]["sal"] == 255.0)  # optional: ignored instead
    (tiny_demo_copy / VOC / "SegmentationClassAug" / f"{ids[3]}.png").unlink()
    with pytest.raises(DatasetError) as error:
        _dataset(tiny_demo_copy, seg_required=True)[3]
    message = str(error.value)  # a missing SBD mask says which command builds the folder
    assert f"SegmentationClassAug/{ids[3]}.png is missing" in message
    assert f"`wsss data sbd-masks --sbd benchmark_RELEASE --voc {tiny_demo_copy / VOC}`" in message


def test_missing_image_names_the_file_and_list_line(tiny_demo: Path, tmp_path: Path) -> None:
    listing = tmp_path / "mine.txt"
    listing.write_text("2026_000001\n# comment\n2026_999999\n")
    dataset = SegmentationDataset(read_id_list(listing), tiny_demo / VOC / "JPEGImages", C)
    assert dataset[0]["name"] == "2026_000001"
    with pytest.raises(DatasetError, match=r"JPEGImages/2026_999999\.jpg is missing \(listed in mine\.txt line 3\)"):
        dataset[1]


def test_size_mismatch_and_bad_mask_values_are_errors(tiny_demo_copy: Path) -> None:
    ids = _dataset(tiny_demo_copy).ids
    write_grey_png(tiny_demo_copy / VOC / "saliency_map" / f"{ids[0]}.png", np.zeros((10, 12), np.uint8))
    with pytest.raises(DatasetError, match=rf"saliency_map/{ids[0]}\.png is 12x10 but .*{ids[0]}\.jpg is"):
        _dataset(tiny_demo_copy)[0]
    mask_path = tiny_demo_copy / VOC / "SegmentationClassAug" / f"{ids[1]}.png"
    mask = read_label(mask_path)
    mask[0, 0], mask[1, 1] = 37, 21
    write_grey_png(mask_path, mask)
    with pytest.raises(DatasetError) as error:
        _dataset(tiny_demo_copy)[1]
    message = str(error.value)
    assert f"{ids[1]}.png holds class values [21, 37] outside 0..20 and 255" in message
    assert "train_aug.txt line 2" in message


def test_find_image_tries_the_suffixes_in_order(tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(b"")
    (tmp_path / "a.jpg").write_bytes(b"")
    (tmp_path / "b.JPEG").write_bytes(b"")
    assert find_image(tmp_path, "a") == tmp_path / "a.jpg"
    assert find_image(tmp_path, "b") == tmp_path / "b.JPEG"
    assert find_image(tmp_path, "c") is None


def test_folder_entries_say_where_they_were_found(tmp_path: Path) -> None:
    entry = ListEntry("x", tmp_path, 0)
    assert entry.where() == f"found in {tmp_path}"
    assert ListEntry("x", tmp_path / "val.txt", 7).where() == "listed in val.txt line 7"

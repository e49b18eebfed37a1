"""WSSSDataModule on the tiny demo (dataset="voc": the demo uses the VOC classes) and on a hand-built COCO layout."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from lightning.pytorch.utilities import CombinedLoader
from PIL import Image

from wsss_lightning.data.check import check_datamodule
from wsss_lightning.data.datamodule import WSSSDataModule
from wsss_lightning.data.dataset import SegmentationDataset
from wsss_lightning.data.demo import DEMO_CLASSES
from wsss_lightning.data.io import DatasetError, image_size, read_label, read_saliency, write_grey_png
from wsss_lightning.data.labels import labels_from_mask
from wsss_lightning.data.saliency import SaliencyDataset
from wsss_lightning.pseudo.label_set import LabelSet

VOC = Path("VOCdevkit/VOC2012")
C = len(DEMO_CLASSES)


def _dm(demo: Path, **kwargs) -> WSSSDataModule:
    settings = dict(
        dataset="voc",
        saliency_dir="saliency_map",
        crop_size=48,
        batch_size=4,
        num_workers=0,
        persistent_workers=False,
    )
    settings.update(kwargs)
    return WSSSDataModule(str(demo / VOC), **settings)


def _ids(demo: Path, split: str) -> list[str]:
    lines = (demo / VOC / f"ImageSets/Segmentation/{split}.txt").read_text().splitlines()
    return [line.split()[0].split("/")[-1].split(".")[0] for line in lines]


def _constant_labels(demo: Path, folder: Path, value: int, ids: list[str]) -> Path:
    for name in ids:
        size = image_size(demo / VOC / "JPEGImages" / f"{name}.jpg")
        write_grey_png(folder / f"{name}.png", np.full(size, value, np.uint8))
    return folder


def _seg_values(loader) -> set[int]:
    values: set[int] = set()
    for batch in loader:
        values |= set(batch["seg"].unique().tolist())
    return values


# ------------------------------------------------------------------------------------------------ training batches


def test_train_batch_follows_the_design_batch_keys(tiny_demo: Path) -> None:
    dm = _dm(tiny_demo, train_target="gt")
    torch.manual_seed(0)
    batch = next(iter(dm.train_dataloader()))
    assert {"image", "cls_label", "seg", "sal", "name", "ori_size"} <= set(batch)
    assert batch["image"].dtype == torch.float32 and batch["image"].shape == (4, 3, 48, 48)
    assert batch["cls_label"].dtype == torch.float32 and batch["cls_label"].shape == (4, C - 1)
    assert batch["seg"].dtype == torch.uint8 and batch["seg"].shape == (4, 48, 48)
    assert batch["sal"].dtype == torch.float32 and batch["sal"].shape == (4, 48, 48)
    assert batch["ori_size"].dtype == torch.int64 and batch["ori_size"].shape == (4, 2)
    assert len(batch["name"]) == 4
    sal = batch["sal"]
    assert torch.all(((sal >= 0) & (sal <= 1)) | (sal == 255))
    assert torch.any((sal > 0) & (sal < 1))  # real saliency values, not only ignore
    for i, name in enumerate(batch["name"]):
        gt = read_label(tiny_demo / VOC / "SegmentationClassAug" / f"{name}.png")
        assert batch["ori_size"][i].tolist() == list(gt.shape)
        cls_label = batch["cls_label"][i].numpy()
        assert set(np.unique(cls_label)) <= {0.0, 1.0}
        np.testing.assert_array_equal(cls_label, labels_from_mask(gt, C))  # multi-hot of the full mask
        present = set(batch["seg"][i].unique().tolist()) - {0, 255}
        assert present <= {k + 1 for k in np.flatnonzero(cls_label)}  # the crop holds no other class


def test_full_size_train_samples_serve_gt_and_saliency_maps(tiny_demo: Path) -> None:
    dataset = _dm(tiny_demo, train_target="gt", augmentation="none").train_dataset()
    assert dataset.ids == _ids(tiny_demo, "train_aug")
    sample = dataset[5]
    name = sample["name"]
    np.testing.assert_array_equal(
        sample["seg"].numpy(), read_label(tiny_demo / VOC / "SegmentationClassAug" / f"{name}.png")
    )
    grey = read_saliency(tiny_demo / VOC / "saliency_map" / f"{name}.png")
    np.testing.assert_allclose(sample["sal"].numpy(), grey / np.float32(255), atol=1e-7)


def test_train_target_pseudo_and_none(tiny_demo: Path, tmp_path: Path) -> None:
    ids = _ids(tiny_demo, "train_aug")
    pseudo = _constant_labels(tiny_demo, tmp_path / "pseudo", 2, ids)
    no_labels_yet = _dm(tiny_demo, train_target="pseudo", augmentation="none").train_dataset()
    assert torch.all(no_labels_yet[0]["seg"] == 255)  # before the first pseudo-labels: all ignored
    with_labels = _dm(tiny_demo, train_target="pseudo", pseudo_label_dir=str(pseudo), augmentation="none")
    assert set(with_labels.train_dataset()[0]["seg"].unique().tolist()) == {2}
    none = _dm(tiny_demo, train_target="none", pseudo_label_dir=str(pseudo), augmentation="none")
    sample = none.train_dataset()[0]
    assert torch.all(sample["seg"] == 255) and sample["cls_label"].any()  # classification only


def test_use_label_set_changes_the_next_train_dataloader(tiny_demo: Path, tmp_path: Path) -> None:
    ids = _ids(tiny_demo, "train_aug")
    _constant_labels(tiny_demo, tmp_path / "stage0" / "seg", 3, ids)
    _constant_labels(tiny_demo, tmp_path / "stage1" / "seg", 4, ids)
    sal = tmp_path / "stage1" / "sal"
    for name in ids:
        size = image_size(tiny_demo / VOC / "JPEGImages" / f"{name}.jpg")
        write_grey_png(sal / f"{name}.png", np.full(size, 51, np.uint8))  # 51 / 255 = 0.2
    torch.manual_seed(0)
    dm = _dm(tiny_demo, batch_size=8)
    before = dm.train_dataloader()
    assert _seg_values(before) == {255}
    dm.use_label_set(LabelSet(tmp_path / "stage0"))
    assert _seg_values(before) == {255}  # an existing loader keeps its data
    after = dm.train_dataloader()
    values = _seg_values(after)
    assert 3 in values and values <= {3, 255}  # 255 = padding of images scaled below the crop size
    dm.use_label_set(LabelSet(tmp_path / "stage1"))  # a set with sal/ maps: they replace the off-the-shelf ones
    batch = next(iter(dm.train_dataloader()))
    assert set(batch["seg"].unique().tolist()) <= {4, 255} and 4 in batch["seg"]
    inside = batch["sal"] != 255
    torch.testing.assert_close(batch["sal"][inside], torch.full_like(batch["sal"][inside], 0.2))


def test_a_configured_label_set_folder_is_adopted_with_its_saliency(tiny_demo: Path, tmp_path: Path) -> None:
    ids = _ids(tiny_demo, "train_aug")
    _constant_labels(tiny_demo, tmp_path / "given" / "seg", 1, ids)
    for name in ids:
        size = image_size(tiny_demo / VOC / "JPEGImages" / f"{name}.jpg")
        write_grey_png(tmp_path / "given" / "sal" / f"{name}.png", np.zeros(size, np.uint8))
    for folder in ("given", "given/seg"):  # the set's folder or its seg/ folder
        dm = _dm(tiny_demo, augmentation="none", pseudo_label_dir=str(tmp_path / folder))
        dm.setup("fit")
        assert dm.label_set == LabelSet(tmp_path / "given") and not dm.uses_label_set()
        sample = dm.train_dataset()[0]
        assert set(sample["seg"].unique().tolist()) == {1} and set(sample["sal"].unique().tolist()) == {0.0}
    plain = _dm(tiny_demo, augmentation="none", pseudo_label_dir=str(tmp_path / "given" / "seg" / ".."))
    assert plain.given_label_set() == LabelSet(tmp_path / "given")


def test_label_set_mode_iterates_the_sets_own_files(tiny_demo: Path, tmp_path: Path) -> None:
    parents = _ids(tiny_demo, "train_aug")[:3]
    (tmp_path / "images").mkdir()
    for parent in parents:
        for copy in range(2):  # augmented copies <id>_<t>, with their own images and labels
            name = f"{parent}_{copy}"
            Image.fromarray(np.full((40, 40, 3), 90, np.uint8)).save(tmp_path / "images" / f"{name}.jpg")
            write_grey_png(tmp_path / "seg" / f"{name}.png", np.full((40, 40), copy + 1, np.uint8))
    dm = _dm(tiny_demo, batch_size=2)
    dm.use_label_set(LabelSet(tmp_path))  # seg/ + images/: a set of copies
    assert dm.uses_label_set()
    dataset = dm.train_dataset()
    assert dataset.ids == [f"{p}_{c}" for p in parents for c in range(2)]
    parent_labels = dm.train_labels()
    seen = []
    for batch in dm.train_dataloader():
        assert batch["image"].shape == (2, 3, 40, 40)  # label_set_augmentation "none": served as they are
        for i, name in enumerate(batch["name"]):
            seen.append(name)
            parent, copy = name.rsplit("_", 1)
            assert set(batch["seg"][i].unique().tolist()) == {int(copy) + 1}
            np.testing.assert_array_equal(batch["cls_label"][i].numpy(), parent_labels.get(parent))
    assert sorted(seen) == dataset.ids
    # the setup check looks at the set's files, not at <id>.png of the split
    assert not check_datamodule(dm, stage="fit", full=True).errors


# ------------------------------------------------------------------------------------------------ evaluation loaders


def test_loader_names_match_the_val_and_test_dataloaders(tiny_demo: Path) -> None:
    dm = _dm(
        tiny_demo,
        test_split="train",
        eval_batch_size=2,
        saliency_val_sets={"ecssd": "../../ECSSD"},
        saliency_test_sets={"duts-te": "../../DUTS-TE", "ECSSD": "../../ECSSD"},
    )
    assert dm.loader_names("validate") == ["seg/val", "sal/ECSSD"]
    assert dm.loader_names("test") == ["seg/train", "sal/DUTS-TE", "sal/ECSSD"]
    val, test = dm.val_dataloader(), dm.test_dataloader()
    assert len(val) == 2 and len(test) == 3
    assert isinstance(val[0].dataset, SegmentationDataset) and val[0].dataset.ids == _ids(tiny_demo, "val")
    assert test[0].dataset.ids == _ids(tiny_demo, "train")
    for loaders, names in ((val, dm.loader_names("validate")), (test, dm.loader_names("test"))):
        for loader, name in zip(loaders[1:], names[1:]):
            assert isinstance(loader.dataset, SaliencyDataset) and f"sal/{loader.dataset.name}" == name
            assert next(iter(loader))["source"] == [name, name]
    batch = next(iter(val[0]))  # full size, padded per batch, ground truth from SegmentationClass
    for i, name in enumerate(batch["name"]):
        gt = read_label(tiny_demo / VOC / "SegmentationClass" / f"{name}.png")
        height, width = batch["ori_size"][i].tolist()
        np.testing.assert_array_equal(batch["seg"][i, :height, :width].numpy(), gt)
        assert torch.all(batch["seg"][i, height:] == 255) and torch.all(batch["seg"][i, :, width:] == 255)
        np.testing.assert_array_equal(batch["cls_label"][i].numpy(), labels_from_mask(gt, C))


def test_absent_saliency_eval_sets_are_skipped_with_a_warning_or_stop_the_run(tiny_demo: Path) -> None:
    """The paper configs list five saliency test sets; a user with two of them on disk gets those two scored and
    one warning per absent set (the check reports it as a warning), or an error with missing_saliency_sets=error.
    The training set (DUTS-TR) and a set on disk but broken stay errors."""
    sets = {"ECSSD": "../../ECSSD", "PASCAL-S": "../../PASCAL-S", "HKU-IS": "../../ECSSD/nowhere"}
    dm = _dm(tiny_demo, saliency_val_sets={"PASCAL-S": "../../PASCAL-S"}, saliency_test_sets=sets)
    with pytest.warns(UserWarning, match=r"is not on disk and is skipped") as caught:
        assert dm.loader_names("test") == ["seg/val", "sal/ECSSD"]
        assert dm.loader_names("validate") == ["seg/val"]
    messages = [str(w.message) for w in caught]
    assert len(messages) == 3  # once per (stage, set), however often the sets are asked for
    assert messages[0].startswith("saliency test set PASCAL-S is not on disk and is skipped")
    assert "HKU-IS" in messages[1] and "--data.saliency_test_sets" in messages[1]
    assert messages[2].startswith("saliency val set PASCAL-S") and "--data.saliency_val_sets" in messages[2]
    assert len(dm.test_dataloader()) == 2
    report = check_datamodule(dm, stage="test")
    assert not report.errors
    assert sorted(p.path for p in report.warnings if p.kind.startswith("saliency set not on disk")) == [
        "HKU-IS",
        "PASCAL-S",
    ]
    dm.setup("test")  # no DatasetError

    strict = _dm(tiny_demo, saliency_test_sets=sets, missing_saliency_sets="error")
    assert strict.loader_names("test") == ["seg/val", "sal/ECSSD", "sal/PASCAL-S", "sal/HKU-IS"]
    assert any("PASCAL-S" in p.message for p in check_datamodule(strict, stage="test").errors)
    with pytest.raises(DatasetError, match="PASCAL-S"):
        strict.setup("test")

    broken = _dm(tiny_demo, saliency_train_root="../../PASCAL-S")  # a missing training set is an error
    assert any("PASCAL-S" in p.message for p in check_datamodule(broken, stage="fit").errors)


def test_an_absent_saliency_map_folder_is_one_error_naming_the_setting(tiny_demo: Path) -> None:
    report = check_datamodule(_dm(tiny_demo, saliency_dir="no_such_maps"), stage="fit")
    (error,) = report.errors
    assert error.path.endswith("no_such_maps") and "--data.saliency_dir" in error.message
    assert "make them from DUTS-TR" in error.message and "No saliency maps for your images" in error.message


def test_saliency_train_root_gives_combined_batches(tiny_demo: Path) -> None:
    dm = _dm(tiny_demo, saliency_train_root="../../DUTS-TR", saliency_batch_size=3, train_target="gt")
    loader = dm.train_dataloader()
    assert isinstance(loader, CombinedLoader)
    torch.manual_seed(0)
    batch, _, _ = next(iter(loader))
    assert set(batch) == {"seg", "sal"}
    assert batch["seg"]["image"].shape == (4, 3, 48, 48) and batch["sal"]["image"].shape == (3, 3, 48, 48)
    assert batch["sal"]["source"] == ["sal/DUTS-TR"] * 3
    assert torch.all(batch["sal"]["seg"] == 255)  # saliency images carry no segmentation
    sal = batch["sal"]["sal"]
    assert torch.all(((sal >= 0) & (sal <= 1)) | (sal == 255)) and torch.any(sal == 1)
    # the binary DUTS-TR masks stay 0 / 1 away from object edges (they are resized bilinearly)
    assert ((sal == 0) | (sal == 1) | (sal == 255)).float().mean() > 0.8


def test_refresh_dataset_serves_raw_images_gt_and_the_original_saliency(tiny_demo: Path, tmp_path: Path) -> None:
    ids = _ids(tiny_demo, "train_aug")
    updated = tmp_path / "set" / "sal"
    for name in ids:
        write_grey_png(updated / f"{name}.png", np.zeros(image_size(tiny_demo / VOC / "JPEGImages" / f"{name}.jpg")))
    (updated.parent / "seg").mkdir()
    dm = _dm(tiny_demo)
    dm.use_label_set(LabelSet(updated.parent))  # training would read the set's sal/; a refresh never does
    dataset = dm.refresh_dataset()
    sample = dataset[0]
    assert "raw" in sample and sample["raw"].dtype == torch.uint8 and sample["raw"].shape[-1] == 3
    name = sample["name"]
    grey = read_saliency(tiny_demo / VOC / "saliency_map" / f"{name}.png")
    np.testing.assert_allclose(sample["sal"].numpy(), grey / np.float32(255), atol=1e-7)  # not the zeros
    np.testing.assert_array_equal(
        sample["seg"].numpy(), read_label(tiny_demo / VOC / "SegmentationClassAug" / f"{name}.png")
    )


def test_predict_dataset_reads_a_folder_of_images(tiny_demo: Path, tmp_path: Path) -> None:
    Image.fromarray(np.zeros((10, 14, 3), np.uint8)).save(tmp_path / "b.jpg")
    Image.fromarray(np.zeros((12, 8, 3), np.uint8)).save(tmp_path / "a.png")
    dm = _dm(tiny_demo, predict_dir=str(tmp_path), eval_batch_size=2)
    batch = next(iter(dm.predict_dataloader()))
    assert batch["name"] == ["a", "b"] and batch["ori_size"].tolist() == [[12, 8], [10, 14]]
    assert batch["image"].shape == (2, 3, 12, 14) and batch["raw"].shape == (2, 12, 14, 3)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DatasetError, match="holds no images"):
        _dm(tiny_demo, predict_dir=str(empty)).predict_dataset()


# ------------------------------------------------------------------------------------------------ paths and classes


def test_relative_folders_resolve_against_root_and_absolute_ones_do_not(tiny_demo: Path) -> None:
    root = tiny_demo / VOC
    dm = _dm(tiny_demo)
    assert dm.path("SegmentationClass") == root / "SegmentationClass"
    assert dm.path("saliency_map") == root / "saliency_map"
    assert dm.path("../../ECSSD") == root / "../../ECSSD"
    assert dm.path(str(tiny_demo / "ECSSD")) == tiny_demo / "ECSSD"
    assert dm.path("{split}2014", "val") == root / "val2014"
    assert dm.path(None) is None
    relative = _dm(tiny_demo, augmentation="none").train_dataset()[3]["sal"]
    absolute = _dm(tiny_demo, augmentation="none", saliency_dir=str(root / "saliency_map"))
    torch.testing.assert_close(absolute.train_dataset()[3]["sal"], relative)
    assert _dm(tiny_demo, image_dir=str(root / "JPEGImages")).image_dir("val") == root / "JPEGImages"
    assert _dm(tiny_demo).train_gt_dir() == root / "SegmentationClassAug"
    assert _dm(tiny_demo).val_gt_dir() == root / "SegmentationClass"


def test_class_names_and_counts() -> None:
    assert WSSSDataModule("/nowhere", dataset="voc").num_classes == 21
    coco = WSSSDataModule("/nowhere", dataset="coco")
    assert coco.num_classes == 81 and coco.class_names[1] == "person"
    assert WSSSDataModule("/nowhere", dataset="custom", num_classes=4).class_names == [
        "background",
        "class_1",
        "class_2",
        "class_3",
    ]
    with pytest.raises(ValueError, match="class_names"):
        WSSSDataModule("/nowhere", dataset="custom")
    with pytest.raises(ValueError, match="num_classes=3 but 2 class_names"):
        WSSSDataModule("/nowhere", dataset="custom", class_names=["background", "a"], num_classes=3)


def test_empty_split_names_its_list_file(tiny_demo_copy: Path) -> None:
    listing = tiny_demo_copy / VOC / "ImageSets/Segmentation/val.txt"
    listing.write_text("# no ids yet\n\n")
    with pytest.raises(DatasetError) as error:
        _dm(tiny_demo_copy).entries("val")
    assert f"{listing} lists no ids for split 'val'" in str(error.value)


# ------------------------------------------------------------------------------------------------ COCO layout


def _coco(tmp_path: Path) -> Path:
    """train2014/ + val2014/ images, SegmentationClass/{train,val}2014/ masks, no list files."""
    root = tmp_path / "coco"
    masks = {
        ("train", "COCO_train2014_000000000009"): (0, 1, 80, 255),
        ("train", "COCO_train2014_000000000025"): (0, 25),
        ("train", "COCO_train2014_000000000030"): (0, 64, 64, 255),
        ("val", "COCO_val2014_000000000042"): (0, 18),
        ("val", "COCO_val2014_000000000073"): (0, 3, 255, 4),
    }
    for (split, name), values in masks.items():
        image = np.random.default_rng(len(name)).integers(0, 256, (16, 20, 3), dtype=np.uint8)
        (root / f"{split}2014").mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(root / f"{split}2014" / f"{name}.jpg")
        mask = np.zeros((16, 20), np.uint8)
        mask[:4, : 5 * len(values)].reshape(4, len(values), 5)[:] = np.asarray(values, np.uint8)[None, :, None]
        write_grey_png(root / "SegmentationClass" / f"{split}2014" / f"{name}.png", mask)
    return root


def test_coco_layout_without_list_files(tmp_path: Path) -> None:
    root = _coco(tmp_path)
    dm = WSSSDataModule(
        str(root), dataset="coco", train_split="train", val_split="val", train_target="gt", augmentation="none",
        batch_size=1, num_workers=0, persistent_workers=False,
    )  # fmt: skip
    entries = dm.entries("train")
    assert [e.id for e in entries] == [
        "COCO_train2014_000000000009",
        "COCO_train2014_000000000025",
        "COCO_train2014_000000000030",
    ]
    assert entries[0].where() == f"found in {root / 'train2014'}"
    assert dm.image_dir("val") == root / "val2014"
    assert dm.train_gt_dir() == root / "SegmentationClass/train2014"
    assert dm.val_gt_dir() == root / "SegmentationClass/val2014"
    dm.setup("fit")  # the quick check passes
    assert not check_datamodule(dm, full=True).errors
    labels = dm.train_labels()
    assert labels.source == "masks"  # no Annotations folder: labels come from the masks
    expected = np.zeros(80, np.float32)
    expected[[0, 79]] = 1.0  # person (1) and toothbrush (80)
    np.testing.assert_array_equal(labels.get("COCO_train2014_000000000009"), expected)
    sample = dm.train_dataset()[2]
    assert set(sample["seg"].unique().tolist()) == {0, 64, 255} and sample["cls_label"][63] == 1.0
    batch = next(iter(dm.val_dataloader()[0]))
    assert batch["name"] == ["COCO_val2014_000000000042"]
    assert set(batch["seg"].unique().tolist()) == {0, 18} and batch["cls_label"][0, 17] == 1.0


def test_an_unannotated_coco_image_is_a_warning_in_a_folder_split_and_an_error_in_a_list(tmp_path: Path) -> None:
    """train2014 holds ~700 images without annotations; a split that is the image folder includes them (they train
    as background only: a warning that names the list `coco-masks --list` writes), a list that names one is an
    error."""
    root = _coco(tmp_path)
    write_grey_png(root / "SegmentationClass/train2014/COCO_train2014_000000000025.png", np.zeros((16, 20), np.uint8))
    kw = dict(dataset="coco", train_split="train", val_split="val", num_workers=0, persistent_workers=False)
    dm = WSSSDataModule(str(root), **kw)
    report = check_datamodule(dm, stage="fit", full=True)
    assert not report.errors
    (warning,) = [p for p in report.warnings if p.kind.startswith("image with no class")]
    assert warning.path.endswith("COCO_train2014_000000000025.jpg") and "--list" in warning.message
    (root / "train.txt").write_text("COCO_train2014_000000000009\nCOCO_train2014_000000000025\n")
    listed = WSSSDataModule(str(root), **kw)
    (error,) = check_datamodule(listed, stage="fit", full=True).errors
    assert error.kind == "image with no class" and "train.txt line 2" in error.where


def test_coco_list_files_win_and_broken_ones_are_errors(tmp_path: Path) -> None:
    root = _coco(tmp_path)
    (root / "train.txt").write_text("COCO_train2014_000000000025\n")
    dm = WSSSDataModule(str(root), dataset="coco", train_split="train", num_workers=0)
    assert [e.id for e in dm.entries("train")] == ["COCO_train2014_000000000025"]
    (root / "train.txt").write_text("COCO_train2014_000000000025\nCOCO_train2014_000000000025\n")
    broken = WSSSDataModule(str(root), dataset="coco", train_split="train", num_workers=0)
    with pytest.raises(DatasetError, match=r"train\.txt line 2: id COCO_train2014_000000000025 is listed twice"):
        broken.entries("train")  # never a silent fallback to the image folder

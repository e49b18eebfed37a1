"""Salient-object datasets in the folder layouts their archives unpack to, name aliases, pairing rules."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from wsss_lightning.data.io import DatasetError, read_image, write_grey_png
from wsss_lightning.data.saliency import (
    GENERIC_LAYOUTS,
    PUBLISHED_LAYOUTS,
    SaliencyDataset,
    canonical_name,
    pair_files,
    resolve_layout,
)
from wsss_lightning.data.transforms import IMAGENET_MEAN, IMAGENET_STD, ScaleCropFlip, normalize_image


def _pairs(images: Path, masks: Path, stems=("a", "b"), image_suffix: str = ".jpg") -> None:
    """Tiny image / mask pairs: 8 x 10 pixels, the mask's left half salient."""
    images.mkdir(parents=True, exist_ok=True)
    for index, stem in enumerate(stems):
        colour = np.full((8, 10, 3), 40 * (index + 1), np.uint8)
        Image.fromarray(colour).save(images / f"{stem}{image_suffix}")
        mask = np.zeros((8, 10), np.uint8)
        mask[:, :5] = 255
        write_grey_png(masks / f"{stem}.png", mask)


# Each published layout as its archive unpacks, below a top folder: (name, top, image folder, mask folder,
# image suffix). The top folder is what users usually pass as root; its parent must work as well.
PUBLISHED = [
    ("DUTS-TR", "DUTS/DUTS-TR", "DUTS-TR-Image", "DUTS-TR-Mask", ".jpg"),
    ("DUTS-TE", "DUTS/DUTS-TE", "DUTS-TE-Image", "DUTS-TE-Mask", ".jpg"),
    ("ECSSD", "ECSSD", "images", "ground_truth_mask", ".jpg"),
    ("PASCAL-S", "PASCAL-S", "datasets/imgs/pascal", "datasets/masks/pascal", ".jpg"),
    ("HKU-IS", "HKU-IS", "imgs", "gt", ".png"),
    ("DUT-OMRON", "DUT-OMRON", "DUT-OMRON-image", "pixelwiseGT-new-PNG", ".jpg"),
]


@pytest.mark.parametrize(("name", "top", "images", "masks", "suffix"), PUBLISHED, ids=[p[0] for p in PUBLISHED])
def test_published_layouts_are_found_from_their_folder_and_its_parent(
    tmp_path: Path, name: str, top: str, images: str, masks: str, suffix: str
) -> None:
    _pairs(tmp_path / top / images, tmp_path / top / masks, image_suffix=suffix)
    expected = (tmp_path / top / images, tmp_path / top / masks)
    assert resolve_layout(tmp_path / top, name) == expected
    parent = (tmp_path / top).parent  # DUTS/ for the DUTS sets, the download folder for the others
    assert resolve_layout(parent, name) == expected
    dataset = SaliencyDataset(parent, name)
    assert dataset.name == name and dataset.ids == ["a", "b"]


def test_the_duts_parent_folder_holds_both_duts_sets(tmp_path: Path) -> None:
    _pairs(tmp_path / "DUTS/DUTS-TR/DUTS-TR-Image", tmp_path / "DUTS/DUTS-TR/DUTS-TR-Mask", stems=("tr",))
    _pairs(tmp_path / "DUTS/DUTS-TE/DUTS-TE-Image", tmp_path / "DUTS/DUTS-TE/DUTS-TE-Mask", stems=("te",))
    assert SaliencyDataset(tmp_path / "DUTS", "DUTS-TR").ids == ["tr"]
    assert SaliencyDataset(tmp_path / "DUTS", "duts-te").ids == ["te"]


@pytest.mark.parametrize(
    ("name", "images", "masks"),
    [
        ("PASCAL-S", "salObj/datasets/imgs/pascal", "salObj/datasets/masks/pascal"),  # unzipped into salObj/
        ("PASCAL-S", "imgs/pascal", "masks/pascal"),  # the datasets/ folder given as root
        ("DUT-OMRON", "DUT-OMRON-image/DUT-OMRON-image", "pixelwiseGT-new-PNG"),
        ("DUT-OMRON", "DUT-OMRON-image/DUT-OMRON-image", "DUT-OMRON-gt-pixelwise.zip/pixelwiseGT-new-PNG"),
        ("DUT-OMRON", "DUT-OMRON-image", "DUT-OMRON-gt-pixelwise/pixelwiseGT-new-PNG"),
        ("HKU-IS", "HKU-IS/imgs", "HKU-IS/gt"),
        ("ECSSD", "images", "masks"),  # the jsws re-packaging
    ],
)
def test_nested_unpacking_variants(tmp_path: Path, name: str, images: str, masks: str) -> None:
    _pairs(tmp_path / images, tmp_path / masks)
    assert resolve_layout(tmp_path, name) == (tmp_path / images, tmp_path / masks)


@pytest.mark.parametrize(("images", "masks"), GENERIC_LAYOUTS)
def test_generic_layouts_need_no_name(tmp_path: Path, images: str, masks: str) -> None:
    _pairs(tmp_path / images, tmp_path / masks)
    assert resolve_layout(tmp_path) == (tmp_path / images, tmp_path / masks)
    assert resolve_layout(tmp_path, "SOD") == (tmp_path / images, tmp_path / masks)  # unknown names too
    assert len(SaliencyDataset(tmp_path)) == 2


def test_every_published_layout_is_tested() -> None:
    assert sorted(PUBLISHED_LAYOUTS) == sorted(p[0] for p in PUBLISHED)


@pytest.mark.parametrize(
    ("alias", "canonical"),
    [
        ("pascal-s", "PASCAL-S"),
        ("PASCALS", "PASCAL-S"),
        ("PASCAL-S", "PASCAL-S"),
        ("dut-omron", "DUT-OMRON"),
        ("DUT_OMRON", "DUT-OMRON"),
        ("OMRON", "DUT-OMRON"),
        ("duts-te", "DUTS-TE"),
        ("DUT-test", "DUTS-TE"),  # jsws' folder name
        ("DUT-train", "DUTS-TR"),
        ("duts_tr", "DUTS-TR"),
        ("hku-is", "HKU-IS"),
        ("HKUIS", "HKU-IS"),
        ("ecssd", "ECSSD"),
        ("SOD", "SOD"),  # unknown: unchanged
    ],
)
def test_name_aliases_canonicalise(alias: str, canonical: str) -> None:
    assert canonical_name(alias) == canonical


def test_aliases_resolve_the_published_layout(tmp_path: Path) -> None:
    _pairs(tmp_path / "datasets/imgs/pascal", tmp_path / "datasets/masks/pascal")
    for alias in ("pascal-s", "PASCALS"):
        assert resolve_layout(tmp_path, alias)[1] == tmp_path / "datasets/masks/pascal"
        assert SaliencyDataset(tmp_path, alias).name == "PASCAL-S"


def test_explicit_folders_override_and_errors_say_what_was_tried(tmp_path: Path) -> None:
    _pairs(tmp_path / "pics", tmp_path / "truth")
    assert resolve_layout(tmp_path, "ECSSD", image_dir="pics", mask_dir="truth") == (
        tmp_path / "pics",
        tmp_path / "truth",
    )
    with pytest.raises(DatasetError, match="give both image_dir and mask_dir"):
        resolve_layout(tmp_path, image_dir="pics")
    with pytest.raises(DatasetError, match=r"nothing does not exist"):
        resolve_layout(tmp_path, image_dir="pics", mask_dir="nothing")
    with pytest.raises(DatasetError) as error:
        resolve_layout(tmp_path, "ECSSD")
    message = str(error.value)
    assert "no ECSSD image/mask folders holding images" in message and "images + ground_truth_mask" in message
    with pytest.raises(DatasetError, match="saliency dataset root .* does not exist"):
        resolve_layout(tmp_path / "absent", "ECSSD")


def test_a_mask_without_image_is_an_error_naming_the_mask(tmp_path: Path) -> None:
    _pairs(tmp_path / "images", tmp_path / "masks", stems=("a", "b"))
    write_grey_png(tmp_path / "masks" / "orphan.png", np.zeros((8, 10), np.uint8))
    with pytest.raises(DatasetError) as error:
        pair_files(tmp_path / "images", tmp_path / "masks")
    assert "1 masks" in str(error.value) and str(tmp_path / "masks" / "orphan.png") in str(error.value)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DatasetError, match="holds no mask images"):
        pair_files(tmp_path / "images", empty)


def test_an_image_without_mask_is_skipped_and_reported(tmp_path: Path) -> None:
    _pairs(tmp_path / "images", tmp_path / "masks", stems=("a", "c"))
    Image.fromarray(np.zeros((8, 10, 3), np.uint8)).save(tmp_path / "images" / "b.jpg")
    pairs, unmatched = pair_files(tmp_path / "images", tmp_path / "masks")
    assert [(stem, image.name, mask.name) for stem, image, mask in pairs] == [
        ("a", "a.jpg", "a.png"),
        ("c", "c.jpg", "c.png"),
    ]
    assert unmatched == ["b"]
    dataset = SaliencyDataset(tmp_path, "ECSSD")
    assert dataset.ids == ["a", "c"] and dataset.images_without_mask == ["b"]


def test_saliency_dataset_samples(tmp_path: Path) -> None:
    _pairs(tmp_path / "imgs", tmp_path / "gt", stems=("0001",), image_suffix=".png")
    soft = np.zeros((8, 10), np.uint8)
    soft[:, :5], soft[:, 5:7] = 255, 128  # an anti-aliased edge
    write_grey_png(tmp_path / "gt" / "0001.png", soft)
    dataset = SaliencyDataset(tmp_path, "HKU-IS", num_classes=6)
    sample = dataset[0]
    assert set(sample) == {"image", "sal", "seg", "cls_label", "name", "ori_size", "full_size", "index", "source"}
    assert sample["image"].dtype == torch.float32 and sample["image"].shape == (3, 8, 10)
    assert sample["sal"].dtype == torch.float32 and sample["sal"].shape == (8, 10)
    assert sample["sal"].min() >= 0.0 and sample["sal"].max() <= 1.0
    torch.testing.assert_close(sample["sal"], torch.from_numpy(soft.astype(np.float32) / 255.0))
    assert sample["seg"].dtype == torch.uint8 and torch.all(sample["seg"] == 255)
    assert sample["cls_label"].shape == (5,) and not sample["cls_label"].any()
    assert sample["name"] == "0001" and sample["ori_size"].tolist() == [8, 10]
    assert sample["source"] == "sal/HKU-IS" and sample["index"] == 0
    cropped = SaliencyDataset(tmp_path, "HKU-IS", transform=ScaleCropFlip(crop_size=12, flip=False))[0]
    assert cropped["image"].shape == (3, 12, 12) and cropped["ori_size"].tolist() == [8, 10]
    assert torch.all((cropped["sal"] <= 1) | (cropped["sal"] == 255)) and torch.any(cropped["sal"] == 255)


def test_saliency_dataset_size_mismatch_names_the_mask(tmp_path: Path) -> None:
    _pairs(tmp_path / "images", tmp_path / "ground_truth_mask", stems=("0001",))
    write_grey_png(tmp_path / "ground_truth_mask" / "0001.png", np.zeros((4, 4), np.uint8))
    with pytest.raises(DatasetError, match=r"ground_truth_mask/0001\.png is 4x4 but .*0001\.jpg is 10x8"):
        SaliencyDataset(tmp_path, "ECSSD")[0]


def test_demo_saliency_sets_load(tiny_demo: Path) -> None:
    assert len(SaliencyDataset(tiny_demo / "ECSSD", "ECSSD")) == 6
    assert len(SaliencyDataset(tiny_demo / "DUTS-TE", "DUTS-TE")) == 6
    assert len(SaliencyDataset(tiny_demo, "DUTS-TE")) == 6  # the download folder holding the unpacked archives
    train = SaliencyDataset(tiny_demo / "DUTS-TR", "DUTS-TR")
    assert len(train) == 12
    sal = train[0]["sal"]
    assert set(sal.unique().tolist()) <= {0.0, 1.0}  # DUTS-style binary masks


def _side_by_side(folder: Path, stems=("0001", "0002"), image_suffix: str = ".jpg") -> dict[str, np.ndarray]:
    """Images next to their masks in one folder (``Imgs/0001.jpg`` + ``Imgs/0001.png``), every mask different
    from its image and from the other masks. Returns each stem's mask."""
    folder.mkdir(parents=True, exist_ok=True)
    masks = {}
    for index, stem in enumerate(stems):
        Image.fromarray(np.full((8, 10, 3), 60 * (index + 1), np.uint8)).save(folder / f"{stem}{image_suffix}")
        mask = np.zeros((8, 10), np.uint8)
        mask[:, : 2 * (index + 1)] = 255
        mask[0, 9] = 100 + index  # a soft value: sal must be the PNG's grey level / 255, not a binarised copy
        write_grey_png(folder / f"{stem}.png", mask)
        masks[stem] = mask
    return masks


@pytest.mark.parametrize(
    ("name", "root", "folder"),
    [
        ("ECSSD", "", "ECSSD/Imgs"),  # the SOD-toolbox ECSSD below the download folder
        ("ECSSD", "ECSSD", "ECSSD/Imgs"),
        ("ECSSD", "ECSSD/Imgs", "ECSSD/Imgs"),  # the folder itself given as root
        ("HKU-IS", "HKU-IS", "HKU-IS/imgs"),
        ("DUT-OMRON", "", "DUT-OMRON/images"),
        (None, "SOD", "SOD/Image"),
    ],
)
def test_side_by_side_layout_pairs_each_jpg_with_its_png(tmp_path: Path, name, root: str, folder: str) -> None:
    masks = _side_by_side(tmp_path / folder)
    Image.fromarray(np.zeros((8, 10, 3), np.uint8)).save(tmp_path / folder / "0003.jpg")  # an image without mask
    shared = tmp_path / folder
    assert resolve_layout(tmp_path / root, name) == (shared, shared)
    pairs, unmatched = pair_files(shared, shared)
    assert pairs == [
        ("0001", shared / "0001.jpg", shared / "0001.png"),
        ("0002", shared / "0002.jpg", shared / "0002.png"),
    ]
    assert unmatched == ["0003"]
    dataset = SaliencyDataset(tmp_path / root, name)
    assert dataset.ids == ["0001", "0002"] and dataset.images_without_mask == ["0003"]
    for index, stem in enumerate(("0001", "0002")):
        sample = dataset[index]
        assert sample["name"] == stem
        torch.testing.assert_close(sample["sal"], torch.from_numpy(masks[stem].astype(np.float32) / 255.0))
        expected = normalize_image(read_image(shared / f"{stem}.jpg"), IMAGENET_MEAN, IMAGENET_STD)
        torch.testing.assert_close(sample["image"], expected)  # the photograph, not the mask read as RGB


def test_macos_appledouble_files_beside_images_and_masks_are_ignored(tmp_path: Path) -> None:
    """An ECSSD unpacked from a macOS tar holds ``._0001.jpg`` / ``._0001.png`` (not images) beside the real files."""
    for folder, suffix in (("images", ".jpg"), ("ground_truth_mask", ".png")):
        (tmp_path / "ECSSD" / folder).mkdir(parents=True)
        for stem in ("0001", "0002"):
            (tmp_path / "ECSSD" / folder / f"._{stem}{suffix}").write_bytes(b"\x00\x05\x16\x07 resource fork")
    masks = {}
    for index, stem in enumerate(("0001", "0002")):
        Image.fromarray(np.full((8, 10, 3), 50 * (index + 1), np.uint8)).save(tmp_path / "ECSSD/images" / f"{stem}.jpg")
        masks[stem] = np.full((8, 10), 255 * index, np.uint8)
        write_grey_png(tmp_path / "ECSSD/ground_truth_mask" / f"{stem}.png", masks[stem])
    dataset = SaliencyDataset(tmp_path / "ECSSD", "ECSSD")
    assert dataset.ids == ["0001", "0002"] and dataset.images_without_mask == []
    torch.testing.assert_close(dataset[1]["sal"], torch.ones(8, 10))


def test_the_same_folder_given_as_image_and_mask_dir_pairs_images_with_png_masks(tmp_path: Path) -> None:
    masks = _side_by_side(tmp_path / "pics", stems=("a", "b"))
    Image.fromarray(np.full((8, 10, 3), 7, np.uint8)).save(tmp_path / "pics" / "c.bmp")
    write_grey_png(tmp_path / "pics" / "c.png", np.full((8, 10), 9, np.uint8))
    pics = tmp_path / "pics"
    assert resolve_layout(tmp_path, "ECSSD", image_dir="pics", mask_dir="pics") == (pics, pics)
    pairs, unmatched = pair_files(pics, pics)
    assert pairs == [
        ("a", pics / "a.jpg", pics / "a.png"),
        ("b", pics / "b.jpg", pics / "b.png"),
        ("c", pics / "c.bmp", pics / "c.png"),
    ]
    assert unmatched == []
    dataset = SaliencyDataset(tmp_path, "ECSSD", image_dir="pics", mask_dir="pics")
    torch.testing.assert_close(dataset[1]["sal"], torch.from_numpy(masks["b"].astype(np.float32) / 255.0))
    torch.testing.assert_close(dataset[2]["sal"], torch.full((8, 10), 9 / 255.0))
    # pics/ is no side-by-side candidate: without image_dir / mask_dir nothing is found, and the error says where
    with pytest.raises(DatasetError, match=r"one folder of images next to their \.png masks: Imgs, imgs"):
        resolve_layout(tmp_path, "ECSSD")


def test_side_by_side_folder_errors(tmp_path: Path) -> None:
    shared = tmp_path / "Imgs"
    _side_by_side(shared, stems=("a",))
    write_grey_png(shared / "orphan.png", np.zeros((8, 10), np.uint8))
    with pytest.raises(DatasetError) as error:
        pair_files(shared, shared)
    assert "1 masks" in str(error.value) and str(shared / "orphan.png") in str(error.value)
    only_images = tmp_path / "jpgs"
    only_images.mkdir()
    Image.fromarray(np.zeros((8, 10, 3), np.uint8)).save(only_images / "a.jpg")
    with pytest.raises(DatasetError, match=r"holds no \.png masks"):
        pair_files(only_images, only_images)
    two_jpegs = tmp_path / "two"
    _side_by_side(two_jpegs, stems=("a",))
    Image.fromarray(np.zeros((8, 10, 3), np.uint8)).save(two_jpegs / "a.bmp")
    with pytest.raises(DatasetError, match=r"two holds both a\.bmp and a\.jpg"):
        pair_files(two_jpegs, two_jpegs)


@pytest.mark.parametrize(
    "files",
    [
        ("a.png", "b.png"),  # HKU-IS images alone: PNGs only
        ("a.jpg", "b.png"),  # a PNG and a JPEG of different names
    ],
)
def test_a_folder_without_an_image_and_png_of_one_name_is_not_side_by_side(tmp_path: Path, files) -> None:
    (tmp_path / "imgs").mkdir()
    for name in files:
        Image.fromarray(np.zeros((8, 10, 3), np.uint8)).save(tmp_path / "imgs" / name)
    with pytest.raises(DatasetError, match="no HKU-IS image/mask folders"):
        resolve_layout(tmp_path, "HKU-IS")


def test_two_folder_layouts_come_before_a_side_by_side_folder(tmp_path: Path) -> None:
    _pairs(tmp_path / "images", tmp_path / "ground_truth_mask")
    _side_by_side(tmp_path / "Imgs")
    assert resolve_layout(tmp_path, "ECSSD") == (tmp_path / "images", tmp_path / "ground_truth_mask")


def test_duplicate_stems_in_a_two_folder_image_folder_are_an_error(tmp_path: Path) -> None:
    _pairs(tmp_path / "images", tmp_path / "ground_truth_mask")
    write_grey_png(tmp_path / "images" / "a.png", np.zeros((8, 10), np.uint8))  # a mask copied among the images
    expected = (
        re.escape(str(tmp_path / "images"))
        + r" holds both a\.jpg and a\.png: files are matched by name without extension"
    )
    with pytest.raises(DatasetError, match=expected):
        pair_files(tmp_path / "images", tmp_path / "ground_truth_mask")
    with pytest.raises(DatasetError, match=expected):
        SaliencyDataset(tmp_path, "ECSSD")

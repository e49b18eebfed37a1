"""Dataset validation: `check_datamodule`, `wsss data check --config CFG` and the DataModule's setup check.

Every broken file must be reported by name (and by list file and line when the id comes from a list), the
command must exit non-zero, and ``setup("fit")`` must refuse to start training.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from wsss_lightning.cli import main
from wsss_lightning.data.check import _check_entry, _SplitJob, _truncated, check_datamodule
from wsss_lightning.data.datamodule import WSSSDataModule
from wsss_lightning.data.io import DatasetError, read_label, write_grey_png, write_palette_png
from wsss_lightning.data.splits import ListEntry

VOC = Path("VOCdevkit/VOC2012")


def _settings(demo: Path) -> dict:
    return {
        "root": str(demo / VOC),
        "dataset": "voc",  # the demo uses the VOC classes: no class_names
        "saliency_dir": str(demo / VOC / "saliency_map"),  # absolute: not re-rooted
        "saliency_test_sets": {"ECSSD": "../../ECSSD"},  # relative: resolved against root
        "num_workers": 0,
    }


def _dm(demo: Path, **kwargs) -> WSSSDataModule:
    return WSSSDataModule(**{**_settings(demo), **kwargs})


def _config(demo: Path, tmp_path: Path) -> Path:
    """A training-style config; the model and trainer sections are accepted and ignored by `wsss data check`."""
    settings = _settings(demo)
    lines = [
        "seed_everything: 0",
        "trainer: {accelerator: cpu, max_epochs: 1}",
        "model:",
        "  class_path: wsss_lightning.modules.AuxSegNetModule",
        "data:",
        "  class_path: wsss_lightning.data.WSSSDataModule",
        "  init_args:",
        f"    root: {settings['root']}",
        "    dataset: voc",
        f"    saliency_dir: {settings['saliency_dir']}",
        "    saliency_test_sets: {ECSSD: ../../ECSSD}",
        "    num_workers: 0",
    ]
    path = tmp_path / "config.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def _ids(demo: Path, split: str) -> list[str]:
    lines = (demo / VOC / f"ImageSets/Segmentation/{split}.txt").read_text().splitlines()
    return [line.split()[0].split("/")[-1].split(".")[0] for line in lines]


# ------------------------------------------------------------------------------------------------ clean data


def test_clean_demo_has_no_problem(tiny_demo: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    report = check_datamodule(_dm(tiny_demo), full=True)
    assert report.problems == []
    # every split read once (val and test share the val split), and the saliency test set
    assert dict(report.checked) == {"train_aug (train) ids": 24, "val (val) ids": 8, "ECSSD pairs": 6}
    assert "no problems found" in report.summary()
    _dm(tiny_demo).setup("fit")  # the quick check passes: no exception
    assert main(["data", "check", "--config", str(_config(tiny_demo, tmp_path))]) == 0
    out = capsys.readouterr().out
    assert "no problems found" in out and "0 errors, 0 warnings" in out


# ------------------------------------------------------------------------------------------------ broken data

Breaker = Callable[[Path], tuple[str, str | None]]


def _delete_image(demo: Path) -> tuple[str, str | None]:
    name = _ids(demo, "train_aug")[3]
    (demo / VOC / "JPEGImages" / f"{name}.jpg").unlink()
    return f"JPEGImages/{name}.jpg", "train_aug.txt line 4"


def _mask_value_37(demo: Path) -> tuple[str, str | None]:
    name = _ids(demo, "val")[1]
    path = demo / VOC / "SegmentationClass" / f"{name}.png"
    mask = read_label(path)
    mask[2, 3] = 37
    write_palette_png(path, mask)
    return f"SegmentationClass/{name}.png", "val.txt line 2"


def _truncate_jpeg(demo: Path) -> tuple[str, str | None]:
    name = _ids(demo, "train_aug")[2]
    path = demo / VOC / "JPEGImages" / f"{name}.jpg"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])
    return f"JPEGImages/{name}.jpg", "train_aug.txt line 3"


def _saliency_wrong_size(demo: Path) -> tuple[str, str | None]:
    name = _ids(demo, "train_aug")[0]
    write_grey_png(demo / VOC / "saliency_map" / f"{name}.png", np.zeros((20, 30), np.uint8))
    return f"saliency_map/{name}.png", "train_aug.txt line 1"


def _listed_but_absent(demo: Path) -> tuple[str, str | None]:
    listing = demo / VOC / "ImageSets/Segmentation/train_aug.txt"
    with listing.open("a") as stream:
        stream.write("/JPEGImages/2026_999999.jpg /SegmentationClassAug/2026_999999.png\n")
    return "JPEGImages/2026_999999.jpg", "train_aug.txt line 25"


def _empty_split(demo: Path) -> tuple[str, str | None]:
    (demo / VOC / "ImageSets/Segmentation/val.txt").write_text("# emptied\n")
    return "ImageSets/Segmentation/val.txt", None


def _label_without_class(demo: Path) -> tuple[str, str | None]:
    name = _ids(demo, "train_aug")[5]
    path = demo / VOC / "Annotations" / f"{name}.xml"
    path.write_text(re.sub(r"<object>.*?</object>", "", path.read_text(), flags=re.S))
    return f"Annotations/{name}.xml", "train_aug.txt line 6"


# (breaker, caught by the quick setup check). Mask values need decoding: the full check finds them, and the
# dataset refuses the file when it is read (tested below).
CASES: dict[str, tuple[Breaker, bool]] = {
    "deleted image": (_delete_image, True),
    "mask value 37": (_mask_value_37, False),
    "truncated jpeg": (_truncate_jpeg, True),
    "saliency of the wrong size": (_saliency_wrong_size, True),
    "id listed but absent": (_listed_but_absent, True),
    "empty split": (_empty_split, True),
    "label without class": (_label_without_class, True),
}


@pytest.mark.parametrize("case", list(CASES))
def test_each_broken_file_is_reported_by_name(
    case: str, tiny_demo_copy: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    breaker, quick = CASES[case]
    needle, line = breaker(tiny_demo_copy)

    report = check_datamodule(_dm(tiny_demo_copy), full=True)
    assert report.errors, case
    named = [str(p) for p in report.errors if needle in str(p)]
    assert len(named) == 1, report.problems  # reported once, even though val is also the test split
    if line is not None:
        assert line in named[0]

    rc = main(["data", "check", "--config", str(_config(tiny_demo_copy, tmp_path))])
    out = capsys.readouterr().out
    assert rc != 0
    assert any(needle in row and (line is None or line in row) for row in out.splitlines() if "[error]" in row)

    if quick:
        with pytest.raises(DatasetError) as error:
            _dm(tiny_demo_copy).setup("fit")
        assert needle in str(error.value) and (line is None or line in str(error.value))
        assert "wsss data check" in str(error.value)  # the message says how to get the full report
    else:
        _dm(tiny_demo_copy).setup("fit")  # quick mode reads headers only


def test_a_bad_mask_value_is_refused_when_the_file_is_read(tiny_demo_copy: Path) -> None:
    needle, line = _mask_value_37(tiny_demo_copy)
    dataset = _dm(tiny_demo_copy).eval_dataset("val")
    with pytest.raises(DatasetError) as error:
        dataset[1]
    assert needle in str(error.value) and line in str(error.value) and "[37]" in str(error.value)


def test_cli_exit_codes_for_configuration_errors(tiny_demo: Path, tmp_path: Path, capsys) -> None:
    config = str(_config(tiny_demo, tmp_path))
    # a wrong root: every split is reported with the places tried
    assert main(["data", "check", "--config", config, "--data.init_args.root", str(tmp_path / "nowhere")]) == 1
    out = capsys.readouterr().out
    assert "no list file for split 'train_aug'" in out and "ImageSets/Segmentation/train_aug.txt" in out
    # --quick --stage fit checks what training's setup checks
    assert main(["data", "check", "--config", config, "--quick", "--stage", "fit"]) == 0
    assert "ECSSD" not in capsys.readouterr().out  # test sets belong to the test stage
    with pytest.raises(SystemExit) as usage:  # no data section at all: argparse's usage error
        main(["data", "check"])
    assert usage.value.code == 2 and "required: data" in capsys.readouterr().err
    assert main(["data"]) == 2


def test_saliency_set_problems(tiny_demo_copy: Path) -> None:
    ecssd = tiny_demo_copy / "ECSSD"
    write_grey_png(ecssd / "ground_truth_mask" / "0002.png", np.zeros((5, 5), np.uint8))
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(ecssd / "images" / "extra.jpg")
    report = check_datamodule(_dm(tiny_demo_copy), stage="test", full=False)
    assert [p.kind for p in report.errors] == ["size mismatch"]
    assert report.errors[0].path.endswith("ECSSD/ground_truth_mask/0002.png")
    assert [(p.kind, Path(p.path).name) for p in report.warnings] == [("image without mask", "extra")]
    (ecssd / "ground_truth_mask" / "0003.png").rename(ecssd / "ground_truth_mask" / "orphan.png")
    report = check_datamodule(_dm(tiny_demo_copy), stage="test")
    assert any(p.kind == "saliency dataset layout" and "orphan.png" in p.message for p in report.errors)


def test_truncation_test_reads_only_the_tail_and_accepts_trailing_data(tmp_path: Path) -> None:
    image = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    Image.fromarray(image).save(tmp_path / "ok.jpg")
    Image.fromarray(image).save(tmp_path / "ok.png")
    assert not _truncated(tmp_path / "ok.jpg") and not _truncated(tmp_path / "ok.png")
    data = (tmp_path / "ok.jpg").read_bytes()
    (tmp_path / "trailer.jpg").write_bytes(data + b"\x00SEFT" * 40)  # phone cameras append data after EOI
    assert not _truncated(tmp_path / "trailer.jpg")
    (tmp_path / "cut.jpg").write_bytes(data[:-200])
    (tmp_path / "cut.png").write_bytes((tmp_path / "ok.png").read_bytes()[:-20])
    assert _truncated(tmp_path / "cut.jpg") and _truncated(tmp_path / "cut.png")
    (tmp_path / "other.bmp").write_bytes(b"BM")
    assert not _truncated(tmp_path / "other.bmp")  # only JPEG and PNG have end markers to look for


def test_problem_and_report_formatting() -> None:
    from wsss_lightning.data.check import CheckReport, Problem

    report = CheckReport()
    report.checked["val ids"] += 3
    report.add(Problem("missing image", "/d/a.jpg", "is missing", "listed in val.txt line 2"))
    report.add(Problem("image without mask", "/d/b", "has no mask; skipped", warning=True))
    assert str(report.problems[0]) == "[error] /d/a.jpg: is missing (listed in val.txt line 2)"
    assert str(report.problems[1]) == "[warning] /d/b: has no mask; skipped"
    assert report.summary().splitlines() == [
        "checked: 3 val ids",
        "       1 warning: image without mask",
        "       1 error: missing image",
        "1 errors, 1 warnings",
    ]
    assert "1 problems:\n[error] /d/a.jpg" in report.error_message()


def test_a_list_of_bare_coco_ids_is_told_the_released_file_names(tmp_path: Path) -> None:
    images = tmp_path / "train2014"
    images.mkdir()
    Image.new("RGB", (8, 6)).save(images / "COCO_train2014_000000000009.jpg")
    job = _SplitJob("train", [], images, None, False, None, (), None, 81)
    problems, _ = _check_entry(job, ListEntry("9", tmp_path / "train.txt", 1), full=False)
    (problem,) = problems
    assert problem.kind == "missing image" and problem.path == str(images / "9.jpg")
    assert "bare COCO id '9', the file is COCO_train2014_000000000009.jpg" in problem.message
    assert "wsss data coco-masks --list" in problem.message
    padded, _ = _check_entry(job, ListEntry("000000000009", tmp_path / "train.txt", 1), full=False)
    assert "COCO_train2014_000000000009.jpg" in padded[0].message
    # a numeric id with no released file of that number, and a VOC-style id: the plain message
    (other,) = _check_entry(job, ListEntry("25", tmp_path / "train.txt", 2), full=False)[0]
    (voc,) = _check_entry(job, ListEntry("2007_000032", tmp_path / "train.txt", 3), full=False)[0]
    assert other.message == voc.message == "is missing"

"""Dataset validation: find every broken file before hours of training are spent.

``quick`` (run by ``DataModule.setup``): every listed file exists, its header is readable, JPEG/PNG files are
not truncated (end marker present), image / label / saliency sizes agree, every id has an image-level
label (XML parsed, label files looked up), no split is empty.

``full`` (``wsss data check``): additionally decodes every file, checks mask values lie in
{0..C-1, 255}, derives mask-based labels and flags images with no class.

Each problem names the file and, for ids from a list file, the list and line.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from tqdm.auto import tqdm

from wsss_lightning.data.dataset import find_image
from wsss_lightning.data.io import DatasetError, image_size, read_image, read_label, read_saliency
from wsss_lightning.data.labels import labels_from_mask
from wsss_lightning.data.saliency_sanity import diagnose_saliency_maps
from wsss_lightning.data.splits import ListEntry

if TYPE_CHECKING:
    from wsss_lightning.data.datamodule import WSSSDataModule


@dataclass(frozen=True)
class Problem:
    """One finding. ``kind`` groups findings in the summary; warnings do not fail a check."""

    kind: str
    path: str
    message: str
    where: str = ""
    warning: bool = False

    def __str__(self) -> str:
        where = f" ({self.where})" if self.where else ""
        level = "warning" if self.warning else "error"
        return f"[{level}] {self.path}: {self.message}{where}"


@dataclass
class CheckReport:
    problems: list[Problem] = field(default_factory=list)
    checked: Counter = field(default_factory=Counter)

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if not p.warning]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.warning]

    def add(self, problem: Problem) -> None:
        self.problems.append(problem)

    def summary(self) -> str:
        lines = [f"checked: {', '.join(f'{count} {what}' for what, count in sorted(self.checked.items()))}"]
        kinds = Counter((p.kind, p.warning) for p in self.problems)
        if not kinds:
            lines.append("no problems found")
        for (kind, warning), count in sorted(kinds.items()):
            lines.append(f"  {count:6d} {'warning' if warning else 'error'}: {kind}")
        lines.append(f"{len(self.errors)} errors, {len(self.warnings)} warnings")
        return "\n".join(lines)

    def error_message(self, limit: int = 20) -> str:
        shown = "\n".join(str(p) for p in self.errors[:limit])
        more = f"\n... and {len(self.errors) - limit} more" if len(self.errors) > limit else ""
        return (
            f"the dataset check found {len(self.errors)} problems:\n{shown}{more}\n{self.summary()}\n"
            "Run `wsss data check --config <your config>` for the full report; fix the files, or leave the broken "
            "part out of the config (--data.check off skips this check, not the files' loading)."
        )


def _truncated(path: Path) -> bool:
    """True if a JPEG lacks its end-of-image marker or a PNG its IEND chunk (cheap: reads the last bytes)."""
    suffix = path.suffix.lower()
    if suffix not in (".jpg", ".jpeg", ".png"):
        return False
    with open(path, "rb") as stream:
        stream.seek(0, os.SEEK_END)
        size = stream.tell()
        stream.seek(max(0, size - 32))
        tail = stream.read()
    if suffix == ".png":
        return b"IEND" not in tail
    if b"\xff\xd9" in tail.rstrip(b"\x00\r\n "):
        return False
    # No JPEG end marker near the end: truncated, or data appended after it (phone cameras write trailers
    # after EOI). Decoding tells them apart; it runs only for these rare files.
    try:
        read_image(path)
    except DatasetError:
        return True
    return False


def _size_or_problem(path: Path, kind: str, where: str, full: bool, reader: Callable | None) -> tuple:
    """Return ((H, W), decoded array or None, problem or None)."""
    try:
        if _truncated(path):
            return None, None, Problem(kind, str(path), "file is truncated (no end marker); re-extract it", where)
        if full and reader is not None:
            array = reader(path)
            return array.shape[:2], array, None
        return image_size(path), None, None
    except DatasetError as error:
        return None, None, Problem(kind, str(path), str(error).replace(f"{path} ", "", 1), where)


@dataclass
class _SplitJob:
    name: str
    entries: list[ListEntry]
    image_dir: Path
    seg_dir: Path | None
    seg_required: bool
    sal_dir: Path | None
    pseudo_dirs: tuple[Path, ...]
    labels: object | None  # ImageLabels
    num_classes: int


def _missing_image_reason(image_dir: Path, identifier: str) -> str:
    """``is missing``, with the fix when the list names a bare COCO image id (``9`` or ``000000000009``) and the
    folder holds the released file name (``COCO_train2014_000000000009.jpg``)."""
    if identifier.isdigit():
        released = f"COCO_{image_dir.name}_{int(identifier):012d}"
        if find_image(image_dir, released) is not None:
            return (
                f"is missing: the list names the bare COCO id '{identifier}', the file is {released}.jpg; list the "
                "full names (`wsss data coco-masks --list` writes such a list) and name the masks, saliency maps and "
                "label keys the same way"
            )
    return "is missing"


def _check_entry(job: _SplitJob, entry: ListEntry, full: bool) -> tuple[list[Problem], np.ndarray | None]:
    problems: list[Problem] = []
    where = entry.where()
    image_path = find_image(job.image_dir, entry.id)
    if image_path is None:
        problems.append(
            Problem(
                "missing image",
                str(job.image_dir / f"{entry.id}.jpg"),
                _missing_image_reason(job.image_dir, entry.id),
                where,
            )
        )
        return problems, None
    image_hw, _, problem = _size_or_problem(image_path, "unreadable image", where, full, read_image)
    if problem:
        problems.append(problem)
    label_vector, label_file = None, None
    maps = [(job.seg_dir, "label", job.seg_required, read_label)]
    maps += [(job.sal_dir, "saliency map", True, read_saliency)]
    maps += [(folder, "pseudo-label", True, read_label) for folder in job.pseudo_dirs]
    for folder, what, required, reader in maps:
        if folder is None:
            continue
        path = folder / f"{entry.id}.png"
        if not path.is_file():
            if required:
                problems.append(Problem(f"missing {what}", str(path), "is missing", where))
            continue
        hw, array, problem = _size_or_problem(path, f"unreadable {what}", where, full, reader)
        if problem:
            problems.append(problem)
            continue
        if image_hw is not None and hw != image_hw:
            problems.append(
                Problem(
                    "size mismatch",
                    str(path),
                    f"is {hw[1]}x{hw[0]} but its image {image_path.name} is {image_hw[1]}x{image_hw[0]}",
                    where,
                )
            )
        if array is not None and reader is read_label:
            counts = np.bincount(array.reshape(-1), minlength=256)
            bad = np.flatnonzero(counts[job.num_classes : 255]) + job.num_classes
            if bad.size:
                problems.append(
                    Problem(
                        "mask value out of range",
                        str(path),
                        f"holds values {bad.tolist()} outside 0..{job.num_classes - 1} and 255",
                        where,
                    )
                )
            elif folder == job.seg_dir and job.labels is not None and job.labels.source == "masks":
                label_vector, label_file = labels_from_mask(array, job.num_classes, str(path)), path
    if job.labels is not None and (label_vector is None):
        source = job.labels.source
        if source == "masks" and not full:
            return problems, None  # mask-derived labels need decoding: full check only
        try:
            label_vector, label_file = job.labels.get(entry.id), job.labels.path_for(entry.id)
        except DatasetError as error:
            problems.append(Problem("missing image label", str(job.labels.path_for(entry.id)), str(error), where))
    if label_vector is not None and not label_vector.any():
        message = f"has no foreground class in its image-level label (from {label_file})"
        if entry.line <= 0:
            # A split that is a whole image folder (COCO without list files) holds the images the release has
            # no annotation for: they train as background only. WSSS work leaves them out of its lists.
            message += (
                "; it is in the split because the split is the whole image folder: it trains as background only. "
                "`wsss data coco-masks ... --list <root>/<split>.txt` writes the usual list without such images"
            )
            problems.append(Problem("image with no class (folder split)", str(image_path), message, where, True))
        else:
            problems.append(Problem("image with no class", str(image_path), message, where))
    return problems, label_vector


def _run_split(job: _SplitJob, report: CheckReport, full: bool, progress: bool) -> None:
    report.checked[f"{job.name} ids"] += len(job.entries)
    workers = min(8, (os.cpu_count() or 1) * 2)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = pool.map(lambda entry: _check_entry(job, entry, full), job.entries)
        for problems, _ in tqdm(
            results, total=len(job.entries), desc=f"check {job.name}", unit="img", disable=not progress, leave=False
        ):
            for problem in problems:
                report.add(problem)


def _saliency_maps_sanity(report: CheckReport, folder: Path, paths: list[Path], what: str) -> None:
    """Report a set of readable maps that still carries no saliency (0/1, constant or inverted maps)."""
    fault = diagnose_saliency_maps(paths)
    if fault is not None:
        report.add(Problem("saliency maps carry no saliency", str(folder), f"{what}: {fault}"))


def _saliency_sets(
    datamodule: WSSSDataModule, report: CheckReport, sets: Iterable[tuple[str, str]], full: bool, progress: bool
) -> None:
    for name, root in sets:
        try:
            dataset = datamodule.saliency_dataset(name, root)
        except DatasetError as error:
            report.add(Problem("saliency dataset layout", str(root), str(error)))
            continue
        report.checked[f"{dataset.name} pairs"] += len(dataset)
        masks = [mask_path for _stem, _image, mask_path in dataset.pairs]
        _saliency_maps_sanity(report, dataset.mask_dir, masks, f"the {dataset.name} masks")
        for stem in dataset.images_without_mask[:50]:
            report.add(
                Problem("image without mask", str(dataset.image_dir / stem), "has no mask; skipped", warning=True)
            )
        for _stem, image_path, mask_path in tqdm(
            dataset.pairs, desc=f"check {dataset.name}", unit="img", disable=not progress, leave=False
        ):
            image_hw, _, problem = _size_or_problem(image_path, "unreadable image", "", full, read_image)
            if problem:
                report.add(problem)
                continue
            mask_hw, _, problem = _size_or_problem(mask_path, "unreadable saliency mask", "", full, read_saliency)
            if problem:
                report.add(problem)
            elif mask_hw != image_hw:
                report.add(
                    Problem(
                        "size mismatch",
                        str(mask_path),
                        f"is {mask_hw[1]}x{mask_hw[0]} but {image_path.name} is {image_hw[1]}x{image_hw[0]}",
                    )
                )


def check_datamodule(
    datamodule: WSSSDataModule, stage: str | None = None, full: bool = False, progress: bool = False
) -> CheckReport:
    """Validate the data a stage will read (``fit``/``validate``/``test``/``predict``; None = everything)."""
    report = CheckReport()
    hp = datamodule.hparams
    stages = {"fit", "validate", "test", "predict"} if stage is None else {stage}
    splits: list[tuple[str, str]] = []  # (role, split)
    if "fit" in stages:
        splits += [("train", hp.train_split), ("val", hp.val_split)]
    if "validate" in stages:
        splits.append(("val", hp.val_split))
    if "test" in stages:
        splits.append(("test", datamodule.test_split))
    seen: set[tuple[str, str]] = set()
    for role, split in splits:
        key = (role if role == "train" else "eval", split)  # val and test of one split read the same files
        if key in seen:
            continue
        seen.add(key)
        try:
            entries = datamodule.entries(split)
        except DatasetError as error:
            report.add(Problem("split", split, str(error)))
            continue
        try:
            if role == "train" and datamodule.uses_label_set():
                # a label set with its own images (<id>_<t>): check its files, not the split's ids
                label_set = datamodule.label_set_dataset()
                job = _SplitJob(
                    "label set (train)", label_set.entries, label_set.image_dir, None, False, None,
                    (label_set.seg_dir,), label_set.labels, datamodule.num_classes,
                )  # fmt: skip
            elif role == "train":
                seg_dir = datamodule.train_gt_dir() if hp.train_target == "gt" else None
                pseudo, pseudo_sal = datamodule.pseudo_label_folders()
                pseudo = pseudo if hp.train_target == "pseudo" else None
                labels = datamodule.train_labels()
                if labels.source == "masks":
                    seg_dir = datamodule.train_gt_dir()
                sal_dir = datamodule.path(hp.saliency_dir)
                if sal_dir is not None and not sal_dir.is_dir():  # one line, not one per id
                    message = (
                        "the off-the-shelf saliency maps folder does not exist; put the maps (<id>.png, grey "
                        "0-255) there, or point --data.saliency_dir at them. Without maps, make them from DUTS-TR: "
                        "SSNet's stage 1 learns saliency from its masks and `wsss predict` writes the maps (README, "
                        "'No saliency maps for your images')"
                    )
                    report.add(Problem("missing folder", str(sal_dir), message))
                    sal_dir = None
                job = _SplitJob(
                    f"{split} (train)",
                    entries,
                    datamodule.image_dir(split),
                    seg_dir,
                    hp.train_target == "gt" or labels.source == "masks",
                    sal_dir,
                    tuple(p for p in (pseudo, pseudo_sal) if p is not None),
                    labels,
                    datamodule.num_classes,
                )
            else:
                gt_dir = datamodule.val_gt_dir(split)
                if gt_dir is None:
                    report.add(Problem("missing folder", str(datamodule.root), f"no ground truth for split {split}"))
                    continue
                job = _SplitJob(
                    f"{split} ({role})", entries, datamodule.image_dir(split), gt_dir, True, None, (), None,
                    datamodule.num_classes,
                )  # fmt: skip
        except DatasetError as error:
            report.add(Problem("configuration", str(datamodule.root), str(error)))
            continue
        if not job.image_dir.is_dir():
            report.add(Problem("missing folder", str(job.image_dir), "image folder does not exist; check --data.root"))
            continue
        _run_split(job, report, full, progress)
        if job.sal_dir is not None:
            maps = [job.sal_dir / f"{entry.id}.png" for entry in job.entries]  # missing ones: reported above
            _saliency_maps_sanity(report, job.sal_dir, maps, "the off-the-shelf maps")
    sets: list[tuple[str, str]] = []
    if "fit" in stages and hp.saliency_train_root:
        sets.append((hp.saliency_train_name, hp.saliency_train_root))
    eval_stages = (["validate"] if stages & {"fit", "validate"} else []) + (["test"] if "test" in stages else [])
    for eval_stage in eval_stages:
        # a val / test set that is not on disk is skipped (a warning) unless missing_saliency_sets is "error"
        sets += list(datamodule.saliency_eval_sets(eval_stage).items())
        if hp.missing_saliency_sets == "skip":
            for name, why in datamodule.missing_saliency_sets(eval_stage).items():
                report.add(Problem("saliency set not on disk (skipped)", name, why, warning=True))
    _saliency_sets(datamodule, report, dict.fromkeys(sets), full, progress)
    return report

"""Split list files: finding them, parsing both published line styles, and keeping ids inside the root.

Two line styles exist in the wild and both are accepted, per line:

* plain ids, one per line (VOC ``ImageSets/Segmentation/train.txt``, AuxSegNet ``train_aug_id.txt``);
* DeepLab path pairs, ``/JPEGImages/2007_000032.jpg /SegmentationClassAug/2007_000032.png`` (the SBD
  ``train_aug.txt`` most users have). The id is the stem of the first path.

Paths in list files are relative to the dataset root even when they start with ``/`` (DeepLab's
convention); ``..`` components and ids with path separators are rejected, so a list file can never make
the loader read outside the root.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from wsss_lightning.data.io import DatasetError

_ID_PATTERN = re.compile(r"^[A-Za-z0-9_.\-]+$")

# Names under which the same split is published by different sources (SBD/DeepLab, jsws, AuxSegNet, COCO WSSS).
SPLIT_ALIASES: dict[str, tuple[str, ...]] = {
    # mmsegmentation's VOC aug recipe writes ImageSets/Segmentation/aug.txt
    "train_aug": ("train_aug", "trainaug", "train_aug_id", "aug"),
    "trainaug": ("trainaug", "train_aug", "train_aug_id", "aug"),
    "train": ("train", "train_id"),
    "val": ("val", "val_id"),
    "test": ("test", "test_id"),
}

# DeepLab ships its lists in exper/voc12/list/ (train_aug.txt as path pairs); copied next to the images they stay there
SPLIT_FOLDERS = ("ImageSets/Segmentation", "ImageSets", ".", "list", "lists", "splits")


@dataclass(frozen=True)
class ListEntry:
    """One id read from a list file, with where it came from (for error messages)."""

    id: str
    source: Path
    line: int

    def where(self) -> str:
        if self.line <= 0:  # not from a list file: found in a folder (COCO without lists, label sets)
            return f"found in {self.source}"
        return f"listed in {self.source.name} line {self.line}"


def _id_from_token(token: str, source: Path, line_number: int) -> str:
    path = PurePosixPath(token.replace("\\", "/"))
    if ".." in path.parts:
        raise DatasetError(f"{source} line {line_number}: '{token}' contains '..'; list files may not leave the root")
    identifier = path.stem if path.suffix else path.name
    if not identifier or not _ID_PATTERN.match(identifier):
        raise DatasetError(
            f"{source} line {line_number}: '{token}' is not a valid image id (letters, digits, '_', '-', '.')"
        )
    return identifier


def read_id_list(path: str | Path) -> list[ListEntry]:
    """Parse a split list file into ids, accepting plain ids and DeepLab path pairs; '#' starts a comment."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"split list {path} does not exist")
    entries: list[ListEntry] = []
    seen: dict[str, int] = {}
    for number, raw in enumerate(path.read_text(encoding="utf-8-sig", errors="replace").splitlines(), start=1):
        text = raw.split("#", 1)[0].strip()
        if not text:
            continue
        identifier = _id_from_token(text.split()[0], path, number)
        if identifier in seen:
            raise DatasetError(
                f"{path} line {number}: id {identifier} is listed twice (first on line {seen[identifier]}); "
                "remove the duplicate line"
            )
        seen[identifier] = number
        entries.append(ListEntry(identifier, path, number))
    return entries


def split_candidates(root: Path, split: str) -> list[Path]:
    """The files a split name may live in, in the order they are tried."""
    names = SPLIT_ALIASES.get(split, (split,))
    return [root / folder / f"{name}.txt" for folder in SPLIT_FOLDERS for name in names]


def resolve_split_file(root: str | Path, split: str) -> Path:
    """Find the list file of ``split``: a path (absolute or relative to root) or a split name.

    Raises DatasetError listing every place tried.
    """
    root = Path(root)
    if split.endswith(".txt") or "/" in split:
        candidate = Path(split)
        candidate = candidate if candidate.is_absolute() else root / candidate
        if candidate.is_file():
            return candidate
        raise DatasetError(f"split list {candidate} does not exist")
    candidates = split_candidates(root, split)
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    tried = ", ".join(str(c.relative_to(root)) for c in candidates[:6])
    hint = ""
    if split in ("train_aug", "trainaug"):  # VOC alone has no train_aug: SBD's masks and ids make it
        hint = (
            "; VOC's augmented training set comes from SBD: `wsss data sbd-masks --sbd benchmark_RELEASE "
            f"--voc {root}` writes SegmentationClassAug/ and train_aug.txt (or train on VOC's 1,464 ids with "
            "--data.train_split train)"
        )
    raise DatasetError(
        f"no list file for split '{split}' under {root} (tried {tried}, ...); check --data.root points at the "
        f"dataset folder (e.g. VOCdevkit/VOC2012) or pass the list file's path as the split{hint}"
    )

"""Image-level class labels: the only supervision WSSS trains on.

Sources (``label_source``):

* ``xml``   — VOC ``Annotations/<id>.xml``: every ``<object><name>`` (difficult ones included, as PSA's
  ``cls_labels.npy`` was built).
* ``masks`` — derived from the ground-truth masks: class c is present if any pixel equals c (255 ignored);
  what jsws (SSNet) does with SegmentationClassAug.
* ``json``  — ``{"labels": {"<id>": [1, 15]}}`` or ``{"<id>": [1, 15]}``: class indices 1..C-1 (the format
  ``wsss data coco-masks`` writes). Plain data, no code.
* ``txt``   — lines ``<id> <class index> <class index> ...``.
* ``npy``   — PSA/AuxSegNet ``cls_labels.npy`` (a pickled dict id -> multi-hot float vector without
  background; IRN's integer keys, ``2007000032``, read as ``2007_000032``). A pickle can run code, so it is read
  only with ``allow_pickle=True`` (opt-in).

All sources return a multi-hot ``float32`` vector of length ``C-1`` (index k is class k+1).
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ElementTree
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Literal

import numpy as np

from wsss_lightning.data.io import DatasetError, read_label

LabelSourceName = Literal["auto", "xml", "masks", "json", "txt", "npy"]


def _vector(indices: Iterable[int], num_foreground: int, where: str) -> np.ndarray:
    vector = np.zeros(num_foreground, dtype=np.float32)
    for index in indices:
        index = int(index)
        if not 1 <= index <= num_foreground:
            raise DatasetError(f"{where}: class index {index} is outside 1..{num_foreground}")
        vector[index - 1] = 1.0
    return vector


def labels_from_xml(path: Path, class_names: Sequence[str]) -> np.ndarray:
    """Multi-hot vector from a VOC annotation file; unknown class names are an error naming the file."""
    lookup = {name.lower().replace(" ", ""): i for i, name in enumerate(class_names)}
    try:
        tree = ElementTree.parse(path)
    except FileNotFoundError as error:
        raise DatasetError(f"{path} does not exist (needed for label_source='xml')") from error
    except ElementTree.ParseError as error:
        raise DatasetError(f"{path} is not valid XML ({error}); re-extract the VOC Annotations folder") from error
    indices = []
    for node in tree.getroot().iter("object"):
        name = (node.findtext("name") or "").strip()
        key = name.lower().replace(" ", "")
        if key not in lookup or lookup[key] == 0:
            shown = ", ".join(class_names[1:6]) + (", ..." if len(class_names) > 6 else "")
            raise DatasetError(
                f"{path}: object class '{name}' is not one of the {len(class_names) - 1} configured classes "
                f"({shown}); set --data.class_names to the dataset's names, background first (--data.class_names "
                "null with --data.dataset voc gives the 20 VOC classes)"
            )
        indices.append(lookup[key])
    return _vector(indices, len(class_names) - 1, str(path))


def labels_from_mask(mask: np.ndarray, num_classes: int, where: str = "mask", ignore_index: int = 255) -> np.ndarray:
    """Multi-hot vector of the classes present in a label map (background and ``ignore_index`` skipped)."""
    values = np.unique(mask)
    values = values[(values != 0) & (values != ignore_index)]
    return _vector(values.tolist(), num_classes - 1, where)


def _load_json(path: Path, num_foreground: int) -> dict[str, np.ndarray]:
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))
    except FileNotFoundError as error:
        raise DatasetError(f"label file {path} does not exist") from error
    except json.JSONDecodeError as error:
        raise DatasetError(f"label file {path} is not valid JSON ({error})") from error
    table = data.get("labels", data) if isinstance(data, dict) else None
    if not isinstance(table, dict):
        raise DatasetError(f"label file {path} must map ids to lists of class indices (1..{num_foreground})")
    return {str(key): _vector(value, num_foreground, f"{path} id {key}") for key, value in table.items()}


def _load_txt(path: Path, num_foreground: int) -> dict[str, np.ndarray]:
    if not path.is_file():
        raise DatasetError(f"label file {path} does not exist")
    table = {}
    for number, raw in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), start=1):
        parts = raw.split("#", 1)[0].split()
        if not parts:
            continue
        try:
            indices = [int(p) for p in parts[1:]]
        except ValueError as error:
            raise DatasetError(f"{path} line {number}: class indices must be integers ({error})") from error
        table[parts[0]] = _vector(indices, num_foreground, f"{path} line {number}")
    return table


def _load_npy(path: Path, num_foreground: int, allow_pickle: bool) -> dict[str, np.ndarray]:
    if not allow_pickle:
        raise DatasetError(
            f"{path} is a pickled dict (PSA/AuxSegNet cls_labels.npy); unpickling can run code, so it is read only "
            "with --data.allow_pickle_labels true. Safer: use label_source 'xml' or 'masks', or a JSON label file"
        )
    if not path.is_file():
        raise DatasetError(f"label file {path} does not exist")
    data = np.load(path, allow_pickle=True)
    table = data.item() if data.dtype == object and data.shape == () else None
    if not isinstance(table, dict):
        raise DatasetError(f"{path} does not hold a dict id -> label vector (PSA cls_labels.npy format)")
    result = {}
    for key, value in table.items():
        vector = np.asarray(value, dtype=np.float32).reshape(-1)
        if vector.shape[0] != num_foreground:
            raise DatasetError(f"{path}: id {key} has {vector.shape[0]} entries, expected {num_foreground}")
        result[_npy_key(key)] = (vector > 0.5).astype(np.float32)
    return result


def _npy_key(key: object) -> str:
    """The image id of a ``cls_labels.npy`` key: PSA's are the ids themselves (``'2007_000032'``); IRN's (and the
    many methods built on it) are integers from its ``encode_int_filename`` (``2007000032``), decoded back the
    way its ``decode_int_filename`` does, the year then the rest."""
    if isinstance(key, (int, np.integer)) and not isinstance(key, bool):
        digits = str(int(key))
        return f"{digits[:4]}_{digits[4:]}" if len(digits) == 10 else digits
    return str(key)


class ImageLabels:
    """Looks up the multi-hot label vector of an id from one configured source.

    Args:
        source: one of the sources in the module docstring; ``auto`` = ``xml`` when an ``Annotations``
            folder is given and exists, else ``masks``.
        num_classes: C including background.
        class_names: C names (index 0 = background); needed for ``xml``.
        annotation_dir: folder of VOC XML files.
        mask_dir: folder of ground-truth masks (``masks`` source).
        labels_file: the ``json`` / ``txt`` / ``npy`` file.
        allow_pickle: opt-in for ``npy``.
    """

    def __init__(
        self,
        source: LabelSourceName,
        num_classes: int,
        class_names: Sequence[str],
        annotation_dir: Path | None = None,
        mask_dir: Path | None = None,
        labels_file: Path | None = None,
        allow_pickle: bool = False,
    ) -> None:
        if source == "auto":
            if labels_file is not None:
                source = {".json": "json", ".txt": "txt", ".npy": "npy"}.get(labels_file.suffix, "json")
            elif annotation_dir is not None and annotation_dir.is_dir():
                source = "xml"
            else:
                source = "masks"
        self.source = source
        self.num_classes = num_classes
        self.class_names = tuple(class_names)
        self.annotation_dir = annotation_dir
        self.mask_dir = mask_dir
        self.labels_file = labels_file
        self._cache: dict[str, np.ndarray] = {}
        if source in ("json", "txt", "npy"):
            if labels_file is None:
                raise DatasetError(f"label_source '{source}' needs --data.labels_file")
            loader = {"json": _load_json, "txt": _load_txt}.get(source)
            self._cache = (
                loader(labels_file, num_classes - 1)
                if loader
                else _load_npy(labels_file, num_classes - 1, allow_pickle)
            )
        elif source == "xml" and (annotation_dir is None or not annotation_dir.is_dir()):
            raise DatasetError(f"label_source 'xml' needs an Annotations folder; {annotation_dir} does not exist")
        elif source == "masks" and (mask_dir is None or not mask_dir.is_dir()):
            raise DatasetError(f"label_source 'masks' needs the ground-truth mask folder; {mask_dir} does not exist")

    def path_for(self, identifier: str) -> Path | None:
        """The file the label of ``identifier`` comes from (for error messages), if per-id."""
        if self.source == "xml":
            return self.annotation_dir / f"{identifier}.xml"
        if self.source == "masks":
            return self.mask_dir / f"{identifier}.png"
        return self.labels_file

    def has(self, identifier: str) -> bool:
        if self.source in ("json", "txt", "npy"):
            return identifier in self._cache
        path = self.path_for(identifier)
        return path is not None and path.is_file()

    def get(self, identifier: str) -> np.ndarray:
        """Multi-hot ``float32 (C-1,)``; raises DatasetError naming the file when it cannot be found."""
        cached = self._cache.get(identifier)
        if cached is not None:
            return cached
        if self.source in ("json", "txt", "npy"):
            raise DatasetError(f"{self.labels_file} has no label for id {identifier}; add it or fix the split list")
        path = self.path_for(identifier)
        if self.source == "xml":
            vector = labels_from_xml(path, self.class_names)
        else:
            if not path.is_file():
                raise DatasetError(f"{path} does not exist (needed to derive the image-level label of {identifier})")
            vector = labels_from_mask(read_label(path), self.num_classes, str(path))
        self._cache[identifier] = vector
        return vector

    def unknown_ids(self, ids: Iterable[str]) -> list[str]:
        """Ids in a label file that the split does not list (a sign of a wrong file or split)."""
        if self.source not in ("json", "txt", "npy"):
            return []
        known = set(ids)
        return sorted(key for key in self._cache if key not in known)


class AugmentedCopyLabels:
    """Labels of augmented copies named ``<id>_<t>``: the label of ``<id>`` (SSNet stage-2 training set).

    The copies are crops of at least 90 % of a rotated image, so the parent's classes are kept (the official
    code re-derives them from the augmented GT mask, which a weakly supervised run does not have).
    """

    def __init__(self, parent: ImageLabels) -> None:
        self.parent = parent
        self.source = parent.source

    @staticmethod
    def parent_id(identifier: str) -> str:
        stem, _, index = identifier.rpartition("_")
        return stem if stem and index.isdigit() else identifier

    def get(self, identifier: str) -> np.ndarray:
        return self.parent.get(self.parent_id(identifier))

    def has(self, identifier: str) -> bool:
        return self.parent.has(self.parent_id(identifier))

    def path_for(self, identifier: str) -> Path | None:
        return self.parent.path_for(self.parent_id(identifier))

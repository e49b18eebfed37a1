"""Security: no user file is unpickled without an opt-in, list files stay inside the root, outputs never clobber.

Every pickle-capable load in the package (``grep -rn "torch.load\\|np.load\\|pickle" wsss_lightning``):

* ``data/labels.py`` ``np.load(allow_pickle=True)`` of ``cls_labels.npy``: only with ``allow_pickle_labels``;
* ``models/checkpoint.py`` ``torch.load(weights_only=...)``: ``True`` unless the backbone's ``weights_only: false``;
* ``trainer.py`` (``wsss pseudolabel``) ``torch.load(weights_only=True)`` to read the checkpoint's step;
* Lightning's ``--ckpt_path`` loads: ``torch.load(weights_only=None)``, i.e. torch's default ``True``
  (torch >= 2.6) unless ``--weights_only false``.

The malicious files here run ``Path.touch`` on a sentinel when unpickled: the sentinel proves whether code ran.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from lightning.pytorch.demos.boring_classes import BoringModel

from wsss_lightning.data.demo import main as demo_main
from wsss_lightning.data.io import DatasetError
from wsss_lightning.data.labels import ImageLabels
from wsss_lightning.data.splits import read_id_list
from wsss_lightning.models.checkpoint import CheckpointError, load_state_dict_file
from wsss_lightning.trainer import OUTPUT_MARKER, WSSSTrainer, claim_output_dir


class Payload:
    """Unpickling this object creates ``sentinel`` (stands in for arbitrary code execution)."""

    def __init__(self, sentinel: Path) -> None:
        self.sentinel = sentinel

    def __reduce__(self):
        return (Path.touch, (self.sentinel,))


def test_pickled_cls_labels_refused_without_opt_in(tmp_path: Path) -> None:
    sentinel = tmp_path / "code_ran"
    evil = tmp_path / "cls_labels.npy"
    np.save(evil, np.array({"a": Payload(sentinel)}, dtype=object), allow_pickle=True)
    with pytest.raises(DatasetError, match=r"cls_labels.npy is a pickled dict .*--data.allow_pickle_labels true"):
        ImageLabels("npy", 3, ["bg", "x", "y"], labels_file=evil)
    assert not sentinel.exists(), "the pickle was executed without the opt-in"

    benign = tmp_path / "benign.npy"
    np.save(benign, np.array({"2007_000032": np.array([0.0, 1.0])}, dtype=object), allow_pickle=True)
    labels = ImageLabels("npy", 3, ["bg", "x", "y"], labels_file=benign, allow_pickle=True)  # the explicit opt-in
    assert labels.get("2007_000032").tolist() == [0.0, 1.0]


def test_weights_with_pickled_objects_refused_unless_weights_only_off(tmp_path: Path) -> None:
    sentinel = tmp_path / "code_ran"
    evil = tmp_path / "backbone.pth"
    torch.save({"weight": torch.ones(2), "extra": Payload(sentinel)}, evil)
    with pytest.raises(CheckpointError, match=r"backbone.pth holds Python objects .*weights_only=False"):
        load_state_dict_file(evil)
    assert not sentinel.exists()

    benign = tmp_path / "trusted.pth"
    torch.save({"state_dict": {"weight": torch.ones(2)}, "meta": pickle.loads(pickle.dumps(Path("x")))}, benign)
    with pytest.raises(CheckpointError):
        load_state_dict_file(benign)  # a Path object is not a tensor: refused by default
    state = load_state_dict_file(benign, weights_only=False)  # the user's explicit opt-out
    assert state["weight"].tolist() == [1.0, 1.0]


def test_lightning_ckpt_path_loads_with_weights_only(tmp_path: Path) -> None:
    """``--ckpt_path`` goes through torch.load's default weights_only=True: a pickled payload is refused."""
    sentinel = tmp_path / "code_ran"
    model = BoringModel()
    checkpoint = {"state_dict": model.state_dict(), "epoch": 0, "global_step": 0, "pytorch-lightning_version": "2.6.0",
                  "loops": {}, "evil": Payload(sentinel)}  # fmt: skip
    evil = tmp_path / "evil.ckpt"
    torch.save(checkpoint, evil)
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
                        limit_val_batches=1, default_root_dir=tmp_path)  # fmt: skip
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        trainer.validate(model, ckpt_path=str(evil), verbose=False)
    assert not sentinel.exists()


@pytest.mark.parametrize(
    "line", ["../JPEGImages/x.jpg", "a/../../etc/passwd", "..\\..\\secret.jpg", "x;rm -rf", "/JPEGImages/../../x.jpg"]
)
def test_list_files_cannot_leave_the_root(tmp_path: Path, line: str) -> None:
    listing = tmp_path / "train.txt"
    listing.write_text(f"2007_000032\n{line}\n")
    with pytest.raises(DatasetError, match=r"train.txt line 2"):
        read_id_list(listing)


def test_absolute_list_paths_are_taken_inside_the_root(tmp_path: Path) -> None:
    """DeepLab's ``/JPEGImages/<id>.jpg`` pairs (and any absolute path) reduce to an id: only the stem is kept."""
    listing = tmp_path / "train_aug.txt"
    listing.write_text("/JPEGImages/2007_000032.jpg /SegmentationClassAug/2007_000032.png\n/etc/passwd\n")
    assert [entry.id for entry in read_id_list(listing)] == ["2007_000032", "passwd"]


def _foreign(tmp_path: Path) -> tuple[Path, Path]:
    folder = tmp_path / "photos"
    folder.mkdir()
    precious = folder / "holiday.png"
    precious.write_bytes(b"not ours")
    return folder, precious


def test_output_commands_refuse_a_foreign_non_empty_folder(tmp_path: Path) -> None:
    folder, precious = _foreign(tmp_path)
    trainer = WSSSTrainer(accelerator="cpu", logger=False, enable_progress_bar=False, default_root_dir=tmp_path)
    with pytest.raises(FileExistsError, match=r"photos is not empty and was not written by `wsss predict`"):
        trainer.predict(None, out_dir=str(folder))
    with pytest.raises(FileExistsError, match=r"was not written by `wsss pseudolabel`"):
        trainer.pseudolabel(None, None, out_dir=str(folder))
    assert demo_main(["--out", str(folder), "--tiny"]) == 2
    assert sorted(p.name for p in folder.iterdir()) == ["holiday.png"] and precious.read_bytes() == b"not ours"


def test_output_folders_we_created_are_reused(tmp_path: Path) -> None:
    fresh = claim_output_dir(tmp_path / "new" / "predictions", "predict")
    assert json.loads((fresh / OUTPUT_MARKER).read_text()) == {"written_by": "wsss predict"}
    (fresh / "masks").mkdir()
    assert claim_output_dir(fresh, "predict") == fresh  # our marker: accepted again
    label_set = tmp_path / "labels"
    label_set.mkdir()
    (label_set / "manifest.json").write_text("{}")  # a set written by `wsss fit` (no marker, a manifest)
    assert claim_output_dir(label_set, "pseudolabel", ours=("manifest.json",)) == label_set
    empty = tmp_path / "empty"
    empty.mkdir()
    assert claim_output_dir(empty, "predict") == empty
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    with pytest.raises(FileExistsError, match="not a directory"):
        claim_output_dir(a_file, "predict")

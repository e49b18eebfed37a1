"""``WSSSTrainer``: Lightning's Trainer with the options our subcommands add.

* ``test(..., results_json=...)``: where the results JSON goes (default ``<log_dir>/test_results.json``);
* ``predict(..., out_dir=...)``: write palette masks + grey saliency PNGs for the predicted images;
* ``pseudolabel(...)``: (re)write a pseudo-label set for the training ids from a checkpoint, on every
  device, resumable — the ``wsss pseudolabel`` subcommand (LightningCLI turns Trainer methods into
  subcommands).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from wsss_lightning.callbacks.label_sets import pending_names
from wsss_lightning.callbacks.prediction_writer import MaskWriter, PseudoLabelSetWriter
from wsss_lightning.data.collate import pad_collate
from wsss_lightning.data.io import atomic_write_text

OUTPUT_MARKER = ".wsss_output.json"


def claim_output_dir(path: str | Path, command: str, ours: tuple[str, ...] = ()) -> Path:
    """Make ``path`` an output folder of ``command``; refuse a non-empty folder we did not create.

    Ours = it holds our marker file (written here) or one of the ``ours`` glob patterns (e.g. a label set's
    manifest). Nothing is ever deleted: files we write replace only files of the same name.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise FileExistsError(f"{path} exists and is not a directory; pass another --out_dir")
    if path.is_dir() and any(path.iterdir()):
        marked = (path / OUTPUT_MARKER).is_file() or any(any(path.glob(pattern)) for pattern in ours)
        if not marked:
            raise FileExistsError(
                f"{path} is not empty and was not written by `wsss {command}` (no {OUTPUT_MARKER}); pass a new or "
                "empty --out_dir (nothing is overwritten or deleted in a folder we did not create)"
            )
    path.mkdir(parents=True, exist_ok=True)
    if not (path / OUTPUT_MARKER).is_file():
        atomic_write_text(path / OUTPUT_MARKER, json.dumps({"written_by": f"wsss {command}"}))
    return path


class WSSSTrainer(L.Trainer):
    """``lightning.Trainer`` plus ``pseudolabel`` and output options for ``test`` / ``predict``.

    A ``ModelCheckpoint`` without ``dirpath`` saves to ``<default_root_dir>/checkpoints`` (not into the logger's
    versioned folder), so ``fit`` and a later ``test --ckpt_path last`` with the same config meet in one place and
    a run is moved or repeated by changing ``--trainer.default_root_dir`` alone.
    """

    results_json: str | None = None

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        for callback in self.checkpoint_callbacks:
            if isinstance(callback, ModelCheckpoint) and callback.dirpath is None:
                callback.dirpath = os.path.realpath(os.path.join(self.default_root_dir, "checkpoints"))

    def test(self, model=None, dataloaders=None, ckpt_path=None, verbose: bool = False, datamodule=None,
             weights_only: bool | None = None, results_json: str | None = None):  # fmt: skip
        """Score the model: mIoU per inference mode on the test split, saliency metrics per saliency set.

        Args:
            verbose: also print Lightning's flat metric table (our labelled table is always printed).
            results_json: where to write the results (default ``<log_dir>/test_results.json``).
        """
        self.results_json = results_json
        return super().test(model, dataloaders, ckpt_path, verbose, datamodule, weights_only)

    def predict(self, model=None, dataloaders=None, datamodule=None, return_predictions=None, ckpt_path=None,
                weights_only: bool | None = None, out_dir: str | None = None):  # fmt: skip
        """Predict masks and saliency maps (``data.predict_dir`` images, or the val split).

        Args:
            out_dir: write ``masks/<name>.png`` (palette) and ``saliency/<name>.png`` (grey) there.
        """
        if out_dir is not None:
            if self.is_global_zero:
                claim_output_dir(out_dir, "predict")
            self.callbacks.append(MaskWriter(out_dir))
            return_predictions = False if return_predictions is None else return_predictions
        return super().predict(model, dataloaders, datamodule, return_predictions, ckpt_path, weights_only)

    def pseudolabel(
        self,
        model: L.LightningModule,
        datamodule: L.LightningDataModule,
        ckpt_path: str | None = None,
        out_dir: str = "pseudo_labels/manual",
        kind: str = "refined",
        stage: int = 0,
        batch_size: int = 1,
        num_workers: int = 2,
        crf_workers: int = 0,
        verify_checksums: bool = True,
    ) -> dict | None:
        """Write pseudo-labels for the training ids from a checkpoint (resumable: finished ids are kept).

        Args:
            ckpt_path: the checkpoint to label with (``last``/``best``/path); none = the model as configured.
            out_dir: the label set's folder (``seg/``, ``sal/``, ``manifest.json``, ``quality.json``).
            kind: the method's label kind: AuxSegNet ``initial`` (multi-scale CAM + off-the-shelf saliency) or
                ``refined`` (affinity-propagated CAM + updated saliency); SSNet ``ssnet`` (augmented copies + CRF).
            stage: recorded in the manifest.
            batch_size, num_workers: the loader over full-size training images.
            crf_workers: CPU processes for CRF and PNG encoding.
            verify_checksums: re-hash reused files before trusting them.
        """
        out = Path(out_dir)
        if self.is_global_zero:  # a label set of ours shows by its manifest (sets written by `wsss fit` too)
            claim_output_dir(out, "pseudolabel", ours=("manifest.json", "manifest.rank*.jsonl"))
        if ckpt_path not in (None, "last", "best", "hpc"):
            state = torch.load(ckpt_path, map_location="cpu", weights_only=True)
            step = int(state.get("global_step", 0))
        else:
            step = 0
        dataset = datamodule.refresh_dataset()
        config = {**model.label_config(kind), "stage": stage, "model_step": step}
        pending = pending_names(out, config, dataset.ids, verify_checksums)
        loader = torch.utils.data.DataLoader(
            torch.utils.data.Subset(dataset, pending),
            batch_size=batch_size,
            num_workers=num_workers,
            collate_fn=pad_collate,
        )
        reused = len(dataset.ids) - len(pending)
        writer = PseudoLabelSetWriter(datamodule, out, kind, stage, config, crf_workers, reused)
        if not pending:  # everything is written already: only re-merge and re-score (no model run needed)
            writer.on_predict_start(self, model)
            writer.on_predict_end(self, model)
            return writer.record
        self.callbacks.append(writer)
        super().predict(model, dataloaders=loader, datamodule=None, return_predictions=False, ckpt_path=ckpt_path)
        return writer.record

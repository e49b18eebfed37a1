"""``WSSSTrainer``: Lightning's Trainer with the options our subcommands add.

* ``test(..., results_json=..., bar=True)``: where the results JSON goes (default ``<log_dir>/test_results.json``),
  and the no-training bar (image labels + saliency) of the tested split beside every mode;
* ``predict(..., out_dir=...)``: write palette masks + grey saliency PNGs for the predicted images;
* ``pseudolabel(...)``: (re)write a pseudo-label set for the training ids from a checkpoint, on every
  device, resumable — the ``wsss pseudolabel`` subcommand (LightningCLI turns Trainer methods into
  subcommands).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from wsss_lightning.callbacks.prediction_writer import MaskWriter
from wsss_lightning.data.baselines import MissingSaliencyMaps, compare_to_bar, label_free_bar
from wsss_lightning.data.datamodule import WSSSDataModule
from wsss_lightning.data.io import DatasetError, atomic_write_text
from wsss_lightning.label_runner import LabelRunOptions, label_config, run_label_set
from wsss_lightning.modules.base import WSSSModule
from wsss_lightning.pseudo.health import HealthPolicy
from wsss_lightning.pseudo.label_set import LabelSet
from wsss_lightning.run_checkpoints import resolve

log = logging.getLogger(__name__)

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

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        for callback in self.checkpoint_callbacks:
            if isinstance(callback, ModelCheckpoint) and callback.dirpath is None:
                callback.dirpath = os.path.realpath(os.path.join(self.default_root_dir, "checkpoints"))

    @property
    def checkpoint_folder(self) -> Path:
        """Where this run's checkpoints are (the first ``ModelCheckpoint``'s folder)."""
        for callback in self.checkpoint_callbacks:
            if isinstance(callback, ModelCheckpoint) and callback.dirpath is not None:
                return Path(callback.dirpath)
        return Path(self.default_root_dir) / "checkpoints"

    def resolve_ckpt_path(self, ckpt_path, model, for_fit: bool = False):
        """``--ckpt_path`` as a file (``run_checkpoints.resolve``): printed, checked against ``model``."""
        return resolve(
            ckpt_path, self.checkpoint_folder, Path(self.default_root_dir), model, allow_missing_last=for_fit,
            echo=lambda line: print(line) if self.is_global_zero else None,
        )  # fmt: skip

    def fit(self, model, train_dataloaders=None, val_dataloaders=None, datamodule=None, ckpt_path=None,
            weights_only: bool | None = None):  # fmt: skip
        ckpt_path = self.resolve_ckpt_path(ckpt_path, model, for_fit=True)
        output = super().fit(model, train_dataloaders, val_dataloaders, datamodule, ckpt_path, weights_only)
        log_dir = self.log_dir  # a collective under DDP: every rank asks
        if self.is_global_zero and self.state.finished:
            print(f"wsss: checkpoints in {self.checkpoint_folder}" + (f", logs in {log_dir}" if log_dir else ""))
        return output

    def validate(self, model=None, dataloaders=None, ckpt_path=None, verbose: bool = True, datamodule=None,
                 weights_only: bool | None = None):  # fmt: skip
        ckpt_path = self.resolve_ckpt_path(ckpt_path, model or self.lightning_module)
        return super().validate(model, dataloaders, ckpt_path, verbose, datamodule, weights_only)

    def test(self, model=None, dataloaders=None, ckpt_path=None, verbose: bool = False, datamodule=None,
             weights_only: bool | None = None, results_json: str | None = None, bar: bool = True):  # fmt: skip
        """Score the model: mIoU per inference mode on the test split, saliency metrics per saliency set.

        Args:
            verbose: also print Lightning's flat metric table (our labelled table is always printed).
            results_json: where to write the results (default ``<log_dir>/test_results.json``).
            bar: also score the no-training bar (ground-truth image labels + the configured saliency maps,
                ``data/baselines.py``) on the test split, set every mode against it and warn loudly when none
                clears it; skipped with a note when the split has no saliency maps.
        """
        ckpt_path = self.resolve_ckpt_path(ckpt_path, model or self.lightning_module)
        output = super().test(model, dataloaders, ckpt_path, verbose, datamodule, weights_only)
        module = self.lightning_module
        log_dir = self.log_dir  # a collective under DDP: every rank asks
        if self.is_global_zero and isinstance(module, WSSSModule) and module.test_results:
            if bar:
                self._report_bar(module.test_results)
            path = Path(results_json) if results_json else Path(log_dir or self.default_root_dir) / "test_results.json"
            atomic_write_text(path, json.dumps(module.test_results, indent=2, allow_nan=False))
            print(f"test results written to {path}")
        return output

    def _report_bar(self, results: dict) -> None:
        """Add the no-training bar of each tested split to ``results["bar"]``, print it against the modes, log it
        (``test/bar/mIoU``) and warn loudly when no mode clears it (rank 0)."""
        datamodule = self.datamodule
        if not isinstance(datamodule, WSSSDataModule):
            return
        saliency_dir = datamodule.hparams.saliency_dir
        for split, per_mode in results.get("segmentation", {}).items():
            gt_dir = datamodule.val_gt_dir(split)
            if saliency_dir is None or gt_dir is None:
                print(f"no-training bar on split '{split}': not scored (no off-the-shelf saliency maps configured)")
                continue
            try:
                # absolute: the datamodule's folders already hold a relative root, which label_free_bar would
                # prepend again
                bar = label_free_bar(
                    datamodule.root, split, datamodule.path(saliency_dir).absolute(), gt_dir.absolute(),
                    datamodule.class_names,
                )  # fmt: skip
            except MissingSaliencyMaps as error:
                print(
                    f"no-training bar on split '{split}': not scored ({error}; `wsss data baselines --split "
                    "<a split the maps cover>` scores it there)"
                )
                continue
            except (DatasetError, ValueError) as error:
                print(f"no-training bar on split '{split}': not scored ({error})")
                continue
            results.setdefault("bar", {})[split] = bar
            line, warning = compare_to_bar(per_mode, bar)
            print(line)
            if warning is not None:
                log.warning(warning)
            for logger in self.loggers:
                logger.log_metrics({"test/bar/mIoU": bar["mIoU"]}, step=self.global_step)
                logger.save()

    def predict(self, model=None, dataloaders=None, datamodule=None, return_predictions=None, ckpt_path=None,
                weights_only: bool | None = None, out_dir: str | None = None):  # fmt: skip
        """Predict masks and saliency maps (``data.predict_dir`` images, or the val split).

        Args:
            out_dir: write ``masks/<name>.png`` (palette) and ``saliency/<name>.png`` (grey) there.
        """
        ckpt_path = self.resolve_ckpt_path(ckpt_path, model or self.lightning_module)
        writer = None
        if out_dir is not None:
            if self.is_global_zero:
                claim_output_dir(out_dir, "predict")
            writer = MaskWriter(out_dir)
            self.callbacks.append(writer)
            return_predictions = False if return_predictions is None else return_predictions
        output = super().predict(model, dataloaders, datamodule, return_predictions, ckpt_path, weights_only)
        if writer is not None and self.is_global_zero:
            print(f"wsss: wrote {writer.count} masks to {Path(out_dir) / 'masks'} and saliency maps to "
                  f"{Path(out_dir) / 'saliency'}")  # fmt: skip
        return output

    def pseudolabel(
        self,
        model: WSSSModule,
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

        The same runner as the refreshes of ``wsss fit`` writes the set (``label_runner.py``); Lightning's predict
        only carries it onto every device (DDP processes, precision).

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
        label_set = LabelSet(out_dir)
        if self.is_global_zero:  # a label set of ours shows by its manifest (sets written by `wsss fit` too)
            claim_output_dir(label_set.root, "pseudolabel", ours=("manifest.json", "manifest.rank*.jsonl"))
        step = 0
        resolved = self.resolve_ckpt_path(ckpt_path, model)
        if resolved is not None:
            step = load_weights(model, resolved)
        datamodule.setup("fit")
        options = LabelRunOptions(batch_size, num_workers, crf_workers, verify_checksums)
        config = label_config(model, kind, stage, step, datamodule)
        task = LabelSetTask(model, datamodule, label_set, kind, stage, config, options)
        # one item per rank: the task's single predict step runs the whole (sharded) set
        carrier = torch.utils.data.DataLoader(
            list(range(self.world_size)), batch_size=1, generator=torch.Generator().manual_seed(0)
        )
        super().predict(task, dataloaders=carrier, return_predictions=False)
        if task.record is not None:
            # a set written on request is kept whatever its health; a degenerate one is announced loudly
            HealthPolicy(action="warn").check(task.record, f"the label set in {label_set.root}")
        return task.record


class LabelSetTask(L.LightningModule):
    """Carries ``wsss pseudolabel`` through Lightning's predict loop (devices, DDP processes, precision): its one
    predict step runs :func:`~wsss_lightning.label_runner.run_label_set` with the wrapped method."""

    def __init__(
        self,
        method: WSSSModule,
        datamodule: L.LightningDataModule,
        label_set: LabelSet,
        kind: str,
        stage: int,
        config: dict,
        options: LabelRunOptions,
    ) -> None:
        super().__init__()
        self.method = method
        self.label_datamodule = datamodule
        self.label_set = label_set
        self.kind = kind
        self.label_stage = stage
        self.config = config
        self.options = options
        self.record: dict | None = None

    def configure_model(self) -> None:
        self.method.configure_model()  # the method's speed switches (channels-last, compile)

    def predict_step(self, batch, batch_idx: int) -> None:
        self.record = run_label_set(
            self.trainer, self.method, self.label_datamodule, self.label_set, self.kind, self.label_stage,
            self.config, self.options,
        )  # fmt: skip


def load_weights(model: L.LightningModule, path: str | Path) -> int:
    """Load a Lightning checkpoint's weights into ``model`` (``weights_only``); returns its global step."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(state["state_dict"])
    return int(state.get("global_step", 0))

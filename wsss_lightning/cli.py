"""The ``wsss`` command.

Training subcommands run on LightningCLI (``fit``, ``validate``, ``test``, ``predict``, ``pseudolabel``): they
share configs (``--config`` repeats and composes, a file's ``__base__`` list names the pieces it builds on —
``config_files.py`` —, ``--print_config`` shows the resolved result, any value is overridable, e.g.
``--data.root /datasets/VOCdevkit/VOC2012``). ``data.num_classes`` is linked to the model.

Non-training subcommands share the entry point:

* ``wsss evaluate --task seg|sal --pred DIR --gt DIR``   score any folder of predictions;
* ``wsss data check --config CFG``                       validate a dataset before training;
* ``wsss data demo --out DIR``                           generate the synthetic demo dataset;
* ``wsss data coco-masks --instances JSON --out DIR``    COCO instances -> class-index PNG masks;
* ``wsss data sbd-masks --sbd DIR --voc VOC2012``        SBD .mat masks -> SegmentationClassAug + train_aug.txt;
* ``wsss data baselines --root VOC2012``                 the label-free baselines a trained run must beat.
"""

from __future__ import annotations

import os
import sys
import warnings
from typing import Any

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
# Lightning warnings that are wrong for this package's runs: a frozen backbone keeps its BatchNorm in eval mode on
# purpose (TimmBackbone.freeze_bn / frozen_levels), and Lightning's own pytree helper trips a torch deprecation.
warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode at the start of training")
warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")

DATA_COMMANDS = ("check", "demo", "coco-masks", "sbd-masks", "baselines")


class CommandLineError(ValueError):
    """A command line that cannot run as given; the message says what to change."""


USAGE = """usage: wsss {fit,validate,test,predict,pseudolabel,evaluate,data} ...

  fit | validate | test | predict | pseudolabel   Lightning subcommands (wsss fit --help)
  evaluate                                         score a folder of predictions (wsss evaluate --help)
  data {check,demo,coco-masks,sbd-masks,baselines} dataset tools (wsss data check --help)
"""


def _cli_class():
    """Build the LightningCLI subclass lazily (importing Lightning takes seconds; ``wsss data demo`` needs none)."""
    from lightning.pytorch.callbacks import Callback, LearningRateMonitor, ProgressBar
    from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback

    from wsss_lightning.callbacks import PseudoLabelRefresh
    from wsss_lightning.callbacks.progress import StageProgressBar
    from wsss_lightning.callbacks.wandb_media import wandb_loggers
    from wsss_lightning.data.datamodule import WSSSDataModule
    from wsss_lightning.modules.base import WSSSModule
    from wsss_lightning.signals import GracefulStop
    from wsss_lightning.trainer import WSSSTrainer

    class ConfigToLoggers(SaveConfigCallback):
        """Saves ``config.yaml`` in the log dir (Lightning's behaviour) and puts the resolved config into the
        W&B run's config under ``cli`` (rank 0), so a run page shows exactly what ran."""

        def save_config(self, trainer, pl_module, stage: str) -> None:
            loggers = wandb_loggers(trainer)
            if not loggers:
                return
            import yaml

            resolved = yaml.safe_load(self.parser.dump(self.config, skip_unset=False))
            for logger in loggers:
                logger.log_hyperparams({"cli": resolved})

    class WSSSCLI(LightningCLI):
        """LightningCLI with the data -> model class-count link and the ``pseudolabel`` subcommand."""

        _command_line: list[str] = []

        @staticmethod
        def subcommands() -> dict[str, set[str]]:
            commands = LightningCLI.subcommands()
            commands["pseudolabel"] = {"model", "datamodule"}
            return commands

        def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
            """Config files with ``__base__`` become repeated ``--config`` (``config_files.py``), from the shell too."""
            from wsss_lightning.config_files import expand_config_args

            if args is not None and not isinstance(args, list):
                return super().parse_arguments(parser, args)
            expanded = expand_config_args(sys.argv[1:] if args is None else list(args))
            self._command_line = expanded
            saved, sys.argv = sys.argv, sys.argv[:1]  # the expanded list replaces the command line, not repeats it
            try:
                super().parse_arguments(parser, expanded)
            finally:
                sys.argv = saved

        def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
            parser.link_arguments("data.num_classes", "model.init_args.num_classes", apply_on="instantiate")
            parser.link_arguments("data.class_names", "model.init_args.class_names", apply_on="instantiate")
            # The stage pipeline is a top-level group (``stages:`` in configs, ``--stages.epochs_per_stage 10``).
            parser.add_lightning_class_args(Callback, "stages", subclass_mode=True, required=False)

        def before_instantiate_classes(self) -> None:
            """Logs follow ``--trainer.default_root_dir`` unless the logger's ``save_dir`` is on the command line."""
            config = self.config[self.subcommand] if self.subcommand else self.config
            logger = config.get("trainer.logger")
            given = any("logger.init_args.save_dir" in a or "logger.save_dir" in a for a in self._command_line)
            root = config.get("trainer.default_root_dir")
            if not given and root and logger and "init_args" in logger and "save_dir" in logger.init_args:
                logger.init_args.save_dir = root

        def before_predict(self) -> None:
            if self.config.predict.get("out_dir") is None:
                raise CommandLineError(
                    "wsss predict writes masks and saliency maps to a folder: give --out_dir DIR "
                    "(and --data.predict_dir for your own images; default: the val split)"
                )

        def _instantiate_trainer(self, config: dict[str, Any], callbacks: list) -> Any:
            # ``stages: null`` (no stage pipeline, e.g. the fully supervised baseline) adds no callback.
            callbacks = [c for c in callbacks if c is not None]
            stages = [c for c in callbacks if isinstance(c, PseudoLabelRefresh)]
            if stages:  # the stage schedule sets the number of epochs: say so instead of overriding silently
                total = stages[0].total_epochs
                if config.get("max_epochs") not in (None, -1, total):
                    raise CommandLineError(
                        f"--trainer.max_epochs {config['max_epochs']} conflicts with the stage schedule, which runs "
                        f"{total} epochs (warm-up {stages[0].warmup_epochs} + stages {stages[0].epochs_per_stage}): "
                        "change --stages.init_args.warmup_epochs / epochs_per_stage instead"
                    )
                config["max_epochs"] = total
            # The stage-aware progress bar, unless the bar is off or the config brings its own.
            configured = config.get("callbacks") or []
            configured = configured if isinstance(configured, list) else [configured]
            if config.get("logger") is False:
                # LearningRateMonitor raises at fit start without a logger; `--trainer.logger false` (a quick run,
                # a debug session) should not need the config's callback list rewritten by hand.
                kept = [c for c in configured if not isinstance(c, LearningRateMonitor)]
                if len(kept) != len(configured):
                    print("wsss: logger is false: dropping LearningRateMonitor (needs a logger)", file=sys.stderr)
                config["callbacks"] = configured = kept
            wants_bar = config.get("enable_progress_bar") in (None, True)
            if wants_bar and not any(isinstance(c, ProgressBar) for c in [*configured, *callbacks]):
                callbacks.append(StageProgressBar())
            if not any(isinstance(c, GracefulStop) for c in [*configured, *callbacks]):
                callbacks.append(GracefulStop())  # SIGTERM / SIGINT / SLURM requeue stop at a safe point
            return super()._instantiate_trainer(config, callbacks)

    def make(args: list[str] | None = None, run: bool = True) -> Any:
        return WSSSCLI(
            WSSSModule,
            WSSSDataModule,
            trainer_class=WSSSTrainer,
            subclass_mode_model=True,
            subclass_mode_data=True,
            auto_configure_optimizers=False,
            save_config_callback=ConfigToLoggers,
            save_config_kwargs={"overwrite": True},
            args=args,
            run=run,
        )

    return make


def build(args: list[str]) -> tuple[Any, Any]:
    """The model and DataModule that ``wsss fit <args>`` would train, built by the same parser (configs compose,
    overrides apply), without running anything: for notebooks and scripts, e.g.
    ``model, data = build(["--config", "configs/demo_auxseg.yaml", "--data.root", "demo_data/VOCdevkit/VOC2012"])``.
    Load trained weights with ``model.load_state_dict(torch.load(ckpt, weights_only=True)["state_dict"])``."""
    cli = _cli_class()(list(args), run=False)
    return cli.model, cli.datamodule


def data_parser(argv: list[str]):
    """A parser for ``wsss data check``: the ``data`` section of the same configs, nothing instantiated but data."""
    from typing import Any as AnyType

    from jsonargparse import ActionConfigFile
    from lightning.pytorch.cli import LightningArgumentParser

    from wsss_lightning.data.datamodule import WSSSDataModule

    parser = LightningArgumentParser(prog="wsss data check")
    parser.add_argument("-c", "--config", action=ActionConfigFile, help="config file(s), as for wsss fit")
    parser.add_lightning_class_args(WSSSDataModule, "data", subclass_mode=True, required=True)
    parser.add_argument("--stage", choices=["fit", "validate", "test", "predict", "all"], default="all")
    parser.add_argument("--quick", action="store_true", help="headers only, as training's setup check")
    # The rest of a training config is accepted and ignored.
    for key in ("model", "trainer", "stages", "seed_everything", "ckpt_path", "fit", "test"):
        parser.add_argument(f"--{key}", type=AnyType, default=None)
    return parser


def data_check(argv: list[str]) -> int:
    from wsss_lightning.config_files import expand_config_args
    from wsss_lightning.data.check import check_datamodule
    from wsss_lightning.data.io import DatasetError

    argv = expand_config_args(argv)
    parser = data_parser(argv)
    config = parser.parse_args(argv)
    try:
        datamodule = parser.instantiate(config).data  # instantiate_classes is deprecated in jsonargparse 4.49+
        stage = None if config.stage == "all" else config.stage
        report = check_datamodule(datamodule, stage=stage, full=not config.quick, progress=True)
    except DatasetError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for problem in report.problems:
        print(problem)
    print(report.summary())
    return 1 if report.errors else 0


def data_main(argv: list[str]) -> int:
    if not argv or argv[0] not in DATA_COMMANDS:
        print(f"usage: wsss data {{{','.join(DATA_COMMANDS)}}} ...", file=sys.stderr)
        return 2
    command, rest = argv[0], argv[1:]
    if command == "check":
        return data_check(rest)
    if command == "demo":
        from wsss_lightning.data.demo import main as demo_main

        return demo_main(rest)
    if command == "baselines":
        from wsss_lightning.data.baselines import main as baselines_main

        return baselines_main(rest)
    if command == "sbd-masks":
        from wsss_lightning.data.sbd_convert import main as sbd_main

        return sbd_main(rest)
    from wsss_lightning.data.coco_convert import main as coco_main

    return coco_main(rest)


def main(argv: list[str] | None = None) -> int:
    from_shell = argv is None
    argv = sys.argv[1:] if from_shell else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if argv else 2
    if argv[0] == "evaluate":
        from wsss_lightning.evaluate import main as evaluate_main

        return evaluate_main(argv[1:])
    if argv[0] == "data":
        return data_main(argv[1:])
    from wsss_lightning.config_files import ConfigError, expand_config_args

    try:
        expand_config_args(argv)  # a broken __base__ chain is reported here, in one line (the CLI expands again)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    from wsss_lightning.data.io import DatasetError
    from wsss_lightning.models.checkpoint import CheckpointError
    from wsss_lightning.modules.collapse import SaliencyCollapseError
    from wsss_lightning.pseudo.health import DegenerateLabelsError

    boundary = (CommandLineError, DatasetError, CheckpointError, ConfigError, FileNotFoundError, FileExistsError)
    not_learning = (DegenerateLabelsError, SaliencyCollapseError)
    try:
        _cli_class()(None if from_shell else argv)
    except not_learning as error:
        # the run went through but stopped learning: the cause and the fix, loudly, not buried in a traceback
        _finish_wandb()
        print(f"error: the run stopped because it is not learning.\n{error}", file=sys.stderr)
        return 3
    except (*boundary, ValueError) as error:
        # bad input at the boundary: one line with the file and the fix, no traceback (jsonargparse wraps what the
        # constructors raise, e.g. a missing weight file, in ValueErrors: the cause names the file)
        cause = _find_cause(error, boundary)
        if cause is None:
            raise
        _finish_wandb()
        print(f"error: {cause}", file=sys.stderr)
        return 2
    except SIGTERMException:
        _finish_wandb()
        print(
            "wsss: stopped by a signal at a safe point; what was finished is saved "
            "(rerun the same command with --ckpt_path last to continue)",
            file=sys.stderr,
        )
        return 143  # 128 + SIGTERM, what a scheduler expects from a job it asked to stop
    _finish_wandb()
    return 0


def _find_cause(error: BaseException, kinds: tuple[type[BaseException], ...]) -> BaseException | None:
    """``error`` or the first exception of one of ``kinds`` in its chain of causes."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        if isinstance(current, kinds):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def _finish_wandb() -> None:
    """End the W&B run a subcommand started (rank 0 only has one): the offline run is complete on disk when
    ``main`` returns, and the next in-process command (tests, notebooks) starts its own run instead of appending."""
    wandb = sys.modules.get("wandb")
    if wandb is not None and getattr(wandb, "run", None) is not None:
        wandb.finish()


if __name__ == "__main__":
    sys.exit(main())

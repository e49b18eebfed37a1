"""Test-wide settings: offline, CPU, quiet."""

import os

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


# ------------------------------------------------------------------------------------------------ data fixtures

import shutil  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tiny_demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The --tiny demo dataset (seed 0), generated once per session. Read-only: use ``tiny_demo_copy`` to break it.

    Layout: ``VOCdevkit/VOC2012/...`` (with ``saliency_map/``), ``DUTS-{TR,TE}/``, ``ECSSD/`` (see data/demo.py);
    the 21 VOC classes, so ``dataset="voc"`` reads it without ``class_names``.
    """
    from wsss_lightning.data.demo import TINY_SETTINGS, generate_demo

    root = tmp_path_factory.mktemp("tiny_demo") / "demo"
    generate_demo(root, 0, **TINY_SETTINGS)
    return root


@pytest.fixture
def tiny_demo_copy(tiny_demo: Path, tmp_path: Path) -> Path:
    """A private copy of the tiny demo dataset that a test may modify (about 200 small files)."""
    out = tmp_path / "demo"
    shutil.copytree(tiny_demo, out)
    return out

"""Datasets, DataModule, transforms, dataset checks and the demo generator.

``WSSSDataModule`` is imported lazily so that light commands (``wsss data demo``) do not pay for Lightning.
"""

from typing import Any

from wsss_lightning.data.io import DatasetError

__all__ = ["DatasetError", "WSSSDataModule"]


def __getattr__(name: str) -> Any:
    if name == "WSSSDataModule":
        from wsss_lightning.data.datamodule import WSSSDataModule

        return WSSSDataModule
    raise AttributeError(name)

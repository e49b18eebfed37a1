"""LightningModules: one per method on a shared base."""

from wsss_lightning.modules.auxsegnet import AuxSegNetModule
from wsss_lightning.modules.base import WSSSModule
from wsss_lightning.modules.ssnet import SSNetModule

__all__ = ["AuxSegNetModule", "SSNetModule", "WSSSModule"]

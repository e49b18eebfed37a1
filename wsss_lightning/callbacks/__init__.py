"""Callbacks: the stage / pseudo-label pipeline and prediction writers."""

from wsss_lightning.callbacks.checkpoint import ResumableCheckpoint
from wsss_lightning.callbacks.prediction_writer import MaskWriter
from wsss_lightning.callbacks.pseudo_label_refresh import PseudoLabelRefresh

__all__ = ["MaskWriter", "PseudoLabelRefresh", "ResumableCheckpoint"]

"""torchmetrics ``Metric``s: segmentation IoU, pseudo-label precision / recall / IoU, saliency F / MAE / S / E."""

from wsss_lightning.metrics.pseudo_label import PseudoLabelQuality
from wsss_lightning.metrics.saliency import SaliencyMetrics
from wsss_lightning.metrics.segmentation import SegmentationIoU

__all__ = ["PseudoLabelQuality", "SaliencyMetrics", "SegmentationIoU"]

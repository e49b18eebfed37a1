"""AuxSegNet heads: the image-level classifier (``fc8``) and the dilated segmentation / saliency branches.

Shapes follow docs/method_notes.md §2.3 (official ``network/AuxSegNet.py``). ``X`` is the stride-8 backbone feature
``(B, C_in, h, w)``; every head keeps the spatial size ``h × w``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["ClassificationHead", "TaskBranch"]


class ClassificationHead(nn.Module):
    """Multi-label classifier ``fc8`` on global-average-pooled features, and its dense CAM.

    ``fc8`` is a 1×1 convolution without bias (Xavier-uniform init). The attribute name ``fc8`` matches the
    PSA ResNet-38 classifier checkpoint, whose weight has shape ``(num_foreground, C_in, 1, 1)``.

    Args:
        in_channels: channels of the backbone feature (4096 for ResNet-38).
        num_foreground: number of foreground classes ``C - 1`` (20 on VOC, 80 on COCO).
        dropout: Dropout2d probability applied before pooling in :meth:`forward` (0.5 in the code).
    """

    def __init__(self, in_channels: int, num_foreground: int, dropout: float = 0.5) -> None:
        super().__init__()
        self.dropout = nn.Dropout2d(dropout)
        self.fc8 = nn.Conv2d(in_channels, num_foreground, kernel_size=1, bias=False)
        nn.init.xavier_uniform_(self.fc8.weight)

    def forward(self, x: Tensor) -> Tensor:
        """Classification logits ``fc8(GAP(Dropout2d(x)))``.

        Args:
            x: backbone feature ``(B, C_in, h, w)``.

        Returns:
            logits ``(B, num_foreground)`` (unbounded; apply a sigmoid for probabilities).
        """
        pooled = self.dropout(x).mean(dim=(2, 3), keepdim=True)
        return self.fc8(pooled).flatten(1)

    def cam(self, x: Tensor) -> Tensor:
        """Raw class activation map: ``fc8`` applied densely, without dropout.

        Args:
            x: backbone feature ``(B, C_in, h, w)``.

        Returns:
            CAM ``(B, num_foreground, h, w)``, unbounded (ReLU + max-normalisation happen in ``pseudo/``).
        """
        return F.conv2d(x, self.fc8.weight)


class TaskBranch(nn.Module):
    """One task branch (segmentation or saliency): dilated convs around the affinity residual.

    ``encode``: ``conv1`` (3×3, dilation d1) + ReLU → ``conv2`` (3×3, dilation d2) + ReLU → ``F``.
    ``decode``: ``conv3`` (3×3, dilation d3) + ReLU → ``conv4`` (1×1, no bias) → logits.
    The affinity module sits between the two (``F' = F + W(…)``). The dilation-18 ``conv3`` exists only in
    the official code, not in the paper (docs/method_notes.md §6 item 15); we keep it.

    Init as the code: Xavier-uniform weights for conv1..conv4, PyTorch-default biases (conv1..conv3).

    Args:
        in_channels: backbone channels ``C_in``.
        out_channels: number of logits (``C`` for segmentation, 1 for saliency).
        mid_channels: width of the branch (128 in the code).
        dilations: dilations of conv1, conv2, conv3 (6, 12, 18); padding equals dilation so ``h × w`` is kept.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        mid_channels: int = 128,
        dilations: Sequence[int] = (6, 12, 18),
    ) -> None:
        super().__init__()
        if len(dilations) != 3:
            raise ValueError(f"TaskBranch needs three dilations (conv1, conv2, conv3), got {tuple(dilations)}")
        d1, d2, d3 = (int(d) for d in dilations)
        self.conv1 = nn.Conv2d(in_channels, mid_channels, 3, padding=d1, dilation=d1, bias=True)
        self.conv2 = nn.Conv2d(mid_channels, mid_channels, 3, padding=d2, dilation=d2, bias=True)
        self.conv3 = nn.Conv2d(mid_channels, mid_channels, 3, padding=d3, dilation=d3, bias=True)
        self.conv4 = nn.Conv2d(mid_channels, out_channels, 1, bias=False)
        for conv in (self.conv1, self.conv2, self.conv3, self.conv4):
            nn.init.xavier_uniform_(conv.weight)

    def encode(self, x: Tensor) -> Tensor:
        """Task feature ``F = ReLU(conv2(ReLU(conv1(x))))``: ``(B, C_in, h, w)`` → ``(B, mid, h, w)``, ≥ 0."""
        return torch.relu(self.conv2(torch.relu(self.conv1(x))))

    def decode(self, features: Tensor) -> Tensor:
        """Logits ``conv4(ReLU(conv3(F')))``: ``(B, mid, h, w)`` → ``(B, out_channels, h, w)``, unbounded."""
        return self.conv4(torch.relu(self.conv3(features)))

    def forward(self, x: Tensor) -> Tensor:
        """Branch without any affinity (``F' = F``): ``(B, C_in, h, w)`` → ``(B, out_channels, h, w)``."""
        return self.decode(self.encode(x))

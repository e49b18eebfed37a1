"""Saliency metrics (F-measure, MAE, S-measure, E-measure) as a torchmetrics ``Metric``.

Two protocols (design §4, method_notes §4.3, ecosystem §2.4):

* ``"sod"``: the definitions of pysodmetrics 1.6.2 (``Fmeasure``, ``MAE``, ``Smeasure``, ``Emeasure``), which
  match Fan's MATLAB toolbox. Tests compare every number with pysodmetrics.
* ``"ssnet"``: SSNet's own ``jsws/evaluate_sal.py`` (21 thresholds, F of the image-averaged P and R).

Every state is a sum over images (plus an image count), so DDP sum-reduction and ``merge_state`` are exact.
All arithmetic is float64 on the input's device, so that the 256-bin quantisation ``uint8(pred * 255)`` falls
into the same bins as pysodmetrics' numpy code (float32 would move pixels across bin edges).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor
from torchmetrics import Metric

Protocol = Literal["sod", "ssnet"]

# pysodmetrics' EPS (np.spacing(1)) and jsws' eps (np.finfo(float).eps) are the same number.
EPS = float(np.spacing(1))
_DTYPE = torch.float64
SOD_BETA2 = 0.3  # pysodmetrics calls it ``beta`` but uses it in the beta^2 position
SOD_ALPHA = 0.5  # S-measure balance between object and region scores
SSNET_NUM_THRESHOLDS = 21

__all__ = ["SaliencyMetrics", "ssnet_thresholds", "sod_batch_scores", "ssnet_batch_scores"]


def ssnet_thresholds(device: torch.device | None = None) -> Tensor:
    """``np.linspace(0, 1, 21)`` bit for bit: ``i * 0.05`` with the last value set to exactly 1. Shape (21,)."""
    steps = SSNET_NUM_THRESHOLDS - 1
    thresholds = torch.arange(SSNET_NUM_THRESHOLDS, dtype=_DTYPE, device=device) * (1.0 / steps)
    thresholds[-1] = 1.0
    return thresholds


# ------------------------------------------------------------------------------------------ input handling


def _as_tensor(value: Any) -> Tensor:
    if isinstance(value, Tensor):
        return value
    array = np.asarray(value)
    # torch warns on read-only arrays (e.g. np.asarray of a PIL image); we never write, but copy to stay quiet
    return torch.from_numpy(array if array.flags.writeable else array.copy())


def _pred_to_unit(pred: Tensor) -> Tensor:
    """uint8 0..255 -> value / 255; bool -> {0, 1}; float in [0, 1] -> as is. Returns float64."""
    if pred.dtype == torch.uint8:
        return pred.to(_DTYPE) / 255
    if pred.dtype == torch.bool:
        return pred.to(_DTYPE)
    if pred.is_floating_point():
        pred = pred.to(_DTYPE)
        if pred.numel() and not bool(((pred >= 0) & (pred <= 1)).all()):
            raise ValueError(
                "float saliency predictions must lie in [0, 1] (or pass uint8 grey levels 0..255); got values in "
                f"[{pred.min().item():.4g}, {pred.max().item():.4g}]"
            )
        return pred
    raise TypeError(f"saliency predictions must be uint8 (0..255), bool or float in [0, 1], got {pred.dtype}")


def _pred_to_255(pred: Tensor) -> Tensor:
    """The 0..255 scale jsws works on: uint8 grey levels as they are (no /255 * 255 round trip), else x * 255."""
    if pred.dtype == torch.uint8:
        return pred.to(_DTYPE)
    return _pred_to_unit(pred) * 255


def _target_to_bool(target: Tensor, uint8_rule: Literal["gt128", "nonzero"]) -> Tensor:
    """Binarise a GT mask: uint8 by the protocol's rule (``> 128`` or ``!= 0``); bool as is; float in [0, 1] read
    as grey level / 255 under the same rule (thresholds halfway between levels, safe for float32 ``v / 255``)."""
    if target.dtype == torch.uint8:
        return target > 128 if uint8_rule == "gt128" else target != 0
    if target.dtype == torch.bool:
        return target
    if target.is_floating_point():
        if target.numel() and not bool(((target >= 0) & (target <= 1)).all()):
            raise ValueError("float saliency targets must lie in [0, 1]; use uint8 for 0..255 masks")
        return target > (128.5 / 255 if uint8_rule == "gt128" else 0.5 / 255)
    raise TypeError(
        f"saliency targets must be uint8 (0..255), bool or float {{0, 1}}, got {target.dtype}; an integer mask "
        "holding 0/1 is ambiguous, convert it with `mask.bool()`"
    )


def _pairs(preds: Any, targets: Any) -> list[tuple[Tensor, Tensor]]:
    """Split the accepted input forms into same-shape (B, H, W) batches."""
    if isinstance(preds, Sequence) and not isinstance(preds, Tensor):
        if not isinstance(targets, Sequence) or isinstance(targets, Tensor) or len(preds) != len(targets):
            raise ValueError("when preds is a list of maps, targets must be a list of the same length")
        batches = []
        for pred, target in zip(preds, targets):
            batches.extend(_pairs(_as_tensor(pred), _as_tensor(target)))
        return batches
    pred, target = _as_tensor(preds), _as_tensor(targets)
    if pred.shape != target.shape:
        raise ValueError(f"prediction shape {tuple(pred.shape)} differs from target shape {tuple(target.shape)}")
    if pred.ndim == 2:
        pred, target = pred[None], target[None]
    if pred.ndim != 3:
        raise ValueError(f"expected (H, W) or (B, H, W) maps, got shape {tuple(pred.shape)}")
    if pred.shape[0] == 0:
        return []
    if pred.shape[1] == 0 or pred.shape[2] == 0:
        raise ValueError(f"saliency maps must not be empty, got shape {tuple(pred.shape)}")
    return [(pred, target)]


# ----------------------------------------------------------------------------------- "sod" (pysodmetrics)


def _enhanced_sum(fg_fg: Tensor, fg_bg: Tensor, gt_fg: Tensor, size: int) -> Tensor:
    """Sum of the enhanced-alignment matrix from pixel counts (pysodmetrics ``cal_em_with_*``).

    ``fg_fg`` / ``fg_bg``: predicted-foreground pixels on GT foreground / background, ``gt_fg``: GT foreground
    pixels (broadcastable int64 tensors), ``size``: pixels per image. Returns float64 of the broadcast shape.
    """
    pred_fg = fg_fg + fg_bg
    pred_bg = size - pred_fg
    bg_fg = gt_fg - fg_fg
    bg_bg = pred_bg - bg_fg
    mean_pred = pred_fg.to(_DTYPE) / size
    mean_gt = gt_fg.to(_DTYPE) / size
    pred_fg_value, pred_bg_value = 1 - mean_pred, 0 - mean_pred
    gt_fg_value, gt_bg_value = 1 - mean_gt, 0 - mean_gt
    parts = (
        (fg_fg, pred_fg_value, gt_fg_value),
        (fg_bg, pred_fg_value, gt_bg_value),
        (bg_fg, pred_bg_value, gt_fg_value),
        (bg_bg, pred_bg_value, gt_bg_value),
    )
    total = torch.zeros((), dtype=_DTYPE, device=fg_fg.device)
    for numel, pred_value, gt_value in parts:
        align = 2 * (pred_value * gt_value) / (pred_value**2 + gt_value**2 + EPS)
        total = total + (align + 1) ** 2 / 4 * numel.to(_DTYPE)
    # All-background / all-foreground GT: the alignment matrix degenerates to the prediction's bg / fg area.
    gt_fg = gt_fg.expand_as(total)
    return torch.where(gt_fg == 0, pred_bg.to(_DTYPE), torch.where(gt_fg == size, pred_fg.to(_DTYPE), total))


def _centroid(gt: Tensor) -> tuple[Tensor, Tensor]:
    """S-measure split point ``(cy, cx)`` (B,) int64: the rounded GT centroid + 1 (MATLAB's 1-based ranges).

    Integer sums are exact, so the result equals numpy's ``argwhere(gt).mean(0).round()`` (half to even).
    """
    rows = torch.arange(gt.shape[1], device=gt.device)
    cols = torch.arange(gt.shape[2], device=gt.device)
    per_row = gt.sum(dim=2)
    count = per_row.sum(dim=1).clamp(min=1).to(_DTYPE)
    cy = torch.round((per_row * rows).sum(dim=1).to(_DTYPE) / count).long() + 1
    cx = torch.round((gt.sum(dim=1) * cols).sum(dim=1).to(_DTYPE) / count).long() + 1
    return cy, cx


def _group_moments(numel: Tensor, total: Tensor, low: Tensor, high: Tensor) -> dict[str, Tensor]:
    """Counts, means and constancy per GT side and per quadrant from (image, quadrant, GT side) groups.

    Inputs are (B, 4, 2) (quadrant, GT bg / fg): pixel count, sum, min and max of the prediction. Returns
    ``side_numel`` / ``side_mean`` (B, 2) over the whole image and ``quad_numel`` / ``x_mean`` / ``y_mean`` /
    ``quad_constant`` (B, 4).
    """
    side_numel = numel.sum(dim=1)
    quad_numel = numel.sum(dim=2)
    return {
        "side_numel": side_numel,
        "side_mean": total.sum(dim=1) / side_numel.clamp(min=1).to(_DTYPE),
        "quad_numel": quad_numel,
        "x_mean": total.sum(dim=2) / quad_numel.clamp(min=1).to(_DTYPE),
        "y_mean": numel[:, :, 1].to(_DTYPE) / quad_numel.clamp(min=1).to(_DTYPE),  # exact: a count ratio
        # SSIM is 0/0 on a quadrant with uniform GT and constant prediction; the exact answer (variance 0, score 1)
        # must not depend on how the mean rounds (in pysodmetrics numpy's rounding decides between 0 and 1).
        "quad_constant": low.amin(dim=2) == high.amax(dim=2),
    }


def _s_object(mean: Tensor, std: Tensor) -> Tensor:
    """S-measure object similarity of one region from its mean and std."""
    return 2 * mean / (mean**2 + 1 + std + EPS)


def _region_score(moments: dict[str, Tensor], cy: Tensor, cx: Tensor, height: int, width: int) -> Tensor:
    """S-measure region score: SSIM of the four quadrants split at ``(cy, cx)``, weighted by their areas.

    ``moments``: (B, 4) per quadrant (top-left, top-right, bottom-left, bottom-right): ``numel``, ``x_mean``,
    ``y_mean`` and the centred sums ``sxx``, ``syy``, ``sxy``. An empty quadrant (split on the last row or
    column) contributes 0; pysodmetrics returns NaN there.
    """
    numel = moments["numel"]
    x_mean, y_mean = moments["x_mean"], moments["y_mean"]
    denominator = numel.to(_DTYPE) - 1 + EPS
    sigma_x, sigma_y, sigma_xy = (moments[key] / denominator for key in ("sxx", "syy", "sxy"))
    alpha = 4 * x_mean * y_mean * sigma_xy
    beta = (x_mean**2 + y_mean**2) * (sigma_x + sigma_y)
    ssim = torch.where(alpha != 0, alpha / (beta + EPS), (beta == 0).to(_DTYPE))
    ssim = torch.where(numel > 0, ssim, torch.zeros_like(ssim))
    area = height * width
    w_lt = (cx * cy).to(_DTYPE) / area
    w_rt = (cy * (width - cx)).to(_DTYPE) / area
    w_lb = ((height - cy) * cx).to(_DTYPE) / area
    w_rb = 1 - w_lt - w_rt - w_lb
    return ssim[:, 0] * w_lt + ssim[:, 1] * w_rt + ssim[:, 2] * w_lb + ssim[:, 3] * w_rb


def _sod_statistics_float(pred: Tensor, gt: Tensor) -> dict[str, Tensor]:
    """Sufficient statistics (see :func:`_sod_scores`) of float64 maps in [0, 1], pixel by pixel.

    Index maps are built by broadcasting (B, H, 1) and (B, 1, W) pieces in int32, and per-pixel group values by
    ``addcmul``: gathers and broadcast ``where`` are several times slower on CPU.
    """
    batch, height, width = pred.shape
    device = pred.device
    images = torch.arange(batch, device=device)[:, None, None]
    # pysodmetrics ``prepare_data``: per image (p - min) / (max - min) unless the map is constant ((p - 0) / 1).
    low = pred.amin(dim=(1, 2), keepdim=True)
    spread = pred.amax(dim=(1, 2), keepdim=True) - low
    varying = spread != 0
    pred = (pred - torch.where(varying, low, 0.0)) / torch.where(varying, spread, 1.0)
    gt_byte, gt_float = gt.view(torch.uint8), gt.to(_DTYPE)

    key = (pred * 255).to(torch.int32)  # truncation, as numpy's astype(np.uint8)
    key.add_(gt_byte, alpha=256)
    key += (images * 512).to(torch.int32)
    hist = torch.bincount(key.reshape(-1), minlength=batch * 512).reshape(batch, 2, 256)

    pred_mean = pred.mean(dim=(1, 2))
    binary = pred >= torch.clamp(2 * pred_mean, max=1)[:, None, None]

    cy, cx = _centroid(gt)
    bottom = torch.arange(height, device=device)[None, :, None] >= cy[:, None, None]  # (B, H, 1)
    right = torch.arange(width, device=device)[None, None, :] >= cx[:, None, None]  # (B, 1, W)
    group = (images * 8 + bottom * 4).to(torch.int32) + (right * 2).to(torch.int32)  # (image, quadrant, GT side)
    group.add_(gt_byte)
    group = group.reshape(-1)
    values = pred.reshape(-1)
    slots = batch * 8
    inf = torch.full((slots,), torch.inf, dtype=_DTYPE, device=device)
    group_long = group.long()  # scatter_reduce wants int64 indices
    moments = _group_moments(
        torch.bincount(group, minlength=slots).reshape(batch, 4, 2),
        torch.bincount(group, weights=values, minlength=slots).reshape(batch, 4, 2),
        inf.scatter_reduce(0, group_long, values, "amin").reshape(batch, 4, 2),
        (-inf).scatter_reduce(0, group_long, values, "amax").reshape(batch, 4, 2),
    )

    def group_sums(weights: Tensor) -> Tensor:
        return torch.bincount(group, weights=weights.reshape(-1), minlength=slots).reshape(batch, 4, 2)

    # Two-pass centred sums, as pysodmetrics computes them. Per-pixel centres by addcmul: bg + gt * (fg - bg)
    # and, per row, left + right * (right - left); rounding there is harmless, constant quadrants are flagged.
    side_mean = moments["side_mean"][:, :, None, None]
    from_side_mean = pred - torch.addcmul(side_mean[:, 0], gt_float, side_mean[:, 1] - side_mean[:, 0])
    x_mean = moments["x_mean"][:, :, None, None]  # (B, 4, 1, 1)
    row_left = torch.where(bottom, x_mean[:, 2], x_mean[:, 0])
    row_step = torch.where(bottom, x_mean[:, 3] - x_mean[:, 2], x_mean[:, 1] - x_mean[:, 0])
    from_quad_mean = pred - torch.addcmul(row_left, right.to(_DTYPE), row_step)
    return moments | {
        "hist": hist,
        "hit_fg": (binary & gt).sum(dim=(1, 2)),
        "hit_bg": (binary & ~gt).sum(dim=(1, 2)),
        "mae": (pred - gt_float).abs().mean(dim=(1, 2)),
        "pred_mean": pred_mean,
        "side_sxx": group_sums(from_side_mean**2).sum(dim=1),
        "sxx": group_sums(from_quad_mean**2).sum(dim=2),
        "sdx": group_sums(from_quad_mean),
        "cy": cy,
        "cx": cx,
    }


def _sod_statistics_uint8(pred: Tensor, gt: Tensor) -> dict[str, Tensor]:
    """Sufficient statistics (see :func:`_sod_scores`) of uint8 maps, from one joint histogram per image.

    A uint8 map has at most 256 values, so every statistic is a weighted sum over a (quadrant, GT side, grey
    level) histogram and a per-image lookup table of normalised values: one pass over the pixels instead of
    dozens. The table is built with pysodmetrics' operations (``v / 255``, then min-max), so values are
    bit-identical to its per-pixel ones.
    """
    batch, height, width = pred.shape
    size = height * width
    device = pred.device
    images = torch.arange(batch, device=device)
    levels = torch.arange(256, dtype=_DTYPE, device=device) / 255
    low = pred.amin(dim=(1, 2)).to(_DTYPE)[:, None] / 255
    high = pred.amax(dim=(1, 2)).to(_DTYPE)[:, None] / 255
    varying = high != low
    lut = torch.where(varying, (levels - low) / torch.where(varying, high - low, torch.ones_like(low)), levels)

    cy, cx = _centroid(gt)
    rows, cols = torch.arange(height, device=device), torch.arange(width, device=device)
    # key = ((image * 4 + quadrant) * 2 + GT side) * 256 + grey level; int32 halves the memory traffic of int64
    row_key = (images[:, None, None] * 2048 + (rows[None, :, None] >= cy[:, None, None]) * 1024).to(torch.int32)
    col_key = ((cols[None, None, :] >= cx[:, None, None]) * 512).to(torch.int32)
    key = pred.to(torch.int32)
    key.add_(gt.view(torch.uint8), alpha=256)
    key += row_key
    key += col_key
    joint = torch.bincount(key.reshape(-1), minlength=batch * 2048).reshape(batch, 4, 2, 256)

    weights = joint.to(_DTYPE)
    table = lut[:, None, None, :]  # (B, 1, 1, 256)
    present = joint > 0
    moments = _group_moments(
        joint.sum(dim=-1),
        (weights * table).sum(dim=-1),
        torch.where(present, table, torch.inf).amin(dim=-1),
        torch.where(present, table, -torch.inf).amax(dim=-1),
    )
    by_side = joint.sum(dim=1)  # (B, 2, 256) grey-level histograms on GT bg / fg
    side_weights = by_side.to(_DTYPE)
    # quantised bin of each grey level; levels outside [min, max] have no pixels, clamp only keeps them in range
    bins = (lut * 255).long().clamp(0, 255)[:, None, :].expand(batch, 2, 256)
    hist = torch.zeros_like(by_side).scatter_add_(2, bins, by_side)

    pred_mean = (side_weights.sum(dim=1) * lut).sum(dim=1) / size
    above = (lut >= torch.clamp(2 * pred_mean, max=1)[:, None])[:, None, :]
    hits = (by_side * above).sum(dim=2)
    mae = ((side_weights[:, 0] * lut.abs()).sum(dim=1) + (side_weights[:, 1] * (lut - 1).abs()).sum(dim=1)) / size
    from_side_mean = lut[:, None, :] - moments["side_mean"][:, :, None]
    from_quad_mean = table - moments["x_mean"][:, :, None, None]
    return moments | {
        "hist": hist,
        "hit_fg": hits[:, 1],
        "hit_bg": hits[:, 0],
        "mae": mae,
        "pred_mean": pred_mean,
        "side_sxx": (side_weights * from_side_mean**2).sum(dim=2),
        "sxx": (weights * from_quad_mean**2).sum(dim=(2, 3)),
        "sdx": (weights * from_quad_mean).sum(dim=3),
        "cy": cy,
        "cx": cx,
    }


def _sod_scores(stats: dict[str, Tensor], height: int, width: int, beta2: float, alpha: float) -> dict[str, Tensor]:
    """pysodmetrics' per-image scores from sufficient statistics.

    ``stats``: ``hist`` (B, 2, 256) quantised-bin counts on GT bg / fg; ``hit_fg`` / ``hit_bg`` (B,) pixels at or
    above the adaptive threshold on GT fg / bg; ``mae``, ``pred_mean`` (B,); ``side_numel`` / ``side_mean`` /
    ``side_sxx`` (B, 2) count, mean and centred sum of squares of the prediction on GT bg / fg; per quadrant
    (B, 4): ``quad_numel``, ``x_mean``, ``y_mean``, ``sxx``, ``quad_constant``; ``sdx`` (B, 4, 2) centred
    prediction sums split by GT side; ``cy``, ``cx`` (B,) split point.
    """
    size = height * width
    hist = stats["hist"]
    at_least = hist.flip(-1).cumsum(-1).flip(-1)  # pixels with quantised value >= t, t = 0..255
    fg_ge, bg_ge = at_least[:, 1], at_least[:, 0]
    gt_fg = hist[:, 1].sum(dim=1)

    predicted = fg_ge + bg_ge
    precision = fg_ge.to(_DTYPE) / torch.where(predicted == 0, 1, predicted).to(_DTYPE)
    recall = fg_ge.to(_DTYPE) / gt_fg.clamp(min=1).to(_DTYPE)[:, None]
    numerator = (1 + beta2) * precision * recall
    fmeasure = numerator / torch.where(numerator == 0, torch.ones_like(numerator), beta2 * precision + recall)
    emeasure = _enhanced_sum(fg_ge, bg_ge, gt_fg[:, None], size) / (size - 1 + EPS)

    hit_fg, hit_bg = stats["hit_fg"], stats["hit_bg"]
    adp_pre = hit_fg.to(_DTYPE) / (hit_fg + hit_bg).clamp(min=1).to(_DTYPE)
    adp_rec = hit_fg.to(_DTYPE) / gt_fg.clamp(min=1).to(_DTYPE)
    adp_f = (1 + beta2) * adp_pre * adp_rec / (beta2 * adp_pre + adp_rec)
    adp_f = torch.where(hit_fg == 0, torch.zeros_like(adp_f), adp_f)
    adp_e = _enhanced_sum(hit_fg, hit_bg, gt_fg, size) / (size - 1 + EPS)

    # S-measure object score: mean and std (ddof=1, 0 for a single pixel) of p on GT fg and of 1 - p on GT bg
    side_numel = stats["side_numel"]
    side_std = torch.where(
        side_numel > 1,
        (stats["side_sxx"] / (side_numel - 1).clamp(min=1).to(_DTYPE)).sqrt(),
        torch.zeros_like(stats["side_sxx"]),
    )
    gt_mean = gt_fg.to(_DTYPE) / size
    fg_score = _s_object(stats["side_mean"][:, 1], side_std[:, 1]) * gt_mean
    bg_score = _s_object(1 - stats["side_mean"][:, 0], side_std[:, 0]) * (1 - gt_mean)
    object_score = fg_score + bg_score

    # S-measure region score: per quadrant, y is the GT indicator, so the sums over y split by GT side
    quad_numel, y_mean, sdx = stats["quad_numel"], stats["y_mean"], stats["sdx"]
    fg_numel = y_mean * quad_numel.to(_DTYPE)
    moments = {
        "numel": quad_numel,
        "x_mean": stats["x_mean"],
        "y_mean": y_mean,
        "sxx": torch.where(stats["quad_constant"], 0.0, stats["sxx"]),
        "syy": fg_numel * (1 - y_mean) ** 2 + (quad_numel.to(_DTYPE) - fg_numel) * y_mean**2,
        "sxy": sdx[:, :, 1] * (1 - y_mean) + sdx[:, :, 0] * (0 - y_mean),
    }
    region = _region_score(moments, stats["cy"], stats["cx"], height, width)
    pred_mean = stats["pred_mean"]
    structure = (alpha * object_score + (1 - alpha) * region).clamp(min=0)
    sm = torch.where(gt_mean == 0, 1 - pred_mean, torch.where(gt_mean == 1, pred_mean, structure))
    return {
        "precision": precision,
        "recall": recall,
        "fmeasure": fmeasure,
        "emeasure": emeasure,
        "adp_f": adp_f,
        "adp_e": adp_e,
        "mae": stats["mae"],
        "sm": sm,
    }


def sod_batch_scores(pred: Tensor, gt: Tensor, beta2: float = SOD_BETA2, alpha: float = SOD_ALPHA) -> dict[str, Tensor]:
    """Per-image scores under pysodmetrics' definitions, vectorised over a batch.

    Args:
        pred: (B, H, W) uint8 grey levels, or float64 in [0, 1] (= grey level / 255). Min-max normalised per
            image here unless constant. uint8 maps take a histogram fast path with the same results.
        gt: (B, H, W) bool.

    Returns:
        ``precision``, ``recall``, ``fmeasure``, ``emeasure``: (B, 256) curves, index ``t`` = threshold ``t/255``
        applied as ``uint8(p * 255) >= t``; ``adp_f``, ``adp_e``, ``mae``, ``sm``: (B,).
    """
    if pred.dtype == torch.uint8:
        stats = _sod_statistics_uint8(pred, gt)
    else:
        stats = _sod_statistics_float(pred.to(_DTYPE), gt)
    return _sod_scores(stats, pred.shape[1], pred.shape[2], beta2, alpha)


# ---------------------------------------------------------------------------------- "ssnet" (jsws)


def ssnet_batch_scores(pred255: Tensor, gt: Tensor) -> dict[str, Tensor]:
    """Per-image scores of jsws ``evaluate_sal.py`` (method_notes §4.3), vectorised over a batch.

    Args:
        pred255: (B, H, W) float64 on the 0..255 scale (raw grey levels, as jsws reads PNGs).
        gt: (B, H, W) bool.

    Returns:
        ``precision``, ``recall``: (B, 21) at thresholds ``linspace(0, 1, 21)`` applied as ``s >= t``;
        ``adp_f``, ``mae``: (B,). ``s = (p - min) / (max - min + eps)`` per image.
    """
    batch, height, width = pred255.shape
    flat = pred255.reshape(batch, -1)
    low = flat.amin(dim=1, keepdim=True)
    high = flat.amax(dim=1, keepdim=True)
    saliency = (flat - low) / (high - low + EPS)
    gt_flat = gt.reshape(batch, -1)
    gt_area = gt_flat.sum(dim=1).to(_DTYPE)

    thresholds = ssnet_thresholds(pred255.device)
    # bucketize(right=True) = number of thresholds <= s; a pixel is foreground at thresholds 0..level.
    level = torch.bucketize(saliency, thresholds, right=True) - 1
    index = (torch.arange(batch, device=pred255.device)[:, None] * 2 + gt_flat.long()) * SSNET_NUM_THRESHOLDS + level
    hist = torch.bincount(index.reshape(-1), minlength=batch * 2 * SSNET_NUM_THRESHOLDS)
    at_least = hist.reshape(batch, 2, SSNET_NUM_THRESHOLDS).flip(-1).cumsum(-1).flip(-1).to(_DTYPE)
    hits, predicted = at_least[:, 1], at_least[:, 0] + at_least[:, 1]
    precision = hits / (predicted + EPS)
    recall = hits / (gt_area[:, None] + EPS)

    threshold = torch.clamp(2 * saliency.mean(dim=1), max=1)
    binary = saliency >= threshold[:, None]
    hit = (binary & gt_flat).sum(dim=1).to(_DTYPE)
    adp_pre = hit / (binary.sum(dim=1).to(_DTYPE) + EPS)
    adp_rec = hit / (gt_area + EPS)
    adp_f = 1.3 * adp_pre * adp_rec / (0.3 * adp_pre + adp_rec + EPS)
    mae = (gt_flat.to(_DTYPE) - saliency).abs().mean(dim=1)
    return {"precision": precision, "recall": recall, "adp_f": adp_f, "mae": mae}


# ------------------------------------------------------------------------------------------------ metric


class SaliencyMetrics(Metric):
    """Saliency (salient object detection) metrics over a dataset, averaged over images.

    Inputs of :meth:`update` (any mix of one map, a batch, or lists of maps of different sizes):

    * ``preds``: uint8 grey levels 0..255 (divided by 255), float in [0, 1], or bool. Every map is min–max
      normalised per image: ``"sod"`` as pysodmetrics (``(p - min) / (max - min)``, constant maps left as they
      are); ``"ssnet"`` as jsws (on the 0..255 scale, ``(p - min) / (max - min + eps)``, so a constant map
      becomes 0).
    * ``targets``: uint8 masks 0..255 (foreground = ``> 128`` for ``"sod"`` like pysodmetrics, ``!= 0`` for
      ``"ssnet"`` like jsws), bool masks, or float masks in [0, 1]: {0, 1}, or grey level / 255 binarised by the
      same rule as the uint8 mask it came from (``> 128.5 / 255`` resp. ``> 0.5 / 255``).
    * Shapes ``(H, W)`` or ``(B, H, W)`` with preds and targets of the same shape, or two lists of such tensors
      (numpy arrays are accepted). Resize predictions to the GT size before calling (see ``evaluate.py``).

    ``compute()`` returns float64 scalars (fractions in [0, 1]):

    * ``protocol="sod"`` (pysodmetrics 1.6.2): ``maxF`` / ``meanF`` = max / mean of the mean per-image F curve
      (beta^2 = 0.3, 256 thresholds on ``uint8(p * 255) >= t``), ``adpF`` (threshold ``min(2 * mean(p), 1)``),
      ``MAE``, ``Sm`` (alpha 0.5), ``maxE`` / ``meanE`` / ``adpE`` (enhanced alignment).
      One deliberate difference: a quadrant of the S-measure region split that is empty (GT centroid on the last
      row or column) contributes 0 where pysodmetrics returns NaN; and a quadrant with uniform GT and constant
      prediction scores exactly 1 (pysodmetrics gets 0 or 1 from the float rounding of its mean).
    * ``protocol="ssnet"`` (jsws ``evaluate_sal.py``): P and R per image at 21 thresholds ``linspace(0, 1, 21)``
      averaged over images; ``maxF`` / ``meanF`` = max / mean over thresholds of ``F(mean P, mean R)``;
      ``adpF`` = mean per-image F at ``min(2 * mean(s), 1)``; ``MAE``.

    Computation is float64 on the input's device (for bin-exact parity with pysodmetrics; MPS has no float64).
    ``"sod"`` on uint8 maps (saved PNGs) goes through a joint-histogram fast path (about 10x pysodmetrics on one
    CPU core); float maps (model outputs) through a vectorised per-pixel path. Both give the same numbers.
    """

    is_differentiable = False
    higher_is_better = None  # MAE is lower-is-better, everything else higher-is-better
    full_state_update = False

    num_images: Tensor
    mae_sum: Tensor
    adp_f_sum: Tensor
    precision_sum: Tensor
    recall_sum: Tensor

    def __init__(self, protocol: Protocol = "sod", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if protocol not in ("sod", "ssnet"):
            raise ValueError(f"protocol must be 'sod' or 'ssnet', got {protocol!r}")
        self.protocol: Protocol = protocol
        points = 256 if protocol == "sod" else SSNET_NUM_THRESHOLDS
        self.add_state("num_images", torch.tensor(0, dtype=torch.int64), dist_reduce_fx="sum")
        self.add_state("mae_sum", torch.tensor(0.0, dtype=_DTYPE), dist_reduce_fx="sum")
        self.add_state("adp_f_sum", torch.tensor(0.0, dtype=_DTYPE), dist_reduce_fx="sum")
        self.add_state("precision_sum", torch.zeros(points, dtype=_DTYPE), dist_reduce_fx="sum")
        self.add_state("recall_sum", torch.zeros(points, dtype=_DTYPE), dist_reduce_fx="sum")
        if protocol == "sod":
            self.add_state("fmeasure_sum", torch.zeros(points, dtype=_DTYPE), dist_reduce_fx="sum")
            self.add_state("emeasure_sum", torch.zeros(points, dtype=_DTYPE), dist_reduce_fx="sum")
            self.add_state("adp_e_sum", torch.tensor(0.0, dtype=_DTYPE), dist_reduce_fx="sum")
            self.add_state("sm_sum", torch.tensor(0.0, dtype=_DTYPE), dist_reduce_fx="sum")

    def update(self, preds: Any, targets: Any) -> None:
        """Accumulate one map, a (B, H, W) batch, or lists of maps (see the class docstring for dtypes)."""
        for pred, target in _pairs(preds, targets):
            if self.protocol == "sod":
                pred = pred if pred.dtype == torch.uint8 else _pred_to_unit(pred)
                scores = sod_batch_scores(pred, _target_to_bool(target, "gt128"))
                self.fmeasure_sum += scores["fmeasure"].sum(dim=0).to(self.fmeasure_sum.device)
                self.emeasure_sum += scores["emeasure"].sum(dim=0).to(self.emeasure_sum.device)
                self.adp_e_sum += scores["adp_e"].sum().to(self.adp_e_sum.device)
                self.sm_sum += scores["sm"].sum().to(self.sm_sum.device)
            else:
                scores = ssnet_batch_scores(_pred_to_255(pred), _target_to_bool(target, "nonzero"))
            self.precision_sum += scores["precision"].sum(dim=0).to(self.precision_sum.device)
            self.recall_sum += scores["recall"].sum(dim=0).to(self.recall_sum.device)
            self.adp_f_sum += scores["adp_f"].sum().to(self.adp_f_sum.device)
            self.mae_sum += scores["mae"].sum().to(self.mae_sum.device)
            self.num_images += pred.shape[0]

    def _count(self) -> Tensor:
        return self.num_images.to(_DTYPE)  # 0 images -> every mean is NaN

    def compute(self) -> dict[str, Tensor]:
        """Dataset scores (float64 scalars); keys depend on the protocol (see the class docstring)."""
        count = self._count()
        results = {"MAE": self.mae_sum / count, "adpF": self.adp_f_sum / count}
        if self.protocol == "sod":
            fmeasure = self.fmeasure_sum / count
            emeasure = self.emeasure_sum / count
            results |= {
                "maxF": fmeasure.max(),
                "meanF": fmeasure.mean(),
                "Sm": self.sm_sum / count,
                "maxE": emeasure.max(),
                "meanE": emeasure.mean(),
                "adpE": self.adp_e_sum / count,
            }
        else:
            fmeasure = self._ssnet_f_curve()
            results |= {"maxF": fmeasure.max(), "meanF": fmeasure.mean()}
        order = ("maxF", "meanF", "adpF", "MAE", "Sm", "maxE", "meanE", "adpE")
        return {key: results[key] for key in order if key in results}

    def _ssnet_f_curve(self) -> Tensor:
        precision = self.precision_sum / self._count()
        recall = self.recall_sum / self._count()
        return 1.3 * precision * recall / (0.3 * precision + recall + EPS)

    def curves(self) -> dict[str, Tensor]:
        """Image-averaged curves by ascending threshold: ``thresholds``, ``precision``, ``recall``, ``fmeasure``
        (+ ``emeasure`` for ``"sod"``). ``"sod"``: 256 points, threshold ``t/255`` on ``uint8(p * 255) >= t``
        (pysodmetrics' arrays reversed); ``"ssnet"``: 21 points, F from the mean P and R."""
        count = self._count()
        device = self.precision_sum.device
        if self.protocol == "sod":
            thresholds = torch.arange(256, dtype=_DTYPE, device=device) / 255
            return {
                "thresholds": thresholds,
                "precision": self.precision_sum / count,
                "recall": self.recall_sum / count,
                "fmeasure": self.fmeasure_sum / count,
                "emeasure": self.emeasure_sum / count,
            }
        return {
            "thresholds": ssnet_thresholds(device),
            "precision": self.precision_sum / count,
            "recall": self.recall_sum / count,
            "fmeasure": self._ssnet_f_curve(),
        }

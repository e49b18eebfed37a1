"""Cross-task (dual-)affinity of AuxSegNet (ICCV 2021) and AuxSegNet+ (TNNLS 2025).

docs/method_notes.md §2.4 (AuxSegNet, code-exact) and §2.12 (AuxSegNet+). Notation: task ``t ∈ {seg, sal}``, task
feature ``F_t`` of shape ``(B, C, h, w)``, ``N = h·w`` positions flattened **row-major** (index ``i = y·w + x``).

* Pairwise (query-dependent) affinity, embedded-Gaussian non-local without ``1/√d``:
  ``A_t(i, j) = softmax_j(θ_t(i)ᵀ φ_t(j))`` — rows sum to 1. Optional DNL whitening (subtract the spatial
  means of θ and φ first).
* Unary (query-independent) affinity: ``u_t = softmax_j(w_tᵀ F_t(j) + b_t)`` (1×1 conv C → 1); ``u_t`` sums to 1.
* Feature enhancement with the **task-specific** affinities:
  ``F'_t = F_t + W_t(A_t g_t(F_t) [pairwise] + 1 c_tᵀ [unary])`` with ``c_t = Σ_j u_t(j) g_t(F_t)(j)``.
* Cross-task pairwise fusion (AuxSegNet "SA"/``cross_att``): ``Ω = softmax_ch(Conv1×1(ReLU(Conv3×3([A_seg; A_sal]))))``
  on the 2×N×N stack, ``A_CT = Ω_seg ⊙ A_seg + Ω_sal ⊙ A_sal`` (not re-normalised unless ``renormalize_rows``).
  Cross-task unary fusion: ``u_CT = ω_seg ⊙ u_seg + ω_sal ⊙ u_sal``, ``ω = softmax_ch(Conv1×1([u_seg; u_sal]))``,
  or the plain mean.
* Prediction refinement on logits at feature resolution:
  ``R_t = [A L_t if pairwise else L_t] + [1·(uᵀ L_t) if unary]`` (summed, or averaged with ``average_terms``),
  where ``A``/``u`` are the cross-task ones when ``cross_task`` else the task's own.
* CAM propagation: the pairwise affinity only (identity when there is none), see :class:`AffinityContext`.

Modes: ``"none"`` (F' = F, R = L), ``"pairwise"`` (+ ``cross_task`` = AuxSegNet), ``"unary"``, ``"dual"``
(+ ``cross_task`` = our AuxSegNet+ reading). The AuxSegNet+ unary term, its cross-task fusion and the averaging
flag are an **UNCONFIRMED** reading of the TNNLS paper (its body and code were not available), modelled on
DNL/GCNet; only "pairwise + unary affinities" and "pairwise-only CAM propagation" are confirmed.

Numerics: θ, φ, the ``θᵀφ`` logits, both softmaxes, the SA fusion and every product with an affinity run in
float32 with autocast disabled (bf16 logits over N positions are too coarse). Memory: with gradients enabled,
or ``N ≤ chunk_size``, the N×N matrices are built in full (as the official code). With gradients disabled and
``N > chunk_size`` no N×N temporary is ever materialised: rows are produced ``min(chunk_size, 2**24 / N)`` at a
time, peak memory ``O(B·min(chunk_size·N, 2**24))`` plus the kept blocks below; the 3×3 SA conv reads one halo row
of ``A_seg``/``A_sal`` on each side of a chunk.
In that mode a context keeps the blocks of its pairwise affinity the first pass builds, up to ``cache_elements``
entries per context (default 2²⁸: 1 GiB float32, a 960×720 image's ``A_CT`` at stride 8 is 0.47 GiB), so the
refinement, the CAM propagation and the health statistics of a label update build ``A_CT`` once, not four times;
blocks beyond the budget are rebuilt on every pass (compute traded for memory). The feature enhancement reads the
rows of ``A_seg`` / ``A_sal`` from the same walk that fuses those kept blocks (:func:`_cross_task_pass`), so each
task affinity block is built once per forward, not twice.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "AffinityMode",
    "UnaryFusionMode",
    "AffinityContext",
    "AffinityOutput",
    "TaskAffinity",
    "PairwiseFusion",
    "UnaryFusion",
    "CrossTaskAffinity",
    "DEFAULT_CACHE_ELEMENTS",
]

AffinityMode = Literal["none", "pairwise", "unary", "dual"]
UnaryFusionMode = Literal["conv", "mean"]

_MODES: tuple[str, ...] = ("none", "pairwise", "unary", "dual")
_UNARY_FUSIONS: tuple[str, ...] = ("conv", "mean")
_EPS = 1e-12
#: Largest block of affinity rows (rows × N entries, float32: 64 MiB) the chunked path builds at once: for large
#: N (multi-scale inference of big images) a block holds fewer than ``chunk_size`` rows, so memory stays bounded.
MAX_BLOCK_ELEMENTS = 1 << 24
#: Default ``cache_elements``: float32 entries of affinity blocks a chunked context keeps for its later passes (1 GiB).
DEFAULT_CACHE_ELEMENTS = 1 << 28


def _no_autocast(device: torch.device) -> torch.autocast:
    """Context manager that switches autocast off on ``device`` (affinity maths stays float32)."""
    return torch.autocast(device_type=device.type, enabled=False)


def _conv_fp32(conv: nn.Conv2d, x: Tensor) -> Tensor:
    """Apply ``conv`` in float32 whatever the module / input dtype (call with autocast disabled)."""
    bias = None if conv.bias is None else conv.bias.float()
    return F.conv2d(x.float(), conv.weight.float(), bias, conv.stride, conv.padding, conv.dilation, conv.groups)


# ------------------------------------------------------------------------------------------------------------
# Row sources: an N×N affinity either held in memory or produced a block of query rows at a time.
# ------------------------------------------------------------------------------------------------------------


class _RowSource(Protocol):
    num_positions: int

    def rows(self, start: int, stop: int) -> Tensor:
        """Rows ``start:stop`` (query positions) of the affinity, ``(B, stop - start, N)`` float32."""
        ...


class _DenseRows:
    """A fully materialised affinity ``(B, N, N)`` float32."""

    def __init__(self, matrix: Tensor) -> None:
        self.matrix = matrix
        self.num_positions = matrix.shape[-1]

    def rows(self, start: int, stop: int) -> Tensor:
        return self.matrix[:, start:stop]


class _EmbeddedRows:
    """Rows of ``softmax_j(θ(i)ᵀ φ(j))`` computed on demand from θ ``(B, N, d)`` and φ ``(B, d, N)`` (float32)."""

    def __init__(self, theta: Tensor, phi: Tensor) -> None:
        self.theta = theta
        self.phi = phi
        self.num_positions = phi.shape[-1]

    def rows(self, start: int, stop: int) -> Tensor:
        with _no_autocast(self.theta.device):
            return torch.softmax(torch.bmm(self.theta[:, start:stop], self.phi), dim=-1)


class _CrossTaskRows:
    """Rows of ``A_CT`` fused from two task affinities; a block needs one halo row above and below."""

    def __init__(self, seg: _RowSource, sal: _RowSource, fusion: PairwiseFusion, renormalize: bool) -> None:
        self.seg = seg
        self.sal = sal
        self.fusion = fusion
        self.renormalize = renormalize
        self.num_positions = seg.num_positions

    def rows(self, start: int, stop: int) -> Tensor:
        return self.build(start, stop)[0]

    def build(self, start: int, stop: int) -> tuple[Tensor, Tensor, Tensor]:
        """Rows ``start:stop`` of ``A_CT`` and the same rows of ``A_seg`` and ``A_sal`` it was fused from, each
        ``(B, stop - start, N)`` float32 (the task rows are views of the halo blocks)."""
        n = self.num_positions
        lo, hi = max(start - 1, 0), min(stop + 1, n)
        a_seg, a_sal = self.seg.rows(lo, hi), self.sal.rows(lo, hi)
        fused = self.fusion(a_seg, a_sal, halo_top=start > 0, halo_bottom=stop < n)
        if self.renormalize:
            fused = fused / fused.sum(dim=-1, keepdim=True).clamp_min(_EPS)
        return fused, a_seg[:, start - lo : stop - lo], a_sal[:, start - lo : stop - lo]


class _CachedRows:
    """A lazy row source that keeps the blocks it builds, up to ``budget`` float32 entries in all.

    Every pass over a context walks the same blocks (:func:`_block_step`), so the second and later passes read
    the kept blocks instead of rebuilding them. A block that would exceed the budget is rebuilt on each request.
    Callers never modify returned blocks in place.
    """

    def __init__(self, source: _RowSource, budget: int) -> None:
        self.source = source
        self.budget = budget
        self.num_positions = source.num_positions
        self._blocks: dict[tuple[int, int], Tensor] = {}
        self._kept = 0

    def rows(self, start: int, stop: int) -> Tensor:
        block = self._blocks.get((start, stop))
        if block is None:
            block = self.source.rows(start, stop)
            self.offer(start, stop, block)
        return block

    def has_room(self, numel: int) -> bool:
        """Whether a block of ``numel`` entries would still be kept."""
        return self._kept + numel <= self.budget

    def offer(self, start: int, stop: int, block: Tensor) -> None:
        """Keep ``block`` as rows ``start:stop`` if it fits the budget (a block built elsewhere, e.g. by
        :func:`_cross_task_pass`)."""
        if (start, stop) not in self._blocks and self.has_room(block.numel()):
            self._blocks[(start, stop)] = block
            self._kept += block.numel()


def _block_step(num_positions: int, chunk_size: int) -> int:
    """Query rows per block of a lazy source: ``chunk_size``, fewer when a block would exceed
    :data:`MAX_BLOCK_ELEMENTS` entries per image."""
    return max(1, min(chunk_size, MAX_BLOCK_ELEMENTS // num_positions))


def _block_ranges(num_positions: int, step: int) -> list[tuple[int, int]]:
    """The ``(start, stop)`` query-row ranges of one walk over a source, ``step`` rows each (the last shorter).

    Every walk uses these ranges, so a cached block (:class:`_CachedRows`) is found again by the same key."""
    return [(start, min(start + step, num_positions)) for start in range(0, num_positions, step)]


def _apply_rows(source: _RowSource, values: Tensor, chunk_size: int) -> Tensor:
    """``out(:, i) = Σ_j A(i, j) · values(:, j)``: values ``(B, K, N)`` → ``(B, K, N)``, float32.

    A dense source is one batched product; a lazy source is consumed ``chunk_size`` query rows at a time (fewer
    when ``chunk_size × N`` exceeds :data:`MAX_BLOCK_ELEMENTS`).
    """
    with _no_autocast(values.device):
        values = values.float()
        if isinstance(source, _DenseRows):
            return torch.bmm(values, source.matrix.transpose(1, 2))
        n = source.num_positions
        blocks = [
            torch.bmm(values, source.rows(start, stop).transpose(1, 2))
            for start, stop in _block_ranges(n, _block_step(n, chunk_size))
        ]
        return torch.cat(blocks, dim=-1)


def _cross_task_pass(fused: _CachedRows, g_seg: Tensor, g_sal: Tensor, chunk_size: int) -> tuple[Tensor, Tensor]:
    """One walk over the blocks of a lazy ``A_CT`` that also gives both tasks' non-local contexts.

    The enhancement ``A_t g_t`` needs the rows of ``A_seg`` and ``A_sal`` that the fusion of ``A_CT`` builds anyway:
    each block is built once, its ``A_CT`` rows offered to ``fused``'s cache (the later passes of a label update
    read them there) and its task rows multiplied with ``g_t``. Blocks the cache has no room for are not fused here
    (their task rows are built alone, as the enhancement always did); later passes rebuild them.

    Args:
        fused: the cached lazy ``A_CT`` whose source is a :class:`_CrossTaskRows`.
        g_seg, g_sal: ``g_t(F_t)`` flattened, ``(B, C, N)``.
        chunk_size: query rows per block (:func:`_block_step`).

    Returns:
        ``(A_seg g_seg, A_sal g_sal)``, each ``(B, C, N)`` float32.
    """
    source = fused.source
    assert isinstance(source, _CrossTaskRows)
    n = source.num_positions
    with _no_autocast(g_seg.device):
        g_seg, g_sal = g_seg.float(), g_sal.float()
        seg_blocks, sal_blocks = [], []
        for start, stop in _block_ranges(n, _block_step(n, chunk_size)):
            if fused.has_room(g_seg.shape[0] * (stop - start) * n):
                block, a_seg, a_sal = source.build(start, stop)
                fused.offer(start, stop, block)
            else:
                a_seg, a_sal = source.seg.rows(start, stop), source.sal.rows(start, stop)
            seg_blocks.append(torch.bmm(g_seg, a_seg.transpose(1, 2)))
            sal_blocks.append(torch.bmm(g_sal, a_sal.transpose(1, 2)))
        return torch.cat(seg_blocks, dim=-1), torch.cat(sal_blocks, dim=-1)


# ------------------------------------------------------------------------------------------------------------
# Public context object returned by the forward pass.
# ------------------------------------------------------------------------------------------------------------


class AffinityContext:
    """The affinity a forward pass learned, for refinement and CAM propagation.

    Holds the pairwise affinity ``A^p`` (cross-task ``A_CT`` or task-specific ``A_t``; ``None`` when the mode
    has no pairwise term, which then acts as the identity) and the unary vector ``u`` (``(B, N)`` float32 or
    ``None``). The pairwise part is either a dense ``(B, N, N)`` tensor or, in chunked mode, a recipe that
    yields blocks of rows so that N×N is never materialised.

    Value ranges: task-specific rows lie in [0, 1] and sum to 1; ``A_CT`` entries lie in [0, 1] and its rows sum
    to about 1 (within (0, 2), exactly 1 with ``renormalize_rows``). ``u`` entries lie in [0, 1].
    """

    def __init__(
        self,
        size: tuple[int, int],
        batch_size: int,
        device: torch.device,
        pairwise: _RowSource | None,
        unary: Tensor | None,
        *,
        chunk_size: int,
        average_terms: bool,
    ) -> None:
        self.size = size
        self.batch_size = batch_size
        self.device = device
        self._pairwise = pairwise
        self.unary = unary
        self.chunk_size = chunk_size
        self.average_terms = average_terms

    @property
    def num_positions(self) -> int:
        return self.size[0] * self.size[1]

    @property
    def has_pairwise(self) -> bool:
        return self._pairwise is not None

    @property
    def is_chunked(self) -> bool:
        """True when the pairwise affinity is produced block-wise (never held as N×N)."""
        return self._pairwise is not None and not isinstance(self._pairwise, _DenseRows)

    def matrix(self) -> Tensor:
        """Explicit pairwise affinity ``(B, N, N)`` float32 (identity without a pairwise term). For small N/tests."""
        n = self.num_positions
        if self._pairwise is None:
            eye = torch.eye(n, device=self.device, dtype=torch.float32)
            return eye.expand(self.batch_size, n, n).clone()
        with _no_autocast(self.device):
            return self._pairwise.rows(0, n)

    def _flatten(self, values: Tensor) -> Tensor:
        if values.ndim != 4 or values.shape[0] != self.batch_size or tuple(values.shape[2:]) != self.size:
            raise ValueError(
                f"expected values of shape ({self.batch_size}, K, {self.size[0]}, {self.size[1]}), "
                f"got {tuple(values.shape)}"
            )
        return values.flatten(2)

    def propagate(self, values: Tensor) -> Tensor:
        """CAM propagation ``K̃(:, i) = Σ_j A^p(i, j) · values(:, j)`` — one multiplication, pairwise term only.

        Args:
            values: ``(B, K, h, w)``, e.g. max-normalised CAMs in [0, 1].

        Returns:
            ``(B, K, h, w)`` in ``values.dtype`` (computed in float32); ``values`` itself without a pairwise term.
        """
        flat = self._flatten(values)
        if self._pairwise is None:
            return values
        out = _apply_rows(self._pairwise, flat, self.chunk_size)
        return out.view_as(values).to(values.dtype)

    @torch.no_grad()
    def row_statistics(self, foreground: Tensor) -> dict[str, Tensor]:
        """Health figures of the pairwise affinity (see ``pseudo/health.py``), per image, float32 ``(B,)``.

        Args:
            foreground: ``(B, h, w)`` bool, e.g. the CAM above its threshold at feature resolution.

        Returns:
            ``row_peak``: mean over rows of ``max_j A(i, j) · N`` (1 = uniform rows); ``row_spread``: mean over rows of
            ``½ Σ_j |A(i, j) − Ā(j)|`` with ``Ā`` the mean row (0 = identical rows); ``background_mass``: mean over
            background rows of ``Σ_{j ∈ fg} A(i, j)`` (NaN when an image has no foreground or no background).
            Without a pairwise term the identity gives ``row_peak = N``, ``row_spread = 1 − 1/N``, mass 0.
        """
        n = self.num_positions
        fg = foreground.reshape(self.batch_size, n).to(self.device)
        fg_float = fg.float()
        if self._pairwise is None:
            source: _RowSource = _DenseRows(torch.eye(n, device=self.device).expand(self.batch_size, n, n))
        else:
            source = self._pairwise
        ranges = _block_ranges(n, n if isinstance(source, _DenseRows) else _block_step(n, self.chunk_size))
        with _no_autocast(self.device):
            column_sum = torch.zeros(self.batch_size, n, device=self.device)
            peak = torch.zeros(self.batch_size, device=self.device)
            mass = torch.zeros(self.batch_size, device=self.device)
            for start, stop in ranges:
                rows = source.rows(start, stop).float()
                column_sum += rows.sum(dim=1)
                peak += rows.amax(dim=-1).sum(dim=1)
                bg_rows = ~fg[:, start:stop]
                mass += (torch.bmm(rows, fg_float.unsqueeze(-1)).squeeze(-1) * bg_rows).sum(dim=1)
            mean_row = (column_sum / n).unsqueeze(1)
            spread = torch.zeros(self.batch_size, device=self.device)
            for start, stop in ranges:  # second pass: distances to the mean row (kept or rebuilt if lazy)
                rows = source.rows(start, stop).float()
                spread += 0.5 * (rows - mean_row).abs().sum(dim=-1).sum(dim=1)
        num_bg = (~fg).sum(dim=1)
        defined = (num_bg > 0) & fg.any(dim=1)
        background_mass = torch.where(defined, mass / num_bg.clamp_min(1), torch.full_like(mass, float("nan")))
        # mean_i(max_j A(i, j) · N) = Σ_i max_j A(i, j)
        return {"row_peak": peak, "row_spread": spread / n, "background_mass": background_mass}

    def refine(self, logits: Tensor, unary_scale: Tensor | None = None) -> Tensor:
        """Prediction refinement ``R = [A^p L or L] + [γ·1·(uᵀ L) if unary]`` (halved with ``average_terms``).

        Args:
            logits: ``(B, K, h, w)`` task logits ``L`` at feature resolution.
            unary_scale: ``γ`` of the unary term, shape ``(K,)`` or ``(1,)`` (the learned zero-initialised gates of
                ``unary_gate``); None means 1.

        Returns:
            refined logits ``(B, K, h, w)`` in ``logits.dtype``; ``logits`` unchanged in mode "none".
        """
        flat = self._flatten(logits)
        if self._pairwise is None and self.unary is None:
            return logits
        with _no_autocast(logits.device):
            base = flat.float() if self._pairwise is None else _apply_rows(self._pairwise, flat, self.chunk_size)
            if self.unary is not None:
                glob = torch.einsum("bn,bkn->bk", self.unary, flat.float())  # uᵀL per channel
                if unary_scale is not None:
                    glob = glob * unary_scale.float()
                base = base + glob.unsqueeze(-1)
                if self.average_terms:
                    base = 0.5 * base
        return base.view_as(logits).to(logits.dtype)


@dataclass
class AffinityOutput:
    """Result of :class:`CrossTaskAffinity`: enhanced features ``F'_t`` ``(B, C, h, w)`` and each task's context.

    With ``cross_task=True`` ``seg_context is sal_context`` (one ``A_CT`` / ``u_CT``).
    """

    seg_features: Tensor
    sal_features: Tensor
    seg_context: AffinityContext
    sal_context: AffinityContext


# ------------------------------------------------------------------------------------------------------------
# Modules.
# ------------------------------------------------------------------------------------------------------------


class TaskAffinity(nn.Module):
    """Task-specific affinity layers: θ, φ (pairwise), unary conv, and the non-local g / W projections.

    Only the layers the mode uses are created (no unused parameters, so DDP needs no ``find_unused_parameters``).
    All are 1×1 convs with bias and PyTorch-default init; W is *not* zero-initialised (official code).

    Args:
        channels: feature channels C (128).
        pairwise: build θ, φ.
        unary: build the unary conv C → 1.
        whiten: DNL whitening — subtract the spatial means of θ and φ before the dot product.
        gate: with ``unary``, scale the unary context by learned scalars initialised at 0 (``feature_gate`` in
            ``F'``; ``refine_gate`` in the refinement when ``refine_gate`` is also set), so that training starts from
            the pairwise-only network and the unary term enters only as far as it lowers the loss (the zero-init
            residual of GCNet's context block / SAGAN's γ).
        refine_gate: build ``refine_gate`` (the unary term also refines the predictions).
    """

    def __init__(
        self,
        channels: int,
        *,
        pairwise: bool,
        unary: bool,
        whiten: bool = False,
        gate: bool = False,
        refine_gate: bool = False,
    ) -> None:
        super().__init__()
        self.use_pairwise = pairwise
        self.use_unary = unary
        self.whiten = whiten
        self.feature_gate: nn.Parameter | None = None
        self.refine_gate: nn.Parameter | None = None
        if unary and gate:
            self.feature_gate = nn.Parameter(torch.zeros(1))
            if refine_gate:
                self.refine_gate = nn.Parameter(torch.zeros(1))
        if pairwise:
            self.theta = nn.Conv2d(channels, channels, 1)
            self.phi = nn.Conv2d(channels, channels, 1)
        if pairwise or unary:
            self.g = nn.Conv2d(channels, channels, 1)
            self.W = nn.Conv2d(channels, channels, 1)
        if unary:
            self.unary = nn.Conv2d(channels, 1, 1)

    def embeddings(self, features: Tensor) -> tuple[Tensor, Tensor]:
        """θ ``(B, N, C)`` and φ ``(B, C, N)`` in float32 (whitened when enabled) from ``F_t`` ``(B, C, h, w)``."""
        with _no_autocast(features.device):
            theta = _conv_fp32(self.theta, features).flatten(2)
            phi = _conv_fp32(self.phi, features).flatten(2)
            if self.whiten:
                theta = theta - theta.mean(dim=-1, keepdim=True)
                phi = phi - phi.mean(dim=-1, keepdim=True)
        return theta.transpose(1, 2), phi

    def pairwise_matrix(self, features: Tensor) -> Tensor:
        """Full ``A_t = softmax_j(θ(i)ᵀφ(j))`` ``(B, N, N)`` float32, rows sum to 1."""
        theta, phi = self.embeddings(features)
        return _EmbeddedRows(theta, phi).rows(0, phi.shape[-1])

    def unary_weights(self, features: Tensor) -> Tensor:
        """``u_t = softmax_j(w_tᵀ F_t(j) + b_t)`` ``(B, N)`` float32, sums to 1."""
        with _no_autocast(features.device):
            return torch.softmax(_conv_fp32(self.unary, features).flatten(1), dim=-1)

    def enhance(
        self,
        features: Tensor,
        pairwise: _RowSource | None,
        unary: Tensor | None,
        chunk_size: int,
        *,
        g: Tensor | None = None,
        pairwise_context: Tensor | None = None,
    ) -> Tensor:
        """``F' = F + W(A g(F) + γ 1 cᵀ)`` with whichever terms are given (γ = ``feature_gate`` or 1); ``F`` itself
        when neither is.

        Args:
            features: ``F_t`` ``(B, C, h, w)``.
            pairwise: this task's own pairwise affinity (a row source), or None.
            unary: this task's own ``u_t`` ``(B, N)``, or None.
            chunk_size: query rows per block when ``pairwise`` is lazy.
            g: ``g(F_t)`` ``(B, C, h, w)`` when the caller has computed it already.
            pairwise_context: ``A g(F_t)`` ``(B, C, N)`` float32 when the caller has computed it (then ``pairwise``
                is not read): the chunked cross-task pass builds it from the blocks it fuses anyway.

        Returns:
            ``F'_t`` ``(B, C, h, w)``.
        """
        if pairwise is None and pairwise_context is None and unary is None:
            return features
        g = self.g(features) if g is None else g
        g_flat = g.flatten(2)
        with _no_autocast(features.device):
            context = torch.zeros_like(g_flat, dtype=torch.float32)
            if pairwise_context is not None:
                context = context + pairwise_context
            elif pairwise is not None:
                context = context + _apply_rows(pairwise, g_flat, chunk_size)
            if unary is not None:
                c = torch.einsum("bn,bcn->bc", unary, g_flat.float())  # query-independent context c_t
                if self.feature_gate is not None:
                    c = c * self.feature_gate.float()
                context = context + c.unsqueeze(-1)
        return features + self.W(context.to(g.dtype).view_as(g))


class PairwiseFusion(nn.Module):
    """AuxSegNet "SA" (``cross_att``): per-entry task weights Ω over the 2-channel N×N affinity "image".

    ``Conv2d(2→2, 3×3, pad 1, no bias) → ReLU → Conv2d(2→2, 1×1, bias) → softmax over the 2 channels``; the 3×3
    neighbourhood is in (query i, key j) index space of the row-major flattening (docs/method_notes.md §6 item 18).
    Default PyTorch init. Inputs may carry one halo row above/below (rows of the neighbouring block), in which
    case no zero padding is used on that side and the halo rows are dropped from the output.
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv3x3 = nn.Conv2d(2, 2, 3, padding=1, bias=False)
        self.conv1x1 = nn.Conv2d(2, 2, 1)

    def weights(self, a_seg: Tensor, a_sal: Tensor, halo_top: bool = False, halo_bottom: bool = False) -> Tensor:
        """Ω ``(B, 2, R, N)`` float32 in [0, 1], summing to 1 over dim 1; ``R`` = input rows minus halo rows.

        Args:
            a_seg, a_sal: affinity rows ``(B, R + halo_top + halo_bottom, N)``.
            halo_top, halo_bottom: whether the first / last input row is a halo row.
        """
        diff = self._logit_difference(a_seg, a_sal, halo_top, halo_bottom)
        return torch.stack([torch.sigmoid(diff), torch.sigmoid(-diff)], dim=1)

    def _logit_difference(self, a_seg: Tensor, a_sal: Tensor, halo_top: bool, halo_bottom: bool) -> Tensor:
        """``l_seg − l_sal`` ``(B, R, N)`` float32: Ω_seg = σ(it), Ω_sal = σ(−it) (see :meth:`weights`)."""
        with _no_autocast(a_seg.device):
            batch, rows, n = a_seg.shape
            # Zero padding only at true borders of the query axis; the key axis always has its borders (conv).
            top, bottom = (0 if halo_top else 1), (0 if halo_bottom else 1)
            # (B, R', N, 2): the two tasks innermost (channels-last), written once into a buffer that already holds
            # the padding rows. oneDNN's 2-channel 3×3 convolution runs 2.3× faster on it than on the planar stack.
            x = a_seg.new_empty(batch, top + rows + bottom, n, 2, dtype=torch.float32)
            if top:
                x[:, 0] = 0.0
            if bottom:
                x[:, -1] = 0.0
            x[:, top : top + rows, :, 0] = a_seg
            x[:, top : top + rows, :, 1] = a_sal
            h = F.conv2d(x.permute(0, 3, 1, 2), self.conv3x3.weight.float(), padding=(0, 1)).relu_()
            # softmax over two channels is a sigmoid of their difference: Ω_seg = σ(l_seg − l_sal), with
            # l_seg − l_sal = (w_seg − w_sal)·h + (b_seg − b_sal): one (…, 2) × (2,) product over the channels-last h
            # instead of a 2→2 1×1 convolution over the N×N "image", which oneDNN runs at a fraction of memory speed.
            weight = self.conv1x1.weight.float()[:, :, 0, 0]
            bias = self.conv1x1.bias.float()
            return torch.matmul(h.permute(0, 2, 3, 1), weight[0] - weight[1]) + (bias[0] - bias[1])

    def forward(self, a_seg: Tensor, a_sal: Tensor, halo_top: bool = False, halo_bottom: bool = False) -> Tensor:
        """``A_CT = Ω_seg ⊙ A_seg + Ω_sal ⊙ A_sal`` for the non-halo rows: ``(B, R, N)`` float32."""
        diff = self._logit_difference(a_seg, a_sal, halo_top, halo_bottom)  # Ω without stacking its 2 channels
        top = 1 if halo_top else 0
        stop = a_seg.shape[1] - (1 if halo_bottom else 0)
        with _no_autocast(a_seg.device):
            # Ω_seg·A_seg + (1 − Ω_seg)·A_sal in one fused pass (Ω_sal = σ(−d) = 1 − σ(d))
            return torch.lerp(a_sal[:, top:stop].float(), a_seg[:, top:stop].float(), torch.sigmoid(diff))


class UnaryFusion(nn.Module):
    """Cross-task unary fusion (UNCONFIRMED AuxSegNet+ reading): ``u_CT = ω_seg ⊙ u_seg + ω_sal ⊙ u_sal``.

    ``ω = softmax over the 2 channels of Conv1×1_{2→2}([u_seg; u_sal])``, per position. Default PyTorch init.
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 2, 1)

    def weights(self, u_seg: Tensor, u_sal: Tensor) -> Tensor:
        """ω ``(B, 2, N)`` float32 in [0, 1], summing to 1 over dim 1, from ``u_seg``/``u_sal`` ``(B, N)``."""
        with _no_autocast(u_seg.device):
            x = torch.stack([u_seg.float(), u_sal.float()], dim=1).unsqueeze(-1)  # (B, 2, N, 1)
            logits = F.conv2d(x, self.conv.weight.float(), self.conv.bias.float()).squeeze(-1)
            return torch.softmax(logits, dim=1)

    def forward(self, u_seg: Tensor, u_sal: Tensor) -> Tensor:
        """``u_CT`` ``(B, N)`` float32, entries in [0, 1] (sum about 1, not re-normalised)."""
        omega = self.weights(u_seg, u_sal)
        return omega[:, 0] * u_seg.float() + omega[:, 1] * u_sal.float()


class CrossTaskAffinity(nn.Module):
    """The (dual-)affinity module between the seg and sal branches, with all ablation switches.

    ``mode="pairwise", cross_task=True`` is AuxSegNet (ICCV'21, code-exact). ``mode="dual", cross_task=True`` is
    our recommended AuxSegNet+ (TNNLS'25) — an UNCONFIRMED DNL/GCNet-style reading of the paper
    (docs/method_notes.md §2.12).
    ``cross_task=False`` uses each task's own affinities for refinement; ``mode="none"`` gives ``F' = F``, ``R = L``.

    Args:
        channels: task feature channels C (128).
        mode: "none" | "pairwise" | "unary" | "dual".
        cross_task: fuse the two tasks' affinities for refinement / propagation.
        unary_fusion: "conv" (learned ω) or "mean" (``(u_seg + u_sal)/2``) for the cross-task unary term.
        whiten_pairwise: DNL whitening of θ, φ (not in AuxSegNet's code).
        average_terms: average instead of sum the two refinement terms (whenever a unary term is present).
        unary_refinement: the unary context also refines the predictions (``R = A·L + 1·(uᵀL)``); with False it
            enhances the features only and ``R = A·L`` (the GCNet reading, where query-independent context is a
            feature block).
        unary_gate: scale each task's unary context (in ``F'_t`` and in ``R_t``) by learned scalars initialised at 0
            (:class:`TaskAffinity` ``gate``): the module starts as the pairwise-only AuxSegNet and learns how much
            unary context to add. Off here (the plain DNL reading); every AuxSegNet+ config turns it on, the reading
            that measured best (docs/results.md).
        renormalize_rows: ablation — re-normalise ``A_CT`` rows (and ``u_CT``) to sum to 1; cross-task only.
        chunk_size: query rows per block in chunked (no-grad, N > chunk_size) mode.
        cache_elements: in chunked mode, how many float32 entries of its pairwise affinity blocks a context keeps
            for its later passes (per context, over the batch); 0 rebuilds every block on every pass.

    Parameter names contain ``seg``/``sal`` for the task layers (×10 lr in the code) and not for
    ``pairwise_fusion``/``unary_fusion`` (×1, like the code's ``cross_att``).
    """

    def __init__(
        self,
        channels: int = 128,
        mode: AffinityMode = "pairwise",
        cross_task: bool = True,
        unary_fusion: UnaryFusionMode = "conv",
        whiten_pairwise: bool = False,
        average_terms: bool = False,
        unary_refinement: bool = True,
        unary_gate: bool = False,
        renormalize_rows: bool = False,
        chunk_size: int = 4096,
        cache_elements: int = DEFAULT_CACHE_ELEMENTS,
    ) -> None:
        super().__init__()
        if mode not in _MODES:
            raise ValueError(f"affinity mode must be one of {_MODES}, got {mode!r}")
        if unary_fusion not in _UNARY_FUSIONS:
            raise ValueError(f"unary_fusion must be one of {_UNARY_FUSIONS}, got {unary_fusion!r}")
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        if cache_elements < 0:
            raise ValueError(f"cache_elements must be >= 0, got {cache_elements}")
        self.mode = mode
        self.cross_task = cross_task
        self.unary_fusion_mode = unary_fusion
        self.average_terms = average_terms
        self.unary_refinement = unary_refinement
        self.renormalize_rows = renormalize_rows
        self.chunk_size = chunk_size
        self.cache_elements = cache_elements
        self.use_pairwise = mode in ("pairwise", "dual")
        self.use_unary = mode in ("unary", "dual")
        kw = {
            "pairwise": self.use_pairwise,
            "unary": self.use_unary,
            "whiten": whiten_pairwise,
            "gate": unary_gate,
            "refine_gate": unary_refinement,
        }
        self.seg = TaskAffinity(channels, **kw)
        self.sal = TaskAffinity(channels, **kw)
        self.pairwise_fusion = PairwiseFusion() if (cross_task and self.use_pairwise) else None
        # The fused u_CT only serves the refinement: without it ω would be an unused parameter (DDP).
        use_conv_unary = cross_task and self.use_unary and unary_refinement and unary_fusion == "conv"
        self.unary_fusion = UnaryFusion() if use_conv_unary else None

    def _fuse_unary(self, u_seg: Tensor, u_sal: Tensor) -> Tensor:
        if self.unary_fusion is not None:
            u = self.unary_fusion(u_seg, u_sal)
        else:
            u = 0.5 * (u_seg + u_sal)
        if self.renormalize_rows:
            u = u / u.sum(dim=-1, keepdim=True).clamp_min(_EPS)
        return u

    def forward(self, seg_features: Tensor, sal_features: Tensor) -> AffinityOutput:
        """Enhance both task features and build the refinement / propagation contexts.

        Args:
            seg_features: ``F_seg`` ``(B, C, h, w)``.
            sal_features: ``F_sal`` ``(B, C, h, w)``.

        Returns:
            :class:`AffinityOutput` with ``F'_seg``, ``F'_sal`` ``(B, C, h, w)`` and the contexts.
        """
        if seg_features.shape != sal_features.shape or seg_features.ndim != 4:
            raise ValueError(
                f"seg and sal features must share one (B, C, h, w) shape, got {tuple(seg_features.shape)} "
                f"and {tuple(sal_features.shape)}"
            )
        b, _, h, w = seg_features.shape
        n = h * w
        device = seg_features.device
        chunked = not torch.is_grad_enabled() and n > self.chunk_size

        seg_rows: _RowSource | None = None
        sal_rows: _RowSource | None = None
        if self.use_pairwise:
            seg_rows = _EmbeddedRows(*self.seg.embeddings(seg_features))
            sal_rows = _EmbeddedRows(*self.sal.embeddings(sal_features))
            if not chunked:
                seg_rows = _DenseRows(seg_rows.rows(0, n))
                sal_rows = _DenseRows(sal_rows.rows(0, n))
            elif not self.cross_task:
                # each task's own affinity serves its enhancement, refinement and propagation: keep its blocks
                seg_rows = _CachedRows(seg_rows, self.cache_elements)
                sal_rows = _CachedRows(sal_rows, self.cache_elements)
        u_seg = self.seg.unary_weights(seg_features) if self.use_unary else None
        u_sal = self.sal.unary_weights(sal_features) if self.use_unary else None

        pair: _RowSource | None = None
        if self.cross_task and seg_rows is not None and sal_rows is not None and self.pairwise_fusion is not None:
            pair = _CrossTaskRows(seg_rows, sal_rows, self.pairwise_fusion, self.renormalize_rows)
            # A_CT serves the refinement, the propagation and the health statistics: build it once
            pair = _DenseRows(pair.rows(0, n)) if not chunked else _CachedRows(pair, self.cache_elements)
        if isinstance(pair, _CachedRows):
            # the enhancement reads A_seg / A_sal rows from the same walk that fuses (and keeps) A_CT's blocks
            g_seg, g_sal = self.seg.g(seg_features), self.sal.g(sal_features)
            pc_seg, pc_sal = _cross_task_pass(pair, g_seg.flatten(2), g_sal.flatten(2), self.chunk_size)
            seg_out = self.seg.enhance(seg_features, None, u_seg, self.chunk_size, g=g_seg, pairwise_context=pc_seg)
            sal_out = self.sal.enhance(sal_features, None, u_sal, self.chunk_size, g=g_sal, pairwise_context=pc_sal)
        else:
            seg_out = self.seg.enhance(seg_features, seg_rows, u_seg, self.chunk_size)
            sal_out = self.sal.enhance(sal_features, sal_rows, u_sal, self.chunk_size)

        ctx_kw = {"chunk_size": self.chunk_size, "average_terms": self.average_terms}
        # Without unary_refinement the unary context has done its work in F'_t, and R = A·L.
        u_seg_ref, u_sal_ref = (u_seg, u_sal) if self.unary_refinement else (None, None)
        if self.cross_task:
            u_ct = self._fuse_unary(u_seg_ref, u_sal_ref) if (u_seg_ref is not None and u_sal_ref is not None) else None
            shared = AffinityContext((h, w), b, device, pair, u_ct, **ctx_kw)
            return AffinityOutput(seg_out, sal_out, shared, shared)
        seg_ctx = AffinityContext((h, w), b, device, seg_rows, u_seg_ref, **ctx_kw)
        sal_ctx = AffinityContext((h, w), b, device, sal_rows, u_sal_ref, **ctx_kw)
        return AffinityOutput(seg_out, sal_out, seg_ctx, sal_ctx)

    def refine(self, output: AffinityOutput, seg_logits: Tensor, sal_logits: Tensor) -> tuple[Tensor, Tensor]:
        """Refine both tasks' logits; a shared (cross-task) context is applied in one pass over its rows.

        With ``unary_gate`` each task's unary term is scaled by its ``refine_gate``.

        Args:
            output: the forward result.
            seg_logits: ``L_seg`` ``(B, C_seg, h, w)``.
            sal_logits: ``L_sal`` ``(B, 1, h, w)``.

        Returns:
            ``(R_seg, R_sal)`` with the input shapes and dtypes.
        """
        ctx = output.seg_context
        if ctx is output.sal_context and not ctx.has_pairwise and ctx.unary is None:
            return seg_logits, sal_logits  # mode "none": R = L
        seg_scale, sal_scale = self.seg.refine_gate, self.sal.refine_gate
        if ctx is output.sal_context and seg_logits.dtype == sal_logits.dtype:
            k = seg_logits.shape[1]
            scale = None
            if seg_scale is not None and sal_scale is not None:
                scale = torch.cat([seg_scale.expand(k), sal_scale])  # per channel: γ_seg × K, γ_sal
            refined = output.seg_context.refine(torch.cat([seg_logits, sal_logits], dim=1), scale)
            return refined[:, :k], refined[:, k:]
        return output.seg_context.refine(seg_logits, seg_scale), output.sal_context.refine(sal_logits, sal_scale)

"""Fully connected CRF in torch (CPU or CUDA) that reproduces pydensecrf's mean-field inference.

Same model as :mod:`wsss_lightning.pseudo.crf` (Krähenbühl & Koltun 2011, the ``densecrf`` code that pydensecrf
wraps): a Gaussian spatial kernel on ``(x/sxy, y/sxy)`` and a bilateral kernel on ``(x/sxy, y/sxy, r/srgb, g/srgb,
b/srgb)``, Potts compatibilities, ``DIAG_KERNEL`` (unit feature weights) and ``NORMALIZE_SYMMETRIC``. Each kernel is
filtered with a permutohedral lattice (Adams et al. 2010) built the way ``densecrf``'s ``Permutohedral::init`` builds
it (same elevation, rounding, simplex ranks, barycentric weights, ``[1/2, 1, 1/2]`` blur along the d+1 lattice
directions in order 0..d, slice with ``alpha = 1 / (1 + 2^-d)``), so the filter is the same approximation of the
Gaussian, not merely a similar one. Mean field is ``densecrf``'s ``DenseCRF::inference``::

    Q = softmax(-U)
    repeat n times:  Q = softmax(-U + sum_k w_k * n_k * L_k(n_k * Q))    # n_k = 1 / sqrt(L_k(1))

with ``L_k`` the lattice filter, which includes each pixel's own contribution (nothing is subtracted).

The lattice is hashed without a hash table: vertex keys are encoded in one int64 (mixed radix with a margin so that a
key's blur neighbours cannot alias another key), deduplicated with one stable sort (what :func:`torch.unique` does,
but the permutation also gives the splat matrix grouped by vertex) and neighbours are found with
:func:`torch.searchsorted` on the sorted codes. Splat and slice are one sparse CSR product each, the blur two row
gathers per direction. Everything is vectorised over pixels, float32, and runs on the device of its inputs. One quirk of
densecrf's SSE build is reproduced on purpose (see :class:`PermutohedralLattice`'s ``pad_like_densecrf``).

Several images can be filtered as one lattice (:func:`dense_crf_torch_batch`): a segment id in the key keeps the
images apart, which amortises the kernel launches on a GPU.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any, overload

import numpy as np
import torch
from torch import Tensor

from wsss_lightning.pseudo.crf import UNARY_CLIP, CRFParams, get_crf_params

__all__ = [
    "PermutohedralLattice",
    "TorchDenseCRF",
    "dense_crf_torch",
    "dense_crf_torch_batch",
    "saliency_crf_torch",
    "saliency_crf_torch_batch",
    "saliency_unary_torch",
]

ParamsLike = str | CRFParams | Mapping[str, Any]
ArrayLike = Tensor | np.ndarray

# Largest code range the int64 key encoding may use (leaves headroom for the +/- neighbour offsets).
_MAX_CODE = 2**62


class PermutohedralLattice:
    """Permutohedral lattice of ``N`` points in ``d`` dimensions; :meth:`filter` is densecrf's ``compute``.

    Args:
        features: float32 (N, d) positions, already divided by the kernel's standard deviations.
        segments: optional int64 (N,) ids in ``[0, S)``; points of different segments never interact (used to filter
            several images in one lattice). ``None``: one segment.
        pad_like_densecrf: densecrf's SSE build (every x86-64 build, pydensecrf's included) processes points in
            blocks of 4 and also inserts the simplex vertices of the zero padding of the last block (points at the
            origin) into the lattice. They splat nothing but relay blur messages, which changes the output near the
            origin (dark pixels near the top-left corner for the bilateral kernel) when N is not a multiple of 4.
            ``True`` adds the same phantom points (per segment), so results match pydensecrf exactly.

    Attributes:
        num_points: N.
        dim: d.
        num_vertices: M, the number of lattice vertices (at most ``(d + 1) * N``).
    """

    def __init__(self, features: Tensor, segments: Tensor | None = None, pad_like_densecrf: bool = True) -> None:
        if features.ndim != 2 or features.shape[1] < 1:
            raise ValueError(f"features must be (N, d) with d >= 1, got shape {tuple(features.shape)}")
        if segments is not None and tuple(segments.shape) != (features.shape[0],):
            raise ValueError(f"segments must be ({features.shape[0]},), got shape {tuple(segments.shape)}")
        features = features.to(torch.float32).contiguous()
        self.num_points, self.dim = features.shape
        self.device = features.device
        if pad_like_densecrf:
            features, segments = _pad_like_densecrf(features, segments)
        rem0, rank, weights = _simplex_coordinates(features)
        codes, delta_codes = _vertex_codes(rem0, rank, segments)
        vertex_codes, offsets, self._splat = _hash_and_splat(codes, weights, self.num_points)
        self.num_vertices = int(vertex_codes.numel())
        self._slice = _slice_matrix(offsets, weights[: self.num_points], self.num_vertices)
        self._neighbours = _blur_neighbours(vertex_codes, delta_codes)
        self._alpha = 1.0 / (1.0 + 2.0 ** (-self.dim))

    def filter(self, values: Tensor) -> Tensor:
        """Approximate Gaussian filtering: ``out_i ~ sum_j exp(-|f_i - f_j|^2 / 2) * values_j`` (up to a constant).

        Args:
            values: float32 (N, C) values per point.

        Returns:
            float32 (N, C) filtered values (each point's own value included).
        """
        if values.ndim != 2 or values.shape[0] != self.num_points:
            raise ValueError(f"values must be ({self.num_points}, C), got shape {tuple(values.shape)}")
        # The splat matrix has an empty last row: vertex M is the zero value of neighbours missing from the lattice.
        vertex = torch.sparse.mm(self._splat, values.to(torch.float32))  # (M+1, C)
        for n1, n2 in self._neighbours:  # directions 0..d, each blur reads the previous one's output
            vertex = torch.add(vertex, vertex.index_select(0, n1).add_(vertex.index_select(0, n2)), alpha=0.5)
        return torch.sparse.mm(self._slice, vertex).mul_(self._alpha)


def _scale_factors(dim: int, device: torch.device) -> Tensor:
    """Diagonal of densecrf's elevation scaling (double math, stored as float, like ``init``). -> float32 (d,)."""
    inv_std_dev = float(np.float32(math.sqrt(2.0 / 3.0) * (dim + 1)))
    values = [1.0 / math.sqrt((i + 2) * (i + 1)) * inv_std_dev for i in range(dim)]
    return torch.tensor(values, dtype=torch.float32, device=device)


def _simplex_coordinates(features: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Enclosing simplex of each point, as in densecrf's ``Permutohedral::init``.

    Args:
        features: float32 (N, d).

    Returns:
        ``rem0`` float32 (N, d+1) the nearest remainder-0 lattice point, ``rank`` int64 (N, d+1) in ``[0, d]`` and
        ``weights`` float32 (N, d+1) barycentric weights of the simplex vertices (remainders 0..d).
    """
    num, dim = features.shape
    scale = _scale_factors(dim, features.device)
    down = float(np.float32(1.0 / (dim + 1)))  # a float32 value: the scalar is applied in float32
    # Elevate onto the hyperplane sum(x) = 0 (y = E f), in densecrf's float32 operation order.
    elevated = features.new_empty(num, dim + 1)
    running = features.new_zeros(num)
    for j in range(dim, 0, -1):
        cf = features[:, j - 1] * scale[j - 1]
        elevated[:, j] = running - j * cf
        running = running + cf
    elevated[:, 0] = running
    # Nearest remainder-0 point; round-half-even is the SSE build's _mm_cvtps_epi32.
    rounded = torch.round(elevated * down)
    rem0 = rounded * (dim + 1)
    coord_sum = rounded.sum(1, keepdim=True)
    # rank[i] = how many coordinates of (elevated - rem0) are larger than coordinate i; on ties the earlier index
    # counts as the larger one (densecrf's pairwise loop).
    diff = elevated - rem0
    rank = features.new_zeros(num, dim + 1)
    for i in range(dim):
        later_larger = (diff[:, i : i + 1] < diff[:, i + 1 :]).to(torch.float32)
        rank[:, i] += later_larger.sum(1)
        rank[:, i + 1 :] += 1.0 - later_larger
    rank = rank + coord_sum
    # Bring points whose rounded coordinates do not sum to 0 back onto the plane.
    wrap = (rank < 0).to(torch.float32) - (rank >= dim + 1).to(torch.float32)
    rank = rank + wrap * (dim + 1)
    rem0 = rem0 + wrap * (dim + 1)
    rank_int = rank.to(torch.int64)
    # Barycentric coordinates (Adams et al. 2010, p. 10).
    delta = (elevated - rem0) * down
    # densecrf adds delta_i to bin d - rank_i and subtracts it from the next; ranks are a permutation of 0..d, so
    # with s = delta ordered by bin, bin k is s_k - s_{k-1} (a plain scatter: deterministic on CUDA too).
    by_bin = torch.zeros_like(delta).scatter_(1, dim - rank_int, delta)
    zero = features.new_zeros(num, 1)
    bary = torch.cat([by_bin, zero], 1) - torch.cat([zero, by_bin], 1)  # (N, d+2)
    bary[:, 0] += 1.0 + bary[:, dim + 1]  # wrap around
    return rem0, rank_int, bary[:, : dim + 1].contiguous()


def _vertex_codes(rem0: Tensor, rank: Tensor, segments: Tensor | None) -> tuple[Tensor, Tensor]:
    """int64 codes of the d+1 simplex vertices of every point, linear in the vertex key.

    The key of the vertex of remainder ``r`` is ``rem0[:d] + canonical[r, rank[:d]]`` with
    ``canonical[r, k] = r - (d+1) [k > d - r]`` (densecrf keeps the first d coordinates; the last one follows from
    sum = 0). Keys are encoded in mixed radix; each coordinate's range is padded by d+1 on both sides so that a blur
    neighbour (key +/- (d, -1, ..., -1)) stays in range and its code ``code +/- delta`` cannot alias a key of another
    position or segment.

    Args:
        rem0: float32 (N, d+1) remainder-0 point; rank: int64 (N, d+1); segments: int64 (N,) or None.

    Returns:
        ``codes`` int64 (N, d+1) (column r: the vertex of remainder r) and ``delta_codes`` int64 (d+1,), the code
        offset of the first neighbour along each blur direction.
    """
    num, dim = rem0.shape[0], rem0.shape[1] - 1
    base_key = rem0[:, :dim].to(torch.int64)
    # canonical offsets are in [-d, d]; neighbours add another +/- d.
    low = base_key.amin(0) - 2 * dim - 1
    extents = [int(e) for e in (base_key.amax(0) + 2 * dim + 1 - low + 1).tolist()]
    num_segments = 1 if segments is None else int(segments.max()) + 1
    strides, total = [], 1
    for extent in reversed(extents):
        strides.append(total)
        total *= extent
    strides.reverse()
    if total * num_segments >= _MAX_CODE:
        raise ValueError(
            f"the lattice spans {total * num_segments:.3g} keys, more than int64 codes hold; the features are too "
            "spread out (very small sxy/srgb for the image size)"
        )
    stride = torch.tensor(strides, dtype=torch.int64, device=rem0.device)
    base = ((base_key - low) * stride).sum(1)
    if segments is not None:
        base = base + segments.to(torch.int64) * total
    # sum_i canonical[r, rank_i] * stride_i = r * sum(stride) - (d+1) * (sum of the strides of ranks > d - r):
    # put each coordinate's stride at its rank and take suffix sums, instead of an (N, d+1, d) key tensor.
    by_rank = torch.zeros(num, dim + 2, dtype=torch.int64, device=rem0.device)
    by_rank.scatter_(1, rank[:, :dim], stride.expand(num, dim))
    suffix = by_rank.flip(1).cumsum(1).flip(1)  # suffix[:, k] = sum of strides of ranks >= k; suffix[:, d+1] = 0
    remainder = torch.arange(dim + 1, device=rem0.device)
    codes = base[:, None] + remainder * stride.sum() - (dim + 1) * suffix[:, dim + 1 - remainder]
    # Direction j moves by +d on coordinate j and -1 on all others (direction d: -1 on all stored coordinates).
    directions = -torch.ones(dim + 1, dim, dtype=torch.int64, device=rem0.device)
    directions[torch.arange(dim), torch.arange(dim)] = dim
    return codes, (directions * stride).sum(-1)


def _csr(crow: Tensor, col: Tensor, values: Tensor, size: tuple[int, int]) -> Tensor:
    with warnings.catch_warnings():  # "sparse CSR support is in beta": the products used here are stable
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(crow, col, values, size, check_invariants=False)


def _pad_like_densecrf(features: Tensor, segments: Tensor | None) -> tuple[Tensor, Tensor | None]:
    """Append densecrf's phantom points: zero features up to a multiple of 4 points per segment.

    Args:
        features: float32 (N, d); segments: int64 (N,) or None.

    Returns:
        features (N + P, d) and segments (N + P,) or None, the P phantom points last.
    """
    num, dim = features.shape
    if segments is None:
        pad_segments = None
        count = -num % 4
    else:
        segments = segments.to(torch.int64)
        pads = -torch.bincount(segments) % 4
        pad_segments = torch.repeat_interleave(torch.arange(pads.numel(), device=features.device), pads)
        segments = torch.cat([segments, pad_segments])
        count = int(pad_segments.numel())
    return torch.cat([features, features.new_zeros(count, dim)]), segments


def _hash_and_splat(codes: Tensor, weights: Tensor, num_points: int) -> tuple[Tensor, Tensor, Tensor]:
    """Deduplicate the vertex codes with one stable sort, which also groups the splat matrix by vertex.

    Args:
        codes: int64 (N + P, d+1) vertex codes of every point's simplex; weights: float32 (N + P, d+1) barycentric
            weights; num_points: N, the real points (the P after them are phantoms that only create vertices).

    Returns:
        ``vertex_codes`` int64 (M,) sorted unique codes, ``offsets`` int64 (N, d+1) vertex index of each real point's
        simplex vertices and the splat matrix, CSR (M+1, N), ``splat[m, n]`` = weight of point n on vertex m (row M
        empty).
    """
    width = codes.shape[1]
    sorted_codes, perm = torch.sort(codes.reshape(-1), stable=True)
    is_new = torch.ones_like(sorted_codes, dtype=torch.bool)
    is_new[1:] = sorted_codes[1:] != sorted_codes[:-1]
    vertex_of_sorted = torch.cumsum(is_new, 0) - 1
    offsets = torch.empty_like(perm)
    offsets[perm] = vertex_of_sorted
    vertex_codes = sorted_codes[is_new]
    num_vertices = int(vertex_codes.numel())
    # Sorting kept the entries grouped by vertex; drop the phantoms' entries. Row M stays empty (the zero value of
    # missing blur neighbours). The d+1 vertices of a point are distinct, so each (vertex, point) pair occurs once.
    point = perm // width
    real = point < num_points
    counts = torch.bincount(vertex_of_sorted[real], minlength=num_vertices + 1)
    crow = torch.cat([counts.new_zeros(1), torch.cumsum(counts, 0)])
    splat = _csr(crow, point[real], weights.reshape(-1)[perm][real], (num_vertices + 1, num_points))
    return vertex_codes, offsets.reshape(-1, width)[:num_points], splat


def _slice_matrix(offsets: Tensor, weights: Tensor, num_vertices: int) -> Tensor:
    """Slice matrix, CSR (N, M+1): row n holds point n's d+1 barycentric weights (columns sorted, as cuSPARSE wants)."""
    num, width = offsets.shape
    cols, order = torch.sort(offsets, dim=1)
    crow = torch.arange(0, num * width + 1, width, device=offsets.device)
    return _csr(crow, cols.reshape(-1), torch.gather(weights, 1, order).reshape(-1), (num, num_vertices + 1))


def _blur_neighbours(vertex_codes: Tensor, delta_codes: Tensor) -> list[tuple[Tensor, Tensor]]:
    """For each direction j = 0..d, the indices of the two neighbours of every vertex (M = absent).

    Args:
        vertex_codes: int64 (M,) sorted codes; delta_codes: int64 (d+1,).

    Returns:
        d+1 pairs of int64 (M+1,) index tensors into a (M+1, C) table whose row M is zero (and maps to itself).
    """
    num = vertex_codes.numel()
    queries = torch.cat([vertex_codes + delta_codes[:, None], vertex_codes - delta_codes[:, None]])  # (2(d+1), M)
    index = torch.searchsorted(vertex_codes, queries).clamp_(max=num - 1)
    table = queries.new_full((queries.shape[0], num + 1), num)
    table[:, :num] = torch.where(vertex_codes[index] == queries, index, num)
    half = delta_codes.numel()
    return [(table[j], table[half + j]) for j in range(half)]


class _Kernel:
    """One pairwise term: lattice, symmetric normalisation ``1 / sqrt(L(1))`` (N, 1) and Potts weight."""

    def __init__(self, features: Tensor, weight: float, segments: Tensor | None) -> None:
        self.lattice = PermutohedralLattice(features, segments)
        ones = features.new_ones(features.shape[0], 1)
        self.norm = 1.0 / torch.sqrt(self.lattice.filter(ones) + 1e-20)
        self.weight = float(weight)
        self._weighted_norm = self.norm * self.weight

    def message(self, q: Tensor) -> Tensor:
        """``w * n * L(n * Q)`` for Q (N, C); the Potts term's ``-w`` and the energy's minus sign cancel."""
        return self.lattice.filter(q * self.norm).mul_(self._weighted_norm)


def _spatial_features(height: int, width: int, sxy: float, device: torch.device) -> Tensor:
    """``(x / sxy, y / sxy)`` per pixel, float32 (H, W, 2), with densecrf's float32 division."""
    xs = torch.arange(width, dtype=torch.float32, device=device) / float(np.float32(sxy))
    ys = torch.arange(height, dtype=torch.float32, device=device) / float(np.float32(sxy))
    return torch.stack([xs[None, :].expand(height, width), ys[:, None].expand(height, width)], -1)


def _bilateral_features(image: Tensor, sxy: float, srgb: float) -> Tensor:
    """``(x, y) / sxy`` and ``(r, g, b) / srgb`` per pixel, row-major. image: uint8 (H, W, 3). -> float32 (H*W, 5)."""
    height, width = image.shape[:2]
    colour = image.to(torch.float32) / float(np.float32(srgb))
    features = torch.cat([_spatial_features(height, width, sxy, image.device), colour], -1)
    return features.reshape(height * width, 5)


class _PerImageGaussian:
    """The spatial kernel of one or several images (flattened one after the other) from each size's cached lattice.

    Images of one size are filtered together as extra channels of one product (the lattice is the same), so a batch
    of equal-sized images costs one filtering and no lattice construction after the first batch of that size.
    """

    def __init__(self, shapes: Sequence[tuple[int, int]], sxy: float, weight: float, device: torch.device) -> None:
        starts = np.cumsum([0] + [h * w for h, w in shapes[:-1]]).tolist()
        groups: dict[tuple[int, int], list[int]] = {}
        for start, shape in zip(starts, shapes, strict=True):
            groups.setdefault(shape, []).append(int(start))
        self._single = len(shapes) == 1
        self._groups = [(_gaussian_kernel(h, w, sxy, weight, device), h * w, group) for (h, w), group in groups.items()]

    def message(self, q: Tensor) -> Tensor:
        """``w * n * L(n * Q)`` of each image's own lattice, for Q (N_total, C)."""
        if self._single:
            return self._groups[0][0].message(q)
        out = torch.empty_like(q)
        channels = q.shape[1]
        for kernel, n, group_starts in self._groups:
            stacked = torch.cat([q[start : start + n] for start in group_starts], dim=1)  # (n, k * C)
            message = kernel.message(stacked)
            for index, start in enumerate(group_starts):
                out[start : start + n] = message[:, index * channels : (index + 1) * channels]
        return out


@functools.lru_cache(maxsize=4)
def _gaussian_kernel(height: int, width: int, sxy: float, weight: float, device: torch.device) -> _Kernel:
    """Spatial kernel of an (H, W) image, cached (a few MB per entry); clear with ``_gaussian_kernel.cache_clear()``."""
    features = _spatial_features(height, width, sxy, device).reshape(height * width, 2)
    return _Kernel(features, weight, None)


class TorchDenseCRF:
    """Dense CRF of one image (or several, concatenated) whose lattices are built once and reused.

    Args:
        image: uint8 RGB (H, W, 3) tensor on the device to run on, or a sequence of such images (batched as one
            lattice; they may differ in size).
        params: preset name, :class:`CRFParams` or mapping of its fields.

    Example::

        crf = TorchDenseCRF(image, "auxseg_inference")
        q = crf.inference(unary)  # unary (C, H, W) -> marginals (C, H, W)
    """

    def __init__(self, image: Tensor | Sequence[Tensor], params: ParamsLike) -> None:
        self.params = get_crf_params(params)
        images = [image] if isinstance(image, Tensor) else list(image)
        if not images:
            raise ValueError("TorchDenseCRF needs at least one image")
        for img in images:
            _check_image_tensor(img)
        self.device = images[0].device
        images = [img.to(self.device) for img in images]
        self.shapes = [(int(img.shape[0]), int(img.shape[1])) for img in images]
        segments = None
        if len(images) > 1:
            sizes = torch.tensor([h * w for h, w in self.shapes], device=self.device)
            segments = torch.repeat_interleave(torch.arange(len(images), device=self.device), sizes)
        p = self.params
        # The spatial lattice depends on the image size only: each size's cached lattice, never a joint one
        gaussian = _PerImageGaussian(self.shapes, float(p.gaussian_sxy), float(p.gaussian_compat), self.device)
        bilateral = torch.cat([_bilateral_features(img, p.bilateral_sxy, p.bilateral_srgb) for img in images])
        self.kernels: list[_Kernel | _PerImageGaussian] = [gaussian, _Kernel(bilateral, p.bilateral_compat, segments)]

    @property
    def num_pixels(self) -> int:
        return sum(h * w for h, w in self.shapes)

    def inference_flat(self, unary: Tensor, iterations: int | None = None) -> Tensor:
        """Mean field on flattened energies. unary: float (N, C), N = all pixels in order. -> float32 (N, C)."""
        if unary.ndim != 2 or unary.shape[0] != self.num_pixels:
            raise ValueError(f"unary must be ({self.num_pixels}, C), got shape {tuple(unary.shape)}")
        steps = self.params.iterations if iterations is None else int(iterations)
        neg_unary = -unary.to(device=self.device, dtype=torch.float32)
        q = torch.softmax(neg_unary, dim=1)
        for _ in range(steps):
            logits = neg_unary
            for kernel in self.kernels:  # Gaussian then bilateral, as added in crf.py
                logits = logits + kernel.message(q)
            q = torch.softmax(logits, dim=1)
        return q

    def inference(self, unary: Tensor, iterations: int | None = None) -> Tensor:
        """Mean-field marginals of one image.

        Args:
            unary: float (C, H, W) energies (``-log p``), on any device (moved to the CRF's).
            iterations: overrides ``params.iterations``; 0 returns ``softmax(-unary)``.

        Returns:
            float32 (C, H, W) marginals in [0, 1], summing to 1 over C.
        """
        if len(self.shapes) != 1:
            raise ValueError("this CRF holds several images; use inference_batch")
        return self.inference_batch([unary], iterations)[0]

    def inference_batch(self, unaries: Sequence[Tensor], iterations: int | None = None) -> list[Tensor]:
        """Mean-field marginals of all images at once. unaries: (C, H_i, W_i) each, same C. -> list of (C, H_i, W_i)."""
        if len(unaries) != len(self.shapes):
            raise ValueError(f"expected {len(self.shapes)} unaries, got {len(unaries)}")
        labels = {int(u.shape[0]) if u.ndim == 3 else -1 for u in unaries}
        for u, shape in zip(unaries, self.shapes, strict=True):
            if u.ndim != 3 or tuple(u.shape[1:]) != shape:
                raise ValueError(f"unary must be (C, H, W) with (H, W) = {shape}, got shape {tuple(u.shape)}")
        if len(labels) != 1:
            raise ValueError(f"all unaries must have the same number of labels, got {sorted(labels)}")
        flat = torch.cat([u.to(self.device).reshape(u.shape[0], -1).T for u in unaries])
        q = self.inference_flat(flat, iterations)
        out, start = [], 0
        for height, width in self.shapes:
            out.append(q[start : start + height * width].T.reshape(-1, height, width))
            start += height * width
        return out


def _check_image_tensor(image: Tensor) -> None:
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must be (H, W, 3) RGB, got shape {tuple(image.shape)}")
    if image.dtype != torch.uint8:
        raise ValueError(f"image must be uint8 (0..255), got {image.dtype}; pass the un-normalised image")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"image must have at least one pixel, got shape {tuple(image.shape)}")


def _to_tensor(x: ArrayLike, device: torch.device | str | None) -> Tensor:
    if isinstance(x, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(x)).to(device or "cpu")
    if isinstance(x, Tensor):
        return x if device is None else x.to(device)
    raise TypeError(f"expected a torch.Tensor or numpy.ndarray, got {type(x).__name__}")


def _image_hwc(image: ArrayLike, size: tuple[int, int], device: torch.device | str | None) -> Tensor:
    """uint8 (H, W, 3) or (3, H, W) -> (H, W, 3) tensor; the layout is told apart by the probabilities' (H, W)."""
    img = _to_tensor(image, device)
    if img.ndim == 3 and tuple(img.shape[:2]) != size and img.shape[0] == 3 and tuple(img.shape[1:]) == size:
        img = img.permute(1, 2, 0)
    _check_image_tensor(img)
    if tuple(img.shape[:2]) != size:
        raise ValueError(f"image is {tuple(img.shape)} but the probabilities are for (H, W) = {size}")
    return img.contiguous()


def saliency_unary_torch(saliency: Tensor, tau: float = 1.05, eps: float = 1e-8) -> Tensor:
    """AuxSegNet's 2-label saliency unary, as :func:`~wsss_lightning.pseudo.crf.saliency_unary`.

    Computed in float64 like the numpy version (float32 on MPS, which has no float64) and returned as float32.

    Args:
        saliency: float (H, W) in [0, 1].

    Returns:
        float32 (2, H, W): background energy, foreground energy.
    """
    if saliency.ndim != 2:
        raise ValueError(f"saliency must be (H, W), got shape {tuple(saliency.shape)}")
    s = saliency.to(torch.float32 if saliency.device.type == "mps" else torch.float64)
    if s.numel() and (not bool(torch.isfinite(s).all()) or float(s.min()) < 0.0 or float(s.max()) > 1.0):
        raise ValueError("saliency must be finite and in [0, 1] (divide 8-bit maps by 255)")
    bg = -torch.log(1.0 - s + eps) / (tau * torch.sigmoid(1.0 - s))
    fg = -torch.log(s + eps) / (tau * torch.sigmoid(s))
    return torch.stack([bg, fg]).to(torch.float32)


def _softmax_unary(probs: Tensor) -> Tensor:
    """pydensecrf ``unary_from_softmax``: ``-log(clip(p, 1e-5, 1))``. probs (C, H, W) -> float32 (C, H, W)."""
    return -torch.log(probs.to(torch.float32).clamp(UNARY_CLIP, 1.0))


def _check_probs(probs: Tensor) -> tuple[int, int]:
    if probs.ndim != 3 or probs.shape[0] < 1:
        raise ValueError(f"probs must be (C, H, W), got shape {tuple(probs.shape)}")
    if not probs.is_floating_point():
        raise ValueError(f"probs must be a float tensor, got {probs.dtype}")
    return int(probs.shape[1]), int(probs.shape[2])


def _check_saliency(saliency: Tensor) -> tuple[int, int]:
    if saliency.ndim != 2:
        raise ValueError(f"saliency must be (H, W), got shape {tuple(saliency.shape)}")
    return int(saliency.shape[0]), int(saliency.shape[1])


@overload
def dense_crf_torch(
    image: np.ndarray, probs: np.ndarray, params: ParamsLike, device: torch.device | str | None = None
) -> np.ndarray: ...
@overload
def dense_crf_torch(
    image: ArrayLike, probs: Tensor, params: ParamsLike, device: torch.device | str | None = None
) -> Tensor: ...
def dense_crf_torch(
    image: ArrayLike, probs: ArrayLike, params: ParamsLike, device: torch.device | str | None = None
) -> ArrayLike:
    """Dense CRF on class probabilities, a drop-in for :func:`~wsss_lightning.pseudo.crf.dense_crf`.

    Args:
        image: uint8 RGB, (H, W, 3) or (3, H, W), not normalised.
        probs: float (C, H, W) class probabilities (the unary is ``-log(clip(probs, 1e-5, 1))``).
        params: preset name, :class:`CRFParams` or a mapping of its fields.
        device: where to run; default: the probabilities' device (CPU for numpy input).

    Returns:
        float32 (C, H, W) marginals summing to 1 over C; numpy if ``probs`` is numpy, else a tensor on the device.
    """
    as_numpy = isinstance(probs, np.ndarray)
    probs_t = _to_tensor(probs, device)
    size = _check_probs(probs_t)
    img = _image_hwc(image, size, probs_t.device)
    q = TorchDenseCRF(img, params).inference(_softmax_unary(probs_t))
    return q.cpu().numpy() if as_numpy else q


@overload
def saliency_crf_torch(
    image: np.ndarray,
    saliency: np.ndarray,
    params: ParamsLike = ...,
    tau: float = ...,
    device: torch.device | str | None = ...,
) -> np.ndarray: ...
@overload
def saliency_crf_torch(
    image: ArrayLike,
    saliency: Tensor,
    params: ParamsLike = ...,
    tau: float = ...,
    device: torch.device | str | None = ...,
) -> Tensor: ...
def saliency_crf_torch(
    image: ArrayLike,
    saliency: ArrayLike,
    params: ParamsLike = "auxseg_saliency",
    tau: float = 1.05,
    device: torch.device | str | None = None,
) -> ArrayLike:
    """AuxSegNet saliency refinement, a drop-in for :func:`~wsss_lightning.pseudo.crf.saliency_crf`.

    Args:
        image: uint8 RGB, (H, W, 3) or (3, H, W).
        saliency: float (H, W) in [0, 1].
        params: default ``"auxseg_saliency"`` (3/3, 60/5/5, 1 iteration).
        tau: unary temperature.
        device: where to run; default: the saliency's device (CPU for numpy input).

    Returns:
        float32 (H, W) foreground marginal in [0, 1]; numpy if ``saliency`` is numpy, else a tensor.
    """
    as_numpy = isinstance(saliency, np.ndarray)
    sal = _to_tensor(saliency, device)
    img = _image_hwc(image, _check_saliency(sal), sal.device)
    q = TorchDenseCRF(img, params).inference(saliency_unary_torch(sal, tau))[1]
    return q.cpu().numpy() if as_numpy else q


def _crf_batch(
    images: Sequence[ArrayLike],
    maps: Sequence[ArrayLike],
    what: str,
    size_of: Callable[[Tensor], tuple[int, int]],
    unary_of: Callable[[Tensor], Tensor],
    params: ParamsLike,
    device: torch.device | str | None,
) -> list[Tensor | np.ndarray]:
    """Marginals ``(C, H_i, W_i)`` of several images in one :class:`TorchDenseCRF`: ``maps`` are moved to the first
    one's device (or ``device``), checked and sized by ``size_of``, turned into energies by ``unary_of``; numpy in,
    numpy out per map."""
    if len(images) != len(maps):
        raise ValueError(f"got {len(images)} images but {len(maps)} {what}")
    if not maps:
        return []
    as_numpy = [isinstance(m, np.ndarray) for m in maps]
    maps_t = [_to_tensor(m, device) for m in maps]
    target = maps_t[0].device
    maps_t = [m.to(target) for m in maps_t]
    imgs = [_image_hwc(img, size_of(m), target) for img, m in zip(images, maps_t, strict=True)]
    qs = TorchDenseCRF(imgs, params).inference_batch([unary_of(m) for m in maps_t])
    return [q.cpu().numpy() if np_out else q for q, np_out in zip(qs, as_numpy, strict=True)]


def dense_crf_torch_batch(
    images: Sequence[ArrayLike],
    probs: Sequence[ArrayLike],
    params: ParamsLike,
    device: torch.device | str | None = None,
) -> list[ArrayLike]:
    """:func:`dense_crf_torch` on several images (sizes may differ, same C) in one CRF: one bilateral lattice for
    all, each image size's cached spatial lattice.

    Fewer, larger kernels: meant for a GPU. On a CPU it measured 0.5x the images/s of a loop (the larger working set
    leaves the caches; docs/benchmarks.md). Memory grows with the total pixel count. Returns numpy arrays for numpy
    probabilities.
    """
    return _crf_batch(images, probs, "probability maps", _check_probs, _softmax_unary, params, device)


def saliency_crf_torch_batch(
    images: Sequence[ArrayLike],
    saliencies: Sequence[ArrayLike],
    params: ParamsLike = "auxseg_saliency",
    tau: float = 1.05,
    device: torch.device | str | None = None,
) -> list[ArrayLike]:
    """:func:`saliency_crf_torch` on several images (sizes may differ) in one CRF, as :func:`dense_crf_torch_batch`.

    A refresh batch's saliency CRF (1 iteration) is mostly lattice construction: one bilateral lattice for the batch
    launches the same kernels once instead of once per image. Returns numpy arrays for numpy saliency maps.
    """
    marginals = _crf_batch(
        images, saliencies, "saliency maps", _check_saliency, lambda s: saliency_unary_torch(s, tau), params, device
    )
    return [q[1] for q in marginals]  # the foreground marginal (H, W)

"""Cross-task (dual-)affinity: hand computations of every equation of docs/method_notes.md §2.4 / §2.12, chunking,
autocast."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

from wsss_lightning.models import affinity as affinity_mod
from wsss_lightning.models.affinity import (
    AffinityContext,
    CrossTaskAffinity,
    PairwiseFusion,
    TaskAffinity,
    UnaryFusion,
)

C = 8
MODES = ("none", "pairwise", "unary", "dual")


def _features(b: int = 2, h: int = 6, w: int = 6, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, C, h, w, generator=g), torch.randn(b, C, h, w, generator=g)


def _module(seed: int = 0, **kwargs: object) -> CrossTaskAffinity:
    torch.manual_seed(seed)
    m = CrossTaskAffinity(C, **kwargs)
    # Non-trivial fusion weights: default init on inputs ~1/N gives Ω ≈ softmax(bias); scale so Ω varies.
    with torch.no_grad():
        for p in m.parameters():
            p.mul_(3.0)
    return m


def _conv1x1(conv: torch.nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """1×1 conv by hand on (B, C, N) float64: W x + b."""
    w = conv.weight.double()[:, :, 0, 0]
    out = torch.einsum("oc,bcn->bon", w, x.double())
    return out if conv.bias is None else out + conv.bias.double()[None, :, None]


def _hand_pairwise(layer: TaskAffinity, f: torch.Tensor, whiten: bool = False) -> torch.Tensor:
    x = f.flatten(2)
    theta, phi = _conv1x1(layer.theta, x), _conv1x1(layer.phi, x)
    if whiten:
        theta = theta - theta.mean(-1, keepdim=True)
        phi = phi - phi.mean(-1, keepdim=True)
    logits = torch.einsum("bci,bcj->bij", theta, phi)
    e = torch.exp(logits - logits.max(-1, keepdim=True).values)
    return e / e.sum(-1, keepdim=True)


def _hand_unary(layer: TaskAffinity, f: torch.Tensor) -> torch.Tensor:
    s = _conv1x1(layer.unary, f.flatten(2))[:, 0]
    e = torch.exp(s - s.max(-1, keepdim=True).values)
    return e / e.sum(-1, keepdim=True)


def _hand_fusion(fusion: PairwiseFusion, a_seg: torch.Tensor, a_sal: torch.Tensor) -> torch.Tensor:
    """Ω as the official ``cross_att`` Sequential (3×3 pad 1 → ReLU → 1×1 → softmax over channels)."""
    x = torch.stack([a_seg, a_sal], 1).double()
    h = torch.relu(F.conv2d(x, fusion.conv3x3.weight.double(), padding=1))
    logits = F.conv2d(h, fusion.conv1x1.weight.double(), fusion.conv1x1.bias.double())
    return torch.softmax(logits, dim=1)


def _hand_a_ct(m: CrossTaskAffinity, f_seg: torch.Tensor, f_sal: torch.Tensor) -> torch.Tensor:
    a_seg, a_sal = _hand_pairwise(m.seg, f_seg), _hand_pairwise(m.sal, f_sal)
    omega = _hand_fusion(m.pairwise_fusion, a_seg, a_sal)
    return omega[:, 0] * a_seg + omega[:, 1] * a_sal


def _hand_u_ct(m: CrossTaskAffinity, f_seg: torch.Tensor, f_sal: torch.Tensor) -> torch.Tensor:
    u_seg, u_sal = _hand_unary(m.seg, f_seg), _hand_unary(m.sal, f_sal)
    if m.unary_fusion is None:
        return 0.5 * (u_seg + u_sal)
    logits = _conv1x1(m.unary_fusion.conv, torch.stack([u_seg, u_sal], 1))
    omega = torch.softmax(logits, dim=1)
    return omega[:, 0] * u_seg + omega[:, 1] * u_sal


def _apply(a: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """R(:, i) = Σ_j A(i, j) values(:, j) with values (B, K, h, w)."""
    out = torch.einsum("bij,bkj->bki", a.double(), values.flatten(2).double())
    return out.view(values.shape)


# ---------------------------------------------------------------------------------------------------------------
# Task-specific pairwise / unary.
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("whiten", [False, True])
def test_pairwise_matches_hand_computation_and_rows_sum_to_one(whiten: bool) -> None:
    torch.manual_seed(1)
    layer = TaskAffinity(C, pairwise=True, unary=False, whiten=whiten)
    f, _ = _features()
    a = layer.pairwise_matrix(f)
    assert a.shape == (2, 36, 36) and a.dtype == torch.float32
    torch.testing.assert_close(a.double(), _hand_pairwise(layer, f, whiten), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(a.sum(-1), torch.ones(2, 36))
    assert a.min() >= 0 and a.max() <= 1


def test_whitening_changes_the_affinity_but_not_when_means_are_zero() -> None:
    torch.manual_seed(2)
    plain = TaskAffinity(C, pairwise=True, unary=False, whiten=False)
    white = TaskAffinity(C, pairwise=True, unary=False, whiten=True)
    white.load_state_dict(plain.state_dict())
    f, _ = _features()
    assert not torch.allclose(plain.pairwise_matrix(f), white.pairwise_matrix(f), atol=1e-4)
    # Zero biases + zero-mean features ⇒ θ and φ already have zero spatial mean: whitening is a no-op.
    with torch.no_grad():
        for conv in (plain.theta, plain.phi, white.theta, white.phi):
            conv.bias.zero_()
    f0 = f - f.mean(dim=(2, 3), keepdim=True)
    torch.testing.assert_close(plain.pairwise_matrix(f0), white.pairwise_matrix(f0), rtol=1e-5, atol=1e-6)


def test_unary_matches_hand_computation() -> None:
    torch.manual_seed(3)
    layer = TaskAffinity(C, pairwise=False, unary=True)
    f, _ = _features()
    u = layer.unary_weights(f)
    assert u.shape == (2, 36) and u.dtype == torch.float32
    torch.testing.assert_close(u.double(), _hand_unary(layer, f), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(u.sum(-1), torch.ones(2))


@pytest.mark.parametrize("mode", MODES)
def test_feature_enhancement_uses_task_specific_affinities(mode: str) -> None:
    m = _module(4, mode=mode, cross_task=True)
    f_seg, f_sal = _features(seed=4)
    out = m(f_seg, f_sal)
    for layer, f, got in ((m.seg, f_seg, out.seg_features), (m.sal, f_sal, out.sal_features)):
        if mode == "none":
            assert got is f
            continue
        g = _conv1x1(layer.g, f.flatten(2))  # (B, C, N)
        ctx = torch.zeros_like(g)
        if mode in ("pairwise", "dual"):
            ctx = ctx + torch.einsum("bij,bcj->bci", _hand_pairwise(layer, f), g)
        if mode in ("unary", "dual"):
            ctx = ctx + torch.einsum("bj,bcj->bc", _hand_unary(layer, f), g)[..., None]
        expected = f.double() + _conv1x1(layer.W, ctx).view(f.shape)
        torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------------------------------
# Cross-task fusion.
# ---------------------------------------------------------------------------------------------------------------


def test_fusion_weights_sum_to_one_and_a_ct_equals_formula() -> None:
    m = _module(5, mode="pairwise", cross_task=True)
    f_seg, f_sal = _features(seed=5)
    a_seg, a_sal = m.seg.pairwise_matrix(f_seg), m.sal.pairwise_matrix(f_sal)
    omega = m.pairwise_fusion.weights(a_seg, a_sal)
    assert omega.shape == (2, 2, 36, 36)
    torch.testing.assert_close(omega.sum(1), torch.ones(2, 36, 36))
    assert omega.min() >= 0 and omega.max() <= 1
    torch.testing.assert_close(omega.double(), _hand_fusion(m.pairwise_fusion, a_seg, a_sal), rtol=1e-5, atol=1e-6)
    # Ω must vary per entry for the test to mean anything.
    assert omega[:, 0].std() > 1e-3

    a_ct = m(f_seg, f_sal).seg_context.matrix()
    torch.testing.assert_close(a_ct.double(), _hand_a_ct(m, f_seg, f_sal), rtol=1e-5, atol=1e-7)
    assert a_ct.min() >= 0 and a_ct.max() <= 1
    # Not re-normalised: rows sum to about, but not exactly, 1.
    sums = a_ct.sum(-1)
    assert (sums - 1).abs().max() > 1e-4 and sums.min() > 0 and sums.max() < 2


def test_renormalize_rows_ablation() -> None:
    m = _module(6, mode="dual", cross_task=True, renormalize_rows=True)
    f_seg, f_sal = _features(seed=6)
    ctx = m(f_seg, f_sal).seg_context
    a_ct = _hand_a_ct(m, f_seg, f_sal)
    torch.testing.assert_close(ctx.matrix().double(), a_ct / a_ct.sum(-1, keepdim=True), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(ctx.unary.sum(-1), torch.ones(2))


def test_sa_conv_halo_rows_match_full_matrix() -> None:
    """Any block of A_CT rows computed with one halo row per side equals the same rows of the full map."""
    m = _module(7, mode="pairwise", cross_task=True)
    f_seg, f_sal = _features(h=5, w=5, seed=7)
    seg = affinity_mod._EmbeddedRows(*m.seg.embeddings(f_seg))
    sal = affinity_mod._EmbeddedRows(*m.sal.embeddings(f_sal))
    rows = affinity_mod._CrossTaskRows(seg, sal, m.pairwise_fusion, renormalize=False)
    full = _hand_a_ct(m, f_seg, f_sal)
    for start, stop in [(0, 7), (7, 14), (14, 25), (3, 4), (0, 1), (24, 25), (0, 25)]:
        torch.testing.assert_close(rows.rows(start, stop).double(), full[:, start:stop], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("fusion", ["conv", "mean"])
def test_cross_task_unary_fusion(fusion: str) -> None:
    m = _module(8, mode="unary", cross_task=True, unary_fusion=fusion)
    assert (m.unary_fusion is None) == (fusion == "mean")
    f_seg, f_sal = _features(seed=8)
    ctx = m(f_seg, f_sal).seg_context
    expected = _hand_u_ct(m, f_seg, f_sal)
    torch.testing.assert_close(ctx.unary.double(), expected, rtol=1e-5, atol=1e-8)
    assert ctx.unary.min() >= 0 and ctx.unary.max() <= 1
    if fusion == "conv":
        omega = m.unary_fusion.weights(_hand_unary(m.seg, f_seg).float(), _hand_unary(m.sal, f_sal).float())
        torch.testing.assert_close(omega.sum(1), torch.ones(2, 36))
    else:
        torch.testing.assert_close(ctx.unary.sum(-1), torch.ones(2))


# ---------------------------------------------------------------------------------------------------------------
# Refinement and propagation.
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "cross_task", "average"), list(itertools.product(MODES, [True, False], [False, True]))
)
def test_refinement_equals_explicit_matrix_products(mode: str, cross_task: bool, average: bool) -> None:
    m = _module(9, mode=mode, cross_task=cross_task, average_terms=average)
    f_seg, f_sal = _features(seed=9)
    out = m(f_seg, f_sal)
    g = torch.Generator().manual_seed(99)
    l_seg, l_sal = torch.randn(2, 5, 6, 6, generator=g), torch.randn(2, 1, 6, 6, generator=g)
    r_seg, r_sal = m.refine(out, l_seg, l_sal)
    assert (out.seg_context is out.sal_context) == cross_task

    pairwise, unary = mode in ("pairwise", "dual"), mode in ("unary", "dual")
    for task, logits, got in (("seg", l_seg, r_seg), ("sal", l_sal, r_sal)):
        layer, f = (m.seg, f_seg) if task == "seg" else (m.sal, f_sal)
        expected = logits.double()
        if pairwise:
            a = _hand_a_ct(m, f_seg, f_sal) if cross_task else _hand_pairwise(layer, f)
            expected = _apply(a, logits)
        if unary:
            u = _hand_u_ct(m, f_seg, f_sal) if cross_task else _hand_unary(layer, f)
            expected = expected + torch.einsum("bj,bkj->bk", u, logits.flatten(2).double())[..., None, None]
            if average:
                expected = expected / 2
        assert got.shape == logits.shape and got.dtype == logits.dtype
        torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-5)
        if mode == "none":
            assert got is logits


@pytest.mark.parametrize("cross_task", [True, False])
def test_unary_refinement_off_keeps_unary_features_and_refines_pairwise_only(cross_task: bool) -> None:
    """``unary_refinement=False``: F' still carries the unary context, R = A·L, and no unused ω exists."""
    on = _module(12, mode="dual", cross_task=cross_task)
    off = _module(12, mode="dual", cross_task=cross_task, unary_refinement=False)
    f_seg, f_sal = _features(seed=12)
    out_on, out_off = on(f_seg, f_sal), off(f_seg, f_sal)
    torch.testing.assert_close(out_off.seg_features, out_on.seg_features)
    torch.testing.assert_close(out_off.sal_features, out_on.sal_features)
    assert off.unary_fusion is None and out_off.seg_context.unary is None
    l_seg = torch.randn(2, 5, 6, 6, generator=torch.Generator().manual_seed(3))
    a = _hand_a_ct(on, f_seg, f_sal) if cross_task else _hand_pairwise(on.seg, f_seg)
    r_seg, _ = off.refine(out_off, l_seg, torch.zeros(2, 1, 6, 6))
    torch.testing.assert_close(r_seg.double(), _apply(a, l_seg), rtol=1e-5, atol=1e-5)
    # Every parameter receives a gradient through F' or R (DDP needs no find_unused_parameters).
    out = off(f_seg, f_sal)
    r_seg, r_sal = off.refine(out, l_seg, torch.zeros(2, 1, 6, 6))
    (r_seg.sum() + r_sal.sum() + out.seg_features.sum() + out.sal_features.sum()).backward()
    assert all(p.grad is not None for p in off.parameters())


@pytest.mark.parametrize("cross_task", [True, False])
def test_unary_gate_starts_as_pairwise_and_scales_the_unary_terms(cross_task: bool) -> None:
    """``unary_gate``: zero gates give exactly the pairwise-only module; set gates scale each task's unary terms."""
    gated = _module(13, mode="dual", cross_task=cross_task, unary_gate=True)
    with torch.no_grad():  # _module scaled every parameter by 3: the gates start at 0 again
        for task in (gated.seg, gated.sal):
            task.feature_gate.zero_()
            task.refine_gate.zero_()
    pairwise = CrossTaskAffinity(C, mode="pairwise", cross_task=cross_task, whiten_pairwise=False)
    pairwise.load_state_dict(gated.state_dict(), strict=False)  # shared θ/φ/g/W/fusion weights
    f_seg, f_sal = _features(seed=13)
    l_seg = torch.randn(2, 5, 6, 6, generator=torch.Generator().manual_seed(4))
    l_sal = torch.randn(2, 1, 6, 6, generator=torch.Generator().manual_seed(5))
    out_g, out_p = gated(f_seg, f_sal), pairwise(f_seg, f_sal)
    torch.testing.assert_close(out_g.seg_features, out_p.seg_features)
    torch.testing.assert_close(out_g.sal_features, out_p.sal_features)
    for got, want in zip(gated.refine(out_g, l_seg, l_sal), pairwise.refine(out_p, l_seg, l_sal)):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)

    # Gates γ_seg = 0.5, γ_sal = -2: R_t = A·L_t + γ_t·1·(uᵀL_t), computed by hand from the ungated module.
    ungated = _module(13, mode="dual", cross_task=cross_task)
    with torch.no_grad():
        gated.seg.feature_gate.fill_(1.0)
        gated.sal.feature_gate.fill_(1.0)
        gated.seg.refine_gate.fill_(0.5)
        gated.sal.refine_gate.fill_(-2.0)
    out_g, out_u = gated(f_seg, f_sal), ungated(f_seg, f_sal)
    torch.testing.assert_close(out_g.seg_features, out_u.seg_features)  # feature gate 1 = ungated
    if cross_task:
        a, a_sal = _hand_a_ct(ungated, f_seg, f_sal), None
        u = u_sal = _hand_u_ct(ungated, f_seg, f_sal)
    else:
        a, a_sal = _hand_pairwise(ungated.seg, f_seg), _hand_pairwise(ungated.sal, f_sal)
        u, u_sal = _hand_unary(ungated.seg, f_seg), _hand_unary(ungated.sal, f_sal)
    r_seg, r_sal = gated.refine(out_g, l_seg, l_sal)
    glob_seg = torch.einsum("bj,bkj->bk", u, l_seg.flatten(2).double())[..., None, None]
    glob_sal = torch.einsum("bj,bkj->bk", u_sal, l_sal.flatten(2).double())[..., None, None]
    torch.testing.assert_close(r_seg.double(), _apply(a, l_seg) + 0.5 * glob_seg, rtol=1e-5, atol=1e-5)
    a_sal = a if a_sal is None else a_sal
    torch.testing.assert_close(r_sal.double(), _apply(a_sal, l_sal) - 2.0 * glob_sal, rtol=1e-5, atol=1e-5)
    # The gates train (heads' ×10 lr group: their names hold seg/sal).
    (r_seg.sum() + r_sal.sum() + out_g.seg_features.sum()).backward()
    assert gated.seg.refine_gate.grad is not None and gated.seg.feature_gate.grad is not None


def test_unary_only_refinement_is_logits_plus_global_term() -> None:
    m = _module(10, mode="unary", cross_task=False)
    f_seg, f_sal = _features(seed=10)
    ctx = m(f_seg, f_sal).seg_context
    logits = torch.randn(2, 3, 6, 6)
    u = _hand_unary(m.seg, f_seg)
    glob = (u[:, None, :] * logits.flatten(2).double()).sum(-1)  # uᵀL, (B, K)
    torch.testing.assert_close(ctx.refine(logits).double(), logits.double() + glob[..., None, None])
    # No pairwise term: propagation is the identity, matrix() the identity matrix.
    assert ctx.propagate(logits) is logits
    torch.testing.assert_close(ctx.matrix(), torch.eye(36).expand(2, 36, 36))


def test_none_mode_is_identity_and_has_no_parameters() -> None:
    m = CrossTaskAffinity(C, mode="none", cross_task=True)
    assert sum(1 for _ in m.parameters()) == 0
    f_seg, f_sal = _features()
    out = m(f_seg, f_sal)
    assert out.seg_features is f_seg and out.sal_features is f_sal
    l_seg, l_sal = torch.randn(2, 4, 6, 6), torch.randn(2, 1, 6, 6)
    r_seg, r_sal = m.refine(out, l_seg, l_sal)
    assert torch.equal(r_seg, l_seg) and torch.equal(r_sal, l_sal)
    assert out.seg_context.unary is None and not out.seg_context.has_pairwise


@pytest.mark.parametrize("cross_task", [True, False])
def test_propagate_equals_matrix_times_values(cross_task: bool) -> None:
    m = _module(11, mode="dual", cross_task=cross_task)
    f_seg, f_sal = _features(seed=11)
    ctx = m(f_seg, f_sal).seg_context
    cam = torch.rand(2, 20, 6, 6)
    got = ctx.propagate(cam)
    torch.testing.assert_close(got.double(), _apply(ctx.matrix(), cam), rtol=1e-5, atol=1e-6)
    # Pairwise only: the unary term never enters propagation.
    a = _hand_a_ct(m, f_seg, f_sal) if cross_task else _hand_pairwise(m.seg, f_seg)
    torch.testing.assert_close(got.double(), _apply(a, cam), rtol=1e-5, atol=1e-6)


def test_context_rejects_wrong_shape() -> None:
    m = _module(12, mode="pairwise")
    ctx = m(*_features()).seg_context
    with pytest.raises(ValueError, match="expected values of shape"):
        ctx.propagate(torch.rand(2, 3, 5, 6))


# ---------------------------------------------------------------------------------------------------------------
# Chunked (no-grad) path.
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "cross_task", "renorm"),
    [(mo, ct, False) for mo in MODES for ct in (True, False)] + [("dual", True, True)],
)
@pytest.mark.parametrize("cache_elements", [0, 700, 1 << 28])  # none kept; the first 2 blocks of 2×7×25; all
def test_chunked_equals_full(mode: str, cross_task: bool, renorm: bool, cache_elements: int) -> None:
    kw = {"mode": mode, "cross_task": cross_task, "renormalize_rows": renorm}
    full = _module(13, chunk_size=10**6, **kw)
    chunked = _module(13, chunk_size=7, cache_elements=cache_elements, **kw)  # 7 does not divide N = 25
    f_seg, f_sal = _features(h=5, w=5, seed=13)
    l_seg, l_sal = torch.randn(2, 4, 5, 5), torch.randn(2, 1, 5, 5)
    cam = torch.rand(2, 3, 5, 5)
    with torch.no_grad():
        a, b = full(f_seg, f_sal), chunked(f_seg, f_sal)
        assert not a.seg_context.is_chunked
        assert b.seg_context.is_chunked == (mode in ("pairwise", "dual"))
        torch.testing.assert_close(b.seg_features, a.seg_features, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(b.sal_features, a.sal_features, rtol=1e-5, atol=1e-6)
        for x, y in zip(full.refine(a, l_seg, l_sal), chunked.refine(b, l_seg, l_sal)):
            torch.testing.assert_close(y, x, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(b.seg_context.propagate(cam), a.seg_context.propagate(cam), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(b.seg_context.matrix(), a.seg_context.matrix(), rtol=1e-5, atol=1e-7)


def test_chunked_path_never_builds_more_than_a_block_of_rows(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[int] = []
    original = affinity_mod._EmbeddedRows.rows

    def spy(self: affinity_mod._EmbeddedRows, start: int, stop: int) -> torch.Tensor:
        seen.append(stop - start)
        return original(self, start, stop)

    monkeypatch.setattr(affinity_mod._EmbeddedRows, "rows", spy)
    m = _module(14, mode="dual", cross_task=True, chunk_size=6)
    f_seg, f_sal = _features(h=5, w=5, seed=14)
    with torch.no_grad():
        out = m(f_seg, f_sal)
        m.refine(out, torch.randn(2, 4, 5, 5), torch.randn(2, 1, 5, 5))
        out.seg_context.propagate(torch.rand(2, 3, 5, 5))
    assert seen and max(seen) <= 6 + 2  # a block plus one halo row per side
    # With gradients on, the full N×N path is used (one call per task).
    seen.clear()
    m(f_seg, f_sal)
    assert seen == [25, 25]


@pytest.mark.parametrize(
    ("cache_elements", "builds", "task_blocks"),
    [(1 << 28, 5, 5), (0, 20, 25), (2 * 6 * 25, 1 + 4 * 4, 1 + 4 + 4 * 4)],
)
def test_chunked_context_builds_a_ct_once_per_block_within_its_cache(
    monkeypatch: pytest.MonkeyPatch, cache_elements: int, builds: int, task_blocks: int
) -> None:
    """A label update's five passes over the affinity (the enhancement, then refinement, propagation and the two
    health passes over A_CT) build each block once when the cache holds it: 25 rows in blocks of 6 are 5 blocks,
    and the enhancement reads A_seg / A_sal from the walk that fuses A_CT. Without a cache A_CT is built 4 × 5 times
    and the enhancement builds the task rows alone (5 more blocks per task); with room for the first block only
    (2 images × 6 rows × 25), the enhancement fuses and keeps that one and the other 4 are rebuilt on every pass."""
    m = _module(14, mode="dual", cross_task=True, chunk_size=6, cache_elements=cache_elements)
    reference = _module(14, mode="dual", cross_task=True, chunk_size=10**6)
    f_seg, f_sal = _features(h=5, w=5, seed=14)
    l_seg, l_sal, cam = torch.randn(2, 4, 5, 5), torch.randn(2, 1, 5, 5), torch.rand(2, 3, 5, 5)
    foreground = cam.amax(dim=1) > 0.5
    with torch.no_grad():
        ref = reference(f_seg, f_sal)
        expected = (
            reference.refine(ref, l_seg, l_sal),
            ref.seg_context.propagate(cam),
            ref.seg_context.row_statistics(foreground),
        )
    calls: list[tuple[int, int]] = []
    task_calls: list[tuple[int, int]] = []
    original = affinity_mod._CrossTaskRows.build
    original_task = affinity_mod._EmbeddedRows.rows

    def spy(self: affinity_mod._CrossTaskRows, start: int, stop: int) -> tuple[torch.Tensor, ...]:
        calls.append((start, stop))
        return original(self, start, stop)

    def task_spy(self: affinity_mod._EmbeddedRows, start: int, stop: int) -> torch.Tensor:
        task_calls.append((start, stop))
        return original_task(self, start, stop)

    monkeypatch.setattr(affinity_mod._CrossTaskRows, "build", spy)
    monkeypatch.setattr(affinity_mod._EmbeddedRows, "rows", task_spy)
    with torch.no_grad():
        out = m(f_seg, f_sal)
        refined = m.refine(out, l_seg, l_sal)
        propagated = out.seg_context.propagate(cam)
        stats = out.seg_context.row_statistics(foreground)
    assert len(calls) == builds
    assert sorted(set(calls)) == [(0, 6), (6, 12), (12, 18), (18, 24), (24, 25)]
    assert len(task_calls) == 2 * task_blocks  # both tasks
    for x, y in zip(refined, expected[0]):
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(propagated, expected[1], rtol=1e-5, atol=1e-6)
    for key, value in expected[2].items():
        torch.testing.assert_close(stats[key], value, rtol=1e-5, atol=1e-6, equal_nan=True)


# ---------------------------------------------------------------------------------------------------------------
# Mixed precision.
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("chunk_size", [10**6, 7])
def test_bf16_autocast_keeps_affinity_in_fp32(chunk_size: int) -> None:
    m = _module(15, mode="dual", cross_task=False, chunk_size=chunk_size)
    f_seg, f_sal = _features(h=5, w=5, seed=15)
    with torch.no_grad():
        ref = m(f_seg, f_sal).seg_context.matrix()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = m(f_seg, f_sal)
            a = out.seg_context.matrix()
            r_seg, _ = m.refine(out, out.seg_features[:, :3].bfloat16(), out.sal_features[:, :1].bfloat16())
    assert a.dtype == torch.float32 and out.seg_context.unary.dtype == torch.float32
    torch.testing.assert_close(a.sum(-1), torch.ones(2, 25), rtol=0, atol=1e-5)
    assert a.min() >= 0 and a.max() <= 1
    # θ, φ and the softmax ran in fp32: identical to the fp32 pass, not merely close at bf16 precision.
    torch.testing.assert_close(a, ref, rtol=1e-6, atol=1e-7)
    assert r_seg.dtype == torch.bfloat16


def test_bf16_autocast_cross_task_with_gradients() -> None:
    m = _module(16, mode="pairwise", cross_task=True)
    f_seg, f_sal = _features(seed=16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = m(f_seg, f_sal)
        omega = m.pairwise_fusion.weights(m.seg.pairwise_matrix(f_seg), m.sal.pairwise_matrix(f_sal))
    assert omega.dtype == torch.float32
    torch.testing.assert_close(omega.sum(1), torch.ones(2, 36, 36))
    torch.testing.assert_close(out.seg_context.matrix().double(), _hand_a_ct(m, f_seg, f_sal), rtol=1e-5, atol=1e-7)


# ---------------------------------------------------------------------------------------------------------------
# Parameters and gradients.
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("mode", "cross_task"), list(itertools.product(MODES, [True, False])))
def test_gradients_reach_every_parameter(mode: str, cross_task: bool) -> None:
    m = _module(17, mode=mode, cross_task=cross_task)
    f_seg, f_sal = _features(seed=17)
    out = m(f_seg, f_sal)
    r_seg, r_sal = m.refine(out, torch.randn(2, 4, 6, 6), torch.randn(2, 1, 6, 6))
    g = torch.Generator().manual_seed(0)
    loss = sum(
        (t * torch.randn(t.shape, generator=g)).sum() for t in (out.seg_features, out.sal_features, r_seg, r_sal)
    )
    expected = {
        "none": set(),
        "pairwise": {"theta", "phi", "g", "W"},
        "unary": {"g", "W", "unary"},
        "dual": {"theta", "phi", "g", "W", "unary"},
    }[mode]
    names = {n.split(".")[1] for n, _ in m.named_parameters() if n.startswith(("seg.", "sal."))}
    assert names == expected
    if mode == "none":
        return
    loss.backward()
    for name, p in m.named_parameters():
        assert p.grad is not None, name
        assert p.grad.abs().sum() > 0, name
    assert (m.pairwise_fusion is not None) == (cross_task and mode in ("pairwise", "dual"))
    assert (m.unary_fusion is not None) == (cross_task and mode in ("unary", "dual"))


def test_invalid_arguments_raise() -> None:
    with pytest.raises(ValueError, match="affinity mode"):
        CrossTaskAffinity(C, mode="triple")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unary_fusion"):
        CrossTaskAffinity(C, mode="dual", unary_fusion="max")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="chunk_size"):
        CrossTaskAffinity(C, chunk_size=0)
    with pytest.raises(ValueError, match="cache_elements"):
        CrossTaskAffinity(C, cache_elements=-1)
    m = CrossTaskAffinity(C)
    with pytest.raises(ValueError, match="share one"):
        m(torch.randn(1, C, 4, 4), torch.randn(1, C, 4, 5))


def test_unary_fusion_module_standalone() -> None:
    torch.manual_seed(18)
    fusion = UnaryFusion()
    u1, u2 = torch.softmax(torch.randn(3, 10), -1), torch.softmax(torch.randn(3, 10), -1)
    omega = fusion.weights(u1, u2)
    w, b = fusion.conv.weight[:, :, 0, 0], fusion.conv.bias
    logits = torch.einsum("oc,bcn->bon", w, torch.stack([u1, u2], 1)) + b[None, :, None]
    torch.testing.assert_close(omega, torch.softmax(logits, 1))
    torch.testing.assert_close(fusion(u1, u2), omega[:, 0] * u1 + omega[:, 1] * u2)


def test_context_is_public_type() -> None:
    out = _module(19, mode="pairwise")(*_features())
    assert isinstance(out.seg_context, AffinityContext) and out.seg_context.size == (6, 6)

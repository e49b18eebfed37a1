"""AuxSegNet / AuxSegNet+ network assembly and heads, on a tiny stride-8 stand-in backbone."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from wsss_lightning.models.affinity import AffinityContext
from wsss_lightning.models.auxsegnet import AuxSegNet, AuxSegNetOutput, AuxSegNetPlus
from wsss_lightning.models.heads import ClassificationHead, TaskBranch

MODES = ("none", "pairwise", "unary", "dual")
HEAD = 16


class TinyBackbone(nn.Module):
    """Three stride-2 convs: (B, 3, H, W) -> [stride 2, 4, 8] features, 32 channels at stride 8."""

    feature_channels = (8, 16, 32)
    feature_strides = (2, 4, 8)
    out_channels = 32

    def __init__(self) -> None:
        super().__init__()
        self.stages = nn.ModuleList(
            [nn.Conv2d(i, o, 3, stride=2, padding=1) for i, o in zip((3, 8, 16), self.feature_channels)]
        )

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = []
        for conv in self.stages:
            x = torch.relu(conv(x))
            feats.append(x)
        return feats


def _net(seed: int = 0, cls: type[AuxSegNet] = AuxSegNet, **kwargs: object) -> AuxSegNet:
    torch.manual_seed(seed)
    kwargs.setdefault("head_channels", HEAD)
    kwargs.setdefault("num_classes", 21)
    return cls(backbone=TinyBackbone(), **kwargs)


def _images(b: int = 2, size: int = 48, seed: int = 0) -> torch.Tensor:
    return torch.randn(b, 3, size, size, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------------------------------------------------------
# Heads.
# ---------------------------------------------------------------------------------------------------------------


def test_classification_head_logits_and_cam() -> None:
    torch.manual_seed(0)
    head = ClassificationHead(12, 5)
    assert head.fc8.bias is None and head.fc8.weight.shape == (5, 12, 1, 1)
    bound = math.sqrt(6.0 / (12 + 5))  # Xavier-uniform
    assert head.fc8.weight.abs().max() <= bound
    x = torch.randn(2, 12, 4, 3)
    w = head.fc8.weight[:, :, 0, 0]
    head.eval()
    torch.testing.assert_close(head(x), x.mean(dim=(2, 3)) @ w.T)
    torch.testing.assert_close(head.cam(x), torch.einsum("kc,bchw->bkhw", w, x))
    # GAP of the CAM equals the (dropout-free) logits: fc8 is linear without bias.
    torch.testing.assert_close(head.cam(x).mean(dim=(2, 3)), head(x))
    # Training mode: Dropout2d(0.5) before pooling (whole channels zeroed, survivors ×2).
    head.train()
    torch.manual_seed(5)
    got = head(x)
    torch.manual_seed(5)
    expected = F.dropout2d(x, 0.5, training=True).mean(dim=(2, 3)) @ w.T
    torch.testing.assert_close(got, expected)
    assert not torch.allclose(got, x.mean(dim=(2, 3)) @ w.T)
    # cam never uses dropout.
    torch.testing.assert_close(head.cam(x), torch.einsum("kc,bchw->bkhw", w, x))


def test_task_branch_layers_init_and_shapes() -> None:
    torch.manual_seed(1)
    branch = TaskBranch(32, 7, mid_channels=16, dilations=(6, 12, 18))
    for conv, d in ((branch.conv1, 6), (branch.conv2, 12), (branch.conv3, 18)):
        assert conv.kernel_size == (3, 3) and conv.dilation == (d, d) and conv.padding == (d, d)
        assert conv.bias is not None
        fan_in, fan_out = conv.in_channels * 9, conv.out_channels * 9
        assert conv.weight.abs().max() <= math.sqrt(6.0 / (fan_in + fan_out))
    assert branch.conv4.kernel_size == (1, 1) and branch.conv4.bias is None and branch.conv4.out_channels == 7
    x = torch.randn(2, 32, 5, 4)
    f = branch.encode(x)
    assert f.shape == (2, 16, 5, 4) and f.min() >= 0
    expected_f = torch.relu(branch.conv2(torch.relu(branch.conv1(x))))
    torch.testing.assert_close(f, expected_f)
    logits = branch.decode(f)
    torch.testing.assert_close(logits, F.conv2d(torch.relu(branch.conv3(f)), branch.conv4.weight))
    torch.testing.assert_close(branch(x), logits)
    with pytest.raises(ValueError, match="three dilations"):
        TaskBranch(4, 2, dilations=(6, 12))


# ---------------------------------------------------------------------------------------------------------------
# Network.
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("mode", "cross_task"), list(itertools.product(MODES, [True, False])))
def test_all_ablations_produce_documented_shapes(mode: str, cross_task: bool) -> None:
    net = _net(affinity=mode, cross_task=cross_task, num_classes=6)
    out = net(_images())
    assert isinstance(out, AuxSegNetOutput) and isinstance(out.affinity, AffinityContext)
    assert out.cls_logits.shape == (2, 5)
    assert out.cam.shape == (2, 5, 6, 6)
    assert out.sal_logits.shape == out.sal_refined.shape == (2, 1, 6, 6)
    assert out.seg_logits.shape == out.seg_refined.shape == (2, 6, 6, 6)
    assert out.affinity.size == (6, 6)
    a = out.affinity.matrix()
    assert a.shape == (2, 36, 36) and a.min() >= 0 and a.max() <= 1
    if mode == "none":
        assert torch.equal(out.seg_refined, out.seg_logits) and torch.equal(out.sal_refined, out.sal_logits)
        torch.testing.assert_close(a, torch.eye(36).expand(2, 36, 36))
    if mode in ("pairwise", "dual") and not cross_task:
        torch.testing.assert_close(a.sum(-1), torch.ones(2, 36))  # task-specific A_seg is row-stochastic


def test_auxsegnet_refined_outputs_are_a_ct_products() -> None:
    """AuxSegNet (pairwise, cross-task): R_seg = A_CT L_seg, R_sal = A_CT L_sal, CAM propagation = A_CT M."""
    net = _net(1).eval()
    with torch.no_grad():
        out = net(_images(seed=1))
    a = out.affinity.matrix().double()

    def apply(values: torch.Tensor) -> torch.Tensor:
        return torch.einsum("bij,bkj->bki", a, values.flatten(2).double()).view(values.shape)

    torch.testing.assert_close(out.seg_refined.double(), apply(out.seg_logits), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.sal_refined.double(), apply(out.sal_logits), rtol=1e-5, atol=1e-6)
    cam = torch.relu(out.cam)
    cam = cam / (cam.amax(dim=(2, 3), keepdim=True) + 1e-5)
    torch.testing.assert_close(out.affinity.propagate(cam).double(), apply(cam), rtol=1e-5, atol=1e-6)
    # The CAM is the raw fc8 map of the backbone feature.
    feats = net.backbone(_images(seed=1))[-1]
    torch.testing.assert_close(out.cam, net.classifier.cam(feats))


def test_auxsegnet_plus_dual_refinement_and_defaults() -> None:
    net = _net(2, cls=AuxSegNetPlus).eval()
    assert net.affinity.mode == "dual" and net.affinity.cross_task
    assert net.affinity.pairwise_fusion is not None and net.affinity.unary_fusion is not None
    with torch.no_grad():
        out = net(_images(seed=2))
    a, u = out.affinity.matrix().double(), out.affinity.unary.double()
    for logits, refined in ((out.seg_logits, out.seg_refined), (out.sal_logits, out.sal_refined)):
        flat = logits.flatten(2).double()
        expected = torch.einsum("bij,bkj->bki", a, flat) + torch.einsum("bj,bkj->bk", u, flat)[..., None]
        torch.testing.assert_close(refined.double(), expected.view(logits.shape), rtol=1e-5, atol=1e-6)
    # Propagation ignores the unary term.
    cam = torch.rand(2, 20, 6, 6)
    expected = torch.einsum("bij,bkj->bki", a, cam.flatten(2).double()).view(cam.shape)
    torch.testing.assert_close(out.affinity.propagate(cam).double(), expected, rtol=1e-5, atol=1e-6)


def test_network_chunked_inference_equals_full() -> None:
    full = _net(3, cls=AuxSegNetPlus, chunk_size=10**6).eval()
    chunked = _net(3, cls=AuxSegNetPlus, chunk_size=10).eval()  # 10 does not divide N = 5·7
    x = _images(b=1, size=56, seed=3)[:, :, :40, :]
    with torch.no_grad():
        a, b = full(x), chunked(x)
    assert b.affinity.is_chunked and not a.affinity.is_chunked
    for name in ("cls_logits", "cam", "sal_logits", "sal_refined", "seg_logits", "seg_refined"):
        torch.testing.assert_close(getattr(b, name), getattr(a, name), rtol=1e-5, atol=1e-5)
    cam = torch.rand(1, 20, 5, 7)
    torch.testing.assert_close(b.affinity.propagate(cam), a.affinity.propagate(cam), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(("mode", "cross_task"), list(itertools.product(MODES, [True, False])))
def test_gradients_reach_every_parameter(mode: str, cross_task: bool) -> None:
    net = _net(4, affinity=mode, cross_task=cross_task, num_classes=4).train()
    out = net(_images(seed=4))
    g = torch.Generator().manual_seed(1)
    tensors = (out.cls_logits, out.sal_logits, out.sal_refined, out.seg_logits, out.seg_refined)
    loss = sum((t * torch.randn(t.shape, generator=g)).sum() for t in tensors)
    loss.backward()
    for name, p in net.named_parameters():
        assert p.grad is not None, name
        assert p.grad.abs().sum() > 0, name


@pytest.mark.parametrize(("mode", "cross_task"), list(itertools.product(MODES, [True, False])))
def test_parameter_groups_cover_every_parameter_once_by_the_code_rule(mode: str, cross_task: bool) -> None:
    net = _net(5, affinity=mode, cross_task=cross_task, unary_fusion="conv")
    groups = net.parameter_groups()
    assert set(groups) == {"backbone", "classifier", "heads"}
    ids = [id(p) for ps in groups.values() for p in ps]
    assert len(ids) == len(set(ids)) == sum(1 for _ in net.parameters())
    assert {id(p) for p in groups["classifier"]} == {id(net.classifier.fc8.weight)}
    # The official rule (docs/method_notes.md §2.10): names containing seg / sal / fc8 get ×10, the rest ×1.
    heads = {id(p) for p in groups["heads"] + groups["classifier"]}
    for name, p in net.named_parameters():
        is_head = any(key in name for key in ("seg", "sal", "fc8"))
        assert (id(p) in heads) == is_head, name
    fusion_ids = {id(p) for m in (net.affinity.pairwise_fusion, net.affinity.unary_fusion) if m for p in m.parameters()}
    assert fusion_ids <= {id(p) for p in groups["backbone"]}
    assert bool(fusion_ids) == (cross_task and mode != "none")


def test_load_head_weights() -> None:
    net = _net(6)
    w = torch.randn(20, 32, 1, 1)
    net.load_head_weights({"module.fc8.weight": w, "module.conv1a.weight": torch.zeros(1)})
    torch.testing.assert_close(net.classifier.fc8.weight, w)
    net.load_head_weights({"fc8.weight": 2 * w})
    torch.testing.assert_close(net.classifier.fc8.weight, 2 * w)
    with pytest.raises(ValueError, match=r"\(20, 32, 1, 1\)"):
        net.load_head_weights({"fc8.weight": torch.randn(20, 4096, 1, 1)})
    with pytest.raises(KeyError, match="fc8.weight"):
        net.load_head_weights({"conv1a.weight": torch.zeros(1)})
    # Only the classifier changed: it is the single parameter shaped like fc8.
    assert net.classifier.fc8.weight.requires_grad


def test_invalid_num_classes() -> None:
    with pytest.raises(ValueError, match="num_classes"):
        _net(num_classes=1)

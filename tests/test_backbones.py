"""Backbones (ResNet-38 with PSA names, timm features_only) and checkpoint loading; offline, CPU, tiny inputs."""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import pytest
import timm
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from wsss_lightning.models import timm_backbone as timm_backbone_module
from wsss_lightning.models.checkpoint import (
    CheckpointError,
    LoadReport,
    load_into,
    load_state_dict_file,
    strip_prefixes,
)
from wsss_lightning.models.resnet38 import ResNet38
from wsss_lightning.models.timm_backbone import TimmBackbone

# Key names and shapes as defined by PSA's network/resnet38d.py (ResBlock / ResBlock_bot / Net).
PSA_KEY_SHAPES: dict[str, tuple[int, ...]] = {
    "conv1a.weight": (64, 3, 3, 3),
    "b2.bn_branch2a.weight": (64,),
    "b2.bn_branch2a.running_mean": (64,),
    "b2.conv_branch2a.weight": (128, 64, 3, 3),
    "b2.conv_branch2b1.weight": (128, 128, 3, 3),
    "b2.conv_branch1.weight": (128, 64, 1, 1),
    "b2_2.bn_branch2b1.running_var": (128,),
    "b3.conv_branch1.weight": (256, 128, 1, 1),
    "b4_5.conv_branch2b1.weight": (512, 512, 3, 3),
    "b5.conv_branch2a.weight": (512, 512, 3, 3),
    "b5.conv_branch2b1.weight": (1024, 512, 3, 3),
    "b5.conv_branch1.weight": (1024, 512, 1, 1),
    "b5_2.conv_branch2a.weight": (512, 1024, 3, 3),
    "b6.bn_branch2a.weight": (1024,),
    "b6.conv_branch2a.weight": (512, 1024, 1, 1),
    "b6.bn_branch2b1.running_mean": (512,),
    "b6.conv_branch2b1.weight": (1024, 512, 3, 3),
    "b6.bn_branch2b2.bias": (1024,),
    "b6.conv_branch2b2.weight": (2048, 1024, 1, 1),
    "b6.conv_branch1.weight": (2048, 1024, 1, 1),
    "b7.conv_branch2a.weight": (1024, 2048, 1, 1),
    "b7.conv_branch2b1.weight": (2048, 1024, 3, 3),
    "b7.conv_branch2b2.weight": (4096, 2048, 1, 1),
    "b7.conv_branch1.weight": (4096, 2048, 1, 1),
    "bn7.weight": (4096,),
    "bn7.bias": (4096,),
    "bn7.running_mean": (4096,),
    "bn7.running_var": (4096,),
}
PSA_BLOCKS = ["b2", "b2_1", "b2_2", "b3", "b3_1", "b3_2", "b4"] + [f"b4_{i}" for i in range(1, 6)]
PSA_BLOCKS += ["b5", "b5_1", "b5_2", "b6", "b7"]


@pytest.fixture(scope="module")
def resnet() -> ResNet38:
    torch.manual_seed(0)
    return ResNet38()


def meta_resnet(**kwargs: object) -> ResNet38:
    """A ResNet38 without storage: instant to build, enough for names, shapes and modes."""
    with torch.device("meta"):
        return ResNet38(**kwargs)


def scalar_state(model: nn.Module, skip: tuple[str, ...] = ("num_batches_tracked",)) -> dict[str, Tensor]:
    """A synthetic state dict with the model's names and shapes: key i holds the constant 0.001 * (i + 1).

    Stored as expanded 1-element tensors, so the saved file stays a few kB even for ResNet-38.
    """
    state = {}
    for i, (key, value) in enumerate(model.state_dict().items()):
        if not key.endswith(skip):
            state[key] = torch.tensor(0.001 * (i + 1)).expand(value.shape)
    return state


# --------------------------------------------------------------------------------------------- ResNet-38


def test_resnet38_small_forward_shapes(resnet: ResNet38) -> None:
    resnet.eval()
    with torch.no_grad():
        maps = resnet(torch.randn(1, 3, 33, 33))
    # 33 -> 17 (b2) -> 9 (b3) -> 5 (b4); 3x3 stride-2 convs with padding 1 give ceil(h / 2).
    assert [tuple(m.shape) for m in maps] == [(1, 256, 9, 9), (1, 512, 5, 5), (1, 1024, 5, 5), (1, 4096, 5, 5)]
    assert resnet.feature_channels == (256, 512, 1024, 4096)
    assert resnet.feature_strides == (4, 8, 8, 8)
    assert resnet.out_channels == resnet.feature_channels[-1] == 4096
    assert all(bool((m >= 0).all()) for m in maps)  # every map is after BN + ReLU


def test_resnet38_last_map_is_relu_bn7_of_b7(resnet: ResNet38) -> None:
    resnet.eval()
    x = torch.randn(1, 3, 17, 17)
    with torch.no_grad():
        maps = resnet(x)
        h = resnet.conv1a(x)
        for name in PSA_BLOCKS:
            h = getattr(resnet, name)(h)
        expected = F.relu(resnet.bn7(h))
    torch.testing.assert_close(maps[-1], expected)


@pytest.mark.parametrize(("output_stride", "sizes"), [(8, (81, 41, 41, 41)), (16, (81, 41, 21, 21))])
def test_resnet38_321_input_output_stride(output_stride: int, sizes: tuple[int, ...]) -> None:
    model = meta_resnet(output_stride=output_stride)
    maps = model(torch.empty(1, 3, 321, 321, device="meta"))  # shape propagation only, no arithmetic
    assert tuple(m.shape[-1] for m in maps) == sizes
    assert tuple(m.shape[-2] for m in maps) == sizes
    assert model.feature_strides == (4, 8, output_stride, output_stride)


def test_resnet38_rejects_other_output_strides() -> None:
    with pytest.raises(ValueError, match="output_stride 8 or 16"):
        meta_resnet(output_stride=32)


def test_resnet38_psa_key_names_and_shapes() -> None:
    model = meta_resnet()
    state = model.state_dict()
    for key, shape in PSA_KEY_SHAPES.items():
        assert key in state, key
        assert tuple(state[key].shape) == shape, key
    # The 1x1 shortcut exists only where the shape changes (PSA's same_shape rule).
    with_shortcut = {name for name in PSA_BLOCKS if f"{name}.conv_branch1.weight" in state}
    assert with_shortcut == {"b2", "b3", "b4", "b5", "b6", "b7"}
    assert {key.split(".")[0] for key in state} == {"conv1a", "bn7", *PSA_BLOCKS}
    assert not any(key.startswith("fc8") for key in state)


def test_resnet38_dilations_and_dropout_as_psa() -> None:
    model = meta_resnet()
    assert model.b5.conv_branch2a.dilation == (1, 1) and model.b5.conv_branch2b1.dilation == (2, 2)
    assert model.b5_1.conv_branch2a.dilation == (2, 2)
    assert model.b6.conv_branch2b1.dilation == (4, 4) and model.b7.conv_branch2b1.padding == (4, 4)
    assert model.b4.conv_branch2a.stride == (2, 2) and model.b5.conv_branch2a.stride == (1, 1)
    assert (model.b6.dropout_2b1.p, model.b6.dropout_2b2.p) == (0.3, 0.3)
    assert (model.b7.dropout_2b1.p, model.b7.dropout_2b2.p) == (0.5, 0.5)


def _batchnorms(model: nn.Module) -> list[nn.BatchNorm2d]:
    return [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]


def test_resnet38_frozen_bn_and_conv1a_survive_train() -> None:
    model = meta_resnet()
    for _ in range(2):  # train() after eval() after train(): Lightning's per-epoch pattern
        model.train()
        assert len(_batchnorms(model)) == 15 * 2 + 2 * 3 + 1  # 15 basic blocks, b6/b7 bottlenecks, bn7
        assert not any(bn.training for bn in _batchnorms(model))
        assert not any(p.requires_grad for bn in _batchnorms(model) for p in bn.parameters())
        assert not model.conv1a.weight.requires_grad
        assert model.b2.conv_branch2a.weight.requires_grad and model.b7.conv_branch2b2.weight.requires_grad
        assert model.b6.dropout_2b1.training and model.b7.dropout_2b2.training  # dropout stays active
        model.eval()
        assert not model.b6.dropout_2b1.training


def test_resnet38_no_freezing_when_disabled() -> None:
    model = meta_resnet(freeze_bn=False, freeze_conv1a=False).train()
    assert all(bn.training for bn in _batchnorms(model))
    assert all(p.requires_grad for p in model.parameters())


def test_resnet38_frozen_blocks_psa_classifier_recipe() -> None:
    model = meta_resnet(frozen_blocks=("b2", "b2_1", "b2_2")).train()
    assert not any(p.requires_grad for name in ("b2", "b2_1", "b2_2") for p in getattr(model, name).parameters())
    assert model.b3.conv_branch2a.weight.requires_grad
    with pytest.raises(ValueError, match="b9"):
        meta_resnet(frozen_blocks=("b9",))


class _TinySegModule(L.LightningModule):
    """ResNet-38 + a 1x1 head on the 4096-channel map; a multi-label loss on GAP, as PSA's classifier."""

    def __init__(self, backbone: ResNet38) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = nn.Conv2d(4096, 3, 1, bias=False)

    def training_step(self, batch: list[Tensor], batch_idx: int) -> Tensor:
        image, target = batch
        logits = self.head(self.backbone(image)[-1]).mean(dim=(2, 3))
        return F.multilabel_soft_margin_loss(logits, target)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD([p for p in self.parameters() if p.requires_grad], lr=0.1)


# Frozen BN is in eval mode on purpose, and two random images need no loader workers.
@pytest.mark.filterwarnings("ignore:Found .* module\\(s\\) in eval mode", "ignore:.*does not have many workers")
def test_resnet38_lightning_fit_keeps_frozen_weights(resnet: ResNet38) -> None:
    torch.manual_seed(0)
    module = _TinySegModule(copy.deepcopy(resnet))
    backbone = module.backbone
    frozen = {k: v.clone() for k, v in backbone.state_dict().items() if "bn" in k or k == "conv1a.weight"}
    trained = {k: backbone.state_dict()[k].clone() for k in ("b2.conv_branch2a.weight", "b7.conv_branch2b2.weight")}
    head_before = module.head.weight.detach().clone()
    data = TensorDataset(torch.randn(2, 3, 32, 32), torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]]))
    trainer = L.Trainer(
        max_steps=2,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, DataLoader(data, batch_size=1))
    assert trainer.global_step == 2
    after = backbone.state_dict()
    assert any(k.endswith("running_mean") for k in frozen) and any(k.endswith("bn7.weight") for k in frozen)
    for key, value in frozen.items():
        assert torch.equal(after[key], value), f"{key} changed during fit"
    for key, value in trained.items():
        assert not torch.equal(after[key], value), f"{key} did not train"
    assert not torch.equal(module.head.weight, head_before)


def test_resnet38_checkpoint_roundtrip_reports_fc8(resnet: ResNet38, tmp_path: Path) -> None:
    resnet = copy.deepcopy(resnet)  # keep the shared fixture's weights intact
    # A PSA classifier file: backbone + fc8, no num_batches_tracked (as PSA's MXNet conversion), saved
    # from DataParallel ("module.") inside a {"state_dict": ...} wrapper.
    state = scalar_state(resnet)
    fc8 = torch.randn(20, 4096, 1, 1)
    file = tmp_path / "psa_cls.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in {**state, "fc8.weight": fc8}.items()}}, file)

    report = resnet.load_checkpoint(file)
    assert report.missing == [] and report.shape_mismatch == []
    assert report.unexpected == ["fc8.weight"]
    torch.testing.assert_close(report.unexpected_state["fc8.weight"], fc8)
    assert len(report.loaded) == len(state)
    now = resnet.state_dict()
    for key in ("conv1a.weight", "b4_3.bn_branch2b1.running_var", "b7.conv_branch2b2.weight", "bn7.bias"):
        assert torch.equal(now[key], state[key]), key
    assert "0 missing, 1 unexpected" in report.summary()


@pytest.mark.filterwarnings("ignore:.*meta parameter:UserWarning")
def test_resnet38_constructor_loads_checkpoint(tmp_path: Path) -> None:
    model = meta_resnet()
    file = tmp_path / "w.pth"
    torch.save({k: torch.zeros(()).expand(v.shape) for k, v in model.state_dict().items()}, file)
    with torch.device("meta"):
        loaded = ResNet38(checkpoint_path=str(file))
    assert loaded.load_report is not None and loaded.load_report.complete
    assert not loaded.conv1a.weight.requires_grad  # freezing is applied after the load


def test_resnet38_wrong_file_raises(tmp_path: Path) -> None:
    file = tmp_path / "other.pth"
    torch.save({"layer1.0.conv1.weight": torch.zeros(64, 64, 3, 3), "fc.weight": torch.zeros(10, 512)}, file)
    with pytest.raises(CheckpointError, match="no ResNet38 weight matched"):
        meta_resnet().load_checkpoint(file)


@pytest.mark.filterwarnings("ignore:.*meta parameter:UserWarning")
def test_resnet38_partial_file_strict_and_not(resnet: ResNet38, tmp_path: Path) -> None:
    file = tmp_path / "partial.pth"
    torch.save({"conv1a.weight": torch.zeros(64, 3, 3, 3), "b2.conv_branch1.weight": torch.zeros(128, 64, 1, 1)}, file)
    before = resnet.conv1a.weight.detach().clone()
    with pytest.raises(CheckpointError, match="does not cover all ResNet38 weights"):
        resnet.load_checkpoint(file)
    assert torch.equal(resnet.conv1a.weight, before)  # a refused file changes nothing
    report = meta_resnet().load_checkpoint(file, strict=False)
    assert report.loaded == ["conv1a.weight", "b2.conv_branch1.weight"]
    assert "bn7.weight" in report.missing and not any(k.endswith("num_batches_tracked") for k in report.missing)


# --------------------------------------------------------------------------------------------- checkpoint.py


class _Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, bias=False)
        self.bn = nn.BatchNorm2d(4)


@dataclass
class _NotATensor:  # a pickled Python object that weights_only=True must refuse
    note: str = "hyper-parameters"


def _tiny_state() -> dict[str, Tensor]:
    torch.manual_seed(1)
    return {k: torch.randn_like(v.float()) for k, v in _Tiny().state_dict().items()}


@pytest.mark.parametrize(
    "wrap",
    [
        lambda s: s,
        lambda s: {"state_dict": s, "epoch": 3},
        lambda s: {"model": s},
        lambda s: {"state_dict": {f"module.{k}": v for k, v in s.items()}},
        lambda s: {"state_dict": {f"model.backbone.{k}": v for k, v in s.items()}, "best": torch.tensor(0.5)},
    ],
)
def test_load_state_dict_file_unwraps(tmp_path: Path, wrap) -> None:
    state = _tiny_state()
    torch.save(wrap(state), tmp_path / "w.pth")
    loaded = load_state_dict_file(tmp_path / "w.pth")
    assert loaded.keys() == state.keys()
    for key in state:
        torch.testing.assert_close(loaded[key], state[key])


def test_load_state_dict_file_safetensors(tmp_path: Path) -> None:
    state = _tiny_state()
    save_file({f"module.{k}": v for k, v in state.items()}, str(tmp_path / "w.safetensors"))
    loaded = load_state_dict_file(tmp_path / "w.safetensors")
    assert loaded.keys() == state.keys()
    torch.testing.assert_close(loaded["conv.weight"], state["conv.weight"])


def test_load_state_dict_file_refuses_pickle_unless_opted_out(tmp_path: Path) -> None:
    file = tmp_path / "lightning.ckpt"
    torch.save({"state_dict": _tiny_state(), "hyper_parameters": _NotATensor()}, file)
    with pytest.raises(CheckpointError, match="weights_only=False"):
        load_state_dict_file(file)
    assert load_state_dict_file(file, weights_only=False).keys() == _tiny_state().keys()


def test_load_state_dict_file_missing_and_corrupt(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        load_state_dict_file(tmp_path / "nope.pth")
    (tmp_path / "bad.params").write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="convert_mxnet_to_torch"):
        load_state_dict_file(tmp_path / "bad.params")
    torch.save({"epoch": 1, "note": "no tensors"}, tmp_path / "empty.pth")
    with pytest.raises(CheckpointError, match="does not contain a state dict"):
        load_state_dict_file(tmp_path / "empty.pth")


def test_strip_prefixes_collision_raises() -> None:
    assert strip_prefixes({"module.model.x": torch.zeros(1)}, ("module.", "model.")).keys() == {"x"}
    with pytest.raises(CheckpointError, match="collide"):
        strip_prefixes({"backbone.x": torch.zeros(1), "x": torch.ones(1)}, ("backbone.",))


def test_load_into_reports_every_category() -> None:
    module = _Tiny()
    before = module.conv.weight.detach().clone()
    state = {
        "conv.weight": torch.zeros(4, 3, 5, 5),  # wrong shape: reported, not loaded
        "bn.weight": torch.full((4,), 2.0),
        "bn.running_mean": torch.full((4,), 3.0),
        "fc8.weight": torch.ones(2, 4, 1, 1),
    }
    report = load_into(module, state, source="synthetic")
    assert report.loaded == ["bn.weight", "bn.running_mean"]
    assert report.missing == ["bn.bias", "bn.running_var"]  # num_batches_tracked is not listed
    assert report.unexpected == ["fc8.weight"] and torch.equal(
        report.unexpected_state["fc8.weight"], torch.ones(2, 4, 1, 1)
    )
    assert report.shape_mismatch == [("conv.weight", (4, 3, 5, 5), (4, 3, 3, 3))]
    assert torch.equal(module.conv.weight, before)
    assert torch.equal(module.bn.weight, torch.full((4,), 2.0))
    assert torch.equal(module.bn.running_mean, torch.full((4,), 3.0))
    assert not report.complete
    summary = report.summary()
    assert "loaded 2/5 module tensors from synthetic" in summary
    assert "2 missing, 1 unexpected, 1 shape mismatch" in summary
    assert "conv.weight (file [4, 3, 5, 5] vs model [4, 3, 3, 3])" in summary


def test_load_into_prefix_selects_submodule_keys() -> None:
    module = _Tiny()
    state = {"backbone.bn.bias": torch.full((4,), 7.0), "head.bias": torch.zeros(2)}
    report = load_into(module, state, prefix="backbone.")
    assert report.loaded == ["bn.bias"] and report.unexpected == ["head.bias"]
    assert torch.equal(module.bn.bias, torch.full((4,), 7.0))


def test_load_report_defaults_are_independent() -> None:
    a, b = LoadReport(), LoadReport()
    a.loaded.append("x")
    assert b.loaded == [] and b.complete


# --------------------------------------------------------------------------------------------- timm


@pytest.mark.parametrize(
    ("output_stride", "strides"), [(8, (2, 4, 8, 8, 8)), (16, (2, 4, 8, 16, 16)), (32, (2, 4, 8, 16, 32))]
)
def test_timm_backbone_channels_and_strides(output_stride: int, strides: tuple[int, ...]) -> None:
    backbone = TimmBackbone("test_resnet", output_stride=output_stride).eval()
    assert backbone.feature_channels == (32, 32, 48, 192, 96)  # timm's test_resnet stem + 4 stages
    assert backbone.feature_strides == strides
    assert backbone.out_channels == 96
    with torch.no_grad():
        maps = backbone(torch.randn(1, 3, 64, 64))
    assert [tuple(m.shape) for m in maps] == [
        (1, c, 64 // s, 64 // s) for c, s in zip(backbone.feature_channels, strides)
    ]


def test_timm_backbone_out_indices() -> None:
    backbone = TimmBackbone("test_resnet", output_stride=8, out_indices=(1, 4))
    assert backbone.feature_channels == (32, 96) and backbone.feature_strides == (4, 8)
    assert [m.shape[1] for m in backbone(torch.randn(1, 3, 32, 32))] == [32, 96]


def test_timm_backbone_without_dilation_support_raises_clearly() -> None:
    with pytest.raises(ValueError, match=r"'test_vit' cannot change its output stride.*resnet"):
        TimmBackbone("test_vit", output_stride=8)
    assert TimmBackbone("test_vit", output_stride=16).feature_strides[-1] == 16  # its native stride is fine


def test_timm_backbone_loads_local_timm_file(tmp_path: Path) -> None:
    torch.manual_seed(3)
    full = timm.create_model("test_resnet", pretrained=False)
    file = tmp_path / "test_resnet.pth"
    torch.save(full.state_dict(), file)
    backbone = TimmBackbone("test_resnet", checkpoint_path=str(file), output_stride=8)
    assert backbone.load_report is not None and backbone.load_report.complete
    assert set(backbone.load_report.unexpected) == {"fc.weight", "fc.bias"}
    reference = full.state_dict()
    for key, value in backbone.body.state_dict().items():
        assert torch.equal(value, reference[key]), key


def test_timm_backbone_renames_flattened_stages(tmp_path: Path) -> None:
    # convnext's FeatureListNet names "stages.0" as "stages_0"; a full-model file must still load.
    full = timm.create_model("test_convnext", pretrained=False)
    save_file(full.state_dict(), str(tmp_path / "model.safetensors"))
    backbone = TimmBackbone("test_convnext", checkpoint_path=str(tmp_path / "model.safetensors"), output_stride=16)
    assert backbone.load_report is not None and backbone.load_report.complete
    torch.testing.assert_close(backbone.body.stages_0.blocks[0].conv_dw.weight, full.stages[0].blocks[0].conv_dw.weight)
    # and the backbone's own state dict (as a network's "backbone.body." keys) loads too
    torch.save(
        {f"backbone.body.{k}": v for k, v in backbone.state_dict().items() if k.startswith("body.")},
        tmp_path / "own.pth",
    )
    assert backbone.load_checkpoint(tmp_path / "own.pth").complete


def test_timm_backbone_wrong_file_raises(tmp_path: Path) -> None:
    torch.save({"conv1a.weight": torch.zeros(64, 3, 3, 3)}, tmp_path / "r38.pth")
    with pytest.raises(CheckpointError, match=r"no TimmBackbone\('test_resnet'\) weight matched"):
        TimmBackbone("test_resnet", checkpoint_path=str(tmp_path / "r38.pth"))


def test_timm_backbone_never_downloads_with_checkpoint_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[bool] = []
    real_create = timm.create_model

    def spy(name: str, pretrained: bool = False, **kwargs: object) -> nn.Module:
        calls.append(pretrained)
        return real_create(name, pretrained=pretrained, **kwargs)

    monkeypatch.setattr(timm_backbone_module.timm, "create_model", spy)
    torch.save(real_create("test_resnet").state_dict(), tmp_path / "w.pth")
    TimmBackbone("test_resnet", pretrained=True, checkpoint_path=str(tmp_path / "w.pth"))
    TimmBackbone("test_resnet")
    assert calls == [False, False]


def test_timm_backbone_hub_failure_names_checkpoint_path(monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(name: str, pretrained: bool = False, **kwargs: object) -> nn.Module:
        raise OSError("We couldn't connect to the hub")

    monkeypatch.setattr(timm_backbone_module.timm, "create_model", offline)
    with pytest.raises(RuntimeError, match="checkpoint_path"):
        TimmBackbone("test_resnet", pretrained=True)


def test_timm_backbone_freeze_bn_survives_train() -> None:
    backbone = TimmBackbone("test_resnet", freeze_bn=True)
    batchnorms = [m for m in backbone.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert batchnorms
    for _ in range(2):
        backbone.train()
        assert not any(bn.training for bn in batchnorms)
        assert not any(p.requires_grad for bn in batchnorms for p in bn.parameters())
        assert all(m.weight.requires_grad for m in backbone.modules() if isinstance(m, nn.Conv2d))
        backbone.eval()
    assert all(bn.training for bn in _batchnorms(TimmBackbone("test_resnet").train()))


def test_timm_backbone_logs_load_report(caplog: pytest.LogCaptureFixture, tmp_path: Path) -> None:
    full = timm.create_model("test_resnet", pretrained=False)
    torch.save(full.state_dict(), tmp_path / "w.pth")
    with caplog.at_level(logging.INFO, logger="wsss_lightning.models.checkpoint"):
        TimmBackbone("test_resnet", checkpoint_path=str(tmp_path / "w.pth"))
    assert any("0 missing, 2 unexpected" in record.getMessage() for record in caplog.records)

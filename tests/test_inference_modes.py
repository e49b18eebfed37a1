"""Inference modes: parsing and the class gate (``modules/inference.py``), against hand-computed values."""

from __future__ import annotations

import pytest
import torch

from wsss_lightning.modules.inference import InferenceMode, gate_absent_classes


def test_modes_parse_their_parts_and_share_probabilities() -> None:
    mode = InferenceMode.parse("ms_flip_gate_crf")
    assert (mode.multiscale, mode.flip, mode.gate, mode.crf) == (True, True, True, True)
    assert mode.base == "ms_flip" and mode.probabilities_key == "ms_flip_gate"
    assert InferenceMode.parse("ss_crf").probabilities_key == "ss"
    assert InferenceMode.parse("ms_gate").label == "multi-scale + class gate"


@pytest.mark.parametrize("name", ["gate", "ss_ms", "ss_crf_crf", "ss_blur"])
def test_bad_modes_are_refused(name: str) -> None:
    with pytest.raises(ValueError, match="inference mode"):
        InferenceMode.parse(name)


def test_gate_removes_classes_below_the_threshold_and_keeps_background_and_the_top_class() -> None:
    probs = torch.full((2, 4, 1, 2), 0.25)  # background + 3 classes
    presence = torch.tensor([[0.9, 0.2, 0.6], [0.1, 0.3, 0.05]])
    gated = gate_absent_classes(probs, presence, threshold=0.5)
    # image 0 keeps classes 1 and 3 (>= 0.5); image 1 keeps none above it, so only its top class (2)
    assert gated[0, :, 0, 0].tolist() == [0.25, 0.25, 0.0, 0.25]
    assert gated[1, :, 0, 0].tolist() == [0.25, 0.0, 0.25, 0.0]
    assert torch.equal(gate_absent_classes(probs, presence, threshold=0.0), probs)


def test_gate_checks_its_shapes() -> None:
    with pytest.raises(ValueError, match="presence"):
        gate_absent_classes(torch.zeros(1, 4, 2, 2), torch.zeros(1, 4), 0.5)


def test_a_method_without_classifier_refuses_gated_modes_when_built() -> None:
    from example_method import CamSaliencyModule, CamSaliencyNet

    from wsss_lightning.models import TimmBackbone

    network = CamSaliencyNet(4, TimmBackbone("test_resnet", output_stride=8))
    assert not CamSaliencyModule.parts.classifier
    with pytest.raises(ValueError, match="no image-level classifier.*ms_gate"):
        CamSaliencyModule(network, num_classes=4, class_names=["bg", "a", "b", "c"], test_modes=["ss", "ms_gate"])


def test_class_gate_scores_each_image_without_the_padding_of_its_batch() -> None:
    from wsss_lightning.models import AuxSegNetPlus, TimmBackbone
    from wsss_lightning.modules import AuxSegNetModule

    torch.manual_seed(0)
    network = AuxSegNetPlus(4, TimmBackbone("test_resnet", output_stride=8), head_channels=8)
    module = AuxSegNetModule(network, num_classes=4, class_names=["bg", "a", "b", "c"], test_modes=["ss_gate"]).eval()
    images = torch.randn(2, 3, 48, 64)
    images[1, :, 32:, :] = 0.0  # the second image is 32 x 40, padded to the batch's 48 x 64
    images[1, :, :, 40:] = 0.0
    sizes = torch.tensor([[48, 64], [32, 40]])
    cache: dict = {}
    with torch.no_grad():
        labels = module.predict_labels(images, sizes, InferenceMode.parse("ss_gate"), cache)
        alone = module.class_presence(images[1:, :, :32, :40])
        padded = module.class_presence(images)
    assert [tuple(label.shape) for label in labels] == [(48, 64), (32, 40)]
    torch.testing.assert_close(cache["class_presence"][0], padded[0])  # unpadded image: the batched value
    torch.testing.assert_close(cache["class_presence"][1], alone[0])  # padded image: scored at its own size
    assert not torch.allclose(padded[1], alone[0], atol=1e-4), "the padding changes the pooled score"

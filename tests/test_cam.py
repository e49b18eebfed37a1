"""CAM normalisation and the PSA multi-scale + flip protocol (wsss_lightning/pseudo/cam.py)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from wsss_lightning.pseudo.cam import multiscale_cam, normalize_cam, upsample_cam

EPS = 1e-5


def test_normalize_cam_hand_example() -> None:
    cam = torch.tensor(
        [
            [
                [[-1.0, 2.0], [4.0, 0.0]],  # ReLU -> [[0, 2], [4, 0]], max 4
                [[-3.0, -1.0], [-2.0, -5.0]],  # all negative -> all zero, stays zero
                [[0.5, 0.25], [0.0, 0.5]],  # max 0.5
            ]
        ]
    )
    out = normalize_cam(cam)
    expected = torch.tensor(
        [
            [
                [[0.0, 2.0 / (4.0 + EPS)], [4.0 / (4.0 + EPS), 0.0]],
                [[0.0, 0.0], [0.0, 0.0]],
                [[0.5 / (0.5 + EPS), 0.25 / (0.5 + EPS)], [0.0, 0.5 / (0.5 + EPS)]],
            ]
        ]
    )
    torch.testing.assert_close(out, expected)
    assert out.max() < 1.0


def test_normalize_cam_is_per_image_and_per_channel() -> None:
    cam = torch.zeros(2, 1, 1, 2)
    cam[0, 0] = torch.tensor([1.0, 2.0])
    cam[1, 0] = torch.tensor([10.0, 5.0])
    out = normalize_cam(cam, eps=0.0)
    torch.testing.assert_close(out[:, 0, 0], torch.tensor([[0.5, 1.0], [1.0, 0.5]]))


def test_upsample_cam_identity_and_resize() -> None:
    cam = torch.arange(4.0).reshape(1, 1, 2, 2)
    assert upsample_cam(cam, (2, 2)) is cam
    up = upsample_cam(cam, (4, 4))
    torch.testing.assert_close(up, F.interpolate(cam, size=(4, 4), mode="bilinear", align_corners=False))


def _column_image(columns: list[float], height: int = 4) -> Tensor:
    """(1, 3, height, len(columns)) image whose every channel and row equals ``columns``."""
    row = torch.tensor(columns, dtype=torch.float64)
    return row.expand(1, 3, height, len(columns)).clone()


def _first_channel(x: Tensor) -> Tensor:
    # An "identity 1x1 conv": the CAM of class 0 is the image's first channel.
    return x[:, :1]


def test_multiscale_cam_hand_computed_sum() -> None:
    # Columns [0, 0, 4, 4]. Scale 0.5 (bilinear, align_corners=False) samples between pixel pairs -> [0, 4];
    # upsampling [0, 4] back to 4 columns gives [0, 1, 3, 4]. Scale 1.0 gives [0, 0, 4, 4].
    # Sum [0, 1, 7, 8] (x2 with the flip, which the identity CAM commutes with); max-normalised by 8.
    images = _column_image([0.0, 0.0, 4.0, 4.0])
    out = multiscale_cam(_first_channel, images, scales=(1.0, 0.5), flip=True)
    expected_row = torch.tensor([0.0, 2.0, 14.0, 16.0], dtype=torch.float64) / (16.0 + EPS)
    assert out.shape == (1, 1, 4, 4)
    assert out.dtype == torch.float64
    torch.testing.assert_close(out[0, 0], expected_row.expand(4, 4))

    no_flip = multiscale_cam(_first_channel, images, scales=(1.0, 0.5), flip=False)
    torch.testing.assert_close(
        no_flip[0, 0], (torch.tensor([0.0, 1.0, 7.0, 8.0], dtype=torch.float64) / (8 + EPS)).expand(4, 4)
    )


def test_multiscale_cam_relu_before_sum() -> None:
    # Scale 1 CAM is [-4, -4, 4, 4] -> ReLU [0, 0, 4, 4]; a sum before ReLU would cancel nothing here but would
    # leave negative values; the output must be the ReLU'd, normalised map.
    images = _column_image([-4.0, -4.0, 4.0, 4.0])
    out = multiscale_cam(_first_channel, images, scales=(1.0,), flip=False)
    torch.testing.assert_close(out[0, 0, 0], torch.tensor([0.0, 0.0, 4.0, 4.0], dtype=torch.float64) / (4 + EPS))


def test_multiscale_cam_undoes_the_flip() -> None:
    # A CAM that ignores the image and always fires on the left: identity pass gives the ramp [3, 2, 1, 0];
    # the flipped pass gives the same ramp, which flipped back is [0, 1, 2, 3]. Their sum is flat (3 everywhere).
    def left_ramp(x: Tensor) -> Tensor:
        width = x.shape[-1]
        ramp = torch.arange(width - 1, -1, -1, dtype=x.dtype)
        return ramp.expand(x.shape[0], 1, x.shape[-2], width)

    images = torch.zeros(1, 3, 2, 4)
    out = multiscale_cam(left_ramp, images, scales=(1.0,), flip=True)
    torch.testing.assert_close(out, torch.full((1, 1, 2, 4), 6.0 / (6.0 + EPS)))

    # An image-driven, asymmetric CAM: flipping the input and flipping the CAM back is a no-op.
    images = torch.rand(2, 3, 5, 7, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(
        multiscale_cam(_first_channel, images, scales=(1.0,), flip=True),
        multiscale_cam(_first_channel, images, scales=(1.0,), flip=False),
    )


def test_multiscale_cam_batches_flip_and_rounds_sizes() -> None:
    seen: list[tuple[int, ...]] = []

    def recording(x: Tensor) -> Tensor:
        seen.append(tuple(x.shape))
        return x[:, :2]

    images = torch.rand(2, 3, 4, 6)
    multiscale_cam(recording, images)  # default PSA scales (1.0, 0.5, 1.5, 2.0), flip on
    assert seen == [(4, 3, 4, 6), (4, 3, 2, 3), (4, 3, 6, 9), (4, 3, 8, 12)]


def _reference_multiscale(cam_fn, images: Tensor, scales, labels: Tensor) -> Tensor:
    """Independent re-implementation: one image, one scale, one flip at a time (PSA's loop)."""
    out = []
    for b in range(images.shape[0]):
        img = images[b : b + 1]
        height, width = img.shape[-2:]
        total = 0
        for s in scales:
            x = F.interpolate(img, size=(round(height * s), round(width * s)), mode="bilinear", align_corners=False)
            for flipped in (False, True):
                xi = torch.flip(x, dims=[3]) if flipped else x
                cam = F.interpolate(torch.relu(cam_fn(xi)), size=(height, width), mode="bilinear", align_corners=False)
                total = total + (torch.flip(cam, dims=[3]) if flipped else cam)
        total = total * labels[b].view(1, -1, 1, 1)
        peak = total.flatten(2).max(dim=2).values.view(1, -1, 1, 1)
        out.append(total / (peak + EPS))
    return torch.cat(out)


def test_multiscale_cam_matches_reference_with_labels() -> None:
    gen = torch.Generator().manual_seed(1)
    conv = torch.nn.Conv2d(3, 4, kernel_size=3, stride=2, padding=1)
    with torch.no_grad():
        conv.weight.copy_(torch.randn(conv.weight.shape, generator=gen))
        conv.bias.zero_()
    images = torch.randn(2, 3, 12, 10, generator=gen)
    labels = torch.tensor([[1.0, 0.0, 1.0, 0.0], [0.0, 1.0, 1.0, 1.0]])
    with torch.no_grad():
        out = multiscale_cam(conv, images, scales=(1.0, 0.5, 1.5), labels=labels)
        ref = _reference_multiscale(conv, images, (1.0, 0.5, 1.5), labels)
    torch.testing.assert_close(out, ref)
    assert torch.all(out[0, 1] == 0) and torch.all(out[0, 3] == 0) and torch.all(out[1, 0] == 0)
    assert out.min() >= 0 and out.max() < 1


def test_multiscale_cam_rejects_bad_labels() -> None:
    with pytest.raises(ValueError, match="labels"):
        multiscale_cam(_first_channel, torch.zeros(1, 3, 4, 4), scales=(1.0,), labels=torch.ones(1, 2))

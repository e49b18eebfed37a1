"""Torch dense CRF (wsss_lightning/pseudo/crf_torch.py) against pydensecrf, a brute-force kernel and bad inputs."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from wsss_lightning.pseudo.crf import CRF_PRESETS, CRFParams, dense_crf, saliency_crf, saliency_unary
from wsss_lightning.pseudo.crf_torch import (
    PermutohedralLattice,
    TorchDenseCRF,
    dense_crf_torch,
    dense_crf_torch_batch,
    saliency_crf_torch,
    saliency_unary_torch,
)

pytest.importorskip("pydensecrf.densecrf")
ndimage = pytest.importorskip("scipy.ndimage")

#: The presets the pipeline runs, and the acceptance rule: >= 99 % equal labels (in practice all, |dQ| ~ 1e-8).
PRESETS = ("auxseg_saliency", "auxseg_inference", "ssnet")
MIN_AGREEMENT = 0.99
MAX_MEAN_ABS_DIFF = 1e-4


@pytest.fixture(autouse=True)
def _one_torch_thread() -> Iterator[None]:
    # Small tensors: on a busy machine, waking a second intra-op thread costs ~1 ms per op (seconds per test).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _soft_probs(label: np.ndarray, num_labels: int, sigma: float, seed: int) -> np.ndarray:
    """Blurred one-hot of an (H, W) label map plus logit noise -> float32 (C, H, W) probabilities."""
    rng = np.random.default_rng(seed)
    onehot = (np.arange(num_labels)[:, None, None] == label[None]).astype(np.float32)
    blurred = np.stack([ndimage.gaussian_filter(channel, sigma) for channel in onehot])
    logits = 4.0 * blurred + 0.8 * rng.normal(size=blurred.shape)
    exp = np.exp(logits - logits.max(0))
    return (exp / exp.sum(0)).astype(np.float32)


def _photo_case(name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A scikit-image photograph (top-left 240 x 320, for speed), 4-label probabilities from coarse luminance blocks
    and a soft saliency map."""
    skdata = pytest.importorskip("skimage.data")
    image = np.ascontiguousarray(getattr(skdata, name)()[:240, :320, :3])
    height, width = image.shape[:2]
    block = 24
    grey = image.astype(np.float32).mean(2)
    pad = grey[: height // block * block, : width // block * block]
    means = pad.reshape(height // block, block, width // block, block).mean((1, 3))
    coarse = np.digitize(means, np.quantile(means, [0.25, 0.5, 0.75]))
    label = np.kron(coarse, np.ones((block, block), np.int64))
    label = np.pad(label, ((0, height - label.shape[0]), (0, width - label.shape[1])), mode="edge")
    rng = np.random.default_rng(7)
    foreground = ndimage.gaussian_filter((label == 3).astype(np.float32), 8)
    saliency = np.clip(foreground + rng.normal(0, 0.15, foreground.shape), 0, 1).astype(np.float32)
    return image, _soft_probs(label, 4, 6.0, seed=3), saliency


def _demo_cases(root: Path, count: int = 3) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(image, 21-class probabilities from the label PNG, the demo's off-the-shelf saliency) of demo images."""
    from PIL import Image

    from wsss_lightning.data.demo import SALIENCY_DIR, VOC_DIR

    voc = root / VOC_DIR
    cases = []
    for path in sorted((voc / "SegmentationClassAug").glob("*.png"))[:count]:
        image = np.array(Image.open(voc / "JPEGImages" / f"{path.stem}.jpg").convert("RGB"))
        label = np.array(Image.open(path)).astype(np.int64)
        label[label == 255] = 0
        saliency = np.array(Image.open(voc / SALIENCY_DIR / path.name)).astype(np.float32) / 255.0
        cases.append((image, _soft_probs(label, 21, 2.0, seed=len(cases)), saliency))
    return cases


def _assert_agrees(preset: str, image: np.ndarray, probs: np.ndarray, saliency: np.ndarray) -> None:
    if preset == "auxseg_saliency":
        expected, got = saliency_crf(image, saliency), saliency_crf_torch(image, saliency)
        equal = ((expected > 0.5) == (got > 0.5)).mean()
    else:
        expected, got = dense_crf(image, probs, preset), dense_crf_torch(image, probs, preset)
        equal = (expected.argmax(0) == got.argmax(0)).mean()
    assert got.shape == expected.shape and got.dtype == np.float32
    mean_abs = np.abs(expected - got).mean()
    assert equal >= MIN_AGREEMENT and mean_abs < MAX_MEAN_ABS_DIFF, (preset, equal, mean_abs)


@pytest.mark.parametrize("preset", PRESETS)
def test_agrees_with_pydensecrf_on_demo_images(preset: str, tiny_demo: Path) -> None:
    cases = _demo_cases(tiny_demo)
    assert cases, "the demo dataset has no labelled images"
    for image, probs, saliency in cases:
        _assert_agrees(preset, image, probs, saliency)


@pytest.mark.parametrize("name", ["coffee", "astronaut", "chelsea"])
@pytest.mark.parametrize("preset", PRESETS)
def test_agrees_with_pydensecrf_on_photographs(preset: str, name: str) -> None:
    _assert_agrees(preset, *_photo_case(name))


def test_all_presets_match_pydensecrf_closely() -> None:
    # 23 x 31 = 713 pixels, not a multiple of 4: densecrf's SSE padding points are in its lattice (and in ours).
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (23, 31, 3), dtype=np.uint8)
    probs = rng.dirichlet(np.ones(5), size=(23, 31)).transpose(2, 0, 1).astype(np.float32)
    for name in CRF_PRESETS:
        np.testing.assert_allclose(dense_crf_torch(image, probs, name), dense_crf(image, probs, name), atol=1e-4)


def test_marginals_are_distributions() -> None:
    image, probs, _ = _photo_case("chelsea")
    q = dense_crf_torch(image[:120, :160], probs[:, :120, :160], "auxseg_inference")
    assert q.min() >= 0.0 and q.max() <= 1.0
    np.testing.assert_allclose(q.sum(0), 1.0, atol=1e-5)


def test_zero_iterations_is_softmax_of_minus_unary() -> None:
    rng = np.random.default_rng(1)
    image = torch.from_numpy(rng.integers(0, 256, (9, 11, 3), dtype=np.uint8))
    unary = torch.from_numpy(rng.normal(0, 3, (4, 9, 11)).astype(np.float32))
    crf = TorchDenseCRF(image, dataclasses.replace(CRF_PRESETS["psa"], iterations=0))
    torch.testing.assert_close(crf.inference(unary), torch.softmax(-unary, 0))
    # through the probabilities, a zero is clipped to 1e-5 before -log (as pydensecrf's unary_from_softmax)
    probs = torch.softmax(-unary, 0)
    probs[:, 0, 0] = torch.tensor([0.0, 0.25, 0.25, 0.5])
    clipped = probs.clamp(1e-5, 1.0)
    q = dense_crf_torch(image, probs, dataclasses.replace(CRF_PRESETS["psa"], iterations=0))
    torch.testing.assert_close(q, clipped / clipped.sum(0))


def _brute_force_message(q: np.ndarray, height: int, width: int, sxy: float) -> np.ndarray:
    """Exact symmetric-normalised Gaussian message ``n K n q`` with ``K_ij = exp(-|p_i - p_j|^2 / (2 sxy^2))``."""
    ys, xs = np.mgrid[:height, :width]
    positions = np.stack([xs.ravel(), ys.ravel()], 1) / sxy
    kernel = np.exp(-0.5 * ((positions[:, None] - positions[None]) ** 2).sum(-1))  # (N, N): tiny images only
    norm = 1.0 / np.sqrt(kernel.sum(1))
    return norm[:, None] * (kernel @ (norm[:, None] * q))


@pytest.mark.parametrize("sxy", [1.5, 3.0])
def test_uniform_image_bilateral_is_the_spatial_gaussian(sxy: float) -> None:
    height, width = 12, 10
    image = torch.full((height, width, 3), 120, dtype=torch.uint8)
    crf = TorchDenseCRF(image, CRFParams(sxy, 1, sxy, 5, 1, 1))
    q = torch.softmax(torch.from_numpy(np.random.default_rng(0).normal(0, 2, (height * width, 3))).float(), 1)
    gaussian, bilateral = (kernel.message(q).numpy() for kernel in crf.kernels)

    def errors(message: np.ndarray, scale: float) -> tuple[float, float]:
        ref = _brute_force_message(q.numpy(), height, width, sxy * scale)
        return np.abs(message - ref).mean() / np.abs(ref).mean(), np.abs(message - ref).max() / np.abs(ref).max()

    for message, mean_tol in ((gaussian, 0.03), (bilateral, 0.05)):
        mean_err, max_err = errors(message, 1.0)
        # The permutohedral lattice is an approximation (a few % here), but of this Gaussian and not a wider or
        # narrower one.
        assert mean_err < mean_tol and max_err < 0.1, (mean_err, max_err)
        assert max_err < min(errors(message, 0.7)[1], errors(message, 1.4)[1])


def test_lattice_filter_of_ones_is_the_kernel_mass() -> None:
    # With an all-ones input each output is the (approximate) kernel mass around the point: about equal in the
    # interior of a regular grid (the lattice is not exactly shift-invariant), smaller at the border.
    ys, xs = torch.meshgrid(torch.arange(20.0), torch.arange(20.0), indexing="ij")
    lattice = PermutohedralLattice(torch.stack([xs.ravel(), ys.ravel()], 1) / 3.0)
    mass = lattice.filter(torch.ones(400, 1)).reshape(20, 20)
    assert lattice.num_vertices <= 3 * 400
    interior = mass[6:14, 6:14]
    assert interior.max() / interior.min() < 1.1
    assert mass[0, 0] < 0.7 * interior.min() and mass[-1, -1] < 0.7 * interior.min()


def test_numpy_and_tensor_io() -> None:
    rng = np.random.default_rng(2)
    image = rng.integers(0, 256, (14, 18, 3), dtype=np.uint8)
    probs = rng.dirichlet(np.ones(3), size=(14, 18)).transpose(2, 0, 1).astype(np.float32)
    as_numpy = dense_crf_torch(image, probs, "psa")
    assert isinstance(as_numpy, np.ndarray) and as_numpy.dtype == np.float32 and as_numpy.shape == (3, 14, 18)
    # tensors in (also a channels-first image and float64 probabilities) -> float32 tensor on the same device
    as_tensor = dense_crf_torch(torch.from_numpy(image).permute(2, 0, 1), torch.from_numpy(probs).double(), "psa")
    assert isinstance(as_tensor, torch.Tensor) and as_tensor.dtype == torch.float32 and as_tensor.device.type == "cpu"
    np.testing.assert_allclose(as_tensor.numpy(), as_numpy, atol=1e-6)
    sal = saliency_crf_torch(image, probs[0])
    assert isinstance(sal, np.ndarray) and sal.shape == (14, 18) and sal.dtype == np.float32
    np.testing.assert_allclose(saliency_crf_torch(torch.from_numpy(image), torch.from_numpy(probs[0])).numpy(), sal)


def test_saliency_unary_matches_numpy() -> None:
    sal = np.random.default_rng(3).uniform(0, 1, (6, 7))
    sal[0, :2] = [0.0, 1.0]
    np.testing.assert_allclose(saliency_unary_torch(torch.from_numpy(sal)).numpy(), saliency_unary(sal), rtol=1e-6)


def test_batch_equals_one_by_one() -> None:
    rng = np.random.default_rng(4)
    images = [rng.integers(0, 256, shape, dtype=np.uint8) for shape in [(16, 20, 3), (9, 13, 3), (21, 7, 3)]]
    probs = [rng.dirichlet(np.ones(4), size=i.shape[:2]).transpose(2, 0, 1).astype(np.float32) for i in images]
    batched = dense_crf_torch_batch(images, probs, "auxseg_inference")
    for image, p, q in zip(images, probs, batched, strict=True):
        np.testing.assert_allclose(q, dense_crf_torch(image, p, "auxseg_inference"), atol=1e-5)
    assert dense_crf_torch_batch([], [], "psa") == []


def test_bad_inputs_raise_value_errors() -> None:
    rng = np.random.default_rng(5)
    image = rng.integers(0, 256, (8, 10, 3), dtype=np.uint8)
    probs = rng.dirichlet(np.ones(2), size=(8, 10)).transpose(2, 0, 1).astype(np.float32)
    with pytest.raises(ValueError, match="uint8"):
        dense_crf_torch(image.astype(np.float32), probs, "psa")
    with pytest.raises(ValueError, match=r"probs must be \(C, H, W\)"):
        dense_crf_torch(image, probs[0], "psa")
    with pytest.raises(ValueError, match="float"):
        dense_crf_torch(image, (probs > 0.5).astype(np.int64), "psa")
    with pytest.raises(ValueError, match=r"\(H, W\) = \(8, 9\)"):
        dense_crf_torch(image, probs[:, :, :9], "psa")
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        dense_crf_torch(image[..., :2], probs, "psa")
    with pytest.raises(ValueError, match="at least one pixel"):
        dense_crf_torch(image[:0], probs[:, :0], "psa")
    with pytest.raises(ValueError, match="unknown CRF preset"):
        dense_crf_torch(image, probs, "deeplab")
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        saliency_crf_torch(image, probs[0] * 255)
    with pytest.raises(ValueError, match=r"saliency must be \(H, W\)"):
        saliency_crf_torch(image, probs)
    with pytest.raises(ValueError, match="unary must be"):
        TorchDenseCRF(torch.from_numpy(image), "psa").inference(torch.zeros(2, 8, 9))
    with pytest.raises(ValueError, match="2 probability maps"):
        dense_crf_torch_batch([image], [probs, probs], "psa")
    with pytest.raises(ValueError, match="same number of labels"):
        dense_crf_torch_batch([image, image], [probs, np.concatenate([probs, probs])], "psa")
    with pytest.raises(ValueError, match=r"features must be \(N, d\)"):
        PermutohedralLattice(torch.zeros(5))
    with pytest.raises(TypeError, match="numpy"):
        dense_crf_torch(image.tolist(), probs, "psa")  # type: ignore[arg-type]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu() -> None:
    image, probs, saliency = _photo_case("astronaut")
    for preset in ("auxseg_inference", "ssnet"):
        cpu = dense_crf_torch(image, probs, preset)
        gpu = dense_crf_torch(torch.from_numpy(image).cuda(), torch.from_numpy(probs).cuda(), preset)
        assert gpu.device.type == "cuda"
        gpu_np = gpu.cpu().numpy()
        assert (gpu_np.argmax(0) == cpu.argmax(0)).mean() >= 0.999 and np.abs(gpu_np - cpu).mean() < 1e-5
    sal_gpu = saliency_crf_torch(image, saliency, device="cuda")
    assert isinstance(sal_gpu, np.ndarray)
    np.testing.assert_allclose(sal_gpu, saliency_crf_torch(image, saliency), atol=1e-4)
    batched = dense_crf_torch_batch([image, image[:100, :150]], [probs, probs[:, :100, :150]], "ssnet", device="cuda")
    np.testing.assert_allclose(batched[1], dense_crf_torch(image[:100, :150], probs[:, :100, :150], "ssnet"), atol=1e-4)


def test_multiscale_flip_crf_inference_agrees_between_backends(tiny_demo: Path) -> None:
    """The whole ``ms_flip_crf`` path of ``wsss test`` (5 scales x flip, max-fused, renormalised, the inference CRF
    at each image's size) gives >= 99 % equal labels with the torch CRF and with pydensecrf on demo images.

    The segmentation network is replaced by a fixed "colour classifier" (random 1x1 weights on RGB, pooled to stride
    8), so the probabilities follow the image's regions and change with scale and flip as a network's do."""
    from PIL import Image

    from wsss_lightning.data.demo import VOC_DIR
    from wsss_lightning.models import AuxSegNetPlus, TimmBackbone
    from wsss_lightning.models.resnet38 import IMAGENET_MEAN, IMAGENET_STD
    from wsss_lightning.modules import AuxSegNetModule
    from wsss_lightning.modules.inference import InferenceMode
    from wsss_lightning.pseudo.dense_crf import PydenseCRF, TorchCRF

    weight = torch.randn(21, 3, generator=torch.Generator().manual_seed(0)) * 3.0

    def colour_logits(images: torch.Tensor) -> torch.Tensor:
        logits = torch.einsum("kc,bchw->bkhw", weight, images)
        return torch.nn.functional.avg_pool2d(logits, 8, ceil_mode=True)

    network = AuxSegNetPlus(21, TimmBackbone("test_resnet", output_stride=8), head_channels=8)
    modules = {crf: AuxSegNetModule(network, crf=crf()).eval() for crf in (PydenseCRF, TorchCRF)}
    for module in modules.values():
        module.segmentation_logits = colour_logits  # type: ignore[method-assign]
    mean, std = torch.tensor(IMAGENET_MEAN)[:, None, None], torch.tensor(IMAGENET_STD)[:, None, None]
    paths = sorted((tiny_demo / VOC_DIR / "JPEGImages").glob("*.jpg"))[:3]
    changed = 0
    for path in paths:
        raw = torch.from_numpy(np.array(Image.open(path).convert("RGB"))).permute(2, 0, 1).float() / 255.0
        image = ((raw - mean) / std)[None]
        sizes = torch.tensor([list(image.shape[-2:])])
        with torch.no_grad():
            labels = {
                crf: module.predict_labels(image, sizes, InferenceMode.parse("ms_flip_crf"))[0]
                for crf, module in modules.items()
            }
            plain = modules[PydenseCRF].predict_labels(image, sizes, InferenceMode.parse("ms_flip"))[0]
        equal = (labels[PydenseCRF] == labels[TorchCRF]).float().mean().item()
        assert equal >= MIN_AGREEMENT, (path.name, equal)
        changed += int((labels[PydenseCRF] != plain).sum())
    assert changed > 0, "the CRF changed no label: the comparison would be vacuous"


# ------------------------------------------------------------------------------------------------ batched device CRF


def _sized_cases(shapes: list[tuple[int, int]], labels: int, seed: int) -> tuple[list, list, list]:
    rng = np.random.default_rng(seed)
    images = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in shapes]
    probs = [rng.dirichlet(np.ones(labels), size=(h, w)).transpose(2, 0, 1).astype(np.float32) for h, w in shapes]
    saliencies = [rng.uniform(0, 1, (h, w)).astype(np.float32) for h, w in shapes]
    return images, probs, saliencies


@pytest.mark.parametrize("backend", ["pydensecrf", "torch", "torch-loop"])
def test_batched_crf_methods_equal_the_one_image_calls(backend: str) -> None:
    """``refine_inference_batch`` / ``refine_saliency_batch`` (one lattice per kernel for TorchCRF with
    ``batch_images``, a loop otherwise) give each image's own result, whatever the sizes in the batch (two images
    share a size: their spatial lattice is filtered once, as channels)."""
    from wsss_lightning.pseudo.dense_crf import PydenseCRF, TorchCRF

    crfs = {"pydensecrf": PydenseCRF(), "torch": TorchCRF(batch_images=True), "torch-loop": TorchCRF()}
    crf = crfs[backend]
    images, probs, saliencies = _sized_cases([(23, 31), (17, 12), (23, 31), (30, 30)], labels=5, seed=11)
    if backend != "pydensecrf":
        images = [torch.from_numpy(i) for i in images]
        probs = [torch.from_numpy(p) for p in probs]
        saliencies = [torch.from_numpy(s) for s in saliencies]
    batched = crf.refine_inference_batch(images, probs)
    for image, p, q in zip(images, probs, batched, strict=True):
        np.testing.assert_allclose(np.asarray(q), np.asarray(crf.refine_inference(image, p)), atol=1e-5)
        assert np.asarray(q).shape == tuple(p.shape)
    batched_sal = crf.refine_saliency_batch(images, saliencies)
    for image, s, q in zip(images, saliencies, batched_sal, strict=True):
        np.testing.assert_allclose(np.asarray(q), np.asarray(crf.refine_saliency(image, s)), atol=1e-5)
        assert np.asarray(q).shape == tuple(s.shape)
    assert crf.refine_inference_batch([], []) == [] and crf.refine_saliency_batch([], []) == []
    with pytest.raises(ValueError, match="2 images but 1 saliency maps"):
        crf.refine_saliency_batch(images[:2], saliencies[:1])
    with pytest.raises(ValueError, match="1 images but 2 probability maps"):
        crf.refine_inference_batch(images[:1], probs[:2])


def test_torch_crf_without_a_saliency_preset_returns_the_maps() -> None:
    from wsss_lightning.pseudo.dense_crf import TorchCRF

    images, _, saliencies = _sized_cases([(8, 9), (5, 6)], labels=2, seed=12)
    maps = [torch.from_numpy(s) for s in saliencies]
    out = TorchCRF(saliency=None).refine_saliency_batch([torch.from_numpy(i) for i in images], maps)
    assert all(a is b for a, b in zip(out, maps, strict=True))


def test_crf_refine_of_a_padded_batch_equals_one_image_at_a_time() -> None:
    """``crf_refine`` (the ``*_crf`` modes) on a padded batch of two sizes: the torch CRF's one-lattice batch (what
    it runs on CUDA) gives the labels of the one-image calls, and agrees with pydensecrf."""
    from wsss_lightning.models.resnet38 import IMAGENET_MEAN, IMAGENET_STD
    from wsss_lightning.modules.inference import crf_refine
    from wsss_lightning.pseudo.dense_crf import PydenseCRF, TorchCRF

    generator = torch.Generator().manual_seed(13)
    raw = torch.randint(0, 256, (2, 3, 40, 52), generator=generator).float() / 255.0
    raw = torch.nn.functional.interpolate(torch.nn.functional.avg_pool2d(raw, 4), size=(40, 52), mode="nearest")
    mean, std = torch.tensor(IMAGENET_MEAN)[:, None, None], torch.tensor(IMAGENET_STD)[:, None, None]
    images = (raw - mean) / std
    probs = torch.softmax(3.0 * torch.randn(2, 6, 40, 52, generator=generator), dim=1)
    sizes = torch.tensor([[40, 52], [29, 37]])  # the second image is padded
    batched = crf_refine(images, probs, sizes, TorchCRF(batch_images=True))
    one_by_one = [crf_refine(images[i : i + 1], probs[i : i + 1], sizes[i : i + 1], TorchCRF())[0] for i in range(2)]
    reference = crf_refine(images, probs, sizes, PydenseCRF())
    for got, single, ref, (h, w) in zip(batched, one_by_one, reference, sizes.tolist(), strict=True):
        assert got.shape == (h, w) and got.dtype == torch.uint8
        assert torch.equal(got, single)
        assert (got == ref).float().mean().item() >= MIN_AGREEMENT
    unrefined = [p[:, :h, :w].argmax(0).to(torch.uint8) for p, (h, w) in zip(probs, sizes.tolist(), strict=True)]
    assert any(not torch.equal(a, b) for a, b in zip(batched, unrefined, strict=True)), "the CRF changed nothing"


def test_torch_crf_batches_on_cuda_by_default_and_as_told_otherwise() -> None:
    from types import SimpleNamespace

    from wsss_lightning.pseudo.dense_crf import TorchCRF

    on_cuda = SimpleNamespace(device=torch.device("cuda"))  # no GPU needed: only the device type is read
    assert TorchCRF()._batches(on_cuda) and not TorchCRF()._batches(torch.zeros(1))
    assert not TorchCRF(batch_images=False)._batches(on_cuda) and TorchCRF(batch_images=True)._batches(torch.zeros(1))

"""MXNet ``.params`` reader and ResNet-38 name mapping; PSA ``.pth`` files. Offline, CPU, no mxnet.

The files are written here by an independent writer that follows MXNet's ``NDArray::Save`` (list header 0x112,
V1/V2/V3 array magics or the legacy shape-first layout, context, type flag, raw data, then the names).
"""

from __future__ import annotations

import logging
import re
import struct
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pytest
import torch
from torch import Tensor

from wsss_lightning.models.auxsegnet import AuxSegNet
from wsss_lightning.models.checkpoint import CheckpointError
from wsss_lightning.models.mxnet_params import (
    is_mxnet_params,
    mxnet_to_resnet38_name,
    read_mxnet_params,
    resnet38_state_from_mxnet,
)
from wsss_lightning.models.resnet38 import ResNet38

PARAMS_NAME = "ilsvrc-cls_rna-a1_cls1000_ep-0001.params"
_TYPE_FLAGS = {"float32": 0, "float64": 1, "float16": 2, "uint8": 3, "int32": 4, "int8": 5, "int64": 6}


# ------------------------------------------------------------------------------------------------ the writer


def _write_array(handle: BinaryIO, array: np.ndarray, fmt: str, type_flag: int | None = None) -> None:
    """One NDArray as ``NDArray::Save`` writes it: ``fmt`` is "v1", "v2", "v3" or "legacy" (pre-0.11)."""
    shape = array.shape
    if fmt in ("v2", "v3"):
        handle.write(struct.pack("<Ii", 0xF993FAC9 if fmt == "v2" else 0xF993FACA, 0))  # magic, dense storage
    if fmt == "v1":
        handle.write(struct.pack("<I", 0xF993FAC8))
    if fmt == "legacy":
        handle.write(struct.pack(f"<I{len(shape)}I", len(shape), *shape))  # uint32 ndim + uint32 dims
    else:
        handle.write(struct.pack(f"<i{len(shape)}q", len(shape), *shape))  # int32 ndim + int64 dims
    if fmt != "v3" and not shape:
        return  # ndim 0 is a "none" array: nothing follows
    handle.write(struct.pack("<iii", 1, 0, _TYPE_FLAGS[array.dtype.name] if type_flag is None else type_flag))
    handle.write(np.ascontiguousarray(array).astype(array.dtype.newbyteorder("<")).tobytes())


def _write_mxnet_params(
    path: Path,
    arrays: dict[str, np.ndarray],
    fmt: str = "v2",
    named: bool = True,
    type_flags: dict[str, int] | None = None,
) -> Path:
    """An ``mx.nd.save`` file: uint64 magic 0x112, uint64 0, uint64 count, arrays, uint64 count, names."""
    with open(path, "wb") as handle:
        handle.write(struct.pack("<QQQ", 0x112, 0, len(arrays)))
        for name, array in arrays.items():
            _write_array(handle, array, fmt, (type_flags or {}).get(name))
        names = list(arrays) if named else []
        handle.write(struct.pack("<Q", len(names)))
        for name in names:
            raw = name.encode()
            handle.write(struct.pack("<Q", len(raw)) + raw)
    return path


# ------------------------------------------------------------------------------- ResNet-38 names, written out

_BN_NAMES = {"weight": "gamma", "bias": "beta", "running_mean": "moving_mean", "running_var": "moving_var"}


def _mxnet_name(key: str) -> str:
    """ademxapp's MXNet name of a ResNet38 key, from the naming rule (block b4_3 is stage 4, block "b3")."""
    if key == "conv1a.weight":
        return "arg:conv1a_weight"
    module, param = key.rsplit(".", 1)
    prefix = "aux" if param.startswith("running") else "arg"
    if module == "bn7":
        return f"{prefix}:bn7_{_BN_NAMES[param]}"
    block, layer = module.split(".")
    stage, _, index = block[1:].partition("_")
    unit = f"{stage}b{index}" if index else f"{stage}a"
    kind, branch = layer.split("_", 1)  # "conv", "branch2b1"
    if kind == "conv":
        return f"arg:res{unit}_{branch}_weight"
    return f"{prefix}:bn{unit}_{branch}_{_BN_NAMES[param]}"


def _backbone_keys(model: ResNet38) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}


@pytest.fixture(scope="module")
def key_shapes() -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):
        return _backbone_keys(ResNet38())


@pytest.fixture(scope="module")
def mxnet_shapes(key_shapes: dict[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
    """The arrays of the ImageNet ``.params`` file: the backbone under MXNet names + the 1000-class classifier."""
    shapes = {_mxnet_name(key): shape for key, shape in key_shapes.items()}
    return shapes | {"arg:linear1000_weight": (1000, 4096), "arg:linear1000_bias": (1000,)}


def _meta_resnet(**kwargs: object) -> ResNet38:
    with torch.device("meta"):
        return ResNet38(**kwargs)


# ---------------------------------------------------------------------------------------------- the reader


def _small_arrays() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    return {
        "arg:w_f32": rng.standard_normal((2, 3, 4, 1)).astype(np.float32),
        "arg:w_f64": rng.standard_normal((5,)),
        "aux:w_f16": rng.standard_normal((3, 3)).astype(np.float16),
        "arg:u8": rng.integers(0, 256, (7,), dtype=np.uint8),
        "arg:i32": rng.integers(-(2**31), 2**31 - 1, (2, 2), dtype=np.int32),
        "arg:i8": rng.integers(-128, 127, (4, 1), dtype=np.int8),
        "aux:i64": np.array([-(2**62), 0, 2**62 + 5], dtype=np.int64),
        "arg:empty_dim": np.zeros((3, 0), dtype=np.float32),
    }


@pytest.mark.parametrize("fmt", ["v2", "v1", "v3", "legacy"])
def test_round_trip_every_dtype(tmp_path: Path, fmt: str) -> None:
    arrays = _small_arrays()
    path = _write_mxnet_params(tmp_path / "small.params", arrays, fmt)
    assert is_mxnet_params(path)
    loaded = read_mxnet_params(path)
    assert list(loaded) == list(arrays)
    for name, array in arrays.items():
        assert loaded[name].dtype == array.dtype and loaded[name].shape == array.shape, name
        np.testing.assert_array_equal(loaded[name], array)
        assert loaded[name].flags.writeable


def test_none_arrays_unnamed_list_and_bfloat16(tmp_path: Path) -> None:
    none = np.zeros((), dtype=np.float32)  # ndim 0: saved as a bare shape, read back as an empty array
    path = _write_mxnet_params(tmp_path / "list.params", {"a": none, "b": np.ones((2,), np.float32)}, named=False)
    loaded = read_mxnet_params(path)
    assert list(loaded) == ["0", "1"] and loaded["0"].size == 0 and loaded["1"].tolist() == [1.0, 1.0]
    # bfloat16 (type flag 12): the top 16 bits of a float32, widened exactly.
    values = np.array([1.0, -2.5, 3.140625], dtype=np.float32)
    bits = (values.view(np.uint32) >> 16).astype(np.uint16)
    path = _write_mxnet_params(tmp_path / "bf16.params", {"x": bits}, type_flags={"x": 12})
    np.testing.assert_array_equal(read_mxnet_params(path)["x"], values)


def test_trailing_bytes_are_ignored_with_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = _write_mxnet_params(tmp_path / "tail.params", {"arg:x": np.ones((2,), np.float32)})
    path.write_bytes(path.read_bytes() + b"\0\0\0")
    with caplog.at_level(logging.WARNING, logger="wsss_lightning.models.mxnet_params"):
        assert read_mxnet_params(path)["arg:x"].tolist() == [1.0, 1.0]
    assert "3 bytes after the last MXNet name" in caplog.text


def _cut(path: Path, size: int) -> Path:
    out = path.with_name(f"cut{size}.params")
    out.write_bytes(path.read_bytes()[:size])
    return out


def test_truncated_and_corrupt_files_name_the_file(tmp_path: Path) -> None:
    path = _write_mxnet_params(tmp_path / "good.params", {"arg:x": np.arange(6, dtype=np.float32).reshape(2, 3)})
    size = path.stat().st_size
    # header, inside the shape, inside the data, inside the names
    for cut, field in ((12, "file header"), (40, "shape"), (70, "data"), (size - 3, "name 0")):
        bad = _cut(path, cut)
        with pytest.raises(CheckpointError, match=rf"{re.escape(str(bad))} .*truncated.*{field}"):
            read_mxnet_params(bad)
    data = bytearray(path.read_bytes())
    data[0] = 0x13
    (tmp_path / "magic.params").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"magic\.params .*file magic 0x113, expected 0x112"):
        read_mxnet_params(tmp_path / "magic.params")
    data = bytearray(path.read_bytes())
    data[24:28] = struct.pack("<I", 0xDEADBEEF)  # the first array's header
    (tmp_path / "array.params").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"array\.params .*array 0 starts with 0xDEADBEEF"):
        read_mxnet_params(tmp_path / "array.params")
    data = bytearray(path.read_bytes())
    data[28:32] = struct.pack("<i", 1)  # row_sparse storage
    (tmp_path / "sparse.params").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="storage type 1"):
        read_mxnet_params(tmp_path / "sparse.params")
    with pytest.raises(CheckpointError, match="does not exist"):
        read_mxnet_params(tmp_path / "nope.params")


def test_wrong_magic_params_file_given_to_resnet38_names_the_file(tmp_path: Path) -> None:
    bad = tmp_path / PARAMS_NAME
    bad.write_bytes(struct.pack("<QQQ", 0x113, 0, 0))
    assert not is_mxnet_params(bad)
    with pytest.raises(CheckpointError, match=rf"{re.escape(str(bad))} .*no 0x112 magic"):
        _meta_resnet(checkpoint_path=str(bad))


# --------------------------------------------------------------------------------------------- the mapping


def test_name_mapping_examples() -> None:
    assert mxnet_to_resnet38_name("arg:conv1a_weight") == "conv1a.weight"
    assert mxnet_to_resnet38_name("arg:res2a_branch1_weight") == "b2.conv_branch1.weight"
    assert mxnet_to_resnet38_name("arg:res4b3_branch2b1_weight") == "b4_3.conv_branch2b1.weight"
    assert mxnet_to_resnet38_name("arg:bn2b2_branch2a_gamma") == "b2_2.bn_branch2a.weight"
    assert mxnet_to_resnet38_name("aux:bn5a_branch2a_moving_var") == "b5.bn_branch2a.running_var"
    assert mxnet_to_resnet38_name("aux:bn7a_branch2b2_moving_mean") == "b7.bn_branch2b2.running_mean"
    assert mxnet_to_resnet38_name("arg:bn6a_branch2b1_beta") == "b6.bn_branch2b1.bias"
    assert mxnet_to_resnet38_name("arg:bn7_gamma") == "bn7.weight"
    assert mxnet_to_resnet38_name("bn7_moving_var") == "bn7.running_var"  # the arg:/aux: prefix is optional
    for other in ("arg:linear1000_weight", "arg:linear1000_bias", "arg:fc1000_weight", "arg:res2a_branch1_gamma"):
        assert mxnet_to_resnet38_name(other) is None, other


def test_mapping_covers_every_backbone_key(
    key_shapes: dict[str, tuple[int, ...]], mxnet_shapes: dict[str, tuple[int, ...]]
) -> None:
    state = resnet38_state_from_mxnet({name: np.empty(shape, np.float32) for name, shape in mxnet_shapes.items()})
    assert set(state) == set(key_shapes) | {"arg:linear1000_weight", "arg:linear1000_bias"}
    assert all(tuple(state[key].shape) == shape for key, shape in key_shapes.items())
    assert len(key_shapes) == 43 + 37 * 4  # 43 convs; 37 BNs x (weight, bias, running_mean, running_var)
    with pytest.raises(CheckpointError, match="both map to ResNet38 key 'bn7.weight'"):
        resnet38_state_from_mxnet({"arg:bn7_gamma": np.ones(1), "bn7_gamma": np.ones(1)})


# ------------------------------------------------------------------------------------ loading into ResNet38


@pytest.mark.slow  # a real 105M-parameter model and a 420 MB file: ~5 s
def test_resnet38_loads_mxnet_params_exactly(tmp_path: Path, mxnet_shapes: dict[str, tuple[int, ...]]) -> None:
    rng = np.random.default_rng(0)
    imagenet_arrays = {name: rng.standard_normal(shape, dtype=np.float32) for name, shape in mxnet_shapes.items()}
    # Pre-0.11 MXNet (2016, when these weights were released) wrote the legacy layout.
    path = _write_mxnet_params(tmp_path / PARAMS_NAME, imagenet_arrays, fmt="legacy")
    model = ResNet38(checkpoint_path=str(path))
    report = model.load_report
    assert report is not None and report.complete and report.source == str(path)
    assert sorted(report.unexpected) == ["arg:linear1000_bias", "arg:linear1000_weight"]
    state = model.state_dict()
    for key in _backbone_keys(model):
        assert torch.equal(state[key], torch.from_numpy(imagenet_arrays[_mxnet_name(key)])), key
    assert torch.equal(state["bn7.running_var"], torch.from_numpy(imagenet_arrays["aux:bn7_moving_var"]))
    assert not model.conv1a.weight.requires_grad  # freezing still applies after the load


@pytest.mark.filterwarnings("ignore:.*meta parameter:UserWarning")
def test_mxnet_params_missing_key_is_refused(tmp_path: Path, mxnet_shapes: dict[str, tuple[int, ...]]) -> None:
    # float16 zeros: a valid MXNet dtype and half the bytes to write (the load is refused before any copy)
    arrays = {name: np.zeros(shape, np.float16) for name, shape in mxnet_shapes.items()}
    del arrays["aux:bn4b2_branch2b1_moving_mean"]
    path = _write_mxnet_params(tmp_path / PARAMS_NAME, arrays)
    with pytest.raises(CheckpointError, match=rf"(?s){re.escape(str(path))} does not cover.*b4_2\.bn_branch2b1"):
        _meta_resnet(checkpoint_path=str(path))
    report = _meta_resnet().load_checkpoint(path, strict=False)
    assert report.missing == ["b4_2.bn_branch2b1.running_mean"]


# ------------------------------------------------------------------------------------------- PSA .pth files


def _zeros(shape: tuple[int, ...]) -> Tensor:
    return torch.zeros(()).expand(shape)  # saved as a single element: a full-size file for free


@pytest.mark.filterwarnings("ignore:.*meta parameter:UserWarning")
def test_psa_res38_cls_pth_feeds_auxsegnet_fc8(tmp_path: Path, key_shapes: dict[str, tuple[int, ...]]) -> None:
    # PSA's resnet38_cls.Net state dict (backbone + fc8 (20, 4096, 1, 1)), as saved from DataParallel.
    fc8 = torch.randn(20, 4096, 1, 1)
    state = {f"module.{key}": _zeros(shape) for key, shape in key_shapes.items()} | {"module.fc8.weight": fc8}
    torch.save(state, tmp_path / "res38_cls.pth")
    backbone = _meta_resnet(checkpoint_path=str(tmp_path / "res38_cls.pth"))
    assert backbone.load_report is not None and backbone.load_report.complete
    assert backbone.load_report.unexpected == ["fc8.weight"]
    network = AuxSegNet(num_classes=21, backbone=backbone)  # heads on the CPU, backbone on meta
    assert torch.equal(network.classifier.fc8.weight.detach(), fc8)


@pytest.mark.filterwarnings("ignore:.*meta parameter:UserWarning")
def test_psa_imagenet_pth_conversion_loads(tmp_path: Path, mxnet_shapes: dict[str, tuple[int, ...]]) -> None:
    # PSA's convert_mxnet_to_torch output saved with torch.save: backbone keys only (linear1000 dropped).
    names = {mxnet_to_resnet38_name(name): shape for name, shape in mxnet_shapes.items()}
    state = {key: _zeros(shape) for key, shape in names.items() if key is not None}
    torch.save(state, tmp_path / "ilsvrc-cls_rna-a1_cls1000_ep-0001.pth")
    backbone = _meta_resnet(checkpoint_path=str(tmp_path / "ilsvrc-cls_rna-a1_cls1000_ep-0001.pth"))
    assert backbone.load_report is not None and backbone.load_report.complete
    assert backbone.load_report.unexpected == []
    network = AuxSegNet(num_classes=21, backbone=backbone)  # no fc8 in the file: the classifier keeps its init
    assert network.classifier.fc8.weight.abs().sum() > 0

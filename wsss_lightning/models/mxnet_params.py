"""Read MXNet ``.params`` files (``mx.nd.save`` NDArray lists) without mxnet, and map ResNet-38's names to ours.

The official ResNet-38 ImageNet weights (``ilsvrc-cls_rna-a1_cls1000_ep-0001.params``, "Wider or Deeper", Wu et
al.) that PSA, IRN and AuxSegNet start from are in this format, and mxnet has no wheels for current Python.
The reader is pure ``struct`` + numpy and never unpickles anything.

File layout (little-endian; MXNet ``src/ndarray/ndarray.cc`` ``NDArray::Save``/``Load``, dmlc-core
``serializer.h`` for the vectors and strings):

======================================  ==============================================================
field                                   encoding
======================================  ==============================================================
list magic                              uint64 ``0x112``
reserved                                uint64
number of arrays N                      uint64
N arrays                                see below
number of names (0 or N)                uint64
names                                   each: uint64 length + that many bytes (``arg:…`` / ``aux:…``)
======================================  ==============================================================

One array: a uint32 that is either a magic number or, in files from MXNet before 0.11, already the shape's
``ndim``:

* ``0xF993FAC9`` (V2) / ``0xF993FACA`` (V3, numpy shape semantics): int32 storage type (0 dense; sparse
  types are refused), shape as 32-bit ``ndim`` + ``ndim`` int64 dims, then the payload below.
* ``0xF993FAC8`` (V1, MXNet 0.11): shape as 32-bit ``ndim`` + ``ndim`` int64 dims, then the payload.
* anything else (legacy): that uint32 is ``ndim``, followed by ``ndim`` uint32 dims, then the payload.

Payload: int32 ``dev_type`` + int32 ``dev_id`` (the saving context), int32 type flag (mshadow ``TypeFlag``), then
``prod(shape) * itemsize`` bytes of raw data in C order. An empty shape (V1/V2/legacy ``ndim == 0``; V3
``ndim == -1``) is a "none" array with no payload at all.
"""

from __future__ import annotations

import logging
import os
import re
import struct
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
from torch import Tensor

from wsss_lightning.models.checkpoint import CheckpointError

log = logging.getLogger(__name__)

__all__ = [
    "MXNET_LIST_MAGIC",
    "is_mxnet_params",
    "mxnet_to_resnet38_name",
    "read_mxnet_params",
    "resnet38_state_from_mxnet",
]

MXNET_LIST_MAGIC = 0x112  # kMXAPINDArrayListMagic
_V1_MAGIC = 0xF993FAC8  # int64 TShape
_V2_MAGIC = 0xF993FAC9  # + storage type
_V3_MAGIC = 0xF993FACA  # + numpy shape semantics (ndim 0 is a scalar, -1 is unknown)
_DEFAULT_STORAGE = 0
_MAX_NDIM = 32  # mshadow's limit is far below; a larger value means a corrupt file
_DEV_TYPES = (1, 2, 3, 5)  # Context: kCPU, kGPU, kCPUPinned, kCPUShared
_BFLOAT16 = 12
# mshadow TypeFlag -> numpy dtype (little-endian); bfloat16 (12) is widened to float32 separately.
_DTYPES: dict[int, np.dtype] = {
    0: np.dtype("<f4"),
    1: np.dtype("<f8"),
    2: np.dtype("<f2"),
    3: np.dtype("u1"),
    4: np.dtype("<i4"),
    5: np.dtype("i1"),
    6: np.dtype("<i8"),
    7: np.dtype("?"),
    8: np.dtype("<i2"),
    9: np.dtype("<u2"),
    10: np.dtype("<u4"),
    11: np.dtype("<u8"),
}


class _Reader:
    """Sequential little-endian reads from a binary file that fail loudly on a short read."""

    def __init__(self, handle: BinaryIO, path: Path) -> None:
        self.handle = handle
        self.path = path
        self.size = os.fstat(handle.fileno()).st_size

    @property
    def remaining(self) -> int:
        return self.size - self.handle.tell()

    def error(self, what: str) -> CheckpointError:
        return CheckpointError(f"{self.path} is not a valid MXNet .params file: {what} (at byte {self.handle.tell()})")

    def read(self, count: int, what: str) -> bytes:
        if count > self.remaining:
            raise self.error(f"truncated while reading {what}: needs {count} bytes, {self.remaining} left")
        return self.handle.read(count)

    def unpack(self, fmt: str, what: str) -> tuple[int, ...]:
        return struct.unpack("<" + fmt, self.read(struct.calcsize("<" + fmt), what))

    def array(self, dtype: np.dtype, shape: tuple[int, ...], what: str) -> np.ndarray:
        """A freshly allocated, writable array (so ``torch.from_numpy`` needs no copy); size checked first."""
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        if nbytes > self.remaining:
            raise self.error(f"truncated in the data of {what}: needs {nbytes} bytes, {self.remaining} left")
        buffer = bytearray(nbytes)
        if self.handle.readinto(buffer) != nbytes:
            raise self.error(f"short read in the data of {what}")
        return np.frombuffer(buffer, dtype=dtype).reshape(shape)


def is_mxnet_params(path: str | Path) -> bool:
    """True when ``path`` is a file that starts with the MXNet NDArray-list magic (whatever its suffix)."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(8)
    except OSError:
        return False
    return len(head) == 8 and struct.unpack("<Q", head)[0] == MXNET_LIST_MAGIC


def _read_shape(reader: _Reader, magic: int, what: str) -> tuple[int, ...] | None:
    """The array's shape, or ``None`` for a "none" array (no payload follows)."""
    if magic in (_V1_MAGIC, _V2_MAGIC, _V3_MAGIC):
        (ndim,) = reader.unpack("i", f"the ndim of {what}")
        if magic == _V3_MAGIC and ndim == -1:
            return None
        if not 0 <= ndim <= _MAX_NDIM:
            raise reader.error(f"{what} has ndim {ndim}")
        dims = reader.unpack(f"{ndim}q", f"the shape of {what}")
        if magic == _V3_MAGIC and any(d == -1 for d in dims):
            return None
        if magic != _V3_MAGIC and ndim == 0:
            return None
    else:  # legacy: the "magic" is ndim and the dims are uint32
        ndim = magic
        if ndim > _MAX_NDIM:
            raise reader.error(f"{what} starts with 0x{magic:08X}, neither an NDArray magic nor a plausible ndim")
        if ndim == 0:
            return None
        dims = reader.unpack(f"{ndim}I", f"the shape of {what}")
    if any(d < 0 for d in dims):
        raise reader.error(f"{what} has a negative dimension in {list(dims)}")
    return tuple(dims)


def _read_ndarray(reader: _Reader, index: int) -> np.ndarray:
    """One NDArray in any of its save formats -> a numpy array of its shape (``(0,)`` float32 for "none")."""
    what = f"array {index}"
    (magic,) = reader.unpack("I", f"the header of {what}")
    if magic in (_V2_MAGIC, _V3_MAGIC):
        (stype,) = reader.unpack("i", f"the storage type of {what}")
        if stype != _DEFAULT_STORAGE:
            # Sparse arrays (row_sparse 1, csr 2) carry extra aux shapes/data; no weight file uses them.
            raise reader.error(f"{what} has storage type {stype}; only dense arrays (0) are supported")
    shape = _read_shape(reader, magic, what)
    if shape is None:
        return np.zeros((0,), dtype=np.float32)
    dev_type, _dev_id = reader.unpack("ii", f"the context of {what}")
    if dev_type not in _DEV_TYPES:
        raise reader.error(f"{what} has device type {dev_type}, not one of {list(_DEV_TYPES)}")
    (type_flag,) = reader.unpack("i", f"the type flag of {what}")
    if type_flag == _BFLOAT16:
        # numpy has no bfloat16: its bits are the top half of a float32, so widening is exact.
        raw = reader.array(np.dtype("<u2"), shape, what)
        return (raw.astype(np.uint32) << 16).view(np.float32)
    if type_flag not in _DTYPES:
        raise reader.error(f"{what} has unknown type flag {type_flag}")
    return reader.array(_DTYPES[type_flag], shape, what)


def _read_names(reader: _Reader, count: int) -> list[str]:
    (num_names,) = reader.unpack("Q", "the number of names")
    if num_names not in (0, count):
        raise reader.error(f"{num_names} names for {count} arrays")
    names = []
    for index in range(num_names):
        (length,) = reader.unpack("Q", f"the length of name {index}")
        raw = reader.read(length, f"name {index}")
        try:
            names.append(raw.decode("utf-8"))
        except UnicodeDecodeError as error:
            raise reader.error(f"name {index} is not UTF-8 ({error})") from error
    return names


def read_mxnet_params(path: str | Path) -> dict[str, np.ndarray]:
    """Read an MXNet NDArray-list file (``mx.nd.save`` / ``save_checkpoint``'s ``.params``).

    Args:
        path: the file; checked by content, not by suffix.

    Returns:
        ``{name: array}`` in file order, names as stored (``"arg:conv1a_weight"``, ``"aux:bn7_moving_mean"``);
        arrays keep their stored shape and dtype (bfloat16 is widened to float32). A file saved without names
        (a plain list) is keyed ``"0"``, ``"1"``, …

    Raises:
        CheckpointError: the file is missing, has the wrong magic, is truncated, holds sparse arrays, or is
            otherwise inconsistent; the message names the file and the offending field.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"MXNet .params file {path} does not exist; check the checkpoint_path setting")
    with open(path, "rb") as handle:
        reader = _Reader(handle, path)
        magic, _reserved = reader.unpack("QQ", "the file header")
        if magic != MXNET_LIST_MAGIC:
            raise reader.error(f"file magic 0x{magic:X}, expected 0x{MXNET_LIST_MAGIC:X} (an mx.nd.save file)")
        (count,) = reader.unpack("Q", "the number of arrays")
        if count > reader.remaining // 4:  # every array needs at least its 4-byte header
            raise reader.error(f"claims {count} arrays in {reader.remaining} remaining bytes")
        arrays = [_read_ndarray(reader, index) for index in range(count)]
        names = _read_names(reader, count) or [str(index) for index in range(count)]
        if reader.remaining:  # MXNet ignores them too, but they hint at a misread or a concatenated file
            log.warning("%s: %d bytes after the last MXNet name are ignored", path, reader.remaining)
    duplicates = sorted(name for name, seen in Counter(names).items() if seen > 1)
    if duplicates:
        raise CheckpointError(f"{path} is not a valid MXNet .params file: duplicate names {duplicates}")
    return dict(zip(names, arrays, strict=True))


# ------------------------------------------------------------------------------------ ResNet-38 name mapping

# MXNet ResNet-38 names (ademxapp's resnet_v2 symbols, as converted by PSA's convert_mxnet_to_torch):
#   conv1a_weight                                  -> conv1a.weight
#   res{S}{blk}_branch{br}_weight                  -> b{S}[_{k}].conv_branch{br}.weight
#   bn{S}{blk}_branch{br}_{gamma,beta,moving_*}    -> b{S}[_{k}].bn_branch{br}.{weight,bias,running_*}
#   bn7_{gamma,beta,moving_*}                      -> bn7.{...}
# with blk "a" for the first block of stage S (-> b{S}) and "b{k}" for the k-th further one (-> b{S}_{k}).
_BLOCK_PARAM = re.compile(
    r"(?P<kind>res|bn)(?P<stage>\d+)(?P<block>a|b\d+)_branch(?P<branch>1|2a|2b\d+)_"
    r"(?P<param>weight|gamma|beta|moving_mean|moving_var)"
)
_BN7_PARAM = re.compile(r"bn7_(?P<param>gamma|beta|moving_mean|moving_var)")
_BN_PARAMS = {"gamma": "weight", "beta": "bias", "moving_mean": "running_mean", "moving_var": "running_var"}


def mxnet_to_resnet38_name(name: str) -> str | None:
    """The :class:`~wsss_lightning.models.resnet38.ResNet38` key for an MXNet ResNet-38 name, else ``None``.

    ``"arg:res4b3_branch2b1_weight"`` -> ``"b4_3.conv_branch2b1.weight"``,
    ``"aux:bn5a_branch2a_moving_var"`` -> ``"b5.bn_branch2a.running_var"``, ``"arg:bn7_gamma"`` -> ``"bn7.weight"``;
    the classifier (``linear1000_*`` / ``fc1000_*``) and anything else -> ``None``. The ``arg:``/``aux:`` prefix
    is optional.
    """
    bare = name.split(":", 1)[1] if name.startswith(("arg:", "aux:")) else name
    if bare == "conv1a_weight":
        return "conv1a.weight"
    if match := _BN7_PARAM.fullmatch(bare):
        return f"bn7.{_BN_PARAMS[match['param']]}"
    match = _BLOCK_PARAM.fullmatch(bare)
    if match is None:
        return None
    block = f"b{match['stage']}" + ("" if match["block"] == "a" else f"_{match['block'][1:]}")
    param = match["param"]
    if match["kind"] == "res":
        return f"{block}.conv_branch{match['branch']}.weight" if param == "weight" else None
    if param not in _BN_PARAMS:  # a BN has no "weight" in MXNet's naming
        return None
    return f"{block}.bn_branch{match['branch']}.{_BN_PARAMS[param]}"


def resnet38_state_from_mxnet(arrays: Mapping[str, np.ndarray]) -> dict[str, Tensor]:
    """Rename MXNet ResNet-38 arrays to a :class:`~wsss_lightning.models.resnet38.ResNet38` state dict.

    Args:
        arrays: ``{mxnet name: array}`` from :func:`read_mxnet_params`. Shapes are already PyTorch's: conv
            weights ``(C_out, C_in, kh, kw)``, BN vectors ``(C,)``.

    Returns:
        ``{ResNet38 key: tensor}``; names that do not map (the ImageNet classifier ``linear1000_weight``
        ``(1000, 4096)`` / ``linear1000_bias``, or anything unknown) keep their MXNet name, so loading reports
        them as unexpected instead of silently dropping them.

    Raises:
        CheckpointError: two MXNet names map to the same key (e.g. with and without ``arg:``).
    """
    state: dict[str, Tensor] = {}
    origin: dict[str, str] = {}
    for name, array in arrays.items():
        key = mxnet_to_resnet38_name(name) or name
        if key in state:
            raise CheckpointError(f"MXNet names '{origin[key]}' and '{name}' both map to ResNet38 key '{key}'")
        origin[key] = name
        # Arrays from read_mxnet_params are writable; copy read-only ones so from_numpy does not warn.
        state[key] = torch.from_numpy(array if array.flags.writeable else array.copy())
    return state

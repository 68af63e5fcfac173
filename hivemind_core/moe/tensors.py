"""Torch tensors inside msgpack RPC bodies: a plain list, never pickle.

A tensor travels as ``[dtype_name, shape, compression, data, extra]``. ``dtype_name`` is the
sender's original dtype, so the receiver gets back the dtype it would have had locally whatever
the compression. Raw data is little-endian. Everything a peer sends is checked before anything
is allocated, so garbage from the network ends in a ``ValueError`` naming what is wrong, never a
crash, a huge allocation or a tensor aliasing the message buffer. A receiver that wants only
finite values asks for ``finite=True``: the data is then checked for NaN and Inf once, in the
message buffer before it is copied (:class:`NonFiniteTensor`), not again by every layer the
tensor crosses.

Compression trades precision for bandwidth and applies only to floating-point tensors:

- ``FLOAT16`` / ``BFLOAT16``: halve float32 (quarter float64); 16-bit tensors are sent raw.
  ``FLOAT16`` saturates finite values at +-65504 rather than overflowing them to Inf.
- ``UINT8``: blockwise affine quantization (4096 elements a block, each with its own float32
  min and scale), about a quarter of float32; each value is off by at most half its block's step
  (the sent scale, about the block's range / 255).
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any, NamedTuple

import numpy as np
import torch

BLOCK_SIZE = 4096  # UINT8 quantization block, in elements
MAX_DIMS = 8
_MAX_DIM = 1 << 62  # fits torch's int64 sizes even in an empty tensor
MAX_TENSORS = 64
DEFAULT_MAX_ELEMENTS = 1 << 28
_CHUNK_BLOCKS = 256  # UINT8 works on 1 Mi elements at a time to bound its float64 temporaries


class Compression(enum.StrEnum):
    """How floating-point data is encoded on the wire (a str, so it packs as its value)."""

    NONE = "none"
    FLOAT16 = "float16"
    BFLOAT16 = "bfloat16"
    UINT8 = "uint8"


# dtype name -> (torch dtype, little-endian numpy dtype of its raw bytes). bfloat16 has no numpy
# dtype, so its bits travel as int16.
DTYPES: Mapping[str, tuple[torch.dtype, np.dtype]] = MappingProxyType(
    {
        "float32": (torch.float32, np.dtype("<f4")),
        "float64": (torch.float64, np.dtype("<f8")),
        "float16": (torch.float16, np.dtype("<f2")),
        "bfloat16": (torch.bfloat16, np.dtype("<i2")),
        "int64": (torch.int64, np.dtype("<i8")),
        "int32": (torch.int32, np.dtype("<i4")),
        "int16": (torch.int16, np.dtype("<i2")),
        "int8": (torch.int8, np.dtype("i1")),
        "uint8": (torch.uint8, np.dtype("u1")),
        "bool": (torch.bool, np.dtype("?")),
    }
)
NAMES: Mapping[torch.dtype, str] = MappingProxyType(
    {torch_dtype: name for name, (torch_dtype, _) in DTYPES.items()}
)
_NATIVE: Mapping[str, np.dtype] = MappingProxyType(
    {name: np_dtype.newbyteorder("=") for name, (_, np_dtype) in DTYPES.items()}
)
"""The numpy dtype of each name's values in this machine's byte order (what a decoded copy has)."""
FLOATS = frozenset({"float32", "float64", "float16", "bfloat16"})
_SIXTEEN_BITS = MappingProxyType({Compression.FLOAT16: "float16", Compression.BFLOAT16: "bfloat16"})
# enum members are slow to look up, and these checks run for every tensor sent or received
_NONE, _UINT8 = Compression.NONE, Compression.UINT8
_WIDE = frozenset({"float32", "float64"})  # what FLOAT16 and BFLOAT16 shrink
_SEQUENCES = (list, tuple)  # isinstance with a tuple: ``list | tuple`` would build a union per call
_BUFFERS = (bytes, bytearray)


def serialize_tensor(tensor: torch.Tensor, compression: Compression | str = Compression.NONE) -> list:
    """``[dtype_name, shape, compression, data, extra]``, ready for ``msgpack.packb``.

    The compression actually used is written in the list: it falls back to NONE for non-float
    tensors and where it would not shrink the data (a float16 tensor asked for FLOAT16).
    Raises ValueError for unsupported dtypes, and for NaN/Inf under UINT8.
    """
    if type(compression) is not Compression:
        compression = Compression(compression)
    if not isinstance(tensor, torch.Tensor) or tensor.layout != torch.strided:
        raise ValueError(f"can only serialize dense torch tensors, got {type(tensor).__name__}")
    name = NAMES.get(tensor.dtype)
    if name is None:
        raise ValueError(f"cannot serialize dtype {tensor.dtype}: supported are {', '.join(DTYPES)}")
    if tensor.requires_grad:
        tensor = tensor.detach()
    if tensor.device.type != "cpu" or not tensor.is_contiguous():
        tensor = tensor.cpu().contiguous()
    shape = list(tensor.shape)
    if compression is _NONE or name not in FLOATS or (compression is not _UINT8 and name not in _WIDE):
        return [name, shape, "none", _raw_bytes(tensor, name), b""]
    if compression is Compression.FLOAT16:
        limit = torch.finfo(torch.float16).max
        saturated = torch.where(tensor.isinf(), tensor, tensor.clamp(-limit, limit))
        return [name, shape, compression.value, _raw_bytes(saturated.half(), "float16"), b""]
    if compression is Compression.BFLOAT16:
        return [name, shape, compression.value, _raw_bytes(tensor.bfloat16(), "bfloat16"), b""]
    data, extra = _quantize(tensor.reshape(-1))
    return [name, shape, compression.value, data, extra]


class NonFiniteTensor(ValueError):
    """A floating-point tensor from a peer holds NaN or Inf where only finite values are taken."""


class TensorHeader(NamedTuple):
    """What a serialized tensor claims to be, checked before any of its data is decoded (a
    named tuple: every tensor received builds one, and a tuple is the cheapest to build)."""

    name: str
    shape: tuple[int, ...]
    compression: Compression
    numel: int
    nbytes: int
    """Bytes of data and extra on the wire."""

    @property
    def dtype(self) -> torch.dtype:
        return DTYPES[self.name][0]


def read_header(raw: Any, *, max_elements: int = DEFAULT_MAX_ELEMENTS) -> TensorHeader:
    """Check everything about a serialized tensor that can be checked without decoding its data:
    the list's layout, dtype, shape, compression, ``max_elements`` and the exact byte counts.

    Costs the same for a tensor of any size, so a receiver can refuse a large claim cheaply.
    Raises ValueError naming the problem.
    """
    if not isinstance(raw, _SEQUENCES) or len(raw) != 5:
        raise ValueError("a serialized tensor must be a 5-item list [dtype, shape, compression, data, extra]")
    name, shape, compression_name, data, extra = raw
    if not isinstance(name, str) or name not in DTYPES:
        raise ValueError(f"unknown dtype {name!r}: supported are {', '.join(DTYPES)}")
    numel = 1
    if isinstance(shape, _SEQUENCES) and len(shape) <= MAX_DIMS:
        for dim in shape:
            if type(dim) is not int or not 0 <= dim <= _MAX_DIM:
                numel = -1
                break
            numel *= dim
    else:
        numel = -1
    if numel < 0:
        raise ValueError(f"shape must be a list of at most {MAX_DIMS} non-negative ints, got {shape!r}")
    if numel > max_elements:
        raise ValueError(f"shape {list(shape)} has {numel} elements, more than the {max_elements} allowed")
    compression = _COMPRESSIONS.get(compression_name) if isinstance(compression_name, str) else None
    if compression is None:
        raise ValueError(f"unknown compression {compression_name!r}")
    item_size = _ITEM_SIZES.get((name, compression))
    if item_size is None:
        raise ValueError(f"compression {compression.value} applies only to floating-point dtypes, not {name}")
    if not isinstance(data, _BUFFERS) or not isinstance(extra, _BUFFERS):
        raise ValueError("data and extra must be bytes")
    expected_extra = 8 * -(-numel // BLOCK_SIZE) if compression is _UINT8 else 0
    if len(data) != numel * item_size:
        raise ValueError(f"data is {len(data)} bytes, expected {numel * item_size}")
    if len(extra) != expected_extra:
        raise ValueError(f"extra is {len(extra)} bytes, expected {expected_extra}")
    return TensorHeader(name, tuple(shape), compression, numel, len(data) + len(extra))


def read_headers(raw: Any, *, max_elements: int = DEFAULT_MAX_ELEMENTS) -> list[TensorHeader]:
    """:func:`read_header` for a list of serialized tensors; ``max_elements`` caps them all together
    and errors say which index is bad."""
    if not isinstance(raw, _SEQUENCES):
        raise ValueError(f"serialized tensors must be a list, got {type(raw).__name__}")
    if len(raw) > MAX_TENSORS:
        raise ValueError(f"{len(raw)} tensors, more than the {MAX_TENSORS} allowed in one message")
    headers: list[TensorHeader] = []
    remaining = max_elements
    for index, item in enumerate(raw):
        try:
            header = read_header(item, max_elements=remaining)
        except ValueError as error:
            raise ValueError(f"tensor {index}: {error}") from None
        remaining -= header.numel
        headers.append(header)
    return headers


def deserialize_tensor(
    raw: Any, *, max_elements: int = DEFAULT_MAX_ELEMENTS, finite: bool = False
) -> torch.Tensor:
    """Check a serialized tensor from a peer and rebuild it as a fresh, writable tensor.

    Raises ValueError naming the problem (:class:`NonFiniteTensor` for NaN or Inf in a
    floating-point tensor when ``finite``); ``max_elements`` is enforced before allocating.
    """
    return decode_tensor(raw, read_header(raw, max_elements=max_elements), finite=finite)


def serialize_tensors(
    tensors: Sequence[torch.Tensor], compression: Compression | str = Compression.NONE
) -> list:
    """Serialize a list of tensors with one compression; at most MAX_TENSORS, as peers accept."""
    if len(tensors) > MAX_TENSORS:
        raise ValueError(f"{len(tensors)} tensors, more than the {MAX_TENSORS} allowed in one message")
    return [serialize_tensor(tensor, compression) for tensor in tensors]


def deserialize_tensors(
    raw: Any, *, max_elements: int = DEFAULT_MAX_ELEMENTS, finite: bool = False
) -> list[torch.Tensor]:
    """Check and rebuild a list of serialized tensors; errors say which index is bad.

    ``max_elements`` caps the elements of all tensors together, so a long list of large tensors
    cannot add up past it. Every header is checked before any data is decoded.
    """
    headers = read_headers(raw, max_elements=max_elements)
    tensors: list[torch.Tensor] = []
    for index, (item, header) in enumerate(zip(raw, headers, strict=True)):
        try:
            tensors.append(decode_tensor(item, header, finite=finite))
        except ValueError as error:
            raise type(error)(f"tensor {index}: {error}") from None
    return tensors


def _wire_name(name: str, compression: Compression) -> str:
    """The dtype whose raw bytes travel: the 16-bit format for FLOAT16/BFLOAT16, else ``name``."""
    return _SIXTEEN_BITS.get(compression, name)


_COMPRESSIONS: Mapping[str, Compression] = MappingProxyType({c.value: c for c in Compression})
_ITEM_SIZES: Mapping[tuple[str, Compression], int] = MappingProxyType(
    {
        (name, compression): 1
        if compression is Compression.UINT8
        else DTYPES[_wire_name(name, compression)][1].itemsize
        for name in DTYPES
        for compression in Compression
        if compression is Compression.NONE or name in FLOATS
    }
)
"""Bytes an element takes on the wire, for each valid (dtype name, compression)."""


def decode_tensor(raw: Any, header: TensorHeader, *, finite: bool = False) -> torch.Tensor:
    """The tensor of a serialized list whose header :func:`read_header` returned (so its sizes
    are known good), as a fresh, writable tensor; with ``finite``, a floating-point one holding
    NaN or Inf raises :class:`NonFiniteTensor`, checked before anything is allocated."""
    data, extra = raw[3], raw[4]
    check = finite and header.name in FLOATS
    if header.compression is _UINT8:
        flat = _dequantize(data, extra, header.dtype)  # finite mins and scales can still overflow
        if check and not bool(torch.isfinite(flat).all()):
            raise NonFiniteTensor("contains NaN or infinite values")
        return flat.reshape(header.shape)
    tensor = _from_raw_bytes(
        data, _wire_name(header.name, header.compression), finite=check, shape=header.shape
    )
    return tensor if tensor.dtype == header.dtype else tensor.to(header.dtype)


def _raw_bytes(tensor: torch.Tensor, name: str) -> bytes:
    """Little-endian bytes of a contiguous CPU tensor whose dtype is ``name``."""
    if name == "bfloat16":
        tensor = tensor.view(torch.int16)
    return tensor.numpy().astype(DTYPES[name][1], copy=False).tobytes()


def _from_raw_bytes(
    data: bytes | bytearray, name: str, *, finite: bool = False, shape: tuple[int, ...] | None = None
) -> torch.Tensor:
    """A tensor of dtype ``name`` owning a copy of ``data`` (length already checked), flat or of
    ``shape`` (given to numpy's view, where reshaping is cheaper than torch's); ``finite``
    (floating-point names only) refuses NaN and Inf before copying."""
    np_dtype = DTYPES[name][1]
    if name == "bool":
        values = np.frombuffer(data, dtype=np.uint8)
        if values.size and values.max() > 1:
            raise ValueError("bool data must hold only bytes 0 and 1")
    view = np.frombuffer(data, dtype=np_dtype)
    if finite and not _all_finite(view, name):
        raise NonFiniteTensor("contains NaN or infinite values")
    if shape is not None:
        view = view.reshape(shape)
    tensor = torch.from_numpy(view.astype(_NATIVE[name], copy=True))
    return tensor.view(torch.bfloat16) if name == "bfloat16" else tensor


def _all_finite(view: np.ndarray, name: str) -> bool:
    """Whether raw floating-point data of dtype ``name`` holds no NaN or Inf (bfloat16 arrives
    as its int16 bits: all-ones exponent bits mean NaN or Inf)."""
    if name == "bfloat16":
        return not np.any((view & 0x7F80) == 0x7F80)
    return bool(np.isfinite(view).all())


def _quantize(flat: torch.Tensor) -> tuple[bytes, bytes]:
    """UINT8 data (one byte an element) and extra (float32 mins, then float32 scales)."""
    if not bool(torch.isfinite(flat).all()):
        raise ValueError("UINT8 compression cannot carry NaN or Inf values")
    numel = flat.numel()
    num_blocks = -(-numel // BLOCK_SIZE)
    codes = torch.empty(numel, dtype=torch.uint8)
    mins = torch.empty(num_blocks, dtype=torch.float32)
    scales = torch.empty(num_blocks, dtype=torch.float32)
    for first in range(0, num_blocks, _CHUNK_BLOCKS):
        last = min(first + _CHUNK_BLOCKS, num_blocks)
        begin, end = first * BLOCK_SIZE, min(last * BLOCK_SIZE, numel)
        blocks = _padded_blocks(flat[begin:end].double())
        low, high = blocks.amin(dim=1), blocks.amax(dim=1)
        # The receiver decodes with a float32 min: round it down, so that no value lies below it and
        # each is off by at most half a sent step even where the data's min is not a float32.
        low32 = _float32_toward(low, -math.inf)
        scale32 = ((high - low32.double()) / 255).float()
        if not bool(torch.isfinite(low32).all() and torch.isfinite(scale32).all()):
            raise ValueError("UINT8 compression cannot carry values beyond the float32 range")
        scale32 = torch.where(scale32 > 0, scale32, torch.ones_like(scale32))  # constant blocks: exact
        steps = (blocks - low32.double()[:, None]) / scale32.double()[:, None]
        codes[begin:end] = steps.round_().clamp_(0, 255).to(torch.uint8).reshape(-1)[: end - begin]
        mins[first:last], scales[first:last] = low32, scale32
    return _raw_bytes(codes, "uint8"), _raw_bytes(mins, "float32") + _raw_bytes(scales, "float32")


def _dequantize(data: bytes | bytearray, extra: bytes | bytearray, dtype: torch.dtype) -> torch.Tensor:
    """Rebuild a flat tensor of ``dtype`` from UINT8 data and extra (lengths already checked)."""
    codes = _from_raw_bytes(data, "uint8")
    num_blocks = len(extra) // 8
    mins = _from_raw_bytes(extra[: 4 * num_blocks], "float32").double()
    scales = _from_raw_bytes(extra[4 * num_blocks :], "float32").double()
    if not bool(torch.isfinite(mins).all() and torch.isfinite(scales).all()):
        raise ValueError("extra holds a non-finite min or scale")
    out = torch.empty(codes.numel(), dtype=dtype)
    for first in range(0, num_blocks, _CHUNK_BLOCKS):
        last = min(first + _CHUNK_BLOCKS, num_blocks)
        begin, end = first * BLOCK_SIZE, min(last * BLOCK_SIZE, codes.numel())
        blocks = _padded_blocks(codes[begin:end].double())
        values = mins[first:last, None] + blocks * scales[first:last, None]
        out[begin:end] = values.reshape(-1)[: end - begin].to(dtype)
    return out


def _float32_toward(values: torch.Tensor, direction: float) -> torch.Tensor:
    """float64 ``values`` as float32, rounded toward ``direction`` (-inf or +inf) where inexact."""
    rounded = values.float()
    overshot = rounded.double() > values if direction < 0 else rounded.double() < values
    return torch.where(overshot, torch.nextafter(rounded, torch.full_like(rounded, direction)), rounded)


def _padded_blocks(flat: torch.Tensor) -> torch.Tensor:
    """``flat`` as rows of BLOCK_SIZE, the last one padded with its own last value."""
    padding = -flat.numel() % BLOCK_SIZE
    if padding:
        flat = torch.cat([flat, flat[-1:].expand(padding)])
    return flat.view(-1, BLOCK_SIZE)

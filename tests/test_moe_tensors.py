"""Tensor wire format: exact raw round trips, bounded lossy ones, and refusal of malformed input."""

from __future__ import annotations

import math

import msgpack
import numpy as np
import pytest
import torch

from hivemind_core.moe.tensors import (
    BLOCK_SIZE,
    MAX_TENSORS,
    Compression,
    NonFiniteTensor,
    deserialize_tensor,
    deserialize_tensors,
    serialize_tensor,
    serialize_tensors,
)

FLOAT_DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
INT_DTYPES = [torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8]
SHAPES = [(3, 5), (), (0,), (2, 0, 3), (1, 1, 1, 1, 1, 1, 1, 7)]


def sample(dtype: torch.dtype, shape: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    """Values covering the dtype's extremes (and NaN, Inf, -0.0 for floats) where the shape allows."""
    gen = torch.Generator().manual_seed(seed)
    numel = math.prod(shape)
    if dtype == torch.bool:
        return torch.rand(shape, generator=gen) < 0.5
    if dtype.is_floating_point:
        info = torch.finfo(dtype)
        values = torch.randn(numel, generator=gen, dtype=torch.float64) * 100
        special = [math.nan, math.inf, -math.inf, -0.0, info.max, info.min, info.tiny, info.eps]
    else:
        info = torch.iinfo(dtype)
        values = torch.randint(info.min, info.max, (numel,), generator=gen, dtype=torch.int64)
        special = [info.min, info.max, 0, -1 if info.min < 0 else 1]
    values = values.to(dtype)
    count = min(numel, len(special))
    values[:count] = torch.tensor(special[:count], dtype=torch.float64).to(dtype)
    return values.reshape(shape)


def bits(tensor: torch.Tensor) -> torch.Tensor:
    """The tensor's bit pattern, so NaN and -0.0 compare exactly."""
    if tensor.dtype.is_floating_point:
        return tensor.view({8: torch.int64, 4: torch.int32, 2: torch.int16}[tensor.element_size()])
    return tensor


def assert_identical(actual: torch.Tensor, expected: torch.Tensor) -> None:
    assert actual.dtype == expected.dtype
    assert actual.shape == expected.shape
    assert torch.equal(bits(actual), bits(expected.contiguous()))


def wire_round_trip(raw: list) -> list:
    return msgpack.unpackb(msgpack.packb(raw, use_bin_type=True), raw=False)


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("dtype", [*FLOAT_DTYPES, *INT_DTYPES, torch.bool], ids=str)
def test_none_round_trip_is_exact(dtype: torch.dtype, shape: tuple[int, ...]) -> None:
    tensor = sample(dtype, shape)
    raw = serialize_tensor(tensor)
    assert raw[0] == str(dtype).removeprefix("torch.")
    assert raw[1] == list(shape)
    assert raw[2] == "none"
    assert len(raw[3]) == tensor.numel() * tensor.element_size()
    assert raw[4] == b""
    assert_identical(deserialize_tensor(wire_round_trip(raw)), tensor)


def test_raw_bytes_are_little_endian() -> None:
    raw = serialize_tensor(torch.tensor([1, 256], dtype=torch.int32))
    assert raw[3] == b"\x01\x00\x00\x00\x00\x01\x00\x00"
    raw = serialize_tensor(torch.tensor([1.0], dtype=torch.bfloat16))
    assert raw[3] == b"\x80\x3f"  # bfloat16 1.0 is 0x3f80: the top half of float32 1.0


@pytest.mark.parametrize(
    "make_view",
    [
        lambda t: t.t(),
        lambda t: t[:, ::2],
        lambda t: t[1:, 1:3],
        lambda t: t[0].expand(4, 6),
        lambda t: t.unsqueeze(0).transpose(0, 2),
    ],
    ids=["transpose", "strided", "slice", "expanded", "3d-transpose"],
)
@pytest.mark.parametrize("compression", list(Compression), ids=str)
def test_non_contiguous_views(make_view, compression: Compression) -> None:
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    view = make_view(base)
    assert not view.is_contiguous()
    restored = deserialize_tensor(serialize_tensor(view, compression))
    # 0..23 are exact in float16/bfloat16; UINT8 is off by at most half a step of a range of 23.
    assert restored.shape == view.shape
    tolerance = 0.0 if compression is not Compression.UINT8 else 23 / 255 / 2 + 1e-6
    assert torch.allclose(restored, view, atol=tolerance, rtol=0)


def test_requires_grad_tensor_is_detached() -> None:
    tensor = torch.randn(5, requires_grad=True)
    restored = deserialize_tensor(serialize_tensor(tensor * 2))
    assert not restored.requires_grad
    assert torch.equal(restored, (tensor * 2).detach())


@pytest.mark.parametrize("compression", list(Compression), ids=str)
def test_result_is_writable_and_owns_its_memory(compression: Compression) -> None:
    tensor = torch.linspace(-1, 1, 100)
    raw = wire_round_trip(serialize_tensor(tensor, compression))
    data_before = bytes(raw[3])
    restored = deserialize_tensor(raw)
    restored.add_(1000)  # a read-only buffer would make torch warn, and warnings are errors here
    assert raw[3] == data_before
    assert torch.allclose(deserialize_tensor(raw), tensor, atol=0.01)


@pytest.mark.parametrize(
    ("compression", "wire_dtype"),
    [(Compression.FLOAT16, torch.float16), (Compression.BFLOAT16, torch.bfloat16)],
    ids=str,
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_half_precision_round_trip(compression: Compression, wire_dtype: torch.dtype, dtype) -> None:
    gen = torch.Generator().manual_seed(1)
    tensor = (torch.randn(3000, generator=gen, dtype=dtype) * 50).reshape(30, 100)
    raw = serialize_tensor(tensor, compression)
    assert raw[0] == str(dtype).removeprefix("torch.")
    assert raw[2] == compression.value
    assert len(raw[3]) == tensor.numel() * 2
    restored = deserialize_tensor(wire_round_trip(raw))
    assert restored.dtype == dtype and restored.shape == tensor.shape
    # Rounding to nearest loses at most half an ulp: 2**-11 relative for float16, 2**-8 for bfloat16.
    relative = ((restored - tensor).abs() / tensor.abs()).max().item()
    assert relative <= torch.finfo(wire_dtype).eps / 2
    assert relative > 0  # it really went through 16 bits
    assert torch.equal(restored, tensor.to(wire_dtype).to(dtype))


def test_float16_saturates_finite_values_and_passes_specials() -> None:
    tensor = torch.tensor([1e6, -1e6, math.inf, -math.inf, math.nan, 1.0])
    restored = deserialize_tensor(serialize_tensor(tensor, Compression.FLOAT16))
    assert restored[:4].tolist() == [65504.0, -65504.0, math.inf, -math.inf]
    assert math.isnan(restored[4].item()) and restored[5].item() == 1.0
    restored = deserialize_tensor(serialize_tensor(tensor, Compression.BFLOAT16))
    assert restored[2:4].tolist() == [math.inf, -math.inf] and math.isnan(restored[4].item())


@pytest.mark.parametrize("dtype", [*INT_DTYPES, torch.bool], ids=str)
@pytest.mark.parametrize("compression", list(Compression), ids=str)
def test_non_float_dtypes_are_always_raw(dtype: torch.dtype, compression: Compression) -> None:
    tensor = sample(dtype, (7, 3))
    raw = serialize_tensor(tensor, compression)
    assert raw[2] == "none"
    assert_identical(deserialize_tensor(raw), tensor)


@pytest.mark.parametrize(
    ("dtype", "compression"),
    [
        (torch.float16, Compression.FLOAT16),
        (torch.float16, Compression.BFLOAT16),
        (torch.bfloat16, Compression.BFLOAT16),
        (torch.bfloat16, Compression.FLOAT16),
    ],
    ids=str,
)
def test_16_bit_floats_are_not_recompressed_to_16_bits(dtype: torch.dtype, compression: Compression) -> None:
    tensor = sample(dtype, (10,))
    raw = serialize_tensor(tensor, compression)
    assert raw[2] == "none"
    assert_identical(deserialize_tensor(raw), tensor)


def test_uint8_error_is_within_half_a_step_of_each_block() -> None:
    gen = torch.Generator().manual_seed(2)
    ranges = [(0.0, 1e-3), (-1000.0, 1000.0), (5.0, 5.01), (-3.0, 7.0)]
    numel = 3 * BLOCK_SIZE + 1000  # the last block is partial
    tensor = torch.empty(numel)
    for index, (low, high) in enumerate(ranges):
        chunk = tensor[index * BLOCK_SIZE : (index + 1) * BLOCK_SIZE]
        chunk.copy_(torch.rand(chunk.numel(), generator=gen) * (high - low) + low)
    raw = serialize_tensor(tensor.reshape(-1, 1000 + 3 * BLOCK_SIZE), Compression.UINT8)
    assert raw[2] == "uint8" and len(raw[3]) == numel and len(raw[4]) == 8 * len(ranges)
    restored = deserialize_tensor(wire_round_trip(raw)).reshape(-1)
    assert restored.dtype == torch.float32
    mins, scales = sent_mins_and_scales(raw)
    for index in range(len(ranges)):
        block = slice(index * BLOCK_SIZE, (index + 1) * BLOCK_SIZE)
        original, decoded = tensor[block], restored[block]
        half_step = (original.max() - original.min()).item() / 255 / 2
        error = (decoded - original).abs().max().item()
        assert error <= half_step * (1 + 1e-4) + 1e-7 * original.abs().max().item(), index
        assert error > half_step / 4, index  # it really is quantized, at this block's own scale
        assert mins[index].item() == original.min().item()
        assert scales[index].item() == pytest.approx(2 * half_step, rel=1e-6)
    # One scale for all blocks would give block 0 an error of ~4 (2000 / 255 / 2); it stays tiny.
    assert (restored[:BLOCK_SIZE] - tensor[:BLOCK_SIZE]).abs().max().item() < 3e-6


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
def test_uint8_restores_every_float_dtype(dtype: torch.dtype) -> None:
    tensor = torch.linspace(-2, 2, 5000, dtype=torch.float64).to(dtype)
    raw = serialize_tensor(tensor, Compression.UINT8)
    assert raw[0] == str(dtype).removeprefix("torch.") and raw[2] == "uint8"
    restored = deserialize_tensor(raw)
    assert restored.dtype == dtype
    step = 4 / 255
    assert (restored.double() - tensor.double()).abs().max().item() <= step / 2 + torch.finfo(dtype).eps * 2


def sent_mins_and_scales(raw: list) -> tuple[torch.Tensor, torch.Tensor]:
    """The float32 per-block mins and scales a UINT8 tensor carries in ``extra``."""
    values = torch.from_numpy(np.frombuffer(raw[4], dtype="<f4").copy())
    return values[: values.numel() // 2], values[values.numel() // 2 :]


def test_uint8_float64_error_bound_survives_float32_min_and_scale() -> None:
    # 0.1 is not a float32: the sent min is rounded down and the error still stays within half a
    # sent step, which is within 1% of half the data's own step.
    gen = torch.Generator().manual_seed(4)
    tensor = 0.1 + torch.rand(2 * BLOCK_SIZE, generator=gen, dtype=torch.float64) * 1e-6
    tensor[0], tensor[-1] = 0.1, 0.1 + 1e-6
    raw = serialize_tensor(tensor, Compression.UINT8)
    mins, scales = sent_mins_and_scales(raw)
    error = (deserialize_tensor(raw) - tensor).abs().reshape(2, BLOCK_SIZE).amax(dim=1)
    assert (mins.double() <= 0.1).all()
    assert (error <= scales.double() / 2 * (1 + 1e-9)).all()
    assert (error <= 1e-6 / 255 / 2 * 1.01).all()


@pytest.mark.parametrize("shape", [(10_000,), (3, 7), (), (0,)], ids=str)
def test_uint8_constant_tensor_is_exact(shape: tuple[int, ...]) -> None:
    tensor = torch.full(shape, -3.14159)
    raw = serialize_tensor(tensor, Compression.UINT8)
    assert raw[2] == "uint8"
    mins, scales = sent_mins_and_scales(raw)
    assert (mins == -3.14159).all() and (scales == 1.0).all()  # the spec's scale for max == min
    assert_identical(deserialize_tensor(wire_round_trip(raw)), tensor)


def test_uint8_block_boundaries_are_exact_for_two_level_blocks() -> None:
    # Each block holds just its min and max, so both are hit exactly whatever the block's range.
    tensor = torch.tensor([0.0, 1.0] * BLOCK_SIZE + [-7.5, 1e4, 3.0])
    tensor[BLOCK_SIZE : 2 * BLOCK_SIZE] *= 1e-3
    restored = deserialize_tensor(serialize_tensor(tensor, Compression.UINT8))
    assert torch.allclose(restored[:-1], tensor[:-1], rtol=1e-6, atol=0)
    assert restored[-1].item() == pytest.approx(3.0, abs=(1e4 + 7.5) / 255 / 2)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_uint8_refuses_nan_and_inf(bad: float) -> None:
    tensor = torch.zeros(10_000)
    tensor[5000] = bad
    with pytest.raises(ValueError, match="NaN or Inf"):
        serialize_tensor(tensor, Compression.UINT8)
    for compression in (Compression.NONE, Compression.FLOAT16, Compression.BFLOAT16):
        restored = deserialize_tensor(serialize_tensor(tensor, compression))
        assert restored.isnan().sum().item() == int(math.isnan(bad))
        assert restored.isinf().sum().item() == int(math.isinf(bad))


def test_uint8_refuses_float64_beyond_float32_range() -> None:
    with pytest.raises(ValueError, match="float32 range"):
        serialize_tensor(torch.tensor([0.0, 1e300], dtype=torch.float64), Compression.UINT8)


def test_wire_sizes() -> None:
    tensor = torch.randn(1_000_000, generator=torch.Generator().manual_seed(3))
    sizes = {c: len(msgpack.packb(serialize_tensor(tensor, c), use_bin_type=True)) for c in Compression}
    assert sizes[Compression.NONE] == pytest.approx(4_000_000, abs=100)
    assert sizes[Compression.FLOAT16] / sizes[Compression.NONE] == pytest.approx(0.5, abs=0.001)
    assert sizes[Compression.BFLOAT16] / sizes[Compression.NONE] == pytest.approx(0.5, abs=0.001)
    # One byte an element plus 8 bytes (min and scale) per 4096-element block.
    blocks = -(-1_000_000 // BLOCK_SIZE)
    assert sizes[Compression.UINT8] == pytest.approx(1_000_000 + 8 * blocks, abs=100)
    assert sizes[Compression.UINT8] / sizes[Compression.NONE] == pytest.approx(0.25, abs=0.002)


def valid(dtype: str = "float32", shape: list | None = None) -> list:
    tensor = torch.ones(shape if shape is not None else [4], dtype=getattr(torch, dtype))
    return serialize_tensor(tensor)


def replaced(raw: list, index: int, value: object) -> list:
    raw = list(raw)
    raw[index] = value
    return raw


MALFORMED = {
    "not a list": (b"abc", "5-item list"),
    "dict": ({"dtype": "float32"}, "5-item list"),
    "four items": (valid()[:4], "5-item list"),
    "six items": ([*valid(), b""], "5-item list"),
    "unknown dtype": (replaced(valid(), 0, "complex64"), "unknown dtype 'complex64'"),
    "dtype not a string": (replaced(valid(), 0, 7), "unknown dtype 7"),
    "shape not a list": (replaced(valid(), 1, 4), "shape must be a list"),
    "negative dim": (replaced(valid(), 1, [-4]), "non-negative ints, got \\[-4\\]"),
    "float dim": (replaced(valid(), 1, [4.0]), "non-negative ints"),
    "bool dim": (replaced(valid(), 1, [True, 4]), "non-negative ints"),
    "string dim": (replaced(valid(), 1, ["4"]), "non-negative ints"),
    "nine dims": (replaced(valid(), 1, [1] * 9), "at most 8"),
    "huge dim in empty tensor": (replaced(valid(), 1, [0, 2**63]), "non-negative ints"),
    "unknown compression": (replaced(valid(), 2, "zstd"), "unknown compression 'zstd'"),
    "compression not a string": (replaced(valid(), 2, None), "unknown compression None"),
    "compressed int": (replaced(valid("int64"), 2, "uint8"), "only to floating-point dtypes, not int64"),
    "data not bytes": (replaced(valid(), 3, "\x00" * 16), "data and extra must be bytes"),
    "extra not bytes": (replaced(valid(), 4, None), "data and extra must be bytes"),
    "short data": (replaced(valid(), 3, b"\x00" * 12), "data is 12 bytes, expected 16"),
    "long data": (replaced(valid(), 3, b"\x00" * 20), "data is 20 bytes, expected 16"),
    "float16 data length": (replaced(valid(), 2, "float16"), "data is 16 bytes, expected 8"),
    "uint8 data length": (replaced(valid(), 2, "uint8"), "data is 16 bytes, expected 4"),
    "uint8 missing extra": (
        ["float32", [4], "uint8", b"\x00" * 4, b""],
        "extra is 0 bytes, expected 8",
    ),
    "uint8 extra too long": (
        ["float32", [4], "uint8", b"\x00" * 4, b"\x00" * 16],
        "extra is 16 bytes, expected 8",
    ),
    "extra with raw data": (replaced(valid(), 4, b"\x00"), "extra is 1 bytes, expected 0"),
    "nan scale": (
        ["float32", [4], "uint8", b"\x00" * 4, b"\x00" * 4 + b"\x00\x00\xc0\x7f"],
        "non-finite min or scale",
    ),
    "bool byte 2": (["bool", [3], "none", b"\x00\x01\x02", b""], "bool data must hold only bytes 0 and 1"),
}


@pytest.mark.parametrize(("raw", "match"), MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_input_is_refused(raw: object, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        deserialize_tensor(raw)
    if isinstance(raw, list):
        with pytest.raises(ValueError, match=match):
            deserialize_tensor(wire_round_trip(raw))


def test_max_elements_is_enforced_before_allocating() -> None:
    # 2**80 elements would exhaust any machine; the refusal names the count, not the data length,
    # so it came before the data was looked at.
    with pytest.raises(ValueError, match=r"has 1208925819614629174706176 elements, more than the 268435456"):
        deserialize_tensor(["float32", [2**10] * 8, "none", b"", b""])
    with pytest.raises(ValueError, match="more than the 10 allowed"):
        deserialize_tensor(["uint8", [11], "none", b"\x00" * 11, b""], max_elements=10)
    # UINT8 data of 2**27 bytes would decode to 2**30 bytes of float64.
    with pytest.raises(ValueError, match="more than the 1000 allowed"):
        deserialize_tensor(["float64", [2**27], "uint8", b"", b""], max_elements=1000)
    assert deserialize_tensor(["uint8", [10], "none", b"\x00" * 10, b""], max_elements=10).numel() == 10


def test_serialize_refuses_unsupported_tensors() -> None:
    with pytest.raises(ValueError, match=r"cannot serialize dtype torch\.complex64"):
        serialize_tensor(torch.zeros(2, dtype=torch.complex64))
    with pytest.raises(ValueError, match="dense torch tensors"):
        serialize_tensor(torch.zeros(2, 2).to_sparse())
    with pytest.raises(ValueError, match="dense torch tensors"):
        serialize_tensor([1.0, 2.0])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="is not a valid Compression"):
        serialize_tensor(torch.zeros(2), "zstd")  # type: ignore[arg-type]


def test_compression_values_pack_as_plain_strings() -> None:
    assert [c.value for c in Compression] == ["none", "float16", "bfloat16", "uint8"]
    assert isinstance(Compression.UINT8, str)
    assert msgpack.packb(Compression.UINT8) == msgpack.packb("uint8")
    assert serialize_tensor(torch.zeros(1), "float16")[2] == "float16"


def test_tensor_lists_round_trip() -> None:
    tensors = [torch.randn(3, 4), torch.arange(5), torch.tensor(True), torch.zeros(0, 2, dtype=torch.float16)]
    raw = wire_round_trip(serialize_tensors(tensors, Compression.FLOAT16))
    assert [item[2] for item in raw] == ["float16", "none", "none", "none"]
    restored = deserialize_tensors(raw)
    assert len(restored) == len(tensors)
    assert torch.equal(restored[0], tensors[0].half().float())
    for actual, expected in zip(restored[1:], tensors[1:], strict=True):
        assert_identical(actual, expected)
    assert deserialize_tensors(serialize_tensors([])) == []


def test_tensor_lists_report_the_bad_index() -> None:
    raw = serialize_tensors([torch.zeros(2), torch.zeros(3), torch.zeros(4)])
    raw[2][3] = b"\x00" * 12
    with pytest.raises(ValueError, match=r"^tensor 2: data is 12 bytes, expected 16$"):
        deserialize_tensors(raw)
    raw[1] = "garbage"
    with pytest.raises(ValueError, match=r"^tensor 1: a serialized tensor must be a 5-item list"):
        deserialize_tensors(raw)
    with pytest.raises(ValueError, match="must be a list, got bytes"):
        deserialize_tensors(b"\x00")


def test_tensor_lists_are_capped() -> None:
    with pytest.raises(ValueError, match=f"65 tensors, more than the {MAX_TENSORS} allowed"):
        serialize_tensors([torch.zeros(1)] * 65)
    assert len(deserialize_tensors(serialize_tensors([torch.zeros(1)] * MAX_TENSORS))) == MAX_TENSORS
    with pytest.raises(ValueError, match=f"65 tensors, more than the {MAX_TENSORS} allowed"):
        deserialize_tensors([serialize_tensor(torch.zeros(1))] * 65)


def test_tensor_list_max_elements_is_a_total() -> None:
    raw = serialize_tensors([torch.zeros(6), torch.zeros(6)])
    assert len(deserialize_tensors(raw, max_elements=12)) == 2
    with pytest.raises(ValueError, match=r"^tensor 1: shape \[6\] has 6 elements, more than the 4 allowed"):
        deserialize_tensors(raw, max_elements=10)


@pytest.mark.parametrize("compression", list(Compression), ids=str)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_finite_refuses_nan_and_inf_once_decoded(
    dtype: torch.dtype, compression: Compression, bad: float
) -> None:
    tensor = torch.zeros(3, 5, dtype=dtype)
    assert_identical(deserialize_tensor(serialize_tensor(tensor, compression), finite=True), tensor)
    tensor[1, 2] = bad
    if compression is Compression.UINT8:  # the sender already refuses it
        return
    raw = wire_round_trip(serialize_tensor(tensor, compression))
    with pytest.raises(NonFiniteTensor, match="NaN or infinite"):
        deserialize_tensor(raw, finite=True)
    with pytest.raises(NonFiniteTensor, match="tensor 1: contains NaN or infinite"):
        deserialize_tensors([serialize_tensor(torch.ones(2)), raw], finite=True)
    assert deserialize_tensor(raw).isfinite().sum().item() == 14  # without finite, as sent


def test_finite_refuses_uint8_blocks_that_decode_past_the_float32_range() -> None:
    raw = serialize_tensor(torch.zeros(BLOCK_SIZE), Compression.UINT8)
    codes = bytearray(raw[3])
    codes[0] = 255
    mins_and_scales = np.frombuffer(raw[4], dtype="<f4").copy()
    mins_and_scales[1] = np.finfo(np.float32).max  # a finite scale: 255 steps of it overflow float32
    forged = [raw[0], raw[1], raw[2], bytes(codes), mins_and_scales.tobytes()]
    with pytest.raises(NonFiniteTensor):
        deserialize_tensor(forged, finite=True)


def test_finite_passes_integers_through_unchecked() -> None:
    tensor = torch.tensor([[-1, 0, 2**40]])
    assert_identical(deserialize_tensor(serialize_tensor(tensor), finite=True), tensor)

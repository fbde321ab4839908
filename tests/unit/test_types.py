"""Types in text: `str(type)` parses back to an equal type, and bad types are `ParseError`s."""

from __future__ import annotations

import itertools

import pytest

from kiln.errors import ParseError
from kiln.ir.parser import parse_dtype, parse_type
from kiln.ir.types import (
    BF16,
    BOOL,
    F16,
    F32,
    F64,
    I8,
    I16,
    I32,
    I64,
    ROUNDING_MODES,
    SATURATION_MODES,
    U8,
    FixedType,
    QuantType,
    SparseEncoding,
    TensorType,
)

SCALARS = [F32, F16, BF16, F64, I8, U8, I16, I32, I64, BOOL]


def roundtrip(t: TensorType) -> None:
    text = str(t)
    assert parse_type(text) == t
    assert str(parse_type(text)) == text


@pytest.mark.parametrize("dtype", SCALARS, ids=str)
def test_every_scalar_dtype(dtype: object) -> None:
    for shape in [(), (1,), (2, 3), (1, 1, 8, 8), (0, 4)]:
        roundtrip(TensorType(shape, dtype))  # type: ignore[arg-type]
        assert parse_dtype(str(dtype)) == dtype


def test_rank0_text() -> None:
    assert parse_type("tensor<f32>") == TensorType((), F32)
    assert str(TensorType((), I8)) == "tensor<i8>"


def test_fixed_every_mode() -> None:
    for signed, rounding, saturation in itertools.product(
            (True, False), ROUNDING_MODES, SATURATION_MODES):
        dtype = FixedType(16, 6, signed, rounding, saturation)
        assert parse_dtype(str(dtype)) == dtype
        roundtrip(TensorType((4, 4), dtype))
    assert parse_type("tensor<4x4xfixed<16,6>>") == TensorType((4, 4), FixedType(16, 6))
    assert parse_dtype("fixed<8,-2>") == FixedType(8, -2)
    assert parse_dtype("fixed< 8 , 3 , unsigned >") == FixedType(8, 3, signed=False)


@pytest.mark.parametrize("scale", [0.05, 0.1, 1e-05, 1 / 3, 3.0517578125e-05, 2.0, 1e20])
def test_quant_per_tensor(scale: float) -> None:
    for storage, zp in [(I8, 0), (I8, -128), (U8, 255), (I32, 7)]:
        dtype = QuantType(storage, (scale,), (zp,))
        assert parse_dtype(str(dtype)) == dtype
        roundtrip(TensorType((8,), dtype))


def test_quant_per_channel() -> None:
    dtype = QuantType(I8, (0.1, 0.2, 1 / 7), (0, -3, 5), axis=0)
    assert str(dtype) == f"q<i8, [0.1, 0.2, {1 / 7!r}], [0, -3, 5], axis=0>"
    roundtrip(TensorType((3, 4), dtype))
    roundtrip(TensorType((3, 4), QuantType(U8, (0.5,), (128,), axis=1)))


@pytest.mark.parametrize("encoding", [SparseEncoding("csr"), SparseEncoding("nm", (2, 4)),
                                      SparseEncoding("block", (4, 4)),
                                      SparseEncoding("block", (1, 8))], ids=str)
def test_sparse_encodings(encoding: SparseEncoding) -> None:
    roundtrip(TensorType((16, 32), F32, encoding))
    roundtrip(TensorType((16, 32), QuantType(I8, (0.05,), (0,)), encoding))


def test_blanks_and_comments_inside_types_are_accepted() -> None:
    assert parse_type(" tensor< 2 x 3 x f32 > ") == TensorType((2, 3), F32)
    assert parse_type("tensor<16x32xf32,nm<2,4>>") == TensorType(
        (16, 32), F32, SparseEncoding("nm", (2, 4)))
    assert parse_dtype("q<i8,[0.1,0.2],[0,0],axis=0>") == QuantType(I8, (0.1, 0.2), (0, 0), 0)


@pytest.mark.parametrize("text", [
    "", "tensor", "tensor<", "tensor<2x>", "tensor<2x3>", "tensor<2xf33>", "tensor<-2xf32>",
    "tensor<2xf32", "tensor<2xf32>>", "tensr<2xf32>", "tensor<2xfixed<99,1>>",
    "tensor<2xfixed<8,1,maybe>>", "tensor<2xfixed<8,1,signed,rnd,nope>>",
    "tensor<2xq<f32, 0.1, 0>>", "tensor<2xq<i8, -1.0, 0>>", "tensor<2xq<i8, 0.1, 300>>",
    "tensor<2xq<i8, [0.1, 0.2], [0, 0]>>", "tensor<2xq<i8, nan, 0>>", "tensor<2xq<i8, 0.1>>",
    "tensor<2xf32, nm<2>>", "tensor<2xf32, dense>", "tensor<2xf32, block<0,4>>",
    "tensor<" + "9" * 200 + "xf32>", "tensor<2xq<i8, 0.1, 0, axis=>>",
])
def test_bad_types_are_parse_errors(text: str) -> None:
    with pytest.raises(ParseError) as info:
        parse_type(text)
    message = str(info.value)
    assert "1:" in message and "^" in message


def test_error_points_at_the_column() -> None:
    with pytest.raises(ParseError) as info:
        parse_type("tensor<2x3xf33>")
    message = str(info.value)
    assert "1:12: unknown element type 'f33'" in message
    assert "tensor<2x3xf33>\n" + " " * 13 + "^" in message

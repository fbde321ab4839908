"""The integer ops (`kiln.q*`) and their fixed-point arithmetic, bit for bit.

Every op's reference is compared with the independent re-implementation in `qnn_numpy.py` on
random operands (random zero points, per-channel scales, clamps, conv geometries), and the
requantization helpers with exact rational arithmetic.
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
import qnn_numpy

from kiln.errors import KilnError
from kiln.ir import requant
from kiln.ir.graph import Module
from kiln.ir.interpret import interpret
from kiln.ir.ops import qnn, qnn_pool
from kiln.ir.ops.base import OpDef, OpError
from kiln.ir.parser import parse
from kiln.ir.types import I8, I32, U8, QuantType, ScalarType, TensorType


# -- requantization arithmetic -----------------------------------------------------------------
@pytest.mark.parametrize(("real", "expected"), [
    (0.5, (1 << 30, 0)), (1.0, (1 << 30, 1)), (0.25, (1 << 30, -1)), (0.75, (3 << 29, 0)),
    (0.0, (0, 0)), (2.0 ** -40, (0, 0)), (2.0 ** -32, (1 << 30, -31)),
])
def test_quantize_multiplier_known_values(real: float, expected: tuple[int, int]) -> None:
    assert requant.quantize_multiplier(real) == expected


def test_quantize_multiplier_is_the_nearest_31_bit_mantissa(rng: np.random.Generator) -> None:
    for real in np.exp(rng.uniform(math.log(1e-9), math.log(1e6), 500)):
        m, e = requant.quantize_multiplier(float(real))
        assert requant.MULTIPLIER_MIN <= m <= requant.INT32_MAX
        assert abs(Fraction(m) * Fraction(2) ** (e - 31) - Fraction(float(real))) \
            <= Fraction(2) ** (e - 32)


def test_quantize_multiplier_rejects_what_32_bits_cannot_hold() -> None:
    for bad in (2.0 ** 30, -0.5, math.inf, math.nan):
        with pytest.raises(KilnError):
            requant.quantize_multiplier(bad)


def test_rounding_mul_shift_rounds_to_nearest_ties_up(rng: np.random.Generator) -> None:
    x = rng.integers(-(2**31), 2**31, 2000)
    m = rng.integers(2**30, 2**31, 2000)
    e = rng.integers(-31, 31, 2000)
    got = requant.rounding_mul_shift(x, m, e)
    for xi, mi, ei, gi in zip(x, m, e, got):
        exact = Fraction(int(xi) * int(mi), 2 ** (31 - int(ei)))
        assert gi == math.floor(exact + Fraction(1, 2))
    assert requant.rounding_mul_shift(np.array([1, -1, 3, -3]), 1 << 30, 0).tolist() == \
        [1, 0, 2, -1]  # ±0.5 → 1, 0 and ±1.5 → 2, -1: ties toward +infinity


def test_rounding_divide_rounds_half_away_from_zero(rng: np.random.Generator) -> None:
    s = rng.integers(-10_000, 10_000, 3000)
    c = rng.integers(1, 50, 3000)
    got = requant.rounding_divide(s, c)
    assert got.tolist() == [qnn_numpy.round_div(int(a), int(b)) for a, b in zip(s, c)]
    assert requant.rounding_divide(np.array([5, -5, 3, -3]), np.array(2)).tolist() == \
        [3, -3, 2, -2]


def test_requantize_wraps_the_accumulator_to_int32() -> None:
    acc = np.array([2**31 + 5, -(2**31) - 1], np.int64)  # wrap to -2^31 + 5 and 2^31 - 1
    got = requant.requantize_output(acc, np.array(1 << 30), np.array(1), 0, -(2**40), 2**40,
                                    np.int64)
    assert got.tolist() == [-(2**31) + 5, 2**31 - 1]


# -- random operands ---------------------------------------------------------------------------
def qtype(rng: np.random.Generator, storage: ScalarType = U8) -> QuantType:
    info = np.iinfo(storage.numpy)
    zp = int(rng.integers(info.min, info.max + 1))
    return QuantType(storage, (float(np.float32(rng.uniform(0.01, 0.1))),), (zp,))


def weight_qtype(rng: np.random.Generator, channels: int, axis: int | None,
                 zero_points: bool = False) -> QuantType:
    n = channels if axis is not None else 1
    scales = tuple(float(np.float32(s)) for s in rng.uniform(0.001, 0.02, n))
    zps = tuple(int(z) for z in rng.integers(-5, 6, n)) if zero_points else (0,) * n
    return QuantType(I8, scales, zps, axis)


def stored(rng: np.random.Generator, shape: tuple[int, ...], t: QuantType) -> np.ndarray:
    info = np.iinfo(t.storage.numpy)
    return rng.integers(info.min, info.max + 1, shape).astype(t.storage.numpy)


def requant_attrs(rng: np.random.Generator, channels: int, to: QuantType,
                  relu: bool) -> dict[str, object]:
    reals = rng.uniform(1e-4, 2e-3, channels)
    multiplier, shift = requant.quantize_multipliers(reals)
    low = to.zero_point[0] if relu else None
    return {"to": to, "multiplier": multiplier, "shift": shift, "clamp_min": low}


def check(kind: OpDef, types: list[TensorType], args: list[np.ndarray]) -> None:
    """The op's reference equals the independent implementation, bit for bit."""
    (result,) = kind.infer_type(types)
    (got,) = kind.reference_typed(types, *args)
    assert got.dtype == result.numpy_dtype and got.shape == result.shape
    want = qnn_numpy.INTEGER_OPS[type(kind)](types, args, kind)  # type: ignore[index]
    np.testing.assert_array_equal(got, want)


CONV_CASES = [  # (N, C, H, W, O, k, stride, padding, dilation, groups)
    (2, 3, 7, 6, 4, 3, (1, 1), (1, 1, 1, 1), (1, 1), 1),
    (1, 4, 9, 9, 6, 3, (2, 2), (0, 1, 2, 0), (1, 1), 2),
    (2, 4, 8, 8, 4, 3, (1, 2), (2, 2, 2, 2), (2, 1), 4),  # depthwise, dilated
    (1, 8, 5, 5, 16, 1, (1, 1), (0, 0, 0, 0), (1, 1), 1),
]


@pytest.mark.parametrize("case", CONV_CASES)
@pytest.mark.parametrize("per_channel", [True, False])
def test_qconv2d(case: tuple, per_channel: bool, rng: np.random.Generator) -> None:
    n, c, h, w, o, k, stride, padding, dilation, groups = case
    qx, q_out = qtype(rng, U8), qtype(rng, I8)
    qw = weight_qtype(rng, o, 0 if per_channel else None, zero_points=True)
    types = [TensorType((n, c, h, w), qx), TensorType((o, c // groups, k, k), qw),
             TensorType((o,), I32)]
    args = [stored(rng, t.shape, t.dtype) for t in types[:2]]  # type: ignore[arg-type]
    args.append(rng.integers(-5000, 5000, o).astype(np.int32))
    kind = qnn.QConv2d(stride=stride, padding=padding, dilation=dilation, groups=groups,
                       **requant_attrs(rng, o if per_channel else 1, q_out, relu=True))
    check(kind, types, args)


def test_qconv1d(rng: np.random.Generator) -> None:
    qx, q_out, qw = qtype(rng, I8), qtype(rng, U8), weight_qtype(rng, 5, 0)
    types = [TensorType((2, 3, 17), qx), TensorType((5, 3, 4), qw)]
    args = [stored(rng, t.shape, t.dtype) for t in types]  # type: ignore[arg-type]
    kind = qnn.QConv1d(stride=(2,), padding=(3, 1), dilation=(2,),
                       **requant_attrs(rng, 5, q_out, relu=False))
    check(kind, types, args)


@pytest.mark.parametrize("batch", [(3,), (2, 4)])
def test_qlinear(batch: tuple[int, ...], rng: np.random.Generator) -> None:
    qx, q_out, qw = qtype(rng, U8), qtype(rng, U8), weight_qtype(rng, 7, 0)
    types = [TensorType((*batch, 20), qx), TensorType((7, 20), qw), TensorType((7,), I32)]
    args = [stored(rng, t.shape, t.dtype) for t in types[:2]]  # type: ignore[arg-type]
    args.append(rng.integers(-2**20, 2**20, 7).astype(np.int32))
    kind = qnn.QLinear(**requant_attrs(rng, 7, q_out, relu=True))  # type: ignore[arg-type]
    check(kind, types, args)


@pytest.mark.parametrize("per_column", [True, False])
def test_qmatmul(per_column: bool, rng: np.random.Generator) -> None:
    qa, q_out = qtype(rng, I8), qtype(rng, I8)
    qb = weight_qtype(rng, 6, 2 if per_column else None)
    types = [TensorType((2, 4, 9), qa), TensorType((2, 9, 6), qb)]
    args = [stored(rng, t.shape, t.dtype) for t in types]  # type: ignore[arg-type]
    kind = qnn.QMatMul(**requant_attrs(rng, 6 if per_column else 1, q_out,  # type: ignore
                                       relu=False))
    check(kind, types, args)


def test_qadd_broadcasts_and_clamps(rng: np.random.Generator) -> None:
    qa, qb, q_out = qtype(rng, U8), qtype(rng, I8), qtype(rng, U8)
    (ma, mb, mo), (ea, eb, eo) = requant.quantize_multipliers([0.5, 0.3, 0.002])
    kind = qnn.QAdd(to=q_out, multiplier=(mo,), shift=(eo,), lhs_multiplier=ma, lhs_shift=ea,
                    rhs_multiplier=mb, rhs_shift=eb, clamp_min=q_out.zero_point[0])
    types = [TensorType((2, 3, 4), qa), TensorType((3, 1), qb)]
    check(kind, types, [stored(rng, t.shape, t.dtype) for t in types])  # type: ignore


def test_qrescale(rng: np.random.Generator) -> None:
    qx, q_out = qtype(rng, U8), qtype(rng, I8)
    m, e = requant.quantize_multiplier(qx.scale[0] / q_out.scale[0])
    kind = qnn.QRescale(to=q_out, multiplier=(m,), shift=(e,))
    types = [TensorType((4, 5), qx)]
    check(kind, types, [stored(rng, (4, 5), qx)])


@pytest.mark.parametrize(("kernel", "stride", "padding", "ceil", "include"), [
    ((2, 2), (2, 2), (0, 0, 0, 0), False, True),
    ((3, 3), (2, 2), (1, 1, 1, 1), True, True),
    ((3, 2), (1, 2), (1, 0, 1, 1), True, False),
])
def test_qavg_pool2d(kernel: tuple, stride: tuple, padding: tuple, ceil: bool, include: bool,
                     rng: np.random.Generator) -> None:
    qx = qtype(rng, I8)
    kind = qnn_pool.QAvgPool2d(kernel=kernel, stride=stride, padding=padding, ceil_mode=ceil,
                               count_include_pad=include)
    types = [TensorType((2, 3, 7, 6), qx)]
    check(kind, types, [stored(rng, (2, 3, 7, 6), qx)])


def test_qavg_pool1d_is_qavg_pool2d_of_height_one(rng: np.random.Generator) -> None:
    qx = qtype(rng, U8)
    x = stored(rng, (2, 3, 11), qx)
    one = qnn_pool.QAvgPool1d(kernel=(4,), stride=(3,), padding=(2, 1), ceil_mode=True,
                              count_include_pad=False)
    two = qnn_pool.QAvgPool2d(kernel=(1, 4), stride=(1, 3), padding=(0, 2, 0, 1),
                              ceil_mode=True, count_include_pad=False)
    (got,) = one.reference_typed([TensorType(x.shape, qx)], x)
    (want,) = two.reference_typed([TensorType((2, 3, 1, 11), qx)], x[:, :, None, :])
    np.testing.assert_array_equal(got, want[:, :, 0, :])


@pytest.mark.parametrize("keepdims", [True, False])
def test_qreduce_mean(keepdims: bool, rng: np.random.Generator) -> None:
    qx = qtype(rng, U8)
    kind = qnn_pool.QReduceMean(axes=(2, 3), keepdims=keepdims)
    types = [TensorType((2, 3, 5, 4), qx)]
    check(kind, types, [stored(rng, (2, 3, 5, 4), qx)])


# -- checks and text ---------------------------------------------------------------------------
def test_ops_reject_bad_operands_and_attributes() -> None:
    q = QuantType(U8, (0.1,), (3,))
    w = QuantType(I8, (0.01,), (0,))
    x_t, w_t = TensorType((1, 2, 4, 4), q), TensorType((3, 2, 1, 1), w)
    good = {"to": q, "multiplier": (1 << 30,), "shift": (-3,)}
    bad_cases: list[tuple[OpDef, list[TensorType], str]] = [
        (qnn.QConv2d(**good), [TensorType((1, 2, 4, 4)), w_t], "must be a quantized"),  # type: ignore
        (qnn.QConv2d(**{**good, "multiplier": (5,)}), [x_t, w_t], "multiplier 5"),  # type: ignore
        (qnn.QConv2d(**{**good, "shift": (40,)}), [x_t, w_t], "shift 40"),  # type: ignore
        (qnn.QConv2d(**good, clamp_min=10, clamp_max=5), [x_t, w_t], "clamp"),  # type: ignore
        (qnn.QConv2d(**{**good, "multiplier": (1 << 30,) * 2, "shift": (0, 0)}), [x_t, w_t],
         "2 multipliers"),  # type: ignore
        (qnn.QConv2d(**good), [x_t, w_t, TensorType((3,))], "bias must be"),  # type: ignore
        (qnn.QLinear(**good), [TensorType((2, 4), QuantType(I32, (1.0,), (0,))),  # type: ignore
                               TensorType((3, 4), w)], "8-bit storage"),
    ]
    for kind, types, message in bad_cases:
        with pytest.raises(OpError, match=message):
            kind.infer_type(types)


def test_quantized_module_prints_parses_and_interprets(rng: np.random.Generator) -> None:
    text = """
kiln.module @m {
  kiln.func @forward(%x: tensor<1x2x3x3xf32>) -> (tensor<1x4x3x3xf32>) {
    %xq = kiln.quantize(%x) {to = q<u8, 0.02, 128>} : tensor<1x2x3x3xq<u8, 0.02, 128>>
    %w = kiln.weight @w : tensor<4x2x1x1xq<i8, [0.01, 0.02, 0.01, 0.03], [0, 0, 0, 0], axis=0>>
    %b = kiln.weight @b : tensor<4xi32>
    %y = kiln.qconv2d(%xq, %w, %b) {clamp_min = 128, multiplier = [1073741824], shift = [-1], to = q<u8, 0.05, 128>} : tensor<1x4x3x3xq<u8, 0.05, 128>>
    %p = kiln.qavg_pool2d(%y) {kernel = [3, 3], padding = [1, 1, 1, 1], stride = [1, 1]} : tensor<1x4x3x3xq<u8, 0.05, 128>>
    %d = kiln.dequantize(%p) : tensor<1x4x3x3xf32>
    kiln.return %d
  }
}
"""  # noqa: E501
    weights = {"w": rng.integers(-127, 128, (4, 2, 1, 1)).astype(np.int8),
               "b": rng.integers(-100, 100, 4).astype(np.int32)}
    module: Module = parse(text, weights)
    assert parse(module.to_text(), weights).to_text() == module.to_text()
    (out,) = interpret(module, rng.standard_normal((1, 2, 3, 3)).astype(np.float32))
    assert out.dtype == np.float32 and np.all(out >= 0)  # clamp_min = zero point: relu

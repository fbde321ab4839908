"""Exact arithmetic on `fixed<W,I>` tensors: result-type rules and the integer references.

The ops (`kiln.ir.ops.*`) call these when their operands are fixed point. Every rule yields a
type that holds the exact result, so integer arithmetic can never overflow; a later
`kiln.requantize` narrows it with its own rounding and saturation. The rules are ap_fixed's
(`ap_fixed_base.h`, `RType`), so HLS code that writes the same expressions gets the same types:

- product `a · b`: `fixed<Wa+Wb, Ia+Ib>`, signed if either is;
- sum / difference `a ± b`: F = max(Fa, Fb), I = max(Ia + [b signed, a not],
  Ib + [a signed, b not]) + 1, W = I + F; signed if either is (a difference always is);
- a sum of K values of type t (a dot product's accumulator, `reduce_sum`, a pool's window
  sum): `fixed<W+g, I+g>` with g = ceil(log2 K) (no bits for K = 1);
- conv / linear / matmul: the K-term sum of `x · w` products (K = inputs per output:
  C_in/groups · kernel size, or the contracted length), then `+ bias` by the sum rule;
- maximum / minimum: the smallest type holding both (F = max, I = max with the sign bit
  rule above); relu, relu6, clamp, leaky_relu, max pools, shape ops: the input's type;
- average pools and `reduce_mean`: the input's type; the exact quotient sum / count is rounded
  with that type's rounding mode (`trn`: floor, `rnd`: half up, ...), computed by integer
  division (hls4ml multiplies by a rounded reciprocal instead; kiln's choice is exact, and an
  HLS emitter reproduces it with an integer divide or a table);
- leaky_relu: the slope is rounded to nearest `fixed<18,2>` (16 fraction bits, |slope| < 2),
  the negative side `x · slope` is then converted into x's type with x's rounding and
  saturation modes.
- clamp bounds are rounded inward to the grid of x's type (lower up, upper down) and limited
  to its range (±inf: the range's ends; a NaN bound is ignored).

Raw values live in int64, so every type an op produces must fit: signed `W <= 64`, unsigned
`W <= 63` (`MAX_SIGNED_WIDTH`). A wider exact result is an `OpError` naming the type: lower
the operand widths (or insert a `kiln.requantize`) rather than risk a silent overflow.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from fractions import Fraction

import numpy as np

from kiln.ir import fixed
from kiln.ir.ops.base import OpError, fail
from kiln.ir.types import DType, FixedType, TensorType

MAX_SIGNED_WIDTH = 64
"""Widest signed raw an int64 holds; unsigned types get one bit less."""
SLOPE_TYPE = FixedType(18, 2, rounding="rnd", saturation="sat")
"""How leaky_relu's slope is stored when it multiplies a fixed-point tensor."""


class WidthError(OpError):
    """An exact fixed-point result would be wider than int64 raws hold."""


# -- type rules ----------------------------------------------------------------------------------
def make(width: int, integer: int, signed: bool) -> FixedType:
    """`fixed<width, integer>` (trn, wrap: exact results never round), or an `OpError` when
    int64 raws cannot hold it."""
    limit = MAX_SIGNED_WIDTH if signed else MAX_SIGNED_WIDTH - 1
    if width > limit:
        sign = "" if signed else ",unsigned"
        raise WidthError(f"the exact result needs fixed<{width},{integer}{sign}>, wider than the "
                         f"{limit} bits kiln computes in (int64 raws)",
                         hint="narrow the operands (fewer bits), or requantize before this op")
    return FixedType(width, integer, signed)


def mul_type(a: FixedType, b: FixedType) -> FixedType:
    """ap_fixed's `mult` type: W = Wa + Wb, I = Ia + Ib."""
    return make(a.width + b.width, a.integer + b.integer, a.signed or b.signed)


def _common_integer(a: FixedType, b: FixedType) -> int:
    return max(a.integer + (b.signed and not a.signed), b.integer + (a.signed and not b.signed))


def add_type(a: FixedType, b: FixedType, *, subtract: bool = False) -> FixedType:
    """ap_fixed's `plus` / `minus` type: one more integer bit than the wider operand."""
    integer = _common_integer(a, b) + 1
    frac = max(a.frac_bits, b.frac_bits)
    return make(integer + frac, integer, a.signed or b.signed or subtract)


def union_type(a: FixedType, b: FixedType) -> FixedType:
    """The smallest type that holds every value of both (maximum, minimum)."""
    integer = _common_integer(a, b)
    return make(integer + max(a.frac_bits, b.frac_bits), integer, a.signed or b.signed)


def growth_bits(count: int) -> int:
    """ceil(log2 count): integer bits a sum of `count` terms needs beyond one term."""
    return max(count - 1, 0).bit_length()


def sum_type(t: FixedType, count: int) -> FixedType:
    """Type of a sum of `count` values of type `t`."""
    g = growth_bits(count)
    return make(t.width + g, t.integer + g, t.signed)


def is_fixed(types: Sequence[TensorType]) -> bool:
    return any(isinstance(t.dtype, FixedType) for t in types)


def check_dtypes(what: str, operands: Sequence[TensorType]) -> None:
    """Fixed operands combine only with fixed ones; plain types must be equal."""
    dtypes = [t.dtype for t in operands]
    if any(isinstance(d, FixedType) for d in dtypes):
        plain = [d for d in dtypes if not isinstance(d, FixedType)]
        if plain:
            raise fail(f"{what} mix fixed point with {plain[0]}: quantize every operand")
        return
    if any(d != dtypes[0] for d in dtypes[1:]):
        other = next(d for d in dtypes[1:] if d != dtypes[0])
        raise fail(f"{what} element types differ: {dtypes[0]} and {other}")


def dot_type(operands: Sequence[TensorType], count: int) -> DType:
    """Result element type of conv / linear / matmul (x, w[, bias]) with `count` terms per
    output: the plain input dtype, or the exact fixed type (module docstring)."""
    if not is_fixed(operands):
        return operands[0].dtype
    x, w = (_fixed(t) for t in operands[:2])
    acc = sum_type(mul_type(x, w), count)
    return add_type(acc, _fixed(operands[2])) if len(operands) > 2 else acc


def _fixed(t: TensorType) -> FixedType:
    assert isinstance(t.dtype, FixedType)
    return t.dtype


BINARY_RULES: dict[str, Callable[[FixedType, FixedType], FixedType]] = {
    "kiln.add": add_type,
    "kiln.sub": lambda a, b: add_type(a, b, subtract=True),
    "kiln.mul": mul_type,
    "kiln.maximum": union_type,
    "kiln.minimum": union_type,
}
"""Binary elementwise ops that take fixed-point operands, by op name."""
UNARY_OPS = ("kiln.relu", "kiln.relu6", "kiln.clamp", "kiln.leaky_relu")
"""Unary ops that take fixed-point operands (and keep their type)."""


def binary_type(op_name: str, a: DType, b: DType) -> FixedType:
    """The result type of a binary elementwise op on two fixed types."""
    if not (isinstance(a, FixedType) and isinstance(b, FixedType)):
        raise fail(f"operand element types mix fixed point with a plain type: {a} and {b}")
    rule = BINARY_RULES.get(op_name)
    if rule is None:
        raise fail(f"does not take fixed-point operands (supported: "
                   f"{', '.join(sorted(BINARY_RULES))}); dequantize first")
    return rule(a, b)


def check_unary(op_name: str, t: FixedType, slope: float | None = None) -> None:
    """Only `UNARY_OPS` take fixed point; leaky_relu's slope and product must fit."""
    if op_name not in UNARY_OPS:
        raise fail(f"does not take fixed-point operands (supported: {', '.join(UNARY_OPS)}); "
                   "dequantize first")
    if slope is not None:
        slope_raw(slope)
        mul_type(t, SLOPE_TYPE)


def check_sum_fits(t: FixedType, count: int) -> None:
    """A pool or mean sums `count` raws in int64 before dividing: that sum must fit."""
    sum_type(t, count)


# -- integer references ------------------------------------------------------------------------
def shift_left(raw: np.ndarray, bits: int) -> np.ndarray:
    """raw · 2^bits, exact (the result types make room for it)."""
    if bits < 0:
        raise OpError(f"internal: negative alignment shift {bits}")
    return np.left_shift(np.asarray(raw, np.int64), np.int64(bits))


def align(raw: np.ndarray, src: FixedType, dst: FixedType) -> np.ndarray:
    """Raws of `src` expressed with `dst`'s fraction bits (dst has at least as many)."""
    return shift_left(raw, dst.frac_bits - src.frac_bits)


def finish_dot(acc: np.ndarray, operands: Sequence[TensorType], bias: np.ndarray | None,
               result: FixedType, channel_axis: int) -> np.ndarray:
    """Align the integer product sums (fraction Fx + Fw) to the result and add the bias."""
    x, w = _fixed(operands[0]), _fixed(operands[1])
    frac = x.frac_bits + w.frac_bits
    out = shift_left(acc, result.frac_bits - frac)
    if bias is None:
        return out
    b = align(bias, _fixed(operands[2]), result)
    shape = [1] * out.ndim
    shape[channel_axis] = -1
    return out + b.reshape(shape)


def binary_raw(op_name: str, a: np.ndarray, b: np.ndarray, ta: FixedType, tb: FixedType,
               result: FixedType) -> np.ndarray:
    """Raw result of a fixed-point binary op (operands aligned to the result's fraction)."""
    if op_name == "kiln.mul":
        return np.multiply(np.asarray(a, np.int64), np.asarray(b, np.int64))
    x, y = align(a, ta, result), align(b, tb, result)
    fn = {"kiln.add": np.add, "kiln.sub": np.subtract, "kiln.maximum": np.maximum,
          "kiln.minimum": np.minimum}[op_name]
    return np.asarray(fn(x, y), np.int64)


def divide_round(total: np.ndarray, count: np.ndarray | int, rounding: str) -> np.ndarray:
    """total / count (count > 0) rounded to an integer with an ap_fixed rounding mode, exactly."""
    num = np.asarray(total, np.int64)
    den = np.broadcast_to(np.asarray(count, np.int64), num.shape)
    q, r = np.floor_divide(num, den), np.remainder(num, den)
    twice, neg = 2 * r, num < 0
    up = {
        "trn": np.zeros(num.shape, bool),
        "trn_zero": neg & (r != 0),
        "rnd": twice >= den,
        "rnd_zero": (twice > den) | ((twice == den) & neg),
        "rnd_min_inf": twice > den,
        "rnd_inf": (twice > den) | ((twice == den) & ~neg),
        "rnd_conv": (twice > den) | ((twice == den) & (q % 2 == 1)),
    }[rounding]
    return q + up.astype(np.int64)


def _grid(bound: float, t: FixedType, up: bool) -> int:
    """The grid point of `t` nearest `bound` on its inner side, within t's raw range
    (±inf bounds land on the range's ends)."""
    lo, hi = t.raw_range
    if math.isinf(bound):
        return hi if bound > 0 else lo
    scaled = Fraction(bound) * Fraction(2) ** t.frac_bits
    raw = math.ceil(scaled) if up else math.floor(scaled)
    return min(max(raw, lo), hi)


def clamp_raw(raw: np.ndarray, t: FixedType, lo: float | None, hi: float | None) -> np.ndarray:
    """clamp on the grid of `t`: bounds rounded inward (lower up, upper down); a NaN bound is
    no bound (fixed point has no NaN to propagate)."""
    out = np.asarray(raw, np.int64)
    if lo is not None and not math.isnan(lo):
        out = np.maximum(out, np.int64(_grid(lo, t, up=True)))
    if hi is not None and not math.isnan(hi):
        out = np.minimum(out, np.int64(_grid(hi, t, up=False)))
    return out


def slope_raw(slope: float) -> int:
    """leaky_relu's slope as a raw of `SLOPE_TYPE`; an `OpError` when it does not fit."""
    lo, hi = SLOPE_TYPE.value_range
    if not lo <= slope <= hi:
        raise fail(f"slope {slope} is outside {SLOPE_TYPE}'s range [{lo}, {hi}] used for "
                   "fixed-point operands")
    return int(fixed.quantize_fixed(np.array([slope]), SLOPE_TYPE)[0])


def leaky_relu_raw(raw: np.ndarray, t: FixedType, slope: float) -> np.ndarray:
    """x where x >= 0, else x · slope converted into `t` (module docstring)."""
    product = mul_type(t, SLOPE_TYPE)
    x = np.asarray(raw, np.int64)
    scaled = fixed.requantize_fixed(x * np.int64(slope_raw(slope)), product, t)
    return np.where(x >= 0, x, scaled)


def unary_raw(op_name: str, raw: np.ndarray, t: FixedType) -> np.ndarray:
    """relu and relu6 on raws (clamp and leaky_relu have their own functions)."""
    if op_name == "kiln.relu":
        return np.maximum(np.asarray(raw, np.int64), np.int64(0))
    if op_name == "kiln.relu6":
        return clamp_raw(raw, t, 0.0, 6.0)
    raise OpError(f"{op_name} has no fixed-point reference")


__all__ = [
    "BINARY_RULES",
    "MAX_SIGNED_WIDTH",
    "SLOPE_TYPE",
    "UNARY_OPS",
    "WidthError",
    "add_type",
    "align",
    "binary_raw",
    "binary_type",
    "check_dtypes",
    "check_unary",
    "clamp_raw",
    "divide_round",
    "dot_type",
    "finish_dot",
    "growth_bits",
    "is_fixed",
    "leaky_relu_raw",
    "make",
    "mul_type",
    "shift_left",
    "slope_raw",
    "sum_type",
    "unary_raw",
    "union_type",
]

"""Fixed-point activations for FPGA layers: lookup tables (hls4ml-style) and exact hard ones.

These ops exist so that an activation computed by an FPGA layer has an executable spec that
the generated HLS C++ matches bit for bit (`kiln.codegen.hls`): the reference builds the very
tables the code generator writes, with the same integer indexing.

`kiln.fixed_activation {function, to, table_size, range}` on a `fixed<W,I>` input:
- `sigmoid`, `tanh`: a table of `table_size` entries over [-range, range) (both powers of two,
  so the step 2·range/table_size is 2^-s and the index is a shift of the raw); entry i holds
  f at the bucket's midpoint, -range + (i + 1/2)·step, quantized to `to`. Index
  i = clamp(floor(x / step) + table_size/2, 0, table_size - 1): inputs outside the range
  read the end entries (f is flat there).
- `hardsigmoid` = clamp(x/6 + 1/2, 0, 1) and `hardswish` = x·clamp(x + 3, 0, 6)/6: no table;
  the exact rational value is rounded once into `to` with `to`'s rounding mode (an integer
  division by a constant, `fixed_arith.divide_round`), then saturated into `to`.

`kiln.lut_softmax {to, table_size, range, inv_table_size, table_bits}` over the last axis,
hls4ml's "stable" softmax: d = max(x) - x >= 0 reads an exp table over [0, range)
(entry i = e^-(i + 1/2)·step, step = range/table_size, `table_bits - 1` fraction bits;
d beyond the range reads the last entry); the exact integer sum S of the row's entries is
normalized like a float, S = m·2^p with m in [1, 2) (p = the leading one's position), and
1/m is read from an inverse table of `inv_table_size` entries over [1, 2) (midpoints again,
`table_bits - 1` fraction bits); each output e_i·inv[m] has `table_bits - 1 + p` fraction
bits and is requantized into `to` (rounding and saturation of `to`).

`table_error(...)` gives each table's max |error| against float math over the whole input
type's range (every representable input up to 2^20 of them, else an even sample): the code
generator writes it into the C++ and the fpga report.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from kiln.ir import fixed, fixed_arith
from kiln.ir.ops.base import OpDef, fail, register_op
from kiln.ir.types import FixedType, TensorType

TABLED = ("sigmoid", "tanh")
EXACT = ("hardsigmoid", "hardswish")
FUNCTIONS = TABLED + EXACT
FLOAT_FN: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "sigmoid": lambda x: 0.5 * (1.0 + np.tanh(0.5 * x)),
    "tanh": np.tanh,
    "hardsigmoid": lambda x: np.clip(x / 6.0 + 0.5, 0.0, 1.0),
    "hardswish": lambda x: x * np.clip(x + 3.0, 0.0, 6.0) / 6.0,
}
"""The float functions the fixed-point ops approximate (float64)."""
GRID_LIMIT = 1 << 20


def _power_of_two(value: float) -> bool:
    return value > 0 and math.frexp(value)[0] == 0.5


def _log2(value: float) -> int:
    return math.frexp(value)[1] - 1


def check_table(table_size: int, range_: float, what: str) -> None:
    """Sizes and ranges are powers of two, so indices are shifts of raws."""
    if not (2 <= table_size <= 1 << 20) or not _power_of_two(table_size):
        raise fail(f"{what}table_size={table_size} must be a power of two in 2..2^20")
    if not _power_of_two(range_) or not 2.0 ** -16 <= range_ <= 2.0 ** 16:
        raise fail(f"{what}range={range_} must be a power of two in 2^-16..2^16")


def _shift(raw: np.ndarray, bits: int) -> np.ndarray:
    """raw · 2^bits, floored (arithmetic shift right for bits < 0)."""
    raw = np.asarray(raw, np.int64)
    return raw << bits if bits >= 0 else raw >> -bits


def index_shift(t: FixedType, table_size: int, range_: float) -> int:
    """s - F: the index of a raw of `t` is floor(raw · 2^(s - F)) (+ an offset)."""
    step_bits = _log2(table_size) - _log2(2.0 * range_)  # step = 2^-step_bits
    return step_bits - t.frac_bits


def activation_table(function: str, table_size: int, range_: float,
                     to: FixedType) -> np.ndarray:
    """Raws of `to`: f at each bucket's midpoint (module docstring)."""
    step = 2.0 * range_ / table_size
    mids = -range_ + (np.arange(table_size, dtype=np.float64) + 0.5) * step
    return fixed.quantize_fixed(FLOAT_FN[function](mids), to)


def activation_index(raw: np.ndarray, t: FixedType, table_size: int,
                     range_: float) -> np.ndarray:
    """The table index of each raw (clamped to the table)."""
    bits = index_shift(t, table_size, range_)
    x = np.asarray(raw, np.int64)
    if bits > 0:  # keep the left shift inside int64: beyond ±table_size is clamped anyway
        x = np.clip(x, -table_size, table_size)
    return np.clip(_shift(x, bits) + table_size // 2, 0, table_size - 1)


def exact_activation(function: str, raw: np.ndarray, t: FixedType,
                     to: FixedType) -> np.ndarray:
    """hardsigmoid / hardswish rounded once into `to` (module docstring)."""
    x = np.asarray(raw, np.int64)
    f, fo = t.frac_bits, to.frac_bits
    one = 1
    if function == "hardsigmoid":  # (x + 3)/6 with x = raw·2^-f: num/den in units of 2^-fo
        num, den = (x + 3 * (one << f)) << fo, 6 * (one << f)
        q = fixed_arith.divide_round(num, den, to.rounding)
        q = np.clip(q, 0, one << fo)
    else:  # x · clamp(x + 3, 0, 6) / 6: the product has 2f fraction bits
        c = np.clip(x + 3 * (one << f), 0, 6 * (one << f))
        prod = x * c
        extra = fo - 2 * f
        num = prod << extra if extra >= 0 else prod
        den = 6 * (one << (-extra if extra < 0 else 0))
        q = fixed_arith.divide_round(num, den, to.rounding)
    src = FixedType(64, 64 - fo, True, to.rounding, to.saturation)
    return fixed.requantize_fixed(q, src, to)


def check_exact(function: str, t: FixedType, to: FixedType) -> None:
    """The integer numerators of the hard functions must fit in int64."""
    f, fo = t.frac_bits, to.frac_bits
    if f < 0 or fo < 0:
        raise fail(f"{function} needs fraction bits >= 0 (input {t}, result {to})")
    need = (t.width + 4 + fo) if function == "hardsigmoid" else \
        (2 * t.width + 4 + max(fo - 2 * f, 0))
    if need > 62:
        raise fail(f"{function} on {t} into {to} needs {need}-bit intermediates (> 62)")


def _grid(t: FixedType) -> np.ndarray:
    """Every raw of `t` (or an even sample of 2^20 with both ends)."""
    lo, hi = t.raw_range
    if hi - lo + 1 <= GRID_LIMIT:
        return np.arange(lo, hi + 1, dtype=np.int64)
    return np.unique(np.linspace(lo, hi, GRID_LIMIT).round().astype(np.int64))


def table_error(function: str, t: FixedType, to: FixedType, table_size: int = 1024,
                range_: float = 8.0) -> float:
    """max |op(x) - f(x)| over the input type's range (module docstring)."""
    raw = _grid(t)
    want = FLOAT_FN[function](fixed.fixed_to_float(raw, t))
    got = FixedActivation(function, to, table_size, range_).apply(raw, t)
    return float(np.max(np.abs(fixed.fixed_to_float(got, to) - want)))


@register_op
@dataclass(frozen=True)
class FixedActivation(OpDef):
    """A fixed-point activation: sigmoid/tanh by lookup table, hard ones rounded exactly."""

    NAME = "kiln.fixed_activation"
    OPERANDS = ("input",)
    function: str
    to: FixedType
    table_size: int = 1024
    range: float = 8.0

    def infer_type(self, operands: Sequence[TensorType]) -> tuple[TensorType, ...]:
        (x,) = operands
        if not isinstance(x.dtype, FixedType) or not isinstance(self.to, FixedType):
            raise fail(f"takes fixed<> to fixed<>, not {x.dtype} to {self.to}")
        return (TensorType(x.shape, self.to),)

    def verify(self, operands: Sequence[TensorType]) -> None:
        if self.function not in FUNCTIONS:
            raise fail(f"function '{self.function}' is not one of {', '.join(FUNCTIONS)}")
        t = operands[0].dtype
        assert isinstance(t, FixedType)
        if self.function in TABLED:
            check_table(self.table_size, self.range, "")
        else:
            check_exact(self.function, t, self.to)

    def apply(self, raw: np.ndarray, t: FixedType) -> np.ndarray:
        if self.function in TABLED:
            table = activation_table(self.function, self.table_size, self.range, self.to)
            return table[activation_index(raw, t, self.table_size, self.range)]
        return exact_activation(self.function, raw, t, self.to)

    def reference(self, *args: np.ndarray) -> tuple[np.ndarray, ...]:
        raise fail("needs its input's type: call reference_typed")

    def reference_typed(self, operands: Sequence[TensorType],
                        *args: np.ndarray) -> tuple[np.ndarray, ...]:
        t = operands[0].dtype
        assert isinstance(t, FixedType)
        return (self.apply(args[0], t),)


# -- softmax -----------------------------------------------------------------------------------
def exp_table(table_size: int, range_: float, bits: int) -> np.ndarray:
    """Raws (bits - 1 fraction bits) of e^-d at the midpoints of [0, range)."""
    step = range_ / table_size
    mids = (np.arange(table_size, dtype=np.float64) + 0.5) * step
    return np.round(np.exp(-mids) * 2.0 ** (bits - 1)).astype(np.int64)


def inverse_table(table_size: int, bits: int) -> np.ndarray:
    """Raws (bits - 1 fraction bits) of 1/m at the midpoints of [1, 2)."""
    mids = 1.0 + (np.arange(table_size, dtype=np.float64) + 0.5) / table_size
    return np.round(2.0 ** (bits - 1) / mids).astype(np.int64)


def exp_index(d: np.ndarray, t: FixedType, table_size: int, range_: float) -> np.ndarray:
    """floor(d / step) clamped to the table, d >= 0 raws of `t`."""
    bits = _log2(table_size) - _log2(range_) - t.frac_bits
    capped = np.minimum(d, table_size << max(-bits, 0))  # no int64 overflow on a left shift
    return np.minimum(_shift(capped, bits), table_size - 1)


def leading_one(total: np.ndarray) -> np.ndarray:
    """floor(log2 total) of positive int64s, exactly."""
    p = np.zeros(total.shape, np.int64)
    for bit in (32, 16, 8, 4, 2, 1):
        up = (total >> (p + bit)) > 0
        p = np.where(up, p + bit, p)
    return p


def softmax_raw(raw: np.ndarray, t: FixedType, kind: LutSoftmax) -> np.ndarray:
    """The op on raws (module docstring)."""
    x = np.asarray(raw, np.int64)
    d = x.max(axis=-1, keepdims=True) - x
    e = exp_table(kind.table_size, kind.range, kind.table_bits)[
        exp_index(d, t, kind.table_size, kind.range)]
    total = e.sum(axis=-1, keepdims=True)
    p = leading_one(total)
    m_bits = _log2(kind.inv_table_size)
    j = np.where(p >= m_bits, (total - (1 << p)) >> np.maximum(p - m_bits, 0),
                 (total - (1 << p)) << np.maximum(m_bits - p, 0))
    prod = e * inverse_table(kind.inv_table_size, kind.table_bits)[j]
    src_bits = np.broadcast_to(p + kind.table_bits - 1, prod.shape)
    out = np.empty(prod.shape, np.int64)
    for f in np.unique(src_bits):
        mask = src_bits == f
        src = FixedType(64, 64 - int(f), True)
        out[mask] = fixed.requantize_fixed(prod[mask], src, kind.to)
    return out


def softmax_errors(t: FixedType, kind: LutSoftmax) -> dict[str, float]:
    """Max |error| of the exp table over every d = max - x the input type allows, and the
    max relative error of the inverse table over [1, 2) (sampled at 2^20 points)."""
    lo, hi = t.raw_range
    d = np.arange(0, min(hi - lo, GRID_LIMIT) + 1, dtype=np.int64)
    if hi - lo > GRID_LIMIT:
        d = np.unique(np.linspace(0, hi - lo, GRID_LIMIT).round().astype(np.int64))
    scale = 2.0 ** -(kind.table_bits - 1)
    table = exp_table(kind.table_size, kind.range, kind.table_bits)
    got = table[exp_index(d, t, kind.table_size, kind.range)] * scale
    exp_error = float(np.max(np.abs(got - np.exp(-d * 2.0 ** -t.frac_bits))))
    m = 1.0 + np.arange(GRID_LIMIT, dtype=np.float64) / GRID_LIMIT
    j = np.floor((m - 1.0) * kind.inv_table_size).astype(np.int64)
    inv = inverse_table(kind.inv_table_size, kind.table_bits)[j] * scale
    return {"exp_table_error": exp_error,
            "inv_table_rel_error": float(np.max(np.abs(inv * m - 1.0)))}


@register_op
@dataclass(frozen=True)
class LutSoftmax(OpDef):
    """Softmax over the last axis of a fixed-point tensor by exp and inverse lookup tables."""

    NAME = "kiln.lut_softmax"
    OPERANDS = ("input",)
    to: FixedType
    table_size: int = 1024
    range: float = 8.0
    inv_table_size: int = 1024
    table_bits: int = 18

    def infer_type(self, operands: Sequence[TensorType]) -> tuple[TensorType, ...]:
        (x,) = operands
        if not isinstance(x.dtype, FixedType) or not isinstance(self.to, FixedType):
            raise fail(f"takes fixed<> to fixed<>, not {x.dtype} to {self.to}")
        if x.rank == 0:
            raise fail("needs a tensor of rank >= 1 (softmax over the last axis)")
        return (TensorType(x.shape, self.to),)

    def verify(self, operands: Sequence[TensorType]) -> None:
        check_table(self.table_size, self.range, "")
        check_table(self.inv_table_size, 1.0, "inv_")
        if not 4 <= self.table_bits <= 24:
            raise fail(f"table_bits={self.table_bits} must be in 4..24")
        t = operands[0].dtype
        assert isinstance(t, FixedType)
        row = operands[0].shape[-1]
        if t.width + 1 > 62 or row > 1 << 20:
            raise fail(f"a row of {row} values of {t} is too wide for the exp sum")

    def reference(self, *args: np.ndarray) -> tuple[np.ndarray, ...]:
        raise fail("needs its input's type: call reference_typed")

    def reference_typed(self, operands: Sequence[TensorType],
                        *args: np.ndarray) -> tuple[np.ndarray, ...]:
        t = operands[0].dtype
        assert isinstance(t, FixedType)
        return (softmax_raw(args[0], t, self),)


__all__ = ["EXACT", "FLOAT_FN", "FUNCTIONS", "TABLED", "FixedActivation", "LutSoftmax",
           "activation_index", "activation_table", "exact_activation", "exp_index",
           "exp_table", "index_shift", "inverse_table", "leading_one", "softmax_errors",
           "softmax_raw", "table_error"]

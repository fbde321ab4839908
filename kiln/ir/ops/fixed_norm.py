"""Fixed-point layer norm and GELU for FPGA transformer layers: integer specs the HLS C++ matches.

`kiln.fixed_layer_norm {to, normalized_ndim, eps, table_size}` (x: fixed<W,I,F> [..., D],
gamma, beta: fixed [D]) normalizes each row of D raws (the last `normalized_ndim` dims,
flattened) in exact integers:

1. S = sum x_i; c_i = D·x_i - S (= D·(x_i - mean), exact); for wide inputs (c_i needing more
   than `CENTER_BITS` = 25 bits with its sign) c_i is floored to that many bits first:
   c_i >>= s, s = `center_shift` (0 for W <= 18 with D <= 64), i.e. x is read with F - s
   fraction bits from here on. Q = sum c_i^2 (= D^3·var, in units of 2^-2(F-s));
   T = Q + E with E = round_half_up(eps·D^3·2^2(F-s)), so var + eps = T / (D^3·2^2(F-s))
   (eps is the only rounded term); T >= 1.
2. 1/sqrt by table: T = m·4^k with m in [1, 4) (k = floor(p/2), p = T's leading one), index
   i = floor(T·N/4^(k+1)) in [N/4, N) (a shift of T; N = table_size, a power of two), entry
   i - N/4 = round(2^16·sqrt(D / m_i)) at the bucket midpoint m_i = (i + 1/2)·4/N. The
   normalized value (x_i - mean)/sqrt(var + eps) with `NORM_FRAC` = 16 fraction bits is then
   n_i = round_half_up(c_i·R / 2^k). The table's relative error is at most (2/N)/(2·1) at
   m = 1 (midpoints), 2.4e-4 for the default N = 4096 (`rsqrt_error` gives the exact figure).
3. y_i = n_i·gamma_i + beta_i, exact (fraction bits aligned to max(16 + Fg, Fb)), then
   converted to `to` with `to`'s rounding and saturation (ap_fixed's assignment).

`kiln.fixed_gelu {to, table_size, range, approximate}`: gelu(x) = x·Φ(x), Φ from a table of
`table_size` entries over [-range, range) at the bucket midpoints (`GELU_TABLE_FRAC` = 16
fraction bits, unsigned), indexed like `kiln.fixed_activation` (a shift of the raw, clamped to
the ends where Φ is flat: 0 or 1, so gelu(x) -> x stays right for large x); the exact product
x_raw·Φ_raw (F + 16 fraction bits) is converted to `to`.

Every intermediate fits int64; `verify` refuses widths for which it would not.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from kiln.ir import fixed
from kiln.ir.ops.base import OpDef, fail, register_op
from kiln.ir.ops.lut import activation_index, check_table, leading_one
from kiln.ir.types import FixedType, TensorType

NORM_FRAC = 16
"""Fraction bits of the normalized value n_i and of the 1/sqrt table's entries."""
GELU_TABLE_FRAC = 16
"""Fraction bits of the Φ table's entries (unsigned, at most 2^16)."""
INT_BITS = 62
"""Headroom every integer intermediate must stay within (int64 with a guard bit)."""
CENTER_BITS = 25
"""Widest centered value c_i (with its sign) squared and summed: 2·25 + log2(D) bits."""


def _fixed(t: TensorType) -> FixedType:
    if not isinstance(t.dtype, FixedType):
        raise fail(f"takes fixed-point operands, not {t.dtype}")
    return t.dtype


def _log2(value: int) -> int:
    return value.bit_length() - 1


def rsqrt_table(table_size: int, row: int) -> np.ndarray:
    """Entries round(2^16·sqrt(row / m)) at the midpoints m of [1, 4) (module docstring)."""
    idx = np.arange(table_size // 4, table_size, dtype=np.float64)
    mids = (idx + 0.5) * 4.0 / table_size
    return np.floor(np.sqrt(row / mids) * 2.0 ** NORM_FRAC + 0.5).astype(np.int64)


def rsqrt_error(table_size: int) -> float:
    """Max relative error of the table's 1/sqrt(m) over [1, 4) (sampled at 2^16 points)."""
    m = 1.0 + 3.0 * np.arange(1 << 16, dtype=np.float64) / (1 << 16)
    idx = np.floor(m * table_size / 4.0).astype(np.int64) - table_size // 4
    got = rsqrt_table(table_size, 1)[idx] * 2.0 ** -NORM_FRAC
    return float(np.max(np.abs(got * np.sqrt(m) - 1.0)))


def eps_term(eps: float, row: int, frac: int) -> int:
    """E = round_half_up(eps·D^3·2^2F), exactly."""
    value = Fraction(eps) * row ** 3 * Fraction(2) ** (2 * frac)
    return math.floor(value + Fraction(1, 2))


def center_shift(t: FixedType, row: int) -> int:
    """s: how many low bits of c_i = D·x_i - S are floored away (module docstring)."""
    return max(t.width + max(row - 1, 0).bit_length() + 1 - CENTER_BITS, 0)


def _round_shift(v: np.ndarray, k: np.ndarray) -> np.ndarray:
    """round_half_up(v / 2^k), k >= 0 per element, exactly."""
    half = np.where(k > 0, np.left_shift(np.int64(1), np.maximum(k - 1, 0)), 0)
    return np.right_shift(v + half, k)


def accumulator_frac(gamma: FixedType, beta: FixedType) -> int:
    """Fraction bits of n·gamma + beta before the final conversion."""
    return max(NORM_FRAC + gamma.frac_bits, beta.frac_bits)


def layer_norm_raw(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, types: Sequence[FixedType],
                   kind: FixedLayerNorm) -> np.ndarray:
    """The op on raws (module docstring); `types` = (x, gamma, beta, ) fixed types."""
    tx, tg, tb = types
    shape = np.shape(x)
    row = int(np.prod(shape[len(shape) - kind.normalized_ndim:], dtype=np.int64))
    xs = np.asarray(x, np.int64).reshape(-1, row)
    cut = center_shift(tx, row)
    c = (row * xs - xs.sum(axis=1, keepdims=True)) >> cut
    t = (c * c).sum(axis=1, keepdims=True) + eps_term(kind.eps, row, tx.frac_bits - cut)
    t = np.maximum(t, 1)
    k = leading_one(t) // 2
    shift = 2 * k + 2 - _log2(kind.table_size)
    idx = np.where(shift >= 0, np.right_shift(t, np.maximum(shift, 0)),
                   np.left_shift(t, np.maximum(-shift, 0)))
    r = rsqrt_table(kind.table_size, row)[idx - kind.table_size // 4]
    n = _round_shift(c * r, np.broadcast_to(k, c.shape))
    frac = accumulator_frac(tg, tb)
    g = np.asarray(gamma, np.int64).reshape(1, row)
    b = np.asarray(beta, np.int64).reshape(1, row)
    acc = (n * g << (frac - NORM_FRAC - tg.frac_bits)) + (b << (frac - tb.frac_bits))
    src = FixedType(64, 64 - frac, True)
    return fixed.requantize_fixed(acc, src, kind.to).reshape(shape)


def layer_norm_bits(tx: FixedType, row: int, tg: FixedType, tb: FixedType,
                    table_size: int, eps: float) -> int:
    """The widest intermediate (bits with sign) of the op on these types."""
    g = max(row - 1, 0).bit_length()
    cut = center_shift(tx, row)
    c_bits = tx.width + g + 1 - cut
    eps_bits = max(eps_term(eps, row, tx.frac_bits - cut), 1).bit_length() + 1
    t_bits = max(2 * c_bits + g, eps_bits) + 1
    r_bits = int(rsqrt_table(table_size, row)[0]).bit_length()
    z_bits = c_bits + r_bits + 1
    n_bits = NORM_FRAC + (g + 1) // 2 + 2  # |n| <= sqrt(D - 1)·2^16 (1 + table error) + 1
    frac = accumulator_frac(tg, tb)
    acc_bits = max(n_bits + tg.width + frac - NORM_FRAC - tg.frac_bits,
                   tb.width + frac - tb.frac_bits) + 1
    return max(t_bits, z_bits, acc_bits)


@register_op
@dataclass(frozen=True)
class FixedLayerNorm(OpDef):
    """Layer norm on fixed-point raws: exact mean/variance, 1/sqrt table, then gamma/beta."""

    NAME = "kiln.fixed_layer_norm"
    OPERANDS = ("input", "weight", "bias")
    to: FixedType
    normalized_ndim: int = 1
    eps: float = 1e-5
    table_size: int = 4096

    def infer_type(self, operands: Sequence[TensorType]) -> tuple[TensorType, ...]:
        x = operands[0]
        for t in operands:
            _fixed(t)
        if not isinstance(self.to, FixedType):
            raise fail(f"result type must be fixed<>, not {self.to}")
        if not 1 <= self.normalized_ndim <= x.rank:
            raise fail(f"normalized_ndim {self.normalized_ndim} is outside 1..{x.rank}")
        inner = x.shape[x.rank - self.normalized_ndim:]
        for name, t in zip(("weight", "bias"), operands[1:]):
            if t.shape != inner:
                raise fail(f"{name} has shape {list(t.shape)}, expected {list(inner)}")
        return (TensorType(x.shape, self.to),)

    def verify(self, operands: Sequence[TensorType]) -> None:
        check_table(self.table_size, 1.0, "")
        if self.table_size < 8:
            raise fail(f"table_size={self.table_size} must be at least 8")
        if not (self.eps >= 0 and math.isfinite(self.eps)):
            raise fail(f"eps={self.eps} must be finite and >= 0")
        x, g, b = operands
        row = int(np.prod(x.shape[x.rank - self.normalized_ndim:], dtype=np.int64))
        bits = layer_norm_bits(_fixed(x), row, _fixed(g), _fixed(b), self.table_size, self.eps)
        if bits > INT_BITS:
            raise fail(f"rows of {row} values of {x.dtype} need {bits}-bit intermediates "
                       f"(more than {INT_BITS})")

    def reference(self, *args: np.ndarray) -> tuple[np.ndarray, ...]:
        raise fail("needs its operands' types: call reference_typed")

    def reference_typed(self, operands: Sequence[TensorType],
                        *args: np.ndarray) -> tuple[np.ndarray, ...]:
        types = [_fixed(t) for t in operands]
        return (layer_norm_raw(args[0], args[1], args[2], types, self),)


# -- GELU ----------------------------------------------------------------------------------------
def phi(x: np.ndarray, approximate: str) -> np.ndarray:
    """The standard normal CDF Φ (or the tanh form torch's approximate='tanh' uses)."""
    if approximate == "tanh":
        inner = math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)
        return 0.5 * (1.0 + np.tanh(inner))
    erf = np.vectorize(math.erf, otypes=[np.float64])
    return 0.5 * (1.0 + erf(x / math.sqrt(2.0)))


def gelu_table(table_size: int, range_: float, approximate: str) -> np.ndarray:
    """Raws (16 fraction bits) of Φ at the bucket midpoints of [-range, range)."""
    step = 2.0 * range_ / table_size
    mids = -range_ + (np.arange(table_size, dtype=np.float64) + 0.5) * step
    return np.floor(phi(mids, approximate) * 2.0 ** GELU_TABLE_FRAC + 0.5).astype(np.int64)


def gelu_raw(raw: np.ndarray, t: FixedType, kind: FixedGelu) -> np.ndarray:
    """The op on raws (module docstring)."""
    x = np.asarray(raw, np.int64)
    table = gelu_table(kind.table_size, kind.range, kind.approximate)
    prod = x * table[activation_index(x, t, kind.table_size, kind.range)]
    src = FixedType(64, 64 - t.frac_bits - GELU_TABLE_FRAC, True)
    return fixed.requantize_fixed(prod, src, kind.to).reshape(np.shape(raw))


def gelu_error(t: FixedType, kind: FixedGelu) -> float:
    """Max |op(x) - gelu(x)| over the raws of `t` (all, or 2^16 evenly spread ones) whose
    gelu(x) lies in `to`'s range (saturating the others is the calibrated type's choice, not
    an error of the table)."""
    lo, hi = t.raw_range
    raw = np.unique(np.linspace(lo, hi, min(hi - lo + 1, 1 << 16)).round().astype(np.int64))
    x = fixed.fixed_to_float(raw, t)
    want = x * phi(x, kind.approximate)
    low, high = kind.to.value_range
    inside = (want >= low) & (want <= high)
    got = fixed.fixed_to_float(gelu_raw(raw[inside], t, kind), kind.to)
    return float(np.max(np.abs(got - want[inside]), initial=0.0))


@register_op
@dataclass(frozen=True)
class FixedGelu(OpDef):
    """GELU on fixed-point raws: x times a Φ lookup table, converted to `to`."""

    NAME = "kiln.fixed_gelu"
    OPERANDS = ("input",)
    to: FixedType
    table_size: int = 1024
    range: float = 8.0
    approximate: str = "none"

    def infer_type(self, operands: Sequence[TensorType]) -> tuple[TensorType, ...]:
        (x,) = operands
        _fixed(x)
        if not isinstance(self.to, FixedType):
            raise fail(f"result type must be fixed<>, not {self.to}")
        return (TensorType(x.shape, self.to),)

    def verify(self, operands: Sequence[TensorType]) -> None:
        check_table(self.table_size, self.range, "")
        if self.approximate not in ("none", "tanh"):
            raise fail(f"approximate must be 'none' or 'tanh', not '{self.approximate}'")
        t = _fixed(operands[0])
        if t.width + GELU_TABLE_FRAC + 2 > INT_BITS:
            raise fail(f"{t} is too wide for the product with the Φ table")

    def reference(self, *args: np.ndarray) -> tuple[np.ndarray, ...]:
        raise fail("needs its input's type: call reference_typed")

    def reference_typed(self, operands: Sequence[TensorType],
                        *args: np.ndarray) -> tuple[np.ndarray, ...]:
        return (gelu_raw(args[0], _fixed(operands[0]), self),)


__all__ = ["CENTER_BITS", "GELU_TABLE_FRAC", "NORM_FRAC", "FixedGelu", "FixedLayerNorm",
           "accumulator_frac", "center_shift", "eps_term", "gelu_error", "gelu_raw", "gelu_table",
           "layer_norm_bits", "layer_norm_raw", "phi", "rsqrt_error", "rsqrt_table"]

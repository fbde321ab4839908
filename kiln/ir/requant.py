"""Integer-only requantization: fixed-point multipliers, the rounding shift, rounding division.

This module is the arithmetic contract of kiln's quantized (`kiln.q*`) ops. The NumPy reference
calls it, and a C int8 kernel or FPGA HLS code must reproduce it bit for bit, so every step is
spelled out here in integers.

**Representing a real scale.** A positive real factor r (e.g. s_in · s_w / s_out) is stored as
an int32 `multiplier` M and an int `shift` e with r ≈ M · 2^(e - 31) — TFLite's
`QuantizeMultiplier`: frexp(r) = q · 2^e with q in [0.5, 1); M = round(q · 2^31) (ties away
from zero, as `std::round`); if M reaches 2^31 it is halved and e grows by one. So M lies in
[2^30, 2^31) and e in [-31, 30]. A factor below 2^-32 (e < -31) becomes M = 0, e = 0 (every
result is then 0); a factor of 2^30 or more is rejected.

**Applying it: one rounding right shift of the 64-bit product** (TFLite's
`MultiplyByQuantizedMultiplier` under `TFLITE_SINGLE_ROUNDING`, CMSIS-NN's single rounding):

    total = 31 - e                        (1 <= total <= 62)
    y = (x · M + 2^(total - 1)) >> total  (int64 product, arithmetic shift = floor)

i.e. x · M / 2^total rounded to nearest, **ties toward +infinity**. With |x| < 2^31 and
M < 2^31 the product and the rounding term fit in int64 (|x · M| < 2^62). gemmlowp's two-step
`SaturatingRoundingDoublingHighMul` + `RoundingDivideByPOT` rounds twice and is *not* used.

**Accumulators** are int32: the references compute exact sums in int64 (or float64 where
every partial sum is an integer below 2^53, which is exact) and then wrap them to int32 (two's
complement, what C `int32_t` arithmetic on every target does). The quantize pass sizes nothing
that can wrap for int8 operands (|x - zx| · |w| · K + |bias| < 2^31 for K < 2^16).

**Averages** divide an integer sum by a positive count rounding half away from zero:
`(s + c/2) / c` for s >= 0, `-((-s + c/2) / c)` otherwise (C integer division, TFLite's
average pool).
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

from kiln.errors import KilnError

INT32_MIN = -(1 << 31)
INT32_MAX = (1 << 31) - 1
MULTIPLIER_MIN = 1 << 30
"""Smallest non-zero multiplier (the normalized mantissa q = 0.5)."""
SHIFT_RANGE = (-31, 30)
"""Allowed exponents e: the total right shift 31 - e stays in 1..62."""


def quantize_multiplier(real: float) -> tuple[int, int]:
    """(M, e) with real ≈ M · 2^(e - 31), M in [2^30, 2^31) (module docstring; TFLite's rule).

    0 (and factors below 2^-32) give (0, 0). Negative, non-finite or >= 2^30 factors raise.
    """
    if not math.isfinite(real) or real < 0:
        raise KilnError(f"requantization factor {real!r} must be finite and non-negative")
    if real == 0.0:
        return 0, 0
    mantissa, exponent = math.frexp(real)
    fixed = math.floor(mantissa * (1 << 31) + 0.5)  # exact: mantissa has 53 bits
    if fixed == 1 << 31:
        fixed //= 2
        exponent += 1
    if exponent < SHIFT_RANGE[0]:
        return 0, 0
    if exponent > SHIFT_RANGE[1]:
        raise KilnError(f"requantization factor {real!r} is too large for a 32-bit "
                        "fixed-point multiplier (it must be below 2^30)")
    return int(fixed), int(exponent)


def quantize_multipliers(reals: np.ndarray | list[float]) -> tuple[tuple[int, ...],
                                                                   tuple[int, ...]]:
    """`quantize_multiplier` of each factor: (multipliers, shifts) as tuples of ints."""
    pairs = [quantize_multiplier(float(r)) for r in np.asarray(reals, np.float64).reshape(-1)]
    return tuple(m for m, _ in pairs), tuple(e for _, e in pairs)


def multiplier_value(multiplier: int, shift: int) -> float:
    """The real factor M · 2^(e - 31) a (multiplier, shift) pair stands for."""
    return math.ldexp(multiplier, shift - 31)


def check_multipliers(multiplier: tuple[int, ...], shift: tuple[int, ...]) -> str | None:
    """Why a multiplier/shift pair list is malformed, or None when it is valid."""
    if len(multiplier) != len(shift) or not multiplier:
        return (f"needs as many shifts as multipliers (at least one), got {len(multiplier)} "
                f"and {len(shift)}")
    for m, e in zip(multiplier, shift):
        if m != 0 and not MULTIPLIER_MIN <= m <= INT32_MAX:
            return f"multiplier {m} must be 0 or in [2^30, 2^31)"
        if not SHIFT_RANGE[0] <= e <= SHIFT_RANGE[1]:
            return f"shift {e} must be in [{SHIFT_RANGE[0]}, {SHIFT_RANGE[1]}]"
    return None


def wrap_int32(x: npt.ArrayLike) -> np.ndarray:
    """Exact integers (int64, or integral float64) wrapped to int32, returned as int64."""
    return np.asarray(x).astype(np.int64).astype(np.int32).astype(np.int64)


def rounding_mul_shift(x: npt.ArrayLike, multiplier: npt.ArrayLike,
                       shift: npt.ArrayLike) -> np.ndarray:
    """(x · M + 2^(t-1)) >> t with t = 31 - e, elementwise in int64 (module docstring).

    `x` must hold int32-range integers; `multiplier` and `shift` broadcast against it.
    """
    m = np.asarray(multiplier, np.int64)
    total = 31 - np.asarray(shift, np.int64)
    rounding = np.left_shift(np.int64(1), total - 1)
    return (np.asarray(x, np.int64) * m + rounding) >> total


def requantize_output(acc: np.ndarray, multiplier: npt.ArrayLike, shift: npt.ArrayLike,
                      zero_point: int, low: int, high: int, dtype: npt.DTypeLike) -> np.ndarray:
    """Stored outputs from exact accumulators: wrap to int32, rounding multiply-shift,
    + output zero point, clamp to [low, high], cast to the storage dtype."""
    y = rounding_mul_shift(wrap_int32(acc), multiplier, shift) + zero_point
    return np.clip(y, low, high).astype(dtype)


def rounding_divide(total: npt.ArrayLike, count: npt.ArrayLike) -> np.ndarray:
    """total / count (count > 0) rounded half away from zero, in int64 (TFLite's average)."""
    s = np.asarray(total, np.int64)
    c = np.asarray(count, np.int64)
    half = c // 2
    return np.where(s >= 0, (s + half) // c, -((-s + half) // c))


__all__ = ["INT32_MAX", "INT32_MIN", "MULTIPLIER_MIN", "SHIFT_RANGE", "check_multipliers",
           "multiplier_value", "quantize_multiplier", "quantize_multipliers",
           "requantize_output", "rounding_divide", "rounding_mul_shift", "wrap_int32"]

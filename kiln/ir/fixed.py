"""Bit-exact NumPy arithmetic for kiln's fixed-point (`fixed<>`) and affine (`q<>`) types.

Used by the quantize/dequantize/requantize ops' references, and later by passes and codegen, so
that every path agrees bit for bit with one definition.

**Fixed point** follows Xilinx `ap_fixed<W,I,Q,O>` / `ap_ufixed` exactly (`ap_fixed_base.h`: the
`double` constructor and the converting `operator=`; the saturation-bit count N is always 0).
A value is the integer `raw` times 2^-F, F = W - I. Converting an exact value v to a format:

1. Quantization of the dropped bits. With f = the fraction of |v|·2^F below its integer part q:
   `trn` floor (AP_TRN); `trn_zero` toward zero; `rnd` ties toward +inf (AP_RND); `rnd_zero`
   ties toward zero; `rnd_min_inf` ties toward -inf; `rnd_inf` ties away from zero; `rnd_conv`
   ties to even. (ap_fixed reads these off the two's-complement bits: the first dropped bit and
   the OR of the rest, plus the source's sign.)
2. Overflow of the rounded integer R against [lo, hi] = the raw range: `wrap` keeps the low W
   bits (two's complement); `sat` clamps; `sat_zero` gives 0 when out of range; `sat_sym` clamps
   to [-hi, hi] for signed types (so the most negative raw is never produced when the source is
   signed; for W = 1 ap_fixed yields -1 all the same), like `sat` for unsigned ones;
   `wrap_sm` (signed only, AP_WRAP_SM with N = 0) takes the low W bits and, when R is out of
   range and bit W of the *unrounded* floor differs from bit W-1 of the result, inverts the
   low W-1 bits and sets the sign bit to that bit W ("sign-magnitude" wrap).
   `ap_ufixed` rejects AP_WRAP_SM, and so does kiln.

Nothing goes through floating-point arithmetic: a float64 is split into its sign, 53-bit
mantissa and exponent, exactly as ap_fixed's `double` constructor does, so `quantize_fixed` is
exact for every float64 input and every W <= 64, whatever |x|·2^F (no 2^53 limit). Like
ap_fixed, subnormal inputs keep the implicit leading 1 (visible only when F > ~1000), +-inf
behaves as +-2^1024, and NaN as a huge number of its sign bit (wrap: 0, sat: hi/lo).

Raw integers live in int64. For `fixed<64,I,unsigned>` the int64 holds the 64-bit pattern (a raw
of 2^63 or more reads negative in int64; view it as uint64).

**Affine quantization** `q<storage, scale, zp>`: the scale is rounded to float32 and the input
converted to float32 (as every runtime does). Three arithmetic schemes give bit-exact agreement
with the runtimes, which differ from one another on ties:
- `div` (default): rint(x / s) + zp — ONNX QuantizeLinear, onnxruntime (NaN -> storage min).
- `mul_add`: rint(f32(x · (1/s)) + zp), two roundings — torch `quantize_per_channel`, and
  `quantize_per_tensor` to qint32 (NaN -> storage min).
- `fma`: rint(fma(x, 1/s, zp)), one rounding — torch `quantize_per_tensor` to qint8/quint8
  (fbgemm's AVX2 kernel) (NaN -> storage max).
- `mul`: rint(f32(x · (1/s))) + zp, the zero point added after rounding — torch
  `fake_quantize_per_tensor_affine` / `fake_quantize_per_channel_affine` (NaN -> storage min).
rint rounds half to even; the result saturates to the storage range (+-inf included).
Dequantization is f32(stored - zp) · f32(scale) in float32, as onnxruntime and fbgemm do.
"""

from __future__ import annotations

from collections.abc import Callable
from fractions import Fraction

import numpy as np

from kiln.errors import KilnError
from kiln.ir.types import FixedType, QuantType

AFFINE_SCHEMES = ("div", "mul_add", "fma", "mul")
"""Arithmetic of `quantize_affine`: ONNX/onnxruntime, torch per-channel/qint32, torch 8-bit,
torch fake quantization."""

_U = np.uint64
_ALL_ONES = 0xFFFF_FFFF_FFFF_FFFF
Bools = np.ndarray
U64 = np.ndarray


# -- uint64 helpers: shifts by per-element counts, where counts of 64 or more are legal --------
def _shr(a: U64, n: np.ndarray) -> U64:
    """a >> n (logical); 0 when n >= 64. `n` must be >= 0."""
    return np.where(n >= 64, _U(0), a >> np.minimum(n, 63).astype(_U))


def _shl(a: U64, n: np.ndarray) -> U64:
    """(a << n) mod 2^64; 0 when n >= 64. `n` must be >= 0."""
    return np.where(n >= 64, _U(0), a << np.minimum(n, 63).astype(_U))


def _low_bits(a: U64, n: np.ndarray) -> U64:
    """The n lowest bits of a (n <= 0: none, n >= 64: all)."""
    mask = np.where(n >= 64, _U(_ALL_ONES), _shl(np.full_like(a, 1), np.maximum(n, 0)) - _U(1))
    return a & mask


def _bit(a: U64, n: np.ndarray) -> Bools:
    """Bit n of a (False for n < 0 or n >= 64)."""
    inside = (n >= 0) & (n < 64)
    return inside & ((_shr(a, np.clip(n, 0, 63)) & _U(1)) == 1)


def _negate_if(neg: Bools, mag: U64) -> U64:
    """The low 64 bits of the two's complement of -mag where `neg`, else mag."""
    return np.where(neg, ~mag + _U(1), mag)


# -- fixed point ---------------------------------------------------------------------------------
_ROUND_UP: dict[str, Callable[[Bools, U64, Bools, Bools], Bools]] = {
    # (neg, q, half, rest) -> add one to the magnitude q? half = the dropped fraction's first bit
    # of |v|, rest = any lower dropped bit; so above-half = half & rest, tie = half & ~rest.
    "trn": lambda neg, q, half, rest: neg & (half | rest),
    "trn_zero": lambda neg, q, half, rest: np.zeros_like(neg),
    "rnd": lambda neg, q, half, rest: half & (rest | ~neg),
    "rnd_zero": lambda neg, q, half, rest: half & rest,
    "rnd_min_inf": lambda neg, q, half, rest: half & (rest | neg),
    "rnd_inf": lambda neg, q, half, rest: half,
    "rnd_conv": lambda neg, q, half, rest: half & (rest | ((q & _U(1)) == 1)),
}


def check_fixed(t: FixedType) -> None:
    """Reject formats ap_fixed itself rejects (`ap_ufixed` with AP_WRAP_SM)."""
    if not t.signed and t.saturation == "wrap_sm":
        raise KilnError(f"{t}: wrap_sm needs a signed fixed-point type",
                        hint="ap_ufixed does not support AP_WRAP_SM; use wrap or sat")


def _assign(neg: Bools, mag: U64, shift: np.ndarray, t: FixedType) -> np.ndarray:
    """ap_fixed assignment of the exact values ±mag·2^-shift (in units of t's LSB) to `t`."""
    check_fixed(t)
    w = t.width
    d, k = np.maximum(shift, 0), np.maximum(-shift, 0)  # right shift (rounds) / left shift
    q = _shl(_shr(mag, d), k)
    half, rest = _bit(mag, d - 1), _low_bits(mag, d - 1) != 0
    src_neg = neg
    inc = _ROUND_UP[t.rounding](neg, q, half, rest)
    r_mag = q + inc.astype(_U)
    big = (k > 0) & (mag != 0) & ((k >= 64) | (mag > _shr(np.full_like(mag, _ALL_ONES), k)))
    neg = neg & ((r_mag != 0) | big)  # a negative value rounded to 0 is 0
    over, under = _out_of_range(neg, r_mag, big, t)
    mask = _U((1 << w) - 1)
    bits = _negate_if(neg, r_mag) & mask
    bits = _SATURATE[t.saturation](bits, over, under, t)
    if t.saturation == "wrap_sm":
        t_mag = q + ((half | rest) & src_neg).astype(_U)
        lead = _floor_bit(src_neg, mag, t_mag, d, k, w)
        flip = (over | under) & (lead != _bit(bits, np.full_like(shift, w - 1)))
        sign = np.where(lead, _U(1 << (w - 1)), _U(0))
        bits = np.where(flip, (~bits & (mask >> _U(1))) | sign, bits)
    return _to_int64(bits, t)


def _out_of_range(neg: Bools, r_mag: U64, big: Bools, t: FixedType) -> tuple[Bools, Bools]:
    """(overflow, underflow) of the rounded value ±r_mag (`big`: |value| >= 2^64)."""
    w = t.width
    if not t.signed:
        return ~neg & (big | (r_mag > _U((1 << w) - 1))), neg
    over = ~neg & (big | (r_mag > _U((1 << (w - 1)) - 1)))
    limit = _U(1 << (w - 1))
    if t.saturation == "sat_sym" and w > 1:  # the most negative raw counts as underflow
        return over, neg & (big | (r_mag >= limit))
    return over, neg & (big | (r_mag > limit))


def _floor_bit(neg: Bools, mag: U64, t_mag: U64, d: np.ndarray, k: np.ndarray,
               w: int) -> Bools:
    """Bit w of the two's-complement floor T = ±t_mag (before rounding): ap_fixed's `lD`."""
    if w < 64:
        return _bit(_negate_if(neg, t_mag), np.full_like(d, w))
    # w == 64: when T is a right-shifted value, |T| <= 2^63 and bit 64 is the sign; when it is
    # ±mag·2^k, bit 64 is bit 64-k of ±mag (0 once k > 64).
    sign = neg & (t_mag != 0)
    shifted = np.where(k == 0, neg & (mag != 0), _bit(_negate_if(neg, mag), 64 - k))
    return np.where(k > 0, shifted & (k <= 64), sign)


def _sat_bits(bits: U64, over: Bools, under: Bools, t: FixedType) -> U64:
    w = t.width
    hi = (1 << (w - 1)) - 1 if t.signed else (1 << w) - 1
    lo = 0
    if t.signed:
        lo = (1 << (w - 1)) | (1 if t.saturation == "sat_sym" else 0)
    return np.where(over, _U(hi), np.where(under, _U(lo), bits))


_SATURATE: dict[str, Callable[[U64, Bools, Bools, FixedType], U64]] = {
    "wrap": lambda bits, over, under, t: bits,
    "wrap_sm": lambda bits, over, under, t: bits,  # the sign-magnitude fix-up is in _assign
    "sat": _sat_bits,
    "sat_sym": _sat_bits,
    "sat_zero": lambda bits, over, under, t: np.where(over | under, _U(0), bits),
}


def _to_int64(bits: U64, t: FixedType) -> np.ndarray:
    """W-bit patterns → raw int64 (sign-extended when signed; ufixed<64> keeps the pattern)."""
    if t.signed:
        sign = _U(1 << (t.width - 1))
        bits = (bits ^ sign) - sign  # two's-complement sign extension, mod 2^64
    return bits.view(np.int64)


def quantize_fixed(x: np.ndarray, t: FixedType) -> np.ndarray:
    """Raw integers (int64) of floats `x` converted to `t` as ap_fixed's `double` constructor.

    Exact for every float64 (float16/float32 inputs widen exactly): see the module docstring.
    """
    shape = np.shape(x)
    bits = np.array(x, dtype=np.float64).reshape(-1).view(_U)  # 1-d: no NumPy scalars below
    neg = (bits >> _U(63)) == 1
    field = ((bits >> _U(52)) & _U(0x7FF)).astype(np.int64)
    zero = (bits & _U(_ALL_ONES >> 1)) == 0
    mag = np.where(zero, _U(0), (bits & _U((1 << 52) - 1)) | _U(1 << 52))
    # value = mag · 2^(field - 1075); in units of 2^-F that is mag · 2^-(1075 - field - F).
    shift = 1075 - field - t.frac_bits
    return _assign(neg & ~zero, mag, shift, t).reshape(shape)


def _magnitude(raw: np.ndarray, t: FixedType) -> tuple[Bools, U64]:
    """(negative?, |raw| as uint64) of raw integers of type `t`."""
    arr = np.array(raw, dtype=np.int64).reshape(-1)
    pattern = arr.view(_U)
    if not t.signed:
        return np.zeros(arr.shape, bool), pattern
    neg = arr < 0
    return neg, _negate_if(neg, pattern)


def requantize_fixed(raw: np.ndarray, src: FixedType, dst: FixedType) -> np.ndarray:
    """Raw integers of `dst` for raw integers of `src`, as ap_fixed's converting assignment.

    Exact integer arithmetic: shifts, rounding on the dropped bits with dst's rounding mode,
    then dst's overflow mode (src's modes play no part, as in ap_fixed).
    """
    neg, mag = _magnitude(raw, src)
    shift = np.full(neg.shape, src.frac_bits - dst.frac_bits, dtype=np.int64)
    return _assign(neg, mag, shift, dst).reshape(np.shape(raw))


def fixed_to_float(raw: np.ndarray, t: FixedType, dtype: type = np.float64) -> np.ndarray:
    """raw · 2^-F as `dtype` (float64 or float32), rounded once to nearest even.

    Matches ap_fixed's `to_double()` / `to_float()` wherever the result is a normal number.
    """
    neg, mag = _magnitude(raw, t)
    value: np.ndarray = mag.astype(dtype)
    value = np.where(neg, -value, value)
    return np.ldexp(value, -t.frac_bits).astype(dtype).reshape(np.shape(raw))


# -- affine quantization --------------------------------------------------------------------------
def _channel_shape(q: QuantType, ndim: int) -> tuple[int, ...]:
    """Shape that broadcasts per-channel parameters along `q.axis` of an `ndim` array."""
    if q.axis is None:
        return ()
    if not 0 <= q.axis < ndim:
        raise KilnError(f"quantization axis {q.axis} is out of range for rank {ndim}")
    return tuple(len(q.scale) if i == q.axis else 1 for i in range(ndim))


def _params(q: QuantType, ndim: int, dtype: type) -> tuple[np.ndarray, np.ndarray]:
    shape = _channel_shape(q, ndim)
    scale: np.ndarray = np.asarray(q.scale, dtype=dtype).reshape(shape)
    zero = np.asarray(q.zero_point, dtype=np.int64).reshape(shape)
    return scale, zero


def _saturate(t: np.ndarray, q: QuantType, nan_to_max: bool) -> np.ndarray:
    """Integer-valued float64 `t` → storage integers, saturating (NaN → min or max)."""
    info = np.iinfo(q.storage.numpy)
    lo, hi = float(info.min), float(info.max)
    t = np.where(np.isnan(t), hi if nan_to_max else lo, t)
    # float(info.max) is 2^63 for i64: values at or above it saturate, the rest convert exactly.
    inside = np.clip(t, lo, np.nextafter(hi, 0.0) if hi >= 2.0**63 else hi)
    out = inside.astype(np.int64)
    out = np.where(t >= hi, info.max, out)
    return out.astype(q.storage.numpy)


def _fma_f32(x: np.ndarray, r: np.ndarray, z: np.ndarray) -> np.ndarray:
    """float32(x·r + z) rounded once, for float32 x, r and integer z (exact emulation).

    x·r is exact in float64 (24 + 24 bits); the sum is rounded to odd in float64 (exact
    two-sum error), which makes the final rounding to float32 correct.
    """
    p = x.astype(np.float64) * r.astype(np.float64)
    zf = z.astype(np.float64)
    with np.errstate(invalid="ignore"):
        s = p + zf
        back = s - zf
        err = (p - back) + (zf - (s - back))
    even = (s.view(np.int64) & 1) == 0
    nudge = np.isfinite(s) & (err != 0) & even
    s = np.where(nudge, np.nextafter(s, np.where(err > 0, np.inf, -np.inf)), s)
    return s.astype(np.float32)


def quantize_affine(x: np.ndarray, q: QuantType, *, scheme: str = "div") -> np.ndarray:
    """Stored integers of float `x` quantized to `q` (per tensor, or per channel along q.axis).

    `scheme` picks the arithmetic of one runtime (`div`, `mul_add`, `fma`, `mul`; module
    docstring).
    """
    if scheme not in AFFINE_SCHEMES:
        raise KilnError(f"unknown affine quantization scheme '{scheme}'",
                        hint=f"use one of {', '.join(AFFINE_SCHEMES)}")
    xf = np.asarray(x, dtype=np.float32)
    scale, zero = _params(q, xf.ndim, np.float32)
    with np.errstate(all="ignore"):
        if scheme == "div":
            t = np.rint((xf / scale).astype(np.float64)) + zero
        elif scheme == "mul_add":
            inv = np.float32(1.0) / scale
            t = np.rint(((xf * inv) + zero.astype(np.float32)).astype(np.float64))
        elif scheme == "mul":
            inv = np.float32(1.0) / scale
            t = np.rint((xf * inv).astype(np.float64)) + zero
        else:
            inv = np.float32(1.0) / scale
            t = np.rint(_fma_f32(xf, inv, zero).astype(np.float64))
    return _saturate(t, q, nan_to_max=scheme == "fma")


def dequantize_affine(v: np.ndarray, q: QuantType, dtype: type = np.float32) -> np.ndarray:
    """(stored - zp) · scale: float32 as onnxruntime/fbgemm compute it, or exactly-once-rounded
    float64 when `dtype` is float64 (the difference is exact in float64 below 2^53)."""
    arr = np.asarray(v)
    scale, zero = _params(q, arr.ndim, dtype)
    diff = (arr.astype(np.int64) - zero).astype(dtype)
    return (diff * scale).astype(dtype)


def requantize_affine(v: np.ndarray, src: QuantType, dst: QuantType) -> np.ndarray:
    """Stored integers of `dst` for stored integers of `src`, by exact real arithmetic.

    out = round_half_even((v - zp_src) · s_src / s_dst) + zp_dst, saturated, with the scales
    taken as their exact float64 values and no intermediate rounding (so it is *not*
    dequantize-then-quantize, which rounds twice). Computed in float64, and redone with exact
    fractions wherever the float64 quotient lies within a few ulps of a tie or is too large
    for float64 to hold the integer exactly.
    """
    shape = np.shape(v)
    arr = np.asarray(v).reshape(shape or (1,))  # 0-d → 1-d so that np.nonzero works
    s_in, z_in = _params(src, arr.ndim, np.float64)
    s_out, z_out = _params(dst, arr.ndim, np.float64)
    n = arr.astype(np.int64) - z_in
    with np.errstate(all="ignore"):
        ratio = s_in / s_out
        y = n.astype(np.float64) * ratio
    n, y, ratio, s_in, s_out, z_out = np.broadcast_arrays(n, y, ratio, s_in, s_out, z_out)
    info = np.iinfo(dst.storage.numpy)
    rounded = np.rint(y)
    with np.errstate(invalid="ignore"):
        near_tie = np.abs(y - np.floor(y) - 0.5) <= 8 * np.spacing(np.abs(y))
    huge = np.isfinite(ratio) & (ratio > 1e-290) & ~(np.abs(y) < 2.0**66)
    slow = ~huge & (near_tie | ~(np.abs(rounded + z_out) < 2.0**50)
                    | ~np.isfinite(ratio) | (ratio <= 1e-290))
    fast = ~huge & ~slow
    total = np.where(fast, rounded, 0.0).astype(np.int64) + np.where(fast, z_out, 0)
    out = np.clip(total, info.min, info.max)
    out = np.where(huge, np.where(y > 0, info.max, info.min), out)
    for idx in zip(*np.nonzero(slow)):
        exact = Fraction(int(n[idx])) * Fraction(float(s_in[idx])) / Fraction(float(s_out[idx]))
        out[idx] = min(max(round(exact) + int(z_out[idx]), int(info.min)), int(info.max))
    return out.astype(dst.storage.numpy).reshape(shape)

"""int8 elementwise ops and reductions of the cpu target: kiln.qadd, kiln.qrescale,
kiln.qreduce_mean and max pooling on 8-bit storage (bit-exact, `kiln/ir/requant.py`).

These were plain per-element loops around `kiln_rmulshift`'s int64 multiply, which GCC turns
into 64-bit lane multiplies with widening shuffles (~2 cycles an element, 14 % of int8
ResNet-8 in its three residual adds). Now:

* **qadd** calls `kiln_qadd` (`runtime/kiln_qops.c`): each operand's rescale runs in 32-bit
  lanes through the exact split of its multiplier described in `kiln_qops.h`; `split_term`
  builds the constants and checks, for all 256 stored values, that every intermediate fits
  int32 and the result equals `requant.rounding_mul_shift` — where it does not (extreme
  multipliers), the kernel stays the plain int64 loop.
* **qrescale** is `kiln_qmul_invariant` with the factor 1 (the same final requantization).
* **qreduce_mean** sums each row in int32 (exact: count · 256 < 2^31 is checked), then divides
  rounding half away from zero as before. With AVX-512 the sums come from `kiln_qrow_sums`
  (byte sums by vpsadbw, four 16-byte rows a vector); GCC's loop widened every byte to 32 bits
  and summed each row horizontally, and MobileNet's SE and head pools are thousands of short
  rows: 0.96x its int8 batch-64 time (interleaved A/B). Other machines keep the plain loop.
* **max pooling** drops the per-tap bounds checks where every window lies inside the input
  (no padding, no ceil-mode overhang), so the taps are straight-line maxima GCC vectorizes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from kiln.codegen.c.context import KernelContext
from kiln.codegen.c.emit_pool import _as_2d
from kiln.ir import requant
from kiln.ir.graph import Value
from kiln.ir.ops.qnn import QAdd, QRescale
from kiln.ir.types import QuantType

INT32 = (-(1 << 31), (1 << 31) - 1)


def _quant(value: Value) -> QuantType:
    q = value.type.dtype
    assert isinstance(q, QuantType)
    return q


def _storage(value: Value) -> tuple[int, int]:
    info = np.iinfo(_quant(value).storage.numpy)
    return int(info.min), int(info.max)


def _ctype(value: Value) -> str:
    return "uint8_t" if _storage(value)[0] == 0 else "int8_t"


def _fits_int32(*arrays: np.ndarray) -> bool:
    return all(INT32[0] <= int(a.min()) and int(a.max()) <= INT32[1] for a in arrays)


@dataclass(frozen=True)
class QTerm:
    """One operand's rescale in `kiln_qops.h`'s split form: a*hi + bias + ((a*lo + round) >> u)
    with `a` the stored value; equal to rmul((a - zp) << ls, M, e) for every stored value."""

    hi: int
    bias: int
    lo: int
    round: int
    u: int
    unsigned: int

    def c_init(self) -> str:
        return (f"{{{self.hi}, {self.bias}, {self.lo}, {self.round}, {self.u}, "
                f"{self.unsigned}}}")


def split_term(storage: tuple[int, int], zero_point: int, left_shift: int, multiplier: int,
               shift: int) -> QTerm | None:
    """The split form of rmul((a - zp) << left_shift, M, e), or None where it is not exact in
    int32 for some stored value `a` in `storage` (checked for all of them)."""
    u = 31 - shift - left_shift
    if not 1 <= u <= 30:
        return None
    hi, lo = multiplier >> u, multiplier & ((1 << u) - 1)
    term = QTerm(hi, -zero_point * hi, lo, (1 << (u - 1)) - zero_point * lo, u,
                 int(storage[0] == 0))
    a = np.arange(storage[0], storage[1] + 1, dtype=np.int64)
    whole, part = a * hi, a * lo
    value = whole + term.bias + ((part + term.round) >> u)
    reference = requant.rounding_mul_shift((a - zero_point) << left_shift, multiplier, shift)
    consts = np.array([hi, lo, term.bias, term.round], np.int64)
    if not _fits_int32(whole, part, whole + term.bias, part + term.round, value, consts):
        return None
    return term if np.array_equal(value, reference) else None


def qout(multiplier: int, shift: int, zero_point: int, low: int, high: int) -> str:
    """The C initializer of a `kiln_qout`: clamp(rmul(s, M, e) + zo, low, high)."""
    return f"{{{multiplier}, {31 - shift}, {zero_point}, {low}, {high}}}"


# -- qadd ------------------------------------------------------------------------------------
def emit_qadd(ctx: KernelContext) -> None:
    """TFLite add: rescale both (after << left_shift), add, requantize, clamp."""
    kind = ctx.op.kind
    assert isinstance(kind, QAdd)
    a, b = ctx.op.operands
    y = ctx.op.results[0]
    low, high = kind._clamp()
    terms = [split_term(_storage(v), _quant(v).zero_point[0], kind.left_shift, m, e)
             for v, m, e in ((a, kind.lhs_multiplier, kind.lhs_shift),
                             (b, kind.rhs_multiplier, kind.rhs_shift))]
    if terms[0] is None or terms[1] is None:
        _qadd_int64(ctx)
        ctx.note("qadd int8")
        return
    w = ctx.w
    w.raw("#if KILN_QOPS_AVX512\n")
    w.line("/* (x - zp) << left_shift rescaled in 32-bit lanes (exact split: kiln_qops.h) */")
    w.line(f"static const kiln_qterm ta = {terms[0].c_init()};")
    w.line(f"static const kiln_qterm tb = {terms[1].c_init()};")
    w.line(f"static const kiln_qout out = "
           f"{qout(kind.multiplier[0], kind.shift[0], _quant(y).zero_point[0], low, high)};")
    w.line(f"kiln_qadd({ctx.ref(a)}, &ta, {ctx.ref(b)}, &tb, &out, {y.type.numel}L, "
           f"{ctx.ref(y)});")
    w.raw("#else\n")
    _qadd_int64(ctx)
    w.raw("#endif\n")
    ctx.note("qadd int8 split (int64 loop without AVX-512)")


def _clamped_store(ctx: KernelContext, expr: str, low: int, high: int) -> None:
    ctx.w.line(f"int64_t v = {expr};")
    ctx.w.line(f"Y[i] = ({_ctype(ctx.op.results[0])})(v < {low} ? {low} : "
               f"(v > {high} ? {high} : v));")


def _qadd_int64(ctx: KernelContext) -> None:
    """The per-element int64 loop: multipliers the split cannot carry exactly, and machines
    without AVX-512 (GCC vectorizes it with the constants inlined)."""
    kind = ctx.op.kind
    assert isinstance(kind, QAdd)
    a, b = ctx.op.operands
    y = ctx.op.results[0]
    low, high = kind._clamp()
    for tag, v in (("A", a), ("B", b)):
        ctx.w.line(f"const {_ctype(v)}* {tag} = (const {_ctype(v)}*){ctx.ref(v)};")
    ctx.w.line(f"{_ctype(y)}* Y = ({_ctype(y)}*){ctx.ref(y)};")
    with ctx.w.block(f"for (long i = 0; i < {y.type.numel}L; ++i)"):
        ctx.w.line(f"int64_t sa = kiln_rmulshift(((int)A[i] - {_quant(a).zero_point[0]}) * "
                   f"{1 << kind.left_shift}, {kind.lhs_multiplier}, {kind.lhs_shift});")
        ctx.w.line(f"int64_t sb = kiln_rmulshift(((int)B[i] - {_quant(b).zero_point[0]}) * "
                   f"{1 << kind.left_shift}, {kind.rhs_multiplier}, {kind.rhs_shift});")
        ctx.w.line("int32_t s = (int32_t)(uint32_t)(uint64_t)(sa + sb);")
        _clamped_store(ctx, f"kiln_rmulshift(s, {kind.multiplier[0]}, {kind.shift[0]}) + "
                       f"{_quant(y).zero_point[0]}", low, high)


# -- qrescale ----------------------------------------------------------------------------------
def emit_qrescale(ctx: KernelContext) -> None:
    """rmul(x - zx) + zo, clamped: `kiln_qmul_invariant` with the factor 1 (AVX-512), else
    the plain loop."""
    kind = ctx.op.kind
    assert isinstance(kind, QRescale)
    x, y = ctx.op.operands[0], ctx.op.results[0]
    low, high = kind._clamp()
    w = ctx.w
    w.raw("#if KILN_QOPS_AVX512\n")
    w.line(f"static const kiln_qout out = "
           f"{qout(kind.multiplier[0], kind.shift[0], _quant(y).zero_point[0], low, high)};")
    w.line(f"kiln_qmul_invariant({ctx.ref(x)}, {int(_storage(x)[0] == 0)}, "
           f"{_quant(x).zero_point[0]}, 1, &out, {y.type.numel}L, {ctx.ref(y)});")
    w.raw("#else\n")
    w.line(f"const {_ctype(x)}* X = (const {_ctype(x)}*){ctx.ref(x)};")
    w.line(f"{_ctype(y)}* Y = ({_ctype(y)}*){ctx.ref(y)};")
    with w.block(f"for (long i = 0; i < {y.type.numel}L; ++i)"):
        _clamped_store(ctx, f"kiln_rmulshift((int)X[i] - {_quant(x).zero_point[0]}, "
                       f"{kind.multiplier[0]}, {kind.shift[0]}) + {_quant(y).zero_point[0]}",
                       low, high)
    w.raw("#endif\n")
    ctx.note("qrescale int8")


# -- qreduce_mean ------------------------------------------------------------------------------
def emit_qreduce_mean(ctx: KernelContext) -> None:
    """Σ (x - zp) over the trailing axes, divided rounding half away from zero, + zp."""
    x, y = ctx.op.operands[0], ctx.op.results[0]
    count = math.prod(x.type.shape[a] for a in getattr(ctx.op.kind, "axes", ()))
    zp = _quant(x).zero_point[0]
    low, high = _storage(y)
    acc = "int32_t" if count * 256 < 1 << 31 else "int64_t"  # Σ x of 8-bit values is exact
    w = ctx.w
    w.line(f"const {_ctype(x)}* X = (const {_ctype(x)}*){ctx.ref(x)};")
    w.line(f"{_ctype(y)}* Y = ({_ctype(y)}*){ctx.ref(y)};")
    if acc == "int32_t":
        sums = ctx.scratch(y.type.numel)
        w.raw("#if KILN_QOPS_AVX512\n")
        w.line(f"int32_t* S = (int32_t*){sums};")
        w.line(f"kiln_qrow_sums(X, {int(_storage(x)[0] == 0)}, {y.type.numel}L, {count}L, S);")
        with w.block(f"for (long i = 0; i < {y.type.numel}L; ++i)"):
            w.line(f"const int32_t s = S[i] - {zp * count};")
            w.line(f"int32_t d = s >= 0 ? (s + {count // 2}) / {count} : "
                   f"-((-s + {count // 2}) / {count});")
            _clamped_store(ctx, f"d + {zp}", low, high)
        w.raw("#else\n")
        w.line(f"(void){sums};")
    with w.block(f"for (long i = 0; i < {y.type.numel}L; ++i)"):
        w.line(f"const {_ctype(x)}* row = X + i * {count}L;")
        w.line(f"{acc} raw = 0;")
        w.line(f"for (long j = 0; j < {count}L; ++j) raw += row[j];")
        w.line(f"const int64_t s = (int64_t)raw - {zp * count}LL;")
        w.line(f"int64_t d = s >= 0 ? (s + {count // 2}) / {count} : "
               f"-((-s + {count // 2}) / {count});")
        _clamped_store(ctx, f"d + {zp}", low, high)
    if acc == "int32_t":
        w.raw("#endif\n")
    ctx.note("qreduce_mean int8")


# -- max pooling -------------------------------------------------------------------------------
def emit_qmax_pool(ctx: KernelContext) -> None:
    """Max over each window's in-bounds taps (padding never wins), on 8-bit storage."""
    op = ctx.op
    x, y = op.operands[0], op.results[0]
    xs, ys = x.type.shape, y.type.shape
    spatial = len(xs) - 2
    h, w_ = (1, xs[2]) if spatial == 1 else xs[2:]
    oh, ow = (1, ys[2]) if spatial == 1 else ys[2:]
    geo = _as_2d(op.kind, spatial)
    (kh, kw), (sh, sw) = geo["kernel"], geo["stride"]
    pt, pl = geo["pad"][0], geo["pad"][1]
    dh, dw = geo["dilation"]
    inside = (pt == 0 and pl == 0 and (oh - 1) * sh + (kh - 1) * dh < h
              and (ow - 1) * sw + (kw - 1) * dw < w_)
    t = _ctype(x)
    w = ctx.w
    w.line(f"const {t}* X = (const {t}*){ctx.ref(x)};")
    w.line(f"{t}* Y = ({t}*){ctx.ref(y)};")
    with w.block(f"for (long p = 0; p < {xs[0] * xs[1]}L; ++p)"):
        w.line(f"const {t}* xp = X + p * {h * w_}L;")
        if inside and kh * kw <= 16:
            _max_inside(ctx, t, (kh, kw), (sh, sw), (dh, dw), (w_, oh, ow))
            ctx.note("max pool int8 (windows inside)")
            return
        with w.block(f"for (int oy = 0; oy < {oh}; ++oy)"), \
                w.block(f"for (int ox = 0; ox < {ow}; ++ox)"):
            w.line(f"int best = {_storage(x)[0]};")
            with w.block(f"for (int ky = 0; ky < {kh}; ++ky)"):
                w.line(f"int iy = oy * {sh} - {pt} + ky * {dh};")
                w.line(f"if (iy < 0 || iy >= {h}) continue;")
                with w.block(f"for (int kx = 0; kx < {kw}; ++kx)"):
                    w.line(f"int ix = ox * {sw} - {pl} + kx * {dw};")
                    w.line(f"if (ix >= 0 && ix < {w_} && xp[iy * {w_} + ix] > best) "
                           f"best = xp[iy * {w_} + ix];")
            w.line(f"Y[p * {oh * ow}L + oy * {ow} + ox] = ({t})best;")
    ctx.note("max pool int8")


def _max_inside(ctx: KernelContext, t: str, kernel: tuple[int, int], stride: tuple[int, int],
                dilation: tuple[int, int], sizes: tuple[int, int, int]) -> None:
    """Windows that all lie inside the input: the taps unrolled, no bounds checks, each a
    strided row read GCC vectorizes over the output row."""
    (kh, kw), (sh, sw), (dh, dw), (w_, oh, ow) = kernel, stride, dilation, sizes
    w = ctx.w
    with w.block(f"for (int oy = 0; oy < {oh}; ++oy)"):
        w.line(f"const {t}* r = xp + oy * {sh * w_}L;")
        w.line(f"{t}* yr = Y + p * {oh * ow}L + oy * {ow}L;")
        with w.block(f"for (int ox = 0; ox < {ow}; ++ox)"):
            w.line(f"{t} best = r[ox * {sw}];")
            for ky in range(kh):
                for kx in range(kw):
                    if ky == 0 and kx == 0:
                        continue
                    tap = f"r[{ky * dh * w_ + kx * dw} + ox * {sw}]"
                    w.line(f"best = {tap} > best ? {tap} : best;")
            w.line("yr[ox] = best;")


__all__ = ["QTerm", "emit_qadd", "emit_qmax_pool", "emit_qreduce_mean", "emit_qrescale",
           "qout", "split_term"]

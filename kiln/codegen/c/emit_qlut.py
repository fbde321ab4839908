"""C kernels of the integer elementwise ops `kiln.qlut` and `kiln.qmul` (bit-exact).

**qlut** is one byte → byte lookup per element. The table is written re-indexed by the input's
raw byte (an int8 value v is the byte v & 0xFF, whose IR index is v + 128 = byte ^ 0x80), so
the kernel reads `T[X[i]]` with no arithmetic. With AVX-512 VBMI (`__AVX512VBMI__`, GCC) the
256 entries sit in four 64-byte registers and 64 bytes are looked up at once: two two-source
byte permutes (`__builtin_shuffle` → `vpermi2b`, each covering 128 entries by the index's low
7 bits) and a select on the index's top bit. Other machines and compilers run the scalar loop,
which also finishes the tail; both read the same table, so results never depend on the path.

**qmul** with broadcasting: the output's index space is reduced to a few loops by dropping
unit dims and merging neighbours that every operand walks contiguously (or not at all), so the
squeeze-excitation product (N, C, H, W) × (N, C, 1, 1) is two loops — the gate byte is loop
invariant in the inner one. Each element is (a - za)·(b - zb) requantized by
`kiln_rmulshift` (`kiln_qgemm.h`), + zo, clamped — `kiln.ir.requant`'s single rounding. Where
the innermost loop holds one operand fixed (that gate), with AVX-512 each row is one
`kiln_qmul_invariant` call (`kiln_qops.h`: the same int32 product, the int64 requantization on
even/odd lanes), 2-3x faster than the loop GCC vectorizes with 64-bit lane multiplies (which
stays the path of other machines).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from contextlib import ExitStack

from kiln.codegen.c.context import KernelContext
from kiln.codegen.c.emit_qgate import packing_qmul
from kiln.codegen.c.emit_qnn import is_int8
from kiln.ir.graph import Op, Value
from kiln.ir.ops.base import OpDef
from kiln.ir.ops.core import Return
from kiln.ir.ops.qnn_eltwise import QLut, QMul, storage_bounds
from kiln.ir.types import QuantType

Emitter = Callable[[KernelContext], None]
VECTOR_BYTES = 64


def _quant(value: Value) -> QuantType:
    q = value.type.dtype
    assert isinstance(q, QuantType)
    return q


def _ctype(value: Value) -> str:
    return "uint8_t" if storage_bounds(_quant(value))[0] == 0 else "int8_t"


def qeltwise_problem(op: Op) -> str | None:
    """Why the C kernels cannot compile this qlut / qmul (None when they can)."""
    if any(user.isa(Return) for v in op.results for user in v.users):
        return ("its quantized result is a model output, but the cpu target returns float32 "
                "tensors (end the model with kiln.dequantize)")
    if not all(is_int8(v) for v in (*op.operands, *op.results)):
        return "needs 8-bit per-tensor quantized operands and result"
    return None


def byte_table(kind: QLut, q_in: QuantType, q_out: QuantType) -> list[int]:
    """The table indexed by the input's raw byte, holding the result's raw bytes."""
    shift = 0x80 if storage_bounds(q_in)[0] < 0 else 0
    del q_out  # the entries are stored values: their low byte is what the kernel stores
    return [kind.table[b ^ shift] & 0xFF for b in range(256)]


def _array(ctx: KernelContext, name: str, values: Sequence[int]) -> None:
    ctx.w.line(f"static const uint8_t {name}[{len(values)}] = {{")
    with ctx.w.indented():
        for start in range(0, len(values), 16):
            ctx.w.line(", ".join(str(v) for v in values[start:start + 16]) + ",")
    ctx.w.line("};")


def emit_qlut(ctx: KernelContext) -> None:
    """y = T[x] over every byte (module docstring)."""
    kind = ctx.op.kind
    assert isinstance(kind, QLut)
    x, y = ctx.op.operands[0], ctx.op.results[0]
    w = ctx.w
    w.line(f"/* {kind.function or 'table'}: {x.type.dtype} -> {y.type.dtype}, by raw byte */")
    _array(ctx, "T", byte_table(kind, _quant(x), _quant(y)))
    w.line(f"const uint8_t* X = (const uint8_t*){ctx.ref(x)};")
    w.line(f"uint8_t* Y = (uint8_t*){ctx.ref(y)};")
    w.line("long i = 0;")
    w.raw("#if defined(__AVX512VBMI__) && defined(__GNUC__) && !defined(__clang__)\n")
    w.line("typedef uint8_t u8x64 __attribute__((vector_size(64)));")
    w.line("u8x64 t0, t1, t2, t3;")
    w.line("memcpy(&t0, T, 64); memcpy(&t1, T + 64, 64);")
    w.line("memcpy(&t2, T + 128, 64); memcpy(&t3, T + 192, 64);")
    with w.block(f"for (; i + {VECTOR_BYTES} <= {x.type.numel}L; i += {VECTOR_BYTES})"):
        w.line("u8x64 v, r;")
        w.line("memcpy(&v, X + i, 64);")
        w.line("const u8x64 low = __builtin_shuffle(t0, t1, v);  /* entries 0..127 */")
        w.line("const u8x64 high = __builtin_shuffle(t2, t3, v); /* entries 128..255 */")
        w.line("const u8x64 top = (u8x64)(v >= 128);")
        w.line("r = (low & ~top) | (high & top);")
        w.line("memcpy(Y + i, &r, 64);")
    w.raw("#endif\n")
    with w.block(f"for (; i < {x.type.numel}L; ++i)"):
        w.line("Y[i] = T[X[i]];")
    ctx.note("qlut int8")


# -- qmul ----------------------------------------------------------------------------------------
Loop = tuple[int, tuple[int, ...]]
"""One loop of a broadcast walk: its extent and each operand's element stride."""


def broadcast_loops(out: Sequence[int], shapes: Sequence[Sequence[int]]) -> list[Loop]:
    """The fewest loops (outermost first) walking `out` and each operand (module docstring)."""
    rank = len(out)
    strides: list[list[int]] = []
    for shape in shapes:
        padded = [1] * (rank - len(shape)) + list(shape)
        own = [math.prod(padded[k + 1:]) for k in range(rank)]
        strides.append([0 if padded[k] == 1 else own[k] for k in range(rank)])
    loops: list[Loop] = [(out[k], tuple(s[k] for s in strides)) for k in range(rank)
                         if out[k] != 1]
    merged: list[Loop] = []
    for extent, step in loops:
        if merged:
            outer, outer_step = merged[-1]
            if all(o == s * extent for o, s in zip(outer_step, step)):
                merged[-1] = (outer * extent, step)
                continue
        merged.append((extent, step))
    return merged


def emit_qmul(ctx: KernelContext) -> None:
    """Broadcast (a - za)·(b - zb), requantized and clamped (module docstring)."""
    kind = ctx.op.kind
    assert isinstance(kind, QMul)
    a, b = ctx.op.operands
    y = ctx.op.results[0]
    low, high = kind._clamp()
    w = ctx.w
    loops = broadcast_loops(y.type.shape, [a.type.shape, b.type.shape])
    rows = bool(loops) and loops[-1][1] in ((1, 0), (0, 1))
    if rows:
        w.raw("#if KILN_QOPS_AVX512\n")
        _qmul_invariant(ctx, loops)
        w.raw("#else\n")
    for tag, v in (("A", a), ("B", b)):
        w.line(f"const {_ctype(v)}* {tag} = (const {_ctype(v)}*){ctx.ref(v)};")
    w.line(f"{_ctype(y)}* Y = ({_ctype(y)}*){ctx.ref(y)};")
    index = ["0L", "0L", "0L"]  # output, A, B offsets as C expressions
    out_strides = [math.prod(e for e, _ in loops[k + 1:]) for k in range(len(loops))]
    za, zb = _quant(a).zero_point[0], _quant(b).zero_point[0]
    with ExitStack() as nest:
        for k, (extent, step) in enumerate(loops):
            var = f"i{k}"
            nest.enter_context(w.block(f"for (long {var} = 0; {var} < {extent}L; ++{var})"))
            terms = (out_strides[k], *step)
            index = [_plus(index[j], var, terms[j]) for j in range(3)]
        w.line(f"const int32_t p = ({_centered('A', index[1], za)}) * "
               f"({_centered('B', index[2], zb)});")
        w.line(f"const int64_t v = kiln_rmulshift(p, {kind.multiplier[0]}, {kind.shift[0]}) + "
               f"{_quant(y).zero_point[0]};")
        w.line(f"Y[{index[0]}] = ({_ctype(y)})(v < {low} ? {low} : (v > {high} ? {high} : v));")
    if rows:
        w.raw("#endif\n")
    ctx.note("qmul int8" + (" broadcast" if a.type.shape != b.type.shape else "")
             + (" rows" if rows else ""))


def _qmul_invariant(ctx: KernelContext, loops: list[Loop]) -> None:
    """The innermost loop walks one operand contiguously and holds the other fixed (the SE
    gate): per outer index, `kiln_qmul_invariant` (`kiln_qops.h`, AVX-512) over the row with
    the fixed factor g = b - zb (|(a - za) * g| < 2^17, the same int32 product as the loop)."""
    kind = ctx.op.kind
    assert isinstance(kind, QMul)
    a, b = ctx.op.operands
    y = ctx.op.results[0]
    low, high = kind._clamp()
    w = ctx.w
    extent, inner = loops[-1]
    row, fixed = (a, b) if inner == (1, 0) else (b, a)
    row_at, fixed_at = (1, 2) if inner == (1, 0) else (2, 1)
    w.line(f"const {_ctype(fixed)}* G = (const {_ctype(fixed)}*){ctx.ref(fixed)};")
    w.line(f"static const kiln_qout out = {{{kind.multiplier[0]}, {31 - kind.shift[0]}, "
           f"{_quant(y).zero_point[0]}, {low}, {high}}};")
    outer = loops[:-1]
    index = ["0L", "0L", "0L"]
    with ExitStack() as nest:
        for k, (count, step) in enumerate(outer):
            var = f"i{k}"
            nest.enter_context(w.block(f"for (long {var} = 0; {var} < {count}L; ++{var})"))
            terms = (extent * math.prod(e for e, _ in outer[k + 1:]), *step)
            index = [_plus(index[j], var, terms[j]) for j in range(3)]
        unsigned = int(storage_bounds(_quant(row))[0] == 0)
        w.line(f"kiln_qmul_invariant((const uint8_t*){ctx.ref(row)} + {index[row_at]}, "
               f"{unsigned}, {_quant(row).zero_point[0]}, "
               f"{_centered('G', index[fixed_at], _quant(fixed).zero_point[0])}, &out, "
               f"{extent}L, (uint8_t*){ctx.ref(y)} + {index[0]});")


def _centered(array: str, index: str, zero_point: int) -> str:
    """`(int32_t)X[i] - zp` written without a double minus."""
    sign = "-" if zero_point >= 0 else "+"
    return f"(int32_t){array}[{index}] {sign} {abs(zero_point)}"


def _plus(expr: str, var: str, stride: int) -> str:
    if stride == 0:
        return expr
    term = var if stride == 1 else f"{var} * {stride}L"
    return term if expr == "0L" else f"{expr} + {term}"


QELTWISE_KERNELS: dict[type[OpDef], Emitter] = {QLut: emit_qlut, QMul: packing_qmul(emit_qmul)}
"""Kernels of `kiln/ir/ops/qnn_eltwise.py` (registered in `kernels.py`)."""

__all__ = ["QELTWISE_KERNELS", "broadcast_loops", "byte_table", "emit_qlut", "emit_qmul",
           "qeltwise_problem"]

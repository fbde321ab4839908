"""The int8 kernel of `kiln.qmatmul` (attention's Q·Kᵀ and P·V on quantized activations).

Semantics are `QMatMul.reference_typed`: numpy.matmul of the zero-point-shifted operands
(batched, broadcasting, a 1-D operand a vector), the exact sums wrapped to int32, then the
single-rounding requantization of `kiln/ir/requant.py` with one multiplier per tensor or per
rhs column. The kernel loops over the broadcast batch and calls `kiln_qmatmul`
(`runtime/kiln_qmatmul.c`) once per matrix; operands that are compile-time parameters
(a quantized weight as rhs) are emitted as `static const` 8-bit arrays, because the float32
weights blob stores quantized integers as floats.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from kiln.codegen.c.context import KernelContext
from kiln.codegen.c.emit_qmove import byte_source, storage_problem
from kiln.ir.graph import Op, Value
from kiln.ir.ops.elementwise import broadcast_shapes
from kiln.ir.ops.qnn import QMatMul
from kiln.ir.types import QuantType

Shape = tuple[int, ...]


def _quant(value: Value) -> QuantType:
    q = value.type.dtype
    assert isinstance(q, QuantType)
    return q


def _unsigned(value: Value) -> int:
    return int(np.dtype(_quant(value).storage.numpy).kind == "u")


def qmatmul_problem(op: Op) -> str | None:
    """Why `emit_qmatmul` cannot compile `op` (None when it can)."""
    lhs, rhs = op.operands
    problem = storage_problem(op, (lhs, op.results[0]))
    if problem is not None:
        return problem
    q = rhs.type.dtype
    if not isinstance(q, QuantType) or q.storage.bits != 8:
        return "needs an 8-bit quantized rhs (q<i8|u8, ...>)"
    return None


def matrices(op: Op) -> tuple[int, int, int, Shape, Shape, Shape]:
    """(M, N, K, lhs batch, rhs batch, result batch) of a (q)matmul, 1-D operands promoted
    as numpy.matmul does (the result has the same elements in the same order)."""
    a, b = op.operands[0].type.shape, op.operands[1].type.shape
    a2 = (1, *a) if len(a) == 1 else a
    b2 = (*b, 1) if len(b) == 1 else b
    batch = broadcast_shapes(a2[:-2], b2[:-2])
    return a2[-2], b2[-1], a2[-1], a2[:-2], b2[:-2], batch


def batch_offsets(batch: Shape, operand: Shape, size: int) -> list[int]:
    """Element offset of each matrix of an operand with batch dims `operand` (broadcast to
    `batch`, numpy rules) for every batch index in row-major order; `size` = one matrix."""
    view = (1,) * (len(batch) - len(operand)) + operand
    index = np.arange(math.prod(view)).reshape(view) * size
    return [int(v) for v in np.broadcast_to(index, batch).ravel()]


def _offset_expr(ctx: KernelContext, name: str, offsets: list[int], size: int) -> str:
    """C expression for the offset of matrix `b`: affine when contiguous, else a table."""
    if all(o == i * size for i, o in enumerate(offsets)):
        return f"(long)b * {size}L"
    if len(set(offsets)) == 1:
        return f"{offsets[0]}L"
    ctx.w.line(f"static const long {name}[{len(offsets)}] = {{"
               f"{', '.join(str(o) for o in offsets)}}};")
    return f"{name}[b]"


def _int32s(ctx: KernelContext, name: str, values: tuple[int, ...] | list[int]) -> str:
    ctx.w.line(f"static const int32_t {name}[{len(values)}] = "
               f"{{{', '.join(str(int(v)) for v in values)}}};")
    return name


def _params(ctx: KernelContext, kind: QMatMul) -> None:
    """Declares `qp`, the `kiln_qmatmul_params` of this op."""
    lhs, rhs = ctx.op.operands
    y = ctx.op.results[0]
    qb = _quant(rhs)
    low, high = kind._clamp()
    zb = _int32s(ctx, "zb", qb.zero_point)
    mult = _int32s(ctx, "mult", kind.multiplier)
    shift = _int32s(ctx, "shift", kind.shift)
    fields = {"a_unsigned": _unsigned(lhs), "b_unsigned": _unsigned(rhs),
              "out_unsigned": _unsigned(y), "za": _quant(lhs).zero_point[0], "zb": zb,
              "zb_per_column": int(len(qb.zero_point) > 1), "mult": mult, "shift": shift,
              "per_column": int(len(kind.multiplier) > 1), "zo": _quant(y).zero_point[0],
              "lo": low, "hi": high}
    items = [f".{k} = {v}" for k, v in fields.items()]
    ctx.w.line("const kiln_qmatmul_params qp = {")
    with ctx.w.indented():
        for start in range(0, len(items), 4):
            ctx.w.line(", ".join(items[start:start + 4]) + ",")
    ctx.w.line("};")


def emit_qmatmul(ctx: KernelContext) -> None:
    """One `kiln_qmatmul` call per matrix of the broadcast batch (module docstring)."""
    op = ctx.op
    kind = op.kind
    assert isinstance(kind, QMatMul)
    lhs, rhs = op.operands
    y = op.results[0]
    m, n, k, a_batch, b_batch, batch = matrices(op)
    count = math.prod(batch)
    ctx.note(f"qmatmul int8 {count}x{m}x{n}x{k}")
    if 0 in (m, n, count):
        return  # an empty result: nothing to compute
    _params(ctx, kind)
    a = byte_source(ctx, lhs, "A")
    b = byte_source(ctx, rhs, "B")
    ctx.w.line(f"uint8_t* Y = (uint8_t*){ctx.ref(y)};")
    scratch = ctx.scratch(m * k + k * -(-n // 16) * 16)  # KILN_QMATMUL_SCRATCH(m, n, k)
    ctx.w.line(f"int32_t* S = (int32_t*){scratch};")
    a_off = _offset_expr(ctx, "a_off", batch_offsets(batch, a_batch, m * k), m * k)
    b_off = _offset_expr(ctx, "b_off", batch_offsets(batch, b_batch, k * n), k * n)
    with ctx.w.block(f"for (int b = 0; b < {count}; ++b)"):
        ctx.w.line(f"kiln_qmatmul({m}, {n}, {k}, {a} + {a_off}, {b} + {b_off}, &qp, "
                   f"Y + (long)b * {m * n}L, S);")


QMATMUL_KERNELS: dict[type, Callable[[KernelContext], None]] = {QMatMul: emit_qmatmul}
"""The int8 matmul kernel by op class (wired into `kernels.KERNELS`)."""

__all__ = ["QMATMUL_KERNELS", "batch_offsets", "emit_qmatmul", "matrices", "qmatmul_problem"]

"""Data movement on 8-bit quantized tensors: transpose, slice, concat and split as byte copies.

These ops keep their operand's quantized type (scale and zero point unchanged), so moving the
stored integers is the whole job: int8 and uint8 are copied alike as `uint8_t` bytes through
the same strided loop nests the float kernels use (`expr.LoopNest`: dims every access walks
contiguously merge into one loop, which GCC turns into vector copies). Reshape-like ops need
no kernel at all: they share their operand's bytes (memory.py).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import numpy as np

from kiln.codegen.c.context import KernelContext
from kiln.codegen.c.emit_qnn import is_int8
from kiln.codegen.c.expr import LoopNest, contiguous_strides, full_loops
from kiln.ir.graph import Op, Value
from kiln.ir.ops.core import Return
from kiln.ir.ops.shape import Concat, Slice, Split, Transpose
from kiln.ir.types import QuantType

Shape = tuple[int, ...]
Emitter = Callable[[KernelContext], None]


def storage_problem(op: Op, values: Sequence[Value]) -> str | None:
    """Why `values` of `op` cannot live in the int8 kernels' storage (None when they can):
    8-bit per-tensor quantized, and no quantized result returned by the model."""
    for value in op.results:
        if isinstance(value.type.dtype, QuantType) and any(u.isa(Return) for u in value.users):
            return ("its quantized result is a model output, but the cpu target returns "
                    "float32 tensors (end the model with kiln.dequantize)")
    for value in values:
        if not is_int8(value):
            return (f"needs 8-bit per-tensor quantized tensors (q<i8|u8, scale, zp>), got "
                    f"{value.type}")
    return None


def qmove_problem(op: Op) -> str | None:
    """Why `emit_qmove` cannot compile `op` (None when it can)."""
    return storage_problem(op, (*op.operands, *op.results))


def byte_source(ctx: KernelContext, value: Value, name: str) -> str:
    """Declares `const uint8_t* name` pointing at `value`'s stored integers; a compile-time
    parameter becomes a `static const` array (the weights blob holds floats). Returns name."""
    data = ctx.constant_array(value)
    if data is None:
        ctx.w.line(f"const uint8_t* {name} = (const uint8_t*){ctx.ref(value)};")
        return name
    q = value.type.dtype
    assert isinstance(q, QuantType)
    raw = np.asarray(data).astype(q.storage.numpy).view(np.uint8).ravel()
    values = [int(v) for v in raw] or [0]
    ctx.w.line(f"static const uint8_t {name}_data[{len(values)}] = {{")
    with ctx.w.indented():
        for start in range(0, len(values), 16):
            ctx.w.line(", ".join(str(v) for v in values[start:start + 16]) + ",")
    ctx.w.line("};")
    ctx.w.line(f"const uint8_t* {name} = {name}_data;")
    return name


def copy_bytes(ctx: KernelContext, space: Shape, src: str, src_strides: Sequence[int],
               dst: str, dst_strides: Sequence[int], src_offset: int = 0,
               dst_offset: int = 0) -> None:
    """dst[dst_offset + Σ i·dst_strides] = src[src_offset + Σ i·src_strides] over `space`."""
    if 0 in space:
        return
    strides = [tuple(src_strides), tuple(dst_strides)]
    nest = LoopNest(space, full_loops(space, [range(len(space))], strides, ctx.shared.loops))
    with nest.open(ctx.w):
        read = nest.index(src_strides, str(src_offset) if src_offset else "")
        write = nest.index(dst_strides, str(dst_offset) if dst_offset else "")
        ctx.w.line(f"{dst}[{write}] = {src}[{read}];")


def _out(ctx: KernelContext, value: Value, name: str) -> str:
    ctx.w.line(f"uint8_t* {name} = (uint8_t*){ctx.ref(value)};")
    return name


def _transpose(ctx: KernelContext) -> None:
    kind = ctx.op.kind
    assert isinstance(kind, Transpose)
    x, y = ctx.op.operands[0], ctx.op.results[0]
    base = contiguous_strides(x.type.shape)
    src, dst = byte_source(ctx, x, "X"), _out(ctx, y, "Y")
    copy_bytes(ctx, y.type.shape, src, tuple(base[p] for p in kind.perm), dst,
               contiguous_strides(y.type.shape))


def _slice(ctx: KernelContext) -> None:
    kind = ctx.op.kind
    assert isinstance(kind, Slice)
    x, y = ctx.op.operands[0], ctx.op.results[0]
    strides = list(contiguous_strides(x.type.shape))
    start = 0
    for axis, first, step in zip(kind.axes, kind.starts, kind.steps):
        start += first * strides[axis]
        strides[axis] *= step
    src, dst = byte_source(ctx, x, "X"), _out(ctx, y, "Y")
    copy_bytes(ctx, y.type.shape, src, strides, dst, contiguous_strides(y.type.shape), start)


def _concat(ctx: KernelContext) -> None:
    kind = ctx.op.kind
    assert isinstance(kind, Concat)
    y = ctx.op.results[0]
    out = contiguous_strides(y.type.shape)
    dst = _out(ctx, y, "Y")
    at = 0
    for i, x in enumerate(ctx.op.operands):
        shape = x.type.shape
        if x.type.numel:
            copy_bytes(ctx, shape, byte_source(ctx, x, f"X{i}"), contiguous_strides(shape),
                       dst, out, dst_offset=at * out[kind.axis])
        at += shape[kind.axis]


def _split(ctx: KernelContext) -> None:
    kind = ctx.op.kind
    assert isinstance(kind, Split)
    x = ctx.op.operands[0]
    base = contiguous_strides(x.type.shape)
    src = byte_source(ctx, x, "X")
    at = 0
    for i, y in enumerate(ctx.op.results):
        shape = y.type.shape
        if y.type.numel:
            copy_bytes(ctx, shape, src, base, _out(ctx, y, f"Y{i}"),
                       contiguous_strides(shape), at * base[kind.axis])
        at += shape[kind.axis]


_MOVES: dict[type, tuple[Emitter, str]] = {
    Transpose: (_transpose, "transpose"), Slice: (_slice, "slice"),
    Concat: (_concat, "concat"), Split: (_split, "split"),
}
QMOVE_OPS: tuple[type, ...] = tuple(_MOVES)
"""The data-movement ops with an 8-bit kernel here."""


def emit_qmove(ctx: KernelContext) -> None:
    """The byte-copy kernel of a transpose / slice / concat / split on int8 tensors."""
    emit, label = _MOVES[type(ctx.op.kind)]
    ctx.note(f"{label} int8")
    if any(y.type.numel for y in ctx.op.results):  # else nothing to move
        emit(ctx)


def or_qmove(float_emitter: Emitter) -> Emitter:
    """`float_emitter`, or `emit_qmove` when the op moves int8 data (keeps the float
    emitter's name, which `kiln explain` shows)."""
    @functools.wraps(float_emitter)
    def emit(ctx: KernelContext) -> None:
        chosen = emit_qmove if is_int8(ctx.op.operands[0]) else float_emitter
        chosen(ctx)
    return emit


__all__ = ["QMOVE_OPS", "byte_source", "copy_bytes", "emit_qmove", "or_qmove", "qmove_problem",
           "storage_problem"]

"""Data movement: transpose, slice, concat, split, pad — strided copies through the loop nests
of `expr.py` (reshape-like ops cost nothing: they share their operand's memory, memory.py)."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import ExitStack

from kiln.codegen.c.context import KernelContext
from kiln.codegen.c.expr import (
    LoopNest,
    Read,
    Statements,
    contiguous_strides,
    full_loops,
)
from kiln.codegen.c.params import float_literal
from kiln.ir.ops.shape import Concat, Pad, Slice, Split, Transpose

Shape = tuple[int, ...]


def copy_pass(ctx: KernelContext, space: Shape, read: Read, dst: str,
              dst_strides: Sequence[int], dst_offset: str = "") -> None:
    """dst[dst_offset + Σ i·dst_strides] = read, over every point of `space`."""
    if 0 in space:
        return
    vectors = [read.strides, tuple(dst_strides)]
    loops = full_loops(space, [range(len(space))], vectors, ctx.shared.loops)
    nest = LoopNest(space, loops)
    with nest.open(ctx.w):
        Statements(ctx.w, nest, ctx.shared.temps).store_all(
            [(dst, dst_strides, read)], [dst_offset])


def emit_transpose(ctx: KernelContext) -> None:
    op = ctx.op
    kind = op.kind
    assert isinstance(kind, Transpose)
    x, y = op.operands[0], op.results[0]
    base = contiguous_strides(x.type.shape)
    read = Read(ctx.ref(x), tuple(base[p] for p in kind.perm))
    copy_pass(ctx, y.type.shape, read, ctx.ref(y), contiguous_strides(y.type.shape))
    ctx.note("transpose")


def emit_slice(ctx: KernelContext) -> None:
    op = ctx.op
    kind = op.kind
    assert isinstance(kind, Slice)
    x, y = op.operands[0], op.results[0]
    strides = list(contiguous_strides(x.type.shape))
    start = 0
    for axis, first, step in zip(kind.axes, kind.starts, kind.steps):
        start += first * strides[axis]
        strides[axis] *= step
    read = Read(ctx.ref(x), tuple(strides), str(start) if start else "")
    copy_pass(ctx, y.type.shape, read, ctx.ref(y), contiguous_strides(y.type.shape))
    ctx.note("slice")


def emit_concat(ctx: KernelContext) -> None:
    op = ctx.op
    kind = op.kind
    assert isinstance(kind, Concat)
    y = op.results[0]
    out = contiguous_strides(y.type.shape)
    at = 0
    for x in op.operands:
        shape = x.type.shape
        copy_pass(ctx, shape, Read(ctx.ref(x), contiguous_strides(shape)), ctx.ref(y), out,
                  str(at * out[kind.axis]) if at else "")
        at += shape[kind.axis]
    ctx.note("concat")


def emit_split(ctx: KernelContext) -> None:
    op = ctx.op
    kind = op.kind
    assert isinstance(kind, Split)
    x = op.operands[0]
    base = contiguous_strides(x.type.shape)
    at = 0
    for y in op.results:
        shape = y.type.shape
        start = at * base[kind.axis]
        read = Read(ctx.ref(x), base, str(start) if start else "")
        copy_pass(ctx, shape, read, ctx.ref(y), contiguous_strides(shape))
        at += shape[kind.axis]
    ctx.note("split")


def emit_pad(ctx: KernelContext) -> None:
    op = ctx.op
    kind = op.kind
    assert isinstance(kind, Pad)
    x, y = op.operands[0], op.results[0]
    rank = x.type.rank
    begins = kind.pads[:rank]
    out = contiguous_strides(y.type.shape)
    if kind.mode == "constant":
        total = y.type.numel
        with ctx.w.block(f"for (int i = 0; i < {total}; ++i)"):
            ctx.w.line(f"{ctx.ref(y)}[i] = {float_literal(kind.value)};")
        start = sum(b * s for b, s in zip(begins, out))
        copy_pass(ctx, x.type.shape, Read(ctx.ref(x), contiguous_strides(x.type.shape)),
                  ctx.ref(y), out, str(start) if start else "")
    else:
        _gather_pad(ctx, kind.mode, begins)
    ctx.note(f"pad {kind.mode}")


def _gather_pad(ctx: KernelContext, mode: str, begins: Sequence[int]) -> None:
    """reflect / edge padding: each output index maps to an input index per dim."""
    op = ctx.op
    x, y = op.operands[0], op.results[0]
    src, dst = contiguous_strides(x.type.shape), contiguous_strides(y.type.shape)
    w = ctx.w
    out_terms, in_terms = [], []
    with ExitStack() as stack:
        for d, (size, out_size) in enumerate(zip(x.type.shape, y.type.shape)):
            i, j = ctx.shared.loops.next(), ctx.shared.loops.next()
            stack.enter_context(w.block(f"for (int {i} = 0; {i} < {out_size}; ++{i})"))
            w.line(f"int {j} = {i} - {begins[d]};")
            if mode == "reflect":
                w.line(f"{j} = {j} < 0 ? -{j} : ({j} >= {size} ? {2 * size - 2} - {j} : {j});")
            else:
                w.line(f"{j} = {j} < 0 ? 0 : ({j} >= {size} ? {size - 1} : {j});")
            out_terms.append(f"{i} * {dst[d]}")
            in_terms.append(f"{j} * {src[d]}")
        w.line(f"{ctx.ref(y)}[{' + '.join(out_terms) or '0'}] = "
               f"{ctx.ref(x)}[{' + '.join(in_terms) or '0'}];")

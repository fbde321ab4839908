"""A `kiln.fused` group becomes one C function.

The region decides the scheme, most specific first: a GEMM-like anchor followed by pointwise
ops is an anchored kernel with its epilogue inlined (`emit_gemm`); pointwise ops alone are one
elementwise pass (`emit_eltwise`); reductions with pointwise neighbours are a row kernel
(`emit_rows`). Whatever fits none of these still becomes one function: its members run one
after another inside it, intermediate values in the kernel's scratch.
"""

from __future__ import annotations

from collections.abc import Sequence

from kiln.codegen.c.context import KernelContext
from kiln.codegen.c.emit_eltwise import elementwise_group_ok, emit_elementwise_group
from kiln.codegen.c.emit_gemm import Group, emit_anchored, epilogue_ok
from kiln.codegen.c.emit_rows import emit_row_group
from kiln.ir.graph import Op, Value
from kiln.ir.ops.core import Yield


def emit_fused(ctx: KernelContext) -> None:
    op = ctx.op
    assert op.region is not None
    ops = [o for o in op.region.ops if not o.isa(Yield)]
    terminator = op.region.terminator
    assert terminator is not None
    yields = list(terminator.operands)
    args = dict(zip(op.region.args, op.operands))
    if ops:
        group = Group(ops[0], tuple(ops[1:]), tuple(yields), args)
        if epilogue_ok(group):
            emit_anchored(ctx, group)
            return
    if elementwise_group_ok(ops, yields) and not any(y in args for y in yields):
        emit_elementwise_group(ctx, ops, list(args), yields)
        return
    if emit_row_group(ctx, ops, args, yields):
        return
    emit_sequential(ctx, ops, args, yields)


def emit_sequential(ctx: KernelContext, ops: Sequence[Op], args: dict[Value, Value],
                    yields: Sequence[Value]) -> None:
    """The members one by one in this kernel; values between them live in scratch."""
    from kiln.codegen.c.kernels import ALIASES, kernel_for

    bound: dict[Value, Value | str] = dict(args)
    copies: list[tuple[str, Value]] = []
    for value, result in zip(yields, ctx.results):
        if value in bound or value in copies_of(copies):
            copies.append((ctx.ref(result), value))
        else:
            bound[value] = ctx.ref(result)
    for member in ops:
        if member.isa(ALIASES):
            source, result = member.operands[0], member.results[0]
            if result in bound:
                sub = ctx.sub_context(member, bound)
                ctx.w.line(f"memcpy({sub.ref(result)}, {sub.ref(source)}, "
                           f"{4 * result.type.numel});")
            else:
                bound[result] = bound.get(source, source)
            continue
        for value in member.results:
            if value not in bound:
                bound[value] = ctx.scratch(value.type.numel)
        with ctx.w.block(""):
            kernel_for(member)(ctx.sub_context(member, bound))
    last = ctx.sub_context(ctx.op, bound)
    for dst, value in copies:
        ctx.w.line(f"memcpy({dst}, {last.ref(value)}, {4 * value.type.numel});")
    ctx.note("sequence " + "+".join(o.name.removeprefix("kiln.") for o in ops))


def copies_of(copies: list[tuple[str, Value]]) -> set[Value]:
    return {v for _, v in copies}

"""Elementwise kernels: one loop nest over the result, any chain of pointwise ops inlined.

A single op (`add`, `relu`, an unfolded `batch_norm`) and a fused elementwise group are the same
thing here: leaves (operands, read through broadcasting views), nodes for the ops, one pass that
stores every result. Operands read at exactly the result's positions may share the result's
memory (in place), since each element is read before the same element is written.
"""

from __future__ import annotations

from collections.abc import Sequence

from kiln.codegen.c.context import KernelContext
from kiln.codegen.c.expr import (
    Leaf,
    Lit,
    LoopNest,
    Node,
    Read,
    Source,
    Statements,
    build_nodes,
    contiguous_strides,
    full_loops,
    is_pointwise,
    reads,
)
from kiln.codegen.c.options import pass_flops
from kiln.ir.graph import Op, Value

Shape = tuple[int, ...]


def leaf_of(ctx: KernelContext, value: Value) -> Source:
    """A one-element constant becomes a literal; anything else a buffer leaf."""
    scalar = ctx.scalar(value)
    if scalar is not None:
        return Lit(scalar)
    return Leaf(ctx.ref(value), value.type.shape)


def write_pass(ctx: KernelContext, space: Shape, stores: Sequence[tuple[str, Node]],
               pragma: str | None = None) -> None:
    """One loop nest over `space` storing each node into its (contiguous) buffer."""
    if 0 in space:
        return
    out_strides = contiguous_strides(space)
    vectors = [r.strides for r in reads([n for _, n in stores])] + [out_strides]
    loops = full_loops(space, [range(len(space))], vectors, ctx.shared.loops)
    nest = LoopNest(space, loops)
    with nest.open(ctx.w, pragma if loops else None):
        stmts = Statements(ctx.w, nest, ctx.shared.temps)
        stmts.store_all([(buf, out_strides, node) for buf, node in stores])


def full_view_buffers(nodes: Sequence[Node], space: Shape) -> set[str]:
    """Buffers every read of which is at the stored element's own position."""
    identity = contiguous_strides(space)
    ok: dict[str, bool] = {}
    for read in reads(nodes):
        same = read.strides == identity and not read.offset
        ok[read.buffer] = ok.get(read.buffer, True) and same
    return {buf for buf, good in ok.items() if good}


def inplace_operands(ctx: KernelContext, nodes: Sequence[Node], space: Shape,
                     operands: Sequence[Value]) -> tuple[int, ...]:
    """Indices of `operands` (of the top-level op) a result of shape `space` may overwrite."""
    safe = full_view_buffers(nodes, space)
    return tuple(k for k, v in enumerate(operands)
                 if v.type.shape == space and ctx.scalar(v) is None and ctx.ref(v) in safe)


def emit_pointwise(ctx: KernelContext) -> None:
    """A single elementwise op (batch norm and expand included)."""
    op = ctx.op
    result = op.results[0]
    space = result.type.shape
    env: dict[Value, Source] = {v: leaf_of(ctx, v) for v in op.operands}
    build_nodes([op], env, space)
    node = _as_node(env[result], space)
    write_pass(ctx, space, [(ctx.ref(result), node)], ctx.parallel_for(pass_flops(space)))
    ctx.set_inplace(0, inplace_operands(ctx, [node], space, op.operands))
    ctx.note(f"elementwise {op.name.removeprefix('kiln.')}")


def _as_node(source: Source, space: Shape) -> Node:
    if isinstance(source, Leaf):
        return Read(source.buffer, contiguous_strides(space), source.offset)
    return source


def elementwise_group_ok(ops: Sequence[Op], yields: Sequence[Value]) -> bool:
    """A region the single-pass emitter can take: pointwise ops, results of one shape."""
    if not yields or not all(is_pointwise(op) for op in ops):
        return False
    space = yields[0].type.shape
    return all(y.type.shape == space for y in yields)


def emit_elementwise_group(ctx: KernelContext, ops: Sequence[Op], args: Sequence[Value],
                           yields: Sequence[Value]) -> None:
    """A fused elementwise region: block `args` bound to the fused op's operands."""
    fused = ctx.op
    space = yields[0].type.shape
    env: dict[Value, Source] = {a: leaf_of(ctx, outer) for a, outer in zip(args,
                                                                          fused.operands)}
    build_nodes(ops, env, space)
    nodes = [_as_node(env[y], space) for y in yields]
    stores = [(ctx.ref(r), n) for r, n in zip(fused.results, nodes)]
    write_pass(ctx, space, stores, ctx.parallel_for(pass_flops(space)))
    for i in range(len(fused.results)):
        ctx.set_inplace(i, inplace_operands(ctx, nodes, space, fused.operands))
    ctx.note("elementwise " + "+".join(op.name.removeprefix("kiln.") for op in ops))

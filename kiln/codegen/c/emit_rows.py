"""Row kernels: reductions, softmax, layer norm — alone or fused with pointwise neighbours.

A *row* is the set of elements a reduction combines (`fusion_rules.Rows`: the reduced axes of
one input shape). The kernel loops over rows; inside a row, each reduction is one pass over
the row's elements (its input expression inlined), its result a scalar (`Sym`); pointwise
ops on those scalars run once per row; a final pass computes and stores the full-size results.
Softmax is max, then sum of exp(x - max), then exp(x - max) / sum; layer norm is mean, then the
sum of squared deviations, then the normalization. A lone softmax / log-softmax / layer norm
over trailing dims calls the hand-vectorized runtime kernels instead (`kiln_norm.h`), and so
does one fed by a chain of pointwise ops (the scale before an attention softmax): the chain is
one elementwise pass into the result, the kernel then runs on it in place. The scalar row loops
below cannot match the kernels: C's float sums do not reassociate, so gcc keeps each row's
reductions (and their exp) scalar.

Every element of a row is read in the passes before any is written, and a row's final pass
writes element i only after reading it, so a full-size operand may share the result's memory.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from kiln.codegen.c.context import KernelContext
from kiln.codegen.c.emit_eltwise import (
    full_view_buffers,
    inplace_operands,
    leaf_of,
    write_pass,
)
from kiln.codegen.c.expr import (
    Apply,
    Leaf,
    Loop,
    LoopNest,
    Node,
    Read,
    Source,
    Statements,
    Sym,
    build_nodes,
    contiguous_strides,
    is_pointwise,
    operand_views,
    read_leaf,
    right_aligned,
    template,
    view_strides,
)
from kiln.codegen.c.options import pass_flops
from kiln.codegen.c.params import float_literal
from kiln.ir.fusion_rules import Rows, rows_of
from kiln.ir.graph import Op, Value
from kiln.ir.ops.base import OpDef
from kiln.ir.ops.nn_norm import LayerNorm, LocalResponseNorm, LogSoftmax, Softmax
from kiln.ir.ops.reduce import ReduceBase, ReduceMax, ReduceMean, ReduceMin, ReduceSum

Shape = tuple[int, ...]
_ROW_OPS = (ReduceBase, Softmax, LogSoftmax, LayerNorm)


class Unsupported(Exception):
    """The group does not fit the row scheme (the caller runs its ops one by one)."""


class RowProgram:
    """Translates a row group into passes; `emit` writes them."""

    def __init__(self, ctx: KernelContext, ops: Sequence[Op], env: dict[Value, Source],
                 rows: Rows) -> None:
        self.ctx = ctx
        self.ops = list(ops)
        self.env = env
        self.space = rows.shape
        self.axes = rows.axes
        self.kept_shape = tuple(1 if d in rows.axes else s for d, s in enumerate(rows.shape))
        self.row_values: set[Value] = set()
        self.nodes: list[Node] = []

    # -- classification -------------------------------------------------------------------------
    def is_full(self, value: Value) -> bool:
        return right_aligned(value.type.shape, len(self.space)) == self.space

    def is_row(self, value: Value) -> bool:
        return value.type.shape == self.kept_shape or value.type.numel == 1

    def full_operand(self, value: Value, view: Shape) -> Node:
        source = self.env[value]
        if isinstance(source, Leaf):
            return read_leaf(source, view, self.space)
        if value in self.row_values and view != self.kept_shape:
            raise Unsupported("a per-row value broadcast along another axis")
        return source

    # -- emission ------------------------------------------------------------------------------
    def emit(self, yields: Sequence[Value], results: Sequence[str]) -> None:
        ctx = self.ctx
        kept = [Loop(ctx.shared.loops.next(), (d,), "0", str(s))
                for d, s in enumerate(self.space) if d not in self.axes and s > 1]
        self.reduced = [Loop(ctx.shared.loops.next(), (d,), "0", str(s))
                        for d, s in enumerate(self.space) if d in self.axes and s > 1]
        self.kept = kept
        self.row_nest = LoopNest(self.space, kept)
        with self.row_nest.open(ctx.w, ctx.parallel_for(pass_flops(self.space))):
            self.row_stmts = Statements(ctx.w, self.row_nest, ctx.shared.temps)
            for op in self.ops:
                self.step(op)
            self.store(yields, results)

    def step(self, op: Op) -> None:
        if op.isa(_ROW_OPS):
            self.reduction(op)
        elif is_pointwise(op):
            self.pointwise(op)
        else:
            raise Unsupported(op.name)

    def pointwise(self, op: Op) -> None:
        result = op.results[0]
        fmt = template(op.kind)
        assert fmt is not None
        if self.is_full(result):
            views = operand_views(op, len(self.space))
            args = tuple(self.full_operand(v, view) for v, view in zip(op.operands, views))
            self.env[result] = Apply(fmt, args) if fmt != "{0}" else args[0]
            return
        if not (self.is_row(result) and all(self.is_row(v) for v in op.operands)):
            raise Unsupported(f"{op.name} at shape {result.type.shape}")
        args = tuple(self.row_operand(v) for v in op.operands)
        name = self.row_stmts.expr(Apply(fmt, args) if fmt != "{0}" else args[0])
        self.env[result] = Sym(name)
        self.row_values.add(result)

    def row_operand(self, value: Value) -> Node:
        source = self.env[value]
        if isinstance(source, Leaf):
            view = self.kept_shape if value.type.numel != 1 else (1,) * len(self.space)
            return read_leaf(source, view, self.space)
        return source

    def accumulate(self, node: Node, kind: str) -> str:
        """One pass over the row: sum / max / min of `node`; returns the accumulator."""
        ctx = self.ctx
        acc = ctx.shared.temps.next()
        init = {"sum": "0.0f", "max": "-INFINITY", "min": "INFINITY"}[kind]
        ctx.w.line(f"float {acc} = {init};")
        nest = LoopNest(self.space, self.kept + self.reduced)
        with LoopNest(self.space, self.reduced).open(ctx.w):
            value = Statements(ctx.w, nest, ctx.shared.temps).expr(node)
            update = {"sum": f"{acc} + {value}", "max": f"kiln_maxf({value}, {acc})",
                      "min": f"kiln_minf({value}, {acc})"}[kind]
            ctx.w.line(f"{acc} = {update};")
        self.nodes.append(node)
        return acc

    def scalar(self, expr: str) -> Sym:
        name = self.ctx.shared.temps.next()
        self.ctx.w.line(f"const float {name} = {expr};")
        return Sym(name)

    def reduction(self, op: Op) -> None:
        x = op.operands[0]
        if x.type.shape != self.space or rows_of(op) != Rows(self.space, self.axes):
            raise Unsupported("a reduction over other rows")
        node = self.full_operand(x, self.space)
        count = float(math.prod(self.space[d] for d in self.axes))
        kind = op.kind
        if isinstance(kind, ReduceBase):
            self.plain_reduction(op, node, count)
        elif isinstance(kind, (Softmax, LogSoftmax)):
            self.softmax(op, node, isinstance(kind, LogSoftmax))
        else:
            self.layer_norm(op, node, count)

    def plain_reduction(self, op: Op, node: Node, count: float) -> None:
        kinds: dict[type[OpDef], str] = {ReduceSum: "sum", ReduceMean: "sum", ReduceMax: "max",
                                         ReduceMin: "min"}
        acc = self.accumulate(node, kinds[type(op.kind)])
        expr = f"{acc} / {float_literal(count)}" if op.isa(ReduceMean) else acc
        self.env[op.results[0]] = self.scalar(expr)
        self.row_values.add(op.results[0])

    def softmax(self, op: Op, x: Node, log: bool) -> None:
        m = self.scalar(self.accumulate(x, "max"))
        shifted = Apply("({0} - {1})", (x, m))
        total = self.scalar(self.accumulate(Apply("kiln_expf({0})", (shifted,)), "sum"))
        if log:
            lse = self.scalar(f"kiln_logf({total.name})")
            self.env[op.results[0]] = Apply("({0} - {1})", (shifted, lse))
        else:
            inv = self.scalar(f"1.0f / {total.name}")
            self.env[op.results[0]] = Apply("(kiln_expf({0}) * {1})", (shifted, inv))

    def layer_norm(self, op: Op, x: Node, count: float) -> None:
        kind = op.kind
        assert isinstance(kind, LayerNorm)
        mean = self.scalar(f"{self.accumulate(x, 'sum')} / {float_literal(count)}")
        dev = Apply("({0} - {1})", (x, mean))
        var = self.accumulate(Apply("({0} * {0})", (dev,)), "sum")
        inv = self.scalar(f"1.0f / sqrtf({var} / {float_literal(count)} + "
                          f"{float_literal(kind.eps)})")
        y: Node = Apply("({0} * {1})", (dev, inv))
        for param, fmt in zip(op.operands[1:], ("({0} * {1})", "({0} + {1})")):
            view = right_aligned(param.type.shape, len(self.space))
            y = Apply(fmt, (y, self.full_operand(param, view)))
        self.env[op.results[0]] = y

    def store(self, yields: Sequence[Value], results: Sequence[str]) -> None:
        ctx = self.ctx
        full, row = [], []
        for value, buffer in zip(yields, results):
            source = self.env[value]
            if value in self.row_values or (self.is_row(value) and not self.is_full(value)):
                node = self.row_operand(value)
                row.append((buffer, view_strides(self.kept_shape, self.space), node))
            elif value.type.shape == self.space:
                node = self.full_operand(value, self.space) if isinstance(source, Leaf) \
                    else source
                full.append((buffer, contiguous_strides(self.space), node))
            else:
                raise Unsupported(f"result of shape {value.type.shape}")
        if row:
            self.row_stmts.store_all(row)
        if full:
            nest = LoopNest(self.space, self.kept + self.reduced)
            with LoopNest(self.space, self.reduced).open(ctx.w):
                Statements(ctx.w, nest, ctx.shared.temps).store_all(full)
            self.nodes += [n for _, _, n in full]


def _group_rows(ops: Sequence[Op]) -> Rows | None:
    found = {rows_of(op) for op in ops if op.isa(_ROW_OPS)}
    found.discard(None)
    return found.pop() if len(found) == 1 else None  # type: ignore[return-value]


def emit_row_group(ctx: KernelContext, ops: Sequence[Op], args: dict[Value, Value],
                   yields: Sequence[Value]) -> bool:
    """Emit a row group into `ctx` (False, with nothing written, when it does not fit)."""
    rows = _group_rows(ops)
    if rows is None:
        return False
    if _emit_chain_then_kernel(ctx, ops, args, yields):
        return True
    probe = ctx.dry_run()
    try:  # a dry run decides; only then write for real
        env: dict[Value, Source] = {a: leaf_of(probe, o) for a, o in args.items()}
        RowProgram(probe, ops, env, rows).emit(yields, ["p"] * len(yields))
    except Unsupported:
        return False
    env = {a: leaf_of(ctx, o) for a, o in args.items()}
    program = RowProgram(ctx, ops, env, rows)
    program.emit(yields, [ctx.ref(r) for r in ctx.results])
    safe = full_view_buffers(program.nodes, rows.shape)
    candidates = tuple(k for k, outer in enumerate(args.values())
                       if outer.type.shape == rows.shape and ctx.scalar(outer) is None
                       and ctx.ref(outer) in safe)
    if len(ctx.results) > 1:  # one result is stored before another's chain reads the operand
        candidates = ()
    for i, r in enumerate(ctx.results):
        if r.type.shape == rows.shape:
            ctx.set_inplace(i, candidates)
    ctx.note("rows " + "+".join(op.name.removeprefix("kiln.") for op in ops))
    return True


def _kernel_call(op: Op, x: str, y: str, params: Sequence[str]) -> str | None:
    """The `kiln_norm.h` call computing `op` from buffer `x` into `y` (which may be `x`; layer
    norm's affine parameters `params`), or None where no runtime kernel fits (softmax over
    another axis, a reduction)."""
    shape = op.operands[0].type.shape
    numel = op.operands[0].type.numel
    kind = op.kind
    if isinstance(kind, (Softmax, LogSoftmax)) and kind.axis % len(shape) == len(shape) - 1:
        return (f"kiln_softmax_rows({x}, {y}, {numel // max(shape[-1], 1)}, {shape[-1]}, "
                f"{int(isinstance(kind, LogSoftmax))});")
    if isinstance(kind, LayerNorm):
        length = math.prod(shape[len(shape) - kind.normalized_ndim:])
        refs = [*params] + ["NULL"] * (2 - len(params))
        return (f"kiln_layer_norm_rows({x}, {refs[0]}, {refs[1]}, {y}, "
                f"{numel // max(length, 1)}, {length}, {float_literal(kind.eps)});")
    return None


def _emit_chain_then_kernel(ctx: KernelContext, ops: Sequence[Op], args: dict[Value, Value],
                            yields: Sequence[Value]) -> bool:
    """Pointwise ops, all at the full shape, feeding a last softmax / layer norm that has a
    runtime kernel and is the group's only result: the chain as one elementwise pass into the
    result buffer, then the kernel in place there. False, with nothing written, otherwise."""
    *chain, last = ops
    result = last.results[0]
    if not chain or list(yields) != [result] or not all(is_pointwise(o) for o in chain):
        return False
    x, space = last.operands[0], result.type.shape
    if x.producer not in chain or any(r.type.shape != space for o in chain for r in o.results):
        return False
    params = [args.get(v) for v in last.operands[1:]]
    if any(p is None or ctx.scalar(p) is not None for p in params):
        return False  # affine parameters computed in the group, or folded to literals
    refs = [ctx.ref(p) for p in params if p is not None]
    y = ctx.ref(ctx.results[0])
    call = _kernel_call(last, y, y, refs)
    if call is None:
        return False
    env: dict[Value, Source] = {a: leaf_of(ctx, o) for a, o in args.items()}
    build_nodes(chain, env, space)
    source = env[x]
    node = (Read(source.buffer, contiguous_strides(space), source.offset)
            if isinstance(source, Leaf) else source)
    write_pass(ctx, space, [(y, node)], ctx.parallel_for(pass_flops(space)))
    ctx.w.line(call)
    # The kernel reads its affine parameters after the pass has written the result: a
    # parameter the chain also reads at full shape must not be the buffer it overwrites.
    kept = set(params)
    ctx.set_inplace(0, tuple(k for k in inplace_operands(ctx, [node], space, ctx.op.operands)
                             if ctx.op.operands[k] not in kept))
    ctx.note("+".join(o.name.removeprefix("kiln.") for o in chain) + ", then "
             + last.name.removeprefix("kiln.") + " rows (vectorized)")
    return True


def emit_row_op(ctx: KernelContext) -> None:
    """A lone reduction / softmax / log-softmax / layer norm."""
    op = ctx.op
    params = [ctx.ref(v) for v in op.operands[1:]]  # first: they lead the kernel's parameters
    call = _kernel_call(op, ctx.ref(op.operands[0]), ctx.ref(op.results[0]), params)
    if call is not None:
        ctx.w.line(call)
        ctx.set_inplace(0, (0,))
        what = "layer norm" if op.isa(LayerNorm) else "softmax"
        ctx.note(f"{what} rows (vectorized)")
        return
    args = {v: v for v in op.operands}
    if not emit_row_group(ctx, [op], args, [op.results[0]]):
        raise op.error("the C backend cannot lay this reduction out in rows")


def emit_lrn(ctx: KernelContext) -> None:
    op = ctx.op
    kind = op.kind
    assert isinstance(kind, LocalResponseNorm)
    shape = op.operands[0].type.shape
    spatial = math.prod(shape[2:])
    ctx.w.line(f"kiln_lrn({ctx.ref(op.operands[0])}, {ctx.ref(op.results[0])}, {shape[0]}, "
               f"{shape[1]}, {spatial}, {kind.size}, {float_literal(kind.alpha)}, "
               f"{float_literal(kind.beta)}, {float_literal(kind.k)});")
    ctx.note("local response norm")


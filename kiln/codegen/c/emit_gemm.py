"""Kernels for GEMM-like ops and their fused epilogues: one C function per group.

Strategy, from cheapest:

- **none** — no epilogue: the anchor writes its result straight into the output.
- **clamp** — the epilogue is relu / relu6 / clamp only: the GEMM micro-kernel clamps as it
  stores (bias too), no second pass.
- **tile** — anything else (residual adds, hardswish, gelu, scales...): each block of the
  anchor's output goes to a small scratch tile, then one pass applies the inlined epilogue
  chain while the tile is hot in cache and writes the group's results. Because the anchor never
  writes the output buffer itself, a residual operand may share memory with the result.

A block is a slab of columns (convolutions) or rows (linear, matmul); an epilogue operand that
cannot be walked with a single index inside the slab (a broadcast over part of the
flattened pixels, say) makes the block the whole output instead. With `threads > 1` the block
loop is an OpenMP parallel loop, each thread with its own tile, where one region's work pays
for waking the other threads (`COptions.parallel_worth`); else it is the threads=1 code.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

from kiln.codegen.c.anchors import anchor_class
from kiln.codegen.c.context import KernelContext
from kiln.codegen.c.conv_anchors import DirectConvAnchor
from kiln.codegen.c.emit_eltwise import full_view_buffers, leaf_of
from kiln.codegen.c.expr import (
    Leaf,
    Loop,
    LoopNest,
    Node,
    Read,
    Source,
    Statements,
    build_nodes,
    c_product,
    c_ptr,
    c_sum,
    contiguous_strides,
    full_loops,
    is_pointwise,
    merge_runs,
    reads,
    view_strides,
)
from kiln.codegen.c.gemm_anchors import Anchor, Block, offset
from kiln.codegen.c.options import TILE_FLOATS
from kiln.codegen.c.params import float_literal
from kiln.codegen.writer import CodeWriter
from kiln.ir.costs import op_flops
from kiln.ir.graph import Op, Value
from kiln.ir.ops.elementwise import Clamp, Relu, Relu6

Shape = tuple[int, ...]


@dataclass(frozen=True)
class Group:
    """An anchor, its epilogue ops (in order) and the values the group produces."""

    anchor: Op
    epilogue: tuple[Op, ...]
    yields: tuple[Value, ...]
    args: dict[Value, Value]
    """Region block argument → the fused op's operand (empty for a lone op)."""


def epilogue_ok(group: Group) -> bool:
    """Whether the epilogue is pointwise at the anchor's shape (else run the ops one by one)."""
    if anchor_class(group.anchor) is None:
        return False
    shape = group.anchor.results[0].type.shape
    produced = {group.anchor.results[0]} | {op.results[0] for op in group.epilogue}
    return (all(is_pointwise(op) and op.results[0].type.shape == shape for op in group.epilogue)
            and all(y in produced for y in group.yields))


def clamp_bounds(group: Group) -> tuple[float, float] | None:
    """(lo, hi) when the epilogue is a chain of relu/relu6/clamp feeding the only result."""
    value, lo, hi = group.anchor.results[0], -math.inf, math.inf
    for op in group.epilogue:
        if op.operands[0] is not value or len(value.uses) != 1:
            return None
        kind = op.kind
        if isinstance(kind, Relu):
            a, b = 0.0, math.inf
        elif isinstance(kind, Relu6):
            a, b = 0.0, 6.0
        elif isinstance(kind, Clamp):
            a = -math.inf if kind.min is None else kind.min
            b = math.inf if kind.max is None else kind.max
        else:
            return None
        lo, hi, value = max(lo, a), min(hi, b), op.results[0]
    if lo > hi or tuple(group.yields) != (value,):
        return None
    return lo, hi


class _Driver:
    """Writes one anchored kernel (see the module docstring)."""

    def __init__(self, ctx: KernelContext, group: Group) -> None:
        self.ctx = ctx
        self.group = group
        bound: dict[Value, Value | str] = {arg: outer for arg, outer in group.args.items()}
        self.actx = ctx.sub_context(group.anchor, bound) if group.args else ctx
        self.anchor: Anchor = anchor_class(group.anchor)(self.actx)  # type: ignore[misc]
        self.view = self.anchor.view
        self.space = self.view.shape
        self.bounds = clamp_bounds(group) if self.anchor.clamp_ok else None
        if not group.epilogue and tuple(group.yields) == (group.anchor.results[0],):
            self.bounds = (-math.inf, math.inf)
        self.fused = self.bounds is None and self.anchor.take_epilogue(group.epilogue,
                                                                       group.yields)
        if self.fused:  # the anchor applies the epilogue as it stores: no tile
            self.bounds = (-math.inf, math.inf)
        self.tiled = self.bounds is None
        used = {v for op in group.epilogue for v in op.operands} | set(group.yields)
        self.env: dict[Value, Source] = {a: leaf_of(ctx, o) for a, o in group.args.items()
                                         if a in used}

    # -- planning -----------------------------------------------------------------------------
    def leaf_vectors(self) -> list[tuple[int, ...]]:
        """Strides of every epilogue read of a leaf, plus the contiguous output."""
        probe = dict(self.env)
        probe[self.group.anchor.results[0]] = Read("", contiguous_strides(self.space))
        build_nodes(self.group.epilogue, probe, self.space)
        nodes = [self._node(probe, y) for y in self.group.yields]
        return [r.strides for r in reads(nodes)] + [contiguous_strides(self.space)]

    def blocking(self) -> tuple[int, int, bool]:
        """(block size, number of blocks, whether the blocked dims form one loop)."""
        view, options, anchor = self.view, self.ctx.options, self.anchor
        n = view.rows_n if view.by_rows else view.cols_n
        dims = view.rows if view.by_rows else view.cols
        single = len(merge_runs(self.space, dims, self.leaf_vectors())) <= 1 if self.tiled \
            else True
        if anchor.fixed_block:
            return anchor.fixed_block, n // anchor.fixed_block, single
        parallel = self.worth_threads()  # else blocked exactly as with threads=1
        if not single or (not self.tiled and not parallel):
            return n, 1, single
        other = view.cols_n if view.by_rows else view.rows_n
        unit = 1 if isinstance(anchor, DirectConvAnchor) else (
            options.mr if view.by_rows else options.nr)
        size = max(unit, TILE_FLOATS // max(other, 1) // unit * unit)
        if parallel:
            share = -(-n // options.threads)  # ceil(n / threads): one block per thread
            size = min(size, -(-share // unit) * unit)
        size = min(size, n)
        return size, -(-n // size), single

    def index_flops(self) -> int:
        """The anchor's FLOPs per batch index: the work of one parallel region of blocks."""
        batches = math.prod(self.space[d] for d in self.view.batch)
        return op_flops(self.group.anchor) // max(batches, 1)

    def worth_threads(self) -> bool:
        """Whether one parallel region (the blocks of one batch index) has enough work to pay
        for waking the other threads (`COptions.parallel_worth`)."""
        return self.ctx.options.parallel_worth(self.index_flops())

    # -- emission -----------------------------------------------------------------------------
    def emit(self) -> None:
        ctx = self.ctx
        if math.prod(self.space) == 0:  # a batch of zero: no anchor call, no scratch
            ctx.w.line("/* empty result: nothing to compute */")
            return
        self.anchor.images_ok = not self.tiled
        self.anchor.setup()
        if self.anchor.whole_images:
            self.images()
        else:
            self.per_index()
        if self.fused:
            self.mark_inplace_fused()
        if self.tiled:
            ctx.note("epilogue " + "+".join(op.name.removeprefix("kiln.")
                                            for op in self.group.epilogue))
        elif self.group.epilogue:
            ctx.note(("fused " if self.fused else "clamp ") + "+".join(
                op.name.removeprefix("kiln.") for op in self.group.epilogue))

    def share_scratch(self, threads: int) -> None:
        """The anchor's per-thread scratch: one slice per thread of one arena block."""
        per = self.anchor.scratch_per_thread()
        if per:
            base = self.ctx.scratch(per * threads)
            self.anchor.thread_scratch = (f"({base} + kiln_thread_id() * {per})"
                                          if threads > 1 else base)

    def images(self) -> None:
        """An anchor that computes whole images (`Anchor.whole_images`, no epilogue tile): one
        call per block of batch indices, one block per thread, straight into the result."""
        ctx, anchor = self.ctx, self.anchor
        n = math.prod(self.space[d] for d in self.view.batch)
        flops = op_flops(self.group.anchor)
        threads = ctx.options.threads if n > 1 and ctx.options.parallel_worth(flops) else 1
        size = -(-n // threads)
        count = -(-n // size)
        threads = min(threads, count)
        self.share_scratch(threads)
        out = ctx.ref(ctx.results[0])
        assert self.bounds is not None
        lo, hi = (float_literal(b) for b in self.bounds)
        if count == 1:
            with ctx.w.block(""):
                anchor.images("0", str(n), out, lo, hi)
            return
        pragma = ctx.parallel_for(flops) if threads > 1 else None
        if pragma:
            ctx.w.line(pragma)
        with ctx.w.block(f"for (int blk = 0; blk < {count}; ++blk)"):
            ctx.w.line(f"const int n0 = blk * {size}, n1 = kiln_imin(n0 + {size}, {n});")
            anchor.images("n0", "n1", out, lo, hi)

    def per_index(self) -> None:
        """The batch loop: per batch index the anchor's prologue, then its blocks."""
        ctx, view = self.ctx, self.view
        size, count, single = self.blocking()
        threads = ctx.options.threads if count > 1 and self.worth_threads() else 1
        other = view.cols_n if view.by_rows else view.rows_n
        self.tile_floats = size * other
        tile_base = ctx.scratch(self.tile_floats * threads) if self.tiled else ""
        self.share_scratch(threads)
        batch = [Loop(ctx.shared.loops.next(), (d,), "0", str(self.space[d]))
                 for d in view.batch if self.space[d] > 1]
        bvars = {loop.dims[0]: loop.var for loop in batch}
        outer = LoopNest(self.space, batch)
        with outer.open(ctx.w):
            self.anchor.prologue(bvars)
            self.blocks(batch, bvars, size, count, single, tile_base, threads)

    def blocks(self, batch: list[Loop], bvars: dict[int, str], size: int, count: int,
               single: bool, tile_base: str, threads: int) -> None:
        ctx, view = self.ctx, self.view
        w = ctx.w
        n = view.rows_n if view.by_rows else view.cols_n
        lo, hi, index = ("r0", "r1", "blk") if view.by_rows else ("c0", "c1", "blk")
        if count == 1:
            lo, hi, index = "0", str(n), "0"
        blk = (Block(lo, hi, "0", str(view.cols_n), index) if view.by_rows
               else Block("0", str(view.rows_n), lo, hi, index))
        body = CodeWriter()  # written first: the block bounds are declared only if used
        ctx.w = self.actx.w = body
        try:
            if self.tiled:
                mine = f" + kiln_thread_id() * {self.tile_floats}" if threads > 1 else ""
                body.line(f"float* const tile = {tile_base}{mine};")
                ld = view.cols_n if view.by_rows else size
                self.anchor.block(bvars, blk, "tile", ld, "-INFINITY", "INFINITY")
                self.epilogue(batch, "tile", ld, blk, count > 1 and single)
            else:
                self.direct(bvars, blk)
        finally:
            ctx.w = self.actx.w = w
        text = body.text()
        if count > 1 and threads > 1:
            pragma = ctx.parallel_for(self.index_flops())
            if pragma:
                w.line(pragma)
        with w.block(f"for (int blk = 0; blk < {count}; ++blk)" if count > 1 else ""):
            if count > 1 and re.search(rf"\b{lo}\b", text):
                w.line(f"const int {lo} = blk * {size};")
            if count > 1 and re.search(rf"\b{hi}\b", text):
                w.line(f"const int {hi} = kiln_imin(blk * {size} + {size}, {n});")
            w.lines(text.rstrip("\n").split("\n"))

    def direct(self, bvars: dict[int, str], blk: Block) -> None:
        """No tile: the anchor stores (clamped) into the group's result."""
        view = self.view
        out = self.ctx.ref(self.ctx.results[0])
        strides = dict(enumerate(contiguous_strides(self.space)))
        start = c_product(blk.r0, view.cols_n) if view.by_rows else blk.c0
        dst = c_ptr(out, c_sum(offset(bvars, strides), start))
        assert self.bounds is not None
        lo, hi = (float_literal(b) for b in self.bounds)
        self.anchor.block(bvars, blk, dst, view.cols_n, lo, hi)

    def epilogue(self, batch: list[Loop], tile: str, ld: int, blk: Block,
                 ranged: bool) -> None:
        ctx, view, space = self.ctx, self.view, self.space
        env = dict(self.env)
        env[self.group.anchor.results[0]] = self._tile_read(tile, ld, blk, ranged)
        build_nodes(self.group.epilogue, env, space)
        nodes = [self._node(env, y) for y in self.group.yields]
        out_strides = contiguous_strides(space)
        vectors = [r.strides for r in reads(nodes)] + [out_strides]
        inner: list[Loop] = []
        for dims, lo, hi in ((view.rows, blk.r0, blk.r1), (view.cols, blk.c0, blk.c1)):
            blocked = ranged and (dims == (view.rows if view.by_rows else view.cols))
            runs = merge_runs(space, dims, vectors)
            if blocked and runs:
                inner.append(Loop(ctx.shared.loops.next(), runs[0], lo, hi))
            elif not blocked:
                inner += full_loops(space, [dims], vectors, ctx.shared.loops)
        nest = LoopNest(space, batch + inner)
        with LoopNest(space, inner).open(ctx.w):
            stmts = Statements(ctx.w, nest, ctx.shared.temps)
            stmts.store_all([(ctx.ref(r), out_strides, n)
                             for r, n in zip(ctx.results, nodes)])
        self.mark_inplace(nodes)

    def _tile_read(self, tile: str, ld: int, blk: Block, ranged: bool) -> Read:
        view, space = self.view, self.space
        strides = [0] * len(space)
        for dims, scale in ((view.rows, ld), (view.cols, 1)):
            sub = contiguous_strides([space[d] for d in dims])
            for d, s in zip(dims, sub):
                strides[d] = s * scale
        shift = ""
        if ranged:
            shift = f"-{blk.r0} * {ld}" if view.by_rows else f"-{blk.c0}"
        return Read(tile, tuple(strides), shift)

    def _node(self, env: dict[Value, Source], value: Value) -> Node:
        source = env[value]
        if isinstance(source, Leaf):
            return Read(source.buffer, view_strides(value.type.shape, self.space))
        return source

    def mark_inplace(self, nodes: Sequence[Node]) -> None:
        """Operands the epilogue reads only in place, and the anchor not at all."""
        ctx = self.ctx
        safe = full_view_buffers(nodes, self.space)
        anchor_inputs = {self.group.args.get(v, v) for v in self.group.anchor.operands}
        candidates = tuple(
            k for k, (arg, outer) in enumerate(self.group.args.items())
            if isinstance(self.env.get(arg), Leaf) and outer.type.shape == self.space
            and outer not in anchor_inputs and ctx.ref(outer) in safe)
        for i in range(len(ctx.results)):
            ctx.set_inplace(i, candidates)

    def mark_inplace_fused(self) -> None:
        """Operands the anchor's own epilogue reads only in place, and its GEMM not at all."""
        reads = set(self.anchor.inplace_reads())
        anchor_inputs = {self.group.args.get(v, v) for v in self.group.anchor.operands}
        candidates = tuple(
            k for k, (arg, outer) in enumerate(self.group.args.items())
            if arg in reads and outer.type.shape == self.space and outer not in anchor_inputs)
        for i in range(len(self.ctx.results)):
            self.ctx.set_inplace(i, candidates)


def emit_anchored(ctx: KernelContext, group: Group) -> None:
    """The kernel of a GEMM-like op with its (possibly empty) pointwise epilogue."""
    _Driver(ctx, group).emit()


def emit_gemm_op(ctx: KernelContext) -> None:
    """A lone conv / linear / matmul (no epilogue)."""
    emit_anchored(ctx, Group(ctx.op, (), (ctx.op.results[0],), {}))

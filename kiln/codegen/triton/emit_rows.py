"""Row kernels: softmax, log_softmax, layer_norm and reduce_* with their fused elementwise ops.

A reduction works on *rows*: its input X reduced over some axes. One program holds BLOCK_R whole
rows as a [BLOCK_R, BLOCK_L] tile (`row` runs over the kept dims, `col` over the reduced ones,
any axes, not only the last), so every statistic of a row is one `tl.sum` / `tl.max` along
axis 1 and the row never leaves registers: a softmax reads X once and writes once. Members of a
reduction group are either at the full shape (tiles [BLOCK_R, BLOCK_L]) or at a per-row shape,
reduced axes kept as 1 or dropped (tiles [BLOCK_R, 1]); Triton broadcasting combines them.

Lanes past the row's end (BLOCK_L is a power of two) are replaced by the reduction's neutral
element (0 for sums, -inf for max) before each reduction. Statistics are fp32; layer norm uses
the two-pass variance (mean first, then the mean of squared deviations), as the reference does.
"""

from __future__ import annotations

from collections.abc import Sequence

from kiln.codegen.triton import blocks
from kiln.codegen.triton.exprs import literal
from kiln.codegen.triton.group import Group
from kiln.codegen.triton.kernel import Kernel, KernelBuilder
from kiln.codegen.triton.options import TritonOptions
from kiln.codegen.triton.rows import Rows, group_rows
from kiln.codegen.triton.space import Access, Coord, Space, right_aligned, scaled, total, unravel
from kiln.codegen.triton.support import family
from kiln.ir.graph import Op, Value
from kiln.ir.ops.nn_norm import LayerNorm, LogSoftmax, Softmax
from kiln.ir.ops.reduce import ReduceBase, ReduceMax, ReduceMean, ReduceMin, ReduceSum

Shape = tuple[int, ...]


def _space(kb: KernelBuilder, rows: Rows) -> Space:
    reduced = tuple(rows.shape[a] for a in rows.axes)

    def define(dim: int) -> Coord:
        if dim in rows.axes:
            expr, mask = unravel("col", reduced, rows.axes.index(dim)), "cmask"
        else:
            expr, mask = unravel("row", rows.dropped, rows.row_dims.index(dim)), "rmask"
        if expr in ("row", "col"):
            return Coord(expr, mask)
        kb.line(f"i{dim} = {expr}")
        return Coord(f"i{dim}", mask)

    flats: dict[tuple[Shape, tuple[int, ...]], Access] = {}
    if rows.axes == tuple(range(len(rows.shape) - len(rows.axes), len(rows.shape))):
        ident = tuple(range(len(rows.shape)))
        flats[(rows.shape, ident)] = Access(total([scaled("row", rows.length), "col"]),
                                            ("rmask", "cmask"))
        flats[(rows.kept, ident)] = Access("row", ("rmask",))
        flats[(rows.dropped, rows.row_dims)] = Access("row", ("rmask",))
    return Space(rows.shape, define, flats)


def _reduce(kb: KernelBuilder, tile: str, how: str, hint: str) -> str:
    neutral = {"sum": "0.0", "max": 'float("-inf")', "min": 'float("inf")'}[how]
    return kb.assign(hint, f"tl.{how}(tl.where(cmask, {tile}, {neutral}), axis=1, "
                           "keep_dims=True)")


_REDUCE_HOW = {ReduceSum: "sum", ReduceMean: "sum", ReduceMax: "max", ReduceMin: "min"}


def _reduction(kb: KernelBuilder, op: Op, space: Space, rows: Rows) -> str:
    """Emit one reduction member; returns the local holding its result."""
    name = op.results[0].name or "r"
    x = kb.read(space, op.operands[0], space.identity)
    kind = op.kind
    if isinstance(kind, ReduceBase):
        out = _reduce(kb, x, _REDUCE_HOW[type(kind)], name)
        if isinstance(kind, ReduceMean):
            kb.line(f"{out} = {out} / {rows.length}.0")
        return out
    if isinstance(kind, (Softmax, LogSoftmax)):
        peak = _reduce(kb, x, "max", f"{name}_max")
        exp = kb.assign(f"{name}_exp", f"tl.exp({x} - {peak})")
        sums = _reduce(kb, exp, "sum", f"{name}_sum")
        if isinstance(kind, LogSoftmax):
            return kb.assign(name, f"{x} - {peak} - tl.log({sums})")
        return kb.assign(name, f"{exp} / {sums}")
    assert isinstance(kind, LayerNorm)
    mean = kb.assign(f"{name}_mean", f"{_reduce(kb, x, 'sum', f'{name}_sum')} / "
                                     f"{rows.length}.0")
    centered = kb.assign(f"{name}_xc", f"tl.where(cmask, {x} - {mean}, 0.0)")
    var = kb.assign(f"{name}_var", f"tl.sum({centered} * {centered}, axis=1, keep_dims=True) / "
                                   f"{rows.length}.0")
    expr = f"{centered} / tl.sqrt({var} + {literal(kind.eps)})"
    for operand, sign in zip(op.operands[1:], (" * ", " + ")):
        tile = kb.read(space, operand, right_aligned(operand.type.shape, space.identity))
        expr = f"({expr}){sign}{tile}"
    return kb.assign(name, expr)


def rows_kernel(name: str, group: Group, options: TritonOptions) -> Kernel:
    """The kernel of a reduction op or of a reduction group."""
    rows = group_rows(group.ops)
    block_r, block_l = blocks.row_blocks(rows.count, rows.length, options.interpreter)
    kb = KernelBuilder(name, group, options, "rows")
    kb.constexpr("BLOCK_R", block_r)
    kb.constexpr("BLOCK_L", block_l)
    kb.line("row = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)[:, None]")
    kb.line("col = tl.arange(0, BLOCK_L)[None, :]")
    kb.line(f"rmask = row < {rows.count}")
    kb.line(f"cmask = col < {rows.length}")
    space = _space(kb, rows)
    dims_of: dict[Value, Sequence[int]] = {}
    for op in group.ops:
        dims = rows.dims_of(op.results[0].type.shape)
        assert dims is not None
        dims_of[op.results[0]] = dims
        if family(op) == "rows":
            kb.set_tile(op.results[0], _reduction(kb, op, space, rows), dims)
        else:
            kb.compute(op, space, dims)
    kb.store_outputs(space, dims_of)
    note = f"{rows.count} rows of {rows.length} (axes {list(rows.axes)} of {list(rows.shape)})"
    return kb.finish((-(-rows.count // block_r),), [note],
                     num_warps=blocks.num_warps(block_r * block_l),
                     inplace=set(group.outer.values()))

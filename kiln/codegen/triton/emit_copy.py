"""Data-movement kernels: transpose, slice, pad, concat, split.

Each walks the output flat (split: the input) and computes, per element, where its source
lives: a permuted coordinate (transpose), `start + i · step` (slice), `i − begin` with a masked,
reflected or clamped read outside the input (pad), or which input's range the coordinate falls
in along the axis (concat, split). Copies move storage-type elements unconverted.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable

from kiln.codegen.triton.emit_elementwise import flat_grid, flat_space
from kiln.codegen.triton.exprs import literal
from kiln.codegen.triton.group import Group
from kiln.codegen.triton.kernel import Kernel, KernelBuilder
from kiln.codegen.triton.options import TritonOptions
from kiln.codegen.triton.space import Space, scaled, strides, total
from kiln.ir.graph import Value
from kiln.ir.ops.shape import Concat, Pad, Slice, Split, Transpose

Shape = tuple[int, ...]


def _coord(space: Space, dim: int) -> str:
    return "0" if space.shape[dim] == 1 else space.coord(dim).expr


def _offset(coords: list[str], shape: Shape) -> str:
    """The flat offset of `coords` in `shape`; a block even when every coordinate is 0 (a
    scalar pointer with a block mask or value is an error in Triton)."""
    offset = total([scaled(c, st) for c, st, size in zip(coords, strides(shape), shape)
                    if size > 1 and c != "0"])
    if offset == "0":
        return "offs * 0"
    return offset if re.search(r"[A-Za-z_]", offset) else f"{offset} + offs * 0"


def _axis_coord(space: Space, axis: int) -> str:
    """The coordinate along a concat/split axis, a block even on a size-1 axis (the range
    checks on it must be blocks too)."""
    c = _coord(space, axis)
    return "(offs * 0)" if c == "0" else c


def _load(kb: KernelBuilder, value: Value, offset: str, mask: str, other: str = "0.0") -> str:
    return f"tl.load({kb.pointer(value)} + {offset}, mask={mask}, other={other})"


def _transpose(kb: KernelBuilder, space: Space) -> None:
    op = kb.group.op
    perm = op.kind.perm  # type: ignore[attr-defined]
    source = [""] * len(perm)
    for d, axis in enumerate(perm):
        source[axis] = _coord(space, d)
    x = op.operands[0]
    kb.line(f"tl.store({kb.pointer(op.results[0])} + offs, "
            f"{_load(kb, x, _offset(source, x.type.shape), 'mask')}, mask=mask)")


def _slice(kb: KernelBuilder, space: Space) -> None:
    op = kb.group.op
    kind = op.kind
    assert isinstance(kind, Slice)
    source = [_coord(space, d) for d in range(len(space.shape))]
    for axis, start, step in zip(kind.axes, kind.starts, kind.steps):
        c = source[axis]
        source[axis] = total([scaled(c, step) if c != "0" else "", str(start) if start else ""])
    x = op.operands[0]
    kb.line(f"tl.store({kb.pointer(op.results[0])} + offs, "
            f"{_load(kb, x, _offset(source, x.type.shape), 'mask')}, mask=mask)")


def _pad(kb: KernelBuilder, space: Space) -> None:
    op = kb.group.op
    kind = op.kind
    assert isinstance(kind, Pad)
    x = op.operands[0]
    checks, source = ["mask"], []
    for d, size in enumerate(x.type.shape):
        begin = kind.pads[d]
        c = _coord(space, d)
        if space.shape[d] == size:
            source.append(c)
            continue
        j = f"j{d}"
        kb.line(f"{j} = {c} - {begin}" if begin else f"{j} = {c}")
        if kind.mode == "reflect":
            kb.line(f"{j} = tl.where({j} < 0, -{j}, {j})")
            kb.line(f"{j} = tl.where({j} >= {size}, {2 * (size - 1)} - {j}, {j})")
        elif kind.mode == "edge":
            kb.line(f"{j} = tl.minimum(tl.maximum({j}, 0), {size - 1})")
        else:
            checks.append(f"({j} >= 0) & ({j} < {size})")
        source.append(j)
    load = _load(kb, x, _offset(source, x.type.shape), " & ".join(checks), literal(kind.value))
    kb.line(f"tl.store({kb.pointer(op.results[0])} + offs, {load}, mask=mask)")


def _ranges(sizes: list[int]) -> list[tuple[int, int]]:
    starts = [sum(sizes[:k]) for k in range(len(sizes))]
    return [(s, s + n) for s, n in zip(starts, sizes)]


def _concat(kb: KernelBuilder, space: Space) -> None:
    op = kb.group.op
    axis = op.kind.axis % len(space.shape)  # type: ignore[attr-defined]
    c = _axis_coord(space, axis)
    kb.line("v = tl.zeros((BLOCK,), dtype=" + kb.options.tl_dtype + ")")
    for x, (lo, hi) in zip(op.operands, _ranges([v.type.shape[axis] for v in op.operands])):
        source = [_coord(space, d) if d != axis else (f"({c} - {lo})" if lo else c)
                  for d in range(len(space.shape))]
        inside = f"({c} >= {lo}) & ({c} < {hi})"
        load = _load(kb, x, _offset(source, x.type.shape), f"mask & {inside}")
        kb.line(f"v = tl.where({inside}, {load}, v)")
    kb.line(f"tl.store({kb.pointer(op.results[0])} + offs, v, mask=mask)")


def _split(kb: KernelBuilder, space: Space) -> None:
    op = kb.group.op
    axis = op.kind.axis % len(space.shape)  # type: ignore[attr-defined]
    c = _axis_coord(space, axis)
    x = op.operands[0]
    kb.line(f"v = tl.load({kb.pointer(x)} + offs, mask=mask)")
    for out, (lo, hi) in zip(op.results, _ranges([r.type.shape[axis] for r in op.results])):
        target = [_coord(space, d) if d != axis else (f"({c} - {lo})" if lo else c)
                  for d in range(len(space.shape))]
        kb.line(f"tl.store({kb.pointer(out)} + {_offset(target, out.type.shape)}, v, "
                f"mask=mask & ({c} >= {lo}) & ({c} < {hi}))")


COPIES: dict[type, Callable[[KernelBuilder, Space], None]] = {
    Transpose: _transpose, Slice: _slice, Pad: _pad, Concat: _concat, Split: _split,
}


def copy_kernel(name: str, group: Group, options: TritonOptions) -> Kernel:
    op = group.op
    shape = op.operands[0].type.shape if op.isa(Split) else op.results[0].type.shape
    kb = KernelBuilder(name, group, options, "copy")
    for value in (*op.operands, *op.results):
        kb.pointer(value)
    space = flat_space(kb, shape)
    COPIES[type(op.kind)](kb, space)
    return kb.finish(flat_grid(kb, shape), [f"{math.prod(shape)} elements of {list(shape)}"])

"""Rows: what a reduction reduces (its input X over some axes), shared by codegen and checks."""

from __future__ import annotations

import math
from dataclasses import dataclass

from kiln.ir.graph import Op
from kiln.ir.ops.nn_norm import LayerNorm, LogSoftmax, Softmax
from kiln.ir.ops.reduce import ReduceBase

Shape = tuple[int, ...]
ROW_OPS = (Softmax, LogSoftmax, LayerNorm, ReduceBase)


@dataclass(frozen=True)
class Rows:
    """X (`shape`) reduced over `axes`: R rows of L elements."""

    shape: Shape
    axes: tuple[int, ...]

    @property
    def kept(self) -> Shape:
        return tuple(1 if i in self.axes else d for i, d in enumerate(self.shape))

    @property
    def dropped(self) -> Shape:
        return tuple(d for i, d in enumerate(self.shape) if i not in self.axes)

    @property
    def row_dims(self) -> tuple[int, ...]:
        return tuple(i for i in range(len(self.shape)) if i not in self.axes)

    @property
    def length(self) -> int:
        return math.prod(self.shape[a] for a in self.axes)

    @property
    def count(self) -> int:
        return math.prod(self.dropped)

    def dims_of(self, shape: Shape) -> tuple[int, ...] | None:
        """Space dims of a member value of `shape`; None when it is no row shape."""
        if shape in (self.shape, self.kept):
            return tuple(range(len(self.shape)))
        if shape == self.dropped:
            return self.row_dims
        return None


def rows_of(op: Op) -> Rows:
    """The rows a softmax / log_softmax / layer_norm / reduce_* op works on."""
    x = op.operands[0].type
    kind = op.kind
    if isinstance(kind, ReduceBase):
        axes = tuple(sorted({a % x.rank for a in kind.axes}))
    elif isinstance(kind, (Softmax, LogSoftmax)):
        axes = (kind.axis % x.rank,)
    else:
        assert isinstance(kind, LayerNorm)
        axes = tuple(range(x.rank - kind.normalized_ndim, x.rank))
    return Rows(x.shape, axes)


def group_rows(ops: list[Op]) -> Rows:
    """The rows of the (first) reduction among `ops`."""
    return rows_of(next(op for op in ops if op.isa(ROW_OPS)))

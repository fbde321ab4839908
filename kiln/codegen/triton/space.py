"""Iteration spaces: which element of a tensor each lane of a tile stands for.

Every kernel walks a *space*, a static shape (the output of an elementwise chain, a GEMM's
output, a reduction's input). Each space dimension has a *coordinate*: a Triton expression
(a tile like `i2`, `oh[:, None]`, or a scalar program id) and the name of the mask that says
which lanes of it are real. A tensor of shape V read *broadcast* into the space is addressed
by `Σ_j coord(dims[j]) · stride_j` over its non-unit dims (`dims[j]` is the space dimension
that V's dimension j runs along), masked by the masks of the coordinates it used. Because only
the coordinates a read needs appear in it, a per-channel bias in a GEMM epilogue loads a
`[1, BLOCK_N]` tile and a row statistic in a reduction a `[BLOCK_R, 1]` one, and Triton's own
broadcasting combines them.

Coordinates are defined lazily (a kernel writes `i1 = offs // 64 % 16` only if some read
needs dimension 1), and a space can name *flat* offsets for contiguous accesses (an
elementwise kernel reads a same-shape operand at `offs`, no division at all).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

Shape = tuple[int, ...]


@dataclass(frozen=True)
class Coord:
    """A coordinate tile (or scalar) and the mask of its valid lanes (None: all valid)."""

    expr: str
    mask: str | None = None


@dataclass(frozen=True)
class Access:
    """How to address a tensor inside a space: offset expression and the masks it needs."""

    offset: str
    masks: tuple[str, ...]

    def mask(self) -> str | None:
        return " & ".join(self.masks) if self.masks else None


def strides(shape: Shape) -> list[int]:
    """Row-major (contiguous) strides in elements."""
    out, step = [], 1
    for size in reversed(shape):
        out.append(step)
        step *= size
    return out[::-1]


def scaled(expr: str, factor: int) -> str:
    """`expr * factor`, simplified for factors 0 and 1 (empty string for 0 or no expr), with
    parentheses around a compound `expr`."""
    if factor == 0 or not expr:
        return ""
    if factor == 1:
        return expr
    return f"({expr}) * {factor}" if _compound(expr) else f"{expr} * {factor}"


def _compound(expr: str) -> bool:
    """True when `expr` has an operator outside brackets (`a + b`, not `x[:, None]`)."""
    depth = 0
    for i, ch in enumerate(expr):
        depth += ch in "(["
        depth -= ch in ")]"
        if depth == 0 and ch == " " and i + 1 < len(expr) and expr[i + 1] in "+-*/%":
            return True
    return expr.startswith("-")


def total(terms: Sequence[str]) -> str:
    parts = [t for t in terms if t]
    return " + ".join(parts) if parts else "0"


def unravel(index: str, shape: Shape, dim: int) -> str:
    """Coordinate `dim` of a row-major flat `index` over `shape`."""
    inner = math.prod(shape[dim + 1:])
    expr = index if inner == 1 else f"{index} // {inner}"
    return expr if dim == 0 or math.prod(shape[:dim]) == 1 else f"{expr} % {shape[dim]}"


def right_aligned(vshape: Shape, dims: Sequence[int]) -> tuple[int, ...]:
    """Space dims of a tensor broadcast NumPy-style into a value laid along `dims`."""
    if len(vshape) > len(dims):
        raise ValueError(f"shape {vshape} does not broadcast into {len(dims)} dims")
    return tuple(dims[len(dims) - len(vshape):])


class Space:
    """A static shape, its coordinates (defined on first use) and its flat accesses."""

    def __init__(self, shape: Shape, define: Callable[[int], Coord],
                 flats: dict[tuple[Shape, tuple[int, ...]], Access] | None = None) -> None:
        self.shape = shape
        self._define = define
        self._coords: dict[int, Coord] = {}
        self.flats = dict(flats or {})

    @property
    def identity(self) -> tuple[int, ...]:
        return tuple(range(len(self.shape)))

    def coord(self, dim: int) -> Coord:
        if dim not in self._coords:
            self._coords[dim] = self._define(dim)
        return self._coords[dim]

    def access(self, vshape: Shape, dims: Sequence[int]) -> Access:
        """Address a contiguous tensor of shape `vshape` whose dim j runs along `dims[j]`."""
        flat = self.flats.get((tuple(vshape), tuple(dims)))
        if flat is not None:
            return flat
        terms, masks = [], []
        for size, stride, dim in zip(vshape, strides(vshape), dims):
            if size == 1:
                continue
            if self.shape[dim] != size:
                raise ValueError(f"dim of size {size} laid along space dim {dim} of size "
                                 f"{self.shape[dim]}")
            coord = self.coord(dim)
            terms.append(scaled(coord.expr, stride))
            if coord.mask and coord.mask not in masks:
                masks.append(coord.mask)
        return Access(total(terms), tuple(masks))

"""Flat kernels: elementwise chains (one op or a fused group) over one output shape.

One program handles BLOCK consecutive output elements (`offs`). Operands of the output's shape
are read at `offs` directly; broadcast operands (a per-channel scale, a scalar) at the
coordinates they vary along, each computed once per kernel (`i1 = offs // 256 % 16`). The whole
chain runs in registers in fp32; each yielded value is stored once.
"""

from __future__ import annotations

import math

from kiln.codegen.triton import blocks
from kiln.codegen.triton.group import Group
from kiln.codegen.triton.kernel import Kernel, KernelBuilder
from kiln.codegen.triton.options import TritonOptions
from kiln.codegen.triton.space import Access, Coord, Space, unravel

Shape = tuple[int, ...]


def flat_space(kb: KernelBuilder, shape: Shape) -> Space:
    """The space of a flat kernel over `shape`: `offs` (masked by `mask`) and its coordinates.

    Writes the program prologue (`pid`, `offs`, `mask`) and adds the BLOCK constexpr.
    """
    numel = math.prod(shape)
    kb.constexpr("BLOCK", blocks.flat_block(numel, kb.options.interpreter))
    kb.line("pid = tl.program_id(0)")
    kb.line("offs = pid * BLOCK + tl.arange(0, BLOCK)")
    kb.line(f"mask = offs < {numel}")

    def define(dim: int) -> Coord:
        expr = unravel("offs", shape, dim)
        if expr == "offs":
            return Coord("offs", "mask")
        kb.line(f"i{dim} = {expr}")
        return Coord(f"i{dim}", "mask")

    ident = tuple(range(len(shape)))
    return Space(shape, define, {(shape, ident): Access("offs", ("mask",))})


def flat_grid(kb: KernelBuilder, shape: Shape) -> tuple[int]:
    return (-(-math.prod(shape) // kb.meta["BLOCK"]),)


def elementwise_kernel(name: str, group: Group, options: TritonOptions) -> Kernel:
    """The kernel of an elementwise op or of an elementwise group (all at one shape)."""
    shape = group.outputs[0][1].type.shape
    kb = KernelBuilder(name, group, options, "elementwise")
    space = flat_space(kb, shape)
    for op in group.ops:
        kb.compute(op, space, space.identity)
    kb.store_outputs(space, {})
    inplace = {v for v in group.outer.values() if v.type.shape == shape}
    return kb.finish(flat_grid(kb, shape), [f"{math.prod(shape)} elements of {list(shape)}"],
                     inplace=inplace)

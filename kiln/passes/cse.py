"""Common subexpression elimination: identical pure ops on identical operands compute once.

Two ops are identical when their kinds have the same class and equal attributes, their operands
are the same values and their result types agree. Kinds are frozen dataclasses, so they hash;
the key is built field by field to get floats right: `0.0 == -0.0` in Python, yet a pad value
or clamp bound of `-0.0` is not the same op as `0.0`, and NaN never equals itself, so floats are
keyed by their exact hex spelling (`float.hex`). Constants compare by their bytes (`Dense`), and
weight ops by symbol and type, so two references to one weight collapse too.

Scope: each block separately, in order (a value defined earlier in the block dominates every
later op), regions included. Side-effecting ops are never merged.

Regions (fused groups): ops inside a region merge like any others. Then a fused op's inputs are
tidied (block arguments bound to the same outside value merge, unused ones go; see
`passes/outline.py`), and two region ops merge when their kinds, operands and result types agree
and their regions are structurally equal: the same ops in the same order with the same
attributes, each operand naming the same block argument or earlier result by position
(`region_key`) — names play no part. A fused op whose region lost ops gets its `pattern`
updated, or becomes the one op it has left.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Hashable

from kiln.ir.graph import Block, Module, Op, Value
from kiln.ir.rewriter import Rewriter
from kiln.passes.dce import has_side_effects
from kiln.passes.outline import settle, tidy_inputs
from kiln.passes.registry import PassContext, register_pass


def attr_key(value: object) -> Hashable:
    """A hashable key equal exactly when two attribute values mean the same thing."""
    if isinstance(value, float):
        return ("float", value.hex())
    if isinstance(value, (tuple, list)):
        return (type(value).__name__, tuple(attr_key(v) for v in value))
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = tuple(attr_key(getattr(value, f.name)) for f in dataclasses.fields(value))
        return (type(value), fields)
    if isinstance(value, Hashable):
        return (type(value), value)
    return ("id", id(value))


def op_key(op: Op) -> Hashable:
    """What makes two ops interchangeable: kind class, attributes, operand identity, types,
    and for a region op its region's structure."""
    region = region_key(op.region) if op.region is not None else None
    return (attr_key(op.kind), tuple(id(v) for v in op.operands),
            tuple(r.type for r in op.results), region)


def region_key(block: Block, outer: dict[Value, Hashable] | None = None,
               depth: int = 0) -> Hashable:
    """The structure of a region: argument types, then per op its attributes, operands (by
    position: (depth, "arg", index) or (depth, op index, result index)) and result types.

    `outer` names the values of enclosing regions the same way; values from outside every
    region (of a region that is not isolated from above) are named by identity.
    """
    names = dict(outer or {})
    names.update((arg, (depth, "arg", i)) for i, arg in enumerate(block.args))
    items: list[Hashable] = [tuple(a.type for a in block.args)]
    for n, op in enumerate(block.ops):
        operands = tuple(names.get(v, ("outside", id(v))) for v in op.operands)
        inner = region_key(op.region, names, depth + 1) if op.region is not None else None
        items.append((attr_key(op.kind), operands, tuple(r.type for r in op.results), inner))
        names.update((r, (depth, n, r.index)) for r in op.results)
    return tuple(items)


class _Merger:
    """One cse run: merges ops block by block, regions first, and counts what it did."""

    def __init__(self, rewriter: Rewriter) -> None:
        self.rewriter = rewriter
        self.merged = 0
        self.tidied = 0

    def block(self, block: Block) -> None:
        seen: dict[Hashable, Op] = {}
        for op in list(block.ops):
            if op.region is not None and self.region(op):
                continue  # the region op became the one op it held
            if has_side_effects(op):
                continue
            key = op_key(op)
            first = seen.get(key)
            if first is None:
                seen[key] = op
                continue
            self.rewriter.replace_op(op, first.results)
            self.merged += 1

    def region(self, op: Op) -> bool:
        """Tidy `op`'s inputs and merge inside its region; True when `op` was unwrapped."""
        assert op.region is not None
        if tidy_inputs(op):
            self.tidied += 1
        before = self.merged
        self.block(op.region)
        return self.merged > before and settle(self.rewriter, op)


@register_pass("cse")
def cse(module: Module, ctx: PassContext) -> bool:
    """Merge identical side-effect-free ops (same kind, attributes and operands)."""
    merger = _Merger(Rewriter(module))
    for func in module.funcs.values():
        merger.block(func.body)
    ctx.count("ops-merged", merger.merged)
    ctx.count("inputs-tidied", merger.tidied)
    return merger.merged > 0 or merger.tidied > 0

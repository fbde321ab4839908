"""Common subexpression elimination: identical pure ops on identical operands compute once.

Two ops are identical when their kinds have the same class and equal attributes, their operands
are the same values and their result types agree. Kinds are frozen dataclasses, so they hash;
the key is built field by field to get floats right: `0.0 == -0.0` in Python, yet a pad value
or clamp bound of `-0.0` is not the same op as `0.0`, and NaN never equals itself, so floats are
keyed by their exact hex spelling (`float.hex`). Constants compare by their bytes (`Dense`), and
weight ops by symbol and type, so two references to one weight collapse too.

Scope: each block separately, in order (a value defined earlier in the block dominates every
later op). Side-effecting ops and ops with a region (fused groups) are never merged.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Hashable

from kiln.ir.graph import Block, Module, Op
from kiln.ir.rewriter import Rewriter
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
    """What makes two ops interchangeable: kind class, attributes, operand identity, types."""
    return (attr_key(op.kind), tuple(id(v) for v in op.operands),
            tuple(r.type for r in op.results))


def _cse_block(block: Block, rewriter: Rewriter) -> int:
    seen: dict[Hashable, Op] = {}
    merged = 0
    for op in list(block.ops):
        if op.region is not None:
            merged += _cse_block(op.region, rewriter)
            continue
        if op.kind.SIDE_EFFECTS:
            continue
        key = op_key(op)
        first = seen.get(key)
        if first is None:
            seen[key] = op
            continue
        rewriter.replace_op(op, first.results)
        merged += 1
    return merged


@register_pass("cse")
def cse(module: Module, ctx: PassContext) -> bool:
    """Merge identical side-effect-free ops (same kind, attributes and operands)."""
    rewriter = Rewriter(module)
    merged = sum(_cse_block(func.body, rewriter) for func in module.funcs.values())
    ctx.count("ops-merged", merged)
    return merged > 0

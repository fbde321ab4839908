"""Dead code elimination: drop pure ops nobody uses, and weights no op references any more."""

from __future__ import annotations

from kiln.ir.graph import Block, Module, Op
from kiln.ir.ops.core import Weight
from kiln.ir.rewriter import Rewriter
from kiln.passes.registry import PassContext, register_pass


def has_side_effects(op: Op) -> bool:
    """True when `op` or any op in its region (its terminator aside) must be kept."""
    if op.kind.SIDE_EFFECTS:
        return True
    if op.region is None:
        return False
    body = op.region.ops[:-1] if op.region.ops else []
    return any(has_side_effects(inner) for inner in body)


def is_dead(op: Op) -> bool:
    """A pure op none of whose results is used."""
    return not has_side_effects(op) and all(not r.uses for r in op.results)


def _sweep(block: Block, rewriter: Rewriter) -> int:
    """Erase dead ops of `block` (and of nested regions), last to first, so chains die at once."""
    erased = 0
    for op in reversed(list(block.ops)):
        if is_dead(op):
            rewriter.erase_op(op)
            erased += 1
        elif op.region is not None:
            erased += _sweep(op.region, rewriter)
    return erased


def referenced_weights(module: Module) -> set[str]:
    """Symbols of every weight some `kiln.weight` op (nested ones included) refers to."""
    return {op.kind.name for op in module.walk() if isinstance(op.kind, Weight)}


@register_pass("dce")
def dce(module: Module, ctx: PassContext) -> bool:
    """Remove unused side-effect-free ops and weights no longer referenced."""
    rewriter = Rewriter(module)
    erased = sum(_sweep(func.body, rewriter) for func in module.funcs.values())
    used = referenced_weights(module)
    # Weight storage is module data, not graph; it has no rewriter method, so drop it here.
    unused = [name for name in module.weights if name not in used]
    for name in unused:
        del module.weights[name]
    ctx.count("ops-erased", erased)
    ctx.count("weights-dropped", len(unused))
    return erased > 0 or bool(unused)

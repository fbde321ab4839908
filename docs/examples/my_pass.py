# file: docs/examples/my_pass.py
"""merge-relus: a kiln pass written outside kiln (docs/writing-a-pass.md)."""

from __future__ import annotations

from kiln.ir.graph import Module, Op
from kiln.ir.ops.elementwise import Relu, Relu6
from kiln.ir.rewriter import Pattern, Rewriter, apply_patterns
from kiln.passes.registry import PassContext, register_pass


def relu_of_nonnegative(op: Op, rewriter: Rewriter) -> bool:
    """relu(relu(x)) → relu(x);  relu(relu6(x)) → relu6(x): the inner result is ≥ 0 already."""
    inner = op.operands[0].producer if op.isa(Relu) else None
    if inner is None or not inner.isa((Relu, Relu6)):
        return False
    rewriter.replace_op(op, [inner.result])
    return True


def relu6_of_relu(op: Op, rewriter: Rewriter) -> bool:
    """relu6(relu(x)) → relu6(x): relu6 clips at 0 by itself."""
    inner = op.operands[0].producer if op.isa(Relu6) else None
    if inner is None or not inner.isa(Relu):
        return False
    rewriter.set_operand(op, 0, inner.operands[0])
    if not inner.result.users:  # the inner relu fed only this op
        rewriter.erase_op(inner)
    return True


@register_pass("merge-relus")
def merge_relus(module: Module, ctx: PassContext, *, relu6: bool = True) -> bool:
    """Merge chained activations: relu(relu(x)) → relu(x), relu6(relu(x)) → relu6(x)."""
    patterns: list[Pattern] = [relu_of_nonnegative]
    if relu6:
        patterns.append(relu6_of_relu)
    changes = apply_patterns(module, patterns)
    ctx.count("merged", changes)
    return changes > 0

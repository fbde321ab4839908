"""Constant folding: evaluate ops whose operands are all known, with the op's own reference.

An op folds when it is pure, has no region, is not itself a `kiln.constant` / `kiln.weight`, and
every operand comes from a constant or from a weight whose data is present (elided weights are
skipped). The interpreter's reference computes the results, so folding is exactly as accurate as
running the model. A small result (at most `inline-limit` elements, of a type a literal can
spell) becomes a `kiln.constant`; a larger one becomes a new weight named `fold.<value name>`
(typically a transposed or reshaped parameter). Folding never grows the model: a large result
with more elements than its operands together (`expand` of a splat) stays an op, and so does
anything beyond `max-elements`, or a large result when the module's weights are elided (a new
weight beside elided ones would make the module half-elided). The producers left unused are
removed by `dce`, not here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from kiln.errors import KilnError
from kiln.ir.builder import Builder
from kiln.ir.graph import Block, Module, Op, Value
from kiln.ir.ops.attrs import Dense
from kiln.ir.ops.core import Constant, Weight
from kiln.ir.rewriter import Rewriter
from kiln.ir.types import ScalarType, TensorType, dtype_from_numpy
from kiln.passes.registry import PassContext, register_pass


def known_value(value: Value, module: Module) -> np.ndarray | None:
    """The array `value` always holds (a constant, or a weight with data), read-only; else None."""
    op = value.producer
    if op is None:
        return None
    if isinstance(op.kind, Constant):
        return op.kind.value.array
    if isinstance(op.kind, Weight) and op.kind.name in module.weights:
        view = module.weights[op.kind.name].view()
        view.flags.writeable = False  # weight arrays are shared between module clones
        return view
    return None


def _evaluate(op: Op, args: Sequence[np.ndarray], ctx: PassContext) -> list[np.ndarray] | None:
    """The op's results from its reference, or None when it cannot be evaluated here."""
    try:
        outs = list(op.kind.reference(*args))
    except (KilnError, NotImplementedError, ValueError, TypeError, ArithmeticError) as exc:
        ctx.logger.debug("not folding %s: %s", op.name, exc)
        return None
    for out, res in zip(outs, op.results):
        if tuple(out.shape) != res.type.shape or out.dtype != res.type.numpy_dtype:
            ctx.logger.debug("not folding %s: reference gave %s%s for %s", op.name, out.dtype,
                             list(out.shape), res.type)
            return None
    return outs if len(outs) == len(op.results) else None


def literal_type(type: TensorType) -> bool:
    """Whether a `kiln.constant` can have this type (plain dtypes stored as themselves)."""
    dtype = type.dtype
    return (type.encoding is None and isinstance(dtype, ScalarType)
            and dtype_from_numpy(dtype.numpy) == dtype)


def _materialize(builder: Builder, module: Module, result: Value, array: np.ndarray,
                 inline_limit: int) -> Value:
    """A constant for a small literal-typed array, else a new weight of the result's type."""
    if array.size <= inline_limit and literal_type(result.type):
        return builder.add(Constant(value=Dense.of(array)), name=result.name)
    symbol = module.add_weight(_weight_name(result), array)
    return builder.add(Weight(name=symbol, type=result.type), name=result.name)


def _weight_name(result: Value) -> str:
    base = result.name
    if base is None and isinstance(result.owner, Op):
        base = result.owner.name.removeprefix("kiln.")
    return f"fold.{base or 'value'}"


@dataclass(frozen=True)
class _Limits:
    inline_limit: int
    max_elements: int
    weights_allowed: bool

    def allows(self, op: Op) -> bool:
        """Whether folding `op` keeps within the size limits (see the module docstring)."""
        sizes = [r.type.numel for r in op.results]
        if all(n <= self.inline_limit and literal_type(r.type)
               for n, r in zip(sizes, op.results)):
            return True
        if not self.weights_allowed or max(sizes) > self.max_elements:
            return False
        return sum(sizes) <= sum(v.type.numel for v in op.operands)


def _fold_block(block: Block, module: Module, rewriter: Rewriter, ctx: PassContext,
                limits: _Limits) -> int:
    folded = 0
    for op in list(block.ops):
        if op.region is not None:
            folded += _fold_block(op.region, module, rewriter, ctx, limits)
            continue
        if op.kind.SIDE_EFFECTS or isinstance(op.kind, (Constant, Weight)) or not op.results:
            continue
        if not limits.allows(op):
            continue
        args = [known_value(v, module) for v in op.operands]
        if any(a is None for a in args):
            continue
        outs = _evaluate(op, [a for a in args if a is not None], ctx)
        if outs is None:
            continue
        builder = rewriter.builder_before(op)
        new = [_materialize(builder, module, r, out, limits.inline_limit)
               for r, out in zip(op.results, outs)]
        rewriter.replace_op(op, new)
        folded += 1
    return folded


@register_pass("fold-constants")
def fold_constants(module: Module, ctx: PassContext, *, max_elements: int = 1 << 20,
                   inline_limit: int = 64) -> bool:
    """Evaluate ops whose operands are all constants or weights, replacing them by the result."""
    rewriter = Rewriter(module)
    elided = not module.weights and any(isinstance(op.kind, Weight) for op in module.walk())
    limits = _Limits(inline_limit, max_elements, weights_allowed=not elided)
    folded = sum(_fold_block(func.body, module, rewriter, ctx, limits)
                 for func in module.funcs.values())
    ctx.count("ops-folded", folded)
    return folded > 0

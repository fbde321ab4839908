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

Fused ops (`kiln.fused`, isolated regions): one whose operands are all known folds entirely (its
region is evaluated op by op, like the interpreter does). Otherwise the ops inside whose operands
are known — constants in the region, or block arguments bound to known operands — fold, and
their results are materialized *outside*, before the fused op, and passed in as new operands:
constants and weights stay outside a group (see `passes/outline.py`). Arguments left unused are
dropped, the `pattern` is brought up to date, and a fused op left with one op inside becomes
that op.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from kiln.errors import KilnError
from kiln.ir.builder import Builder
from kiln.ir.graph import Block, Module, Op, Value
from kiln.ir.ops.attrs import Dense
from kiln.ir.ops.core import Constant, Weight, Yield
from kiln.ir.ops.fused import Fused
from kiln.ir.rewriter import Rewriter
from kiln.ir.types import ScalarType, TensorType, dtype_from_numpy
from kiln.passes.dce import has_side_effects
from kiln.passes.outline import add_input, settle
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
        outs = list(op.kind.reference_typed([v.type for v in op.operands], *args))
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


@dataclass
class _Folder:
    """One fold-constants run: where results go, what limits apply, what the values are."""

    module: Module
    rewriter: Rewriter
    ctx: PassContext
    limits: _Limits

    def known(self, value: Value, bound: dict[Value, np.ndarray]) -> np.ndarray | None:
        """The array `value` holds: bound (a region argument or result), or a constant/weight."""
        found = bound.get(value)
        return found if found is not None else known_value(value, self.module)

    def foldable(self, op: Op) -> bool:
        """A pure op without a region that computes something and keeps within the limits."""
        if op.kind.SIDE_EFFECTS or isinstance(op.kind, (Constant, Weight)) or not op.results:
            return False
        return op.region is None and self.limits.allows(op)

    def evaluate(self, op: Op, bound: dict[Value, np.ndarray]) -> list[np.ndarray] | None:
        """`op`'s results when all its operands are known, else None."""
        if isinstance(op.kind, Weight):
            found = known_value(op.result, self.module)
            return None if found is None else [found]
        args = [self.known(v, bound) for v in op.operands]
        if any(a is None for a in args):
            return None
        return _evaluate(op, [a for a in args if a is not None], self.ctx)

    def materialize(self, op: Op, outs: list[np.ndarray], before: Op) -> list[Value]:
        """Constants or weights holding `outs` (for `op`'s results), inserted before `before`."""
        builder = self.rewriter.builder_before(before)
        return [_materialize(builder, self.module, r, out, self.limits.inline_limit)
                for r, out in zip(op.results, outs)]

    def block(self, block: Block) -> int:
        folded = 0
        for op in list(block.ops):
            if op.region is not None:
                folded += self.region_op(op)
                continue
            outs = self.evaluate(op, {}) if self.foldable(op) else None
            if outs is not None:
                self.rewriter.replace_op(op, self.materialize(op, outs, op))
                folded += 1
        return folded

    def region_op(self, op: Op) -> int:
        """Fold a fused op entirely, or the constant parts of its region (module docstring)."""
        assert op.region is not None
        if not isinstance(op.kind, Fused):
            return self.block(op.region)
        outs = self.run_region(op) if self.limits.allows(op) else None
        if outs is not None:
            self.rewriter.replace_op(op, self.materialize(op, outs, op))
            return 1
        bound = {arg: array for arg, v in zip(op.region.args, op.operands)
                 if (array := known_value(v, self.module)) is not None}
        folded = 0
        for inner in list(op.region.ops):
            outs = self.evaluate(inner, bound) if self.foldable(inner) else None
            if outs is None:
                continue
            args = [add_input(op, v) for v in self.materialize(inner, outs, op)]
            bound.update(zip(args, outs))
            self.rewriter.replace_op(inner, args)
            folded += 1
        if folded:
            settle(self.rewriter, op)
        return folded

    def run_region(self, op: Op) -> list[np.ndarray] | None:
        """The results of a fused op whose operands are all known, else None."""
        assert op.region is not None
        if has_side_effects(op):
            return None
        env: dict[Value, np.ndarray] = {}
        for arg, value in zip(op.region.args, op.operands):
            array = known_value(value, self.module)
            if array is None:
                return None
            env[arg] = array
        for inner in op.region.ops:
            if isinstance(inner.kind, Yield):
                return [env[v] for v in inner.operands]
            outs = None if inner.region is not None else self.evaluate(inner, env)
            if outs is None:
                return None
            env.update(zip(inner.results, outs))
        return None


@register_pass("fold-constants")
def fold_constants(module: Module, ctx: PassContext, *, max_elements: int = 1 << 20,
                   inline_limit: int = 64) -> bool:
    """Evaluate ops whose operands are all constants or weights, replacing them by the result."""
    rewriter = Rewriter(module)
    elided = not module.weights and any(isinstance(op.kind, Weight) for op in module.walk())
    limits = _Limits(inline_limit, max_elements, weights_allowed=not elided)
    folder = _Folder(module, rewriter, ctx, limits)
    folded = sum(folder.block(func.body) for func in module.funcs.values())
    ctx.count("ops-folded", folded)
    return folded > 0

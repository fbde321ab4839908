"""Canonicalization: a table of small local rewrites that remove no-ops and pick one spelling.

Canonical form: `flatten`, `squeeze` and `unsqueeze` become `reshape`. All three are views whose
result shape is static, so one op covers them, and every later pass (fusion, layout, codegen)
handles one view op instead of four. Each pattern is a plain function whose docstring states its
algebra; `apply_patterns` drives the table to a fixed point. A forward (`op → x`) happens only
when the op's result type equals x's type exactly, so broadcasting never slips through. Like
MLIR's canonicalizer, it also erases pure ops left without uses (the rewrites orphan many);
weights no longer referenced stay in `module.weights` until `dce`.

Not folded, on purpose: `x * 0 → 0` (wrong for NaN and inf: NaN * 0 is NaN), `x - x → 0` (same).
`x + 0 → x` may turn `-0.0 + 0.0 = +0.0` into `-0.0`; kiln does not promise signed zeros.
"""

from __future__ import annotations

import math

import numpy as np

from kiln.ir.graph import Module, Op, Value
from kiln.ir.ops.core import Cast, Constant
from kiln.ir.ops.elementwise import Add, Clamp, Div, Mul, Sub
from kiln.ir.ops.shape import (
    Concat,
    Dropout,
    Expand,
    Flatten,
    Identity,
    Pad,
    Reshape,
    Slice,
    Squeeze,
    Transpose,
    Unsqueeze,
)
from kiln.ir.rewriter import Pattern, Rewriter, apply_patterns
from kiln.passes.dce import is_dead
from kiln.passes.registry import PassContext, register_pass


def forward(op: Op, value: Value, rewriter: Rewriter) -> bool:
    """Replace `op`'s single result by `value` when their types agree exactly."""
    if len(op.results) != 1 or op.result.type != value.type:
        return False
    rewriter.replace_op(op, [value])
    return True


def splat_of(value: Value) -> float | None:
    """The one number every element of a constant holds, else None (non-constants too)."""
    producer = value.producer
    if producer is None or not isinstance(producer.kind, Constant):
        return None
    array = producer.kind.value.array
    if array.size == 0 or array.dtype == np.bool_:
        return None
    first = array.flat[0]
    return float(first) if bool(np.all(array == first)) else None


# -- no-ops ------------------------------------------------------------------------------------
def erase_dead(op: Op, rewriter: Rewriter) -> bool:
    """op with unused results and no side effects → (nothing)."""
    if not op.results or not is_dead(op):
        return False
    rewriter.erase_op(op)
    return True


def identity_like(op: Op, rewriter: Rewriter) -> bool:
    """identity(x) → x;  dropout(x) → x (inference)."""
    return op.isa((Identity, Dropout)) and forward(op, op.operands[0], rewriter)


def same_shape_view(op: Op, rewriter: Rewriter) -> bool:
    """reshape(x) → x and expand(x) → x when the shape does not change."""
    return op.isa((Reshape, Expand)) and forward(op, op.operands[0], rewriter)


def cast_to_same_type(op: Op, rewriter: Rewriter) -> bool:
    """cast<T>(x: T) → x."""
    return op.isa(Cast) and forward(op, op.operands[0], rewriter)


def concat_of_one(op: Op, rewriter: Rewriter) -> bool:
    """concat(x) → x."""
    return op.isa(Concat) and len(op.operands) == 1 and forward(op, op.operands[0], rewriter)


def full_slice(op: Op, rewriter: Rewriter) -> bool:
    """x[0:dim:1] on every sliced axis → x."""
    if not isinstance(op.kind, Slice):
        return False
    shape = op.operands[0].type.shape
    k = op.kind
    if any(s != 0 or e != shape[a] or st != 1
           for a, s, e, st in zip(k.axes, k.starts, k.ends, k.steps)):
        return False
    return forward(op, op.operands[0], rewriter)


def zero_pad(op: Op, rewriter: Rewriter) -> bool:
    """pad(x, all zeros) → x (any mode)."""
    return (isinstance(op.kind, Pad) and not any(op.kind.pads)
            and forward(op, op.operands[0], rewriter))


def unbounded_clamp(op: Op, rewriter: Rewriter) -> bool:
    """clamp(x, -inf or none, +inf or none) → x (NaN passes through both)."""
    if not isinstance(op.kind, Clamp):
        return False
    low, high = op.kind.min, op.kind.max
    if (low is not None and low != -math.inf) or (high is not None and high != math.inf):
        return False
    return forward(op, op.operands[0], rewriter)


def transpose_identity(op: Op, rewriter: Rewriter) -> bool:
    """transpose(x, [0, 1, ..., n-1]) → x."""
    return (isinstance(op.kind, Transpose) and op.kind.perm == tuple(range(len(op.kind.perm)))
            and forward(op, op.operands[0], rewriter))


# -- arithmetic identities ---------------------------------------------------------------------
_NEUTRAL: dict[type, tuple[float, bool]] = {Add: (0.0, True), Sub: (0.0, False),
                                            Mul: (1.0, True), Div: (1.0, False)}
"""Binary op → (neutral element, whether it may stand on the left too)."""


def neutral_operand(op: Op, rewriter: Rewriter) -> bool:
    """x + 0 → x, 0 + x → x, x - 0 → x, x * 1 → x, 1 * x → x, x / 1 → x (splat constants)."""
    rule = _NEUTRAL.get(type(op.kind))
    if rule is None:
        return False
    neutral, commutes = rule
    lhs, rhs = op.operands
    if splat_of(rhs) == neutral and forward(op, lhs, rewriter):
        return True
    return commutes and splat_of(lhs) == neutral and forward(op, rhs, rewriter)


# -- canonical spellings -----------------------------------------------------------------------
def view_to_reshape(op: Op, rewriter: Rewriter) -> bool:
    """flatten(x) / squeeze(x) / unsqueeze(x) → reshape(x, result shape)."""
    if not op.isa((Flatten, Squeeze, Unsqueeze)):
        return False
    reshape = Reshape(shape=op.result.type.shape)
    new = rewriter.builder_before(op).add(reshape, op.operands[0], name=op.result.name)
    rewriter.replace_op(op, [new])
    return True


def reshape_of_reshape(op: Op, rewriter: Rewriter) -> bool:
    """reshape(reshape(x, s1), s2) → reshape(x, s2)."""
    inner = op.operands[0].producer if op.isa(Reshape) else None
    if inner is None or not inner.isa(Reshape):
        return False
    rewriter.set_operand(op, 0, inner.operands[0])
    return True


def transpose_of_transpose(op: Op, rewriter: Rewriter) -> bool:
    """transpose(transpose(x, p), q) → transpose(x, r) with r[i] = p[q[i]]."""
    outer_kind = op.kind
    inner = op.operands[0].producer if isinstance(outer_kind, Transpose) else None
    inner_kind = inner.kind if inner is not None else None
    if inner is None or not isinstance(outer_kind, Transpose) \
            or not isinstance(inner_kind, Transpose):
        return False
    outer_perm, inner_perm = outer_kind.perm, inner_kind.perm
    rewriter.set_operand(op, 0, inner.operands[0])
    rewriter.modify(op, perm=tuple(inner_perm[q] for q in outer_perm))
    return True


PATTERNS: tuple[Pattern, ...] = (
    erase_dead, identity_like, same_shape_view, cast_to_same_type, concat_of_one, full_slice,
    zero_pad, unbounded_clamp, transpose_identity, neutral_operand, view_to_reshape,
    reshape_of_reshape, transpose_of_transpose,
)


@register_pass("canonicalize")
def canonicalize(module: Module, ctx: PassContext) -> bool:
    """Remove no-op ops, fold algebraic identities, and rewrite views into one canonical form."""
    changes = apply_patterns(module, PATTERNS)
    ctx.count("rewrites", changes)
    return changes > 0

"""Integer lowering of elementwise float ops: unary functions as tables, products as qmul.

A unary float op (hardswish, hardsigmoid, sigmoid, tanh, gelu, ...) whose input has an integer
twin would otherwise run as dequantize → float op → quantize over every element. Its input
takes only 256 values, so it becomes `kiln.qlut` (`kiln/ir/ops/qnn_eltwise.py`): the float op's
own reference evaluated in float64 at each dequantized input and rounded into the result's
calibrated type — the same numbers the float path computes up to float32 rounding, with no
float work at run time. relu / relu6 / clamp are not tabulated: they stay `kiln.clamp` on the
stored integers (same type, no table needed).

A table is only worth building when something downstream can stay in integers; a unary op
whose every user is a float-only op (or the model's result) keeps its float form, so that no
extra rounding step is added in front of float consumers.

The product of two activations (the squeeze-excitation gate: x · hardsigmoid(...), broadcast
over the spatial axes) becomes `kiln.qmul` with the multiplier s_a · s_b / s_out, plus the
clamp of a relu/relu6/clamp that alone reads it.
"""

from __future__ import annotations

from collections.abc import Callable, Collection

import numpy as np

from kiln.errors import KilnError
from kiln.ir.graph import Op, Value
from kiln.ir.ops import elementwise as ew
from kiln.ir.ops.base import all_ops
from kiln.ir.ops.qnn_eltwise import QLut, QMul, lut_table
from kiln.ir.types import QuantType, TensorType
from kiln.passes.quantize_layers import (
    ACTIVATIONS,
    Group,
    LayerPlan,
    QOperand,
    clamp_range,
    requant_attrs,
)

QTypeOf = Callable[[Value], "QuantType | None"]
def table_ops() -> tuple[type, ...]:
    """The unary float ops that become tables: every registered `UnaryOp` but relu / relu6 /
    clamp — asked at each run, so ops registered after this module was imported count too."""
    return tuple(cls for cls in all_ops().values()
                 if issubclass(cls, ew.UnaryOp) and not issubclass(cls, ACTIVATIONS))


def table_kind(op: Op, qtype: QTypeOf, integer_users: Collection[type]) -> QLut | None:
    """The `kiln.qlut` replacing unary `op` (its input must have a twin), or None to keep it
    float: no calibrated result type, or no user that could compute in integers."""
    q_in, q_out = qtype(op.operands[0]), qtype(op.result)
    if q_in is None or q_out is None or q_in.storage.bits != 8 or q_out.storage.bits != 8:
        return None
    if not any(isinstance(user.kind, tuple(integer_users)) for user in op.result.users):
        return None
    kind = op.kind

    def function(real: np.ndarray) -> np.ndarray:
        return kind.reference(real)[0]

    name = kind.NAME.removeprefix("kiln.")
    return QLut(to=q_out, table=lut_table(function, q_in, q_out), function=name)


def plan_mul(group: Group, qtype: QTypeOf) -> LayerPlan:
    """a · b of two activations (broadcasting), requantized by s_a · s_b / s_out."""
    a, b = group.anchor.operands
    qa, qb, q_out = qtype(a), qtype(b), qtype(group.out)
    if qa is None or qb is None or q_out is None:
        raise KilnError("an operand or its result has no calibration statistics")
    low, high = clamp_range(group.act, q_out)
    attrs = requant_attrs(qa.scale[0], [qb.scale[0]], q_out.scale[0])
    kind = QMul(to=q_out, multiplier=attrs["multiplier"], shift=attrs["shift"], clamp_min=low,
                clamp_max=high)
    return LayerPlan(group, kind, (QOperand(TensorType(a.type.shape, qa), source=a),
                                   QOperand(TensorType(b.type.shape, qb), source=b)))


__all__ = ["plan_mul", "table_kind", "table_ops"]

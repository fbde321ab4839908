"""Epilogues a kernel applies in registers as it stores, instead of the driver's tile.

The driver (`emit_gemm`) runs any epilogue but relu/relu6/clamp through a tile: the anchor
writes a block to scratch, then a second loop applies the ops and writes the result. For the
few forms MobileNet-style models put after their convolutions — hardswish after an expand or
depthwise conv, a residual add after a project conv, optionally clamped — a kernel can do the
same in registers before its one store (`kiln_pwconv`, `kiln_dwconv_act`), which saves a
write and a read of every block. `fused_epilogue` recognises those forms.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from kiln.ir.graph import Op, Value
from kiln.ir.ops.elementwise import Add, Clamp, Hardswish, Relu, Relu6


@dataclass(frozen=True)
class FusedEpilogue:
    """What the kernel applies as it stores: + residual, clamp to [lo, hi], then hardswish."""

    residual: Value | None
    lo: float
    hi: float
    hardswish: bool


def _only_use(value: Value, op: Op) -> bool:
    return len(value.uses) == 1 and op.operands[0] is value


def _clamp_range(op: Op) -> tuple[float, float] | None:
    """[lo, hi] of a relu / relu6 / clamp, None for any other op."""
    kind = op.kind
    if isinstance(kind, Relu):
        return 0.0, math.inf
    if isinstance(kind, Relu6):
        return 0.0, 6.0
    if isinstance(kind, Clamp):
        return (-math.inf if kind.min is None else kind.min,
                math.inf if kind.max is None else kind.max)
    return None


def fused_epilogue(result: Value, epilogue: tuple[Op, ...],
                   yields: tuple[Value, ...]) -> FusedEpilogue | None:
    """The epilogue as [add of a same-shape residual] [relu/relu6/clamp...] [hardswish], the
    last value the group's only result; None for anything else (the driver's tile)."""
    value, residual, lo, hi, act = result, None, -math.inf, math.inf, False
    ops = list(epilogue)
    if ops and isinstance(ops[0].kind, Add) and len(value.uses) == 1:
        left, right = ops[0].operands
        other = right if left is value else left if right is value else None
        if other is not None and other is not value and other.type == value.type:
            residual, value = other, ops.pop(0).results[0]
    while ops and (bounds := _clamp_range(ops[0])) is not None and _only_use(value, ops[0]):
        lo, hi, value = max(lo, bounds[0]), min(hi, bounds[1]), ops.pop(0).results[0]
    if ops and isinstance(ops[0].kind, Hardswish) and _only_use(value, ops[0]):
        act, value = True, ops.pop(0).results[0]
    if ops or tuple(yields) != (value,) or lo > hi:
        return None
    return FusedEpilogue(residual, lo, hi, act)

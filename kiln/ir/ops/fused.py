"""Fused groups: one op whose region holds the ops it stands for.

Fusion (`passes/fuse.py`) moves a convex group of ops into the region of one `kiln.fused` op;
operands become block arguments (the region is isolated from above), and the group's escaping
values are yielded. The interpreter runs the region, so a fused op interprets exactly like its
body; codegen emits one kernel per fused op.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from kiln.ir.ops.base import OpDef, fail, register_op
from kiln.ir.types import TensorType

FUSION_KINDS = ("epilogue", "elementwise", "reduction")
"""epilogue: a conv/linear/matmul anchor with its epilogue; elementwise: a broadcast chain;
reduction: a reduction with its elementwise producers (softmax, layer norm)."""


@register_op
@dataclass(frozen=True)
class Fused(OpDef):
    """A group of ops executed as one kernel; its region holds the original ops."""

    NAME = "kiln.fused"
    OPERANDS = ("inputs*",)
    NUM_RESULTS = None
    HAS_REGION = True
    ISOLATED_FROM_ABOVE = True
    kind: str = "elementwise"
    pattern: str = ""
    """The ops of the group in order, e.g. `conv2d+add+relu` (for readers and target tables)."""

    def infer_type(self, operands: Sequence[TensorType]) -> tuple[TensorType, ...]:
        raise NotImplementedError("a fused op's result types are its region's yield types")

    def verify(self, operands: Sequence[TensorType]) -> None:
        if self.kind not in FUSION_KINDS:
            raise fail(f"kind must be one of {', '.join(FUSION_KINDS)}, not '{self.kind}'")

"""Core ops: weights, constants, casts, function return and region yield."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from kiln.ir.ops.attrs import Dense
from kiln.ir.ops.base import OpDef, fail, register_op
from kiln.ir.types import F32, DType, FixedType, QuantType, ScalarType, TensorType


@register_op
@dataclass(frozen=True)
class Weight(OpDef):
    """A named parameter tensor stored beside the IR (`.npz`), referenced by symbol."""

    NAME = "kiln.weight"
    OPERANDS = ()
    name: str = ""
    type: TensorType = TensorType((), F32)

    def infer_type(self, operands: Sequence[TensorType]) -> tuple[TensorType, ...]:
        if not self.name:
            raise fail("needs a weight name")
        return (self.type,)


@register_op
@dataclass(frozen=True)
class Constant(OpDef):
    """A small tensor literal held inline in the IR."""

    NAME = "kiln.constant"
    OPERANDS = ()
    value: Dense = Dense.of(np.zeros((), np.float32))

    def infer_type(self, operands: Sequence[TensorType]) -> tuple[TensorType, ...]:
        return (self.value.type,)

    def reference(self, *args: np.ndarray) -> tuple[np.ndarray, ...]:
        return (self.value.array.copy(),)


@register_op
@dataclass(frozen=True)
class Return(OpDef):
    """Ends a function; its operands are the function's outputs."""

    NAME = "kiln.return"
    OPERANDS = ("values*",)
    NUM_RESULTS = 0
    SIDE_EFFECTS = True

    def infer_type(self, operands: Sequence[TensorType]) -> tuple[TensorType, ...]:
        return ()


@register_op
@dataclass(frozen=True)
class Yield(OpDef):
    """Ends a region (a fused group's body); its operands are the enclosing op's results."""

    NAME = "kiln.yield"
    OPERANDS = ("values*",)
    NUM_RESULTS = 0
    SIDE_EFFECTS = True

    def infer_type(self, operands: Sequence[TensorType]) -> tuple[TensorType, ...]:
        return ()


def _round_bf16(x: np.ndarray) -> np.ndarray:
    """Round float32 to bfloat16 precision (round to nearest even), kept in float32 storage."""
    bits = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    rounding = ((bits >> 16) & 1) + np.uint32(0x7FFF)
    out = ((bits + rounding) & np.uint32(0xFFFF0000)).view(np.float32)
    return np.where(np.isnan(x), x, out).astype(np.float32)


@register_op
@dataclass(frozen=True)
class Cast(OpDef):
    """Converts element type between plain scalar types (C-style: truncation toward zero)."""

    NAME = "kiln.cast"
    OPERANDS = ("input",)
    to: DType = F32

    def infer_type(self, operands: Sequence[TensorType]) -> tuple[TensorType, ...]:
        (x,) = operands
        if isinstance(self.to, (FixedType, QuantType)) or isinstance(x.dtype, (FixedType,
                                                                               QuantType)):
            raise fail("casts to and from fixed/quantized types use kiln.quantize/dequantize")
        return (TensorType(x.shape, self.to),)

    def reference(self, *args: np.ndarray) -> tuple[np.ndarray, ...]:
        (x,) = args
        assert isinstance(self.to, ScalarType)
        if self.to.name == "bf16":
            return (_round_bf16(x.astype(np.float32)),)
        if self.to.is_integer and np.issubdtype(x.dtype, np.floating):
            info = np.iinfo(self.to.numpy)
            x = np.clip(np.trunc(np.nan_to_num(x)), info.min, info.max)
        return (x.astype(self.to.numpy),)

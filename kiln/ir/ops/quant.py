"""Quantization ops: float ↔ affine-quantized (`q<>`) and fixed-point (`fixed<>`) tensors.

The arithmetic lives in `kiln.ir.fixed` (bit-exact NumPy shared with passes and codegen); these
ops check types and dispatch. Dequantize and requantize read their input's type (its scale,
zero point or fixed format), so their semantics are in `reference_typed`; plain `reference`,
which sees arrays only, raises.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from kiln.ir import fixed
from kiln.ir.ops.base import OpDef, fail, register_op
from kiln.ir.ops.core import Cast
from kiln.ir.types import BF16, F32, F64, DType, FixedType, QuantType, ScalarType, TensorType


def _check_target(t: DType, shape: tuple[int, ...], role: str) -> None:
    """Per-channel parameters must match the tensor; ap_ufixed has no wrap_sm."""
    if isinstance(t, QuantType) and t.axis is not None:
        if not 0 <= t.axis < len(shape):
            raise fail(f"{role} type {t} has axis {t.axis}, out of range for a tensor of rank "
                       f"{len(shape)}")
        if len(t.scale) != shape[t.axis]:
            raise fail(f"{role} type {t} has {len(t.scale)} scales, but dimension {t.axis} of "
                       f"the tensor has size {shape[t.axis]}")
    if isinstance(t, FixedType) and not t.signed and t.saturation == "wrap_sm":
        raise fail(f"{role} type {t}: wrap_sm needs a signed fixed-point type (as ap_ufixed)")


def _to_float(values: np.ndarray, to: ScalarType) -> np.ndarray:
    """float32/float64 values → `to` (f16 and bf16 round once more, from float32)."""
    if to == BF16:
        return Cast(to=BF16).reference(values.astype(np.float32))[0]
    return values.astype(to.numpy)


@register_op
@dataclass(frozen=True)
class Quantize(OpDef):
    """Converts floats to affine-quantized integers or fixed-point raw values (bit-exact)."""

    NAME = "kiln.quantize"
    OPERANDS = ("input",)
    to: DType
    scheme: str = "div"
    """Affine arithmetic (`kiln.ir.fixed.AFFINE_SCHEMES`): `div` as ONNX, `mul_add` and `fma`
    as torch's per-channel and 8-bit per-tensor kernels. Only `div` applies to fixed point."""

    def verify(self, operands: Sequence[TensorType]) -> None:
        if self.scheme not in fixed.AFFINE_SCHEMES:
            raise fail(f"unknown scheme '{self.scheme}'; use one of "
                       f"{', '.join(fixed.AFFINE_SCHEMES)}")
        if isinstance(self.to, FixedType) and self.scheme != "div":
            raise fail(f"scheme '{self.scheme}' applies to q<> types only; fixed point rounds "
                       "by its own mode")

    def infer_type(self, operands: Sequence[TensorType]) -> tuple[TensorType, ...]:
        (x,) = operands
        if not x.dtype.is_float:
            raise fail(f"needs a floating-point input, got {x.dtype}")
        if not isinstance(self.to, (QuantType, FixedType)):
            raise fail(f"quantizes to a q<...> or fixed<...> type, not {self.to} "
                       "(kiln.cast converts between plain types)")
        _check_target(self.to, x.shape, "result")
        self.verify(operands)
        return (TensorType(x.shape, self.to),)

    def reference(self, *args: np.ndarray) -> tuple[np.ndarray, ...]:
        (x,) = args
        if isinstance(self.to, QuantType):
            return (fixed.quantize_affine(x, self.to, scheme=self.scheme),)
        if isinstance(self.to, FixedType):
            return (fixed.quantize_fixed(x, self.to),)
        raise fail(f"cannot quantize to {self.to}")


@register_op
@dataclass(frozen=True)
class Dequantize(OpDef):
    """Converts affine-quantized or fixed-point values to floats."""

    NAME = "kiln.dequantize"
    OPERANDS = ("input",)
    to: DType = F32

    def infer_type(self, operands: Sequence[TensorType]) -> tuple[TensorType, ...]:
        (x,) = operands
        if not isinstance(x.dtype, (QuantType, FixedType)):
            raise fail(f"needs a q<...> or fixed<...> input, got {x.dtype}")
        if not (isinstance(self.to, ScalarType) and self.to.is_float):
            raise fail(f"dequantizes to a floating-point type, not {self.to}")
        _check_target(x.dtype, x.shape, "input")
        return (TensorType(x.shape, self.to),)

    def reference(self, *args: np.ndarray) -> tuple[np.ndarray, ...]:
        raise fail("needs its input's type: call reference_typed")

    def reference_typed(self, operands: Sequence[TensorType],
                        *args: np.ndarray) -> tuple[np.ndarray, ...]:
        (x,) = args
        src = operands[0].dtype
        assert isinstance(self.to, ScalarType)
        wide = np.float64 if self.to == F64 else np.float32
        if isinstance(src, QuantType):
            return (_to_float(fixed.dequantize_affine(x, src, wide), self.to),)
        if isinstance(src, FixedType):
            return (_to_float(fixed.fixed_to_float(x, src, wide), self.to),)
        raise fail(f"cannot dequantize {src}")


@register_op
@dataclass(frozen=True)
class Requantize(OpDef):
    """Converts between fixed-point formats or between affine-quantized types, exactly."""

    NAME = "kiln.requantize"
    OPERANDS = ("input",)
    to: DType

    def infer_type(self, operands: Sequence[TensorType]) -> tuple[TensorType, ...]:
        (x,) = operands
        both_fixed = isinstance(x.dtype, FixedType) and isinstance(self.to, FixedType)
        both_quant = isinstance(x.dtype, QuantType) and isinstance(self.to, QuantType)
        if not (both_fixed or both_quant):
            raise fail(f"converts fixed<> to fixed<> or q<> to q<>, not {x.dtype} to {self.to} "
                       "(use kiln.dequantize, then kiln.quantize)")
        _check_target(x.dtype, x.shape, "input")
        _check_target(self.to, x.shape, "result")
        return (TensorType(x.shape, self.to),)

    def reference(self, *args: np.ndarray) -> tuple[np.ndarray, ...]:
        raise fail("needs its input's type: call reference_typed")

    def reference_typed(self, operands: Sequence[TensorType],
                        *args: np.ndarray) -> tuple[np.ndarray, ...]:
        (x,) = args
        src = operands[0].dtype
        if isinstance(src, FixedType) and isinstance(self.to, FixedType):
            return (fixed.requantize_fixed(x, src, self.to),)
        if isinstance(src, QuantType) and isinstance(self.to, QuantType):
            return (fixed.requantize_affine(x, src, self.to),)
        raise fail(f"cannot requantize {src} to {self.to}")


"""Reductions over listed axes: reduce_mean, reduce_sum, reduce_max, reduce_min.

`axes` lists normalized axes explicitly (at least one; the frontends turn "all dims" into the
full list). Float sums and means accumulate in float64 and round once; integer sums accumulate
in int64 and wrap to the operand dtype; integer means truncate toward zero (like `kiln.div`).

Fixed point (`fixed<W,I>`): `reduce_sum` gives the exact sum type (`kiln.ir.fixed_arith`:
ceil(log2 count) more integer bits), `reduce_mean` keeps the type and rounds the exact quotient
with its rounding mode, `reduce_max`/`reduce_min` keep the type.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from kiln.ir import fixed_arith
from kiln.ir.ops import rules
from kiln.ir.ops.base import OpDef, fail, register_op
from kiln.ir.types import DType, FixedType, TensorType


@dataclass(frozen=True)
class ReduceBase(OpDef):
    """Base of the reductions; subclasses give `NUMERIC` and `combine`."""

    OPERANDS = ("input",)
    NUMERIC: ClassVar[bool] = True
    """False when the reduction also works on bool (max, min)."""
    axes: tuple[int, ...]
    keepdims: bool = False

    def infer_type(self, operands: Sequence[TensorType]) -> tuple[TensorType, ...]:
        (x,) = operands
        if not self.axes:
            raise fail("axes must name at least one axis")
        rules.check_axes("axes", self.axes, x.rank)
        fixed = isinstance(x.dtype, FixedType)
        if self.NUMERIC and not (x.dtype.is_float or x.dtype.is_integer or fixed):
            raise fail(f"needs a numeric input, got {x.dtype}")
        if any(x.shape[a] == 0 for a in self.axes):
            raise fail(f"cannot reduce over an empty axis of {list(x.shape)}")
        if self.keepdims:
            shape = tuple(1 if i in self.axes else d for i, d in enumerate(x.shape))
        else:
            shape = tuple(d for i, d in enumerate(x.shape) if i not in self.axes)
        count = rules.numel([x.shape[a] for a in self.axes])
        return (TensorType(shape, self.result_dtype(x.dtype, count)),)

    def result_dtype(self, dtype: DType, count: int) -> DType:
        """The element type of the result (fixed-point sums grow; the rest keep the type)."""
        if isinstance(dtype, FixedType) and self.NUMERIC:
            fixed_arith.check_sum_fits(dtype, count)
        return dtype

    def combine(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def reference(self, *args: np.ndarray) -> tuple[np.ndarray, ...]:
        (x,) = args
        return (np.asarray(self.combine(x)).astype(x.dtype, copy=False),)


def _wide(dtype: np.dtype) -> type[np.generic]:
    return np.float64 if np.issubdtype(dtype, np.floating) else np.int64


@register_op
@dataclass(frozen=True)
class ReduceSum(ReduceBase):
    """Sum over `axes`."""

    NAME = "kiln.reduce_sum"

    def result_dtype(self, dtype: DType, count: int) -> DType:
        if isinstance(dtype, FixedType):
            return fixed_arith.sum_type(dtype, count)
        return dtype

    def combine(self, x: np.ndarray) -> np.ndarray:
        return x.sum(axis=self.axes, keepdims=self.keepdims, dtype=_wide(x.dtype))


@register_op
@dataclass(frozen=True)
class ReduceMean(ReduceBase):
    """Arithmetic mean over `axes` (integers truncate toward zero)."""

    NAME = "kiln.reduce_mean"

    def combine(self, x: np.ndarray) -> np.ndarray:
        total = x.sum(axis=self.axes, keepdims=self.keepdims, dtype=_wide(x.dtype))
        count = rules.numel([x.shape[a] for a in self.axes])
        if np.issubdtype(x.dtype, np.integer):
            return np.sign(total) * (np.abs(total) // count)
        return total / count

    def reference_typed(self, operands: Sequence[TensorType],
                        *args: np.ndarray) -> tuple[np.ndarray, ...]:
        """Fixed point: the exact int64 sum, divided with the type's rounding mode."""
        t = operands[0].dtype
        if not isinstance(t, FixedType):
            return self.reference(*args)
        total = np.asarray(args[0], np.int64).sum(axis=self.axes, keepdims=self.keepdims)
        count = rules.numel([args[0].shape[a] for a in self.axes])
        return (fixed_arith.divide_round(total, count, t.rounding),)


@register_op
@dataclass(frozen=True)
class ReduceMax(ReduceBase):
    """Maximum over `axes` (NaN wins)."""

    NAME = "kiln.reduce_max"
    NUMERIC = False

    def combine(self, x: np.ndarray) -> np.ndarray:
        return x.max(axis=self.axes, keepdims=self.keepdims)


@register_op
@dataclass(frozen=True)
class ReduceMin(ReduceBase):
    """Minimum over `axes` (NaN wins)."""

    NAME = "kiln.reduce_min"
    NUMERIC = False

    def combine(self, x: np.ndarray) -> np.ndarray:
        return x.min(axis=self.axes, keepdims=self.keepdims)

"""Reductions over listed axes: reduce_mean, reduce_sum, reduce_max, reduce_min.

`axes` lists normalized axes explicitly (at least one; the frontends turn "all dims" into the
full list). Float sums and means accumulate in float64 and round once; integer sums accumulate
in int64 and wrap to the operand dtype; integer means truncate toward zero (like `kiln.div`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from kiln.ir.ops import rules
from kiln.ir.ops.base import OpDef, fail, register_op
from kiln.ir.types import TensorType


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
        if self.NUMERIC and not (x.dtype.is_float or x.dtype.is_integer):
            raise fail(f"needs a numeric input, got {x.dtype}")
        if any(x.shape[a] == 0 for a in self.axes):
            raise fail(f"cannot reduce over an empty axis of {list(x.shape)}")
        if self.keepdims:
            shape = tuple(1 if i in self.axes else d for i, d in enumerate(x.shape))
        else:
            shape = tuple(d for i, d in enumerate(x.shape) if i not in self.axes)
        return (TensorType(shape, x.dtype),)

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

"""Integer averages of quantized tensors: qavg_pool1d/qavg_pool2d and qreduce_mean.

The result has the input's q<> type (same scale and zero point), so no multiplier is needed:

    y = rdiv(Σ_window (x - zp), count) + zp,   clamped to the storage range

with `rdiv` = `kiln.ir.requant.rounding_divide` (round half away from zero, TFLite's average).
Padded positions count as real zeros (stored zp) exactly where the float pools count them, so
the window and divisor rules are those of `kiln.avg_pool*` (PyTorch's). Max pooling, relu
(`kiln.clamp` on stored integers), reshape and the other shape ops need no integer twin: they
are dtype-generic and keep the q<> type.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from kiln.ir import requant
from kiln.ir.ops import rules
from kiln.ir.ops.base import fail, register_op
from kiln.ir.ops.nn_pool import _AvgPool
from kiln.ir.ops.qnn import quant_of
from kiln.ir.ops.reduce import ReduceBase
from kiln.ir.types import QuantType, TensorType


def _average(total: np.ndarray, count: np.ndarray | np.integer, q: QuantType) -> np.ndarray:
    info = np.iinfo(q.storage.numpy)
    y = requant.rounding_divide(total, count) + q.zero_point[0]
    return np.clip(y, info.min, info.max).astype(q.storage.numpy)


@dataclass(frozen=True)
class _QAvgPool(_AvgPool):
    """Base of the integer average pools (window attributes as `kiln.avg_pool*`)."""

    def infer_type(self, operands: Sequence[TensorType]) -> tuple[TensorType, ...]:
        quant_of(operands[0], "input")
        return super().infer_type(operands)

    def reference(self, *args: np.ndarray) -> tuple[np.ndarray, ...]:
        raise fail("needs its input's type (zero point): call reference_typed")

    def reference_typed(self, operands: Sequence[TensorType],
                        *args: np.ndarray) -> tuple[np.ndarray, ...]:
        (x,) = args
        q = operands[0].dtype
        assert isinstance(q, QuantType)
        # the float pool's window sums, on (x - zero point) so padding adds real zeros
        total, count = self.sums(x.astype(np.int64) - q.zero_point[0], np.dtype(np.int64))
        return (_average(total, count, q),)


@register_op
@dataclass(frozen=True)
class QAvgPool1d(_QAvgPool):
    """Integer 1-D average pooling of a quantized tensor (rounding division, same type)."""

    NAME = "kiln.qavg_pool1d"
    SPATIAL = 1
    padding: tuple[int, ...] = (0, 0)


@register_op
@dataclass(frozen=True)
class QAvgPool2d(_QAvgPool):
    """Integer 2-D average pooling of a quantized tensor (rounding division, same type)."""

    NAME = "kiln.qavg_pool2d"
    SPATIAL = 2
    padding: tuple[int, ...] = (0, 0, 0, 0)


@register_op
@dataclass(frozen=True)
class QReduceMean(ReduceBase):
    """Integer mean of a quantized tensor over `axes` (rounding division, same type)."""

    NAME = "kiln.qreduce_mean"

    def infer_type(self, operands: Sequence[TensorType]) -> tuple[TensorType, ...]:
        quant_of(operands[0], "input")
        return super().infer_type(operands)

    def reference(self, *args: np.ndarray) -> tuple[np.ndarray, ...]:
        raise fail("needs its input's type (zero point): call reference_typed")

    def reference_typed(self, operands: Sequence[TensorType],
                        *args: np.ndarray) -> tuple[np.ndarray, ...]:
        (x,) = args
        q = operands[0].dtype
        assert isinstance(q, QuantType)
        rules.check_axes("axes", self.axes, x.ndim)
        raw = x.astype(np.int64) - q.zero_point[0]
        total = raw.sum(axis=self.axes, keepdims=self.keepdims, dtype=np.int64)
        count = np.int64(rules.numel([x.shape[a] for a in self.axes]))
        return (_average(total, count, q),)

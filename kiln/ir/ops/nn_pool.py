"""Pooling: max_pool1d/2d, avg_pool1d/2d, adaptive_avg_pool1d/2d (PyTorch semantics).

Windowed pools take ONNX-order paddings (begins, then ends; they may differ) and PyTorch's
ceil_mode rule (the last window starts inside the input or the left padding). Average pooling
divides as PyTorch does: with `count_include_pad` a window counts its padded positions but not
the part that hangs past the right padding in ceil mode; without it, only input positions.
Integer averages truncate toward zero (like `kiln.div`).

Fixed-point inputs (`fixed<W,I>`) keep their type: max pools compare raws, average pools sum
the raws exactly in int64 and round the quotient with the type's rounding mode
(`kiln.ir.fixed_arith.divide_round`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from kiln.ir import fixed_arith
from kiln.ir.ops import rules
from kiln.ir.ops.base import OpDef, fail, register_op
from kiln.ir.types import FixedType, TensorType


def _divide(total: np.ndarray, count: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """total / count in `dtype`; integer results truncate toward zero."""
    if np.issubdtype(dtype, np.integer):
        return np.fix(total / count).astype(dtype)
    return (total / count).astype(dtype)


def _accumulator(dtype: np.dtype) -> np.dtype:
    """Sums of integers run in float64 (exact below 2**53), of f16 in f32."""
    if np.issubdtype(dtype, np.integer):
        return np.dtype(np.float64)
    return np.promote_types(dtype, np.float32)


@dataclass(frozen=True)
class PoolBase(OpDef):
    """Base of the pools: an (N, C, *spatial) input and, for windowed pools, the window rule."""

    OPERANDS = ("input",)
    SPATIAL: ClassVar[int] = 2

    def _input(self, operands: Sequence[TensorType]) -> TensorType:
        self.verify(operands)
        (x,) = operands
        if x.rank != self.SPATIAL + 2:
            raise fail(f"input must have rank {self.SPATIAL + 2} (N, C, spatial...), got {x}")
        return x

    def _window_verify(self, kernel: tuple[int, ...], stride: tuple[int, ...],
                       padding: tuple[int, ...], dilation: tuple[int, ...]) -> None:
        nd = self.SPATIAL
        rules.check_ints("kernel", kernel, nd, minimum=1)
        rules.check_ints("stride", stride, nd, minimum=1)
        rules.check_ints("padding", padding, 2 * nd, minimum=0)
        rules.check_ints("dilation", dilation, nd, minimum=1)
        for i in range(nd):
            span = dilation[i] * (kernel[i] - 1) + 1
            if max(padding[i], padding[nd + i]) >= span:
                raise fail(f"padding {list(padding)} must be smaller than the window "
                           f"{list(kernel)} (dilation {list(dilation)}) on every side")

    def _window_shape(self, x: TensorType, kernel: tuple[int, ...], stride: tuple[int, ...],
                      padding: tuple[int, ...], dilation: tuple[int, ...],
                      ceil_mode: bool) -> tuple[int, ...]:
        nd = self.SPATIAL
        out = tuple(rules.window_out(x.shape[2 + i], kernel[i], stride[i],
                                     (padding[i], padding[nd + i]), dilation[i], ceil_mode)
                    for i in range(nd))
        if any(o < 1 for o in out):
            raise fail(f"input spatial size {list(x.shape[2:])} is smaller than the window "
                       f"{list(kernel)} with padding {list(padding)}")
        return out

    def _windows(self, x: np.ndarray, kernel: tuple[int, ...], stride: tuple[int, ...],
                 padding: tuple[int, ...], dilation: tuple[int, ...], out: tuple[int, ...],
                 fill: np.generic) -> np.ndarray:
        """A view (N, C, *out, *kernel) of the padded input's windows."""
        nd = self.SPATIAL
        span = [d * (k - 1) + 1 for d, k in zip(dilation, kernel)]
        used = [(o - 1) * s + sp for o, s, sp in zip(out, stride, span)]
        ends = [u - padding[i] - x.shape[2 + i] for i, u in enumerate(used)]
        xp = rules.pad_or_crop(x, padding[:nd], ends, fill)
        win = sliding_window_view(xp, span, axis=tuple(range(2, 2 + nd)))
        return win[(slice(None), slice(None), *(slice(None, None, s) for s in stride),
                    *(slice(None, None, d) for d in dilation))]


def _avg_counts(size: int, kernel: int, stride: int, pads: tuple[int, int], out: int,
                include_pad: bool) -> np.ndarray:
    """Per-output divisor along one axis, PyTorch's `avg_pool` rule."""
    starts = np.arange(out) * stride - pads[0]
    ends = np.minimum(starts + kernel, size + pads[1])
    if not include_pad:
        starts, ends = np.maximum(starts, 0), np.minimum(ends, size)
    return ends - starts


def _fixed_mean(pool: _AvgPool | _AdaptiveAvgPool, operands: Sequence[TensorType],
                args: Sequence[np.ndarray]) -> tuple[np.ndarray, ...]:
    """Average pools on fixed point: exact int64 window sums, quotient rounded by the type."""
    t = operands[0].dtype
    if not isinstance(t, FixedType):
        return pool.reference(*args)
    total, count = pool.sums(np.asarray(args[0], np.int64), np.dtype(np.int64))
    return (fixed_arith.divide_round(total, count, t.rounding),)


def _check_window_sum(x: TensorType, window: int) -> None:
    if isinstance(x.dtype, FixedType):
        fixed_arith.check_sum_fits(x.dtype, window)


@dataclass(frozen=True)
class _MaxPool(PoolBase):
    kernel: tuple[int, ...]
    stride: tuple[int, ...]
    padding: tuple[int, ...]
    dilation: tuple[int, ...]
    ceil_mode: bool = False

    def verify(self, operands: Sequence[TensorType]) -> None:
        self._window_verify(self.kernel, self.stride, self.padding, self.dilation)

    def infer_type(self, operands: Sequence[TensorType]) -> tuple[TensorType, ...]:
        x = self._input(operands)
        out = self._window_shape(x, self.kernel, self.stride, self.padding, self.dilation,
                                 self.ceil_mode)
        return (TensorType((*x.shape[:2], *out), x.dtype),)

    def reference(self, *args: np.ndarray) -> tuple[np.ndarray, ...]:
        (x,) = args
        out = self._window_shape(TensorType(x.shape), self.kernel, self.stride, self.padding,
                                 self.dilation, self.ceil_mode)
        win = self._windows(x, self.kernel, self.stride, self.padding, self.dilation, out,
                            rules.fill_value(x.dtype, lowest=True))
        return (win.max(axis=tuple(range(-self.SPATIAL, 0))),)


@register_op
@dataclass(frozen=True)
class MaxPool1d(_MaxPool):
    """1-D max pooling over NCW (pads with -inf), PyTorch's ceil_mode rule."""

    NAME = "kiln.max_pool1d"
    SPATIAL = 1
    padding: tuple[int, ...] = (0, 0)
    dilation: tuple[int, ...] = (1,)


@register_op
@dataclass(frozen=True)
class MaxPool2d(_MaxPool):
    """2-D max pooling over NCHW (pads with -inf), PyTorch's ceil_mode rule."""

    NAME = "kiln.max_pool2d"
    SPATIAL = 2
    padding: tuple[int, ...] = (0, 0, 0, 0)
    dilation: tuple[int, ...] = (1, 1)


@dataclass(frozen=True)
class _AvgPool(PoolBase):
    kernel: tuple[int, ...]
    stride: tuple[int, ...]
    padding: tuple[int, ...]
    ceil_mode: bool = False
    count_include_pad: bool = True

    def verify(self, operands: Sequence[TensorType]) -> None:
        self._window_verify(self.kernel, self.stride, self.padding, (1,) * self.SPATIAL)

    def infer_type(self, operands: Sequence[TensorType]) -> tuple[TensorType, ...]:
        x = self._input(operands)
        out = self._window_shape(x, self.kernel, self.stride, self.padding,
                                 (1,) * self.SPATIAL, self.ceil_mode)
        _check_window_sum(x, rules.numel(self.kernel))
        return (TensorType((*x.shape[:2], *out), x.dtype),)

    def sums(self, x: np.ndarray, acc: np.dtype) -> tuple[np.ndarray, np.ndarray]:
        """Window sums (in `acc`) and the per-output divisors."""
        nd = self.SPATIAL
        ones = (1,) * nd
        out = self._window_shape(TensorType(x.shape), self.kernel, self.stride, self.padding,
                                 ones, self.ceil_mode)
        win = self._windows(x, self.kernel, self.stride, self.padding, ones, out,
                            rules.fill_value(x.dtype, lowest=False))
        total = win.sum(axis=tuple(range(-nd, 0)), dtype=acc)
        count = np.ones((), np.int64)
        for i in range(nd):
            per_axis = _avg_counts(x.shape[2 + i], self.kernel[i], self.stride[i],
                                   (self.padding[i], self.padding[nd + i]), out[i],
                                   self.count_include_pad)
            count = np.multiply.outer(count, per_axis)
        return total, count

    def reference(self, *args: np.ndarray) -> tuple[np.ndarray, ...]:
        (x,) = args
        total, count = self.sums(x, _accumulator(x.dtype))
        return (_divide(total, count, x.dtype),)

    def reference_typed(self, operands: Sequence[TensorType],
                        *args: np.ndarray) -> tuple[np.ndarray, ...]:
        return _fixed_mean(self, operands, args)


@register_op
@dataclass(frozen=True)
class AvgPool1d(_AvgPool):
    """1-D average pooling over NCW, PyTorch's ceil_mode and count_include_pad rules."""

    NAME = "kiln.avg_pool1d"
    SPATIAL = 1
    padding: tuple[int, ...] = (0, 0)


@register_op
@dataclass(frozen=True)
class AvgPool2d(_AvgPool):
    """2-D average pooling over NCHW, PyTorch's ceil_mode and count_include_pad rules."""

    NAME = "kiln.avg_pool2d"
    SPATIAL = 2
    padding: tuple[int, ...] = (0, 0, 0, 0)


def _adaptive_bins(size: int, out: int) -> list[tuple[int, int]]:
    """PyTorch's adaptive bins: [floor(i*size/out), ceil((i+1)*size/out))."""
    return [(i * size // out, -(-(i + 1) * size // out)) for i in range(out)]


@dataclass(frozen=True)
class _AdaptiveAvgPool(PoolBase):
    output_size: tuple[int, ...]

    def verify(self, operands: Sequence[TensorType]) -> None:
        rules.check_ints("output_size", self.output_size, self.SPATIAL, minimum=1)

    def infer_type(self, operands: Sequence[TensorType]) -> tuple[TensorType, ...]:
        x = self._input(operands)
        if any(s < 1 for s in x.shape[2:]):
            raise fail(f"input spatial size {list(x.shape[2:])} is empty")
        largest = rules.numel([-(-size // out) + 1 for size, out in
                               zip(x.shape[2:], self.output_size)])
        _check_window_sum(x, largest)
        return (TensorType((*x.shape[:2], *self.output_size), x.dtype),)

    def sums(self, x: np.ndarray, acc: np.dtype) -> tuple[np.ndarray, np.ndarray]:
        """Separable: sum each axis's bins in turn (in `acc`); also the bin areas."""
        total = x.astype(acc, copy=False)
        count = np.ones((), np.int64)
        for i, out in enumerate(self.output_size):
            axis = 2 + i
            bins = _adaptive_bins(x.shape[axis], out)
            total = np.stack([total[(slice(None),) * axis + (slice(lo, hi),)].sum(axis=axis)
                              for lo, hi in bins], axis=axis)
            count = np.multiply.outer(count, np.array([hi - lo for lo, hi in bins]))
        return total, count

    def reference(self, *args: np.ndarray) -> tuple[np.ndarray, ...]:
        """Separable: sum each axis's bins in turn, then divide by the bin areas."""
        (x,) = args
        total, count = self.sums(x, _accumulator(x.dtype))
        return (_divide(total, count, x.dtype),)

    def reference_typed(self, operands: Sequence[TensorType],
                        *args: np.ndarray) -> tuple[np.ndarray, ...]:
        return _fixed_mean(self, operands, args)


@register_op
@dataclass(frozen=True)
class AdaptiveAvgPool1d(_AdaptiveAvgPool):
    """1-D average pooling to a fixed output length (PyTorch's bin rule)."""

    NAME = "kiln.adaptive_avg_pool1d"
    SPATIAL = 1
    output_size: tuple[int, ...] = (1,)


@register_op
@dataclass(frozen=True)
class AdaptiveAvgPool2d(_AdaptiveAvgPool):
    """2-D average pooling to a fixed output size; (1, 1) is global average pooling."""

    NAME = "kiln.adaptive_avg_pool2d"
    SPATIAL = 2
    output_size: tuple[int, ...] = (1, 1)

"""Normalizations: batch_norm (inference), layer_norm, softmax, log_softmax, local_response_norm.

The references compute in float64 and round once to the operand dtype, so they are stable
(softmax subtracts the maximum) and agree with PyTorch's float32 kernels to a few ulps.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from kiln.ir.ops import rules
from kiln.ir.ops.base import OpDef, fail, register_op
from kiln.ir.types import TensorType


def _check_eps(eps: float) -> None:
    if not (eps > 0 and math.isfinite(eps)):
        raise fail(f"eps must be positive and finite, got {eps}")


@register_op
@dataclass(frozen=True)
class BatchNorm(OpDef):
    """Inference batch norm over channel axis 1: (x - mean) / sqrt(var + eps) * scale + bias."""

    NAME = "kiln.batch_norm"
    OPERANDS = ("input", "scale", "bias", "mean", "var")
    eps: float = 1e-5

    def verify(self, operands: Sequence[TensorType]) -> None:
        _check_eps(self.eps)

    def infer_type(self, operands: Sequence[TensorType]) -> tuple[TensorType, ...]:
        self.verify(operands)
        x = operands[0]
        rules.need_float(x)
        rules.same_dtype("input and parameter", operands)
        if x.rank < 2:
            raise fail(f"input must have rank >= 2 (N, C, ...), got {x}")
        for name, t in zip(self.OPERANDS[1:], operands[1:]):
            if t.shape != (x.shape[1],):
                raise fail(f"{name} has shape {list(t.shape)}, expected [{x.shape[1]}] "
                           "(one per channel)")
        return (TensorType(x.shape, x.dtype),)

    def reference(self, *args: np.ndarray) -> tuple[np.ndarray, ...]:
        x, scale, bias, mean, var = (a.astype(np.float64) for a in args)
        inv = scale / np.sqrt(var + self.eps)
        shape = (1, -1) + (1,) * (x.ndim - 2)
        y = x * inv.reshape(shape) + (bias - mean * inv).reshape(shape)
        return (y.astype(args[0].dtype),)


@register_op
@dataclass(frozen=True)
class LayerNorm(OpDef):
    """Normalizes over the last `normalized_ndim` dims, then scales by weight and adds bias."""

    NAME = "kiln.layer_norm"
    OPERANDS = ("input", "weight?", "bias?")
    normalized_ndim: int = 1
    eps: float = 1e-5

    def verify(self, operands: Sequence[TensorType]) -> None:
        _check_eps(self.eps)
        if self.normalized_ndim < 1:
            raise fail(f"normalized_ndim must be >= 1, got {self.normalized_ndim}")

    def infer_type(self, operands: Sequence[TensorType]) -> tuple[TensorType, ...]:
        self.verify(operands)
        x = operands[0]
        rules.need_float(x)
        rules.same_dtype("input, weight and bias", operands)
        if self.normalized_ndim > x.rank:
            raise fail(f"normalized_ndim {self.normalized_ndim} exceeds the input rank "
                       f"{x.rank}")
        inner = x.shape[x.rank - self.normalized_ndim:]
        for name, t in zip(("weight", "bias"), operands[1:]):
            if t.shape != inner:
                raise fail(f"{name} has shape {list(t.shape)}, expected {list(inner)}")
        return (TensorType(x.shape, x.dtype),)

    def reference(self, *args: np.ndarray) -> tuple[np.ndarray, ...]:
        x = args[0].astype(np.float64)
        axes = tuple(range(x.ndim - self.normalized_ndim, x.ndim))
        centered = x - x.mean(axis=axes, keepdims=True)
        var = np.square(centered).mean(axis=axes, keepdims=True)
        y = centered / np.sqrt(var + self.eps)
        if len(args) > 1:
            y = y * args[1]
        if len(args) > 2:
            y = y + args[2]
        return (y.astype(args[0].dtype),)


@dataclass(frozen=True)
class _SoftmaxBase(OpDef):
    OPERANDS = ("input",)
    LOG: ClassVar[bool] = False
    axis: int = -1

    def infer_type(self, operands: Sequence[TensorType]) -> tuple[TensorType, ...]:
        (x,) = operands
        rules.need_float(x)
        rules.last_axis("axis", self.axis, x.rank)
        return (TensorType(x.shape, x.dtype),)

    def reference(self, *args: np.ndarray) -> tuple[np.ndarray, ...]:
        (x,) = args
        axis = rules.last_axis("axis", self.axis, x.ndim)
        shifted = x.astype(np.float64) - x.max(axis=axis, keepdims=True)
        with np.errstate(all="ignore"):
            total = np.exp(shifted).sum(axis=axis, keepdims=True)
            y = shifted - np.log(total) if self.LOG else np.exp(shifted) / total
        return (y.astype(x.dtype),)


@register_op
@dataclass(frozen=True)
class Softmax(_SoftmaxBase):
    """exp(x) / sum(exp(x)) along `axis` (-1: the last), computed stably."""

    NAME = "kiln.softmax"


@register_op
@dataclass(frozen=True)
class LogSoftmax(_SoftmaxBase):
    """x - log(sum(exp(x))) along `axis` (-1: the last), computed stably."""

    NAME = "kiln.log_softmax"
    LOG = True


@register_op
@dataclass(frozen=True)
class LocalResponseNorm(OpDef):
    """x / (k + alpha * mean of x² over `size` neighbouring channels) ** beta (torch's window)."""

    NAME = "kiln.local_response_norm"
    OPERANDS = ("input",)
    size: int
    alpha: float = 1e-4
    beta: float = 0.75
    k: float = 1.0

    def verify(self, operands: Sequence[TensorType]) -> None:
        if self.size < 1:
            raise fail(f"size must be >= 1, got {self.size}")

    def infer_type(self, operands: Sequence[TensorType]) -> tuple[TensorType, ...]:
        self.verify(operands)
        (x,) = operands
        rules.need_float(x)
        if x.rank < 3:
            raise fail(f"input must have rank >= 3 (N, C, spatial...), got {x}")
        return (TensorType(x.shape, x.dtype),)

    def reference(self, *args: np.ndarray) -> tuple[np.ndarray, ...]:
        """Channel c averages channels c - size//2 .. c + (size-1)//2 (zeros outside).

        Each window is summed on its own (not as a difference of running sums, which turns an
        inf or a huge channel into NaN or lost precision in every later window)."""
        (x,) = args
        wide = x.astype(np.float64)
        pads = [(0, 0)] * x.ndim
        pads[1] = (self.size // 2, (self.size - 1) // 2)
        squares = np.pad(np.square(wide), pads)
        channels = x.shape[1]
        window = np.zeros_like(wide)
        for offset in range(self.size):
            window += squares[:, offset:offset + channels]
        with np.errstate(invalid="ignore"):
            y = wide / (self.k + self.alpha * window / self.size) ** self.beta
        return (y.astype(x.dtype),)

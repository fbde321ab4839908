"""Convolutions and matrix products: conv1d, conv2d, conv_transpose2d, linear, matmul.

Layouts follow PyTorch (NCW / NCHW activations, OIW / OIHW weights, `(out, in)` linear weights);
paddings follow ONNX order (all begins, then all ends). The references run an im2col matmul
(`sliding_window_view` → one batched matmul over groups), so a float32 conv is one sgemm per
group and integer inputs use NumPy's integer matmul (accumulating in the operand dtype).

Fixed-point operands (`fixed<W,I>`, raws in int64) give an exact, wider result type
(`kiln.ir.fixed_arith.dot_type`: the products' sum plus the bias, ap_fixed's rules); the
reference multiplies and sums the raws in int64 and aligns the bias, so it is bit-exact.
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
from kiln.ir.ops.elementwise import broadcast_shapes
from kiln.ir.types import FixedType, TensorType


def conv_nd(x: np.ndarray, w: np.ndarray, stride: Sequence[int], dilation: Sequence[int],
            groups: int) -> np.ndarray:
    """Unpadded grouped convolution of `x` (N, C, *S) with `w` (O, C/groups, *K) via im2col."""
    nd = x.ndim - 2
    kernel = w.shape[2:]
    span = [d * (k - 1) + 1 for d, k in zip(dilation, kernel)]
    win = sliding_window_view(x, span, axis=tuple(range(2, 2 + nd)))
    win = win[(slice(None), slice(None), *(slice(None, None, s) for s in stride),
               *(slice(None, None, d) for d in dilation))]
    n, c, out = x.shape[0], x.shape[1], win.shape[2:2 + nd]
    cg, og = c // groups, w.shape[0] // groups
    win = win.reshape(n, groups, cg, *out, *kernel)
    perm = (1, 0, *range(3, 3 + nd), 2, *range(3 + nd, 3 + 2 * nd))
    cols = win.transpose(perm).reshape(groups, n * rules.numel(out), cg * rules.numel(kernel))
    mat = w.reshape(groups, og, -1).transpose(0, 2, 1)
    y = np.matmul(cols, mat).reshape(groups, n, *out, og)
    return y.transpose(1, 0, 2 + nd, *range(2, 2 + nd)).reshape(n, groups * og, *out)


def _add_bias(y: np.ndarray, args: Sequence[np.ndarray]) -> np.ndarray:
    if len(args) < 3:
        return y
    return y + args[2].reshape((1, -1) + (1,) * (y.ndim - 2))


@dataclass(frozen=True)
class ConvBase(OpDef):
    """Base of the convolutions: forward conv semantics; conv_transpose2d overrides the rule."""

    OPERANDS = ("input", "weight", "bias?")
    SPATIAL: ClassVar[int] = 2
    stride: tuple[int, ...]
    padding: tuple[int, ...]
    dilation: tuple[int, ...]
    groups: int

    def verify(self, operands: Sequence[TensorType]) -> None:
        nd = self.SPATIAL
        rules.check_ints("stride", self.stride, nd, minimum=1)
        rules.check_ints("padding", self.padding, 2 * nd, minimum=0)
        rules.check_ints("dilation", self.dilation, nd, minimum=1)
        if self.groups < 1:
            raise fail(f"groups must be >= 1, got {self.groups}")

    def _check_operands(self, operands: Sequence[TensorType]) -> None:
        """Ranks, dtypes, groups dividing the input channels, and the bias length."""
        self.verify(operands)
        fixed_arith.check_dtypes("input, weight and bias", operands)
        x, w = operands[0], operands[1]
        rank = self.SPATIAL + 2
        for what, t in (("input", x), ("weight", w)):
            if t.rank != rank:
                raise fail(f"{what} must have rank {rank}, got {t}")
        if x.shape[1] % self.groups:
            raise fail(f"groups={self.groups} does not divide the {x.shape[1]} input channels")
        if len(operands) == 3 and operands[2].shape != (self.out_channels(w),):
            raise fail(f"bias has shape {list(operands[2].shape)}, expected "
                       f"[{self.out_channels(w)}] (one per output channel)")
        if any(k < 1 for k in w.shape[2:]):
            raise fail(f"weight kernel size {list(w.shape[2:])} has an empty dimension")

    def out_channels(self, w: TensorType) -> int:
        return w.shape[0]

    def terms(self, w: TensorType) -> int:
        """Products summed into one output: input channels per group times the kernel size."""
        return w.shape[1] * rules.numel(w.shape[2:])

    def _result(self, operands: Sequence[TensorType], channels: int,
                spatial: Sequence[int]) -> TensorType:
        x = operands[0]
        if any(s < 1 for s in spatial):
            raise fail(f"input spatial size {list(x.shape[2:])} is too small for the kernel, "
                       f"padding and dilation (output would be {list(spatial)})")
        dtype = fixed_arith.dot_type(operands, self.terms(operands[1]))
        return TensorType((x.shape[0], channels, *spatial), dtype)

    def infer_type(self, operands: Sequence[TensorType]) -> tuple[TensorType, ...]:
        self._check_operands(operands)
        x, w = operands[0], operands[1]
        if w.shape[1] * self.groups != x.shape[1]:
            raise fail(f"weight has {w.shape[1]} input channels per group, input has "
                       f"{x.shape[1]} (groups={self.groups})")
        if w.shape[0] % self.groups:
            raise fail(f"groups={self.groups} does not divide the {w.shape[0]} output channels")
        nd = self.SPATIAL
        spatial = [rules.window_out(x.shape[2 + i], w.shape[2 + i], self.stride[i],
                                    (self.padding[i], self.padding[nd + i]), self.dilation[i])
                   for i in range(nd)]
        return (self._result(operands, w.shape[0], spatial),)

    def reference(self, *args: np.ndarray) -> tuple[np.ndarray, ...]:
        x, w = args[0], args[1]
        nd = self.SPATIAL
        xp = rules.pad_or_crop(x, self.padding[:nd], self.padding[nd:], x.dtype.type(0))
        y = conv_nd(xp, w, self.stride, self.dilation, self.groups)
        return (_add_bias(y, args).astype(x.dtype, copy=False),)

    def reference_typed(self, operands: Sequence[TensorType],
                        *args: np.ndarray) -> tuple[np.ndarray, ...]:
        """Fixed point: the raw product sums (without bias), then `finish_dot`."""
        return _dot_typed(self, operands, args, channel_axis=1)


@register_op
@dataclass(frozen=True)
class Conv1d(ConvBase):
    """1-D convolution, NCW input × OIW weight (+ bias), grouped and dilated."""

    NAME = "kiln.conv1d"
    SPATIAL = 1
    stride: tuple[int, ...] = (1,)
    padding: tuple[int, ...] = (0, 0)
    dilation: tuple[int, ...] = (1,)
    groups: int = 1


@register_op
@dataclass(frozen=True)
class Conv2d(ConvBase):
    """2-D convolution, NCHW input × OIHW weight (+ bias); groups = C is depthwise."""

    NAME = "kiln.conv2d"
    SPATIAL = 2
    stride: tuple[int, ...] = (1, 1)
    padding: tuple[int, ...] = (0, 0, 0, 0)
    dilation: tuple[int, ...] = (1, 1)
    groups: int = 1


@register_op
@dataclass(frozen=True)
class ConvTranspose2d(ConvBase):
    """2-D transposed convolution (gradient of conv2d), weight (Cin, Cout/groups, kH, kW)."""

    NAME = "kiln.conv_transpose2d"
    SPATIAL = 2
    stride: tuple[int, ...] = (1, 1)
    padding: tuple[int, ...] = (0, 0, 0, 0)
    dilation: tuple[int, ...] = (1, 1)
    groups: int = 1
    output_padding: tuple[int, ...] = (0, 0)

    def verify(self, operands: Sequence[TensorType]) -> None:
        super().verify(operands)
        rules.check_ints("output_padding", self.output_padding, 2, minimum=0)
        for op, s, d in zip(self.output_padding, self.stride, self.dilation):
            if op >= max(s, d):
                raise fail(f"output_padding {list(self.output_padding)} must be smaller than "
                           f"stride {list(self.stride)} or dilation {list(self.dilation)}")

    def out_channels(self, w: TensorType) -> int:
        return w.shape[1] * self.groups

    def terms(self, w: TensorType) -> int:
        """At most (input channels per group) x (kernel size) products reach one output."""
        return w.shape[0] // self.groups * rules.numel(w.shape[2:])

    def infer_type(self, operands: Sequence[TensorType]) -> tuple[TensorType, ...]:
        self._check_operands(operands)
        x, w = operands[0], operands[1]
        if w.shape[0] != x.shape[1]:
            raise fail(f"weight has {w.shape[0]} input channels, input has {x.shape[1]}")
        spatial = [(x.shape[2 + i] - 1) * self.stride[i] - self.padding[i] - self.padding[2 + i]
                   + self.dilation[i] * (w.shape[2 + i] - 1) + self.output_padding[i] + 1
                   for i in range(2)]
        return (self._result(operands, self.out_channels(w), spatial),)

    def reference(self, *args: np.ndarray) -> tuple[np.ndarray, ...]:
        """Dilate the input by the stride, pad by `dilation*(k-1) - padding`, and run a stride-1
        convolution with the flipped, group-transposed weight."""
        x, w = args[0], args[1]
        n, c, h, wd = x.shape
        sh, sw = self.stride
        xd = np.zeros((n, c, (h - 1) * sh + 1, (wd - 1) * sw + 1), x.dtype)
        xd[:, :, ::sh, ::sw] = x
        reach = [d * (k - 1) for d, k in zip(self.dilation, w.shape[2:])]
        begins = [r - p for r, p in zip(reach, self.padding[:2])]
        ends = [r - p + op for r, p, op in zip(reach, self.padding[2:], self.output_padding)]
        xp = rules.pad_or_crop(xd, begins, ends, x.dtype.type(0))
        g = self.groups
        cin_g, cout_g = c // g, w.shape[1]
        wt = w.reshape(g, cin_g, cout_g, *w.shape[2:]).transpose(0, 2, 1, 3, 4)
        wt = wt.reshape(g * cout_g, cin_g, *w.shape[2:])[:, :, ::-1, ::-1]
        y = conv_nd(xp, wt, (1, 1), self.dilation, g)
        return (_add_bias(y, args).astype(x.dtype, copy=False),)


@register_op
@dataclass(frozen=True)
class Linear(OpDef):
    """x @ weightᵀ + bias over the last dimension; weight is (out_features, in_features)."""

    NAME = "kiln.linear"
    OPERANDS = ("input", "weight", "bias?")

    def infer_type(self, operands: Sequence[TensorType]) -> tuple[TensorType, ...]:
        fixed_arith.check_dtypes("input, weight and bias", operands)
        x, w = operands[0], operands[1]
        if x.rank < 1:
            raise fail("input must have rank >= 1, got a scalar")
        if w.rank != 2:
            raise fail(f"weight must be 2-D (out_features, in_features), got {w}")
        if x.shape[-1] != w.shape[1]:
            raise fail(f"input has {x.shape[-1]} features, weight expects {w.shape[1]}")
        if len(operands) == 3 and operands[2].shape != (w.shape[0],):
            raise fail(f"bias has shape {list(operands[2].shape)}, expected [{w.shape[0]}]")
        dtype = fixed_arith.dot_type(operands, w.shape[1])
        return (TensorType((*x.shape[:-1], w.shape[0]), dtype),)

    def reference(self, *args: np.ndarray) -> tuple[np.ndarray, ...]:
        x, w = args[0], args[1]
        y = np.matmul(x, w.T)
        if len(args) == 3:
            y = y + args[2]
        return (np.asarray(y).astype(x.dtype, copy=False),)

    def reference_typed(self, operands: Sequence[TensorType],
                        *args: np.ndarray) -> tuple[np.ndarray, ...]:
        return _dot_typed(self, operands, args, channel_axis=-1)


@register_op
@dataclass(frozen=True)
class MatMul(OpDef):
    """numpy.matmul: batched, broadcasting; a 1-D operand is a vector (its axis is dropped)."""

    NAME = "kiln.matmul"
    OPERANDS = ("lhs", "rhs")

    def infer_type(self, operands: Sequence[TensorType]) -> tuple[TensorType, ...]:
        a, b = operands
        fixed_arith.check_dtypes("lhs and rhs", operands)
        if a.rank < 1 or b.rank < 1:
            raise fail(f"operands must have rank >= 1, got {a} and {b}")
        a_shape = (1, *a.shape) if a.rank == 1 else a.shape
        b_shape = (*b.shape, 1) if b.rank == 1 else b.shape
        if a_shape[-1] != b_shape[-2]:
            raise fail(f"contracted dimensions differ: lhs {list(a.shape)} has "
                       f"{a_shape[-1]}, rhs {list(b.shape)} has {b_shape[-2]}")
        batch = broadcast_shapes(a_shape[:-2], b_shape[:-2])
        rows = (a_shape[-2],) if a.rank > 1 else ()
        cols = (b_shape[-1],) if b.rank > 1 else ()
        dtype = fixed_arith.dot_type(operands, a_shape[-1])
        return (TensorType((*batch, *rows, *cols), dtype),)

    def reference(self, *args: np.ndarray) -> tuple[np.ndarray, ...]:
        a, b = args
        return (np.asarray(np.matmul(a, b)).astype(a.dtype, copy=False),)

    def reference_typed(self, operands: Sequence[TensorType],
                        *args: np.ndarray) -> tuple[np.ndarray, ...]:
        return _dot_typed(self, operands, args, channel_axis=-1)


def _dot_typed(kind: OpDef, operands: Sequence[TensorType], args: Sequence[np.ndarray],
               channel_axis: int) -> tuple[np.ndarray, ...]:
    """Plain operands: `reference`. Fixed point: the int64 raw products summed by the plain
    reference without the bias, then aligned to the exact result type plus the bias."""
    if not fixed_arith.is_fixed(operands):
        return kind.reference(*args)
    (acc,) = kind.reference(*args[:2])
    (result,) = kind.infer_type(operands)
    assert isinstance(result.dtype, FixedType)
    bias = args[2] if len(args) > 2 else None
    return (fixed_arith.finish_dot(acc, operands, bias, result.dtype, channel_axis),)

"""Integer-only quantized ops: qconv1d/qconv2d, qlinear, qmatmul, qadd, qrescale.

Operands and results are affine-quantized tensors (`q<storage, scale, zp>`) holding 8-bit
integers; the arithmetic is integers only and bit-exact (`kiln.ir.requant` states it in full):

    acc  = Σ (x - zx) · (w - zw)  [+ bias]     exact, then wrapped to int32
    y    = clamp(((acc · M[c] + 2^(t-1)) >> t) + zo, clamp_min, clamp_max),  t = 31 - shift[c]

`multiplier`/`shift` (one pair per tensor, or one per output channel) encode the real factor
s_x · s_w[c] / s_out; they are attributes, not recomputed from the types, because they are the
contract a C or HLS kernel implements (the quantize pass derives them with
`requant.quantize_multiplier`). The result type `to` carries the output scale and zero point
for the ops downstream (dequantize reads them). `clamp_min`/`clamp_max` (stored integers;
None = the storage range) implement fused relu / relu6 / clamp epilogues.

Sums run in float64, which is exact here: every product of two zero-point-shifted 8-bit values
is below 2^16 in magnitude, so any partial sum of fewer than 2^36 terms is an integer below
2^53. Pools and means on quantized tensors live in `qnn_pool.py`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from kiln.ir import requant
from kiln.ir.ops import rules
from kiln.ir.ops.base import OpDef, fail, register_op
from kiln.ir.ops.nn_conv import Conv1d, Conv2d, ConvBase, Linear, MatMul, conv_nd
from kiln.ir.types import F32, I32, QuantType, TensorType


def quant_of(t: TensorType, role: str, *, per_tensor: bool = True) -> QuantType:
    """`t`'s QuantType with 8-bit storage (per tensor unless allowed otherwise)."""
    q = t.dtype
    if not isinstance(q, QuantType):
        raise fail(f"{role} must be a quantized q<...> tensor, got {t}")
    if q.storage.bits > 8:
        raise fail(f"{role} must have 8-bit storage (i8 or u8), got {q.storage}")
    if per_tensor and q.axis is not None:
        raise fail(f"{role} must be quantized per tensor, got {q}")
    return q


def zero_points(q: QuantType, rank: int) -> np.ndarray:
    """q's zero point(s) as int64, shaped to broadcast along its axis in a rank-`rank` tensor."""
    zp = np.asarray(q.zero_point, np.int64)
    if q.axis is None:
        return zp.reshape(())
    shape = [1] * rank
    shape[q.axis] = len(zp)
    return zp.reshape(shape)


def shifted(x: np.ndarray, q: QuantType) -> np.ndarray:
    """x - zero point as float64 (exact small integers)."""
    return (x.astype(np.int64) - zero_points(q, x.ndim)).astype(np.float64)


@dataclass(frozen=True)
class RequantOp(OpDef):
    """Base of ops ending in the fixed-point requantization to `to` (module docstring)."""

    to: QuantType
    multiplier: tuple[int, ...]
    shift: tuple[int, ...]

    CHANNEL_AXIS: ClassVar[int | None] = None
    """Result axis the per-channel multipliers run along (None: per tensor only)."""

    def _clamp(self) -> tuple[int, int]:
        info = np.iinfo(self.to.storage.numpy)
        low = getattr(self, "clamp_min", None)
        high = getattr(self, "clamp_max", None)
        return (int(info.min) if low is None else low, int(info.max) if high is None else high)

    def verify(self, operands: Sequence[TensorType]) -> None:
        if not isinstance(self.to, QuantType) or self.to.axis is not None:
            raise fail(f"result type must be a per-tensor q<...> type, got {self.to}")
        problem = requant.check_multipliers(self.multiplier, self.shift)
        if problem:
            raise fail(problem)
        info = np.iinfo(self.to.storage.numpy)
        low, high = self._clamp()
        if not info.min <= low <= high <= info.max:
            raise fail(f"clamp [{low}, {high}] must be an ordered range inside "
                       f"{self.to.storage} [{info.min}, {info.max}]")

    def _check_channels(self, channels: int) -> None:
        if len(self.multiplier) not in (1, channels):
            raise fail(f"has {len(self.multiplier)} multipliers; give 1 or one per output "
                       f"channel ({channels})")

    def _requantize(self, acc: np.ndarray) -> np.ndarray:
        """Stored results from exact accumulators (per-channel along CHANNEL_AXIS)."""
        mult = np.asarray(self.multiplier, np.int64)
        shift = np.asarray(self.shift, np.int64)
        if len(mult) > 1:
            axis = self.CHANNEL_AXIS if self.CHANNEL_AXIS is not None else acc.ndim - 1
            shape = [1] * acc.ndim
            shape[axis % acc.ndim] = len(mult)
            mult, shift = mult.reshape(shape), shift.reshape(shape)
        low, high = self._clamp()
        return requant.requantize_output(acc, mult, shift, self.to.zero_point[0], low, high,
                                         self.to.storage.numpy)

    def reference(self, *args: np.ndarray) -> tuple[np.ndarray, ...]:
        raise fail("needs its operands' types (zero points): call reference_typed")


def _bias(operands: Sequence[TensorType], channels: int) -> None:
    if len(operands) == 3:
        b = operands[2]
        if b.dtype != I32 or b.shape != (channels,):
            raise fail(f"bias must be tensor<{channels}xi32> (one int32 per output channel, "
                       f"scale s_x·s_w), got {b}")


def _weight_quant(w: TensorType, channels_axis: int) -> QuantType:
    q = quant_of(w, "weight", per_tensor=False)
    if q.axis is not None and q.axis != channels_axis:
        raise fail(f"weight must be quantized per tensor or per output channel (axis "
                   f"{channels_axis}), got {q}")
    return q


@dataclass(frozen=True)
class _QConv(RequantOp):
    """Base of the quantized convolutions (geometry as in `ConvBase`)."""

    OPERANDS = ("input", "weight", "bias?")
    CHANNEL_AXIS = 1
    FLOAT: ClassVar[type[ConvBase]] = Conv2d
    stride: tuple[int, ...]
    padding: tuple[int, ...]
    dilation: tuple[int, ...]
    groups: int = 1
    clamp_min: int | None = None
    clamp_max: int | None = None

    def geometry(self) -> ConvBase:
        return self.FLOAT(stride=self.stride, padding=self.padding, dilation=self.dilation,
                          groups=self.groups)

    def infer_type(self, operands: Sequence[TensorType]) -> tuple[TensorType, ...]:
        self.verify(operands)
        x, w = operands[0], operands[1]
        quant_of(x, "input")
        _weight_quant(w, 0)
        _bias(operands, w.shape[0])
        self._check_channels(w.shape[0])
        plain = [TensorType(x.shape, F32), TensorType(w.shape, F32)]
        (out,) = self.geometry().infer_type(plain)
        return (TensorType(out.shape, self.to),)

    def reference_typed(self, operands: Sequence[TensorType],
                        *args: np.ndarray) -> tuple[np.ndarray, ...]:
        x, w = args[0], args[1]
        qx, qw = operands[0].dtype, operands[1].dtype
        assert isinstance(qx, QuantType) and isinstance(qw, QuantType)
        nd = self.FLOAT.SPATIAL
        xs = rules.pad_or_crop(shifted(x, qx), self.padding[:nd], self.padding[nd:],
                               np.float64(0.0))
        acc = conv_nd(xs, shifted(w, qw), self.stride, self.dilation, self.groups)
        if len(args) == 3:
            acc = acc + args[2].astype(np.float64).reshape((1, -1) + (1,) * nd)
        return (self._requantize(acc),)


@register_op
@dataclass(frozen=True)
class QConv1d(_QConv):
    """Integer 1-D convolution: int32 accumulation, fixed-point requantization, clamp."""

    NAME = "kiln.qconv1d"
    FLOAT = Conv1d
    stride: tuple[int, ...] = (1,)
    padding: tuple[int, ...] = (0, 0)
    dilation: tuple[int, ...] = (1,)


@register_op
@dataclass(frozen=True)
class QConv2d(_QConv):
    """Integer 2-D convolution: int32 accumulation, fixed-point requantization, clamp."""

    NAME = "kiln.qconv2d"
    FLOAT = Conv2d
    stride: tuple[int, ...] = (1, 1)
    padding: tuple[int, ...] = (0, 0, 0, 0)
    dilation: tuple[int, ...] = (1, 1)


@register_op
@dataclass(frozen=True)
class QLinear(RequantOp):
    """Integer x @ Wᵀ (+ int32 bias) over the last dim, requantized per output feature."""

    NAME = "kiln.qlinear"
    OPERANDS = ("input", "weight", "bias?")
    CHANNEL_AXIS = -1
    clamp_min: int | None = None
    clamp_max: int | None = None

    def infer_type(self, operands: Sequence[TensorType]) -> tuple[TensorType, ...]:
        self.verify(operands)
        x, w = operands[0], operands[1]
        quant_of(x, "input")
        _weight_quant(w, 0)
        _bias(operands, w.shape[0] if w.rank == 2 else 0)
        self._check_channels(w.shape[0] if w.rank else 0)
        (out,) = Linear().infer_type([TensorType(x.shape, F32), TensorType(w.shape, F32)])
        return (TensorType(out.shape, self.to),)

    def reference_typed(self, operands: Sequence[TensorType],
                        *args: np.ndarray) -> tuple[np.ndarray, ...]:
        qx, qw = operands[0].dtype, operands[1].dtype
        assert isinstance(qx, QuantType) and isinstance(qw, QuantType)
        acc = np.matmul(shifted(args[0], qx), shifted(args[1], qw).T)
        if len(args) == 3:
            acc = acc + args[2].astype(np.float64)
        return (self._requantize(acc),)


@register_op
@dataclass(frozen=True)
class QMatMul(RequantOp):
    """Integer numpy.matmul; rhs per tensor or per column (its last axis), lhs per tensor."""

    NAME = "kiln.qmatmul"
    OPERANDS = ("lhs", "rhs")
    CHANNEL_AXIS = -1
    clamp_min: int | None = None
    clamp_max: int | None = None

    def infer_type(self, operands: Sequence[TensorType]) -> tuple[TensorType, ...]:
        self.verify(operands)
        a, b = operands
        quant_of(a, "lhs")
        qb = quant_of(b, "rhs", per_tensor=False)
        if qb.axis is not None and (b.rank < 2 or qb.axis != b.rank - 1):
            raise fail(f"rhs must be quantized per tensor or along its last axis, got {qb}")
        (out,) = MatMul().infer_type([TensorType(a.shape, F32), TensorType(b.shape, F32)])
        if len(self.multiplier) > 1 and (b.rank < 2 or len(self.multiplier) != b.shape[-1]):
            raise fail(f"has {len(self.multiplier)} multipliers; give 1 or one per rhs column")
        return (TensorType(out.shape, self.to),)

    def reference_typed(self, operands: Sequence[TensorType],
                        *args: np.ndarray) -> tuple[np.ndarray, ...]:
        qa, qb = operands[0].dtype, operands[1].dtype
        assert isinstance(qa, QuantType) and isinstance(qb, QuantType)
        return (self._requantize(np.matmul(shifted(args[0], qa), shifted(args[1], qb))),)


def binary_result(operands: Sequence[TensorType], to: QuantType) -> tuple[TensorType, ...]:
    """The result type of a broadcasting binary int8 op: both operands quantized, the result
    of type `to` at the broadcast shape (qadd, qmul)."""
    a, b = operands
    quant_of(a, "lhs")
    quant_of(b, "rhs")
    from kiln.ir.ops.elementwise import broadcast_shapes
    return (TensorType(broadcast_shapes(a.shape, b.shape), to),)


@register_op
@dataclass(frozen=True)
class QAdd(RequantOp):
    """Integer a + b of two quantized tensors (TFLite's add): rescale both, add, requantize.

    a' = rmul((a - za) << left_shift, lhs_multiplier, lhs_shift), b' likewise, then
    y = clamp(rmul(a' + b', multiplier, shift) + zo), rmul = `requant.rounding_mul_shift`.
    """

    NAME = "kiln.qadd"
    OPERANDS = ("lhs", "rhs")
    lhs_multiplier: int = 0
    lhs_shift: int = 0
    rhs_multiplier: int = 0
    rhs_shift: int = 0
    left_shift: int = 20
    clamp_min: int | None = None
    clamp_max: int | None = None

    def verify(self, operands: Sequence[TensorType]) -> None:
        super().verify(operands)
        if len(self.multiplier) != 1:
            raise fail("qadd takes one output multiplier (per tensor)")
        problem = requant.check_multipliers((self.lhs_multiplier, self.rhs_multiplier),
                                            (self.lhs_shift, self.rhs_shift))
        if problem:
            raise fail(f"input rescaling: {problem}")
        if not 0 <= self.left_shift <= 22:
            raise fail(f"left_shift must be in [0, 22] (keeps sums in int32), got "
                       f"{self.left_shift}")

    def infer_type(self, operands: Sequence[TensorType]) -> tuple[TensorType, ...]:
        self.verify(operands)
        return binary_result(operands, self.to)

    def reference_typed(self, operands: Sequence[TensorType],
                        *args: np.ndarray) -> tuple[np.ndarray, ...]:
        terms = []
        for x, t, m, e in ((args[0], operands[0], self.lhs_multiplier, self.lhs_shift),
                           (args[1], operands[1], self.rhs_multiplier, self.rhs_shift)):
            assert isinstance(t.dtype, QuantType)
            raw = x.astype(np.int64) - t.dtype.zero_point[0]
            terms.append(requant.rounding_mul_shift(raw << self.left_shift, m, e))
        return (self._requantize(terms[0] + terms[1]),)


@register_op
@dataclass(frozen=True)
class QRescale(RequantOp):
    """Changes a quantized tensor's scale and zero point in integers: rmul(x - zx) + zo."""

    NAME = "kiln.qrescale"
    OPERANDS = ("input",)
    clamp_min: int | None = None
    clamp_max: int | None = None

    def infer_type(self, operands: Sequence[TensorType]) -> tuple[TensorType, ...]:
        self.verify(operands)
        (x,) = operands
        quant_of(x, "input")
        if len(self.multiplier) != 1:
            raise fail("qrescale takes one multiplier (per tensor)")
        return (TensorType(x.shape, self.to),)

    def reference_typed(self, operands: Sequence[TensorType],
                        *args: np.ndarray) -> tuple[np.ndarray, ...]:
        q = operands[0].dtype
        assert isinstance(q, QuantType)
        return (self._requantize(args[0].astype(np.int64) - q.zero_point[0]),)


QNN_OPS: tuple[type[OpDef], ...] = (QConv1d, QConv2d, QLinear, QMatMul, QAdd, QRescale)
"""The requantizing integer ops (the pools of `qnn_pool` keep their input's type)."""

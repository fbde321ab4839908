"""Integer elementwise ops on quantized tensors: qlut (any unary function) and qmul.

**`kiln.qlut {function, table, to}`** maps each stored 8-bit input to a stored 8-bit output
through a 256-entry table: `y = table[x - storage_min(input)]`. A unary float op f sitting
between a dequantize and a quantize (hardswish, hardsigmoid, sigmoid, tanh, gelu, ...) only
ever sees 256 distinct inputs, so the quantize pass evaluates it once per input value at
compile time (`lut_table`) and the kernel becomes one byte lookup — no float math, no
dequantize/quantize traffic. The table is an attribute (not recomputed from `function`)
because it *is* the contract a C or HLS kernel implements, exactly as the multipliers of
`kiln.qconv2d` are; `function` names the float op it was built from (reports, comments).

`lut_table(f, q_in, q_out)`: for every stored input v, the real input (v - zx) · sx in
float64, f evaluated in float64 (the float op's own reference), then rounded half to even
into the output type: rint(f / so) + zo, saturated to the storage range, NaN → storage min
(what `kiln.quantize` does with NaN).

**`kiln.qmul {to, multiplier, shift, clamp_min, clamp_max}`** multiplies two quantized
tensors with numpy broadcasting (TFLite's mul): the exact product (a - za)·(b - zb) (below
2^16 in magnitude for 8-bit operands) is requantized by M·2^(e-31) ≈ sa·sb/so with the
single-rounding shift of `kiln.ir.requant`, + zo, clamped. The squeeze-excitation gate
(activation × per-channel gate) of MobileNetV3-style networks is this op with broadcasting.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from kiln.ir.ops.base import OpDef, fail, register_op
from kiln.ir.ops.qnn import RequantOp, binary_result, quant_of
from kiln.ir.types import QuantType, TensorType

TABLE_SIZE = 256
"""Entries of a qlut table: one per 8-bit stored input."""


def storage_bounds(q: QuantType) -> tuple[int, int]:
    """(min, max) stored integer of `q`'s storage type."""
    info = np.iinfo(q.storage.numpy)
    return int(info.min), int(info.max)


def lut_table(fn: Callable[[np.ndarray], np.ndarray], q_in: QuantType,
              q_out: QuantType) -> tuple[int, ...]:
    """The qlut table of float function `fn` from `q_in` to `q_out` (module docstring)."""
    lo, hi = storage_bounds(q_in)
    real = (np.arange(lo, hi + 1, dtype=np.float64) - q_in.zero_point[0]) * q_in.scale[0]
    with np.errstate(all="ignore"):
        y = np.asarray(fn(real), np.float64)
        t = np.rint(y / q_out.scale[0]) + q_out.zero_point[0]
    out_lo, out_hi = storage_bounds(q_out)
    stored = np.clip(np.where(np.isnan(t), out_lo, t), out_lo, out_hi)  # ±inf saturate
    return tuple(int(v) for v in stored)


@register_op
@dataclass(frozen=True)
class QLut(OpDef):
    """Any unary function of an 8-bit quantized tensor, as a 256-entry byte-to-byte table."""

    NAME = "kiln.qlut"
    OPERANDS = ("input",)
    to: QuantType
    table: tuple[int, ...]
    function: str = ""

    def verify(self, operands: Sequence[TensorType]) -> None:
        if not isinstance(self.to, QuantType) or self.to.axis is not None \
                or self.to.storage.bits != 8:
            raise fail(f"result type must be a per-tensor 8-bit q<...> type, got {self.to}")
        if len(self.table) != TABLE_SIZE:
            raise fail(f"table has {len(self.table)} entries; it needs {TABLE_SIZE} (one per "
                       "8-bit input)")
        lo, hi = storage_bounds(self.to)
        bad = [v for v in self.table if not lo <= v <= hi]
        if bad:
            raise fail(f"table entry {bad[0]} is outside {self.to.storage} [{lo}, {hi}]")

    def infer_type(self, operands: Sequence[TensorType]) -> tuple[TensorType, ...]:
        (x,) = operands
        quant_of(x, "input")
        self.verify(operands)
        return (TensorType(x.shape, self.to),)

    def reference(self, *args: np.ndarray) -> tuple[np.ndarray, ...]:
        raise fail("needs its input's type (storage range): call reference_typed")

    def reference_typed(self, operands: Sequence[TensorType],
                        *args: np.ndarray) -> tuple[np.ndarray, ...]:
        q = operands[0].dtype
        assert isinstance(q, QuantType)
        index = args[0].astype(np.int64) - storage_bounds(q)[0]
        table = np.asarray(self.table, np.int64)
        return (table[index].astype(self.to.storage.numpy),)


@register_op
@dataclass(frozen=True)
class QMul(RequantOp):
    """Integer a · b of two quantized tensors with broadcasting, requantized (TFLite's mul)."""

    NAME = "kiln.qmul"
    OPERANDS = ("lhs", "rhs")
    clamp_min: int | None = None
    clamp_max: int | None = None

    def verify(self, operands: Sequence[TensorType]) -> None:
        super().verify(operands)
        if len(self.multiplier) != 1:
            raise fail("qmul takes one multiplier (per tensor)")

    def infer_type(self, operands: Sequence[TensorType]) -> tuple[TensorType, ...]:
        self.verify(operands)
        return binary_result(operands, self.to)

    def reference_typed(self, operands: Sequence[TensorType],
                        *args: np.ndarray) -> tuple[np.ndarray, ...]:
        raws = []
        for x, t in zip(args, operands):
            q = t.dtype
            assert isinstance(q, QuantType)
            raws.append(x.astype(np.int64) - q.zero_point[0])
        return (self._requantize(raws[0] * raws[1]),)


QELTWISE_OPS: tuple[type[OpDef], ...] = (QLut, QMul)

__all__ = ["QELTWISE_OPS", "TABLE_SIZE", "QLut", "QMul", "lut_table", "storage_bounds"]

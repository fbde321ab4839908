"""One quantized layer: its integer op kind, constant operands and requantization parameters.

`plan_product` (conv1d/conv2d/linear/matmul) and `plan_add` build a `LayerPlan` — the `kiln.q*`
kind plus, per operand, either the float activation it quantizes or the stored integers of a
constant (weights, int32 bias) — *without* touching the graph, so that the quantize pass can
measure a layer's error on calibration data (`LayerPlan.simulate`) before committing to it.

The arithmetic (see `kiln.ir.requant` and `kiln.ir.ops.qnn`):

    weight  w_q = clamp(rint(w / s_w[c]), -127, 127)              symmetric int8, zero point 0
    bias    b_q = clamp(rint(b / (s_x · s_w[c])), int32)           added to the int32 accumulator
    output  (M[c], shift[c]) = quantize_multiplier(s_x · s_w[c] / s_out)
    clamp   relu: [zo, max]; relu6: [zo, zo + rint(6 / s_out)]; clamp(a, b): rint(·/s_out) + zo

qadd follows TFLite: with m = 2·max(s_a, s_b), inputs are rescaled by s_a/m and s_b/m after a
left shift of 20 bits and the sum by m / (2^20 · s_out). A factor that a 32-bit multiplier
cannot hold (>= 2^30) makes the plan fail with a reason; the layer then stays in float.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from kiln.errors import KilnError
from kiln.ir import fixed, requant
from kiln.ir.graph import Module, Op, Value
from kiln.ir.ops import elementwise as ew
from kiln.ir.ops import nn_conv, qnn
from kiln.ir.ops.base import OpDef
from kiln.ir.types import I32, QuantType, TensorType
from kiln.passes.calibrate import weight_type
from kiln.passes.fold_constants import known_value

ACTIVATIONS = (ew.Relu, ew.Relu6, ew.Clamp)
"""Epilogue activations that become the output clamp of an integer op."""
LEFT_SHIFT = 20


@dataclass(frozen=True)
class Group:
    """An anchor op and the activation fused into it (None when there is none)."""

    anchor: Op
    act: Op | None = None

    @property
    def out(self) -> Value:
        return (self.act or self.anchor).result

    @property
    def ops(self) -> list[Op]:
        return [self.anchor] if self.act is None else [self.anchor, self.act]

    @property
    def label(self) -> str:
        """How reports name the layer: its module path, else its result name, else op name."""
        return self.anchor.loc.scope or self.anchor.result.name or self.anchor.name


def find_group(anchor: Op) -> Group:
    """`anchor` plus the activation reading its result, when that is the result's only use."""
    users = anchor.result.users
    if len(anchor.result.uses) == 1 and isinstance(users[0].kind, ACTIVATIONS):
        return Group(anchor, users[0])
    return Group(anchor)


@dataclass(frozen=True)
class QOperand:
    """One operand of the integer op: a float activation to quantize, or stored constants."""

    type: TensorType
    source: Value | None = None
    array: np.ndarray | None = None
    name: str = ""


@dataclass(frozen=True)
class LayerPlan:
    """The integer op for a group, ready to be simulated or materialized."""

    group: Group
    kind: OpDef
    operands: tuple[QOperand, ...]

    @property
    def out_type(self) -> QuantType:
        to = getattr(self.kind, "to")  # noqa: B009 (every RequantOp has it)
        assert isinstance(to, QuantType)
        return to

    def simulate(self, inputs: Sequence[np.ndarray]) -> np.ndarray:
        """Float output of the integer op when its activations are `inputs` (float arrays)."""
        it = iter(inputs)
        arrays = [o.array if o.array is not None
                  else fixed.quantize_affine(next(it), _quant(o.type)) for o in self.operands]
        types = [o.type for o in self.operands]
        (out,) = self.kind.reference_typed(types, *arrays)
        return fixed.dequantize_affine(out, self.out_type, np.float64)


def _quant(t: TensorType) -> QuantType:
    assert isinstance(t.dtype, QuantType)
    return t.dtype


def clamp_range(act: Op | None, out: QuantType) -> tuple[int | None, int | None]:
    """Stored-integer clamp bounds of a fused activation (module docstring)."""
    if act is None:
        return None, None
    info = np.iinfo(out.storage.numpy)
    scale, zp = out.scale[0], out.zero_point[0]

    def stored(real: float | None) -> int | None:
        if real is None or math.isnan(real):
            return None  # (a NaN bound clamps nothing in kiln.clamp's NumPy semantics either)
        return int(np.clip(np.round(real / scale) + zp, info.min, info.max))  # ±inf saturate

    if isinstance(act.kind, ew.Relu):
        return stored(0.0), None
    if isinstance(act.kind, ew.Relu6):
        return stored(0.0), stored(6.0)
    assert isinstance(act.kind, ew.Clamp)
    return stored(act.kind.min), stored(act.kind.max)


def requant_attrs(s_x: float, s_w: Sequence[float], s_out: float) -> dict[str, tuple[int, ...]]:
    """multiplier/shift attributes for the factors s_x · s_w[c] / s_out."""
    reals = [s_x * w / s_out for w in s_w]
    multiplier, shift = requant.quantize_multipliers(reals)
    return {"multiplier": multiplier, "shift": shift}


def _weight(array: np.ndarray, q: QuantType, name: str) -> QOperand:
    stored = fixed.quantize_affine(array, q)
    return QOperand(TensorType(array.shape, q), array=np.maximum(stored, -127), name=name)


def _bias(array: np.ndarray, s_x: float, w: QuantType, name: str) -> QOperand:
    scales = s_x * np.asarray(w.scale, np.float64)
    stored = np.clip(np.rint(array.astype(np.float64) / scales),
                     requant.INT32_MIN, requant.INT32_MAX).astype(np.int32)
    return QOperand(TensorType(stored.shape, I32), array=stored, name=name)


def _const_name(value: Value, suffix: str) -> str:
    producer = value.producer
    base = getattr(producer.kind, "name", "") if producer is not None else ""
    return f"{base or value.name or 'const'}.{suffix}"


QTypeOf = Callable[[Value], "QuantType | None"]


def plan_product(group: Group, module: Module, qtype: QTypeOf, per_channel: bool) -> LayerPlan:
    """conv1d/conv2d/linear with constant weights, or matmul (constant or activation rhs)."""
    anchor = group.anchor
    x = anchor.operands[0]
    qx, q_out = qtype(x), qtype(group.out)
    if qx is None or q_out is None:
        raise KilnError("its input or output has no calibration statistics")
    if isinstance(anchor.kind, nn_conv.MatMul):
        return _plan_matmul(group, module, qx, q_out, qtype, per_channel)
    w = known_value(anchor.operands[1], module)
    if w is None:
        raise KilnError("its weight is not a constant with data")
    qw = weight_type(np.asarray(w, np.float32), per_channel)
    operands = [QOperand(TensorType(x.type.shape, qx), source=x),
                _weight(np.asarray(w, np.float32), qw, _const_name(anchor.operands[1], "q"))]
    if len(anchor.operands) == 3:
        b = known_value(anchor.operands[2], module)
        if b is None:
            raise KilnError("its bias is not a constant with data")
        operands.append(_bias(np.asarray(b), qx.scale[0], qw,
                              _const_name(anchor.operands[2], "q")))
    kind = product_kind(anchor.kind, output_attrs(qx.scale[0], qw.scale, group.act, q_out))
    return LayerPlan(group, kind, tuple(operands))


def product_kind(float_kind: OpDef, attrs: Mapping[str, Any]) -> OpDef:
    """The integer twin of a conv1d/conv2d (same geometry), linear or matmul, with `attrs`."""
    if isinstance(float_kind, nn_conv.ConvBase):
        geometry: dict[str, Any] = {"stride": float_kind.stride, "padding": float_kind.padding,
                                    "dilation": float_kind.dilation, "groups": float_kind.groups}
        cls = qnn.QConv2d if isinstance(float_kind, nn_conv.Conv2d) else qnn.QConv1d
        return cls(**geometry, **attrs)
    if isinstance(float_kind, nn_conv.MatMul):
        return qnn.QMatMul(**attrs)
    return qnn.QLinear(**attrs)


def output_attrs(s_x: float, s_w: Sequence[float], act: Op | None,
                 to: QuantType) -> dict[str, Any]:
    """`to`, multipliers/shifts for s_x · s_w[c] / s_out and the activation's clamp."""
    low, high = clamp_range(act, to)
    return {"to": to, **requant_attrs(s_x, s_w, to.scale[0]), "clamp_min": low,
            "clamp_max": high}


def _plan_matmul(group: Group, module: Module, qa: QuantType, q_out: QuantType,
                 qtype: QTypeOf, per_channel: bool) -> LayerPlan:
    lhs, rhs = group.anchor.operands
    if known_value(lhs, module) is not None:
        raise KilnError("its lhs is a constant (only activation @ weight is quantized)")
    const = known_value(rhs, module)
    if const is not None:
        w = np.asarray(const, np.float32)
        channel = per_channel and w.ndim >= 2
        moved = np.moveaxis(w, -1, 0) if channel else w
        qw0 = weight_type(moved, channel)
        qw = QuantType(qw0.storage, qw0.scale, qw0.zero_point, w.ndim - 1 if channel else None)
        right = _weight(w, qw, _const_name(rhs, "q"))
        scales = qw.scale
    else:
        qb = qtype(rhs)
        if qb is None:
            raise KilnError("its rhs has no calibration statistics")
        right = QOperand(TensorType(rhs.type.shape, qb), source=rhs)
        scales = qb.scale
    kind = product_kind(group.anchor.kind, output_attrs(qa.scale[0], scales, group.act, q_out))
    return LayerPlan(group, kind, (QOperand(TensorType(lhs.type.shape, qa), source=lhs), right))


def plan_add(group: Group, qtype: QTypeOf) -> LayerPlan:
    """a + b of two activations (TFLite's rescaled integer add)."""
    a, b = group.anchor.operands
    qa, qb, q_out = qtype(a), qtype(b), qtype(group.out)
    if qa is None or qb is None or q_out is None:
        raise KilnError("an operand or its result has no calibration statistics")
    twice_max = 2.0 * max(qa.scale[0], qb.scale[0])
    (ma, mb, mo), (ea, eb, eo) = requant.quantize_multipliers(
        [qa.scale[0] / twice_max, qb.scale[0] / twice_max,
         twice_max / ((1 << LEFT_SHIFT) * q_out.scale[0])])
    low, high = clamp_range(group.act, q_out)
    kind = qnn.QAdd(to=q_out, multiplier=(mo,), shift=(eo,), lhs_multiplier=ma, lhs_shift=ea,
                    rhs_multiplier=mb, rhs_shift=eb, left_shift=LEFT_SHIFT, clamp_min=low,
                    clamp_max=high)
    return LayerPlan(group, kind, (QOperand(TensorType(a.type.shape, qa), source=a),
                                   QOperand(TensorType(b.type.shape, qb), source=b)))


def rescale_kind(src: QuantType, dst: QuantType) -> qnn.QRescale:
    """A `kiln.qrescale` from `src` to `dst` (concat inputs onto the output's scale)."""
    multiplier, shift = requant.quantize_multiplier(src.scale[0] / dst.scale[0])
    return qnn.QRescale(to=dst, multiplier=(multiplier,), shift=(shift,))

"""Export rules for quantized modules: ONNX QDQ (QuantizeLinear / DequantizeLinear + float ops).

A q<>-typed value is exported as its stored integers (uint8 / int8 / int32 tensors, see
`onnx_elem_type`); `kiln.quantize` / `kiln.dequantize` become QuantizeLinear / DequantizeLinear
with the type's scale and zero point (per axis when it has one). Each integer op becomes the
QDQ pattern onnxruntime itself writes and fuses (into QLinearConv, QLinearMatMul, ...):

    kiln.qconv2d(x, w, b) → DequantizeLinear(x), DequantizeLinear(w, axis 0),
                            DequantizeLinear(b, scale s_x·s_w, axis 0) → Conv → Clip? →
                            QuantizeLinear(s_out, zp_out)

and likewise qlinear (Gemm, or MatMul + Add), qmatmul, qadd (Add), qrescale (nothing between
the pair), qavg_pool (AveragePool), qreduce_mean (ReduceMean). The output clamp becomes a Clip
on the real values (stored bound - zp) · s_out. Shape ops, max pooling and `kiln.clamp` on
q<> tensors run on the stored integers as in kiln.

Tolerance: onnxruntime requantizes in float (`round_half_even(acc · s_x · s_w / s_out)`)
where kiln uses its fixed-point multiplier (`kiln.ir.requant`, ties toward +inf), and averages
round half to even where kiln rounds half away from zero; so each integer op's output agrees to
within one unit of the output scale (1 LSB), and exactly except on near-ties.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from kiln.errors import KilnError
from kiln.frontend.onnx_export import Emitter
from kiln.frontend.onnx_export_ops import _reduce
from kiln.ir.graph import Op, Value
from kiln.ir.ops import qnn, qnn_pool
from kiln.ir.ops.base import OpDef
from kiln.ir.ops.quant import Dequantize, Quantize
from kiln.ir.types import QuantType

Rule = Callable[[Emitter, Op, list[str], list[str]], None]


def _qtype(t: object, where: str) -> QuantType:
    if not isinstance(t, QuantType):
        raise KilnError(f"{where}: {t} has no ONNX QDQ form (only q<> types export)")
    return t


def qdq_node(em: Emitter, op_type: str, name: str, q: QuantType,
             outs: list[str] | None = None) -> str:
    """A QuantizeLinear / DequantizeLinear of `name` with q's scale and zero point (0-d per
    tensor; 1-D with `axis` per channel)."""
    scale = np.asarray(q.scale, np.float32)
    zero = np.asarray(q.zero_point, q.storage.numpy)
    if q.axis is None:
        params = [em.const(scale.reshape(()), "scale"), em.const(zero.reshape(()), "zp")]
        return em.node(op_type, [name, *params], outs)[0]
    params = [em.const(scale, "scale"), em.const(zero, "zp")]
    return em.node(op_type, [name, *params], outs, axis=q.axis)[0]


def dequantize(em: Emitter, name: str, value: Value) -> str:
    q = _qtype(value.type.dtype, "dequantized value")
    return qdq_node(em, "DequantizeLinear", name, q)


def quantize(em: Emitter, name: str, q: QuantType, outs: list[str]) -> None:
    qdq_node(em, "QuantizeLinear", name, q, outs)


def _quantize_op(em: Emitter, op: Op, ins: list[str], outs: list[str]) -> None:
    assert isinstance(op.kind, Quantize)
    if op.kind.scheme != "div":
        raise op.error(f"scheme '{op.kind.scheme}' has no ONNX form (QuantizeLinear rounds "
                       "x / scale, kiln's 'div')")
    quantize(em, ins[0], _qtype(op.kind.to, "kiln.quantize"), outs)


def _dequantize_op(em: Emitter, op: Op, ins: list[str], outs: list[str]) -> None:
    qdq_node(em, "DequantizeLinear", ins[0], _qtype(op.operands[0].type.dtype,
                                                     "kiln.dequantize"), outs)


def _bias(em: Emitter, op: Op, name: str) -> str:
    """The int32 bias dequantized with scale s_x · s_w (per output channel)."""
    s_x = _qtype(op.operands[0].type.dtype, "input").scale[0]
    s_w = np.asarray(_qtype(op.operands[1].type.dtype, "weight").scale, np.float64)
    channels = op.operands[2].type.shape[0]
    scale = np.broadcast_to(s_x * s_w, (channels,)).astype(np.float32)
    zero = np.zeros(channels, np.int32)
    return em.node("DequantizeLinear", [name, em.const(scale, "bias_scale"),
                                        em.const(zero, "bias_zp")], axis=0)[0]


def _finish(em: Emitter, op: Op, real: str, outs: list[str]) -> None:
    """Clip to the output clamp (real bounds), then QuantizeLinear to the result type."""
    kind = op.kind
    assert isinstance(kind, qnn.RequantOp)
    q = kind.to
    low, high = getattr(kind, "clamp_min", None), getattr(kind, "clamp_max", None)
    if low is not None or high is not None:
        bounds = ["" if b is None else em.const(np.asarray((b - q.zero_point[0]) * q.scale[0],
                                                           np.float32), "clip")
                  for b in (low, high)]
        real = em.node("Clip", [real, *bounds] if bounds[1] else [real, bounds[0]])[0]
    quantize(em, real, q, outs)


def _qconv(em: Emitter, op: Op, ins: list[str], outs: list[str]) -> None:
    kind = op.kind
    assert isinstance(kind, qnn._QConv)
    args = [dequantize(em, ins[0], op.operands[0]), dequantize(em, ins[1], op.operands[1])]
    if len(ins) == 3:
        args.append(_bias(em, op, ins[2]))
    real = em.node("Conv", args, kernel_shape=list(op.operands[1].type.shape[2:]),
                   strides=list(kind.stride), pads=list(kind.padding),
                   dilations=list(kind.dilation), group=kind.groups)[0]
    _finish(em, op, real, outs)


def _qlinear(em: Emitter, op: Op, ins: list[str], outs: list[str]) -> None:
    x, w = (dequantize(em, n, v) for n, v in zip(ins[:2], op.operands[:2]))
    bias = _bias(em, op, ins[2]) if len(ins) == 3 else None
    if op.operands[0].type.rank == 2:
        real = em.node("Gemm", [x, w] if bias is None else [x, w, bias], transB=1)[0]
    else:
        real = em.node("MatMul", [x, em.node("Transpose", [w], perm=[1, 0])[0]])[0]
        real = real if bias is None else em.node("Add", [real, bias])[0]
    _finish(em, op, real, outs)


def _binary(op_type: str) -> Rule:
    """qmatmul (MatMul) and qadd (Add): both operands dequantized."""
    def rule(em: Emitter, op: Op, ins: list[str], outs: list[str]) -> None:
        args = [dequantize(em, n, v) for n, v in zip(ins, op.operands)]
        _finish(em, op, em.node(op_type, args)[0], outs)
    return rule


def _qrescale(em: Emitter, op: Op, ins: list[str], outs: list[str]) -> None:
    _finish(em, op, dequantize(em, ins[0], op.operands[0]), outs)


def _qavg_pool(em: Emitter, op: Op, ins: list[str], outs: list[str]) -> None:
    kind = op.kind
    assert isinstance(kind, qnn_pool.QAvgPool1d | qnn_pool.QAvgPool2d)
    real = em.node("AveragePool", [dequantize(em, ins[0], op.operands[0])],
                   kernel_shape=list(kind.kernel), strides=list(kind.stride),
                   pads=list(kind.padding), ceil_mode=int(kind.ceil_mode),
                   count_include_pad=int(kind.count_include_pad))[0]
    quantize(em, real, _qtype(op.result.type.dtype, op.name), outs)


def _qreduce_mean(em: Emitter, op: Op, ins: list[str], outs: list[str]) -> None:
    real = em.fresh("mean")
    _reduce("ReduceMean")(em, op, [dequantize(em, ins[0], op.operands[0])], [real])
    quantize(em, real, _qtype(op.result.type.dtype, op.name), outs)


QUANT_RULES: dict[type[OpDef], Rule] = {
    Quantize: _quantize_op, Dequantize: _dequantize_op,
    qnn.QConv1d: _qconv, qnn.QConv2d: _qconv, qnn.QLinear: _qlinear,
    qnn.QMatMul: _binary("MatMul"), qnn.QAdd: _binary("Add"), qnn.QRescale: _qrescale,
    qnn_pool.QAvgPool1d: _qavg_pool, qnn_pool.QAvgPool2d: _qavg_pool,
    qnn_pool.QReduceMean: _qreduce_mean,
}
"""Quantized op class → ONNX QDQ export rule (merged into the exporter's table)."""

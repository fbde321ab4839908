"""Export rules: one function per kiln op class, writing ONNX opset-17 nodes.

A rule gets the emitter, the op, its operand names and its result names, and must define every
result name. Shape attributes that ONNX takes as inputs (Reshape's shape, Slice's bounds, ...)
become int64 initializers. Ops without an ONNX counterpart at opset 17 are decomposed
(`rsqrt = 1 / sqrt`, `silu = x * sigmoid(x)`, `gelu` through Erf or Tanh).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from kiln.frontend.onnx_export import Emitter, onnx_elem_type
from kiln.ir.graph import Op
from kiln.ir.ops import elementwise as ew
from kiln.ir.ops import nn_conv, nn_norm, nn_pool, reduce, shape
from kiln.ir.ops.base import OpDef
from kiln.ir.ops.core import Cast

Rule = Callable[[Emitter, Op, list[str], list[str]], None]


def _simple(op_type: str) -> Rule:
    """An op that maps 1:1 onto an ONNX op without attributes."""
    def rule(em: Emitter, op: Op, ins: list[str], outs: list[str]) -> None:
        em.node(op_type, ins, outs)
    return rule


def _scalar(em: Emitter, op: Op, value: float, hint: str = "c") -> str:
    """A scalar initializer with the element type of the op's first operand."""
    return em.const(value, hint, dtype=op.operands[0].type.numpy_dtype)


def _cast(em: Emitter, op: Op, ins: list[str], outs: list[str]) -> None:
    em.node("Cast", ins, outs, to=onnx_elem_type(op.result.type, f"'{op.name}' result"))


def _rsqrt(em: Emitter, op: Op, ins: list[str], outs: list[str]) -> None:
    em.node("Reciprocal", em.node("Sqrt", ins), outs)


def _relu6(em: Emitter, op: Op, ins: list[str], outs: list[str]) -> None:
    em.node("Clip", [ins[0], _scalar(em, op, 0.0, "zero"), _scalar(em, op, 6.0, "six")], outs)


def _silu(em: Emitter, op: Op, ins: list[str], outs: list[str]) -> None:
    em.node("Mul", [ins[0], em.node("Sigmoid", ins)[0]], outs)


def _hardsigmoid(em: Emitter, op: Op, ins: list[str], outs: list[str]) -> None:
    em.node("HardSigmoid", ins, outs, alpha=1.0 / 6.0, beta=0.5)


def _leaky_relu(em: Emitter, op: Op, ins: list[str], outs: list[str]) -> None:
    assert isinstance(op.kind, ew.LeakyRelu)
    em.node("LeakyRelu", ins, outs, alpha=op.kind.slope)


def _gelu(em: Emitter, op: Op, ins: list[str], outs: list[str]) -> None:
    """gelu = x · ½(1 + erf(x/√2)); tanh form: x · ½(1 + tanh(√(2/π)(x + 0.044715x³)))."""
    assert isinstance(op.kind, ew.Gelu)
    x = ins[0]
    if op.kind.approximate == "tanh":
        cube = em.node("Mul", [em.node("Mul", [x, x])[0], x])[0]
        inner = em.node("Add", [x, em.node("Mul", [cube, _scalar(em, op, 0.044715)])[0]])[0]
        scaled = em.node("Mul", [inner, _scalar(em, op, math.sqrt(2.0 / math.pi))])[0]
        core = em.node("Tanh", [scaled])[0]
    else:
        core = em.node("Erf", [em.node("Div", [x, _scalar(em, op, math.sqrt(2.0))])[0]])[0]
    half = em.node("Mul", [em.node("Add", [core, _scalar(em, op, 1.0)])[0],
                           _scalar(em, op, 0.5)])[0]
    em.node("Mul", [x, half], outs)


def _clamp(em: Emitter, op: Op, ins: list[str], outs: list[str]) -> None:
    assert isinstance(op.kind, ew.Clamp)
    low = "" if op.kind.min is None else _scalar(em, op, op.kind.min, "min")
    high = "" if op.kind.max is None else _scalar(em, op, op.kind.max, "max")
    em.node("Clip", [ins[0], low, high] if high else [ins[0], low], outs)


def _conv(em: Emitter, op: Op, ins: list[str], outs: list[str]) -> None:
    kind = op.kind
    assert isinstance(kind, nn_conv.ConvBase)
    extra = {}
    if isinstance(kind, nn_conv.ConvTranspose2d):
        extra["output_padding"] = list(kind.output_padding)
    em.node("ConvTranspose" if extra else "Conv", ins, outs,
            kernel_shape=list(op.operands[1].type.shape[2:]), strides=list(kind.stride),
            pads=list(kind.padding), dilations=list(kind.dilation), group=kind.groups, **extra)


def _linear(em: Emitter, op: Op, ins: list[str], outs: list[str]) -> None:
    """x @ Wᵀ + b: Gemm(transB=1) for 2-D inputs, else MatMul with a transposed weight."""
    if op.operands[0].type.rank == 2:
        em.node("Gemm", ins, outs, transB=1)
        return
    wt = em.node("Transpose", [ins[1]], perm=[1, 0])[0]
    if len(ins) == 2:
        em.node("MatMul", [ins[0], wt], outs)
        return
    em.node("Add", [em.node("MatMul", [ins[0], wt])[0], ins[2]], outs)


def _batch_norm(em: Emitter, op: Op, ins: list[str], outs: list[str]) -> None:
    assert isinstance(op.kind, nn_norm.BatchNorm)
    em.node("BatchNormalization", ins, outs, epsilon=op.kind.eps)


def _layer_norm(em: Emitter, op: Op, ins: list[str], outs: list[str]) -> None:
    assert isinstance(op.kind, nn_norm.LayerNorm)
    x = op.operands[0].type
    inner = x.shape[x.rank - op.kind.normalized_ndim:]
    if len(ins) == 1:
        ins = [*ins, em.const(np.ones(inner, x.numpy_dtype), "ln_scale")]
    em.node("LayerNormalization", ins, outs, axis=-op.kind.normalized_ndim,
            epsilon=op.kind.eps)


def _softmax(em: Emitter, op: Op, ins: list[str], outs: list[str]) -> None:
    assert isinstance(op.kind, nn_norm.Softmax | nn_norm.LogSoftmax)
    op_type = "LogSoftmax" if isinstance(op.kind, nn_norm.LogSoftmax) else "Softmax"
    em.node(op_type, ins, outs, axis=op.kind.axis)


def _lrn(em: Emitter, op: Op, ins: list[str], outs: list[str]) -> None:
    kind = op.kind
    assert isinstance(kind, nn_norm.LocalResponseNorm)
    if kind.size % 2 == 0:
        raise op.error("an even LRN window has no ONNX form (ONNX centres it one channel "
                       "later than torch)")
    em.node("LRN", ins, outs, size=kind.size, alpha=kind.alpha, beta=kind.beta, bias=kind.k)


def _max_pool(em: Emitter, op: Op, ins: list[str], outs: list[str]) -> None:
    kind = op.kind
    assert isinstance(kind, nn_pool.MaxPool1d | nn_pool.MaxPool2d)
    em.node("MaxPool", ins, outs, kernel_shape=list(kind.kernel), strides=list(kind.stride),
            pads=list(kind.padding), dilations=list(kind.dilation), ceil_mode=int(kind.ceil_mode))


def _avg_pool(em: Emitter, op: Op, ins: list[str], outs: list[str]) -> None:
    kind = op.kind
    assert isinstance(kind, nn_pool.AvgPool1d | nn_pool.AvgPool2d)
    em.node("AveragePool", ins, outs, kernel_shape=list(kind.kernel),
            strides=list(kind.stride), pads=list(kind.padding), ceil_mode=int(kind.ceil_mode),
            count_include_pad=int(kind.count_include_pad))


def _adaptive_avg_pool(em: Emitter, op: Op, ins: list[str], outs: list[str]) -> None:
    """Global pooling, or a plain AveragePool when every input size divides evenly."""
    sizes = op.operands[0].type.shape[2:]
    out = op.result.type.shape[2:]
    if all(o == 1 for o in out):
        em.node("GlobalAveragePool", ins, outs)
        return
    if any(s % o for s, o in zip(sizes, out)):
        raise op.error(f"adaptive pooling from {list(sizes)} to {list(out)} has no ONNX form "
                       "(the sizes do not divide evenly)")
    kernel = [s // o for s, o in zip(sizes, out)]
    em.node("AveragePool", ins, outs, kernel_shape=kernel, strides=kernel)


def _reshape(em: Emitter, op: Op, ins: list[str], outs: list[str]) -> None:
    em.node("Reshape", [ins[0], em.ints(op.result.type.shape, "shape")], outs)


def _transpose(em: Emitter, op: Op, ins: list[str], outs: list[str]) -> None:
    assert isinstance(op.kind, shape.Transpose)
    em.node("Transpose", ins, outs, perm=list(op.kind.perm))


def _concat(em: Emitter, op: Op, ins: list[str], outs: list[str]) -> None:
    assert isinstance(op.kind, shape.Concat)
    em.node("Concat", ins, outs, axis=op.kind.axis)


def _split(em: Emitter, op: Op, ins: list[str], outs: list[str]) -> None:
    assert isinstance(op.kind, shape.Split)
    em.node("Split", [ins[0], em.ints(op.kind.sizes, "split")], outs, axis=op.kind.axis)


def _slice(em: Emitter, op: Op, ins: list[str], outs: list[str]) -> None:
    kind = op.kind
    assert isinstance(kind, shape.Slice)
    bounds = [em.ints(v, n) for v, n in ((kind.starts, "starts"), (kind.ends, "ends"),
                                         (kind.axes, "axes"), (kind.steps, "steps"))]
    em.node("Slice", [ins[0], *bounds], outs)


def _pad(em: Emitter, op: Op, ins: list[str], outs: list[str]) -> None:
    kind = op.kind
    assert isinstance(kind, shape.Pad)
    args = [ins[0], em.ints(kind.pads, "pads")]
    if kind.mode == "constant":
        args.append(_scalar(em, op, kind.value, "pad_value"))
    em.node("Pad", args, outs, mode=kind.mode)


def _axes_op(op_type: str) -> Rule:
    def rule(em: Emitter, op: Op, ins: list[str], outs: list[str]) -> None:
        assert isinstance(op.kind, shape.Squeeze | shape.Unsqueeze)
        em.node(op_type, [ins[0], em.ints(op.kind.axes, "axes")], outs)
    return rule


def _expand(em: Emitter, op: Op, ins: list[str], outs: list[str]) -> None:
    em.node("Expand", [ins[0], em.ints(op.result.type.shape, "shape")], outs)


def _reduce(op_type: str) -> Rule:
    """Reduce*: ReduceSum takes axes as an input at opset 17, the others as an attribute."""
    def rule(em: Emitter, op: Op, ins: list[str], outs: list[str]) -> None:
        kind = op.kind
        assert isinstance(kind, reduce.ReduceBase)
        keep = int(kind.keepdims)
        if op_type == "ReduceSum":
            em.node(op_type, [ins[0], em.ints(kind.axes, "axes")], outs, keepdims=keep)
        else:
            em.node(op_type, ins, outs, axes=list(kind.axes), keepdims=keep)
    return rule


_SIMPLE: dict[type[OpDef], str] = {
    ew.Add: "Add", ew.Sub: "Sub", ew.Mul: "Mul", ew.Div: "Div", ew.Pow: "Pow",
    ew.Maximum: "Max", ew.Minimum: "Min", ew.Neg: "Neg", ew.Abs: "Abs", ew.Sqrt: "Sqrt",
    ew.Reciprocal: "Reciprocal", ew.Exp: "Exp", ew.Log: "Log", ew.Erf: "Erf", ew.Relu: "Relu",
    ew.Sigmoid: "Sigmoid", ew.Tanh: "Tanh", ew.Hardswish: "HardSwish",
    nn_conv.MatMul: "MatMul", shape.Identity: "Identity", shape.Dropout: "Identity",
}

RULES: dict[type[OpDef], Rule] = {
    **{cls: _simple(op_type) for cls, op_type in _SIMPLE.items()},
    Cast: _cast, ew.Rsqrt: _rsqrt, ew.Relu6: _relu6, ew.Silu: _silu,
    ew.Hardsigmoid: _hardsigmoid, ew.LeakyRelu: _leaky_relu, ew.Gelu: _gelu, ew.Clamp: _clamp,
    nn_conv.Conv1d: _conv, nn_conv.Conv2d: _conv, nn_conv.ConvTranspose2d: _conv,
    nn_conv.Linear: _linear,
    nn_norm.BatchNorm: _batch_norm, nn_norm.LayerNorm: _layer_norm,
    nn_norm.Softmax: _softmax, nn_norm.LogSoftmax: _softmax, nn_norm.LocalResponseNorm: _lrn,
    nn_pool.MaxPool1d: _max_pool, nn_pool.MaxPool2d: _max_pool,
    nn_pool.AvgPool1d: _avg_pool, nn_pool.AvgPool2d: _avg_pool,
    nn_pool.AdaptiveAvgPool1d: _adaptive_avg_pool, nn_pool.AdaptiveAvgPool2d: _adaptive_avg_pool,
    shape.Reshape: _reshape, shape.Flatten: _reshape, shape.Transpose: _transpose,
    shape.Concat: _concat, shape.Split: _split, shape.Slice: _slice, shape.Pad: _pad,
    shape.Squeeze: _axes_op("Squeeze"), shape.Unsqueeze: _axes_op("Unsqueeze"),
    shape.Expand: _expand,
    reduce.ReduceMean: _reduce("ReduceMean"), reduce.ReduceSum: _reduce("ReduceSum"),
    reduce.ReduceMax: _reduce("ReduceMax"), reduce.ReduceMin: _reduce("ReduceMin"),
}
"""kiln op class → ONNX export rule (weights, constants and return are handled by the driver)."""


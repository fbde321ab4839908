"""ONNX → kiln converters: elementwise math, activations, Gemm/MatMul, softmax, casts.

Each converter is a function of a `Node` returning the node's outputs; `CONVERTERS` maps ONNX op
types to them. ONNX activations kiln has no op for are decomposed into kiln ops with the
algebra in the docstring, so passes and targets see only the catalog of docs/ops.md.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from kiln.frontend import onnx_params as params
from kiln.frontend.onnx_node import Converter, Node, Result, numpy_dtype
from kiln.ir.graph import Value
from kiln.ir.ops import elementwise as ew
from kiln.ir.ops.base import OpDef
from kiln.ir.ops.core import Cast
from kiln.ir.ops.nn_conv import Linear, MatMul
from kiln.ir.ops.nn_norm import LogSoftmax, Softmax
from kiln.ir.ops.shape import Reshape, Transpose
from kiln.ir.types import dtype_from_numpy

_BINARY: dict[str, Callable[[], OpDef]] = {
    "Add": ew.Add, "Sub": ew.Sub, "Mul": ew.Mul, "Div": ew.Div, "Pow": ew.Pow,
    "Max": ew.Maximum, "Min": ew.Minimum, "Sum": ew.Add, "Mean": ew.Add,
}
_UNARY: dict[str, Callable[[], OpDef]] = {
    "Neg": ew.Neg, "Abs": ew.Abs, "Sqrt": ew.Sqrt, "Exp": ew.Exp, "Log": ew.Log, "Erf": ew.Erf,
    "Reciprocal": ew.Reciprocal, "Relu": ew.Relu, "Sigmoid": ew.Sigmoid, "Tanh": ew.Tanh,
    "HardSwish": ew.Hardswish,
}


def _rhs(node: Node, index: int, lhs: Value) -> Value:
    """Operand `index` as the rhs of a binary op: legacy-broadcast aligned, dtype of `lhs`."""
    rhs = node.value(index)
    shape = params.legacy_rhs_shape(node, lhs.type.rank, rhs.type.shape)
    if shape != rhs.type.shape:
        rhs = node.emit(Reshape(shape=shape), rhs)
    if rhs.type.dtype != lhs.type.dtype and node.op_type == "Pow":
        rhs = node.emit(Cast(to=lhs.type.dtype), rhs)
    return rhs


def _binary(node: Node) -> Result:
    kind = _BINARY[node.op_type]()
    out = node.value(0)
    for index in range(1, len(node.operands)):
        out = node.emit(kind, out, _rhs(node, index, out))
    if node.op_type == "Mean" and len(node.operands) > 1:
        out = node.emit(ew.Div(), out, node.literal(len(node.operands), out))
    return out


def _unary(node: Node) -> Result:
    return node.emit(_UNARY[node.op_type](), node.value(0))


def _negative_part(node: Node, x: Value, alpha: float, scale: float = 1.0) -> Value:
    """alpha * (exp(min(x, 0) / scale) - 1): the negative branch of ELU-like activations."""
    low = node.emit(ew.Minimum(), x, node.literal(0.0, x))
    if scale != 1.0:
        low = node.emit(ew.Div(), low, node.literal(scale, x))
    expm1 = node.emit(ew.Sub(), node.emit(ew.Exp(), low), node.literal(1.0, x))
    return node.emit(ew.Mul(), expm1, node.literal(alpha, x))


def _elu(node: Node) -> Result:
    """elu(x) = relu(x) + alpha * (exp(min(x, 0)) - 1); selu scales it by gamma."""
    x = node.value(0)
    if node.op_type == "Selu":
        alpha = float(node.attr("alpha", 1.67326319217681884765625))
        gamma = float(node.attr("gamma", 1.05070102214813232421875))
    else:
        alpha, gamma = float(node.attr("alpha", 1.0)), 1.0
    scale = alpha if node.op_type == "Celu" else 1.0
    out = node.emit(ew.Add(), node.emit(ew.Relu(), x), _negative_part(node, x, alpha, scale))
    return node.emit(ew.Mul(), out, node.literal(gamma, x)) if gamma != 1.0 else out


def _prelu(node: Node) -> Result:
    """prelu(x, slope) = relu(x) + slope * min(x, 0)."""
    x = node.value(0)
    slope = _rhs(node, 1, x)
    if node.opset < 7 and slope.type.rank == 1 and x.type.rank > 2 and slope.type.numel > 1:
        slope = node.emit(Reshape(shape=(slope.type.numel,) + (1,) * (x.type.rank - 2)), slope)
    low = node.emit(ew.Minimum(), x, node.literal(0.0, x))
    return node.emit(ew.Add(), node.emit(ew.Relu(), x), node.emit(ew.Mul(), low, slope))


def _softplus(node: Node) -> Result:
    """softplus(x) = relu(x) + log(1 + exp(-|x|)) (the overflow-free form of log(1 + e^x))."""
    x = node.value(0)
    tail = node.emit(ew.Exp(), node.emit(ew.Neg(), node.emit(ew.Abs(), x)))
    tail = node.emit(ew.Log(), node.emit(ew.Add(), tail, node.literal(1.0, x)))
    return node.emit(ew.Add(), node.emit(ew.Relu(), x), tail)


def _softsign(node: Node) -> Result:
    """softsign(x) = x / (1 + |x|)."""
    x = node.value(0)
    den = node.emit(ew.Add(), node.emit(ew.Abs(), x), node.literal(1.0, x))
    return node.emit(ew.Div(), x, den)


def _hard_sigmoid(node: Node) -> Result:
    """clamp(alpha * x + beta, 0, 1); torch's (alpha 1/6, beta 1/2) is kiln.hardsigmoid."""
    x = node.value(0)
    alpha, beta = float(node.attr("alpha", 0.2)), float(node.attr("beta", 0.5))
    if math.isclose(alpha, 1 / 6, rel_tol=1e-6) and beta == 0.5:
        return node.emit(ew.Hardsigmoid(), x)
    lin = node.emit(ew.Add(), node.emit(ew.Mul(), x, node.literal(alpha, x)),
                    node.literal(beta, x))
    return node.emit(ew.Clamp(min=0.0, max=1.0), lin)


def _clip(node: Node) -> Result:
    x = node.value(0)
    if node.opset < 11:
        low, high = node.attr("min"), node.attr("max")
        return node.emit(ew.Clamp(min=_bound(low), max=_bound(high)), x)
    bounds: list[float | None] = []
    for index, kind in ((1, ew.Maximum), (2, ew.Minimum)):
        if node.has(index) and not node.is_const(index):
            x = node.emit(kind(), x, node.value(index))
            bounds.append(None)
        else:
            bounds.append(float(node.const(index).reshape(())) if node.has(index) else None)
    if bounds == [None, None]:
        return x
    return node.emit(ew.Clamp(min=bounds[0], max=bounds[1]), x)


def _bound(value: float | None) -> float | None:
    return None if value is None or math.isinf(value) else float(value)


def _leaky_relu(node: Node) -> Result:
    return node.emit(ew.LeakyRelu(slope=float(node.attr("alpha", 0.01))), node.value(0))


def _gelu(node: Node) -> Result:
    return node.emit(ew.Gelu(approximate=str(node.attr("approximate", "none"))), node.value(0))


def _softmax(node: Node) -> Result:
    """Opset < 13 coerces to 2-D at `axis` (default 1); opset ≥ 13 is per axis (default -1)."""
    x = node.value(0)
    kind = Softmax if node.op_type == "Softmax" else LogSoftmax
    rank = x.type.rank
    if node.opset >= 13:
        return node.emit(kind(axis=params.norm_axis(node, int(node.attr("axis", -1)), rank)), x)
    axis = params.norm_axis(node, int(node.attr("axis", 1)), rank)
    if axis == rank - 1:
        return node.emit(kind(axis=axis), x)
    flat = (math.prod(x.type.shape[:axis]), math.prod(x.type.shape[axis:]))
    y = node.emit(kind(axis=1), node.emit(Reshape(shape=flat), x))
    return node.emit(Reshape(shape=x.type.shape), y)


def _matmul(node: Node) -> Result:
    return node.emit(MatMul(), node.value(0), node.value(1))


def _gemm(node: Node) -> Result:
    """alpha * A' @ B' + beta * C: kiln.linear when it fits (the usual transB=1 layer)."""
    alpha, beta = float(node.attr("alpha", 1.0)), float(node.attr("beta", 1.0))
    a = node.value(0)
    if node.attr("transA", 0):
        a = node.emit(Transpose(perm=(1, 0)), a)
    weight = _gemm_weight(node)
    bias = _gemm_bias(node, weight.type.shape[0], beta)
    if alpha == 1.0 and (bias is not None or not node.has(2)):
        return node.emit(Linear(), a, weight, bias)
    out = _scaled(node, node.emit(Linear(), a, weight), alpha)
    if node.has(2):
        out = node.emit(ew.Add(), out, _scaled(node, node.value(2), beta))
    return out


def _gemm_weight(node: Node) -> Value:
    """B as kiln.linear's (out, in) weight: B itself when transB=1, else Bᵀ (folded if known)."""
    if node.attr("transB", 0):
        return node.value(1)
    if node.is_const(1):
        return node.array_value(f"{node.input_name(1)}.T", node.const(1).T.copy())
    return node.emit(Transpose(perm=(1, 0)), node.value(1))


def _gemm_bias(node: Node, n: int, beta: float) -> Value | None:
    """A constant C that is one row of N values, scaled by beta: kiln.linear's bias."""
    if not node.is_const(2):
        return None
    bias = node.const(2)
    if bias.size != n or (bias.ndim and bias.shape[-1] != n):
        return None
    if bias.shape == (n,) and beta == 1.0:
        return node.value(2)
    scaled = (bias.reshape(n) * beta).astype(bias.dtype)
    return node.array_value(f"{node.input_name(2)}.bias", scaled)


def _scaled(node: Node, value: Value, factor: float) -> Value:
    return value if factor == 1.0 else node.emit(ew.Mul(), value, node.literal(factor, value))


def _cast(node: Node) -> Result:
    x = node.value(0)
    to = dtype_from_numpy(numpy_dtype(int(node.attr("to"))))
    return x if to == x.type.dtype else node.emit(Cast(to=to), x)


def _passthrough(node: Node) -> Result:
    if node.op_type == "Dropout" and node.has(2) and node.is_const(2) and node.const(2).any():
        raise node.unsupported("training_mode=true is not supported (kiln runs inference)")
    return node.value(0)


CONVERTERS: dict[str, Converter] = {
    **{op: _binary for op in _BINARY},
    **{op: _unary for op in _UNARY},
    "Elu": _elu, "Selu": _elu, "Celu": _elu,
    "PRelu": _prelu,
    "Softplus": _softplus,
    "Softsign": _softsign,
    "HardSigmoid": _hard_sigmoid,
    "LeakyRelu": _leaky_relu,
    "Gelu": _gelu,
    "Clip": _clip,
    "Softmax": _softmax, "LogSoftmax": _softmax,
    "MatMul": _matmul,
    "Gemm": _gemm,
    "Cast": _cast,
    "Identity": _passthrough, "Dropout": _passthrough,
}
"""ONNX op type → converter for the math family."""

"""TVM lowering rules for kiln's math ops: elementwise, activations, reductions, normalizations.

Each rule takes the kiln op and its already-lowered operands (Relax expressions) and returns one
Relax expression built from `relax.op.*`; the Relax `BlockBuilder` in `tvm_lower.py` names and
emits it. The formulas follow the ops' NumPy references (`kiln/ir/ops/elementwise.py`,
`nn_norm.py`, `reduce.py`), so that TVM's legalized kernels agree with `kiln.interpret`.

This module imports TVM at the top: only `tvm_lower.py` imports it, and only after the target
has checked that TVM is installed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import numpy as np
from tvm import relax

from kiln.ir.graph import Op
from kiln.ir.ops import elementwise as ew
from kiln.ir.ops.base import OpDef
from kiln.ir.ops.core import Cast
from kiln.ir.ops.nn_norm import BatchNorm, LayerNorm, LocalResponseNorm, LogSoftmax, Softmax
from kiln.ir.ops.reduce import ReduceBase, ReduceMax, ReduceMean, ReduceMin, ReduceSum

Expr = Any
"""A `relax.Expr` (TVM ships no type stubs, so it is `Any` to the type checker)."""
Rule = Callable[[Op, Sequence[Expr]], Expr]
"""Lower one kiln op, given its lowered operands, to one Relax expression."""

rop = relax.op
K = TypeVar("K", bound=OpDef)


def kind(op: Op, cls: type[K]) -> K:
    """`op.kind` as `cls`: the rule table guarantees the class, the check tells the type
    checker."""
    assert isinstance(op.kind, cls)
    return op.kind


def scalar(value: float) -> Expr:
    """A float32 scalar constant."""
    return relax.const(float(value), "float32")


def typed(expr: Expr) -> Expr:
    """`expr` with its Relax type filled in, for ops that inspect an operand's shape when they
    are built (reshape, strided_slice): the builder that `tvm_lower` is running normalizes it."""
    return relax.BlockBuilder.current().normalize(expr)


def _binary(fn: Callable[[Expr, Expr], Expr]) -> Rule:
    """NumPy-broadcasting binary op: Relax's binary ops broadcast the same way."""
    return lambda op, args: fn(args[0], args[1])


def _unary(fn: Callable[[Expr], Expr]) -> Rule:
    return lambda op, args: fn(args[0])


def _hardsigmoid(x: Expr) -> Expr:
    """clamp(x / 6 + 1/2, 0, 1)."""
    return rop.clip(rop.add(rop.divide(x, scalar(6.0)), scalar(0.5)), 0.0, 1.0)


def _hardswish(x: Expr) -> Expr:
    """x * relu6(x + 3) / 6."""
    return rop.divide(rop.multiply(x, rop.clip(rop.add(x, scalar(3.0)), 0.0, 6.0)), scalar(6.0))


def _leaky_relu(op: Op, args: Sequence[Expr]) -> Expr:
    return rop.nn.leakyrelu(args[0], float(kind(op, ew.LeakyRelu).slope))


def _gelu(op: Op, args: Sequence[Expr]) -> Expr:
    """Exact (erf) or tanh-approximated GELU, as the op's `approximate` says."""
    if kind(op, ew.Gelu).approximate == "tanh":
        return rop.nn.gelu_tanh(args[0])
    return rop.nn.gelu(args[0])


def _clamp(op: Op, args: Sequence[Expr]) -> Expr:
    """min(max(x, min), max), either bound optional (so no clip with infinities)."""
    k, out = kind(op, ew.Clamp), args[0]
    if k.min is not None:
        out = rop.maximum(out, scalar(k.min))
    if k.max is not None:
        out = rop.minimum(out, scalar(k.max))
    return out


def _cast(op: Op, args: Sequence[Expr]) -> Expr:
    """f32 → f32 only (the target takes fp32 IR): the operand itself."""
    return args[0]


def _softmax(op: Op, args: Sequence[Expr]) -> Expr:
    k = op.kind
    assert isinstance(k, (Softmax, LogSoftmax))
    fn = rop.nn.log_softmax if isinstance(k, LogSoftmax) else rop.nn.softmax
    return fn(args[0], axis=int(k.axis))


def _layer_norm(op: Op, args: Sequence[Expr]) -> Expr:
    """Over the last `normalized_ndim` axes; a missing weight/bias is scale 1 / shift 0."""
    k, x = kind(op, LayerNorm), op.operands[0].type
    n = k.normalized_ndim
    axes = list(range(x.rank - n, x.rank))
    inner = x.shape[x.rank - n:]
    gamma = args[1] if len(args) > 1 else relax.const(_filled(inner, 1.0))
    beta = args[2] if len(args) > 2 else relax.const(_filled(inner, 0.0))
    return rop.nn.layer_norm(args[0], gamma, beta, axes=axes, epsilon=float(k.eps))


def _filled(shape: tuple[int, ...], value: float) -> np.ndarray:
    return np.full(shape, value, np.float32)


def _batch_norm(op: Op, args: Sequence[Expr]) -> Expr:
    """x * s + (bias - mean * s) with s = scale / sqrt(var + eps), per channel (axis 1)."""
    x, scale, bias, mean, var = args
    rank = op.operands[0].type.rank
    inv = rop.divide(scale, rop.sqrt(rop.add(var, scalar(kind(op, BatchNorm).eps))))
    shift = rop.subtract(bias, rop.multiply(mean, inv))
    shape = [1, -1] + [1] * (rank - 2)
    return rop.add(rop.multiply(x, rop.reshape(typed(inv), shape)),
                   rop.reshape(typed(shift), shape))


def _local_response_norm(op: Op, args: Sequence[Expr]) -> Expr:
    """x / (k + alpha * mean of x² over the channel window) ** beta; the window sum is `size`
    shifted slices of the zero-padded squares (summed one by one, like the reference)."""
    k = kind(op, LocalResponseNorm)
    shape = op.operands[0].type.shape
    rank, channels = len(shape), shape[1]
    width = [0, 0, k.size // 2, (k.size - 1) // 2] + [0, 0] * (rank - 2)
    squares = typed(rop.nn.pad(rop.multiply(args[0], args[0]), width))
    window = rop.strided_slice(squares, [1], [0], [channels])
    for offset in range(1, k.size):
        window = rop.add(window, rop.strided_slice(squares, [1], [offset], [offset + channels]))
    scaled = rop.add(scalar(k.k), rop.multiply(window, scalar(k.alpha / k.size)))
    return rop.divide(args[0], rop.power(scaled, scalar(k.beta)))


def _reduce(fn: Callable[..., Expr]) -> Rule:
    def rule(op: Op, args: Sequence[Expr]) -> Expr:
        k = kind(op, ReduceBase)
        return fn(args[0], axis=list(k.axes), keepdims=bool(k.keepdims))

    return rule


MATH_RULES: dict[type[OpDef], Rule] = {
    ew.Add: _binary(rop.add), ew.Sub: _binary(rop.subtract), ew.Mul: _binary(rop.multiply),
    ew.Div: _binary(rop.divide), ew.Pow: _binary(rop.power),
    ew.Maximum: _binary(rop.maximum), ew.Minimum: _binary(rop.minimum),
    ew.Neg: _unary(rop.negative), ew.Abs: _unary(rop.abs), ew.Sqrt: _unary(rop.sqrt),
    ew.Rsqrt: _unary(rop.rsqrt), ew.Reciprocal: _unary(lambda x: rop.divide(scalar(1.0), x)),
    ew.Exp: _unary(rop.exp), ew.Log: _unary(rop.log), ew.Erf: _unary(rop.erf),
    ew.Relu: _unary(rop.nn.relu), ew.Relu6: _unary(lambda x: rop.clip(x, 0.0, 6.0)),
    ew.Sigmoid: _unary(rop.sigmoid), ew.Tanh: _unary(rop.tanh), ew.Silu: _unary(rop.nn.silu),
    ew.Hardsigmoid: _unary(_hardsigmoid), ew.Hardswish: _unary(_hardswish),
    ew.LeakyRelu: _leaky_relu, ew.Gelu: _gelu, ew.Clamp: _clamp, Cast: _cast,
    Softmax: _softmax, LogSoftmax: _softmax, LayerNorm: _layer_norm, BatchNorm: _batch_norm,
    LocalResponseNorm: _local_response_norm,
    ReduceSum: _reduce(rop.sum), ReduceMean: _reduce(rop.mean),
    ReduceMax: _reduce(rop.max), ReduceMin: _reduce(rop.min),
}
"""Op class → rule for the math families."""

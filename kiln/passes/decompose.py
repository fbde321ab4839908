"""Decomposition: ops a target lacks rewritten into primitive ops it has.

`decompose{ops=gelu|layer_norm|softmax}` rewrites just the listed ops (names with or without the
`kiln.` prefix; `all`, the default, means every op of the table). `DECOMPOSITIONS` maps an op
class to a function that builds the replacement before the op and returns its value (None when
this instance has no cheap exact form: it then stays). Each function's docstring gives its
formula. The replacement may itself contain listed ops (hardswish → clamp → maximum/minimum):
the rewrite runs to a fixed point.

Numerics: the replacements compute in the operand dtype, where the op references round once
from float64, so float32 results differ by a few ulps; every decomposition stays within 1e-5
relative (max|Δ| / max|ref|) of the op on random inputs (`tests/unit/test_decompose.py`).
Exact (bit-identical): relu, relu6, clamp, leaky_relu, conv1d, max_pool1d.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from kiln.errors import PipelineError
from kiln.ir.builder import Builder
from kiln.ir.graph import Module, Op, Value
from kiln.ir.ops import elementwise as ew
from kiln.ir.ops.base import OpDef
from kiln.ir.ops.nn_conv import Conv1d, Conv2d, Linear, MatMul
from kiln.ir.ops.nn_norm import BatchNorm, LayerNorm, LocalResponseNorm, LogSoftmax, Softmax
from kiln.ir.ops.nn_pool import (
    AdaptiveAvgPool1d,
    AdaptiveAvgPool2d,
    AvgPool1d,
    AvgPool2d,
    MaxPool1d,
    MaxPool2d,
)
from kiln.ir.ops.reduce import ReduceMax, ReduceMean, ReduceSum
from kiln.ir.ops.rules import last_axis
from kiln.ir.ops.shape import Reshape, Transpose
from kiln.ir.rewriter import Rewriter, apply_patterns
from kiln.passes.registry import PassContext, register_pass

Decomposition = Callable[[Op, Builder], "Value | None"]


def scalar(b: Builder, like: Value, value: float) -> Value:
    """A rank-0 constant of `like`'s dtype (it broadcasts against anything)."""
    return b.constant(np.array(value, dtype=like.type.numpy_dtype))


def _binary(b: Builder, kind: OpDef, lhs: Value, rhs: Value | float) -> Value:
    other = rhs if isinstance(rhs, Value) else scalar(b, lhs, rhs)
    return b.add(kind, lhs, other)


def _clamp(b: Builder, x: Value, low: float | None, high: float | None) -> Value:
    return b.add(ew.Clamp(min=low, max=high), x)


# -- activations -----------------------------------------------------------------------------------
def gelu(op: Op, b: Builder) -> Value:
    """exact: 0.5·x·(1 + erf(x/√2));  tanh: 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))."""
    assert isinstance(op.kind, ew.Gelu)
    x = op.operands[0]
    if op.kind.approximate == "tanh":
        cube = b.add(ew.Mul(), b.add(ew.Mul(), x, x), x)
        inner = b.add(ew.Add(), x, _binary(b, ew.Mul(), cube, 0.044715))
        core = b.add(ew.Tanh(), _binary(b, ew.Mul(), inner, math.sqrt(2.0 / math.pi)))
    else:
        core = b.add(ew.Erf(), _binary(b, ew.Mul(), x, 1.0 / math.sqrt(2.0)))
    half_x = _binary(b, ew.Mul(), x, 0.5)
    return b.add(ew.Mul(), half_x, _binary(b, ew.Add(), core, 1.0))


def sigmoid(op: Op, b: Builder) -> Value:
    """1 / (1 + exp(−x))."""
    x = op.operands[0]
    denominator = _binary(b, ew.Add(), b.add(ew.Exp(), b.add(ew.Neg(), x)), 1.0)
    return b.add(ew.Div(), scalar(b, x, 1.0), denominator)


def silu(op: Op, b: Builder) -> Value:
    """x / (1 + exp(−x))."""
    x = op.operands[0]
    return b.add(ew.Div(), x, _binary(b, ew.Add(), b.add(ew.Exp(), b.add(ew.Neg(), x)), 1.0))


def hardswish(op: Op, b: Builder) -> Value:
    """x · clamp(x + 3, 0, 6) / 6."""
    x = op.operands[0]
    gate = _clamp(b, _binary(b, ew.Add(), x, 3.0), 0.0, 6.0)
    return _binary(b, ew.Div(), b.add(ew.Mul(), x, gate), 6.0)


def hardsigmoid(op: Op, b: Builder) -> Value:
    """clamp(x / 6 + 1/2, 0, 1)."""
    x = op.operands[0]
    return _clamp(b, _binary(b, ew.Add(), _binary(b, ew.Div(), x, 6.0), 0.5), 0.0, 1.0)


def relu(op: Op, b: Builder) -> Value:
    """maximum(x, 0)."""
    return _binary(b, ew.Maximum(), op.operands[0], 0.0)


def relu6(op: Op, b: Builder) -> Value:
    """minimum(maximum(x, 0), 6)."""
    return _binary(b, ew.Minimum(), _binary(b, ew.Maximum(), op.operands[0], 0.0), 6.0)


def clamp(op: Op, b: Builder) -> Value:
    """minimum(maximum(x, min), max), each side only when its bound is given."""
    assert isinstance(op.kind, ew.Clamp)
    out = op.operands[0]
    if op.kind.min is not None:
        out = _binary(b, ew.Maximum(), out, op.kind.min)
    if op.kind.max is not None:
        out = _binary(b, ew.Minimum(), out, op.kind.max)
    return out


def leaky_relu(op: Op, b: Builder) -> Value | None:
    """maximum(x, slope·x), valid for 0 ≤ slope ≤ 1 (other slopes stay)."""
    assert isinstance(op.kind, ew.LeakyRelu)
    if not 0.0 <= op.kind.slope <= 1.0:
        return None
    x = op.operands[0]
    return b.add(ew.Maximum(), x, _binary(b, ew.Mul(), x, op.kind.slope))


# -- normalizations --------------------------------------------------------------------------------
def softmax(op: Op, b: Builder) -> Value:
    """e / reduce_sum(e), e = exp(x − reduce_max(x)) along the axis (kept dims)."""
    assert isinstance(op.kind, Softmax)
    x = op.operands[0]
    axes = (last_axis("axis", op.kind.axis, x.type.rank),)
    shifted = b.add(ew.Sub(), x, b.add(ReduceMax(axes=axes, keepdims=True), x))
    e = b.add(ew.Exp(), shifted)
    return b.add(ew.Div(), e, b.add(ReduceSum(axes=axes, keepdims=True), e))


def log_softmax(op: Op, b: Builder) -> Value:
    """d − log(reduce_sum(exp(d))), d = x − reduce_max(x) along the axis (kept dims)."""
    assert isinstance(op.kind, LogSoftmax)
    x = op.operands[0]
    axes = (last_axis("axis", op.kind.axis, x.type.rank),)
    shifted = b.add(ew.Sub(), x, b.add(ReduceMax(axes=axes, keepdims=True), x))
    total = b.add(ReduceSum(axes=axes, keepdims=True), b.add(ew.Exp(), shifted))
    return b.add(ew.Sub(), shifted, b.add(ew.Log(), total))


def layer_norm(op: Op, b: Builder) -> Value:
    """d · rsqrt(mean(d²) + eps) · weight + bias, d = x − mean(x) over the normalized dims."""
    assert isinstance(op.kind, LayerNorm)
    x = op.operands[0]
    rank = x.type.rank
    axes = tuple(range(rank - op.kind.normalized_ndim, rank))
    centered = b.add(ew.Sub(), x, b.add(ReduceMean(axes=axes, keepdims=True), x))
    variance = b.add(ReduceMean(axes=axes, keepdims=True), b.add(ew.Mul(), centered, centered))
    inv = b.add(ew.Rsqrt(), _binary(b, ew.Add(), variance, op.kind.eps))
    out = b.add(ew.Mul(), centered, inv)
    for kind, param in zip((ew.Mul(), ew.Add()), op.operands[1:]):
        out = b.add(kind, out, param)
    return out


def batch_norm(op: Op, b: Builder) -> Value:
    """x · s + (bias − mean · s), s = scale · rsqrt(var + eps), both reshaped to (C, 1, ...)."""
    assert isinstance(op.kind, BatchNorm)
    x, scale, bias, mean, var = op.operands
    s = b.add(ew.Mul(), scale, b.add(ew.Rsqrt(), _binary(b, ew.Add(), var, op.kind.eps)))
    t = b.add(ew.Sub(), bias, b.add(ew.Mul(), mean, s))
    shape = (x.type.shape[1],) + (1,) * (x.type.rank - 2)
    scaled = b.add(ew.Mul(), x, b.add(Reshape(shape=shape), s))
    return b.add(ew.Add(), scaled, b.add(Reshape(shape=shape), t))


def local_response_norm(op: Op, b: Builder) -> Value:
    """x / (k + alpha · avg_pool(x², size channels, zero padded)) ** beta (torch's formula);
    the channel window is an avg_pool2d over (N, 1, C, spatial) with count_include_pad."""
    kind = op.kind
    assert isinstance(kind, LocalResponseNorm)
    x = op.operands[0]
    n, c, *spatial = x.type.shape
    planes = b.add(Reshape(shape=(n, 1, c, math.prod(spatial))), b.add(ew.Mul(), x, x))
    pads = (kind.size // 2, 0, (kind.size - 1) // 2, 0)
    window = b.add(AvgPool2d(kernel=(kind.size, 1), stride=(1, 1), padding=pads), planes)
    mean = b.add(Reshape(shape=x.type.shape), window)
    base = _binary(b, ew.Add(), _binary(b, ew.Mul(), mean, kind.alpha), kind.k)
    return b.add(ew.Div(), x, _binary(b, ew.Pow(), base, kind.beta))


# -- layers ----------------------------------------------------------------------------------------
def linear(op: Op, b: Builder) -> Value:
    """matmul(x, transpose(w)) + bias."""
    x, w = op.operands[:2]
    out = b.add(MatMul(), x, b.add(Transpose(perm=(1, 0)), w))
    return b.add(ew.Add(), out, op.operands[2]) if len(op.operands) == 3 else out


def _lifted(x: Value, b: Builder) -> Value:
    """(N, C, L) → (N, C, 1, L)."""
    n, c, length = x.type.shape
    return b.add(Reshape(shape=(n, c, 1, length)), x)


def _lowered(y: Value, b: Builder) -> Value:
    """(N, C, 1, L) → (N, C, L)."""
    n, c, _, length = y.type.shape
    return b.add(Reshape(shape=(n, c, length)), y)


def conv1d(op: Op, b: Builder) -> Value:
    """reshape(conv2d(x as (N, C, 1, L), w as (O, I, 1, K), stride (1, s), ...), (N, O, L'))."""
    kind = op.kind
    assert isinstance(kind, Conv1d)
    (lo, hi) = kind.padding
    conv = Conv2d(stride=(1, *kind.stride), padding=(0, lo, 0, hi), dilation=(1, *kind.dilation),
                  groups=kind.groups)
    o, i, k = op.operands[1].type.shape
    w = b.add(Reshape(shape=(o, i, 1, k)), op.operands[1])
    y = b.add(conv, _lifted(op.operands[0], b), w, *op.operands[2:])
    return _lowered(y, b)


def max_pool1d(op: Op, b: Builder) -> Value:
    """max_pool2d over (N, C, 1, L) with a (1, k) window, reshaped back."""
    kind = op.kind
    assert isinstance(kind, MaxPool1d)
    lo, hi = kind.padding
    pool = MaxPool2d(kernel=(1, *kind.kernel), stride=(1, *kind.stride), padding=(0, lo, 0, hi),
                     dilation=(1, *kind.dilation), ceil_mode=kind.ceil_mode)
    return _lowered(b.add(pool, _lifted(op.operands[0], b)), b)


def avg_pool1d(op: Op, b: Builder) -> Value:
    """avg_pool2d over (N, C, 1, L) with a (1, k) window, reshaped back."""
    kind = op.kind
    assert isinstance(kind, AvgPool1d)
    lo, hi = kind.padding
    pool = AvgPool2d(kernel=(1, *kind.kernel), stride=(1, *kind.stride), padding=(0, lo, 0, hi),
                     ceil_mode=kind.ceil_mode, count_include_pad=kind.count_include_pad)
    return _lowered(b.add(pool, _lifted(op.operands[0], b)), b)


def adaptive_avg_pool(op: Op, b: Builder) -> Value | None:
    """reduce_mean over the spatial dims (kept) for output size 1; avg_pool with kernel =
    stride = input / output when every dim divides; otherwise the op stays."""
    assert isinstance(op.kind, (AdaptiveAvgPool1d, AdaptiveAvgPool2d))
    x = op.operands[0]
    spatial, out = x.type.shape[2:], op.kind.output_size
    if all(o == 1 for o in out):
        return b.add(ReduceMean(axes=tuple(range(2, x.type.rank)), keepdims=True), x)
    if any(s % o for s, o in zip(spatial, out)):
        return None
    kernel = tuple(s // o for s, o in zip(spatial, out))
    pool = AvgPool1d if isinstance(op.kind, AdaptiveAvgPool1d) else AvgPool2d
    return b.add(pool(kernel=kernel, stride=kernel, padding=(0,) * (2 * len(kernel))), x)


DECOMPOSITIONS: dict[type[OpDef], Decomposition] = {
    ew.Gelu: gelu, ew.Sigmoid: sigmoid, ew.Silu: silu, ew.Hardswish: hardswish,
    ew.Hardsigmoid: hardsigmoid, ew.Relu: relu, ew.Relu6: relu6, ew.Clamp: clamp,
    ew.LeakyRelu: leaky_relu, Softmax: softmax, LogSoftmax: log_softmax, LayerNorm: layer_norm,
    BatchNorm: batch_norm, LocalResponseNorm: local_response_norm, Linear: linear,
    Conv1d: conv1d, MaxPool1d: max_pool1d, AvgPool1d: avg_pool1d,
    AdaptiveAvgPool1d: adaptive_avg_pool, AdaptiveAvgPool2d: adaptive_avg_pool,
}
"""Op class → its decomposition (see each function's docstring for the formula)."""


def decomposable() -> dict[str, type[OpDef]]:
    """Short op name (`gelu`) → op class, for every op with a decomposition, sorted."""
    return dict(sorted((cls.NAME.removeprefix("kiln."), cls) for cls in DECOMPOSITIONS))


def selected(names: tuple[str, ...]) -> frozenset[type[OpDef]]:
    """The op classes `names` asks for (`all`: every one); unknown names raise PipelineError."""
    table = decomposable()
    if "all" in names:
        return frozenset(table.values())
    short = [n.removeprefix("kiln.") for n in names]
    unknown = [n for n in short if n not in table]
    if unknown:
        raise PipelineError(f"decompose: no decomposition for {', '.join(map(repr, unknown))}",
                            hint=f"decomposable ops: {', '.join(table)} (or all)")
    return frozenset(table[n] for n in short)


@register_pass("decompose")
def decompose(module: Module, ctx: PassContext, *, ops: tuple[str, ...] = ("all",)) -> bool:
    """Rewrite the listed ops (default: all decomposable ones) into primitive ops."""
    chosen = selected(ops)

    def pattern(op: Op, rewriter: Rewriter) -> bool:
        if type(op.kind) not in chosen:
            return False
        builder = rewriter.builder_before(op)
        value = DECOMPOSITIONS[type(op.kind)](op, builder)
        if value is None:
            ctx.logger.debug("%s has no exact decomposition here; it stays", op.name)
            return False
        if value.name is None and all(value is not v for v in op.operands):
            value.name = op.result.name
        rewriter.replace_op(op, [value])
        ctx.count(f"decomposed.{op.name.removeprefix('kiln.')}")
        return True

    return apply_patterns(module, [pattern]) > 0

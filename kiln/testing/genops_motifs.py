"""Motif generators: the subgraphs real models are made of, which is what passes look for.

Random single ops rarely line up into a conv followed by a batch norm, a residual block or an
attention head, so these generators build such groups on purpose, with random variations that
matter to the passes (a conv result with a second user, a linear whose batch norm is not on its
feature axis, constants instead of weights, a duplicated op for CSE, parameters computed by
ops for constant folding). See `genops` for the generator contract.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from kiln.ir.graph import Value
from kiln.ir.ops import elementwise as ew
from kiln.ir.ops.core import Cast, Return, Weight
from kiln.ir.ops.nn_conv import Conv2d, MatMul
from kiln.ir.ops.nn_norm import LogSoftmax, Softmax
from kiln.ir.ops.nn_pool import AdaptiveAvgPool2d, MaxPool2d
from kiln.ir.ops.reduce import ReduceMax, ReduceSum
from kiln.ir.ops.shape import Flatten, Reshape, Transpose
from kiln.ir.types import F32, I32
from kiln.testing.genops import (
    batch_norm_on,
    conv_on,
    conv_transpose_on,
    linear_on,
)
from kiln.testing.genops_shape import of_rank
from kiln.testing.graphgen import GraphGen

Generator = Callable[[GraphGen], "Value | None"]

ACTIVATIONS = (None, ew.Relu, ew.Relu, ew.Relu6, ew.Hardswish, ew.Silu, ew.Sigmoid)


def activate(g: GraphGen, x: Value) -> Value:
    """x through a random activation (or none)."""
    cls = g.choice(ACTIVATIONS)
    return x if cls is None else g.add(cls(), x)


def _producer(g: GraphGen) -> Value | None:
    """A conv1d / conv2d / conv_transpose2d / linear result (what a batch norm folds into)."""
    choice = g.choice(("conv1d", "conv2d", "conv2d", "conv_transpose2d", "linear"))
    if choice == "linear":
        x = of_rank(g, g.choice((2, 2, 3)))
        return None if x is None else linear_on(g, x)
    x = of_rank(g, 3 if choice == "conv1d" else 4)
    if x is None:
        return None
    if choice == "conv_transpose2d":
        return conv_transpose_on(g, x)
    return conv_on(g, x, x.type.rank - 2)


def conv_bn_act(g: GraphGen) -> Value | None:
    """producer → batch_norm → activation; now and then the producer has a second user."""
    y = _producer(g)
    if y is None or y.type.rank < 2:
        return None
    z = batch_norm_on(g, y)
    if g.chance(0.2):
        z = g.add(ew.Add(), z, y)
    return activate(g, z)


def shared_weight(g: GraphGen) -> Value | None:
    """Two convs (or linears) with one weight, each with its own batch norm, then added: a
    pass that folds must not change the weight the other layer still reads."""
    first = _producer(g)
    op = first.producer if first is not None else None
    if op is None or first is None or first.type.rank < 2:
        return None
    x, weight, *bias = op.operands
    others = [v for v in g.pool if v.type == x.type and v is not first]
    other = g.choice(others) if others and g.chance(0.7) else x
    if g.chance(0.5) and weight.producer is not None and isinstance(weight.producer.kind, Weight):
        weight = g.weight_ref(weight.producer.kind.name, weight.type)  # a second reference
    second = g.add(op.kind, other, weight, *bias)
    return g.add(ew.Add(), batch_norm_on(g, first), batch_norm_on(g, second))


def bias_act(g: GraphGen) -> Value | None:
    """conv → + per-channel bias (C, 1, ...) → activation (a frontend's unfused bias)."""
    x = of_rank(g, g.choice((3, 4)))
    y = None if x is None else conv_on(g, x, x.type.rank - 2)
    if y is None:
        return None
    shape = (y.type.shape[1], *(1,) * (y.type.rank - 2))
    return activate(g, g.add(ew.Add(), y, g.param(g.normal(shape, 0.5))))


def residual(g: GraphGen) -> Value | None:
    """conv-bn-relu-conv-bn + x → relu, with shape-keeping convs."""
    x = of_rank(g, g.choice((3, 4, 4)))
    if x is None:
        return None
    y = x
    for second in (False, True):
        conv = conv_on(g, y, x.type.rank - 2, same=True)
        if conv is None or conv.type != x.type:
            return None
        y = batch_norm_on(g, conv)
        if not second:
            y = g.add(ew.Relu(), y)
    return g.add(ew.Relu(), g.add(ew.Add(), y, x))


def attention(g: GraphGen) -> Value | None:
    """softmax(q kᵀ · d^-½) v over linear projections, heads split when they fit."""
    x = g.pick(lambda t: t.rank in (2, 3) and t.dtype == F32)
    if x is None:
        return None
    d = g.choice((4, 8))
    q, k, v = (linear_on(g, x, d) for _ in range(3))
    if q is None or k is None or v is None:
        return None
    if x.type.rank == 3 and g.chance(0.5):
        q, k, v = (_heads(g, t) for t in (q, k, v))
    rank = q.type.rank
    kt = g.add(Transpose(perm=(*range(rank - 2), rank - 1, rank - 2)), k)
    scores = g.add(ew.Mul(), g.add(MatMul(), q, kt), g.scalar(1.0 / math.sqrt(d)))
    probs = g.add(Softmax(axis=g.choice((-1, rank - 1))), scores)
    out = g.add(MatMul(), probs, v)
    if rank == 4:
        n, h, length, dh = out.type.shape
        merged = g.add(Transpose(perm=(0, 2, 1, 3)), out)
        out = g.add(Reshape(shape=(n, length, h * dh)), merged)
    return linear_on(g, out, x.type.shape[-1])


def _heads(g: GraphGen, t: Value) -> Value:
    """(N, L, D) → (N, 2, L, D/2): two heads."""
    n, length, d = t.type.shape
    split = g.add(Reshape(shape=(n, length, 2, d // 2)), t)
    return g.add(Transpose(perm=(0, 2, 1, 3)), split)


def conv_flatten_linear(g: GraphGen) -> Value | None:
    """conv2d → relu → (max_pool) → flatten → linear: a classifier head (layout absorbs it)."""
    x = of_rank(g, 4)
    y = None if x is None else conv_on(g, x, 2)
    if y is None:
        return None
    y = g.add(ew.Relu(), y)
    if min(y.type.shape[2:]) >= 2 and g.chance(0.5):
        y = g.add(MaxPool2d(kernel=(2, 2), stride=(2, 2), padding=(0, 0, 0, 0),
                            dilation=(1, 1)), y)
    if g.chance(0.7):
        flat = g.add(Flatten(start_dim=1), y)
    else:
        flat = g.add(Reshape(shape=(y.type.shape[0], y.type.numel // y.type.shape[0])), y)
    return linear_on(g, flat)


def squeeze_excite(g: GraphGen) -> Value | None:
    """x · hardsigmoid(conv1x1(relu(conv1x1(global_avg_pool(x)))))."""
    x = of_rank(g, 4)
    if x is None:
        return None
    c, r = x.type.shape[1], g.integer(1, 4)
    s = g.add(AdaptiveAvgPool2d(output_size=(1, 1)), x)
    for cin, cout, act in ((c, r, ew.Relu), (r, c, ew.Hardsigmoid)):
        w = g.param(g.normal((cout, cin, 1, 1), 1.0 / math.sqrt(cin)))
        s = g.add(act(), g.add(Conv2d(), s, w, g.param(g.normal((cout,), 0.5))))
    return g.add(ew.Mul(), x, s)


def decomposed_softmax(g: GraphGen) -> Value | None:
    """exp(x - max) / sum(exp(x - max)), or the log form, spelled out op by op."""
    x = g.pick(lambda t: t.rank >= 1 and t.dtype == F32)
    if x is None:
        return None
    axes = (g.integer(0, x.type.rank - 1),)
    shifted = g.add(ew.Sub(), x, g.add(ReduceMax(axes=axes, keepdims=True), x))
    e = g.add(ew.Exp(), shifted)
    total = g.add(ReduceSum(axes=axes, keepdims=True), e)
    if g.chance(0.5):
        return g.add(ew.Div(), e, total)
    return g.add(ew.Sub(), shifted, g.add(ew.Log(), total))


def weight_chain(g: GraphGen) -> Value | None:
    """x @ transpose(w · c): a parameter computed by ops, as exported graphs spell linear."""
    x = g.pick(lambda t: t.rank >= 1 and t.dtype == F32)
    if x is None:
        return None
    k = x.type.shape[-1]
    w = g.param(g.normal((g.choice((1, 3, 8)), k), 1.0 / math.sqrt(k)))
    if g.chance(0.5):
        w = g.add(ew.Mul(), w, g.scalar(g.choice((0.5, 2.0, -1.0))))
    return g.add(MatMul(), x, g.add(Transpose(perm=(1, 0)), w))


def duplicate(g: GraphGen) -> Value | None:
    """An op emitted again with the same kind and operands (what CSE merges)."""
    ops = [op for op in g.builder.block.ops
           if not op.isa(Return) and op.results and op.results[0].type.dtype == F32]
    if not ops:
        return None
    op = g.choice(ops)
    if isinstance(op.kind, Weight):
        return g.weight_ref(op.kind.name, op.kind.type)
    return g.emit(op.kind, *op.operands)[0]


def log_softmax_chain(g: GraphGen) -> Value | None:
    """log_softmax after a linear: a classifier output."""
    x = g.pick(lambda t: t.rank >= 1 and t.dtype == F32)
    y = None if x is None else linear_on(g, x)
    return None if y is None else g.add(LogSoftmax(axis=-1), y)


INTEGER_BINARY = (ew.Add, ew.Sub, ew.Mul, ew.Div, ew.Maximum, ew.Minimum)
INTEGER_UNARY = (ew.Neg, ew.Abs, ew.Relu)


def integer_chain(g: GraphGen) -> Value | None:
    """cast to i32 → integer arithmetic with integer constants (division truncates, by zero
    gives 0) and data movement → cast back to f32: passes must keep integer paths exact."""
    x = g.choice(g.args)  # truncation to an integer is discontinuous: only unperturbed inputs
    y = g.add(Cast(to=I32), g.bounded(g.add(ew.Mul(), x, g.scalar(4.0)), 1000.0))
    for _ in range(g.integer(1, 4)):
        if g.chance(0.6):
            number = np.array(g.choice((0, 1, 2, -3, 7)), np.int32)
            operands = (y, g.param(number, const=True))
            y = g.add(g.choice(INTEGER_BINARY)(), *(operands[::-1] if g.chance(0.3) else operands))
        elif g.chance(0.5):
            y = g.add(g.choice(INTEGER_UNARY)(), y)
        elif y.type.rank >= 1:
            y = g.add(ReduceSum(axes=(g.integer(0, y.type.rank - 1),), keepdims=True), y)
    return g.add(Cast(to=F32), g.add(ew.Clamp(min=-1e6, max=1e6), y))


MOTIF_GENERATORS: dict[str, Generator] = {
    "motif_conv_bn_act": conv_bn_act, "motif_shared_weight": shared_weight,
    "motif_bias_act": bias_act, "motif_residual": residual,
    "motif_attention": attention, "motif_conv_flatten_linear": conv_flatten_linear,
    "motif_squeeze_excite": squeeze_excite, "motif_softmax": decomposed_softmax,
    "motif_weight_chain": weight_chain, "motif_duplicate": duplicate,
    "motif_classifier": log_softmax_chain, "motif_integer": integer_chain,
}


"""Batch-norm folding: inference batch norm merged into the conv or linear that feeds it.

At inference a batch norm is a per-channel affine map, `y = x · s + t` with
`s = scale / √(var + eps)` and `t = bias − mean · s`. When `x` is a convolution or linear layer
whose result nothing else reads, the map folds into that layer's parameters:

    conv(x, w, b) · s + t  →  conv(x, w · s, b · s + t)        (s scales each output channel)

A batch norm without such a producer (after a ReLU, an add, a layer with other users) becomes
`x * s' + t'` (`kiln.mul`, `kiln.add`) with `s'`, `t'` shaped `(C, 1, ..., 1)` so they broadcast
along channel axis 1 (option `scale-shift`). Folded parameters are computed in float64 and
rounded once to the layer's dtype; they are stored as new weights named after the originals
(`conv1.weight.bnfold`, `conv1.bias.bnfold`, `bn1.bnfold.scale`) or as constants when the
originals were constants. Parameters left unused are removed, with their weight data.

Nothing folds without data: when the weights are elided (or a parameter is computed at run
time), the batch norm stays and a debug log says why.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from kiln.ir.builder import Builder
from kiln.ir.graph import Module, Op, Value
from kiln.ir.ops.core import Constant, Weight
from kiln.ir.ops.elementwise import Add, Mul
from kiln.ir.ops.nn_conv import Conv1d, Conv2d, ConvTranspose2d, Linear
from kiln.ir.ops.nn_norm import BatchNorm
from kiln.ir.rewriter import Rewriter
from kiln.passes.dce import referenced_weights
from kiln.passes.fold_constants import known_value
from kiln.passes.registry import PassContext, register_pass

FOLDABLE = (Conv1d, Conv2d, ConvTranspose2d, Linear)
"""Producers whose output channels a batch norm can fold into."""


@dataclass(frozen=True)
class ChannelAffine:
    """A batch norm as `y = x · scale + shift` per channel, in float64."""

    scale: np.ndarray
    shift: np.ndarray


def channel_affine(bn: Op, module: Module) -> ChannelAffine | None:
    """s = scale / √(var + eps), t = bias − mean · s; None when a parameter has no data."""
    arrays = [known_value(v, module) for v in bn.operands[1:]]
    if any(a is None for a in arrays):
        return None
    gamma, beta, mean, var = (np.asarray(a, np.float64) for a in arrays)
    assert isinstance(bn.kind, BatchNorm)
    s = gamma / np.sqrt(var + bn.kind.eps)
    return ChannelAffine(s, beta - mean * s)


def scale_output_channels(producer: Op, weight: np.ndarray, s: np.ndarray) -> np.ndarray:
    """w · s, each output channel's slice of the weight scaled by its factor (float64).

    Convolution and linear weights keep output channels on axis 0 (grouped and depthwise convs
    too: groups split axis 0 in order). A transposed convolution's weight is
    (Cin, Cout/groups, kH, kW): output channel `g · Cout/groups + j` is column `j` of group `g`'s
    rows.
    """
    w = np.asarray(weight, np.float64)
    if isinstance(producer.kind, ConvTranspose2d):
        groups = producer.kind.groups
        cin, cout_g = w.shape[:2]
        grouped = w.reshape(groups, cin // groups, cout_g, *w.shape[2:])
        factors = s.reshape(groups, 1, cout_g, *(1,) * (w.ndim - 2))
        return (grouped * factors).reshape(w.shape)
    return w * s.reshape((-1,) + (1,) * (w.ndim - 1))


def _why_not_foldable(bn: Op, module: Module) -> str | None:
    """Why `bn`'s input producer cannot absorb it (None: it can)."""
    producer = bn.operands[0].producer
    if producer is None or not producer.isa(FOLDABLE):
        return "its input is not a conv or linear result"
    if len(producer.result.uses) != 1:
        return f"the {producer.name} result has other users"
    if producer.isa(Linear) and producer.result.type.rank != 2:
        return "a linear result of rank > 2 has its features on the last axis, not axis 1"
    unknown = [v for v in producer.operands[1:] if known_value(v, module) is None]
    if unknown:
        return f"{producer.name} parameter %{unknown[0].name} has no data (weights elided?)"
    return None


def new_parameter(builder: Builder, like: Value, array: np.ndarray, name: str) -> Value:
    """A parameter holding `array` (in `like`'s dtype): a constant when `like` is a constant,
    else a new weight stored under a unique name derived from `name`."""
    array = np.ascontiguousarray(array, dtype=like.type.numpy_dtype)
    producer = like.producer
    if producer is not None and producer.isa(Constant):
        return builder.constant(array, name=name)
    return builder.weight(name, array)


def symbol_of(value: Value) -> str:
    """The weight symbol behind `value`, else its value name (for naming derived weights)."""
    producer = value.producer
    if producer is not None and isinstance(producer.kind, Weight):
        return producer.kind.name
    return value.name or "param"


def _bias_name(weight: Value) -> str:
    base = symbol_of(weight)
    return base[: -len("weight")] + "bias" if base.endswith("weight") else base + ".bias"


def _fold_into_producer(bn: Op, affine: ChannelAffine, rewriter: Rewriter) -> list[Value]:
    """conv(x, w, b) · s + t → conv(x, w · s, b · s + t); returns the parameters replaced."""
    producer = bn.operands[0].producer
    assert producer is not None
    module = rewriter.module
    weight, old_bias = producer.operands[1], producer.operands[2:]
    w_array = known_value(weight, module)
    assert w_array is not None
    shift = affine.shift
    if old_bias:
        b_array = known_value(old_bias[0], module)
        assert b_array is not None
        shift = shift + np.asarray(b_array, np.float64) * affine.scale
    builder = rewriter.builder_before(producer)
    new_w = new_parameter(builder, weight, scale_output_channels(producer, w_array,
                                                                 affine.scale),
                          f"{symbol_of(weight)}.bnfold")
    bias_like = old_bias[0] if old_bias else weight
    bias_name = symbol_of(old_bias[0]) if old_bias else _bias_name(weight)
    new_b = new_parameter(builder, bias_like, shift, f"{bias_name}.bnfold")
    folded = builder.add(producer.kind, producer.operands[0], new_w, new_b,
                         name=producer.result.name)
    rewriter.replace_op(bn, [folded])
    params = list(producer.operands[1:])
    rewriter.erase_op(producer)
    return params


def _scale_shift(bn: Op, affine: ChannelAffine, rewriter: Rewriter) -> None:
    """batch_norm(x) → x * s' + t', s' and t' of shape (C, 1, ..., 1) (channel axis 1)."""
    x, gamma = bn.operands[0], bn.operands[1]
    shape = (-1,) + (1,) * (x.type.rank - 2)
    builder = rewriter.builder_before(bn)
    base = symbol_of(gamma).removesuffix(".weight")
    scale = new_parameter(builder, gamma, affine.scale.reshape(shape), f"{base}.bnfold.scale")
    shift = new_parameter(builder, gamma, affine.shift.reshape(shape), f"{base}.bnfold.shift")
    scaled = builder.add(Mul(), x, scale)
    rewriter.replace_op(bn, [builder.add(Add(), scaled, shift, name=bn.result.name)])


def erase_unused_parameters(values: Iterable[Value], rewriter: Rewriter) -> set[str]:
    """Erase the weight/constant ops among `values` that lost their last user; returns the
    weight symbols they referenced (candidates for dropping their data)."""
    symbols: set[str] = set()
    for value in values:
        producer = value.producer
        if producer is None or value.uses or producer.block is None:
            continue
        if isinstance(producer.kind, Weight):
            symbols.add(producer.kind.name)
        if producer.isa((Weight, Constant)):
            rewriter.erase_op(producer)
    return symbols


def drop_weight_data(module: Module, symbols: set[str]) -> None:
    """Delete the data of the `symbols` no weight op references any more."""
    for name in symbols - referenced_weights(module):
        module.weights.pop(name, None)


def _fold_one(bn: Op, rewriter: Rewriter, ctx: PassContext, scale_shift: bool) -> set[str]:
    module = rewriter.module
    label = f"%{bn.result.name}" if bn.result.name else bn.name
    affine = channel_affine(bn, module)
    if affine is None:
        ctx.logger.debug("not folding %s: a batch-norm parameter has no data (weights elided?)",
                         label)
        return set()
    bn_params = list(bn.operands[1:])
    reason = _why_not_foldable(bn, module)
    if reason is None:
        params = _fold_into_producer(bn, affine, rewriter) + bn_params
        ctx.count("folded")
    elif scale_shift:
        ctx.logger.debug("%s becomes a scale and shift: %s", label, reason)
        _scale_shift(bn, affine, rewriter)
        params = bn_params
        ctx.count("scale-shift")
    else:
        ctx.logger.debug("not folding %s: %s", label, reason)
        return set()
    return erase_unused_parameters(params, rewriter)


@register_pass("fold-batchnorm")
def fold_batchnorm(module: Module, ctx: PassContext, *, scale_shift: bool = True) -> bool:
    """Fold inference batch norms into the preceding conv/linear, else into a scale and shift."""
    rewriter = Rewriter(module)
    symbols: set[str] = set()
    for func in module.funcs.values():
        for op in list(func.walk()):
            if op.isa(BatchNorm) and op.block is not None:
                symbols |= _fold_one(op, rewriter, ctx, scale_shift)
    drop_weight_data(module, symbols)
    return rewriter.changes > 0

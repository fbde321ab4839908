"""TVM lowering rules for kiln's layer ops: convolutions, matrix products, pools, shape ops.

Layouts need no translation: kiln and Relax both use NCHW activations, OIHW weights (IOHW for
transposed convolutions) and paddings as all begins then all ends; kiln's channel-last twins
(`conv2d_nhwc` with HWIO weights, the NHWC pools) map to Relax's NHWC/HWIO layout arguments.
What differs is made explicit here: kiln's `ceil_mode` pools (PyTorch's rule, which drops a
last window that would start in the right padding) become floor-mode pools over an input padded
at the end by exactly what the ceil rule adds, and views (reshape, flatten, squeeze, ...) become
a Relax reshape to the result type kiln already inferred.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from tvm import relax

from kiln.ir.graph import Op
from kiln.ir.ops import layout, nn_conv, nn_pool, shape
from kiln.ir.ops.base import OpDef
from kiln.targets.tvm_rules_math import Expr, Rule, kind, scalar, typed

rop = relax.op


def _channels_last(op: Op) -> bool:
    return isinstance(op.kind, layout.ChannelsLast)


def _spatial(op: Op, value_shape: tuple[int, ...]) -> tuple[int, ...]:
    """The spatial extents of an NCHW or (channel-last twin) NHWC shape."""
    return value_shape[1:-1] if _channels_last(op) else value_shape[2:]


def _layouts(op: Op) -> dict[str, str]:
    """Relax layout arguments: NCHW/OIHW, or NHWC/HWIO for kiln's channel-last twins."""
    if _channels_last(op):
        return {"data_layout": "NHWC", "kernel_layout": "HWIO"}
    if isinstance(op.kind, nn_conv.Conv1d):
        return {"data_layout": "NCW", "kernel_layout": "OIW"}
    return {"data_layout": "NCHW", "kernel_layout": "OIHW"}


def _with_bias(op: Op, y: Expr, args: Sequence[Expr]) -> Expr:
    """Add the optional bias (third operand) along the channel axis (1, or last for NHWC)."""
    if len(args) < 3:
        return y
    rank = op.results[0].type.rank
    shape = [1] * (rank - 1) + [-1] if _channels_last(op) else [1, -1] + [1] * (rank - 2)
    return rop.add(y, rop.reshape(args[2], shape))


def _conv(op: Op, args: Sequence[Expr]) -> Expr:
    k: Any = op.kind  # NCHW ops and their NHWC twins share the rule
    fn = rop.nn.conv1d if isinstance(k, nn_conv.Conv1d) else rop.nn.conv2d
    y = fn(args[0], args[1], strides=list(k.stride), padding=list(k.padding),
           dilation=list(k.dilation), groups=int(k.groups), **_layouts(op))
    return _with_bias(op, y, args)


def _conv_transpose(op: Op, args: Sequence[Expr]) -> Expr:
    """`output_padding` lengthens the output at the end, like less end padding: it becomes
    `padding_end - output_padding` where that is >= 0, and zero rows (then the bias) beyond
    the full transposed convolution otherwise. (Relax itself allows output padding only below
    the stride; kiln and PyTorch also below the dilation.)"""
    k = kind(op, nn_conv.ConvTranspose2d)
    ends = [p - o for p, o in zip(k.padding[2:], k.output_padding)]
    y = rop.nn.conv2d_transpose(args[0], args[1], strides=list(k.stride),
                                padding=[*k.padding[:2], *(max(e, 0) for e in ends)],
                                dilation=list(k.dilation), groups=int(k.groups))
    if min(ends) < 0:
        y = rop.nn.pad(typed(y), [0, 0, 0, 0, *(p for e in ends for p in (0, max(-e, 0)))])
    return _with_bias(op, y, args)


def _linear(op: Op, args: Sequence[Expr]) -> Expr:
    """x @ weightᵀ + bias (Relax's linear has kiln's (out, in) weight convention)."""
    return rop.linear(args[0], args[1], args[2] if len(args) > 2 else None)


def _matmul(op: Op, args: Sequence[Expr]) -> Expr:
    return rop.matmul(args[0], args[1])


def ceil_extra(op: Op) -> list[int]:
    """Per spatial axis, the end padding that makes a floor-mode window count equal kiln's
    (ceil-mode) output size; zeros in floor mode."""
    k: Any = op.kind  # any windowed pool, NCHW or NHWC
    nd = len(k.kernel)
    x = _spatial(op, op.operands[0].type.shape)
    out = _spatial(op, op.results[0].type.shape)
    dilation = getattr(k, "dilation", (1,) * nd)
    extra = []
    for i in range(nd):
        span = dilation[i] * (k.kernel[i] - 1) + 1
        used = (out[i] - 1) * k.stride[i] + span
        extra.append(max(0, used - (x[i] + k.padding[i] + k.padding[nd + i])))
    return extra


def _padding(op: Op) -> list[int]:
    k: Any = op.kind  # any windowed pool, NCHW or NHWC
    nd = len(k.kernel)
    return [*k.padding[:nd], *(p + e for p, e in zip(k.padding[nd:], ceil_extra(op)))]


def _pool_layout(op: Op) -> str:
    if _channels_last(op):
        return "NHWC"
    return "NCW" if op.operands[0].type.rank == 3 else "NCHW"


def _max_pool(op: Op, args: Sequence[Expr]) -> Expr:
    k: Any = op.kind  # NCHW ops and their NHWC twins share the rule
    fn = rop.nn.max_pool1d if len(k.kernel) == 1 else rop.nn.max_pool2d
    return fn(args[0], pool_size=list(k.kernel), strides=list(k.stride), padding=_padding(op),
              dilation=list(k.dilation), ceil_mode=False, layout=_pool_layout(op))


def _avg_pool(op: Op, args: Sequence[Expr]) -> Expr:
    """Floor-mode average pool; where a ceil-mode window overhangs the padding and padding
    counts, the window sum is divided by kiln's own per-output divisors instead."""
    k: Any = op.kind  # NCHW ops and their NHWC twins share the rule
    fn = rop.nn.avg_pool1d if len(k.kernel) == 1 else rop.nn.avg_pool2d
    overhang = any(ceil_extra(op))
    y = fn(args[0], pool_size=list(k.kernel), strides=list(k.stride), padding=_padding(op),
           ceil_mode=False, count_include_pad=bool(k.count_include_pad),
           layout=_pool_layout(op))
    if not (overhang and k.count_include_pad):
        return y
    spatial = _spatial(op, op.operands[0].type.shape)
    nchw = k.nchw() if _channels_last(op) else k
    _, count = nchw.sums(np.zeros((1, 1, *spatial), np.float32), np.dtype(np.float64))
    count = np.asarray(count, np.float32)
    if _channels_last(op):
        count = count.reshape(*count.shape, 1)
    return rop.divide(rop.multiply(y, scalar(float(np.prod(k.kernel)))), relax.const(count))


def _adaptive_avg_pool(op: Op, args: Sequence[Expr]) -> Expr:
    k: Any = op.kind  # NCHW ops and their NHWC twins share the rule
    fn = rop.nn.adaptive_avg_pool1d if len(k.output_size) == 1 else rop.nn.adaptive_avg_pool2d
    return fn(args[0], output_size=list(k.output_size), layout=_pool_layout(op))


def _view(op: Op, args: Sequence[Expr]) -> Expr:
    """reshape / flatten / squeeze / unsqueeze / identity / dropout: same bytes, kiln's shape."""
    return rop.reshape(args[0], list(op.results[0].type.shape))


def _expand(op: Op, args: Sequence[Expr]) -> Expr:
    return rop.broadcast_to(args[0], list(kind(op, shape.Expand).shape))


def _transpose(op: Op, args: Sequence[Expr]) -> Expr:
    return rop.permute_dims(args[0], list(kind(op, shape.Transpose).perm))


def _concat(op: Op, args: Sequence[Expr]) -> Expr:
    return rop.concat(list(args), axis=int(kind(op, shape.Concat).axis))


def _split(op: Op, args: Sequence[Expr]) -> Expr:
    """A Relax tuple of the pieces; the driver unpacks one result per piece."""
    k = kind(op, shape.Split)
    cuts = [int(c) for c in np.cumsum(k.sizes)[:-1]]
    return rop.split(args[0], cuts, axis=int(k.axis))


def _slice(op: Op, args: Sequence[Expr]) -> Expr:
    k = kind(op, shape.Slice)
    return rop.strided_slice(args[0], list(k.axes), list(k.starts), list(k.ends),
                             list(k.steps))


_PAD_MODES = {"constant": "constant", "reflect": "reflect", "edge": "replicate"}


def _pad(op: Op, args: Sequence[Expr]) -> Expr:
    """kiln's (all begins, all ends) become Relax's (begin, end) pairs per axis."""
    k, rank = kind(op, shape.Pad), op.operands[0].type.rank
    width = [p for axis in range(rank) for p in (k.pads[axis], k.pads[rank + axis])]
    return rop.nn.pad(args[0], width, _PAD_MODES[k.mode], float(k.value))


NN_RULES: dict[type[OpDef], Rule] = {
    nn_conv.Conv1d: _conv, nn_conv.Conv2d: _conv, nn_conv.ConvTranspose2d: _conv_transpose,
    nn_conv.Linear: _linear, nn_conv.MatMul: _matmul,
    nn_pool.MaxPool1d: _max_pool, nn_pool.MaxPool2d: _max_pool,
    nn_pool.AvgPool1d: _avg_pool, nn_pool.AvgPool2d: _avg_pool,
    nn_pool.AdaptiveAvgPool1d: _adaptive_avg_pool, nn_pool.AdaptiveAvgPool2d: _adaptive_avg_pool,
    layout.Conv2dNhwc: _conv, layout.MaxPool2dNhwc: _max_pool, layout.AvgPool2dNhwc: _avg_pool,
    layout.AdaptiveAvgPool2dNhwc: _adaptive_avg_pool,
    shape.Reshape: _view, shape.Flatten: _view, shape.Squeeze: _view, shape.Unsqueeze: _view,
    shape.Identity: _view, shape.Dropout: _view, shape.Expand: _expand,
    shape.Transpose: _transpose, shape.Concat: _concat, shape.Split: _split,
    shape.Slice: _slice, shape.Pad: _pad,
}
"""Op class → rule for the layer and shape families."""

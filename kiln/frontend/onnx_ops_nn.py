"""ONNX → kiln converters: convolutions, pooling and normalization layers.

kiln has 1-D and 2-D convolutions and pools (docs/ops.md); 3-D ones are reported as
unsupported. ONNX's `auto_pad` is resolved to explicit (begin, end) paddings here, and layers
kiln has no op for (InstanceNormalization, LRN with an even window) are decomposed.
"""

from __future__ import annotations

import math

from kiln.frontend import onnx_params as params
from kiln.frontend.onnx_node import Converter, Node, Result
from kiln.ir.graph import Value
from kiln.ir.ops import elementwise as ew
from kiln.ir.ops.base import OpDef
from kiln.ir.ops.nn_conv import Conv1d, Conv2d, ConvTranspose2d
from kiln.ir.ops.nn_norm import BatchNorm, LayerNorm, LocalResponseNorm
from kiln.ir.ops.nn_pool import AvgPool1d, AvgPool2d, MaxPool1d, MaxPool2d
from kiln.ir.ops.reduce import ReduceMax, ReduceMean
from kiln.ir.ops.shape import Reshape


def _spatial(node: Node, x: Value, what: str) -> int:
    nd = x.type.rank - 2
    if nd not in (1, 2):
        raise node.unsupported(f"{nd}-D {what} is not supported (kiln has 1-D and 2-D {what})")
    return nd


def _window(node: Node, x: Value, nd: int,
            kernel: tuple[int, ...]) -> tuple[tuple[int, ...], ...]:
    """(strides, dilations, pads) of a conv or pool over the spatial dims of `x`."""
    strides = node.ints_attr("strides", (1,) * nd) or ()
    dilations = node.ints_attr("dilations", (1,) * nd) or ()
    pads = params.window_pads(node, x.type.shape[2:], kernel, strides, dilations)
    return strides, dilations, pads


def _conv(node: Node) -> Result:
    x, w = node.value(0), node.value(1)
    nd = _spatial(node, x, "convolution")
    strides, dilations, pads = _window(node, x, nd, w.type.shape[2:])
    kind = Conv1d if nd == 1 else Conv2d
    conv = kind(stride=strides, padding=pads, dilation=dilations,
                groups=int(node.attr("group", 1)))
    return node.emit(conv, x, w, node.optional_value(2))


def _conv_transpose(node: Node) -> Result:
    """ConvTranspose; the 1-D form runs as a 2-D one with a unit height."""
    x, w = node.value(0), node.value(1)
    nd = _spatial(node, x, "transposed convolution")
    if nd == 1:
        x = node.emit(Reshape(shape=(*x.type.shape[:2], 1, x.type.shape[2])), x)
        w = node.emit(Reshape(shape=(*w.type.shape[:2], 1, w.type.shape[2])), w)
    kernel = w.type.shape[2:]
    strides = _lift(node.ints_attr("strides", (1,) * nd), nd, 1)
    dilations = _lift(node.ints_attr("dilations", (1,) * nd), nd, 1)
    out_pad = _lift(node.ints_attr("output_padding", (0,) * nd), nd, 0)
    pads = _transpose_pads(node, x.type.shape[2:], kernel, strides, dilations, out_pad, nd)
    kind = ConvTranspose2d(stride=strides, padding=pads, dilation=dilations,
                           groups=int(node.attr("group", 1)), output_padding=out_pad)
    y = node.emit(kind, x, w, node.optional_value(2))
    if nd == 1:
        y = node.emit(Reshape(shape=(*y.type.shape[:2], y.type.shape[3])), y)
    return y


def _lift(values: tuple[int, ...] | None, nd: int, unit: int) -> tuple[int, ...]:
    """A 1-D attribute as the 2-D one of a unit-height layer."""
    values = values or ()
    return (unit, *values) if nd == 1 else values


def _transpose_pads(node: Node, spatial: tuple[int, ...], kernel: tuple[int, ...],
                    strides: tuple[int, ...], dilations: tuple[int, ...],
                    out_pad: tuple[int, ...], nd: int) -> tuple[int, ...]:
    """Explicit pads, or the ones `output_shape` / `auto_pad=SAME_*` imply (ONNX's formula)."""
    auto = str(node.attr("auto_pad", "NOTSET"))
    shape = node.ints_attr("output_shape")
    if shape is None and auto in ("NOTSET", "", "VALID"):
        pads = node.ints_attr("pads", (0,) * (2 * nd)) if auto != "VALID" else (0,) * (2 * nd)
        pads = pads or ()
        return (0, pads[0], 0, pads[1]) if nd == 1 else pads
    targets = shape[-len(spatial):] if shape is not None else tuple(
        s * st for s, st in zip(spatial, strides))
    if nd == 1 and len(targets) == 1:
        targets = (1, *targets)
    begins, ends = [], []
    for size, k, s, d, op, target in zip(spatial, kernel, strides, dilations, out_pad, targets):
        total = s * (size - 1) + op + (k - 1) * d + 1 - target
        if total < 0:
            raise node.unsupported(f"output_shape {list(targets)} needs more output padding "
                                   "than the layer declares")
        small = total // 2
        begins.append(small if auto == "SAME_UPPER" else total - small)
        ends.append(total - begins[-1])
    return (*begins, *ends)


def _pool(node: Node) -> Result:
    x = node.value(0)
    nd = _spatial(node, x, "pooling")
    kernel = node.ints_attr("kernel_shape")
    if kernel is None or len(kernel) != nd:
        raise node.error(f"kernel_shape must have {nd} values, got {kernel}")
    strides, dilations, pads = _window(node, x, nd, kernel)
    ceil_mode = bool(node.attr("ceil_mode", 0))
    kind: OpDef
    if node.op_type == "MaxPool":
        kind = (MaxPool1d if nd == 1 else MaxPool2d)(
            kernel=kernel, stride=strides, padding=pads, dilation=dilations, ceil_mode=ceil_mode)
    else:
        if any(d != 1 for d in dilations):
            raise node.unsupported("dilated average pooling is not supported")
        kind = (AvgPool1d if nd == 1 else AvgPool2d)(
            kernel=kernel, stride=strides, padding=pads, ceil_mode=ceil_mode,
            count_include_pad=bool(node.attr("count_include_pad", 0)))
    return node.emit(kind, x)


def _global_pool(node: Node) -> Result:
    x = node.value(0)
    axes = tuple(range(2, x.type.rank))
    if not axes:
        return x
    kind = ReduceMax if node.op_type == "GlobalMaxPool" else ReduceMean
    return node.emit(kind(axes=axes, keepdims=True), x)


def _batch_norm(node: Node) -> Result:
    if node.attr("training_mode", 0):
        raise node.unsupported("training_mode=1 is not supported (kiln runs inference)")
    if not node.attr("spatial", 1):
        raise node.unsupported("spatial=0 (per-activation statistics) is not supported")
    eps = float(node.attr("epsilon", 1e-5))
    return node.emit(BatchNorm(eps=eps), *(node.value(i) for i in range(5)))


def _layer_norm(node: Node) -> Result:
    x = node.value(0)
    axis = params.norm_axis(node, int(node.attr("axis", -1)), x.type.rank)
    inner = x.type.shape[axis:]
    kind = LayerNorm(normalized_ndim=x.type.rank - axis, eps=float(node.attr("epsilon", 1e-5)))
    affine = [node.optional_value(1), node.optional_value(2)]
    if all(v is None or v.type.shape == inner for v in affine):
        return node.emit(kind, x, *affine)
    y = node.emit(kind, x)
    if affine[0] is not None:
        y = node.emit(ew.Mul(), y, affine[0])
    return node.emit(ew.Add(), y, affine[1]) if affine[1] is not None else y


def _instance_norm(node: Node) -> Result:
    """instance_norm(x) = layer_norm over (N, C, H·W…)'s last dim, then per-channel affine."""
    x = node.value(0)
    shape = x.type.shape
    if len(shape) < 3:
        raise node.error(f"input must have rank >= 3, got {list(shape)}")
    flat = node.emit(Reshape(shape=(shape[0], shape[1], math.prod(shape[2:]))), x)
    y = node.emit(LayerNorm(eps=float(node.attr("epsilon", 1e-5))), flat)
    y = node.emit(Reshape(shape=shape), y)
    channel = (shape[1],) + (1,) * (len(shape) - 2)
    scale = node.emit(Reshape(shape=channel), node.value(1))
    bias = node.emit(Reshape(shape=channel), node.value(2))
    return node.emit(ew.Add(), node.emit(ew.Mul(), y, scale), bias)


def _lrn(node: Node) -> Result:
    """LRN; ONNX's window for an even size is one channel later than torch's, so decompose:
    x / (bias + alpha · mean of x² over channels [c - (size-1)//2, c + size//2]) ** beta."""
    x = node.value(0)
    size = int(node.attr("size"))
    alpha, beta = float(node.attr("alpha", 1e-4)), float(node.attr("beta", 0.75))
    k = float(node.attr("bias", 1.0))
    if size % 2:
        return node.emit(LocalResponseNorm(size=size, alpha=alpha, beta=beta, k=k), x)
    shape = x.type.shape
    square = node.emit(ew.Mul(), x, x)
    square = node.emit(Reshape(shape=(shape[0], 1, shape[1], math.prod(shape[2:]))), square)
    pool = AvgPool2d(kernel=(size, 1), stride=(1, 1),
                     padding=((size - 1) // 2, 0, size // 2, 0), count_include_pad=True)
    mean = node.emit(Reshape(shape=shape), node.emit(pool, square))
    den = node.emit(ew.Add(), node.emit(ew.Mul(), mean, node.literal(alpha, x)),
                    node.literal(k, x))
    return node.emit(ew.Div(), x, node.emit(ew.Pow(), den, node.literal(beta, x)))


CONVERTERS: dict[str, Converter] = {
    "Conv": _conv,
    "ConvTranspose": _conv_transpose,
    "MaxPool": _pool, "AveragePool": _pool,
    "GlobalAveragePool": _global_pool, "GlobalMaxPool": _global_pool,
    "BatchNormalization": _batch_norm,
    "LayerNormalization": _layer_norm,
    "InstanceNormalization": _instance_norm,
    "LRN": _lrn,
}
"""ONNX op type → converter for the nn family."""

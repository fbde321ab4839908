"""Conversions of the neural-network ATen ops: convolution, matrix products, normalizations
and pooling.

Ops kiln lacks are decomposed here into ops it has (group_norm → reshape/mean/rsqrt,
conv_transpose1d → conv_transpose2d on an unsqueezed input). Paddings become
ONNX order (all begins, then all ends); axes are normalized to be non-negative.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from kiln.frontend.torch_ctx import Converted, Converter, Ctx, Unsupported
from kiln.ir.graph import Value
from kiln.ir.ops import elementwise as ew
from kiln.ir.ops import nn_conv, nn_norm, nn_pool, reduce, shape


def ints(values: Any, n: int) -> tuple[int, ...]:
    """An int or an int list as exactly `n` ints (`[2]` → `(2, 2)` for n=2)."""
    if isinstance(values, int):
        return (values,) * n
    items = tuple(int(v) for v in values)
    return items * n if len(items) == 1 else items


# -- convolution and matrix products -----------------------------------------------------------
def _convolution(ctx: Ctx) -> Value:
    x, w, b = ctx.tensor("input"), ctx.tensor("weight"), ctx.optional("bias")
    nd = w.type.rank - 2
    stride, dilation = ints(ctx.args["stride"], nd), ints(ctx.args["dilation"], nd)
    pads, groups = ints(ctx.args["padding"], nd), int(ctx.args["groups"])
    operands = (x, w) if b is None else (x, w, b)
    if ctx.args["transposed"]:
        return _conv_transpose(ctx, operands, nd, stride, pads, dilation, groups)
    if nd not in (1, 2):
        raise Unsupported(f"{nd}-D convolution is not supported (conv1d and conv2d are)")
    kind = nn_conv.Conv1d if nd == 1 else nn_conv.Conv2d
    return ctx.add(kind(stride=stride, padding=pads * 2, dilation=dilation, groups=groups),
                   *operands)


def _conv_transpose(ctx: Ctx, operands: Sequence[Value], nd: int, stride: tuple[int, ...],
                    pads: tuple[int, ...], dilation: tuple[int, ...], groups: int) -> Value:
    out_pad = ints(ctx.args["output_padding"], nd)
    if nd == 2:
        return ctx.add(nn_conv.ConvTranspose2d(stride=stride, padding=pads * 2,
                                               output_padding=out_pad, dilation=dilation,
                                               groups=groups), *operands)
    if nd != 1:
        raise Unsupported(f"{nd}-D transposed convolution is not supported")
    x, w = (ctx.add(shape.Unsqueeze(axes=(2,)), v) for v in operands[:2])
    kind = nn_conv.ConvTranspose2d(stride=(1, *stride), padding=(0, *pads, 0, *pads),
                                   output_padding=(0, *out_pad), dilation=(1, *dilation),
                                   groups=groups)
    y = ctx.add(kind, x, w, *operands[2:])
    return ctx.add(shape.Squeeze(axes=(2,)), y)


def _matmul(lhs: str, rhs: str) -> Converter:
    return lambda ctx: ctx.add(nn_conv.MatMul(), ctx.tensor(lhs), ctx.tensor(rhs))


def _transposed_weight(arg: Any) -> Any:
    """The 2-D node `W` when `arg` is `W.t()` or `W.permute(1, 0)`, else None."""
    target = getattr(arg, "target", None)
    if target is torch.ops.aten.t.default:
        return arg.args[0]
    if target is torch.ops.aten.permute.default and list(arg.args[1]) in ([1, 0], [-1, -2]):
        return arg.args[0]
    return None


def _addmm(ctx: Ctx) -> Value:
    """addmm(b, x, Wᵀ) is linear(x, W, b); anything else is beta*b + alpha*(x @ y)."""
    bias, x = ctx.tensor("self"), ctx.tensor("mat1")
    weight = _transposed_weight(ctx.args["mat2"])
    plain = ctx.args["beta"] == 1 and ctx.args["alpha"] == 1
    if plain and weight is not None and bias.type.shape == (ctx.out_shape[-1],):
        return ctx.add(nn_conv.Linear(), x, ctx.value(weight), bias)
    product = ctx.add(nn_conv.MatMul(), x, ctx.tensor("mat2"))
    dtype = product.type.dtype
    if ctx.args["alpha"] != 1:
        product = ctx.add(ew.Mul(), product, ctx.scalar(ctx.args["alpha"], dtype))
    if ctx.args["beta"] != 1:
        bias = ctx.add(ew.Mul(), bias, ctx.scalar(ctx.args["beta"], dtype))
    return ctx.add(ew.Add(), product, bias)


def _linear(ctx: Ctx) -> Value:
    b = ctx.optional("bias")
    operands = (ctx.tensor("input"), ctx.tensor("weight"), *([b] if b is not None else []))
    return ctx.add(nn_conv.Linear(), *operands)


# -- normalizations ------------------------------------------------------------------------------
def _ones_or(ctx: Ctx, value: Value | None, n: int, fill: float, dtype: Any) -> Value:
    return value if value is not None else ctx.constant(np.full((n,), fill, dtype.numpy))


def _batch_norm(ctx: Ctx) -> Converted:
    if ctx.args.get("training"):
        raise Unsupported("batch norm in training mode (the model should be in eval())")
    x = ctx.tensor("input")
    mean, var = ctx.optional("running_mean"), ctx.optional("running_var")
    if mean is None or var is None:
        raise Unsupported("batch norm without running statistics")
    channels, dtype = x.type.shape[1], x.type.dtype
    scale = _ones_or(ctx, ctx.optional("weight"), channels, 1.0, dtype)
    bias = _ones_or(ctx, ctx.optional("bias"), channels, 0.0, dtype)
    y = ctx.add(nn_norm.BatchNorm(eps=float(ctx.args["eps"])), x, scale, bias, mean, var)
    return (y, None, None)


def _layer_norm(ctx: Ctx) -> Value:
    x = ctx.tensor("input")
    ndim = len(ctx.args["normalized_shape"])
    weight, bias = ctx.optional("weight"), ctx.optional("bias")
    if weight is None and bias is not None:
        weight = ctx.constant(np.ones(bias.type.shape, x.type.dtype.numpy))
    operands = [v for v in (x, weight, bias) if v is not None]
    return ctx.add(nn_norm.LayerNorm(normalized_ndim=ndim, eps=float(ctx.args["eps"])),
                   *operands)


def _group_norm(ctx: Ctx) -> Converted:
    """Reshape to (N, G, rest), normalize over rest, reshape back, scale and shift per channel."""
    x = ctx.tensor("input")
    groups = int(ctx.args["num_groups"] if "num_groups" in ctx.args else ctx.args["group"])
    n, c = x.type.shape[0], x.type.shape[1]
    dtype = x.type.dtype
    grouped = ctx.add(shape.Reshape(shape=(n, groups, x.type.numel // (n * groups))), x)
    mean = ctx.add(reduce.ReduceMean(axes=(2,), keepdims=True), grouped)
    centered = ctx.add(ew.Sub(), grouped, mean)
    var = ctx.add(reduce.ReduceMean(axes=(2,), keepdims=True),
                  ctx.add(ew.Mul(), centered, centered))
    inv = ctx.add(ew.Rsqrt(), ctx.add(ew.Add(), var, ctx.scalar(float(ctx.args["eps"]), dtype)))
    y = ctx.add(shape.Reshape(shape=x.type.shape), ctx.add(ew.Mul(), centered, inv))
    per_channel = (c,) + (1,) * (x.type.rank - 2)
    for name, kind in (("weight", ew.Mul), ("bias", ew.Add)):
        param = ctx.optional(name)
        if param is not None:
            y = ctx.add(kind(), y, ctx.add(shape.Reshape(shape=per_channel), param))
    return y if "num_groups" in ctx.args else (y, None, None)


def _first_of_three(convert: Converter) -> Converter:
    """For ops returning (output, mean, rstd): only the output is expressible."""
    def wrapped(ctx: Ctx) -> Converted:
        result = convert(ctx)
        return result if isinstance(result, tuple) else (result, None, None)
    return wrapped


# -- pooling -------------------------------------------------------------------------------------
def _window(ctx: Ctx, nd: int) -> dict[str, Any]:
    kernel = ints(ctx.args["kernel_size"], nd)
    stride = ints(ctx.args["stride"], nd) if ctx.args.get("stride") else kernel
    pads = ints(ctx.args["padding"], nd)
    return {"kernel": kernel, "stride": stride, "padding": pads * 2,
            "ceil_mode": bool(ctx.args["ceil_mode"])}


def _pool_input(ctx: Ctx, nd: int) -> Value:
    x = ctx.tensor("self")
    if x.type.rank != nd + 2:
        raise Unsupported(f"pooling needs a batched (N, C, ...) input of rank {nd + 2}, "
                          f"got rank {x.type.rank}")
    return x


def _max_pool(nd: int, with_indices: bool) -> Converter:
    kind = nn_pool.MaxPool1d if nd == 1 else nn_pool.MaxPool2d

    def convert(ctx: Ctx) -> Converted:
        x = _pool_input(ctx, nd)
        y = ctx.add(kind(dilation=ints(ctx.args["dilation"], nd), **_window(ctx, nd)), x)
        return (y, None) if with_indices else y
    return convert


def _avg_pool(nd: int) -> Converter:
    kind = nn_pool.AvgPool1d if nd == 1 else nn_pool.AvgPool2d

    def convert(ctx: Ctx) -> Value:
        if ctx.args.get("divisor_override") is not None:
            raise Unsupported("avg_pool with divisor_override is not supported")
        x = _pool_input(ctx, nd)
        return ctx.add(kind(count_include_pad=bool(ctx.args["count_include_pad"]),
                            **_window(ctx, nd)), x)
    return convert


def _adaptive_avg_pool(nd: int) -> Converter:
    kind = nn_pool.AdaptiveAvgPool1d if nd == 1 else nn_pool.AdaptiveAvgPool2d
    return lambda ctx: ctx.add(kind(output_size=tuple(ctx.out_shape[2:])), _pool_input(ctx, nd))


NN_CONVERTERS: dict[str, Converter] = {
    "aten.convolution": _convolution,
    "aten.linear": _linear,
    "aten.addmm": _addmm,
    "aten.mm": _matmul("self", "mat2"),
    "aten.bmm": _matmul("self", "mat2"),
    "aten.matmul": _matmul("self", "other"),
    "aten._native_batch_norm_legit_no_training": _batch_norm,
    "aten.native_batch_norm": _batch_norm,
    "aten.layer_norm": _layer_norm,
    "aten.native_layer_norm": _first_of_three(_layer_norm),
    "aten.group_norm": _group_norm,
    "aten.native_group_norm": _group_norm,
    "aten.max_pool1d": _max_pool(1, with_indices=False),
    "aten.max_pool2d": _max_pool(2, with_indices=False),
    "aten.max_pool1d_with_indices": _max_pool(1, with_indices=True),
    "aten.max_pool2d_with_indices": _max_pool(2, with_indices=True),
    "aten.avg_pool1d": _avg_pool(1),
    "aten.avg_pool2d": _avg_pool(2),
    "aten.adaptive_avg_pool1d": _adaptive_avg_pool(1),
    "aten.adaptive_avg_pool2d": _adaptive_avg_pool(2),
    "aten._adaptive_avg_pool2d": _adaptive_avg_pool(2),
}

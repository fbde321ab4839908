"""Conversions of softmax, reductions (mean, sum, amax, var, ...) and scaled dot-product
attention, which kiln spells as matmul → scale → (+ mask) → softmax → matmul.

Axes are normalized to be non-negative; "all dims" becomes the explicit list of axes.
"""

from __future__ import annotations

import math

import numpy as np

from kiln.frontend.torch_ctx import Converter, Ctx, Unsupported, normalize_axis
from kiln.ir.graph import Value
from kiln.ir.ops import elementwise as ew
from kiln.ir.ops import nn_conv, nn_norm, reduce, shape


def _softmax(kind: type[nn_norm.Softmax] | type[nn_norm.LogSoftmax]) -> Converter:
    def convert(ctx: Ctx) -> Value:
        x = ctx.tensor("self")
        return ctx.add(kind(axis=normalize_axis(int(ctx.args["dim"]), x.type.rank)), x)
    return convert


# -- reductions ----------------------------------------------------------------------------------
def _reduced(ctx: Ctx, kind: type[reduce.ReduceBase]) -> Value:
    x = ctx.cast(ctx.tensor("self"), ctx.out_dtype)
    dims = ctx.args.get("dim")
    if isinstance(dims, int):
        dims = [dims]
    axes = tuple(sorted({normalize_axis(int(d), x.type.rank) for d in dims or []}))
    if x.type.rank == 0:
        return x
    keep = bool(ctx.args.get("keepdim", False))
    return ctx.add(kind(axes=axes or tuple(range(x.type.rank)), keepdims=keep), x)


def _reduce(kind: type[reduce.ReduceBase]) -> Converter:
    return lambda ctx: _reduced(ctx, kind)


def _reduce_with_indices(kind: type[reduce.ReduceBase]) -> Converter:
    """max.dim / min.dim return (values, indices): only the values are expressible."""
    return lambda ctx: (_reduced(ctx, kind), None)


def _var(ctx: Ctx) -> Value:
    """mean((x - mean(x))²) · n / (n - correction), over `dim` (all dims when absent)."""
    x = ctx.tensor("self")
    rank, dtype = x.type.rank, x.type.dtype
    dims = ctx.args.get("dim")
    axes = tuple(sorted({normalize_axis(int(d), rank) for d in dims})) if dims else tuple(
        range(rank))
    centered = ctx.add(ew.Sub(), x, ctx.add(reduce.ReduceMean(axes=axes, keepdims=True), x))
    var = ctx.add(reduce.ReduceMean(axes=axes, keepdims=bool(ctx.args.get("keepdim"))),
                  ctx.add(ew.Mul(), centered, centered))
    count = math.prod(x.type.shape[a] for a in axes)
    correction = ctx.args.get("correction")
    correction = 1 if correction is None else correction
    if correction:
        var = ctx.add(ew.Mul(), var, ctx.scalar(count / max(count - correction, 0), dtype))
    return var


# -- attention -----------------------------------------------------------------------------------
def _attention(ctx: Ctx) -> Value:
    """softmax(q @ kᵀ * scale + mask) @ v; dropout_p is ignored (inference)."""
    q, k, v = ctx.tensor("query"), ctx.tensor("key"), ctx.tensor("value")
    if ctx.args.get("enable_gqa") and q.type.shape[-3] != k.type.shape[-3]:
        raise Unsupported("grouped-query attention (enable_gqa) is not supported")
    rank, dtype = q.type.rank, q.type.dtype
    perm = (*range(rank - 2), rank - 1, rank - 2)
    scores = ctx.add(nn_conv.MatMul(), q, ctx.add(shape.Transpose(perm=perm), k))
    scale = ctx.args.get("scale") or 1.0 / math.sqrt(q.type.shape[-1])
    scores = ctx.add(ew.Mul(), scores, ctx.scalar(scale, dtype))
    if ctx.args.get("is_causal"):
        rows, cols = q.type.shape[-2], k.type.shape[-2]
        mask = np.triu(np.full((rows, cols), -np.inf, dtype.numpy), k=1)
        scores = ctx.add(ew.Add(), scores, ctx.constant(mask))
    mask_value = ctx.optional("attn_mask")
    if mask_value is not None:
        if not mask_value.type.dtype.is_float:
            raise Unsupported("a boolean attn_mask is not supported; pass an additive float "
                              "mask (0 and -inf)")
        scores = ctx.add(ew.Add(), scores, ctx.cast(mask_value, dtype))
    probs = ctx.add(nn_norm.Softmax(axis=rank - 1), scores)
    return ctx.add(nn_conv.MatMul(), probs, v)


MATH_CONVERTERS: dict[str, Converter] = {
    "aten._softmax": _softmax(nn_norm.Softmax),
    "aten.softmax": _softmax(nn_norm.Softmax),
    "aten._log_softmax": _softmax(nn_norm.LogSoftmax),
    "aten.log_softmax": _softmax(nn_norm.LogSoftmax),
    "aten.mean": _reduce(reduce.ReduceMean),
    "aten.sum": _reduce(reduce.ReduceSum),
    "aten.amax": _reduce(reduce.ReduceMax),
    "aten.amin": _reduce(reduce.ReduceMin),
    "aten.max.default": _reduce(reduce.ReduceMax),
    "aten.min.default": _reduce(reduce.ReduceMin),
    "aten.max.dim": _reduce_with_indices(reduce.ReduceMax),
    "aten.min.dim": _reduce_with_indices(reduce.ReduceMin),
    "aten.var.correction": _var,
    "aten.scaled_dot_product_attention": _attention,
}

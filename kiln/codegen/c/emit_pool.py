"""Pooling kernels: calls into `kiln_pool.h`, 1-D pools as 2-D ones with H = 1."""

from __future__ import annotations

from kiln.codegen.c.context import KernelContext
from kiln.ir.ops.base import OpDef
from kiln.ir.ops.nn_pool import (
    AdaptiveAvgPool1d,
    AdaptiveAvgPool2d,
    AvgPool1d,
    AvgPool2d,
    MaxPool1d,
    MaxPool2d,
)


def _as_2d(kind: OpDef, spatial: int) -> dict[str, tuple[int, ...]]:
    """kernel, stride, padding (top, left, bottom, right), dilation of a 1-D or 2-D pool."""
    assert isinstance(kind, (MaxPool1d, MaxPool2d, AvgPool1d, AvgPool2d))
    kernel, stride, pad = tuple(kind.kernel), tuple(kind.stride), tuple(kind.padding)
    dilation = tuple(kind.dilation) if isinstance(kind, (MaxPool1d, MaxPool2d)) else (
        (1,) * spatial)
    if spatial == 1:
        return {"kernel": (1, *kernel), "stride": (1, *stride), "pad": (0, pad[0], 0, pad[1]),
                "dilation": (1, *dilation)}
    return {"kernel": kernel, "stride": stride, "pad": pad, "dilation": dilation}


def _is_2x2_stride_2(geo: dict[str, tuple[int, ...]], h: int, w: int, oh: int, ow: int) -> bool:
    """The window of `kiln_maxpool2x2` (inline in kiln_pool.h): called with literal sizes, gcc
    specialises it for this layer. Every window must lie inside the input: no padding, and
    no ceil-mode window hanging over the bottom or right edge."""
    return (geo["kernel"] == (2, 2) and geo["stride"] == (2, 2) and geo["dilation"] == (1, 1)
            and geo["pad"] == (0, 0, 0, 0) and 2 * oh <= h and 2 * ow <= w)


def emit_pool(ctx: KernelContext) -> None:
    """max / average pooling with PyTorch's padding, dilation and ceil-mode rules."""
    op = ctx.op
    x, y = op.operands[0], op.results[0]
    xs, ys = x.type.shape, y.type.shape
    spatial = len(xs) - 2
    planes = xs[0] * xs[1]
    h, w = (1, xs[2]) if spatial == 1 else xs[2:]
    oh, ow = (1, ys[2]) if spatial == 1 else ys[2:]
    if op.isa((AdaptiveAvgPool1d, AdaptiveAvgPool2d)):
        ctx.w.line(f"kiln_adaptive_avgpool2d({ctx.ref(x)}, {ctx.ref(y)}, {planes}, {h}, {w}, "
                   f"{oh}, {ow});")
        ctx.note("adaptive average pool")
        return
    geo = _as_2d(op.kind, spatial)
    (kh, kw), (sh, sw) = geo["kernel"], geo["stride"]
    pt, pl, pb, pr = geo["pad"]
    dh, dw = geo["dilation"]
    if op.isa((MaxPool1d, MaxPool2d)) and _is_2x2_stride_2(geo, h, w, oh, ow):
        ctx.w.line(f"kiln_maxpool2x2({ctx.ref(x)}, {ctx.ref(y)}, {planes}, {h}, {w}, {oh}, {ow});")
        ctx.note("max pool 2x2/2")
        return
    ctx.w.line(f"const kiln_pool_shape shape = {{{h}, {w}, {kh}, {kw}, {sh}, {sw}, {pt}, {pl}, "
               f"{pb}, {pr}, {dh}, {dw}, {oh}, {ow}}};")
    if op.isa((MaxPool1d, MaxPool2d)):
        ctx.w.line(f"kiln_maxpool2d({ctx.ref(x)}, {ctx.ref(y)}, {planes}, &shape);")
        ctx.note("max pool")
        return
    assert isinstance(op.kind, (AvgPool1d, AvgPool2d))
    include = int(op.kind.count_include_pad)
    ctx.w.line(f"kiln_avgpool2d({ctx.ref(x)}, {ctx.ref(y)}, {planes}, &shape, {include});")
    ctx.note("average pool")

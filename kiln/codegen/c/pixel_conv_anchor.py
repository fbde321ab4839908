"""Convolutions whose images are one pixel: one GEMM over the whole batch.

A squeeze-excitation block (MobileNetV3, mobilenet_v2ish) pools each image to 1×1 and runs two
1×1 convs on it. As convolutions (`ConvAnchor`), each batch index is its own GEMM with one
column (N = 1 pixel), a call and a tile per image: at batch 64, 1 thread, mobilenet_v2ish's
four SE convs of blocks 2 and 3 took 0.08-0.11 ms each, onnxruntime 0.02-0.04 ms. With one
pixel per image a conv is exactly a linear layer of the (batch × C) matrix: rows are batch
indices, columns output channels, the (Cout, C) weight packed in NR-column panels once at
build time — one GEMM for the batch, the epilogue (relu, hardsigmoid) by rows.
"""

from __future__ import annotations

import math

from kiln.codegen.c.gemm_anchors import GemmView, LinearAnchor
from kiln.codegen.c.packing import pack_panels, panels
from kiln.ir.graph import Op
from kiln.ir.ops.nn_conv import Conv1d, Conv2d


def is_pixel_conv(op: Op) -> bool:
    """groups = 1, a 1×1 kernel, and one pixel in and out (no padding reaches past it)."""
    kind = op.kind
    if not isinstance(kind, (Conv1d, Conv2d)) or kind.groups != 1:
        return False
    x, w, out = (v.type.shape for v in (op.operands[0], op.operands[1], op.results[0]))
    return (math.prod(w[2:]) == 1 and math.prod(x[2:]) == 1 and math.prod(out[2:]) == 1
            and not any(kind.padding))  # padded: the one output may read only zeros


class PixelConvAnchor(LinearAnchor):
    """A conv on 1×1 images as `LinearAnchor`: (N × C) × packed (Cout × C)ᵀ, bias per column.
    The output (N, Cout, 1, ...) is viewed as rows = batch, cols = channels (and the unit
    spatial dims)."""

    def make_view(self) -> GemmView:
        shape = self.op.results[0].type.shape
        return GemmView(shape, (), (0,), tuple(range(1, len(shape))), by_rows=True)

    def setup(self) -> None:
        ctx = self.ctx
        weight = self.op.operands[1]
        n, k = weight.type.shape[0], math.prod(weight.type.shape[1:])
        self.k, nr = k, ctx.options.nr
        packed = ctx.packed(weight, f"pb{nr}", lambda a: pack_panels(a.reshape(n, k), nr))
        if packed is None:
            packed = ctx.scratch(panels(n, nr) * nr * k)
            ctx.w.line(f"kiln_pack_panels({ctx.ref(weight)}, {n}, {k}, {nr}, {packed});")
        self.b = packed
        ctx.note("conv on 1x1 images as one gemm")

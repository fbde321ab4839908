"""Which anchor computes an op: sparse weights first, then convolutions by shape (the
specialised anchors before the general implicit GEMM), linear layers and matmuls."""

from __future__ import annotations

import math

from kiln.codegen.c.conv_anchors import (
    DIRECT_MAX_TAPS,
    ConvAnchor,
    ConvTransposeAnchor,
    DirectConvAnchor,
    GroupedConvAnchor,
    _conv_geometry,
)
from kiln.codegen.c.emit_sparse import sparse_anchor
from kiln.codegen.c.gemm_anchors import Anchor, LinearAnchor, MatMulAnchor
from kiln.codegen.c.pixel_conv_anchor import PixelConvAnchor, is_pixel_conv
from kiln.codegen.c.pointwise_anchor import PointwiseConvAnchor, is_pointwise_conv
from kiln.codegen.c.winograd_anchor import WinogradAnchor, winograd_tile
from kiln.ir.graph import Op
from kiln.ir.ops.nn_conv import Conv1d, Conv2d, ConvTranspose2d, Linear, MatMul


def anchor_class(op: Op) -> type[Anchor] | None:
    """Which anchor computes `op` (None: not a GEMM-like op)."""
    sparse = sparse_anchor(op)
    if sparse is not None:
        return sparse
    kind = op.kind
    if isinstance(kind, (Conv1d, Conv2d)):
        if is_pixel_conv(op):
            return PixelConvAnchor
        if is_pointwise_conv(op):
            return PointwiseConvAnchor
        groups = kind.groups
        channels, cout = op.operands[0].type.shape[1], op.results[0].type.shape[1]
        taps = math.prod(op.operands[1].type.shape[1:])
        spatial = math.prod(op.operands[1].type.shape[2:]) > 1
        if groups == channels == cout or (taps <= DIRECT_MAX_TAPS and (
                groups > 1 or (spatial and not ConvAnchor.wide_fits(_conv_geometry(op), taps)))):
            return DirectConvAnchor
        if winograd_tile(op) is not None:
            return WinogradAnchor
        return ConvAnchor if groups == 1 else GroupedConvAnchor
    if isinstance(kind, ConvTranspose2d):
        return ConvTransposeAnchor
    if isinstance(kind, Linear):
        return LinearAnchor
    if isinstance(kind, MatMul):
        return MatMulAnchor
    return None

"""Every op family, imported explicitly so that importing `kiln.ir.ops` registers all ops.

One family per module: core (weight, constant, cast, return), elementwise, nn_conv, nn_pool,
nn_norm, shape, reduce, quant, qnn + qnn_pool + qnn_eltwise (integer quantized ops), fused,
layout (NHWC twins), lut (fixed-point FPGA activations), fixed_norm (fixed-point layer norm
and GELU). `all_ops()` lists what is registered.
"""

from kiln.ir.ops import (
    core,
    elementwise,
    fixed_norm,
    fused,
    layout,
    lut,
    nn_conv,
    nn_norm,
    nn_pool,
    qnn,
    qnn_eltwise,
    qnn_pool,
    quant,
    reduce,
    shape,
)
from kiln.ir.ops.base import OpDef, all_ops, lookup_op, register_op

__all__ = ["OpDef", "all_ops", "core", "elementwise", "fixed_norm", "fused", "layout",
           "lookup_op", "lut", "nn_conv", "nn_norm", "nn_pool", "qnn", "qnn_eltwise", "qnn_pool",
           "quant", "reduce", "register_op", "shape"]

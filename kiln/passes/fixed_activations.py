"""Float activations left by `fixed-point` → fixed-point activation ops (FPGA lookup tables).

    kiln.run_passes(module, "fixed-point{width=16},fixed-activations{table-size=1024}", ...)

The `fixed-point` pass keeps sigmoid, tanh, hardsigmoid, hardswish and softmax float, between a
`kiln.dequantize` of their fixed-point input and (when a fixed-point op reads the result) a
`kiln.quantize` to the result's calibrated type. This pass replaces each such island by one op
of `kiln.ir.ops.lut` on the fixed-point input, so an FPGA layer computes it:

    dequantize(x: fixed) → sigmoid → quantize{to=T}   →   fixed_activation{sigmoid, to=T}(x)
    dequantize(x: fixed) → softmax (last axis) → return   →   lut_softmax{to=U}(x) → dequantize

The result type is the quantize's `T` when every use is such a quantize; otherwise (a float
tail, e.g. the final softmax) it is `fixed<W, 1, unsigned>` for sigmoid, hardsigmoid and
softmax (values in [0, 1]), `fixed<W, 1>` for tanh and the input's own type for hardswish (W
the input's width, its rounding and saturation), followed by a `kiln.dequantize` for the float
uses. sigmoid/tanh/softmax tables: `table-size` entries over [-range, range) (sigmoid: range 8,
tanh: 4) or, for softmax's exp table, [0, range) (8) with an inverse table of `inv-table-size`;
`table-range` (a power of two) replaces those ranges, 0 keeps them; hardsigmoid/hardswish are
exact (no table). Softmax over another axis than the last stays float. Statistics: one count
per converted function.
"""

from __future__ import annotations

import math

from kiln.errors import KilnError
from kiln.ir.graph import Module, Op, Value
from kiln.ir.ops import elementwise as ew
from kiln.ir.ops.lut import FixedActivation, LutSoftmax
from kiln.ir.ops.nn_norm import Softmax
from kiln.ir.ops.quant import Dequantize, Quantize
from kiln.ir.rewriter import Rewriter
from kiln.ir.types import FixedType
from kiln.passes.registry import PassContext, register_pass

FUNCTIONS = {ew.Sigmoid: "sigmoid", ew.Tanh: "tanh", ew.Hardsigmoid: "hardsigmoid",
             ew.Hardswish: "hardswish", Softmax: "softmax"}
RANGES = {"sigmoid": 8.0, "tanh": 4.0, "softmax": 8.0}


def default_type(function: str, t: FixedType) -> FixedType:
    """The result type of a converted activation whose result is read as float."""
    if function == "hardswish":
        return t
    return FixedType(t.width, 1, function == "tanh", t.rounding, t.saturation)


def _fixed_input(op: Op) -> Value | None:
    """The fixed-point value `op` reads through a dequantize, or None."""
    producer = op.operands[0].producer
    if producer is None or not producer.isa(Dequantize):
        return None
    source = producer.operands[0]
    return source if isinstance(source.type.dtype, FixedType) else None


def _quantize_type(op: Op) -> FixedType | None:
    """T when every use of `op`'s result is a quantize to the same fixed type T."""
    types = {u.op.kind.to for u in op.result.uses if isinstance(u.op.kind, Quantize)
             and isinstance(u.op.kind.to, FixedType)}
    if len(types) == 1 and all(u.op.isa(Quantize) for u in op.result.uses):
        return types.pop()
    return None


def _kind(function: str, to: FixedType, table_size: int, inv_table_size: int,
          table_range: float) -> FixedActivation | LutSoftmax:
    span = table_range or RANGES.get(function, 0.0)
    if function == "softmax":
        return LutSoftmax(to, table_size, span, inv_table_size)
    if function not in RANGES:  # hardsigmoid / hardswish: exact, no table
        return FixedActivation(function, to)
    return FixedActivation(function, to, table_size, span)


def _convert(op: Op, x: Value, rewriter: Rewriter, table_size: int,
             inv_table_size: int, table_range: float) -> str | None:
    function = FUNCTIONS[type(op.kind)]
    if isinstance(op.kind, Softmax) and op.kind.axis not in (-1, op.result.type.rank - 1):
        return None
    assert isinstance(x.type.dtype, FixedType)
    quantized = _quantize_type(op)
    to = quantized or default_type(function, x.type.dtype)
    builder = rewriter.builder_before(op)
    new = builder.add(_kind(function, to, table_size, inv_table_size, table_range), x,
                      name=op.result.name)
    if quantized is not None:
        for use in list(op.result.uses):
            rewriter.replace_uses(use.op.result, new)
            rewriter.erase_op(use.op)
        rewriter.erase_op(op)
    else:
        back = builder.add(Dequantize(to=op.result.type.dtype), new,
                           name=f"{op.result.name}.f" if op.result.name else None)
        rewriter.replace_op(op, [back])
    return function


@register_pass("fixed-activations")
def fixed_activations(module: Module, ctx: PassContext, *, table_size: int = 1024,
                      inv_table_size: int = 1024, table_range: float = 0.0) -> bool:
    """Replace float activations between fixed-point layers by lookup-table ops."""
    for option, size in (("table-size", table_size), ("inv-table-size", inv_table_size)):
        if not 2 <= size <= 1 << 20 or size & (size - 1):
            raise KilnError(f"pass 'fixed-activations': option {option}={size} must be a power "
                            "of two in 2..2^20", hint="e.g. table-size=1024")
    if table_range and (table_range < 0 or math.frexp(table_range)[0] != 0.5):
        raise KilnError(f"pass 'fixed-activations': option table-range={table_range} must be "
                        "a power of two (0: sigmoid 8, tanh 4, softmax 8)")
    rewriter = Rewriter(module)
    for op in list(module.main.ops):
        if type(op.kind) not in FUNCTIONS or op in rewriter.erased:
            continue
        x = _fixed_input(op)
        dequantize = op.operands[0].producer
        if x is None or dequantize is None:
            continue
        function = _convert(op, x, rewriter, table_size, inv_table_size, table_range)
        if function is None:
            continue
        ctx.count(function)
        if not dequantize.result.uses:
            rewriter.erase_op(dequantize)
    return rewriter.changes > 0


__all__ = ["FUNCTIONS", "default_type", "fixed_activations"]

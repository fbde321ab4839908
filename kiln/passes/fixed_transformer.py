"""Float layer norms and GELUs left by `fixed-point` → fixed-point ops (FPGA transformer layers).

    kiln.run_passes(module, "fixed-point{width=16},fixed-activations,fixed-transformer", ...)

`fixed-point` keeps layer_norm and gelu float: a `kiln.dequantize` of their fixed-point input
(or the float function argument itself) before, a `kiln.quantize` to the result's calibrated
type T after. This pass replaces each such island by one op of `kiln.ir.ops.fixed_norm`:

    dequantize(x: fixed) → layer_norm(·, γ, β) → quantize{T}  →  fixed_layer_norm{T}(x, γ', β')
    dequantize(x: fixed) → gelu → quantize{T}                   →  fixed_gelu{T}(x)

γ' and β' are new raw-integer weights `<name>.fixed` of type `fixed<W, I>` (W = T's width,
I from their own max |value|, T's rounding and saturation), like `fixed-point`'s weights.
A layer norm that reads a function argument directly reads a `kiln.quantize` of it: the one
`fixed-point` already made for the argument's other users (moved up), else a new one to
`fixed<W, I>` with I from the argument's max |value| over `calibration_data`.
A layer norm without γ or β gets ones / zeros. Ops whose result is read as float (a float
tail) stay float. Options: `layer-norm` and `gelu` (true) say which ops to convert,
`table-size` the 1/sqrt table of the layer norms (power of two, default 4096; the GELU's Φ
table has 1024 entries over [-8, 8)).
"""

from __future__ import annotations

import numpy as np

from kiln.errors import KilnError
from kiln.ir import fixed
from kiln.ir.builder import Builder
from kiln.ir.graph import Module, Op, Value
from kiln.ir.ops.core import Weight
from kiln.ir.ops.elementwise import Gelu
from kiln.ir.ops.fixed_norm import FixedGelu, FixedLayerNorm
from kiln.ir.ops.nn_norm import LayerNorm
from kiln.ir.ops.quant import Dequantize, Quantize
from kiln.ir.rewriter import Rewriter
from kiln.ir.types import FixedType, TensorType
from kiln.passes.calibrate import calibration_batches
from kiln.passes.fixed_point import integer_bits
from kiln.passes.fold_batchnorm import drop_weight_data, erase_unused_parameters, symbol_of
from kiln.passes.registry import PassContext, register_pass

WHERE = "pass 'fixed-transformer'"


def _quantize_type(op: Op) -> FixedType | None:
    """T when every use of `op`'s result is a quantize to the same fixed type T."""
    uses = list(op.result.uses)
    types = {u.op.kind.to for u in uses if isinstance(u.op.kind, Quantize)}
    if uses and len(types) == 1 and all(u.op.isa(Quantize) for u in uses):
        found = types.pop()
        return found if isinstance(found, FixedType) else None
    return None


def _typed(width: int, amax: float, like: FixedType) -> FixedType:
    return FixedType(width, integer_bits(amax, width), True, like.rounding, like.saturation)


class _Rewrite:
    """One run of the pass: the rewriter, the context and the weights to drop afterwards."""

    def __init__(self, module: Module, ctx: PassContext, table_size: int) -> None:
        self.module, self.ctx, self.table_size = module, ctx, table_size
        self.rewriter = Rewriter(module)
        self.params: list[Value] = []

    def fixed_input(self, op: Op, width: int, like: FixedType) -> Value | None:
        """The fixed-point value `op` reads (a dequantize's source, or a quantized argument)."""
        x = op.operands[0]
        producer = x.producer
        if producer is not None and producer.isa(Dequantize):
            source = producer.operands[0]
            return source if isinstance(source.type.dtype, FixedType) else None
        if producer is not None or x not in self.module.main.args:
            return None
        return self.quantized_argument(op, x, width, like)

    def quantized_argument(self, op: Op, arg: Value, width: int, like: FixedType) -> Value:
        """A quantize of argument `arg` placed before `op` (module docstring)."""
        builder = self.rewriter.builder_before(op)
        old = next((u.op for u in arg.uses if isinstance(u.op.kind, Quantize)
                    and isinstance(u.op.kind.to, FixedType)), None)
        if old is not None:
            new = builder.add(old.kind, arg, name=old.result.name, loc=old.loc)
            self.rewriter.replace_uses(old.result, new)
            self.rewriter.erase_op(old)
            return new
        index = self.module.main.args.index(arg)
        batches = calibration_batches(self.ctx.calibration_data, self.module.main, WHERE)
        amax = max(float(np.max(np.abs(b[index]))) if b[index].size else 0.0 for b in batches)
        return builder.add(Quantize(to=_typed(width, amax, like)), arg,
                           name=f"{arg.name}.q" if arg.name else None)

    def parameter(self, value: Value | None, inner: tuple[int, ...], fill: float,
                  to: FixedType, builder: Builder) -> Value | None:
        """γ or β as a raw-integer weight (ones / zeros when absent); None without data."""
        if value is None:
            data = np.full(inner, fill, np.float64)
            base = "layer_norm.weight" if fill else "layer_norm.bias"
        else:
            producer = value.producer
            if producer is None or not isinstance(producer.kind, Weight) or \
                    producer.kind.name not in self.module.weights:
                return None
            data = np.asarray(self.module.weights[producer.kind.name], np.float64)
            base = symbol_of(value)
            self.params.append(value)
        t = _typed(to.width, float(np.max(np.abs(data))) if data.size else 0.0, to)
        symbol = self.module.add_weight(f"{base}.fixed", fixed.quantize_fixed(data, t))
        return builder.add(Weight(name=symbol, type=TensorType(inner, t)), name=symbol)

    def finish(self, op: Op, new: Value) -> None:
        for use in list(op.result.uses):
            self.rewriter.replace_uses(use.op.result, new)
            self.rewriter.erase_op(use.op)
        dequantize = op.operands[0].producer
        self.rewriter.erase_op(op)
        if dequantize is not None and dequantize.isa(Dequantize) and \
                not dequantize.result.uses:
            self.rewriter.erase_op(dequantize)

    def layer_norm(self, op: Op) -> bool:
        kind = op.kind
        assert isinstance(kind, LayerNorm)
        to = _quantize_type(op)
        if to is None:
            return False
        x = self.fixed_input(op, to.width, to)
        if x is None:
            return False
        inner = op.result.type.shape[op.result.type.rank - kind.normalized_ndim:]
        builder = self.rewriter.builder_before(op)
        operands = [*op.operands[1:], None, None][:2]
        gamma = self.parameter(operands[0], inner, 1.0, to, builder)
        beta = self.parameter(operands[1], inner, 0.0, to, builder)
        if gamma is None or beta is None:
            return False
        new = builder.add(FixedLayerNorm(to, kind.normalized_ndim, kind.eps, self.table_size),
                          x, gamma, beta, name=op.result.name, loc=op.loc)
        self.finish(op, new)
        return True

    def gelu(self, op: Op) -> bool:
        kind = op.kind
        assert isinstance(kind, Gelu)
        to = _quantize_type(op)
        producer = op.operands[0].producer
        if to is None or producer is None or not producer.isa(Dequantize):
            return False
        x = producer.operands[0]
        if not isinstance(x.type.dtype, FixedType):
            return False
        builder = self.rewriter.builder_before(op)
        new = builder.add(FixedGelu(to, approximate=kind.approximate), x,
                          name=op.result.name, loc=op.loc)
        self.finish(op, new)
        return True


@register_pass("fixed-transformer")
def fixed_transformer(module: Module, ctx: PassContext, *, layer_norm: bool = True,
                      gelu: bool = True, table_size: int = 4096) -> bool:
    """Replace float layer norms and GELUs between fixed-point layers by fixed-point ops."""
    if not 8 <= table_size <= 1 << 20 or table_size & (table_size - 1):
        raise KilnError(f"{WHERE}: option table-size={table_size} must be a power of two in "
                        "8..2^20", hint="e.g. table-size=4096")
    run = _Rewrite(module, ctx, table_size)
    for op in list(module.main.ops):
        if op in run.rewriter.erased:
            continue
        if layer_norm and isinstance(op.kind, LayerNorm) and run.layer_norm(op):
            ctx.count("layer_norm")
        elif gelu and isinstance(op.kind, Gelu) and run.gelu(op):
            ctx.count("gelu")
    drop_weight_data(module, erase_unused_parameters(run.params, run.rewriter))
    return run.rewriter.changes > 0


__all__ = ["fixed_transformer"]

"""The fixed-point rewrite: float ops → exact fixed-point ops plus per-layer requantization.

One walk over the entry function in op order. Each op either

- **converts** (its kind has fixed-point semantics: `FIXED_KINDS`, and type inference accepts
  the fixed operand types): a new op is built before it on fixed-point operands — weights and
  constants become raw-integer weights, float activations are quantized once to their chosen
  type, concat inputs are requantized to the concat's chosen type — and when its exact result
  type is new (a product, a sum) a `kiln.requantize` to the layer's chosen type follows; or
- **stays float**: the op itself is kept and its converted operands are dequantized once.

The return's operands are dequantized back to their float types. Old converted ops are erased
at the end (last first), then the float weights nothing reads any more.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from kiln.errors import KilnError
from kiln.ir import fixed
from kiln.ir.builder import Builder
from kiln.ir.fixed_arith import WidthError
from kiln.ir.graph import Module, Op, Value
from kiln.ir.ops.base import OpError
from kiln.ir.ops.core import Constant, Return, Weight
from kiln.ir.ops.elementwise import BinaryOp, UnaryOp
from kiln.ir.ops.nn_conv import ConvBase, Linear, MatMul
from kiln.ir.ops.nn_pool import PoolBase
from kiln.ir.ops.quant import Dequantize, Quantize, Requantize
from kiln.ir.ops.reduce import ReduceBase
from kiln.ir.ops.shape import (
    Concat,
    Dropout,
    Expand,
    Flatten,
    Identity,
    Pad,
    Reshape,
    Slice,
    Split,
    Squeeze,
    Transpose,
    Unsqueeze,
)
from kiln.ir.rewriter import Rewriter
from kiln.ir.types import FixedType, TensorType
from kiln.passes.fixed_point import WHERE, Precision
from kiln.passes.fold_batchnorm import drop_weight_data, erase_unused_parameters, symbol_of
from kiln.passes.fold_constants import known_value
from kiln.passes.registry import PassContext

FIXED_KINDS = (ConvBase, Linear, MatMul, BinaryOp, UnaryOp, PoolBase, ReduceBase, Concat,
               Dropout, Expand, Flatten, Identity, Pad, Reshape, Slice, Split, Squeeze,
               Transpose, Unsqueeze)
"""Op kinds with fixed-point semantics (their type inference has the last word)."""


class Converter:
    """State of one conversion: the fixed and float stand-ins of every original value."""

    def __init__(self, module: Module, precision: Precision, ctx: PassContext) -> None:
        self.module = module
        self.precision = precision
        self.ctx = ctx
        self.rewriter = Rewriter(module)
        self.fixed_of: dict[Value, Value] = {}
        self.float_of: dict[Value, Value] = {}
        self.converted: list[Op] = []
        self.max_bits = 0
        self.elided = not module.weights and any(op.isa(Weight) for op in module.walk())
        """Weight data elided (weight ops without data): add no data either."""

    # -- stand-ins ---------------------------------------------------------------------------
    def chosen(self, value: Value) -> FixedType:
        """The type `value` gets: a parameter's from its data, an activation's from its
        calibrated range."""
        data = known_value(value, self.module)
        return self.precision.weight(data) if data is not None else \
            self.precision.activation(value)

    def fixed_type(self, value: Value) -> TensorType:
        """The fixed type `value` has (or will have once converted)."""
        if value in self.fixed_of:
            return self.fixed_of[value].type
        return TensorType(value.type.shape, self.chosen(value), value.type.encoding)

    def as_fixed(self, value: Value, builder: Builder) -> Value:
        """The fixed-point stand-in of `value`, created on first use (before `builder`'s op).

        Parameters become raw-integer weights, unless the module's weights are elided: then
        (no data to store) they are quantized at run time like activations."""
        if value in self.fixed_of:
            return self.fixed_of[value]
        data = None if self.elided else known_value(value, self.module)
        if data is not None:
            new = self.fixed_weight(value, data, builder)
        else:
            new = builder.add(Quantize(to=self.chosen(value)), self.as_float(value, builder),
                              name=f"{value.name}.q" if value.name else None)
            self.ctx.count("activations")
        self.fixed_of[value] = new
        return new

    def fixed_weight(self, value: Value, data: np.ndarray, builder: Builder) -> Value:
        """Raw integers of a parameter as a new weight of fixed type `<name>.fixed`."""
        t = self.precision.weight(data)
        raw = fixed.quantize_fixed(np.asarray(data, np.float64), t)
        symbol = self.module.add_weight(f"{symbol_of(value)}.fixed", raw)
        ttype = TensorType(value.type.shape, t, value.type.encoding)
        self.ctx.count("weights")
        return builder.add(Weight(name=symbol, type=ttype), name=symbol)

    def as_float(self, value: Value, builder: Builder) -> Value:
        """The float value standing for `value` (a dequantize of its fixed stand-in)."""
        if value in self.float_of:
            return self.float_of[value]
        if value not in self.fixed_of:
            return value
        new = builder.add(Dequantize(to=value.type.dtype), self.fixed_of[value],
                          name=f"{value.name}.f" if value.name else None)
        self.float_of[value] = new
        return new

    # -- ops ---------------------------------------------------------------------------------
    def visit(self, op: Op) -> None:
        if op.isa((Weight, Constant)):
            return
        builder = self.rewriter.builder_before(op)
        if op.isa(Return):
            for i, value in enumerate(op.operands):
                new = self.as_float(value, builder)
                if new is not value:
                    self.rewriter.set_operand(op, i, new)
            return
        if self.convertible(op):
            self.convert_op(op, builder)
        else:
            self.keep_float(op, builder)

    def operand_types(self, op: Op) -> list[TensorType]:
        if op.isa(Concat):
            chosen = self.precision.activation(op.result)
            return [TensorType(v.type.shape, chosen) for v in op.operands]
        return [self.fixed_type(v) for v in op.operands]

    def convertible(self, op: Op) -> bool:
        """Whether `op` has fixed-point semantics for the operand types it would get."""
        if not op.isa(FIXED_KINDS) or op.region is not None:
            return False
        if not all(v.type.dtype.is_float for v in op.operands):
            return False
        try:
            op.kind.infer_type(self.operand_types(op))
        except WidthError as exc:
            raise op.error(exc.diagnostics[0].message,
                           hint="lower the option width (or weight-width) of "
                                f"{WHERE}") from None
        except OpError as exc:
            self.ctx.logger.debug("fixed-point: %s stays float: %s", op.name, exc)
            return False
        return True

    def convert_op(self, op: Op, builder: Builder) -> None:
        operands = [self.as_fixed(v, builder) for v in op.operands]
        if op.isa(Concat):
            chosen = self.precision.activation(op.result)
            operands = [v if v.type.dtype == chosen else builder.add(Requantize(to=chosen), v)
                        for v in operands]
        in_types = {v.type.dtype for v in operands}
        exact = op.kind.infer_type([v.type for v in operands])
        names = [r.name if t.dtype in in_types or not r.name else f"{r.name}.acc"
                 for r, t in zip(op.results, exact)]
        new = builder.create(op.kind, *operands, names=names)
        for old, value in zip(op.results, new.results):
            self.fixed_of[old] = value if value.type.dtype in in_types else \
                self.narrow(old, value, builder)
        self.converted.append(op)

    def narrow(self, old: Value, value: Value, builder: Builder) -> Value:
        """A requantize from the new exact type to the layer's chosen type."""
        assert isinstance(value.type.dtype, FixedType)
        self.max_bits = max(self.max_bits, value.type.dtype.width)
        self.ctx.count("requantize")
        self.ctx.count("activations")
        return builder.add(Requantize(to=self.precision.activation(old)), value, name=old.name)

    def keep_float(self, op: Op, builder: Builder) -> None:
        for i, value in enumerate(op.operands):
            new = self.as_float(value, builder)
            if new is not value:
                self.rewriter.set_operand(op, i, new)
        self.ctx.count("float-ops")

    # -- finishing ---------------------------------------------------------------------------
    def finish(self) -> None:
        params: list[Value] = []
        for op in reversed(self.converted):
            if any(r.uses for r in op.results):
                raise op.error("is still used after the fixed-point conversion (a bug)",
                               cls=KilnError)
            params.extend(op.operands)
            self.rewriter.erase_op(op)
        drop_weight_data(self.module, erase_unused_parameters(params, self.rewriter))
        self.ctx.statistics["max-accumulator-bits"] = self.max_bits


def clipped(precision: Precision, values: Sequence[Value]) -> int:
    """How many calibrated activations exceed their chosen type's range."""
    count = 0
    for value in values:
        stats = precision.stats.get(value)
        if stats is None:
            continue
        lo, hi = precision.activation(value).value_range
        count += int(stats.range[0] < lo or stats.range[1] > hi)
    return count


def convert(module: Module, precision: Precision, ctx: PassContext) -> bool:
    """Run the conversion on the entry function (module docstring)."""
    converter = Converter(module, precision, ctx)
    func = module.main
    for op in list(func.ops):
        converter.visit(op)
    converter.finish()
    ctx.count("clipped-tensors", clipped(precision, list(converter.fixed_of)))
    return bool(converter.converted)


__all__ = ["FIXED_KINDS", "Converter", "convert"]

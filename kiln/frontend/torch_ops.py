"""The ATen → kiln conversion table, and the elementwise / activation conversions.

`CONVERTERS` maps an ATen op name to a small function of a `Ctx`. A key may name one overload
(`aten.div.Tensor_mode`) or a whole op (`aten.add`, every overload); the overload wins. To
support a new ATen op, write a converter next to its family and add one table entry.
Scalar operands (`x * 0.5`) become rank-0 constants of the result dtype; tensor operands of
another dtype are cast to the result dtype (PyTorch's type promotion already decided it).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from kiln.frontend.torch_ctx import Converter, Ctx, Unsupported
from kiln.frontend.torch_ops_math import MATH_CONVERTERS
from kiln.frontend.torch_ops_nn import NN_CONVERTERS
from kiln.frontend.torch_ops_quant import QUANT_CONVERTERS
from kiln.frontend.torch_ops_shape import SHAPE_CONVERTERS
from kiln.ir.graph import Value
from kiln.ir.ops import elementwise as ew
from kiln.ir.ops.base import OpDef


def _binary(kind: type[OpDef], lhs: str = "self", rhs: str = "other",
            swap: bool = False) -> Converter:
    """A broadcasting binary op; `alpha` (add/sub/rsub) scales the second operand."""

    def convert(ctx: Ctx) -> Value:
        dtype = ctx.out_dtype
        a = ctx.operand(ctx.args[lhs], dtype)
        b = ctx.operand(ctx.args[rhs], dtype)
        alpha = ctx.args.get("alpha", 1)
        if swap:
            a, b = b, a
        if alpha is not None and alpha != 1:
            b = ctx.add(ew.Mul(), b, ctx.scalar(alpha, dtype))
        return ctx.add(kind(), a, b)

    return convert


def _div(ctx: Ctx) -> Value:
    if ctx.args.get("rounding_mode") is not None:
        raise Unsupported(f"rounding_mode='{ctx.args['rounding_mode']}' is not supported")
    dtype = ctx.out_dtype
    return ctx.add(ew.Div(), ctx.operand(ctx.args["self"], dtype),
                   ctx.operand(ctx.args["other"], dtype))


def _unary(kind: type[OpDef]) -> Converter:
    return lambda ctx: ctx.add(kind(), ctx.tensor("self"))


def _clamp_bounds(ctx: Ctx, low: Any, high: Any) -> Value:
    x = ctx.tensor("self")
    for bound, kind in ((low, ew.Maximum), (high, ew.Minimum)):
        if bound is not None and not isinstance(bound, (int, float)):
            x = ctx.add(kind(), x, ctx.operand(bound, x.type.dtype))
    scalar_low = low if isinstance(low, (int, float)) else None
    scalar_high = high if isinstance(high, (int, float)) else None
    if scalar_low is None and scalar_high is None:
        return x
    return ctx.add(ew.Clamp(min=_float(scalar_low), max=_float(scalar_high)), x)


def _float(x: float | None) -> float | None:
    return None if x is None else float(x)


def _hardtanh(ctx: Ctx) -> Value:
    low, high = float(ctx.args["min_val"]), float(ctx.args["max_val"])
    if (low, high) == (0.0, 6.0):
        return ctx.add(ew.Relu6(), ctx.tensor("self"))
    return ctx.add(ew.Clamp(min=low, max=high), ctx.tensor("self"))


def _elu(ctx: Ctx) -> Value:
    """elu(x) = relu(x) - alpha * relu(1 - exp(x)) (the second term is alpha*(exp(x)-1) < 0)."""
    if ctx.args["scale"] != 1 or ctx.args["input_scale"] != 1:
        raise Unsupported("elu with scale or input_scale other than 1 (selu) is not supported")
    x = ctx.tensor("self")
    dtype = x.type.dtype
    neg = ctx.add(ew.Relu(), ctx.add(ew.Sub(), ctx.scalar(1.0, dtype), ctx.add(ew.Exp(), x)))
    if ctx.args["alpha"] != 1:
        neg = ctx.add(ew.Mul(), neg, ctx.scalar(float(ctx.args["alpha"]), dtype))
    return ctx.add(ew.Sub(), ctx.add(ew.Relu(), x), neg)


_UNARY: dict[str, type[OpDef]] = {
    "aten.neg": ew.Neg, "aten.abs": ew.Abs, "aten.sqrt": ew.Sqrt, "aten.rsqrt": ew.Rsqrt,
    "aten.reciprocal": ew.Reciprocal, "aten.exp": ew.Exp, "aten.log": ew.Log,
    "aten.erf": ew.Erf, "aten.relu": ew.Relu, "aten.relu6": ew.Relu6,
    "aten.sigmoid": ew.Sigmoid, "aten.tanh": ew.Tanh, "aten.silu": ew.Silu,
    "aten.hardsigmoid": ew.Hardsigmoid, "aten.hardswish": ew.Hardswish,
}

ELEMENTWISE_CONVERTERS: dict[str, Converter] = {
    **{name: _unary(kind) for name, kind in _UNARY.items()},
    "aten.add": _binary(ew.Add),
    "aten.sub": _binary(ew.Sub),
    "aten.rsub": _binary(ew.Sub, swap=True),
    "aten.mul": _binary(ew.Mul),
    "aten.div": _div,
    "aten.pow.Tensor_Scalar": _binary(ew.Pow, rhs="exponent"),
    "aten.pow.Tensor_Tensor": _binary(ew.Pow, rhs="exponent"),
    "aten.pow.Scalar": _binary(ew.Pow, rhs="exponent"),
    "aten.maximum": _binary(ew.Maximum),
    "aten.minimum": _binary(ew.Minimum),
    "aten.gelu": lambda ctx: ctx.add(ew.Gelu(approximate=str(ctx.args["approximate"])),
                                     ctx.tensor("self")),
    "aten.leaky_relu": lambda ctx: ctx.add(ew.LeakyRelu(slope=float(ctx.args["negative_slope"])),
                                           ctx.tensor("self")),
    "aten.hardtanh": _hardtanh,
    "aten.elu": _elu,
    "aten.clamp": lambda ctx: _clamp_bounds(ctx, ctx.args["min"], ctx.args["max"]),
    "aten.clamp_min": lambda ctx: _clamp_bounds(ctx, ctx.args["min"], None),
    "aten.clamp_max": lambda ctx: _clamp_bounds(ctx, None, ctx.args["max"]),
}

CONVERTERS: dict[str, Converter] = {
    **ELEMENTWISE_CONVERTERS, **NN_CONVERTERS, **MATH_CONVERTERS, **SHAPE_CONVERTERS,
    **QUANT_CONVERTERS,
}


def op_name(target: Any) -> str:
    """`aten.sort.default` for an ATen overload, the function name for anything else."""
    if hasattr(target, "_schema"):
        return str(target)
    return getattr(target, "__name__", str(target))


def lookup(target: Any) -> Callable[[Ctx], Any] | None:
    """The converter for an fx call target: by overload name, then by op name."""
    name = op_name(target)
    found = CONVERTERS.get(name)
    if found is None and name.count(".") == 2:
        found = CONVERTERS.get(name.rsplit(".", 1)[0])
    return found

"""Elementwise ops as Triton expressions on fp32 tiles: one table, keyed by op class.

Every kernel computes in fp32 (loads widen, stores narrow), so each template below is fp32
math on tiles or literals. Operands are always plain names or literals (each op result gets
its own local), so templates need no defensive parentheses around their arguments.

Transcendentals use Triton's built-ins (`tl.exp`, `tl.log`, `tl.sqrt`, `tl.erf`); tanh,
sigmoid and silu are written with `tl.exp`, which is exact to a few ulp away from 0 and keeps
the kernels free of libdevice, so the same text runs in the interpreter. `pow` with a literal
exponent of 1, 2, 3, 0.5, -0.5 or -1 becomes exact arithmetic; any other exponent uses
`exp2(b · log2|a|)` with the sign of an odd integer power restored.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from kiln.ir.graph import Op
from kiln.ir.ops import elementwise as ew
from kiln.ir.ops.base import OpDef
from kiln.ir.ops.core import Cast
from kiln.ir.ops.nn_norm import BatchNorm
from kiln.ir.ops.shape import Expand

Template = Callable[[OpDef, Sequence[str]], str]

SQRT_HALF = 0.7071067811865476
SQRT_2_OVER_PI = 0.7978845608028654


def literal(value: float) -> str:
    """A float literal as Triton source (`float("inf")` for infinities, `float("nan")`)."""
    if math.isnan(value):
        return 'float("nan")'
    if math.isinf(value):
        return 'float("inf")' if value > 0 else 'float("-inf")'
    return repr(float(value))


def tanh(x: str) -> str:
    return f"(2.0 / (1.0 + tl.exp(-2.0 * {x})) - 1.0)"


UNARY: dict[type[OpDef], str] = {
    ew.Neg: "-{0}",
    ew.Abs: "tl.abs({0})",
    ew.Sqrt: "tl.sqrt({0})",
    ew.Rsqrt: "1.0 / tl.sqrt({0})",
    ew.Reciprocal: "1.0 / {0}",
    ew.Exp: "tl.exp({0})",
    ew.Log: "tl.log({0})",
    ew.Erf: "tl.erf({0})",
    ew.Relu: "tl.maximum({0}, 0.0, propagate_nan=tl.PropagateNan.ALL)",
    ew.Relu6: "tl.minimum(tl.maximum({0}, 0.0), 6.0)",
    ew.Sigmoid: "1.0 / (1.0 + tl.exp(-{0}))",
    ew.Tanh: tanh("{0}"),
    ew.Silu: "{0} / (1.0 + tl.exp(-{0}))",
    ew.Hardsigmoid: "tl.minimum(tl.maximum({0} / 6.0 + 0.5, 0.0), 1.0)",
    ew.Hardswish: "{0} * tl.minimum(tl.maximum({0} + 3.0, 0.0), 6.0) / 6.0",
}
BINARY: dict[type[OpDef], str] = {
    ew.Add: "{0} + {1}",
    ew.Sub: "{0} - {1}",
    ew.Mul: "{0} * {1}",
    ew.Div: "{0} / {1}",
    ew.Maximum: "tl.maximum({0}, {1}, propagate_nan=tl.PropagateNan.ALL)",
    ew.Minimum: "tl.minimum({0}, {1}, propagate_nan=tl.PropagateNan.ALL)",
}


def _leaky_relu(kind: OpDef, a: Sequence[str]) -> str:
    assert isinstance(kind, ew.LeakyRelu)
    slope = literal(kind.slope)
    return f"tl.where({a[0]} >= 0.0, {a[0]}, {a[0]} * {slope})"


def _gelu(kind: OpDef, a: Sequence[str]) -> str:
    x = a[0]
    assert isinstance(kind, ew.Gelu)
    if kind.approximate == "tanh":
        inner = f"{SQRT_2_OVER_PI} * ({x} + 0.044715 * {x} * {x} * {x})"
        return f"0.5 * {x} * (1.0 + {tanh('(' + inner + ')')})"
    positive = f"0.5 * {x} * (1.0 + tl.erf({x} * {SQRT_HALF}))"
    return f"tl.where({x} < 0.0, 0.5 * {x} * {_erfc_pos(f'(-{x} * {SQRT_HALF})')}, {positive})"


ERFC_COEFFICIENTS = (-0.82215223, 1.48851587, -1.13520398, 0.27886807, -0.18628806, 0.09678418,
                     0.37409196, 1.00002368)


def _erfc_pos(a: str) -> str:
    """erfc(a) for a >= 0 (Numerical Recipes' erfcc, 1.2e-7 relative): gelu's negative tail,
    where 1 + erf(x) cancels (4% off at x = -4.8 in float32); `a` is evaluated where it
    appears, so it should be a name or a short expression."""
    t = f"(1.0 / (1.0 + 0.5 * {a}))"
    q = "0.17087277"
    for c in ERFC_COEFFICIENTS:
        q = f"({q} * {t} + {c!r})"
    return f"({t} * tl.exp({q} * {t} - {a} * {a} - 1.26551223))"


def _clamp(kind: OpDef, a: Sequence[str]) -> str:
    text = a[0]
    assert isinstance(kind, ew.Clamp)
    low, high = kind.min, kind.max
    if low is not None:
        text = f"tl.maximum({text}, {literal(low)})"
    if high is not None:
        text = f"tl.minimum({text}, {literal(high)})"
    return text


def round_bf16(x: str) -> str:
    """fp32 `x` rounded to bf16 precision (nearest even), kept in fp32: the bits of
    `kiln.ir.ops.core._round_bf16`. Not `x.to(tl.bfloat16)`: Triton's interpreter truncates
    there (1 bf16 ulp off CUDA and NumPy). Adding 0x7FFF plus the kept lsb carries into the
    upper half exactly when the low half is over a tie (or a tie with an odd lsb); near the max
    it carries into the exponent (inf), as CUDA does. NaN is kept as it is: the add could turn
    a NaN with a low payload into inf (or wrap a negative one)."""
    bits = f"{x}.to(tl.uint32, bitcast=True)"
    rounded = f"(({bits} + (0x7FFF + (({bits} >> 16) & 1))) & 0xFFFF0000)"
    return f"tl.where({x} != {x}, {x}, {rounded}.to(tl.float32, bitcast=True))"


def _cast(kind: OpDef, a: Sequence[str]) -> str:
    """Float casts round through the narrow type and come back to fp32 (bf16 explicitly: its
    rounded value is exact in fp32, so no trip through tl.bfloat16 is needed)."""
    assert isinstance(kind, Cast)
    target = str(kind.to)
    if target == "bf16":
        return round_bf16(a[0])
    return f"{a[0]}.to(tl.float16).to(tl.float32)" if target == "f16" else a[0]


def pow_expr(base: str, exponent: str) -> str:
    """a ** b; exact forms for the common literal exponents (module docstring)."""
    exact = {"1.0": base, "2.0": f"{base} * {base}", "3.0": f"{base} * {base} * {base}",
             "0.5": f"tl.sqrt({base})", "-0.5": f"1.0 / tl.sqrt({base})", "-1.0": f"1.0 / {base}"}
    if exponent in exact:
        return exact[exponent]
    magnitude = f"tl.exp2({exponent} * tl.log2(tl.abs({base})))"
    try:
        value = float(exponent)
    except ValueError:
        odd = f"(tl.floor({exponent}) == {exponent}) & (tl.abs({exponent}) % 2.0 == 1.0)"
        # nested, not `(base < 0) & odd`: a scalar base (a broadcast 1-element operand) and a
        # block exponent make `&` fail in Triton's interpreter; a negative base with a
        # fractional exponent is NaN (as powf and NumPy): sqrt of the negative base
        signed = f"tl.where({odd}, -{magnitude}, {magnitude})"
        negative = f"tl.where(tl.floor({exponent}) == {exponent}, {signed}, tl.sqrt({base}))"
        return f"tl.where({base} < 0.0, {negative}, {magnitude})"
    if value.is_integer() and int(value) % 2 == 1:
        return f"tl.where({base} < 0.0, -{magnitude}, {magnitude})"
    if not value.is_integer():
        return f"tl.where({base} < 0.0, tl.sqrt({base}), {magnitude})"
    return magnitude


def _batch_norm(kind: OpDef, a: Sequence[str]) -> str:
    """(x - mean) * scale / sqrt(var + eps) + bias; operands x, scale, bias, mean, var."""
    assert isinstance(kind, BatchNorm)
    x, scale, bias, mean, var = a
    eps = literal(kind.eps)
    return f"({x} - {mean}) * {scale} / tl.sqrt({var} + {eps}) + {bias}"


SPECIAL: dict[type[OpDef], Template] = {
    ew.LeakyRelu: _leaky_relu,
    ew.Gelu: _gelu,
    ew.Clamp: _clamp,
    ew.Pow: lambda kind, a: pow_expr(a[0], a[1]),
    Cast: _cast,
    Expand: lambda kind, a: a[0],
    BatchNorm: _batch_norm,
}


def expression(op: Op, args: Sequence[str]) -> str:
    """The fp32 Triton expression of elementwise `op` on operand expressions `args`."""
    for table in (SPECIAL, UNARY, BINARY):
        for cls, entry in table.items():
            if type(op.kind) is cls:
                return entry(op.kind, args) if callable(entry) else entry.format(*args)
    raise KeyError(f"{op.name} has no elementwise template")


def channel_dims(op: Op, operand: int, result_dims: Sequence[int]) -> tuple[int, ...] | None:
    """Space dims of a per-channel operand (batch_norm's parameters run along axis 1), or None
    for ordinary NumPy broadcasting."""
    if op.isa(BatchNorm) and operand > 0:
        return (result_dims[1],)
    return None

"""Elementwise ops: broadcasting binary arithmetic and unary math / activations.

Two shared bases (one per family, as STYLE.md asks): `BinaryOp` broadcasts NumPy-style and
`UnaryOp` keeps the shape. Float math is computed in the operand dtype (float32 stays float32);
transcendental functions go through float64 and round once, which keeps the reference within
one ulp of PyTorch's CPU kernels.

Fixed-point operands (`fixed<W,I>`): add, sub, mul, maximum and minimum take two (possibly
different) fixed types and give the exact result type; relu, relu6, clamp and leaky_relu keep
their operand's type. The rules and integer references are in `kiln.ir.fixed_arith`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
from scipy.special import erf as _erf

from kiln.ir import fixed_arith
from kiln.ir.ops.base import OpDef, fail, register_op
from kiln.ir.types import DType, FixedType, TensorType


def broadcast_shapes(a: tuple[int, ...], b: tuple[int, ...]) -> tuple[int, ...]:
    """NumPy broadcasting of two static shapes; raises `OpError` when incompatible."""
    out = []
    for i in range(1, max(len(a), len(b)) + 1):
        da = a[-i] if i <= len(a) else 1
        db = b[-i] if i <= len(b) else 1
        if da != db and 1 not in (da, db):
            raise fail(f"shapes {list(a)} and {list(b)} do not broadcast")
        out.append(db if da == 1 else da)
    return tuple(reversed(out))


@dataclass(frozen=True)
class BinaryOp(OpDef):
    """Base of broadcasting binary ops; subclasses give `FN` (the NumPy function)."""

    OPERANDS = ("lhs", "rhs")
    FN: ClassVar[Callable[[np.ndarray, np.ndarray], np.ndarray]]

    def infer_type(self, operands: Sequence[TensorType]) -> tuple[TensorType, ...]:
        a, b = operands
        dtype: DType = a.dtype
        if isinstance(a.dtype, FixedType) or isinstance(b.dtype, FixedType):
            dtype = fixed_arith.binary_type(self.NAME, a.dtype, b.dtype)
        elif a.dtype != b.dtype:
            raise fail(f"operand element types differ: {a.dtype} and {b.dtype}")
        return (TensorType(broadcast_shapes(a.shape, b.shape), dtype),)

    def reference(self, *args: np.ndarray) -> tuple[np.ndarray, ...]:
        a, b = args
        with np.errstate(all="ignore"):
            out = type(self).FN(a, b)
        return (np.asarray(out).astype(a.dtype, copy=False),)

    def reference_typed(self, operands: Sequence[TensorType],
                        *args: np.ndarray) -> tuple[np.ndarray, ...]:
        ta, tb = operands[0].dtype, operands[1].dtype
        if not (isinstance(ta, FixedType) and isinstance(tb, FixedType)):
            return self.reference(*args)
        (result,) = self.infer_type(operands)
        assert isinstance(result.dtype, FixedType)
        return (fixed_arith.binary_raw(self.NAME, args[0], args[1], ta, tb, result.dtype),)


def _int_div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    if np.issubdtype(a.dtype, np.integer):
        safe = np.where(b == 0, 1, b)
        return np.where(b == 0, 0, np.trunc(a / safe)).astype(a.dtype)
    return np.divide(a, b)


def _class_name(op_name: str) -> str:
    return op_name.title().replace("_", "")


def _binary(name: str, fn: Callable[..., np.ndarray], doc: str) -> type[BinaryOp]:
    body = {"NAME": f"kiln.{name}", "FN": staticmethod(fn), "__doc__": doc,
            "__module__": __name__}
    cls: type[BinaryOp] = dataclass(frozen=True)(type(_class_name(name), (BinaryOp,), body))
    return register_op(cls)


Add = _binary("add", np.add, "Elementwise a + b with broadcasting.")
Sub = _binary("sub", np.subtract, "Elementwise a - b with broadcasting.")
Mul = _binary("mul", np.multiply, "Elementwise a * b with broadcasting.")
Div = _binary("div", _int_div, "Elementwise a / b with broadcasting (integers truncate).")
Pow = _binary("pow", np.power, "Elementwise a ** b with broadcasting.")
Maximum = _binary("maximum", np.maximum, "Elementwise max(a, b) with broadcasting (NaN wins).")
Minimum = _binary("minimum", np.minimum, "Elementwise min(a, b) with broadcasting (NaN wins).")


@dataclass(frozen=True)
class UnaryOp(OpDef):
    """Base of shape-preserving unary ops; subclasses implement `apply`."""

    OPERANDS = ("input",)
    FLOAT_ONLY: ClassVar[bool] = True

    def infer_type(self, operands: Sequence[TensorType]) -> tuple[TensorType, ...]:
        (x,) = operands
        if isinstance(x.dtype, FixedType):
            fixed_arith.check_unary(self.NAME, x.dtype, getattr(self, "slope", None))
        elif self.FLOAT_ONLY and not x.dtype.is_float:
            raise fail(f"needs a floating-point operand, got {x.dtype}")
        return (x,) if x.encoding is None else (TensorType(x.shape, x.dtype),)

    def apply(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def apply_fixed(self, raw: np.ndarray, t: FixedType) -> np.ndarray:
        """The op on raw integers of `t` (result in `t`); `kiln.ir.fixed_arith`'s rules."""
        return fixed_arith.unary_raw(self.NAME, raw, t)

    def reference(self, *args: np.ndarray) -> tuple[np.ndarray, ...]:
        (x,) = args
        with np.errstate(all="ignore"):
            out = self.apply(x)
        return (np.asarray(out).astype(x.dtype, copy=False),)

    def reference_typed(self, operands: Sequence[TensorType],
                        *args: np.ndarray) -> tuple[np.ndarray, ...]:
        t = operands[0].dtype
        if not isinstance(t, FixedType):
            return self.reference(*args)
        return (self.apply_fixed(args[0], t),)


def _wide(fn: Callable[[np.ndarray], np.ndarray]) -> Callable[[np.ndarray], np.ndarray]:
    """Evaluate in float64 and let the caller round once to the operand dtype."""
    return lambda x: fn(x.astype(np.float64))



_UNARY: dict[str, tuple[Callable[[np.ndarray], np.ndarray], str, bool]] = {
    "neg": (np.negative, "Elementwise -x.", False),
    "abs": (np.abs, "Elementwise |x|.", False),
    "sqrt": (_wide(np.sqrt), "Elementwise square root.", True),
    "rsqrt": (_wide(lambda x: 1.0 / np.sqrt(x)), "Elementwise 1 / sqrt(x).", True),
    "reciprocal": (_wide(lambda x: 1.0 / x), "Elementwise 1 / x.", True),
    "exp": (_wide(np.exp), "Elementwise e ** x.", True),
    "log": (_wide(np.log), "Elementwise natural logarithm.", True),
    "erf": (_wide(_erf), "Elementwise Gauss error function.", True),
    "relu": (lambda x: np.maximum(x, np.zeros((), x.dtype)), "max(x, 0).", False),
    "relu6": (lambda x: np.clip(x, 0, 6), "min(max(x, 0), 6).", False),
    "sigmoid": (_wide(lambda x: 0.5 * (1.0 + np.tanh(0.5 * x))), "1 / (1 + e ** -x).", True),
    "tanh": (_wide(np.tanh), "Hyperbolic tangent.", True),
    "silu": (_wide(lambda x: x * 0.5 * (1.0 + np.tanh(0.5 * x))), "x * sigmoid(x) (swish).",
             True),
    "hardsigmoid": (_wide(lambda x: np.clip(x / 6.0 + 0.5, 0.0, 1.0)),
                    "clamp(x / 6 + 1/2, 0, 1).", True),
    "hardswish": (_wide(lambda x: x * np.clip(x + 3.0, 0.0, 6.0) / 6.0),
                  "x * relu6(x + 3) / 6.", True),
}


def _unary(name: str, fn: Callable[[np.ndarray], np.ndarray], doc: str,
           float_only: bool) -> type[UnaryOp]:
    body = {"NAME": f"kiln.{name}", "apply": lambda self, x: fn(x), "FLOAT_ONLY": float_only,
            "__doc__": doc, "__module__": __name__}
    cls: type[UnaryOp] = dataclass(frozen=True)(type(_class_name(name), (UnaryOp,), body))
    return register_op(cls)


Neg, Abs, Sqrt, Rsqrt, Reciprocal, Exp, Log, Erf, Relu, Relu6, Sigmoid, Tanh, Silu, \
    Hardsigmoid, Hardswish = (_unary(n, *spec) for n, spec in _UNARY.items())


@register_op
@dataclass(frozen=True)
class LeakyRelu(UnaryOp):
    """x if x >= 0 else slope * x."""

    NAME = "kiln.leaky_relu"
    slope: float = 0.01

    def apply(self, x: np.ndarray) -> np.ndarray:
        return np.where(x >= 0, x, x * x.dtype.type(self.slope))

    def apply_fixed(self, raw: np.ndarray, t: FixedType) -> np.ndarray:
        return fixed_arith.leaky_relu_raw(raw, t, self.slope)


@register_op
@dataclass(frozen=True)
class Gelu(UnaryOp):
    """Gaussian error linear unit, exact (erf) or its tanh approximation."""

    NAME = "kiln.gelu"
    approximate: str = "none"

    def verify(self, operands: Sequence[TensorType]) -> None:
        if self.approximate not in ("none", "tanh"):
            raise fail(f"approximate must be 'none' or 'tanh', not '{self.approximate}'")

    def apply(self, x: np.ndarray) -> np.ndarray:
        w = x.astype(np.float64)
        if self.approximate == "tanh":
            inner = math.sqrt(2.0 / math.pi) * (w + 0.044715 * w**3)
            return 0.5 * w * (1.0 + np.tanh(inner))
        return 0.5 * w * (1.0 + _erf(w / math.sqrt(2.0)))


@register_op
@dataclass(frozen=True)
class Clamp(UnaryOp):
    """min(max(x, min), max); either bound may be absent (None)."""

    NAME = "kiln.clamp"
    FLOAT_ONLY = False
    min: float | None = None
    max: float | None = None

    def verify(self, operands: Sequence[TensorType]) -> None:
        if self.min is not None and self.max is not None and self.min > self.max:
            raise fail(f"min {self.min} is greater than max {self.max}")

    def apply(self, x: np.ndarray) -> np.ndarray:
        out = x
        if self.min is not None:
            out = np.maximum(out, x.dtype.type(self.min))
        if self.max is not None:
            out = np.minimum(out, x.dtype.type(self.max))
        return out

    def apply_fixed(self, raw: np.ndarray, t: FixedType) -> np.ndarray:
        return fixed_arith.clamp_raw(raw, t, self.min, self.max)

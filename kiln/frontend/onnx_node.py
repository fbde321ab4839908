"""The conversion context of one ONNX node, shared by the converter and folder tables.

A converter (`onnx_ops_*.py`) or a constant folder (`onnx_fold.py`) is a plain function of a
`Node`: it reads attributes and operands through it and emits kiln ops through it, so every op a
node produces carries that node's location. ONNX values are kiln `Value`s, or NumPy arrays while
they are still constants (initializers, `Constant` nodes, folded shape arithmetic): a constant
becomes an op only when a real op consumes it (`Node.value`), which is what lets shape subgraphs
(`Shape → Gather → Concat → Reshape`) vanish at import time.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeAlias

import numpy as np
import onnx
from onnx import numpy_helper

from kiln.errors import Diagnostic, ImportError_, UnsupportedOpError
from kiln.ir.builder import Builder
from kiln.ir.graph import Value
from kiln.ir.location import Location
from kiln.ir.ops.attrs import Dense
from kiln.ir.ops.base import OpDef
from kiln.ir.ops.core import Constant
from kiln.ir.types import BOOL, F16, F32, F64, I8, I16, I32, I64, U8, ScalarType, TensorType
from kiln.ir.types import dtype_from_numpy as _dtype_from_numpy

Operand: TypeAlias = "Value | np.ndarray | None"
"""An ONNX value during import: a kiln Value, a constant array, or None (an omitted input)."""
Result: TypeAlias = "Value | np.ndarray"

ONNX_DTYPES: dict[int, ScalarType] = {
    onnx.TensorProto.FLOAT: F32, onnx.TensorProto.FLOAT16: F16, onnx.TensorProto.DOUBLE: F64,
    onnx.TensorProto.INT8: I8, onnx.TensorProto.UINT8: U8, onnx.TensorProto.INT16: I16,
    onnx.TensorProto.INT32: I32, onnx.TensorProto.INT64: I64, onnx.TensorProto.BOOL: BOOL,
}
"""ONNX element types kiln imports (everything else is reported as unsupported)."""


def onnx_dtype_name(elem_type: int) -> str:
    try:
        return str(onnx.TensorProto.DataType.Name(elem_type))
    except ValueError:
        return f"element type {elem_type}"


def numpy_dtype(elem_type: int) -> np.dtype:
    """The NumPy dtype of an ONNX element type kiln supports (UnsupportedOpError otherwise)."""
    if elem_type not in ONNX_DTYPES:
        raise UnsupportedOpError(f"ONNX element type {onnx_dtype_name(elem_type)} is not "
                                 "supported by kiln")
    return ONNX_DTYPES[elem_type].numpy


def kiln_dtype(array: np.ndarray) -> ScalarType:
    return _dtype_from_numpy(array.dtype)


def type_of(operand: Value | np.ndarray) -> TensorType:
    if isinstance(operand, Value):
        return operand.type
    return TensorType(operand.shape, kiln_dtype(operand))


def attribute_value(attr: onnx.AttributeProto) -> Any:
    """A node attribute as Python: ints, floats, str, tuples of them, or a NumPy array."""
    value = onnx.helper.get_attribute_value(attr)
    if isinstance(value, onnx.TensorProto):
        return numpy_helper.to_array(value)
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, list):
        if value and isinstance(value[0], bytes):
            return tuple(v.decode("utf-8", errors="replace") for v in value)
        return tuple(value)
    return value


Materialize = Callable[[str, np.ndarray], Value]


class Node:
    """One ONNX node being folded or converted: attributes, operands and a builder."""

    def __init__(self, proto: onnx.NodeProto, opset: int, operands: Sequence[Operand],
                 builder: Builder, materialize: Materialize, loc: Location) -> None:
        self.proto = proto
        self.opset = opset
        self.operands = list(operands)
        self.builder = builder
        self.loc = loc
        self._materialize = materialize
        self.attrs: dict[str, Any] = {a.name: attribute_value(a) for a in proto.attribute}

    # -- identity and errors -------------------------------------------------------------------
    @property
    def op_type(self) -> str:
        return self.proto.op_type

    @property
    def label(self) -> str:
        """`Conv 'conv1'`: how messages name this node."""
        return f"{self.op_type} '{self.proto.name}'" if self.proto.name else self.op_type

    def unsupported(self, message: str, hint: str | None = None) -> UnsupportedOpError:
        """An error for a form of this op kiln cannot import (raise it)."""
        return UnsupportedOpError(diagnostics=[Diagnostic(
            f"ONNX {self.label}: {message}", loc=self.loc, hint=hint)])

    def error(self, message: str, hint: str | None = None) -> ImportError_:
        """An error for a node that is malformed (raise it)."""
        return ImportError_(diagnostics=[Diagnostic(
            f"ONNX {self.label}: {message}", loc=self.loc, hint=hint)])

    # -- attributes ----------------------------------------------------------------------------
    def attr(self, name: str, default: Any = None) -> Any:
        return self.attrs.get(name, default)

    def ints_attr(self, name: str, default: Sequence[int] | None = None) -> tuple[int, ...] | None:
        value = self.attrs.get(name)
        if value is None:
            return None if default is None else tuple(default)
        return tuple(int(v) for v in np.atleast_1d(value))

    # -- operands ------------------------------------------------------------------------------
    def has(self, index: int) -> bool:
        return index < len(self.operands) and self.operands[index] is not None

    def input_name(self, index: int) -> str:
        return self.proto.input[index] if index < len(self.proto.input) else ""

    def operand(self, index: int) -> Value | np.ndarray:
        operand = self.operands[index] if index < len(self.operands) else None
        if operand is None:
            raise self.error(f"needs input {index}, which is missing")
        return operand

    def is_const(self, index: int) -> bool:
        return self.has(index) and isinstance(self.operands[index], np.ndarray)

    def const(self, index: int, what: str = "") -> np.ndarray:
        """Operand `index` as a constant array; unsupported if it is only known at run time."""
        operand = self.operand(index)
        if isinstance(operand, np.ndarray):
            return operand
        name = what or f"input {index}"
        raise self.unsupported(
            f"{name} ('{self.input_name(index)}') must be a constant, but it depends on the "
            "model's inputs", hint="kiln needs static shapes and parameters for this op")

    def ints(self, index: int, attr: str | None = None,
             default: Sequence[int] | None = None) -> tuple[int, ...] | None:
        """Integers from input `index` (newer opsets) or attribute `attr` (older ones)."""
        if self.has(index):
            return tuple(int(v) for v in self.const(index).reshape(-1))
        if attr is not None:
            return self.ints_attr(attr, default)
        return None if default is None else tuple(default)

    def type(self, index: int) -> TensorType:
        return type_of(self.operand(index))

    def shape(self, index: int) -> tuple[int, ...]:
        return self.type(index).shape

    def rank(self, index: int) -> int:
        return len(self.shape(index))

    def value(self, index: int) -> Value:
        """Operand `index` as a kiln Value (a constant becomes a weight or a kiln.constant)."""
        operand = self.operand(index)
        if isinstance(operand, Value):
            return operand
        return self._materialize(self.input_name(index), operand)

    def array_value(self, key: str, array: np.ndarray) -> Value:
        """A derived constant (a transposed weight) as a Value, cached under `key`."""
        return self._materialize(key, array)

    def optional_value(self, index: int) -> Value | None:
        return self.value(index) if self.has(index) else None

    # -- emitting ------------------------------------------------------------------------------
    def emit(self, kind: OpDef, *operands: Value | None) -> Value:
        """Create a single-result kiln op at this node's location (None operands dropped)."""
        return self.builder.add(kind, *[v for v in operands if v is not None], loc=self.loc)

    def emit_multi(self, kind: OpDef, *operands: Value) -> list[Value]:
        return list(self.builder.create(kind, *operands, loc=self.loc).results)

    def literal(self, value: float | int | np.ndarray, like: Value | TensorType) -> Value:
        """A small kiln.constant with the element type of `like` (for decompositions)."""
        ttype = like.type if isinstance(like, Value) else like
        array = np.asarray(value, dtype=ttype.numpy_dtype)
        return self.builder.add(Constant(value=Dense.of(array)), loc=self.loc)


Converter = Callable[[Node], "Sequence[Result] | Result"]
"""A conversion rule: emits kiln ops for a node, returns its outputs (Values or arrays)."""

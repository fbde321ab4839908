"""What a conversion function sees: one ATen node, its bound arguments and a Builder.

Each entry of the conversion table (`torch_ops.CONVERTERS`) is a plain function
`convert(ctx) -> Value | tuple[Value | None, ...]`. `ctx.args` holds the node's arguments bound
to the op's schema by name (defaults filled in), so converters read `ctx.args["stride"]` instead
of counting positions. A converter that meets a variant kiln cannot express raises
`Unsupported`; the graph converter turns it into a diagnostic and carries on, so that one error
lists every problem in the model.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.fx

from kiln.errors import KilnError
from kiln.ir.builder import Builder
from kiln.ir.graph import Value
from kiln.ir.ops.base import OpDef
from kiln.ir.ops.core import Cast
from kiln.ir.types import BF16, BOOL, F16, F32, F64, I8, I16, I32, I64, U8, DType, TensorType

_DTYPES: dict[torch.dtype, DType] = {
    torch.float32: F32, torch.float16: F16, torch.bfloat16: BF16, torch.float64: F64,
    torch.int8: I8, torch.uint8: U8, torch.int16: I16, torch.int32: I32, torch.int64: I64,
    torch.bool: BOOL,
}

Converted = Value | tuple[Value | None, ...]
"""A converter's result: one value, or one entry per output (None: output not expressible)."""


class Unsupported(Exception):
    """A converter cannot express this node's arguments (e.g. max_pool2d's indices are used)."""


def kiln_dtype(dtype: torch.dtype) -> DType:
    """kiln's element type for a torch dtype; a `KilnError` for complex or quantized dtypes."""
    if dtype not in _DTYPES:
        raise KilnError(f"torch dtype {dtype} has no kiln equivalent",
                        hint="cast the model or its inputs to float32")
    return _DTYPES[dtype]


def tensor_type(t: torch.Tensor) -> TensorType:
    """The static TensorType of a (fake or real) tensor."""
    return TensorType(tuple(int(d) for d in t.shape), kiln_dtype(t.dtype))


def bind_args(target: Any, args: Sequence[Any], kwargs: dict[str, Any]) -> dict[str, Any]:
    """The node's arguments by schema name, defaults filled in (None when absent)."""
    bound: dict[str, Any] = {}
    for i, arg in enumerate(target._schema.arguments):
        if i < len(args) and not arg.kwarg_only:
            bound[arg.name] = args[i]
        elif arg.name in kwargs:
            bound[arg.name] = kwargs[arg.name]
        else:
            bound[arg.name] = arg.default_value if arg.has_default_value() else None
    return bound


def normalize_axis(axis: int, rank: int) -> int:
    """PyTorch's negative axis → kiln's non-negative one (rank 0 tensors accept 0 and -1)."""
    rank = max(rank, 1)
    if not -rank <= axis < rank:
        raise Unsupported(f"axis {axis} out of range for rank {rank}")
    return axis % rank


@dataclass
class Ctx:
    """One node being converted: its bound arguments, its torch output types, a builder."""

    node: torch.fx.Node
    args: dict[str, Any]
    builder: Builder
    lookup: Callable[[torch.fx.Node], Value]
    model: torch.nn.Module | None = None
    """The model being traced, for converters that need a submodule's attributes."""

    # -- operands ---------------------------------------------------------------------------
    def value(self, arg: Any) -> Value:
        """The kiln value of an fx node argument."""
        if not isinstance(arg, torch.fx.Node):
            raise Unsupported(f"expected a tensor argument, got {type(arg).__name__}")
        return self.lookup(arg)

    def tensor(self, name: str) -> Value:
        return self.value(self.args[name])

    def optional(self, name: str) -> Value | None:
        arg = self.args.get(name)
        return None if arg is None else self.value(arg)

    def operand(self, arg: Any, dtype: DType) -> Value:
        """A tensor argument cast to `dtype`, or a Python scalar as a `dtype` constant."""
        if isinstance(arg, torch.fx.Node):
            return self.cast(self.lookup(arg), dtype)
        if isinstance(arg, (bool, int, float)):
            return self.scalar(arg, dtype)
        raise Unsupported(f"operand of type {type(arg).__name__} is not a tensor or a number")

    def scalar(self, number: float, dtype: DType) -> Value:
        """A rank-0 constant of `dtype`."""
        return self.builder.constant(np.array(number, dtype=dtype.numpy))

    def constant(self, array: np.ndarray) -> Value:
        return self.builder.constant(np.asarray(array))

    def cast(self, value: Value, dtype: DType) -> Value:
        if value.type.dtype == dtype:
            return value
        return self.builder.add(Cast(to=dtype), value)

    # -- results ----------------------------------------------------------------------------
    def out_meta(self, index: int = 0) -> torch.Tensor:
        val = self.node.meta.get("val")
        if isinstance(val, (tuple, list)):
            val = val[index]
        if not isinstance(val, torch.Tensor):
            raise Unsupported("the node has no tensor result metadata")
        return val

    @property
    def out_shape(self) -> tuple[int, ...]:
        """The static shape torch computed for the (first) result: -1s already resolved."""
        return tuple(int(d) for d in self.out_meta().shape)

    @property
    def out_dtype(self) -> DType:
        return kiln_dtype(self.out_meta().dtype)

    def add(self, kind: OpDef, *operands: Value) -> Value:
        return self.builder.add(kind, *operands)

    def create(self, kind: OpDef, *operands: Value) -> tuple[Value, ...]:
        return tuple(self.builder.create(kind, *operands).results)


Converter = Callable[[Ctx], Converted]

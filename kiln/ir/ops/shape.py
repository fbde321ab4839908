"""Shape and data-movement ops: identity, dropout, reshape, flatten, transpose, concat, split,
slice, pad, squeeze, unsqueeze, expand.

All are dtype-generic and exact. Axis attributes hold normalized, non-negative axes (see
`rules`); shapes are static, so `reshape`/`expand` never see -1. References return fresh,
contiguous arrays, never views of their operands.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from kiln.ir.ops import rules
from kiln.ir.ops.base import OpDef, fail, register_op
from kiln.ir.types import FixedType, TensorType


@register_op
@dataclass(frozen=True)
class Identity(OpDef):
    """y = x."""

    NAME = "kiln.identity"
    OPERANDS = ("input",)

    def infer_type(self, operands: Sequence[TensorType]) -> tuple[TensorType, ...]:
        return (TensorType(operands[0].shape, operands[0].dtype),)

    def reference(self, *args: np.ndarray) -> tuple[np.ndarray, ...]:
        return (args[0].copy(),)


@register_op
@dataclass(frozen=True)
class Dropout(OpDef):
    """Dropout at inference: y = x (`p` is kept for round trips and reports)."""

    NAME = "kiln.dropout"
    OPERANDS = ("input",)
    p: float = 0.5

    def verify(self, operands: Sequence[TensorType]) -> None:
        if not 0.0 <= self.p <= 1.0:
            raise fail(f"p must be in [0, 1], got {self.p}")

    def infer_type(self, operands: Sequence[TensorType]) -> tuple[TensorType, ...]:
        self.verify(operands)
        return (TensorType(operands[0].shape, operands[0].dtype),)

    def reference(self, *args: np.ndarray) -> tuple[np.ndarray, ...]:
        return (args[0].copy(),)


@register_op
@dataclass(frozen=True)
class Reshape(OpDef):
    """Same elements in row-major order, new static shape."""

    NAME = "kiln.reshape"
    OPERANDS = ("input",)
    shape: tuple[int, ...]

    def verify(self, operands: Sequence[TensorType]) -> None:
        rules.check_ints("shape", self.shape, minimum=0)

    def infer_type(self, operands: Sequence[TensorType]) -> tuple[TensorType, ...]:
        self.verify(operands)
        (x,) = operands
        if rules.numel(self.shape) != x.numel:
            raise fail(f"cannot reshape {list(x.shape)} ({x.numel} elements) to "
                       f"{list(self.shape)} ({rules.numel(self.shape)} elements)")
        return (TensorType(self.shape, x.dtype),)

    def reference(self, *args: np.ndarray) -> tuple[np.ndarray, ...]:
        return (args[0].reshape(self.shape).copy(),)


@register_op
@dataclass(frozen=True)
class Flatten(OpDef):
    """Merges dims start_dim..end_dim (inclusive; end_dim -1 is the last) into one."""

    NAME = "kiln.flatten"
    OPERANDS = ("input",)
    start_dim: int = 1
    end_dim: int = -1

    def _out_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        rank = len(shape)
        rules.check_axis("start_dim", self.start_dim, rank)
        end = rules.last_axis("end_dim", self.end_dim, rank)
        if end < self.start_dim:
            raise fail(f"end_dim {self.end_dim} comes before start_dim {self.start_dim}")
        merged = rules.numel(shape[self.start_dim:end + 1])
        return (*shape[:self.start_dim], merged, *shape[end + 1:])

    def infer_type(self, operands: Sequence[TensorType]) -> tuple[TensorType, ...]:
        (x,) = operands
        return (TensorType(self._out_shape(x.shape), x.dtype),)

    def reference(self, *args: np.ndarray) -> tuple[np.ndarray, ...]:
        return (args[0].reshape(self._out_shape(args[0].shape)).copy(),)


@register_op
@dataclass(frozen=True)
class Transpose(OpDef):
    """Permutes the dims: result dim i is input dim perm[i] (numpy.transpose)."""

    NAME = "kiln.transpose"
    OPERANDS = ("input",)
    perm: tuple[int, ...]

    def infer_type(self, operands: Sequence[TensorType]) -> tuple[TensorType, ...]:
        (x,) = operands
        rules.check_ints("perm", self.perm)
        if sorted(self.perm) != list(range(x.rank)):
            raise fail(f"perm {list(self.perm)} is not a permutation of 0..{x.rank - 1}")
        return (TensorType(tuple(x.shape[p] for p in self.perm), x.dtype),)

    def reference(self, *args: np.ndarray) -> tuple[np.ndarray, ...]:
        return (np.ascontiguousarray(np.transpose(args[0], self.perm)),)


@register_op
@dataclass(frozen=True)
class Concat(OpDef):
    """Joins tensors along `axis`; every other dim must agree."""

    NAME = "kiln.concat"
    OPERANDS = ("inputs*",)
    axis: int = 0

    def infer_type(self, operands: Sequence[TensorType]) -> tuple[TensorType, ...]:
        if not operands:
            raise fail("needs at least one input")
        rules.same_dtype("input", operands)
        first = operands[0]
        rules.check_axis("axis", self.axis, first.rank)
        for i, t in enumerate(operands[1:], start=1):
            others = [d for j, d in enumerate(t.shape) if j != self.axis]
            if t.rank != first.rank or others != [
                    d for j, d in enumerate(first.shape) if j != self.axis]:
                raise fail(f"input {i} has shape {list(t.shape)}, which does not match "
                           f"{list(first.shape)} outside axis {self.axis}")
        size = sum(t.shape[self.axis] for t in operands)
        shape = (*first.shape[:self.axis], size, *first.shape[self.axis + 1:])
        return (TensorType(shape, first.dtype),)

    def reference(self, *args: np.ndarray) -> tuple[np.ndarray, ...]:
        return (np.concatenate(args, axis=self.axis),)


@register_op
@dataclass(frozen=True)
class Split(OpDef):
    """Cuts `axis` into consecutive pieces of the given sizes; one result per size."""

    NAME = "kiln.split"
    OPERANDS = ("input",)
    NUM_RESULTS = None
    sizes: tuple[int, ...]
    axis: int = 0

    def infer_type(self, operands: Sequence[TensorType]) -> tuple[TensorType, ...]:
        (x,) = operands
        rules.check_ints("sizes", self.sizes, minimum=1)
        rules.check_axis("axis", self.axis, x.rank)
        if not self.sizes or sum(self.sizes) != x.shape[self.axis]:
            raise fail(f"sizes {list(self.sizes)} sum to {sum(self.sizes)}, but axis "
                       f"{self.axis} has {x.shape[self.axis]} elements")
        return tuple(TensorType((*x.shape[:self.axis], s, *x.shape[self.axis + 1:]), x.dtype)
                     for s in self.sizes)

    def reference(self, *args: np.ndarray) -> tuple[np.ndarray, ...]:
        cuts = np.cumsum(self.sizes)[:-1]
        return tuple(p.copy() for p in np.split(args[0], cuts, axis=self.axis))


@register_op
@dataclass(frozen=True)
class Slice(OpDef):
    """x[starts:ends:steps] on `axes`; bounds are normalized (0 <= start <= end <= dim)."""

    NAME = "kiln.slice"
    OPERANDS = ("input",)
    axes: tuple[int, ...]
    starts: tuple[int, ...]
    ends: tuple[int, ...]
    steps: tuple[int, ...]

    def verify(self, operands: Sequence[TensorType]) -> None:
        n = len(self.axes)
        rules.check_ints("starts", self.starts, n, minimum=0)
        rules.check_ints("ends", self.ends, n, minimum=0)
        rules.check_ints("steps", self.steps, n, minimum=1)

    def infer_type(self, operands: Sequence[TensorType]) -> tuple[TensorType, ...]:
        self.verify(operands)
        (x,) = operands
        rules.check_axes("axes", self.axes, x.rank)
        shape = list(x.shape)
        for axis, start, end, step in zip(self.axes, self.starts, self.ends, self.steps):
            if not start <= end <= x.shape[axis]:
                raise fail(f"slice {start}:{end} on axis {axis} (size {x.shape[axis]}) is not "
                           "normalized: need 0 <= start <= end <= size")
            shape[axis] = -(-(end - start) // step)
        return (TensorType(tuple(shape), x.dtype),)

    def reference(self, *args: np.ndarray) -> tuple[np.ndarray, ...]:
        index = [slice(None)] * args[0].ndim
        for axis, start, end, step in zip(self.axes, self.starts, self.ends, self.steps):
            index[axis] = slice(start, end, step)
        return (args[0][tuple(index)].copy(),)


PAD_MODES = ("constant", "reflect", "edge")


@register_op
@dataclass(frozen=True)
class Pad(OpDef):
    """Pads every dim by pads (all begins, then all ends) with a constant, reflection or edge."""

    NAME = "kiln.pad"
    OPERANDS = ("input",)
    pads: tuple[int, ...]
    mode: str = "constant"
    value: float = 0.0

    def verify(self, operands: Sequence[TensorType]) -> None:
        rules.check_ints("pads", self.pads, minimum=0)
        if self.mode not in PAD_MODES:
            raise fail(f"mode must be one of {', '.join(PAD_MODES)}, not '{self.mode}'")
        if self.mode != "constant" and self.value != 0.0:
            raise fail(f"value {self.value} is only used by mode 'constant'")

    def infer_type(self, operands: Sequence[TensorType]) -> tuple[TensorType, ...]:
        self.verify(operands)
        (x,) = operands
        if len(self.pads) != 2 * x.rank:
            raise fail(f"pads needs {2 * x.rank} values (begins, then ends) for rank "
                       f"{x.rank}, got {len(self.pads)}")
        begins, ends = self.pads[:x.rank], self.pads[x.rank:]
        for axis, (size, b, e) in enumerate(zip(x.shape, begins, ends)):
            if self.mode == "reflect" and max(b, e) >= size:
                raise fail(f"reflect padding {b}, {e} on axis {axis} must be smaller than its "
                           f"size {size}")
            if self.mode == "edge" and max(b, e) > 0 and size == 0:
                raise fail(f"edge padding of the empty axis {axis}")
        if x.dtype.is_integer and self.value != int(self.value):
            raise fail(f"value {self.value} is not an integer, but the input is {x.dtype}")
        if isinstance(x.dtype, FixedType) and self.value != 0.0:
            raise fail(f"pads a fixed-point input with {self.value}: only 0 is supported "
                       "(the raw 0 is the value 0 in every fixed<> format)")
        shape = tuple(s + b + e for s, b, e in zip(x.shape, begins, ends))
        return (TensorType(shape, x.dtype),)

    def reference(self, *args: np.ndarray) -> tuple[np.ndarray, ...]:
        (x,) = args
        widths = list(zip(self.pads[:x.ndim], self.pads[x.ndim:]))
        if self.mode == "constant":
            return (np.pad(x, widths, constant_values=x.dtype.type(self.value)),)
        mode: Literal["reflect", "edge"] = "reflect" if self.mode == "reflect" else "edge"
        return (np.pad(x, widths, mode=mode),)


@register_op
@dataclass(frozen=True)
class Squeeze(OpDef):
    """Removes the listed size-1 dims."""

    NAME = "kiln.squeeze"
    OPERANDS = ("input",)
    axes: tuple[int, ...]

    def infer_type(self, operands: Sequence[TensorType]) -> tuple[TensorType, ...]:
        (x,) = operands
        rules.check_axes("axes", self.axes, x.rank)
        for axis in self.axes:
            if x.shape[axis] != 1:
                raise fail(f"cannot squeeze axis {axis} of size {x.shape[axis]} in "
                           f"{list(x.shape)}")
        shape = tuple(d for i, d in enumerate(x.shape) if i not in self.axes)
        return (TensorType(shape, x.dtype),)

    def reference(self, *args: np.ndarray) -> tuple[np.ndarray, ...]:
        return (np.squeeze(args[0], axis=self.axes).copy(),)


@register_op
@dataclass(frozen=True)
class Unsqueeze(OpDef):
    """Inserts size-1 dims; `axes` are positions in the result (ONNX semantics)."""

    NAME = "kiln.unsqueeze"
    OPERANDS = ("input",)
    axes: tuple[int, ...]

    def infer_type(self, operands: Sequence[TensorType]) -> tuple[TensorType, ...]:
        (x,) = operands
        rules.check_axes("axes", self.axes, x.rank + len(self.axes))
        rest = iter(x.shape)
        shape = tuple(1 if i in self.axes else next(rest)
                      for i in range(x.rank + len(self.axes)))
        return (TensorType(shape, x.dtype),)

    def reference(self, *args: np.ndarray) -> tuple[np.ndarray, ...]:
        return (np.expand_dims(args[0], self.axes).copy(),)


@register_op
@dataclass(frozen=True)
class Expand(OpDef):
    """Broadcasts the input to exactly `shape` (numpy.broadcast_to)."""

    NAME = "kiln.expand"
    OPERANDS = ("input",)
    shape: tuple[int, ...]

    def infer_type(self, operands: Sequence[TensorType]) -> tuple[TensorType, ...]:
        (x,) = operands
        rules.check_ints("shape", self.shape, minimum=0)
        lead = len(self.shape) - x.rank
        if lead < 0 or any(d not in (1, s) for d, s in zip(x.shape, self.shape[lead:])):
            raise fail(f"cannot broadcast {list(x.shape)} to {list(self.shape)}")
        return (TensorType(self.shape, x.dtype),)

    def reference(self, *args: np.ndarray) -> tuple[np.ndarray, ...]:
        return (np.broadcast_to(args[0], self.shape).copy(),)

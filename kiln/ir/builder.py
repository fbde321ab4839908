"""Builder: the one convenient way to create ops (frontends, passes, tests).

It appends at the end of a block or inserts before an anchor op, infers result types through the
op kind, and stamps a default location so that every op a frontend creates for one model node
carries that node's source line.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import numpy as np

from kiln.errors import KilnError
from kiln.ir.graph import Block, Func, Module, Op, Value, make_op
from kiln.ir.location import UNKNOWN, Location
from kiln.ir.ops.attrs import Dense
from kiln.ir.ops.base import OpDef
from kiln.ir.ops.core import Constant, Return, Weight
from kiln.ir.types import TensorType, dtype_from_numpy


class Builder:
    """Creates ops at an insertion point; `loc` is stamped on ops created without one."""

    def __init__(self, block: Block, *, before: Op | None = None,
                 module: Module | None = None, loc: Location = UNKNOWN,
                 on_insert: Callable[[Op], None] | None = None) -> None:
        self.block = block
        self.on_insert = on_insert
        self.before = before
        self.module = module
        self.loc = loc

    @staticmethod
    def for_func(func: Func, module: Module | None = None) -> Builder:
        return Builder(func.body, module=module)

    @staticmethod
    def before_op(op: Op, module: Module | None = None) -> Builder:
        if op.block is None:
            raise KilnError(f"{op.name} is not in a block")
        return Builder(op.block, before=op, module=module, loc=op.loc)

    @contextmanager
    def at_loc(self, loc: Location) -> Iterator[Builder]:
        """Temporarily stamp `loc` on every op created (one model node → several ops)."""
        saved, self.loc = self.loc, loc
        try:
            yield self
        finally:
            self.loc = saved

    def insert(self, op: Op) -> Op:
        if self.on_insert is not None:
            self.on_insert(op)
        if self.before is not None:
            return self.block.insert_before(self.before, op)
        return self.block.append(op)

    def create(self, kind: OpDef, *operands: Value, names: Sequence[str | None] | None = None,
               loc: Location | None = None) -> Op:
        """Create and insert an op; result types come from `kind.infer_type`."""
        return self.insert(make_op(kind, operands, loc or self.loc, names))

    def add(self, kind: OpDef, *operands: Value, name: str | None = None,
            loc: Location | None = None) -> Value:
        """Create a single-result op and return its result."""
        return self.create(kind, *operands, names=[name], loc=loc).result

    def weight(self, name: str, array: np.ndarray, *, loc: Location | None = None,
               value_name: str | None = None) -> Value:
        """Store `array` in the module under a unique name and reference it."""
        if self.module is None:
            raise KilnError("Builder.weight needs the builder's module")
        array = np.ascontiguousarray(array).reshape(np.shape(array))
        symbol = self.module.add_weight(name, array)
        ttype = TensorType(array.shape, dtype_from_numpy(array.dtype))
        return self.add(Weight(name=symbol, type=ttype), name=value_name or symbol, loc=loc)

    def constant(self, array: np.ndarray | float | int, *, name: str | None = None,
                 loc: Location | None = None) -> Value:
        return self.add(Constant(value=Dense.of(array)), name=name, loc=loc)

    def ret(self, *values: Value) -> Op:
        return self.create(Return(), *values)


def new_function(module: Module, name: str, arg_types: Sequence[TensorType],
                 arg_names: Sequence[str | None] | None = None) -> tuple[Func, Builder]:
    """Add an empty function to `module` and return it with a builder at its end."""
    func = module.add_func(Func(name, arg_types, arg_names))
    return func, Builder(func.body, module=module)

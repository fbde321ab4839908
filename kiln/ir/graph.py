"""The mutable SSA graph: Module, Func, Block, Op, Value with use lists.

Ownership: a Module owns Funcs and the weight arrays; a Func owns one Block (its body); a Block
owns its arguments and its ops in order; an Op owns its result Values and optionally one region
(a Block, how fused groups nest). Every Value keeps the list of (op, operand index) that use it,
so replacing a value or erasing an op is O(uses). Mutate through the methods here or through
`kiln.ir.rewriter`, which keep use lists consistent.
"""

from __future__ import annotations

import dataclasses
import re
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

import numpy as np

from kiln.errors import Diagnostic, KilnError
from kiln.ir.location import UNKNOWN, Location
from kiln.ir.ops.base import OpDef, OpError
from kiln.ir.types import TensorType

if TYPE_CHECKING:
    from pathlib import Path

K = TypeVar("K", bound=OpDef)
_NAME_RE = re.compile(r"[^A-Za-z0-9_.]")


def clean_name(hint: str | None) -> str | None:
    """A value-name hint reduced to `[A-Za-z0-9_.]` (the text format's identifier characters)."""
    if not hint:
        return None
    cleaned = _NAME_RE.sub("_", hint).strip(".")
    return cleaned or None


@dataclass(eq=False)
class Use:
    """One use of a value: operand `index` of `op`."""

    op: Op
    index: int


class Value:
    """An SSA value: an op result or a block argument."""

    __slots__ = ("index", "name", "owner", "type", "uses")

    def __init__(self, type: TensorType, owner: Op | Block, index: int,
                 name: str | None = None) -> None:
        self.type = type
        self.owner = owner
        self.index = index
        self.name = clean_name(name)
        self.uses: list[Use] = []

    @property
    def producer(self) -> Op | None:
        """The op that defines this value, None for a block argument."""
        return self.owner if isinstance(self.owner, Op) else None

    @property
    def users(self) -> list[Op]:
        """Distinct ops using this value, in first-use order."""
        seen: dict[int, Op] = {}
        for use in self.uses:
            seen.setdefault(id(use.op), use.op)
        return list(seen.values())

    def replace_all_uses_with(self, new: Value) -> int:
        """Point every use of this value at `new`; returns how many uses moved."""
        if new is self:
            return 0
        moved = 0
        for use in list(self.uses):
            use.op.set_operand(use.index, new)
            moved += 1
        return moved

    def __repr__(self) -> str:
        return f"Value(%{self.name or '?'}: {self.type})"


class Op:
    """One operation in a block: a kind (typed attributes + semantics), operands and results."""

    __slots__ = ("_operands", "block", "kind", "loc", "region", "results")

    def __init__(self, kind: OpDef, operands: Sequence[Value], result_types: Sequence[TensorType],
                 loc: Location = UNKNOWN, names: Sequence[str | None] | None = None,
                 region: Block | None = None) -> None:
        self.kind = kind
        self.loc = loc
        self.block: Block | None = None
        self._operands: list[Value] = []
        for value in operands:
            self._add_operand(value)
        names = list(names or [])
        self.results = [Value(t, self, i, names[i] if i < len(names) else None)
                        for i, t in enumerate(result_types)]
        self.region = region
        if region is not None:
            region.parent = self

    # -- identity ---------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.kind.NAME

    def isa(self, kind: type[OpDef] | tuple[type[OpDef], ...]) -> bool:
        return isinstance(self.kind, kind)

    @property
    def result(self) -> Value:
        if len(self.results) != 1:
            raise self.error(f"has {len(self.results)} results, expected exactly one")
        return self.results[0]

    # -- operands ---------------------------------------------------------------------------
    @property
    def operands(self) -> tuple[Value, ...]:
        return tuple(self._operands)

    def _add_operand(self, value: Value) -> None:
        value.uses.append(Use(self, len(self._operands)))
        self._operands.append(value)

    def set_operand(self, index: int, value: Value) -> None:
        old = self._operands[index]
        old.uses = [u for u in old.uses if not (u.op is self and u.index == index)]
        self._operands[index] = value
        value.uses.append(Use(self, index))

    def set_operands(self, values: Sequence[Value]) -> None:
        self.drop_operands()
        for value in values:
            self._add_operand(value)

    def drop_operands(self) -> None:
        for value in self._operands:
            value.uses = [u for u in value.uses if u.op is not self]
        self._operands = []

    def operand_types(self) -> list[TensorType]:
        return [v.type for v in self._operands]

    # -- structure --------------------------------------------------------------------------
    def erase(self) -> None:
        """Remove this op from its block; its results must be unused."""
        for r in self.results:
            if r.uses:
                raise self.error(f"cannot erase: result {r.index} still has {len(r.uses)} uses")
        self.drop_operands()
        if self.region is not None:
            for inner in list(self.region.ops):
                inner.drop_operands()
        if self.block is not None:
            self.block.ops.remove(self)
            self.block = None

    def with_kind(self, kind: OpDef) -> None:
        """Replace the attributes (kind) of this op in place."""
        self.kind = kind

    def replace_attrs(self, **changes: object) -> None:
        self.kind = dataclasses.replace(self.kind, **changes)

    def walk(self) -> Iterator[Op]:
        """This op, then every op nested in its region (pre-order)."""
        yield self
        if self.region is not None:
            yield from self.region.walk()

    # -- diagnostics ------------------------------------------------------------------------
    def error(self, message: str, hint: str | None = None,
              cls: type[KilnError] = KilnError) -> KilnError:
        """A `KilnError` naming this op and its source location (raise it)."""
        return cls(diagnostics=[self.diagnostic(message, hint)])

    def diagnostic(self, message: str, hint: str | None = None) -> Diagnostic:
        return Diagnostic(message, op_name=self.name, loc=self.loc, hint=hint)

    def __repr__(self) -> str:
        res = ", ".join(f"%{r.name or '?'}" for r in self.results)
        return f"<Op {res} = {self.name}>"


class Block:
    """An ordered list of ops with typed arguments (a function body or a fused op's region)."""

    def __init__(self, arg_types: Sequence[TensorType] = (),
                 arg_names: Sequence[str | None] | None = None) -> None:
        names = list(arg_names or [])
        self.args = [Value(t, self, i, names[i] if i < len(names) else None)
                     for i, t in enumerate(arg_types)]
        self.ops: list[Op] = []
        self.parent: Op | Func | None = None

    def add_arg(self, type: TensorType, name: str | None = None) -> Value:
        value = Value(type, self, len(self.args), name)
        self.args.append(value)
        return value

    def append(self, op: Op) -> Op:
        op.block = self
        self.ops.append(op)
        return op

    def insert_before(self, anchor: Op, op: Op) -> Op:
        op.block = self
        self.ops.insert(self.ops.index(anchor), op)
        return op

    def insert_after(self, anchor: Op, op: Op) -> Op:
        op.block = self
        self.ops.insert(self.ops.index(anchor) + 1, op)
        return op

    @property
    def terminator(self) -> Op | None:
        return self.ops[-1] if self.ops else None

    def walk(self) -> Iterator[Op]:
        for op in list(self.ops):
            yield from op.walk()


class Func:
    """A function: named arguments, a body block ending in `kiln.return`."""

    def __init__(self, name: str, arg_types: Sequence[TensorType],
                 arg_names: Sequence[str | None] | None = None) -> None:
        self.name = name
        self.body = Block(arg_types, arg_names)
        self.body.parent = self

    @property
    def args(self) -> list[Value]:
        return self.body.args

    @property
    def ops(self) -> list[Op]:
        return self.body.ops

    @property
    def return_op(self) -> Op:
        term = self.body.terminator
        if term is None or term.name != "kiln.return":
            raise KilnError(f"function @{self.name} does not end in kiln.return")
        return term

    @property
    def outputs(self) -> list[Value]:
        return list(self.return_op.operands)

    @property
    def result_types(self) -> list[TensorType]:
        return [v.type for v in self.outputs]

    def walk(self) -> Iterator[Op]:
        return self.body.walk()


class Module:
    """A model: functions plus the weight arrays they reference by name."""

    def __init__(self, name: str = "model") -> None:
        self.name = name
        self.funcs: dict[str, Func] = {}
        self.weights: dict[str, np.ndarray] = {}

    # -- construction -----------------------------------------------------------------------
    def add_func(self, func: Func) -> Func:
        if func.name in self.funcs:
            raise KilnError(f"function @{func.name} defined twice")
        self.funcs[func.name] = func
        return func

    @property
    def main(self) -> Func:
        """The entry function: `@forward` when present, else the first one."""
        if "forward" in self.funcs:
            return self.funcs["forward"]
        if not self.funcs:
            raise KilnError(f"module @{self.name} has no functions")
        return next(iter(self.funcs.values()))

    def add_weight(self, name: str, array: np.ndarray) -> str:
        """Store `array` under a unique name derived from `name`; returns the name used."""
        base = name or "weight"
        unique, n = base, 1
        while unique in self.weights:
            unique, n = f"{base}.{n}", n + 1
        self.weights[unique] = np.ascontiguousarray(array).reshape(np.shape(array))
        return unique

    # -- inspection -------------------------------------------------------------------------
    def walk(self) -> Iterator[Op]:
        for func in self.funcs.values():
            yield from func.walk()

    def op_counts(self) -> dict[str, int]:
        """Op name -> count over every function (nested region ops included), sorted by name."""
        return dict(sorted(Counter(op.name for op in self.walk()).items()))

    def ops_of(self, kind: type[K]) -> list[Op]:
        return [op for op in self.walk() if isinstance(op.kind, kind)]

    # -- text, files, copies ----------------------------------------------------------------
    def to_text(self, *, locations: bool = True) -> str:
        from kiln.ir.printer import print_module
        return print_module(self, locations=locations)

    def __str__(self) -> str:
        return self.to_text()

    def __repr__(self) -> str:
        return f"<kiln Module @{self.name}: {sum(self.op_counts().values())} ops>"

    def __eq__(self, other: object) -> bool:
        """Equal text and equal weights (bit for bit)."""
        if not isinstance(other, Module):
            return NotImplemented
        if self.to_text() != other.to_text() or self.weights.keys() != other.weights.keys():
            return False
        return all(_same_array(self.weights[k], other.weights[k]) for k in self.weights)

    __hash__ = None  # type: ignore[assignment]

    def clone(self) -> Module:
        """A deep copy of the graph; weight arrays are shared (they are treated as immutable)."""
        from kiln.ir.clone import clone_module
        return clone_module(self)

    def save(self, path: str | Path) -> None:
        from kiln.ir.serialize import save_module
        save_module(self, path)


def _same_array(a: np.ndarray, b: np.ndarray) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def make_op(kind: OpDef, operands: Sequence[Value], loc: Location = UNKNOWN,
            names: Sequence[str | None] | None = None, region: Block | None = None,
            result_types: Sequence[TensorType] | None = None) -> Op:
    """An op whose result types come from the kind's `infer_type` (unless given)."""
    if result_types is None:
        try:
            result_types = kind.infer_type([v.type for v in operands])
        except OpError as exc:
            diagnostics = [Diagnostic(d.message, op_name=kind.NAME, loc=loc, hint=d.hint)
                           for d in exc.diagnostics]
            raise KilnError(diagnostics=diagnostics) from None
    return Op(kind, operands, result_types, loc, names, region)

"""A kernel's view of the IR: the ops it computes, what it reads and what it writes.

One top-level op becomes one kernel. For a `kiln.fused` op the kernel computes the ops of its
region; its block arguments stand for the fused op's operands and its yielded values for its
results. A plain op is a group of one. Either way a kernel sees *inner* values (what its ops
use) and maps each to the *outer* value whose buffer holds it, so codegen never has to care
whether it is lowering a group or a single op.

Scalar constants (a `kiln.constant` with one element, the attention scale for instance) are
inlined as literals instead of being passed as buffers.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from kiln.ir.graph import Op, Value
from kiln.ir.ops.core import Constant, Yield
from kiln.ir.ops.fused import Fused


@dataclass
class Group:
    """The ops one kernel computes and the buffers it touches (see the module docstring)."""

    op: Op
    ops: list[Op]
    outer: dict[Value, Value] = field(default_factory=dict)
    """Inner value read from memory → the top-level value whose buffer holds it."""
    outputs: list[tuple[Value, Value]] = field(default_factory=list)
    """(inner computed value, top-level result it is stored as)."""

    @property
    def pattern(self) -> str:
        if isinstance(self.op.kind, Fused):
            return f"fused {self.op.kind.kind} {self.op.kind.pattern}"
        return self.op.name.removeprefix("kiln.")

    def literal(self, inner: Value) -> float | None:
        """The value of a one-element float constant read by the kernel, else None."""
        outer = self.outer.get(inner)
        producer = outer.producer if outer is not None else None
        if producer is None or not isinstance(producer.kind, Constant):
            return None
        array = producer.kind.value.array
        if array.size != 1 or array.dtype.kind != "f":
            return None
        return float(array.reshape(-1)[0])

    def locations(self) -> list[str]:
        """`name (file:line)` of each computed op, for the kernel's docstring."""
        out = []
        for op in self.ops:
            name = next((r.name for r in op.results if r.name), op.name)
            where = op.loc.describe()
            text = f"{op.name.removeprefix('kiln.')} {name}"
            out.append(text + (f" at {where}" if where else ""))
        return out


def make_group(op: Op) -> Group:
    """The group of a top-level op: its region for a fused op, itself otherwise."""
    if op.region is None:
        return Group(op, [op], {v: v for v in op.operands}, [(r, r) for r in op.results])
    ops = [inner for inner in op.region.ops if not inner.isa(Yield)]
    outer = dict(zip(op.region.args, op.operands))
    terminator = op.region.ops[-1]
    outputs = list(zip(terminator.operands, op.results))
    return Group(op, ops, outer, outputs)

"""Static memory planning: every intermediate tensor gets an offset in one arena.

Target-neutral (the C, GPU and HLS generators share it); what is target-specific comes in as
`PlanRules`: value sizes, which ops merely view an operand (reshape: free), which results may
overwrite a dying operand (elementwise: in place), and per-op scratch (im2col buffers).

The plan, step by step:

1. **Storage classes.** Function inputs stay where the caller put them; weights and constants
   live in the parameter blob; a result that is only a view of an operand (`alias`) shares that
   operand's storage. Everything else is an arena buffer.
2. **Outputs.** A returned value whose storage is an arena buffer is written straight into the
   caller's output pointer; a returned input, parameter, or second return of the same storage
   is copied at the end (`output_copies`).
3. **Lifetimes.** A buffer lives from the op defining its first value to the last op reading any
   value stored in it (`kiln.ir.analysis.liveness`, merged over aliases).
4. **In place.** When an op's result may reuse an operand buffer that dies at that op, the two
   share one buffer (only when every use of that operand by the op is an in-place-safe one).
5. **Packing.** Buffers (and per-op scratch, live only during its op) are placed greedily,
   largest first, at the lowest `alignment`-aligned offset that overlaps no buffer alive at the
   same time. Deterministic: ties break by first use.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from kiln.ir.analysis import liveness
from kiln.ir.graph import Func, Op, Value
from kiln.ir.ops.core import Constant, Return, Weight
from kiln.ir.types import DType

StorageKind = Literal["arena", "input", "output", "param"]


@dataclass(frozen=True)
class Storage:
    """Where a value's bytes are: arena `offset`, input/output `index`, or parameter `op`."""

    kind: StorageKind
    offset: int = 0
    index: int = 0
    param: Op | None = None


def element_bytes(dtype: DType) -> int:
    """Bytes one element of `dtype` takes in a buffer: its storage bits rounded up to whole
    bytes (f32 and i32 take 4, an 8-bit quantized q<i8|u8, ...> 1, bool 1).

    Targets size buffers with it, so an int8 tensor takes a quarter of a float32 one's arena
    bytes; the planner still aligns every buffer to `PlanRules.alignment` (vector loads).
    """
    return max(1, -(-dtype.bits // 8))


def value_nbytes(value: Value) -> int:
    """Bytes of a dense, contiguous `value` (`element_bytes` of its dtype per element)."""
    return value.type.numel * element_bytes(value.type.dtype)


def _no_alias(op: Op) -> int | None:
    return None


def _no_inplace(op: Op, result: int) -> tuple[int, ...]:
    return ()


def _no_scratch(op: Op) -> int:
    return 0


@dataclass(frozen=True)
class PlanRules:
    """What the planner must know about a target's kernels."""

    nbytes: Callable[[Value], int]
    alias: Callable[[Op], int | None] = _no_alias
    """Operand index whose storage result 0 merely views (same bytes, new shape), or None."""
    inplace: Callable[[Op, int], tuple[int, ...]] = _no_inplace
    """Operand indices result `i` may overwrite: the kernel reads each element of such an
    operand only before writing the same element of that result."""
    scratch: Callable[[Op], int] = _no_scratch
    """Bytes of scratch the op's kernel needs while it runs."""
    alignment: int = 64


@dataclass
class Buffer:
    """One arena allocation: its values, lifetime (op indices, inclusive) and placement."""

    ident: int
    size: int
    start: int
    end: int
    values: list[Value] = field(default_factory=list)
    scratch_of: Op | None = None
    offset: int = 0


@dataclass
class MemoryPlan:
    """The result: storage of every value, scratch offsets, copies, and the arena size."""

    storage: dict[Value, Storage]
    scratch: dict[Op, tuple[int, int]]
    """op → (arena offset, bytes)."""
    output_copies: list[tuple[int, Value]]
    """(output index, value) pairs copied into the caller's outputs after the last op."""
    buffers: list[Buffer]
    arena_bytes: int

    def naive_bytes(self) -> int:
        """The arena without reuse (every buffer its own bytes): what planning saved from."""
        return sum(b.size for b in self.buffers)


def _align(n: int, alignment: int) -> int:
    return -(-n // alignment) * alignment


class _Planner:
    def __init__(self, func: Func, rules: PlanRules) -> None:
        self.func = func
        self.rules = rules
        self.index = {op: i for i, op in enumerate(func.ops)}
        self.live = liveness(func)
        self.root: dict[Value, Value] = {}
        self.storage: dict[Value, Storage] = {}
        self.buffer_of: dict[Value, Buffer] = {}
        self.buffers: list[Buffer] = []

    # -- 1. storage classes --------------------------------------------------------------------
    def find(self, value: Value) -> Value:
        while value in self.root:
            value = self.root[value]
        return value

    def classify(self) -> None:
        for i, arg in enumerate(self.func.args):
            self.storage[arg] = Storage("input", index=i)
        for op in self.func.ops:
            if op.isa((Weight, Constant)):
                self.storage[op.results[0]] = Storage("param", param=op)
                continue
            source = self.rules.alias(op) if not op.isa(Return) else None
            if source is not None:
                self.root[op.results[0]] = op.operands[source]

    # -- 2. outputs ----------------------------------------------------------------------------
    def bind_outputs(self) -> list[tuple[int, Value]]:
        copies: list[tuple[int, Value]] = []
        bound: set[Value] = set()
        for j, value in enumerate(self.func.outputs):
            root = self.find(value)
            if root in self.storage or root in bound:
                copies.append((j, value))
                continue
            bound.add(root)
            self.storage[root] = Storage("output", index=j)
        return copies

    # -- 3. lifetimes --------------------------------------------------------------------------
    def make_buffers(self) -> None:
        for op in self.func.ops:
            for value in op.results:
                root = self.find(value)
                if root in self.storage:
                    continue
                buf = self.buffer_of.get(root)
                if buf is None:
                    live = self.live[root]
                    buf = Buffer(len(self.buffers), self.rules.nbytes(root), live.start,
                                 live.end, [root])
                    self.buffers.append(buf)
                    self.buffer_of[root] = buf
                if value is not root:
                    buf.values.append(value)
                    buf.end = max(buf.end, self.live[value].end)

    # -- 4. in place ---------------------------------------------------------------------------
    def merge_inplace(self) -> None:
        for op in self.func.ops:
            if op.isa(Return) or self.rules.alias(op) is not None:
                continue
            taken: set[int] = set()
            for r, result in enumerate(op.results):
                target = self.buffer_of.get(self.find(result))
                if target is None or target.start != self.index[op]:
                    continue
                source = self._inplace_source(op, r, taken)
                if source is not None and source.size >= target.size:
                    self._merge(source, target)
                    taken.add(source.ident)

    def _inplace_source(self, op: Op, result: int, taken: set[int]) -> Buffer | None:
        allowed = set(self.rules.inplace(op, result))
        for k in sorted(allowed):
            buf = self.buffer_of.get(self.find(op.operands[k]))
            if buf is None or buf.ident in taken or buf.end != self.index[op]:
                continue
            uses = [j for j, v in enumerate(op.operands) if self.buffer_of.get(self.find(v)) is buf]
            if all(j in allowed for j in uses):
                return buf
        return None

    def _merge(self, source: Buffer, target: Buffer) -> None:
        """`target`'s values move into `source` (which dies where `target` is born)."""
        source.values.extend(target.values)
        source.end = max(source.end, target.end)
        for value in target.values:
            self.buffer_of[value] = source
        self.buffers = [b for b in self.buffers if b is not target]

    # -- 5. packing ----------------------------------------------------------------------------
    def add_scratch(self) -> None:
        for op in self.func.ops:
            size = self.rules.scratch(op)
            if size > 0:
                i = self.index[op]
                self.buffers.append(Buffer(len(self.buffers) + 10**6, size, i, i, scratch_of=op))

    def place(self) -> int:
        align = self.rules.alignment
        placed: list[Buffer] = []
        order = sorted(self.buffers, key=lambda b: (-_align(b.size, align), b.start, b.ident))
        for buf in order:
            clashes = sorted((p for p in placed if p.start <= buf.end and buf.start <= p.end),
                             key=lambda p: p.offset)
            offset = 0
            for other in clashes:
                if offset + buf.size <= other.offset:
                    break
                offset = max(offset, _align(other.offset + other.size, align))
            buf.offset = offset
            placed.append(buf)
        return _align(max((b.offset + b.size for b in placed), default=0), align)


def plan_memory(func: Func, rules: PlanRules) -> MemoryPlan:
    """Assign every value of `func` a storage and pack the arena (see the module docstring)."""
    planner = _Planner(func, rules)
    planner.classify()
    copies = planner.bind_outputs()
    planner.make_buffers()
    planner.merge_inplace()
    planner.add_scratch()
    arena = planner.place()
    storage = dict(planner.storage)
    scratch: dict[Op, tuple[int, int]] = {}
    for buf in planner.buffers:
        if buf.scratch_of is not None:
            scratch[buf.scratch_of] = (buf.offset, buf.size)
    for value, buf in planner.buffer_of.items():
        storage[value] = Storage("arena", offset=buf.offset)
    for value in _all_values(func):
        if value not in storage:
            storage[value] = storage[planner.find(value)]
    return MemoryPlan(storage, scratch, copies, planner.buffers, arena)


def _all_values(func: Func) -> list[Value]:
    return [*func.args, *(r for op in func.ops for r in op.results)]

"""The context a kernel emitter writes into: one C function for one op (or fused group).

An emitter sees its op, asks `ref(value)` for the pointer through which its kernel reads or
writes a value (each distinct value becomes one parameter of the function), `scratch(floats)`
for temporary memory (bump-allocated in the op's scratch buffer, which the memory planner
sizes from the high-water mark), and `packed(...)` for weights repacked at build time. The
function body never names a memory location: the call in `<model>_run` binds parameters to
arena offsets, inputs, outputs or weights, after planning. That is why kernels are emitted
before memory is planned, and how a fused group can run its members one after another
(`sub_context`): region values map to the group's parameters or to scratch.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from kiln.codegen.c.expr import Counter
from kiln.codegen.c.options import COptions
from kiln.codegen.c.params import ParamTable, param_array
from kiln.codegen.writer import CodeWriter
from kiln.ir.graph import Block, Module, Op, Value
from kiln.ir.ops.core import Constant, Weight

ALIGN_FLOATS = 16
"""Scratch sub-allocations start 64 bytes apart."""


@dataclass(frozen=True)
class KernelParam:
    """One parameter of a kernel function: a value, a packed parameter, or the scratch."""

    name: str
    kind: Literal["value", "param", "scratch"]
    value: Value | None = None
    param: str | None = None
    writes: bool = False

    def declaration(self) -> str:
        return f"float* {self.name}" if self.writes else f"const float* {self.name}"


@dataclass
class Kernel:
    """An emitted kernel: C text, parameters in call order, what the planner must know."""

    op: Op
    name: str
    params: list[KernelParam]
    text: str
    scratch_floats: int
    inplace: dict[int, tuple[int, ...]]
    summary: str


@dataclass
class Shared:
    """State one kernel's contexts share (the top one and those of fused members)."""

    module: Module
    options: COptions
    names: dict[Value, str]
    params: ParamTable
    top: Op
    """The op the kernel is for (only its context records in-place facts)."""
    kernel_params: list[KernelParam] = field(default_factory=list)
    scratch_top: int = 0
    temps: Counter = field(default_factory=lambda: Counter("t"))
    loops: Counter = field(default_factory=lambda: Counter("i"))
    summary: list[str] = field(default_factory=list)
    inplace: dict[int, tuple[int, ...]] = field(default_factory=dict)


class KernelContext:
    """What an emitter uses to write the body of one kernel."""

    def __init__(self, op: Op, w: CodeWriter, shared: Shared,
                 bound: dict[Value, Value | str] | None = None) -> None:
        self.op = op
        self.w = w
        self.shared = shared
        self.bound: dict[Value, Value | str] = dict(bound or {})
        """Region values → the outer value they stand for, or a C pointer expression."""

    # -- the op ---------------------------------------------------------------------------------
    @property
    def options(self) -> COptions:
        return self.shared.options

    @property
    def operands(self) -> tuple[Value, ...]:
        return self.op.operands

    @property
    def results(self) -> list[Value]:
        return self.op.results

    def note(self, text: str) -> None:
        """A phrase for the report (`conv2d im2col+gemm`)."""
        self.shared.summary.append(text)

    def set_inplace(self, result: int, operands: tuple[int, ...]) -> None:
        """Result `result` may overwrite these operands of the top-level op (see memory.py)."""
        if operands and self.op is self.shared.top:
            self.shared.inplace[result] = operands

    # -- pointers -------------------------------------------------------------------------------
    def ref(self, value: Value) -> str:
        """The C pointer expression for `value` inside this kernel."""
        if value in self.bound:
            target = self.bound[value]
            return target if isinstance(target, str) else self.ref(target)
        for p in self.shared.kernel_params:
            if p.value is value:
                return p.name
        writes = value.producer is self.op
        name = self.shared.names[value]
        self.shared.kernel_params.append(KernelParam(name, "value", value, writes=writes))
        return name

    def scratch(self, floats: int) -> str:
        """A pointer to `floats` floats of scratch, private to this op's kernel."""
        if not any(p.kind == "scratch" for p in self.shared.kernel_params):
            self.shared.kernel_params.append(KernelParam("scratch", "scratch", writes=True))
        offset = self.shared.scratch_top
        self.shared.scratch_top += -(-max(floats, 1) // ALIGN_FLOATS) * ALIGN_FLOATS
        return f"(scratch + {offset})" if offset else "scratch"

    # -- parameters ------------------------------------------------------------------------------
    def source_op(self, value: Value) -> Op | None:
        """The weight/constant op whose data `value` is (through fused-group arguments and
        views), or None when it is computed at run time."""
        from kiln.codegen.c.kernels import ALIASES
        while True:
            owner = value.owner
            if isinstance(owner, Block):
                parent = owner.parent
                if not isinstance(parent, Op):
                    return None
                value = parent.operands[value.index]
                continue
            if owner.isa((Weight, Constant)):
                return owner
            if owner.isa(ALIASES):
                value = owner.operands[0]
                continue
            return None

    def constant_array(self, value: Value) -> np.ndarray | None:
        op = self.source_op(value)
        return None if op is None else param_array(op, self.shared.module)

    def scalar(self, value: Value) -> float | None:
        """The value of a one-element *constant* (inlined as a literal), else None."""
        op = self.source_op(value)
        if op is None or not op.isa(Constant) or value.type.numel != 1:
            return None
        return float(param_array(op, self.shared.module).ravel()[0])

    def packed(self, value: Value, form: str,
               make: Callable[[np.ndarray], np.ndarray]) -> str | None:
        """A kernel parameter holding `make(data of value)`, or None when `value` is not a
        compile-time parameter."""
        op = self.source_op(value)
        if op is None:
            return None
        ident = self.shared.params.form(op, form, lambda a: make(a.reshape(value.type.shape)))
        if not any(p.param == ident for p in self.shared.kernel_params):
            self.shared.kernel_params.append(KernelParam(ident, "param", param=ident))
        return ident

    # -- nesting ---------------------------------------------------------------------------------
    def sub_context(self, op: Op, bound: dict[Value, Value | str]) -> KernelContext:
        """A context for `op` inside this kernel (a fused group's member)."""
        return KernelContext(op, self.w, self.shared, {**self.bound, **bound})

    def dry_run(self) -> KernelContext:
        """A context whose text and registrations are thrown away: to try an emission."""
        shared = dataclasses.replace(self.shared, kernel_params=list(self.shared.kernel_params),
                                     temps=Counter("t"), loops=Counter("i"), summary=[],
                                     inplace={})
        return KernelContext(self.op, CodeWriter(), shared, self.bound)

    def parallel_for(self, flops: int) -> str | None:
        """The OpenMP pragma for a parallel outer loop doing `flops` of work in all (FLOPs, or
        a pass's elements times `PASS_FLOPS_PER_ELEMENT`); None when single-threaded or when
        the loop is too small to pay for waking the other threads (`COptions.parallel_worth`)."""
        threads = self.options.threads
        if not self.options.parallel_worth(flops):
            return None
        return f"#pragma omp parallel for num_threads({threads})"

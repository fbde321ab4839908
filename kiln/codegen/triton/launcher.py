"""The launcher: generated Python that owns the buffers and launches the kernels in order.

Memory comes from `kiln.codegen.memory`'s static plan: one `torch.uint8` arena allocated once
per launcher, a typed view per intermediate buffer (buffers whose lifetimes do not overlap share
bytes; elementwise results overwrite a dying operand in place), parameters passed in once,
model inputs used where they are (converted to the storage dtype if needed), and outputs
allocated per call so results stay valid after the next call. Reshapes, flattens and other
aliases are views, never copies. Every launch has a grid and block sizes written out as
literals (shapes are static), so the file reads as the schedule it is. A launcher owns one
arena, so one call at a time per launcher (build two to run two streams).
"""

from __future__ import annotations

import keyword

from kiln.codegen.memory import MemoryPlan, PlanRules, Storage
from kiln.codegen.names import Namer, comment
from kiln.codegen.triton.kernel import Kernel
from kiln.codegen.triton.options import TritonOptions
from kiln.codegen.triton.support import family
from kiln.codegen.writer import CodeWriter
from kiln.ir.graph import Func, Op, Value
from kiln.ir.ops.core import Constant, Weight

LAUNCHER_LOCALS = frozenset({"self", "k", "torch", "triton", "math", "params", "device",
                             "kernels", "shape", "offset", "meta", "count"}) | \
    frozenset(keyword.kwlist)
ALIGNMENT = 128
"""Arena alignment in bytes (a GPU cache line; 16 would do for vector loads)."""


def parameters(func: Func) -> dict[str, Op]:
    """Parameter key → weight or constant op: weights by name, constants as `constant<i>`."""
    out: dict[str, Op] = {}
    constants = 0
    for op in func.ops:
        if isinstance(op.kind, Weight):
            out[op.kind.name] = op
        elif isinstance(op.kind, Constant):
            out[f"constant{constants}"] = op
            constants += 1
    return out


def plan_rules(kernels: dict[Op, Kernel], options: TritonOptions) -> PlanRules:
    """What the memory planner must know: sizes, aliases, and which operands a kernel may
    overwrite (`Kernel.inplace`, at the result's shape)."""

    def inplace(op: Op, result: int) -> tuple[int, ...]:
        kernel = kernels.get(op)
        if kernel is None:
            return ()
        shape = op.results[result].type.shape
        return tuple(i for i, v in enumerate(op.operands)
                     if v in kernel.inplace and v.type.shape == shape)

    return PlanRules(nbytes=lambda v: max(1, v.type.numel) * options.itemsize,
                     alias=lambda op: 0 if family(op) == "alias" else None,
                     inplace=inplace, alignment=ALIGNMENT)


class _Names:
    """Launcher-side expression of every value: input local, parameter, buffer or output."""

    def __init__(self, func: Func, plan: MemoryPlan, params: dict[str, Op]) -> None:
        self.plan = plan
        self.namer = Namer(reserved=LAUNCHER_LOCALS)
        self.inputs = [self.namer.name(a.name or f"input{i}") for i, a in enumerate(func.args)]
        self.input_shapes = [a.type.shape for a in func.args]
        self.param_of = {op: key for key, op in params.items()}
        self.fields: dict[object, str] = {}
        self.output_shapes = [v.type.shape for v in func.outputs]

    def field(self, key: object, hint: str, prefix: str) -> str:
        if key not in self.fields:
            self.fields[key] = self.namer.name(hint, prefix=prefix)
        return self.fields[key]

    def base(self, storage: Storage) -> tuple[str, tuple[int, ...]]:
        """The expression of a non-arena storage and the shape it has."""
        if storage.kind == "input":
            return self.inputs[storage.index], self.input_shapes[storage.index]
        if storage.kind == "output":
            return f"out{storage.index}", self.output_shapes[storage.index]
        assert storage.param is not None
        key = self.param_of[storage.param]
        return f"self.{self.field(storage.param, key, 'w_')}", storage.param.results[0].type.shape

    def expr(self, value: Value) -> str:
        storage = self.plan.storage[value]
        if storage.kind == "arena":
            name = self.field(value, value.name or "buf", "b_")
            return f"self.{name}"
        text, shape = self.base(storage)
        if shape != value.type.shape:
            return f"{text}.view({list(value.type.shape)})"
        return text


def _init(w: CodeWriter, func: Func, names: _Names, params: dict[str, Op],
          used: list[Value]) -> None:
    with w.indented():
        w.line("def __init__(self, kernels, params, device):")
        with w.indented():
            w.line('"""`kernels`: the kernels module; `params`: parameter key -> tensor '
                   '(storage dtype, on `device`)."""')
            w.line("self.k = kernels")
            w.line("self.device = torch.device(device)")
            w.line("self.arena = torch.empty(ARENA_BYTES, dtype=torch.uint8, device=self.device)")
            for key, op in params.items():
                if any(names.plan.storage[v].param is op for v in used):
                    w.line(f"self.{names.field(op, key, 'w_')} = params[{key!a}]")
            seen: set[Value] = set()
            for value in used:
                storage = names.plan.storage[value]
                if storage.kind == "arena" and value not in seen:
                    seen.add(value)
                    w.line(f"{names.expr(value)} = self.buffer({storage.offset}, "
                           f"{list(value.type.shape)})  # {comment(value.name)}")
        w.blank()
        w.line("def buffer(self, offset, shape):")
        with w.indented():
            w.line("count = math.prod(shape) * ITEMSIZE")
            w.line("return self.arena[offset:offset + count].view(DTYPE).view(shape)")


def _launch(w: CodeWriter, kernel: Kernel, op: Op, names: _Names) -> None:
    results = ", ".join(comment(r.name) for r in op.results if r.name)
    w.line(f"# {results} = {kernel.comment}")
    args = [names.expr(v) for v in kernel.args]
    if kernel.autotune:
        m, n, b = kernel.grid_dims
        grid = (f'lambda meta: (triton.cdiv({m}, meta["BLOCK_M"]), '
                f'triton.cdiv({n}, meta["BLOCK_N"]), {b})')
        w.line(f"k.{kernel.name}[{grid}]({', '.join(args)})")
        return
    meta = [f"{key}={value}" for key, value in kernel.meta.items()]
    w.line(f"k.{kernel.name}[{kernel.grid}]({', '.join([*args, *meta])}, "
           f"num_warps={kernel.num_warps})")


def launcher_source(func: Func, model: str, kernels: dict[Op, Kernel], plan: MemoryPlan,
                    options: TritonOptions) -> str:
    """The launcher module's text (see the module docstring)."""
    params = parameters(func)
    names = _Names(func, plan, params)
    used = [v for op in func.ops if op in kernels for v in kernels[op].args]
    used += [v for _, v in plan.output_copies]
    w = CodeWriter()
    w.line(f'"""Launch schedule of {comment(model)}: generated by kiln from the optimized IR; '
           'do not edit.')
    w.line("")
    w.line(f"{len(kernels)} kernel launches; storage {options.dtype}. Arena {plan.arena_bytes} "
           f"bytes ({plan.naive_bytes()} without buffer reuse).")
    w.line('"""')
    w.blank()
    w.lines(["import math", "", "import torch", "import triton", ""])
    w.line(f"DTYPE = {options.torch_dtype}")
    w.line(f"ITEMSIZE = {options.itemsize}")
    w.line(f"ARENA_BYTES = {max(plan.arena_bytes, ALIGNMENT)}")
    w.blank()
    w.blank()
    w.line("class Launcher:")
    with w.indented():
        w.line(f'"""Runs {comment(model)} on one device: call it with the model inputs."""')
    w.blank()
    _init(w, func, names, params, used)
    w.blank()
    _call(w, func, names, kernels, plan)
    return w.text()


def _call(w: CodeWriter, func: Func, names: _Names, kernels: dict[Op, Kernel],
          plan: MemoryPlan) -> None:
    with w.indented():
        w.line(f"def __call__(self, {', '.join(names.inputs)}):")
        with w.indented():
            for name in names.inputs:
                w.line(f"{name} = {name}.to(device=self.device, dtype=DTYPE).contiguous()")
            for j, shape in enumerate(names.output_shapes):
                w.line(f"out{j} = torch.empty({list(shape)}, dtype=DTYPE, device=self.device)")
            w.line("k = self.k")
            for op in func.ops:
                if op in kernels:
                    _launch(w, kernels[op], op, names)
            for j, value in plan.output_copies:
                w.line(f"out{j}.copy_({names.expr(value)}.view({list(names.output_shapes[j])}))")
            outs = ", ".join(f"out{j}" for j in range(len(names.output_shapes)))
            w.line(f"return ({outs},)")

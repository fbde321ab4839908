"""kiln IR → TVM Relax: one `relax.Function` "main" built with `relax.BlockBuilder`.

The walk is a small interpreter over the entry function: each kiln op's lowered operands are
looked up in an environment (kiln `Value` → Relax expression), its rule (`RULES`, keyed by op
class: target knowledge lives in target tables, not in the ops) builds a Relax expression, and
the builder emits it under the kiln value's name, so the Relax text reads like the kiln text.
Weights become Relax constants (one per weight name), which TVM folds and embeds in the built
library. `kiln.fused` regions are inlined: kiln's grouping is a promise about one C or Triton
kernel, while TVM's own `FuseOps` decides its kernels from the Relax graph.

Before anything is built, `check_lowerable` rejects IR the rules cannot express: values that are
not plain float32 (quantized, fixed-point, sparse) and ops without a rule, every one at once
with its source location.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np
from tvm import relax

from kiln.codegen.names import identifier
from kiln.errors import Diagnostic, KilnError, UnsupportedOpError
from kiln.ir.graph import Block, Module, Op, Value
from kiln.ir.ops.base import OpDef
from kiln.ir.ops.core import Constant, Return, Weight, Yield
from kiln.ir.ops.fused import Fused
from kiln.ir.types import F32
from kiln.targets.tvm_rules_math import MATH_RULES, Expr, Rule
from kiln.targets.tvm_rules_nn import NN_RULES

RULES: dict[type[OpDef], Rule] = {**MATH_RULES, **NN_RULES}
"""Every op class the TVM target lowers, and how."""
STRUCTURAL: tuple[type[OpDef], ...] = (Weight, Constant, Return, Yield, Fused)
"""Handled by the walk itself (constants, outputs, regions)."""
_FP32_HINT = ("compile the float model (no quantize / fixed-point / sparsify passes in the "
              "pipeline); for int8 use target='cpu' with quantize='int8', for fixed point "
              "target='fpga'")


@dataclass
class Lowered:
    """The Relax module and what the walk saw (for the artifact's report)."""

    mod: Expr
    """The `tvm.IRModule` (untyped to the type checker: TVM ships no stubs)."""
    inputs: list[tuple[str, tuple[int, ...]]]
    outputs: list[tuple[int, ...]]
    op_counts: Counter[str] = field(default_factory=Counter)
    fused_inlined: int = 0


def _not_fp32(op: Op) -> Diagnostic | None:
    for value in (*op.operands, *op.results):
        if value.type.dtype != F32 or value.type.encoding is not None:
            return op.diagnostic(f"works on {value.type}", hint=_FP32_HINT)
    return None


def _no_rule(op: Op) -> Diagnostic | None:
    cls = type(op.kind)
    if cls in RULES or issubclass(cls, STRUCTURAL):
        return None
    return op.diagnostic("has no TVM lowering rule",
                         hint="lowerable ops are listed in RULES (kiln/targets/tvm_lower.py); "
                              "compile for target='cpu' or 'reference' instead")


def problems(module: Module) -> tuple[list[Diagnostic], list[Diagnostic]]:
    """(ops on non-fp32 tensors, ops without a rule) of the entry function, regions included:
    what `check_lowerable` reports (and what a `kiln explain`-style query can list)."""
    ops = list(module.main.walk())
    return ([d for d in map(_not_fp32, ops) if d is not None],
            [d for d in map(_no_rule, ops) if d is not None])


def check_lowerable(module: Module) -> None:
    """Raise a `KilnError` naming every non-fp32 op, else every op without a rule."""
    typed, missing = problems(module)
    if typed:
        raise KilnError(diagnostics=[Diagnostic(
            f"target tvm takes fp32 IR; {len(typed)} op(s) of @{module.name} work on "
            "quantized, fixed-point, sparse or non-float32 tensors"), *typed])
    if missing:
        raise UnsupportedOpError(diagnostics=[Diagnostic(
            f"{len(missing)} op(s) of @{module.name} cannot be lowered to TVM Relax"), *missing])


class _Walk:
    """Lowers blocks op by op into the builder's current dataflow block."""

    def __init__(self, builder: relax.BlockBuilder, module: Module, lowered: Lowered) -> None:
        self.builder = builder
        self.module = module
        self.lowered = lowered
        self.env: dict[Value, Expr] = {}
        self.weights: dict[str, Expr] = {}

    def block(self, block: Block) -> list[Expr]:
        """Lower every op of `block`; the terminator's operands, lowered, are returned."""
        for op in block.ops:
            if op.isa((Return, Yield)):
                return [self.env[v] for v in op.operands]
            self.op(op)
        raise KilnError("a block without a terminator cannot be lowered")

    def op(self, op: Op) -> None:
        self.lowered.op_counts[op.name] += 1
        if isinstance(op.kind, Weight):
            self.env[op.result] = self._weight(op.kind.name)
        elif isinstance(op.kind, Constant):
            self.env[op.result] = relax.const(np.asarray(op.kind.value.array, np.float32))
        elif op.isa(Fused):
            self._fused(op)
        else:
            args = [self.env[v] for v in op.operands]
            try:  # TVM checks types as ops are built and emitted (builtin exception types)
                self._bind(op, RULES[type(op.kind)](op, args))
            except KilnError:
                raise
            except Exception as exc:
                text = str(exc).strip().splitlines()
                raise op.error(f"could not be lowered to Relax: {text[-1] if text else exc!r}",
                               hint="a bug in kiln/targets/tvm_rules_*.py; please report it"
                               ) from exc

    def _weight(self, name: str) -> Expr:
        if name not in self.weights:
            array = self.module.weights.get(name)
            if array is None:
                raise KilnError(f"weight @{name} has no data", hint="load the module with its "
                                ".npz weights (kiln.load) before compiling")
            self.weights[name] = relax.const(np.ascontiguousarray(array, np.float32))
        return self.weights[name]

    def _fused(self, op: Op) -> None:
        """Inline the region: block arguments stand for the fused op's operands."""
        assert op.region is not None
        self.lowered.fused_inlined += 1
        for arg, value in zip(op.region.args, op.operands):
            self.env[arg] = self.env[value]
        for result, out in zip(op.results, self.block(op.region)):
            self.env[result] = out

    def _bind(self, op: Op, expr: Expr) -> None:
        var = self.builder.emit(expr, name_hint=identifier(op.results[0].name))
        if len(op.results) == 1:
            self._check_shape(op, op.results[0], var)
            self.env[op.results[0]] = var
            return
        for i, result in enumerate(op.results):
            item = self.builder.emit(relax.TupleGetItem(var, i),
                                     name_hint=identifier(result.name))
            self._check_shape(op, result, item)
            self.env[result] = item

    @staticmethod
    def _check_shape(op: Op, result: Value, var: Expr) -> None:
        """Relax infers its own shapes: a disagreement is a bug in a rule, caught here."""
        shape = tuple(int(d) for d in var.ty.shape.values)
        if shape != result.type.shape:
            raise op.error(f"lowers to a Relax tensor of shape {list(shape)}, kiln infers "
                           f"{list(result.type.shape)}",
                           hint="a bug in kiln/targets/tvm_rules_*.py; please report it")


def lower(module: Module) -> Lowered:
    """Check `module` and build its Relax `IRModule` (function "main", weights as constants)."""
    check_lowerable(module)
    func = module.main
    lowered = Lowered(mod=None, inputs=[(a.name or f"arg{i}", a.type.shape)
                                        for i, a in enumerate(func.args)],
                      outputs=[t.shape for t in func.result_types])
    builder = relax.BlockBuilder()
    params = [relax.Var(identifier(name), relax.TensorType(list(shape), "float32"))
              for name, shape in lowered.inputs]
    walk = _Walk(builder, module, lowered)
    with builder.function("main", params):
        with builder.dataflow():
            walk.env.update(zip(func.args, params))
            outs = walk.block(func.body)
            result = outs[0] if len(outs) == 1 else relax.Tuple(outs)
            output = builder.emit_output(result)
        builder.emit_func_output(output)
    lowered.mod = builder.get()
    return lowered

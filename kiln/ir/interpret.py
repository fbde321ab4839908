"""The reference interpreter: runs any module with each op kind's NumPy `reference`.

This is kiln's executable specification. Passes and targets are tested against it; constant
folding and `--check-numerics` call into it. Inputs may be NumPy arrays or torch tensors.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from kiln.errors import Diagnostic, InterpretError, KilnError
from kiln.ir.graph import Block, Func, Module, Op, Value
from kiln.ir.ops.core import Return, Weight, Yield
from kiln.ir.types import TensorType

Observer = Callable[[Op, Sequence[np.ndarray]], None]
"""Called after each top-level op with its outputs (used by numerics checking)."""


def to_numpy(x: Any) -> np.ndarray:
    """A NumPy array from a NumPy array, a torch tensor or a nested list.

    Kept cheap: compiled models call it on every input (a CPU tensor without grad converts
    without a copy; anything else takes the general path).
    """
    if type(x) is np.ndarray:
        return x
    if hasattr(x, "detach") and hasattr(x, "numpy"):
        try:
            return np.asarray(x.numpy())
        except (RuntimeError, TypeError):  # requires grad, not on the CPU, conj/neg views
            return np.asarray(x.detach().cpu().resolve_conj().resolve_neg().numpy())
    return np.asarray(x)


def _coerce_input(x: Any, ttype: TensorType, index: int, func: Func) -> np.ndarray:
    arr = to_numpy(x)
    arg = func.args[index]
    label = f"input {index} (%{arg.name})" if arg.name else f"input {index}"
    if tuple(arr.shape) != ttype.shape:
        raise InterpretError(f"{label} of @{func.name} has shape {list(arr.shape)}, "
                             f"expected {list(ttype.shape)}")
    want = ttype.numpy_dtype
    if arr.dtype != want:
        same_kind = (np.issubdtype(arr.dtype, np.floating) and np.issubdtype(want, np.floating))
        if not same_kind:
            raise InterpretError(f"{label} of @{func.name} has dtype {arr.dtype}, "
                                 f"expected {ttype.dtype}")
        arr = arr.astype(want)
    return arr


def _check_result(op: Op, outs: Sequence[np.ndarray]) -> None:
    if len(outs) != len(op.results):
        raise op.error(f"reference returned {len(outs)} results, type says {len(op.results)}",
                       cls=InterpretError)
    for out, res in zip(outs, op.results):
        if tuple(out.shape) != res.type.shape or out.dtype != res.type.numpy_dtype:
            raise op.error(f"reference produced {out.dtype}{list(out.shape)}, result type is "
                           f"{res.type}", cls=InterpretError)


class _Runner:
    def __init__(self, module: Module, observer: Observer | None) -> None:
        self.module = module
        self.observer = observer

    def weight(self, op: Op) -> np.ndarray:
        assert isinstance(op.kind, Weight)
        name = op.kind.name
        if name not in self.module.weights:
            raise op.error(f"weight @{name} has no data (weights were elided)",
                           hint="load the module with its .npz, or pass weights= to kiln.parse",
                           cls=InterpretError)
        return self.module.weights[name]

    def run_block(self, block: Block, env: dict[Value, np.ndarray],
                  top: bool) -> list[np.ndarray]:
        for op in block.ops:
            if isinstance(op.kind, (Return, Yield)):
                return [env[v] for v in op.operands]
            outs = self.run_op(op, env)
            _check_result(op, outs)
            for value, out in zip(op.results, outs):
                env[value] = out
            if top and self.observer is not None:
                self.observer(op, outs)
        raise InterpretError("block has no terminator")

    def run_op(self, op: Op, env: dict[Value, np.ndarray]) -> list[np.ndarray]:
        args = [env[v] for v in op.operands]
        if isinstance(op.kind, Weight):
            return [self.weight(op)]
        if op.region is not None:
            inner = dict(env)
            inner.update(zip(op.region.args, args))
            return self.run_block(op.region, inner, top=False)
        try:
            return list(op.kind.reference_typed([v.type for v in op.operands], *args))
        except KilnError as exc:
            raise InterpretError(diagnostics=[Diagnostic(d.message, op_name=op.name, loc=op.loc)
                                              for d in exc.diagnostics]) from None


def interpret(module: Module, *inputs: Any, func: str | None = None,
              observer: Observer | None = None) -> list[np.ndarray]:
    """Run `func` (default: the module's entry) on `inputs`; always returns a list of arrays."""
    target = module.funcs[func] if func is not None else module.main
    if len(inputs) != len(target.args):
        raise InterpretError(f"@{target.name} takes {len(target.args)} inputs, "
                             f"got {len(inputs)}")
    env = {arg: _coerce_input(x, arg.type, i, target)
           for i, (arg, x) in enumerate(zip(target.args, inputs))}
    return _Runner(module, observer).run_block(target.body, env, top=True)


def run_op(module: Module, op: Op, env: dict[Value, np.ndarray]) -> list[np.ndarray]:
    """One op of `module` by its reference semantics, reading its operands from `env`:
    weights come from `module.weights`, a region (a fused group) runs its body. For callers
    that evaluate part of a module themselves (the fpga target's host tail)."""
    return _Runner(module, None).run_op(op, env)


def interpret_all(module: Module, *inputs: Any,
                  func: str | None = None) -> dict[Value, np.ndarray]:
    """Every top-level value of the function computed on `inputs` (for numerics debugging)."""
    values: dict[Value, np.ndarray] = {}

    def record(op: Op, outs: Sequence[np.ndarray]) -> None:
        values.update(zip(op.results, outs))

    interpret(module, *inputs, func=func, observer=record)
    return values


def sample_inputs(func: Func, seed: int, scale: float = 1.0) -> list[np.ndarray]:
    """Random inputs matching the function's signature (normal floats, small ints)."""
    rng = np.random.default_rng(seed)
    out = []
    for arg in func.args:
        t = arg.type
        if t.dtype.is_float:
            out.append((rng.standard_normal(t.shape) * scale).astype(t.numpy_dtype))
        else:
            out.append(rng.integers(-8, 8, size=t.shape).astype(t.numpy_dtype))
    return out

"""Shrinking a failing module to a small reproducer: delta debugging on the graph.

`shrink` tries returning a single earlier value (dropping the ops after it), dropping one of
several outputs, bypassing an op by one of its operands (or a function input) of the same type,
and freezing a value into a weight (dropping what computes it); it keeps any candidate that
still fails the same way (`failure_predicate`), and repeats until no candidate does. Edits
happen on clones; the dead ops they leave are swept here, not by `dce`, which may be the pass
under test. Function inputs never change, so the failing inputs still apply.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from functools import partial
from typing import Any

import numpy as np

from kiln.ir.builder import Builder
from kiln.ir.graph import Module, Op, Value
from kiln.ir.interpret import interpret_all
from kiln.ir.ops.core import Constant, Return, Weight
from kiln.ir.types import dtype_from_numpy
from kiln.testing.differential import TOLERANCE, Status, check, check_elided, run_quietly


def failure_predicate(pipeline: str, inputs: Sequence[np.ndarray], status: Status, *,
                      elided: bool = False, tolerance: float | None = TOLERANCE,
                      calibration: Any = None) -> Callable[[Module], bool]:
    """Whether a candidate module still fails `pipeline` with the same `status` (with its
    weights elided, for a failure `check_elided` found)."""
    def fails(candidate: Module) -> bool:
        try:
            want = run_quietly(candidate, inputs)
        except Exception:  # a candidate the interpreter rejects is not a reproducer
            return False
        if elided:
            return check_elided(candidate, pipeline, calibration=calibration).status == status
        outcome = check(candidate, pipeline, inputs, want, tolerance=tolerance,
                        calibration=calibration)
        return outcome.status == status
    return fails


def shrink(module: Module, fails: Callable[[Module], bool],
           inputs: Sequence[np.ndarray] | None = None, budget: int = 400) -> Module:
    """The smallest variant of `module` found that still `fails` (at most `budget` tries).

    With `inputs`, a value may also be frozen: replaced by a weight holding what it computes on
    them, which drops everything upstream that nothing else needs."""
    best = module
    while budget > 0:
        for candidate in _candidates(best, inputs):
            budget -= 1
            if fails(candidate):
                best = candidate
                break
            if budget <= 0:
                return best
        else:
            return best
    return best


def size(module: Module) -> int:
    """Ops that compute something (parameters and the return not counted)."""
    return sum(1 for op in module.main.ops if not op.isa((Weight, Constant, Return)))


def _candidates(module: Module, inputs: Sequence[np.ndarray] | None) -> Iterator[Module]:
    ops = module.main.ops
    n = size(module)
    for i, op in enumerate(ops):
        if not op.isa((Weight, Constant, Return)):
            for j in range(len(op.results)):
                yield from _smaller(_edit(module, partial(_return_only, index=i, result=j)), n)
    outputs = len(module.main.return_op.operands)
    for k in range(outputs if outputs > 1 else 0):
        yield from _smaller(_edit(module, partial(_drop_output, k=k)), n)
    for i in reversed(range(len(ops))):
        for source in _bypass_sources(module, ops[i]):
            yield from _smaller(_edit(module, partial(_bypass, index=i, source=source)), n)
    if inputs is not None:
        with np.errstate(all="ignore"):
            values = interpret_all(module, *inputs)
        for i, op in enumerate(ops):
            if len(op.results) == 1 and op.result in values and _freezable(op):
                freeze = partial(_freeze, index=i, array=values[op.result])
                yield from _smaller(_edit(module, freeze), n)


def _smaller(candidate: Module, than: int) -> Iterator[Module]:
    if size(candidate) < than:
        yield candidate


def _edit(module: Module, change: Callable[[Module], None]) -> Module:
    copy = module.clone()
    change(copy)
    sweep(copy)
    return copy


def _return_only(module: Module, index: int, result: int) -> None:
    module.main.return_op.set_operands([module.main.ops[index].results[result]])


def _drop_output(module: Module, k: int) -> None:
    ret = module.main.return_op
    ret.set_operands([v for i, v in enumerate(ret.operands) if i != k])


SourceRef = tuple[int, int]
"""(-1, arg index) for a function input, else (operand index of the op, 0)."""


def _bypass_sources(module: Module, op: Op) -> list[SourceRef]:
    if len(op.results) != 1 or op.isa((Weight, Constant, Return)):
        return []
    t = op.result.type
    found: list[SourceRef] = [(k, 0) for k, v in enumerate(op.operands) if v.type == t]
    found += [(-1, a) for a, v in enumerate(module.main.args) if v.type == t]
    return found


def _bypass(module: Module, index: int, source: SourceRef) -> None:
    op = module.main.ops[index]
    which, arg = source
    new: Value = module.main.args[arg] if which < 0 else op.operands[which]
    op.result.replace_all_uses_with(new)


def _freezable(op: Op) -> bool:
    """Ops worth freezing: computed (not parameters), of a type a weight can hold."""
    return not op.isa((Weight, Constant, Return)) and op.result.type.encoding is None \
        and dtype_from_numpy(op.result.type.numpy_dtype) == op.result.type.dtype


def _freeze(module: Module, index: int, array: np.ndarray) -> None:
    """Replace op `index`'s result by a weight holding `array` (inserted before the op)."""
    op = module.main.ops[index]
    builder = Builder.before_op(op, module)
    frozen = builder.weight(f"frozen{index}", array)
    op.result.replace_all_uses_with(frozen)


def sweep(module: Module) -> None:
    """Erase dead pure ops (last to first) and drop weights no op references."""
    for func in module.funcs.values():
        for op in reversed(list(func.ops)):
            if not op.kind.SIDE_EFFECTS and all(not r.uses for r in op.results):
                op.erase()
    used = {op.kind.name for op in module.walk() if isinstance(op.kind, Weight)}
    module.weights = {k: v for k, v in module.weights.items() if k in used}

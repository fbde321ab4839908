"""The IR verifier: every invariant the rest of kiln relies on, checked in one walk.

Run after parsing and (in tests, always) after every pass. It reports *all* problems at once, one
`Diagnostic` per op (op name, model location, message), in a `VerifyError`:

- operand count within the kind's `operand_range()`; each operand defined earlier in the same
  block or in an enclosing one (region ops see outer values defined before the region op);
- result types equal `kind.infer_type(operand types)` and `kind.verify(...)` passes;
- use lists: every operand has exactly one matching `Use`, every `Use` points at a live op of
  the function that really has the value at that operand index;
- back-pointers: `op.block`, `region.parent`, `value.owner` / `value.index`; no op twice;
- a function body ends with exactly one `kiln.return` (last); a region ends with `kiln.yield`
  whose operand types are the region op's result types; neither terminator appears elsewhere;
- `kiln.weight` ops name arrays present in `module.weights` with their shape and dtype, unless the
  module's weights are elided (`module.weights` empty).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

from kiln.errors import Diagnostic, VerifyError
from kiln.ir.graph import Block, Func, Module, Op, Value
from kiln.ir.ops.base import OpDef, OpError
from kiln.ir.ops.core import Return, Weight, Yield
from kiln.ir.types import TensorType

Excerpt = Callable[[Op], "str | None"]
"""Source text for an op's diagnostic (the parser passes the op's line with a caret)."""


def verify(module: Module) -> None:
    """Raise `VerifyError` listing every problem in `module`; return quietly if it is valid."""
    raise_problems(collect_diagnostics(module), f"module @{module.name}")


def verify_func(func: Func, module: Module | None = None) -> None:
    """Verify one function; `module` (if given) supplies the weights to check against."""
    checker = _Checker(module, None)
    checker.func(func)
    raise_problems(checker.problems, f"function @{func.name}")


def collect_diagnostics(module: Module, excerpt: Excerpt | None = None) -> list[Diagnostic]:
    """Every problem in `module`, in text order (empty when it is valid)."""
    checker = _Checker(module, excerpt)
    for func in module.funcs.values():
        checker.func(func)
    return checker.problems


def raise_problems(problems: list[Diagnostic], what: str) -> None:
    """Raise one `VerifyError` for all `problems` (if any), headed by a summary about `what`."""
    if problems:
        noun = "problem" if len(problems) == 1 else "problems"
        summary = Diagnostic(f"{what} is invalid ({len(problems)} {noun})")
        raise VerifyError(diagnostics=[summary, *problems])


def _name(value: Value) -> str:
    return f"%{value.name}" if value.name else f"%<{value.index}>"


def _types(types: list[TensorType] | tuple[TensorType, ...]) -> str:
    return "(" + ", ".join(str(t) for t in types) + ")"


class _Checker:
    """One verification walk; `problems` collects the diagnostics."""

    def __init__(self, module: Module | None, excerpt: Excerpt | None) -> None:
        self.module = module
        self.excerpt = excerpt
        self.problems: list[Diagnostic] = []
        self.live: dict[int, Op] = {}
        self.values: list[Value] = []
        self.use_counts: dict[int, Counter[tuple[int, int]]] = {}

    def report(self, op: Op, message: str, hint: str | None = None) -> None:
        text = self.excerpt(op) if self.excerpt is not None else None
        self.problems.append(Diagnostic(message, op_name=op.name, loc=op.loc, hint=hint,
                                        excerpt=text))

    # -- structure ---------------------------------------------------------------------------
    def func(self, func: Func) -> None:
        self.live, self.values, self.use_counts = {}, [], {}
        if func.body.parent is not func:
            self.problems.append(Diagnostic(f"function @{func.name}: body.parent is wrong"))
        self.block(func.body, set(), Return)
        term = func.body.terminator
        if term is None or not term.isa(Return):
            self.problems.append(Diagnostic(f"function @{func.name} does not end with kiln.return",
                                            hint="the last op of a function is its kiln.return"))
        self.use_lists(func)

    def block(self, block: Block, visible: set[int], terminator: type[OpDef]) -> None:
        defined = set(visible)
        for i, arg in enumerate(block.args):
            if arg.owner is not block or arg.index != i:
                where = block.parent
                self.problems.append(Diagnostic(f"block argument {i} of {where!r} has a wrong "
                                                "owner or index"))
            defined.add(id(arg))
            self.values.append(arg)
        for position, op in enumerate(block.ops):
            if id(op) in self.live:
                self.report(op, "appears twice in the function")
                continue
            self.live[id(op)] = op
            if op.block is not block:
                self.report(op, "op.block does not point at the block holding the op")
            self.op(op, defined)
            if op.isa((Return, Yield)):
                if not isinstance(op.kind, terminator):
                    place = "a function body" if terminator is Return else "a region"
                    self.report(op, f"cannot appear in {place}")
                elif position != len(block.ops) - 1:
                    self.report(op, "must be the last op of its block")
            for result in op.results:
                defined.add(id(result))

    def op(self, op: Op, defined: set[int]) -> None:
        ready = self.operands(op, defined)
        for i, result in enumerate(op.results):
            if result.owner is not op or result.index != i:
                self.report(op, f"result {i} has a wrong owner or index")
            self.values.append(result)
        self.region(op, defined)
        if ready:
            self.types(op)
        if isinstance(op.kind, Weight):
            self.weight(op, op.kind)

    def operands(self, op: Op, defined: set[int]) -> bool:
        """Check count, definition and use entries; True when types can be inferred."""
        low, high = op.kind.operand_range()
        count = len(op.operands)
        ok = low <= count and (high is None or count <= high)
        if not ok:
            expected = f"{low}" if low == high else f"{low}..{high if high is not None else ''}"
            self.report(op, f"takes {expected} operands, got {count}")
        for i, value in enumerate(op.operands):
            if id(value) not in defined:
                self.report(op, f"operand {i} ({_name(value)}) is not defined before this op "
                                "in an enclosing block")
                ok = False
            matches = self.use_count(value, op, i)
            if matches != 1:
                self.report(op, f"operand {i} ({_name(value)}) has {matches} use entries for "
                                "this op, expected 1")
        return ok

    def use_count(self, value: Value, op: Op, index: int) -> int:
        """How many entries of `value.uses` are (op, index); counted once per value."""
        counts = self.use_counts.get(id(value))
        if counts is None:
            counts = Counter((id(use.op), use.index) for use in value.uses)
            self.use_counts[id(value)] = counts
        return counts[(id(op), index)]

    def region(self, op: Op, defined: set[int]) -> None:
        if not op.kind.HAS_REGION:
            if op.region is not None:
                self.report(op, "has a region but its kind takes none")
            return
        if op.region is None:
            self.report(op, "needs a region")
            return
        if op.region.parent is not op:
            self.report(op, "region.parent does not point at the op")
        if op.kind.ISOLATED_FROM_ABOVE:
            self.isolated(op)
            defined = set()
        self.block(op.region, defined, Yield)
        term = op.region.terminator
        if term is None or not term.isa(Yield):
            self.report(op, "region does not end with kiln.yield")
            return
        yielded = [v.type for v in term.operands]
        results = [r.type for r in op.results]
        if yielded != results:
            self.report(op, f"region yields {_types(yielded)} but the op's results are "
                            f"{_types(results)}")

    def isolated(self, op: Op) -> None:
        """An isolated region reads outer values only through its arguments."""
        assert op.region is not None
        if [v.type for v in op.region.args] != [v.type for v in op.operands]:
            self.report(op, "region argument types differ from the operand types")

    # -- semantics ---------------------------------------------------------------------------
    def types(self, op: Op) -> None:
        operand_types = [v.type for v in op.operands]
        results = tuple(r.type for r in op.results)
        try:
            inferred: tuple[TensorType, ...] | None = tuple(op.kind.infer_type(operand_types))
        except OpError as exc:
            for d in exc.diagnostics:
                self.report(op, d.message, d.hint)
            return
        except NotImplementedError:
            inferred = None
            if not op.kind.HAS_REGION:
                self.report(op, "its kind has no type inference")
        except Exception as exc:  # a crash in op code must become a diagnostic
            self.report(op, f"type inference failed: {type(exc).__name__}: {exc}")
            return
        if inferred is not None and results != inferred:
            self.report(op, f"result types {_types(results)} differ from the inferred "
                            f"{_types(inferred)}")
        try:
            op.kind.verify(operand_types)
        except OpError as exc:
            for d in exc.diagnostics:
                self.report(op, d.message, d.hint)
        except Exception as exc:  # same as above
            self.report(op, f"verification failed: {type(exc).__name__}: {exc}")

    def weight(self, op: Op, kind: Weight) -> None:
        if self.module is None or not self.module.weights:
            return  # weights elided: nothing to check against
        array = self.module.weights.get(kind.name)
        if array is None:
            self.report(op, f"weight @{kind.name} is missing from the module's weights")
            return
        want = kind.type
        if tuple(array.shape) != want.shape or array.dtype != want.numpy_dtype:
            self.report(op, f"weight @{kind.name} is {array.dtype}{list(array.shape)} but its "
                            f"type {want} needs {want.numpy_dtype}{list(want.shape)}")

    def use_lists(self, func: Func) -> None:
        for value in self.values:
            for use in value.uses:
                user = self.live.get(id(use.op))
                owner = value.owner if isinstance(value.owner, Op) else None
                if user is None:
                    message = (f"{_name(value)} is used by a '{use.op.name}' op that is not in "
                               f"function @{func.name} (a stale use)")
                elif use.index >= len(user.operands) or user.operands[use.index] is not value:
                    message = (f"{_name(value)} has a use entry (operand {use.index}) that the "
                               f"'{user.name}' op does not have")
                else:
                    continue
                if owner is not None:
                    self.report(owner, message)
                else:
                    self.problems.append(Diagnostic(f"function @{func.name}: {message}"))

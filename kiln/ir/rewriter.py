"""The rewriter: the only way passes change the graph, so use lists stay right and changes count.

A rewrite pattern is a plain function `pattern(op, rewriter) -> bool` that inspects `op`, and only
when it matches, edits through the rewriter and returns True. `apply_patterns` drives a list of
patterns over a function to a fixed point (a worklist, not repeated full sweeps).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from kiln.errors import KilnError
from kiln.ir.builder import Builder
from kiln.ir.graph import Func, Module, Op, Value

Pattern = Callable[[Op, "Rewriter"], bool]


class Rewriter:
    """Edits a module and counts what changed (passes report `changed = rewriter.changes > 0`)."""

    def __init__(self, module: Module) -> None:
        self.module = module
        self.changes = 0
        self.erased: set[Op] = set()
        """Erased ops themselves (not ids: a freed op's id can be reused by a new op)."""
        self.created: list[Op] = []

    def builder_before(self, op: Op) -> Builder:
        """A builder inserting before `op`, stamping `op`'s location on what it creates."""
        if op.block is None:
            raise op.error("is not in a block")
        return Builder(op.block, before=op, module=self.module, loc=op.loc,
                       on_insert=self.created.append)

    def replace_uses(self, old: Value, new: Value) -> None:
        if old.type != new.type:
            raise KilnError(f"cannot replace {old.type} value with {new.type} value")
        if old.replace_all_uses_with(new):
            self.changes += 1

    def replace_op(self, op: Op, new_values: Sequence[Value]) -> None:
        """Route every use of `op`'s results to `new_values`, then erase `op`."""
        if len(new_values) != len(op.results):
            raise op.error(f"replacement has {len(new_values)} values for "
                           f"{len(op.results)} results")
        for old, new in zip(op.results, new_values):
            self.replace_uses(old, new)
        self.erase_op(op)

    def erase_op(self, op: Op) -> None:
        op.erase()
        self.erased.add(op)
        self.changes += 1

    def modify(self, op: Op, **attrs: object) -> None:
        """Change attributes of `op` in place (a new frozen kind)."""
        op.replace_attrs(**attrs)
        self.changes += 1

    def set_operand(self, op: Op, index: int, value: Value) -> None:
        op.set_operand(index, value)
        self.changes += 1


def apply_patterns(module: Module, patterns: Sequence[Pattern], func: Func | None = None,
                   max_iterations: int = 100_000) -> int:
    """Apply patterns greedily to every op until none matches; returns the number of changes.

    The worklist starts with every op; when a pattern fires, the ops it created and the users
    of the values it touched are revisited.
    """
    rewriter = Rewriter(module)
    funcs = [func] if func is not None else list(module.funcs.values())
    for f in funcs:
        worklist = list(f.ops)
        steps = 0
        while worklist:
            op = worklist.pop(0)
            steps += 1
            if steps > max_iterations:
                raise KilnError("rewrite patterns did not converge", hint="a pattern keeps firing")
            if op in rewriter.erased or op.block is None:
                continue
            for pattern in patterns:
                before = len(rewriter.created)
                users = [u for r in op.results for u in r.users]
                operands = [v.producer for v in op.operands if v.producer is not None]
                if pattern(op, rewriter):
                    worklist.extend(rewriter.created[before:])
                    worklist.extend(users)
                    worklist.extend(operands)
                    if op not in rewriter.erased:
                        worklist.append(op)
                    break
    return rewriter.changes

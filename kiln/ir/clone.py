"""Deep copies of the IR graph.

Funcs, blocks, ops and values are copied, keeping names, order and locations; op kinds,
types, locations and weight arrays are shared, since all of them are immutable.
"""

from __future__ import annotations

from kiln.ir.graph import Block, Func, Module, Op, Value


def clone_module(module: Module) -> Module:
    """A copy of `module` that shares nothing mutable with it (weight arrays are shared)."""
    copy = Module(module.name)
    for func in module.funcs.values():
        copy.add_func(clone_func(func))
    copy.weights = dict(module.weights)
    return copy


def clone_func(func: Func, name: str | None = None) -> Func:
    """A copy of `func` (renamed to `name` when given)."""
    copy = Func(func.name if name is None else name, [a.type for a in func.args])
    mapping: dict[int, Value] = {}
    _copy_block(func.body, copy.body, mapping)
    return copy


def _copy_block(source: Block, target: Block, mapping: dict[int, Value]) -> None:
    """Copy `source`'s argument names and ops into `target` (which has the argument types)."""
    for old, new in zip(source.args, target.args):
        new.name = old.name
        mapping[id(old)] = new
    for op in source.ops:
        target.append(_copy_op(op, mapping))


def _copy_op(op: Op, mapping: dict[int, Value]) -> Op:
    operands = []
    for value in op.operands:
        new_value = mapping.get(id(value))
        if new_value is None:
            raise op.error(f"cannot clone: operand {value!r} is not defined before the op")
        operands.append(new_value)
    region = None
    if op.region is not None:
        region = Block([a.type for a in op.region.args])
        _copy_block(op.region, region, mapping)
    copy = Op(op.kind, operands, [r.type for r in op.results], op.loc, region=region)
    for old, new in zip(op.results, copy.results):
        new.name = old.name
        mapping[id(old)] = new
    return copy

"""Rebuilding a function after channel pruning: sliced parameters, shrunk types, new attributes.

The rewriter cannot replace a value by one of another type, so every op whose operands or
results change shape is built anew, in op order, before the op it replaces: its operands are
the rebuilt values (`new_of`), its parameters sliced to the kept channels
(`ChannelPlan.slices`), a reshape gets its new target shape and a depthwise conv its new
group count. Where the new result type equals the old one (a consumer whose input channels
shrank but whose output did not), uses move to the new value at once; the other old ops are
erased at the end, last first, followed by parameters nothing uses any more.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import numpy as np

from kiln.errors import KilnError
from kiln.ir.builder import Builder
from kiln.ir.graph import Op, Value
from kiln.ir.ops.base import OpDef
from kiln.ir.ops.core import Constant, Weight
from kiln.ir.ops.nn_conv import ConvBase
from kiln.ir.ops.shape import Reshape
from kiln.ir.rewriter import Rewriter
from kiln.ir.types import TensorType
from kiln.passes.fold_batchnorm import drop_weight_data, erase_unused_parameters
from kiln.passes.fold_constants import known_value

if TYPE_CHECKING:
    from kiln.passes.prune_channels import ChannelPlan


def _pruned(plan: ChannelPlan, space: int) -> bool:
    return len(plan.indices(space)) < plan.space(space).size


def _touched(op: Op, plan: ChannelPlan, new_of: dict[Value, Value]) -> bool:
    if any(v in new_of for v in op.operands):
        return True
    return any(_pruned(plan, space) for _, _, space in plan.slices.get(op, []))


def _expected(value: Value, plan: ChannelPlan) -> TensorType:
    """The value's type with its channel axis shrunk to the kept channels."""
    if value not in plan.where:
        return value.type
    space, axis = plan.where[value]
    shape = list(value.type.shape)
    shape[axis] = len(plan.indices(space))
    return TensorType(tuple(shape), value.type.dtype, value.type.encoding)


def _kind(op: Op, plan: ChannelPlan, operands: list[Value]) -> OpDef:
    """The op's attributes after pruning: a reshape's shape, a depthwise conv's groups."""
    kind = op.kind
    if isinstance(kind, Reshape):
        return Reshape(shape=_expected(op.result, plan).shape)
    if isinstance(kind, ConvBase) and kind.groups != 1:
        return dataclasses.replace(kind, groups=operands[0].type.shape[1])
    return kind


def _only_user(value: Value, op: Op) -> bool:
    """`value` is a weight read by `op` alone, and no other weight op shares its symbol."""
    producer = value.producer
    if producer is None or not producer.isa(Weight) or value.users != [op]:
        return False
    name = producer.kind.name  # type: ignore[attr-defined]
    block = producer.block
    return block is not None and sum(
        1 for o in block.ops if isinstance(o.kind, Weight) and o.kind.name == name) == 1


def _parameter(builder: Builder, op: Op, value: Value, array: np.ndarray) -> Value:
    """A parameter holding the sliced `array`: the same weight name when only `op` reads it,
    `<name>.pruned` otherwise, or a constant for a constant. A sparse encoding is dropped
    (slicing columns breaks N:M groups and blocks): run `sparsify` after pruning."""
    producer = value.producer
    array = np.ascontiguousarray(array)
    if producer is not None and producer.isa(Constant):
        return builder.constant(array, name=value.name)
    assert producer is not None and isinstance(producer.kind, Weight)
    module = builder.module
    assert module is not None
    symbol = producer.kind.name
    if _only_user(value, op):
        module.weights[symbol] = array
    else:
        symbol = module.add_weight(f"{symbol}.pruned", array)
    ttype = TensorType(array.shape, value.type.dtype)
    return builder.add(Weight(name=symbol, type=ttype), name=value.name)


def _sliced_operands(op: Op, plan: ChannelPlan, builder: Builder,
                     operands: list[Value]) -> list[Value]:
    by_index: dict[int, list[tuple[int, int]]] = {}
    for index, axis, space in plan.slices.get(op, []):
        if _pruned(plan, space):
            by_index.setdefault(index, []).append((axis, space))
    assert builder.module is not None
    for index, cuts in sorted(by_index.items()):
        array = known_value(op.operands[index], builder.module)
        assert array is not None
        for axis, space in cuts:
            array = np.take(array, plan.indices(space), axis=axis)
        operands[index] = _parameter(builder, op, op.operands[index], array)
    return operands


def _rebuild_op(op: Op, plan: ChannelPlan, rewriter: Rewriter,
                new_of: dict[Value, Value]) -> None:
    builder = rewriter.builder_before(op)
    operands = _sliced_operands(op, plan, builder, [new_of.get(v, v) for v in op.operands])
    new = builder.create(_kind(op, plan, operands), *operands,
                         names=[r.name for r in op.results])
    for old, value in zip(op.results, new.results):
        if value.type.shape != _expected(old, plan).shape:
            raise op.error(f"channel pruning produced {value.type}, expected "
                           f"{_expected(old, plan)} (a bug in prune)")
        if value.type == old.type:
            rewriter.replace_uses(old, value)
        else:
            new_of[old] = value


def rebuild(rewriter: Rewriter, plan: ChannelPlan) -> None:
    """Rebuild every op the plan changes (module docstring), then erase what is left over."""
    module = rewriter.module
    new_of: dict[Value, Value] = {}
    stale: list[Op] = []
    for func in module.funcs.values():
        for op in list(func.ops):
            if _touched(op, plan, new_of):
                _rebuild_op(op, plan, rewriter, new_of)
                stale.append(op)
    params: list[Value] = []
    for op in reversed(stale):
        if any(r.uses for r in op.results):
            raise op.error("still used after channel pruning (a bug in prune)",
                           cls=KilnError)
        params.extend(op.operands)
        rewriter.erase_op(op)
    drop_weight_data(module, erase_unused_parameters(params, rewriter))

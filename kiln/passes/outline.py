"""Outlining: move a group of ops into the region of a new `kiln.fused` op, and tidy such ops.

`outline` is how `fuse` builds its groups; `add_input`, `tidy_inputs` and `settle` are how
other passes (fold-constants, cse) keep a fused op in its canonical form after editing its region:

- every value the group reads from outside (weights and constants included) is an operand, and
  the region sees it as the block argument at the same position (isolated from above);
- each outside value is passed once, and every block argument is used;
- the values the group computes that are used outside are yielded, in op order, and the fused
  op's results keep their names;
- its `pattern` names the ops of its region in order (constants and weights written inside a
  region do not count);
- a fused op holds at least two such ops (one op alone is just that op).
"""

from __future__ import annotations

from collections.abc import Sequence

from kiln.ir.graph import Block, Op, Value
from kiln.ir.location import UNKNOWN, Location
from kiln.ir.ops.core import Constant, Weight, Yield
from kiln.ir.ops.fused import Fused
from kiln.ir.rewriter import Rewriter


def group_inputs(ops: Sequence[Op]) -> list[Value]:
    """Values the group reads but does not define, once each, in order of first use."""
    defined = {r for op in ops for r in op.results}
    seen: dict[Value, None] = {}
    for op in ops:
        seen.update((v, None) for v in op.operands if v not in defined)
    return list(seen)


def group_outputs(ops: Sequence[Op]) -> list[Value]:
    """Results of the group used outside it, in op order (what the fused op must yield)."""
    members = set(ops)
    return [r for op in ops for r in op.results if any(use.op not in members for use in r.uses)]


def fused_location(ops: Sequence[Op]) -> Location:
    """`Location(fused=...)` with one entry per op (in pattern order), or unknown if all are."""
    if all(op.loc == UNKNOWN for op in ops):
        return UNKNOWN
    return Location(fused=tuple(op.loc for op in ops))


def _copy_into(block: Block, op: Op, mapping: dict[Value, Value]) -> Op:
    """Append a copy of `op` (no region) to `block`, reading operands through `mapping`, which
    then maps `op`'s results to the copy's."""
    copy = Op(op.kind, [mapping[v] for v in op.operands], [r.type for r in op.results], op.loc,
              [r.name for r in op.results])
    block.append(copy)
    mapping.update(zip(op.results, copy.results))
    return copy


def _dependents_between(ops: Sequence[Op]) -> list[Op]:
    """Ops between the group's first and last member that read (transitively) from the group.

    They must run after the fused op, which takes the last member's place. Convexity
    guarantees none of them feeds the group, so moving them keeps the block in dataflow order.
    """
    block = ops[0].block
    assert block is not None
    members = set(ops)
    tainted = set(members)
    start, end = block.ops.index(ops[0]), block.ops.index(ops[-1])
    moved = []
    for op in block.ops[start:end]:
        if op in members:
            continue
        reads = (v.producer for inner in op.walk() for v in inner.operands)
        if any(p is not None and p in tainted for p in reads):
            tainted.add(op)
            moved.append(op)
    return moved


def _move_after(anchor: Op, ops: Sequence[Op]) -> None:
    """Reorder `ops` to run right after `anchor`, keeping their order (use lists are untouched;
    the rewriter has no move primitive, and moving changes no value or use)."""
    block = anchor.block
    assert block is not None
    for op in ops:
        block.ops.remove(op)
    at = block.ops.index(anchor) + 1
    block.ops[at:at] = list(ops)


def outline(rewriter: Rewriter, ops: Sequence[Op], kind: str) -> Op:
    """Replace `ops` (a convex group of one block, in block order) by one `kiln.fused` op.

    The fused op takes the last member's place; its region holds copies of `ops` reading block
    arguments, and yields the group's outputs, whose uses move to the fused op's results.
    """
    inputs, outputs = group_inputs(ops), group_outputs(ops)
    region = Block([v.type for v in inputs], [v.name for v in inputs])
    mapping = dict(zip(inputs, region.args))
    for op in ops:
        _copy_into(region, op, mapping)
    region.append(Op(Yield(), [mapping[v] for v in outputs], []))
    fused = Op(Fused(kind=kind, pattern=region_pattern(region)), inputs,
               [v.type for v in outputs],
               fused_location(ops), [v.name for v in outputs], region)
    moved = _dependents_between(ops)
    rewriter.builder_before(ops[-1]).insert(fused)
    for old, new in zip(outputs, fused.results):
        rewriter.replace_uses(old, new)
    for op in reversed(ops):
        rewriter.erase_op(op)
    if moved:
        _move_after(fused, moved)
    return fused


# -- keeping a fused op canonical after its region changed ------------------------------------
def _work(block: Block) -> list[Op]:
    """The ops of a region that compute: not the terminator, constants or weights."""
    return [op for op in block.ops if not op.isa((Yield, Constant, Weight))]


def region_pattern(block: Block) -> str:
    """`conv2d+add+relu`: the computing ops of a region, in order."""
    return "+".join(op.name.removeprefix("kiln.") for op in _work(block))


def settle(rewriter: Rewriter, op: Op) -> bool:
    """Make a fused op whose region was edited canonical again (the module docstring): tidy
    its inputs, refresh its pattern, unwrap it if one op is left. True when it was unwrapped."""
    if not isinstance(op.kind, Fused) or op.region is None:
        return False
    tidy_inputs(op)
    if unwrap_trivial(rewriter, op):
        return True
    pattern = region_pattern(op.region)
    if pattern != op.kind.pattern:
        rewriter.modify(op, pattern=pattern)
    return False


def add_input(op: Op, value: Value) -> Value:
    """Pass `value` into the isolated region of `op` as a new last operand; its block argument."""
    assert op.region is not None
    op.set_operands([*op.operands, value])
    return op.region.add_arg(value.type, value.name)


def tidy_inputs(op: Op) -> bool:
    """Merge block arguments bound to the same outside value and drop unused ones.

    Returns whether anything changed. Only for fused ops, where operand i ↔ argument i.
    """
    region = op.region
    if region is None or not isinstance(op.kind, Fused):
        return False
    kept: dict[Value, Value] = {}
    for value, arg in zip(op.operands, region.args):
        twin = kept.get(value)
        if twin is not None:
            arg.replace_all_uses_with(twin)
        elif arg.uses:
            kept[value] = arg
    if len(kept) == len(region.args):
        return False
    region.args = list(kept.values())
    for index, arg in enumerate(region.args):
        arg.index = index
    op.set_operands(list(kept))
    return True


def unwrap_trivial(rewriter: Rewriter, op: Op) -> bool:
    """Replace a `kiln.fused` op whose region holds at most one op by that op (or by nothing).

    A group is worth a fused op only with two ops or more; after folding or merging inside a
    region, one (or none) may be left. Constants and weights inside come out with it.
    """
    if not isinstance(op.kind, Fused) or op.region is None or len(_work(op.region)) > 1:
        return False
    body = op.region.ops[:-1]
    if any(inner.region is not None for inner in body):
        return False
    mapping = dict(zip(op.region.args, op.operands))
    copies: set[Value] = set()
    builder = rewriter.builder_before(op)
    for inner in body:
        copy = builder.insert(Op(inner.kind, [mapping[v] for v in inner.operands],
                                 [r.type for r in inner.results], inner.loc,
                                 [r.name for r in inner.results]))
        mapping.update(zip(inner.results, copy.results))
        copies.update(copy.results)
    yielded = [mapping[v] for v in op.region.ops[-1].operands]
    for value, result in zip(yielded, op.results):
        if value in copies and result.name:
            value.name = result.name  # the value keeps the name the fused op's result had
            copies.discard(value)
    rewriter.replace_op(op, yielded)
    return True

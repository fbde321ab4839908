"""Structured channel pruning: remove whole output channels and shrink every consumer.

**Analysis** (`plan_channels`). One walk in op order gives every channel-carrying value a
*channel space* (a union-find class) and the axis its channels lie on:

- a conv (groups 1) or linear whose weight has data starts a new space, its output channels;
  its input side *reads* the space of its input (weight columns `[:, kept]` get sliced);
- ops that keep channels join their input's space: activations and other unary elementwise
  ops, batch norm (its four parameters are sliced), pools, depthwise convs (weight and bias
  sliced, groups shrink), transposes, reductions and slices/pads that leave the channel axis
  alone, softmax over another axis, reshapes that keep the channel axis whole;
- binary elementwise ops (residual adds) **unite** the spaces of their operands: every conv
  feeding a residual add is pruned identically (their L1 norms are summed per channel). A
  broadcast operand of size 1 on the channel axis is fine, a parameter with one value per
  channel is sliced, anything else blocks the space;
- concat along the channel axis makes a *derived* space: segments of its inputs' spaces at
  their offsets; a reshape that merges the channel axis with the dims after it
  (`flatten` before a linear: (N, C, H, W) → (N, C·H·W)) makes a derived space whose
  channel `c` is the block of features `[c·H·W, (c+1)·H·W)`;
- anything else that reads a tracked value (a function output, a matmul over the channels, a
  reshape that splits them, a grouped conv, an unknown op) **blocks** its space with a reason.
  A blocked derived space blocks the spaces it is made of.

A space is pruned when it has at least one source layer and is not blocked; a layer whose space
is blocked is refused with a warning naming the reason and the op, and the others go ahead.

**Choice.** Channel scores are L1 norms of the output channel's weights summed over the
space's sources. `scope=layer` removes round(sparsity · C) channels of each space (always
keeping one); `scope=global` ranks every channel of every prunable space together by its L1 norm
divided by its fan-in (the mean |w|, so layers of different fan-in compare) and removes the
round(sparsity · total) lowest, never emptying a space.

**Rewrite.** The affected ops are rebuilt in order with sliced parameters (same weight names
when a weight feeds only that op, else `<name>.pruned`), new result types, a reshape's new
shape and a depthwise conv's new groups; old ops are erased and unused weight data dropped.
Computations on the kept channels are unchanged, so a pruned model equals the unpruned one with
those channels' weights zeroed — in particular, when no channel is removed it is bit-identical.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import numpy as np

from kiln.ir.graph import Module, Op, Value
from kiln.ir.ops.core import Cast, Return, Weight
from kiln.ir.ops.elementwise import BinaryOp, UnaryOp
from kiln.ir.ops.nn_conv import Conv1d, Conv2d, Linear
from kiln.ir.ops.nn_norm import BatchNorm, LogSoftmax, Softmax
from kiln.ir.ops.nn_pool import PoolBase
from kiln.ir.ops.reduce import ReduceBase
from kiln.ir.ops.shape import (
    Concat,
    Dropout,
    Flatten,
    Identity,
    Pad,
    Reshape,
    Slice,
    Squeeze,
    Transpose,
    Unsqueeze,
)
from kiln.ir.rewriter import Rewriter
from kiln.ir.sparse import prune_count, smallest
from kiln.passes.fold_constants import known_value
from kiln.passes.prune import is_skipped, torch_name, weight_uses
from kiln.passes.prune_rebuild import rebuild
from kiln.passes.registry import PassContext

OUTPUT_REASON = "it is a function output (the signature cannot change)"
"""Why the last layer keeps its channels (logged at info level: it is expected)."""
Segment = tuple[int | None, int, int]
"""Part of a derived space: (source space or None when fixed, channels, features per channel)."""


@dataclass
class Space:
    """One class of channels that must be pruned together."""

    size: int
    sources: list[Op] = field(default_factory=list)
    blocked: list[str] = field(default_factory=list)
    segments: list[Segment] | None = None
    """Set for derived spaces (concat, flatten): what their features are made of."""


@dataclass
class ChannelPlan:
    """What the analysis decided (also what `kiln.compress` needs on the torch side)."""

    spaces: list[Space] = field(default_factory=list)
    parent: list[int] = field(default_factory=list)
    where: dict[Value, tuple[int, int]] = field(default_factory=dict)
    """Tracked value → (space id, channel axis)."""
    slices: dict[Op, list[tuple[int, int, int]]] = field(default_factory=dict)
    """Op → (operand index, axis, space id): slice that operand to the space's kept indices."""
    kept: dict[int, np.ndarray] = field(default_factory=dict)
    """Root space id → kept channel indices (sorted), for spaces that are pruned."""
    refused: dict[str, str] = field(default_factory=dict)
    """Layer (result name) → why its output channels stay."""

    # -- union-find --------------------------------------------------------------------------
    def new(self, size: int, source: Op | None = None,
            segments: list[Segment] | None = None) -> int:
        self.spaces.append(Space(size, [source] if source else [], [], segments))
        self.parent.append(len(self.parent))
        return len(self.spaces) - 1

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def space(self, i: int) -> Space:
        return self.spaces[self.find(i)]

    def block(self, i: int, reason: str) -> None:
        self.space(i).blocked.append(reason)

    def union(self, a: int, b: int, op: Op) -> int:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return ra
        sa, sb = self.spaces[ra], self.spaces[rb]
        if sa.segments is not None or sb.segments is not None:
            why = f"{describe(op)} combines a concat/flatten result with other channels"
            sa.blocked.append(why)
            sb.blocked.append(why)
        self.parent[rb] = ra
        sa.sources += sb.sources
        sa.blocked += sb.blocked
        return ra

    def track(self, value: Value, space: int, axis: int) -> None:
        self.where[value] = (space, axis)

    def slice(self, op: Op, index: int, axis: int, space: int) -> None:
        self.slices.setdefault(op, []).append((index, axis, space))

    # -- results -----------------------------------------------------------------------------
    def indices(self, i: int) -> np.ndarray:
        """Kept indices along a space's axis (all of them when it is not pruned)."""
        root = self.find(i)
        space = self.spaces[root]
        if space.segments is None:
            return self.kept.get(root, np.arange(space.size))
        parts, offset = [], 0
        for source, size, per in space.segments:
            chans = np.arange(size) if source is None else self.indices(source)
            parts.append((offset + chans[:, None] * per + np.arange(per)).reshape(-1))
            offset += size * per
        return np.concatenate(parts) if parts else np.zeros(0, np.int64)


def describe(op: Op) -> str:
    name = op.results[0].name if op.results and op.results[0].name else None
    return f"'{op.name}'" + (f" %{name}" if name else "")


def _fan_in(op: Op) -> int:
    return math.prod(op.operands[1].type.shape[1:])


class _Walker:
    """The analysis walk of the module docstring, one op at a time."""

    def __init__(self, module: Module, plan: ChannelPlan, skip: tuple[str, ...]) -> None:
        self.module = module
        self.plan = plan
        skipped = {u.op for u in weight_uses(module) if is_skipped(u, skip)}
        self.skipped = skipped

    def visit(self, op: Op) -> None:
        tracked = [v for v in op.operands if v in self.plan.where]
        if op.isa((Conv1d, Conv2d, Linear)):
            self.layer(op)
        elif not tracked:
            return
        elif op.isa(Return):
            self.block_operands(op, OUTPUT_REASON)
        elif op.isa((UnaryOp, Dropout, Identity, Cast)):
            self.join(op)
        elif op.isa(BatchNorm):
            self.join(op, params=(1, 2, 3, 4), axis=1)
        elif op.isa(PoolBase):
            self.join(op, axis=1)
        elif op.isa(BinaryOp):
            self.binary(op)
        else:
            self.structural(op)

    # -- layers ------------------------------------------------------------------------------
    def layer(self, op: Op) -> None:
        x, w = op.operands[0], op.operands[1]
        conv = op.isa((Conv1d, Conv2d))
        groups = getattr(op.kind, "groups", 1)
        data = all(known_value(v, self.module) is not None for v in op.operands[1:])
        if groups != 1:
            if x.type.shape[1] == groups == w.type.shape[0]:
                self.join(op, params=tuple(range(1, len(op.operands))), axis=1)
            else:
                self.block_operands(op, f"grouped conv (groups={groups}) reads channels in "
                                        "groups")
            return
        in_axis = 1 if conv else x.type.rank - 1
        if x in self.plan.where:
            space, axis = self.plan.where[x]
            if axis != in_axis:
                self.plan.block(space, f"{describe(op)} reads axis {in_axis}, the channels "
                                       f"are on axis {axis}")
            elif not data:
                self.plan.block(space, f"{describe(op)} has parameters without data")
            else:
                self.plan.slice(op, 1, 1, space)
        self.source(op, data, 1 if conv else op.result.type.rank - 1)

    def source(self, op: Op, data: bool, axis: int) -> None:
        """Start a new space at a layer's output, unless the layer stays as it is."""
        label = op.result.name or op.name
        if op in self.skipped:
            self.plan.refused[label] = "skipped by option skip"
            return
        if not data:
            self.plan.refused[label] = "its parameters have no data (weights elided?)"
            return
        space = self.plan.new(op.result.type.shape[axis], source=op)
        self.plan.track(op.result, space, axis)
        for index in range(1, len(op.operands)):
            self.plan.slice(op, index, 0, space)

    # -- channel-preserving ops ------------------------------------------------------------------
    def join(self, op: Op, params: tuple[int, ...] = (), axis: int | None = None) -> None:
        """The result carries operand 0's channels on the same axis; `params` get sliced."""
        x = op.operands[0]
        if x not in self.plan.where:
            return
        space, at = self.plan.where[x]
        if axis is not None and at != axis:
            self.plan.block(space, f"{describe(op)} works on axis {axis}, the channels are on "
                                   f"axis {at}")
            return
        if any(known_value(op.operands[i], self.module) is None for i in params):
            self.plan.block(space, f"{describe(op)} has parameters without data")
            return
        for i in params:
            self.plan.slice(op, i, 0, space)
        for result in op.results:
            self.plan.track(result, space, at)

    def binary(self, op: Op) -> None:
        """Residual adds and friends: unite tracked operands, slice per-channel parameters."""
        rank = op.result.type.rank
        placed = {(v, self.plan.where[v][1] + rank - v.type.rank)
                  for v in op.operands if v in self.plan.where}
        axes = {axis for _, axis in placed}
        if len(axes) != 1:
            self.block_operands(op, f"{describe(op)} combines channels on different axes")
            return
        axis = axes.pop()
        space = self.plan.where[next(iter(placed))[0]][0]
        for value, _ in placed:
            space = self.plan.union(space, self.plan.where[value][0], op)
        for index, value in enumerate(op.operands):
            if value in self.plan.where:
                continue
            dim = axis - (rank - value.type.rank)
            if dim < 0 or value.type.shape[dim] == 1:
                continue
            if known_value(value, self.module) is None:
                self.plan.block(space, f"{describe(op)} combines the channels with a value "
                                       "whose channels cannot change")
                return
            self.plan.slice(op, index, dim, space)
        self.plan.track(op.result, space, axis)

    # -- shape ops -------------------------------------------------------------------------------
    def structural(self, op: Op) -> None:
        if op.isa(Concat):
            self.concat(op)
            return
        x = op.operands[0]
        if len(op.operands) > 1 or x not in self.plan.where:
            self.block_operands(op, f"its channels are read by {describe(op)}")
            return
        space, axis = self.plan.where[x]
        if op.isa((Reshape, Flatten, Squeeze, Unsqueeze)):
            self.reshape(op, space, axis)
        else:
            moved = self.moved_axis(op, axis)
            if moved is None:
                self.plan.block(space, f"its channels are read by {describe(op)}")
            else:
                self.plan.track(op.result, space, moved)

    @staticmethod
    def moved_axis(op: Op, axis: int) -> int | None:
        """Where the channel axis lands in the result of an op that leaves it whole (None:
        the op reads across channels or changes their number)."""
        kind = op.kind
        if isinstance(kind, Transpose):
            return list(kind.perm).index(axis)
        if isinstance(kind, Slice):
            return None if axis in kind.axes else axis
        if isinstance(kind, Pad):
            rank = op.operands[0].type.rank
            return axis if kind.pads[axis] == kind.pads[rank + axis] == 0 else None
        if isinstance(kind, (Softmax, LogSoftmax)):
            rank = op.operands[0].type.rank
            return None if kind.axis in (axis, axis - rank) else axis
        if isinstance(kind, ReduceBase) and axis not in kind.axes:
            return axis if kind.keepdims else axis - sum(1 for a in kind.axes if a < axis)
        return None

    def concat(self, op: Op) -> None:
        assert isinstance(op.kind, Concat)
        axis = op.kind.axis
        places = {self.plan.where[v][1] for v in op.operands if v in self.plan.where}
        if places != {axis}:
            self.block_operands(op, f"{describe(op)} joins along axis {axis}, not the channels")
            return
        segments: list[Segment] = []
        for v in op.operands:
            tracked = self.plan.where.get(v)
            segments.append((tracked[0] if tracked else None, v.type.shape[axis], 1))
        space = self.plan.new(op.result.type.shape[axis], segments=segments)
        self.plan.track(op.result, space, axis)

    def reshape(self, op: Op, space: int, axis: int) -> None:
        """Keep the channel axis whole, or merge it with the dims after it (flatten)."""
        before, after = op.operands[0].type.shape, op.result.type.shape
        lead = math.prod(before[:axis])
        new_axis = next((i for i in range(len(after) + 1) if math.prod(after[:i]) == lead
                         and (i == len(after) or after[i] != 1 or before[axis] == 1)), None)
        merged = after[new_axis] if new_axis is not None and new_axis < len(after) else 0
        chans = before[axis]
        if new_axis is not None and merged == chans:
            self.plan.track(op.result, space, new_axis)
        elif new_axis is not None and merged and merged % chans == 0:
            # equal prefixes and element counts: channel c is features [c·B, (c+1)·B)
            derived = self.plan.new(merged, segments=[(space, chans, merged // chans)])
            self.plan.track(op.result, derived, new_axis)
        else:
            self.plan.block(space, f"{describe(op)} reshapes the channel axis "
                                   f"{list(before)} → {list(after)}")

    def block_operands(self, op: Op, reason: str) -> None:
        for v in op.operands:
            if v in self.plan.where:
                self.plan.block(self.plan.where[v][0], reason)


def _propagate_blocks(plan: ChannelPlan) -> None:
    """A blocked derived space cannot change, so neither can the spaces it is made of."""
    changed = True
    while changed:
        changed = False
        for i, space in enumerate(plan.spaces):
            if plan.find(i) != i or space.segments is None or not space.blocked:
                continue
            for source, _, _ in space.segments:
                if source is not None and not plan.space(source).blocked:
                    plan.block(source, space.blocked[0])
                    changed = True


def _scores(plan: ChannelPlan, root: int, module: Module, per_weight: bool) -> np.ndarray:
    """Per channel: L1 norms of the sources' output-channel weights, summed (divided by the
    fan-in when `per_weight`, for global ranking)."""
    total = np.zeros(plan.spaces[root].size)
    for op in plan.spaces[root].sources:
        w = known_value(op.operands[1], module)
        assert w is not None
        l1 = np.abs(w.astype(np.float64)).reshape(w.shape[0], -1).sum(axis=1)
        total += l1 / _fan_in(op) if per_weight else l1
    return total


def _choose(plan: ChannelPlan, roots: list[int], module: Module, sparsity: float,
            scope: str) -> None:
    """Fill `plan.kept` for the prunable spaces `roots` (module docstring: Choice)."""
    if scope == "layer":
        for root in roots:
            size = plan.spaces[root].size
            drop = smallest(_scores(plan, root, module, False),
                            min(prune_count(size, sparsity), size - 1))
            plan.kept[root] = np.flatnonzero(~drop)
        return
    entries = [(s, root, c) for root in roots
               for c, s in enumerate(_scores(plan, root, module, True))]
    entries.sort(key=lambda e: e[0])
    budget = prune_count(len(entries), sparsity)
    left = {root: plan.spaces[root].size for root in roots}
    dropped: dict[int, set[int]] = {root: set() for root in roots}
    for _, root, c in entries:
        if budget == 0:
            break
        if left[root] > 1:
            dropped[root].add(c)
            left[root] -= 1
            budget -= 1
    for root in roots:
        plan.kept[root] = np.array([c for c in range(plan.spaces[root].size)
                                    if c not in dropped[root]], dtype=np.int64)


def plan_channels(module: Module, sparsity: float, scope: str, skip: tuple[str, ...],
                  ctx: PassContext) -> ChannelPlan:
    """Analyse every function and choose the channels to keep."""
    plan = ChannelPlan()
    walker = _Walker(module, plan, skip)
    for func in module.funcs.values():
        for op in func.ops:
            walker.visit(op)
    _propagate_blocks(plan)
    roots = []
    for i, space in enumerate(plan.spaces):
        if plan.find(i) != i or not space.sources:
            continue
        if space.blocked:
            reason = space.blocked[0]
            level = logging.INFO if reason.startswith(OUTPUT_REASON) else logging.WARNING
            for op in space.sources:
                plan.refused[op.result.name or op.name] = reason
                ctx.logger.log(level, "prune: not pruning the output channels of %s: %s",
                               describe(op), reason)
        else:
            roots.append(i)
    _choose(plan, roots, module, sparsity, scope)
    return plan


def kept_channels(plan: ChannelPlan, module: Module) -> dict[str, np.ndarray]:
    """torch weight name of every layer the plan prunes → the output channels it keeps (for
    `kiln.compress`: the same deterministic plan, computed on the traced module)."""
    kept: dict[str, np.ndarray] = {}
    for root, indices in plan.kept.items():
        for op in plan.spaces[root].sources:
            producer = op.operands[1].producer
            if producer is not None and isinstance(producer.kind, Weight):
                kept[torch_name(producer.kind.name)] = indices
    return kept


def prune_channels(module: Module, ctx: PassContext, *, sparsity: float, scope: str,
                   skip: tuple[str, ...]) -> bool:
    """`prune{method=l1-channel}`: plan, then rebuild the affected ops."""
    plan = plan_channels(module, sparsity, scope, skip, ctx)
    removed = 0
    for root, kept in plan.kept.items():
        space = plan.spaces[root]
        removed += space.size - len(kept)
        ctx.count("pruned-layers", len(space.sources))
    ctx.count("refused-layers", len(plan.refused))
    ctx.count("channels-removed", removed)
    if removed == 0:
        return False
    rebuild(Rewriter(module), plan)
    return True


__all__ = ["ChannelPlan", "Space", "kept_channels", "plan_channels", "prune_channels"]

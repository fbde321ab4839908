"""Operator fusion: group ops into `kiln.fused` ops, each one kernel for codegen.

Three kinds of group, formed in this order (an op joins at most one group, so an earlier kind
wins a contested op):

1. **epilogue** — a conv1d / conv2d / conv_transpose2d / linear / matmul anchor and the
   elementwise ops that consume its result at its shape: bias add, batch norm, activations,
   residual add, any elementwise chain (`conv2d+batch_norm+add+relu`). Forward only.
2. **reduction** — a softmax / log_softmax / layer_norm / reduce_* anchor with its elementwise
   producers (the scale before a softmax, the residual add before a layer norm) and consumers,
   plus other reductions over the same rows, so a decomposed softmax (`reduce_max`, `sub`,
   `exp`, `reduce_sum`, `div`) becomes one group. Members are elementwise at the full or the
   per-row shape (see `fusion_rules.Rows`).
3. **elementwise** — what is left: chains of elementwise ops of one result shape (an `expand`
   broadcast included) in either direction.

Because epilogues go first, the scale `mul` between attention's `matmul` and `softmax` joins the
matmul's epilogue; run with `epilogue=false` (or `anchors=softmax`) to give it to the softmax.

Rules every group keeps: it is convex (`analysis.is_convex`: no path leaves it and re-enters),
so the fused op can run as one step; no op is copied into two groups — a value the group
computes that is also used outside is yielded as an extra result, never recomputed; weights and
constants stay outside as operands; a group holds at most one anchor (a reduction group may hold
several reductions, but only over the same rows: one row kernel); at most `max-ops` ops; and a
group of one op is left alone. Groups are planned one at a time against the graph the previous
ones left, so two groups can never form a cycle between them.

The fused op's `pattern` names its ops in order, its results keep the names of the values they
replace, and its location is `Location(fused=...)` with each absorbed op's location (errors
point at the first). The interpreter runs the region, so fused and unfused modules compute
bit-identical outputs. The output is deterministic: groups grow in block order.

Options: `max-ops` bounds the group size; `epilogue`, `reductions`, `elementwise` switch each
kind off; `anchors` limits which ops may anchor a group (`anchors=conv2d|linear`; default `all`);
`exclude` names ops that never fuse (`exclude=batch_norm|gelu`, e.g. for a target without a
kernel for them).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import networkx as nx

from kiln.errors import PipelineError
from kiln.ir.analysis import dataflow_graph, is_convex
from kiln.ir.fusion_rules import (
    ANCHOR_NAMES,
    is_elementwise,
    is_epilogue_anchor,
    is_reduction,
    result_shape,
    rows_of,
    short_name,
)
from kiln.ir.graph import Func, Module, Op
from kiln.ir.ops.base import lookup_op
from kiln.ir.ops.fused import Fused
from kiln.ir.rewriter import Rewriter
from kiln.passes.outline import outline
from kiln.passes.registry import PassContext, register_pass

Accept = Callable[[Op], bool]


@dataclass(frozen=True)
class FuseOptions:
    """The pass options, checked (see the module docstring)."""

    max_ops: int = 16
    epilogue: bool = True
    reductions: bool = True
    elementwise: bool = True
    anchors: frozenset[str] = frozenset()
    """Empty: every anchor op may anchor."""
    exclude: frozenset[str] = frozenset()

    def fusible(self, op: Op) -> bool:
        return short_name(op) not in self.exclude

    def may_anchor(self, op: Op) -> bool:
        return self.fusible(op) and (not self.anchors or short_name(op) in self.anchors)

    def check(self) -> None:
        """Raise `PipelineError` for a bound below two or an op name kiln does not know."""
        if self.max_ops < 2:
            raise PipelineError(f"fuse: max-ops must be at least 2, got {self.max_ops}",
                                hint="a group has two ops or more; epilogue=false, "
                                     "reductions=false, elementwise=false switch kinds off")
        unknown = sorted(self.anchors - ANCHOR_NAMES)
        if unknown:
            raise PipelineError(f"fuse: cannot anchor a group on {', '.join(unknown)}",
                                hint=f"anchors: all|{'|'.join(sorted(ANCHOR_NAMES))}")
        unknown = sorted(n for n in self.exclude if lookup_op(f"kiln.{n}") is None)
        if unknown:
            raise PipelineError(f"fuse: exclude names unknown op(s) {', '.join(unknown)}",
                                hint="write op names without the 'kiln.' prefix")


class _Grouper:
    """Plans the groups of one function one at a time and outlines each as it is found.

    It keeps the dataflow graph and a block-order position for every top-level op, and updates
    both when a group is outlined (the members contract into the fused op; the ops between the
    first and last member take the positions that span held), so each group costs time in its
    own size and span, not in the size of the function.
    """

    def __init__(self, func: Func, rewriter: Rewriter, options: FuseOptions) -> None:
        self.func = func
        self.rewriter = rewriter
        self.options = options
        self.groups: list[Op] = []
        self.graph = dataflow_graph(func)
        self.position = {op: i for i, op in enumerate(func.ops)}

    def _order(self, op: Op) -> int:
        return self.position[op]

    def candidates(self, members: list[Op], backward: bool) -> list[Op]:
        """Top-level non-members next to the group (users; producers too when `backward`)."""
        found: dict[Op, None] = {}
        for member in members:
            for result in member.results:
                found.update(dict.fromkeys(result.users))
            if backward:
                found.update(dict.fromkeys(v.producer for v in member.operands
                                           if v.producer is not None))
        near = [op for op in found if op not in members and op in self.position]
        return sorted(near, key=self._order)

    def convex(self, ops: list[Op]) -> bool:
        """`is_convex` on the ops between the group's first and last member: positions follow
        dataflow, so a path that leaves the group and comes back never runs outside them."""
        low, high = min(map(self._order, ops)), max(map(self._order, ops))
        window = nx.subgraph_view(self.graph,
                                  filter_node=lambda op: low <= self.position[op] <= high)
        return is_convex(window, ops)

    def grow(self, seed: Op, accept: Accept, backward: bool) -> list[Op]:
        """Add the first acceptable neighbour that keeps the group convex, until none is left."""
        members = [seed]
        while len(members) < self.options.max_ops:
            chosen = next((c for c in self.candidates(members, backward)
                           if accept(c) and self.convex([*members, c])), None)
            if chosen is None:
                break
            members.append(chosen)
        return sorted(members, key=self._order)

    def commit(self, members: list[Op], kind: str) -> None:
        """Outline a group of two or more ops and update the graph and positions."""
        if len(members) < 2:
            return
        block = self.func.body
        start = block.ops.index(members[0])
        span = block.ops[start:block.ops.index(members[-1]) + 1]
        fused = outline(self.rewriter, members, kind)
        self.groups.append(fused)
        self._contract(members, fused)
        slots = [self.position.pop(op) for op in span if op in members] + \
            [self.position[op] for op in span if op not in members]
        kept = block.ops[start:start + len(span) - len(members) + 1]
        self.position.update(zip(kept, sorted(slots)))

    def _contract(self, members: list[Op], fused: Op) -> None:
        """Replace the members by the fused op in the dataflow graph."""
        inside = set(members)
        before = {p for m in members for p in self.graph.predecessors(m)} - inside
        after = {s for m in members for s in self.graph.successors(m)} - inside
        self.graph.remove_nodes_from(members)
        self.graph.add_edges_from((p, fused) for p in before)
        self.graph.add_edges_from((fused, s) for s in after)


def _epilogue(grouper: _Grouper, anchor: Op) -> list[Op]:
    """The anchor and its elementwise consumers at the anchor's result shape."""
    shape, options = result_shape(anchor), grouper.options

    def accept(op: Op) -> bool:
        return is_elementwise(op) and options.fusible(op) and result_shape(op) == shape
    return grouper.grow(anchor, accept, backward=False)


def _reduction(grouper: _Grouper, anchor: Op) -> list[Op]:
    """The anchor, reductions over the same rows, and elementwise ops at a row shape."""
    rows, options = rows_of(anchor), grouper.options
    assert rows is not None
    shapes = rows.member_shapes()

    def accept(op: Op) -> bool:
        if is_elementwise(op):
            return options.fusible(op) and result_shape(op) in shapes
        return is_reduction(op) and options.may_anchor(op) and rows_of(op) == rows
    return grouper.grow(anchor, accept, backward=True)


def _elementwise(grouper: _Grouper, seed: Op) -> list[Op]:
    """The seed and elementwise neighbours of its result shape, both directions."""
    shape, options = result_shape(seed), grouper.options

    def accept(op: Op) -> bool:
        return is_elementwise(op) and options.fusible(op) and result_shape(op) == shape
    return grouper.grow(seed, accept, backward=True)


Phase = tuple[str, Accept, Callable[[_Grouper, Op], list[Op]]]


def _phases(options: FuseOptions) -> list[Phase]:
    """(kind, which ops seed a group, how a group grows from its seed) for the enabled kinds."""
    phases: list[Phase] = []
    if options.epilogue:
        phases.append(("epilogue", lambda op: is_epilogue_anchor(op)
                       and options.may_anchor(op), _epilogue))
    if options.reductions:
        phases.append(("reduction", lambda op: is_reduction(op) and options.may_anchor(op),
                       _reduction))
    if options.elementwise:
        phases.append(("elementwise", lambda op: is_elementwise(op) and options.fusible(op),
                       _elementwise))
    return phases


def fuse_func(func: Func, rewriter: Rewriter, options: FuseOptions) -> list[Op]:
    """Fuse the top level of `func` (existing fused ops stay as they are); the new fused ops."""
    grouper = _Grouper(func, rewriter, options)
    for kind, is_seed, grow in _phases(options):
        for op in list(func.ops):
            if op.block is func.body and is_seed(op):
                grouper.commit(grow(grouper, op), kind)
    return grouper.groups


@register_pass("fuse")
def fuse(module: Module, ctx: PassContext, *, max_ops: int = 16, epilogue: bool = True,
         reductions: bool = True, elementwise: bool = True, anchors: tuple[str, ...] = ("all",),
         exclude: tuple[str, ...] = ()) -> bool:
    """Group anchors with their epilogues, reductions and elementwise chains into kiln.fused."""
    chosen = frozenset(a.removeprefix("kiln.") for a in anchors) - {"all"}
    options = FuseOptions(max_ops, epilogue, reductions, elementwise,
                          frozenset() if "all" in anchors else chosen,
                          frozenset(e.removeprefix("kiln.") for e in exclude))
    options.check()
    rewriter = Rewriter(module)
    groups = [g for func in module.funcs.values() for g in fuse_func(func, rewriter, options)]
    for group in groups:
        assert isinstance(group.kind, Fused) and group.region is not None
        ctx.count(f"groups-{group.kind.kind}")
        ctx.count("ops-fused", len(group.region.ops) - 1)
    return bool(groups)

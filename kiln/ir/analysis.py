"""Analyses over a function: networkx dataflow views, convexity, dominators, liveness, costs.

These are read-only views; passes and cost models ask them questions and never mutate through
them. Nodes of the dataflow graph are the function's top-level ops (weights and constants
included); an edge producer → user carries the values that flow along it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import networkx as nx

from kiln.ir.graph import Func, Op, Value
from kiln.ir.ops.core import Constant, Return, Weight

ENTRY = "<entry>"
"""Virtual root of the dominator tree: function arguments, weights and constants hang off it."""


def dataflow_graph(func: Func) -> nx.DiGraph:
    """DiGraph over top-level ops; edge (a, b) when b uses a result of a (attr `values`)."""
    graph = nx.DiGraph()
    for op in func.ops:
        graph.add_node(op)
    for op in func.ops:
        for value in op.operands:
            producer = value.producer
            if producer is None:
                continue
            if graph.has_edge(producer, op):
                graph.edges[producer, op]["values"].append(value)
            else:
                graph.add_edge(producer, op, values=[value])
    return graph


def is_convex(graph: nx.DiGraph, group: Iterable[Op]) -> bool:
    """True when no path leaves `group` and comes back into it.

    A group fused into one kernel must be convex: otherwise an op outside the kernel would need
    a value the kernel produces and produce a value the kernel needs — a cycle.
    """
    members = set(group)
    outside_successors = {s for op in members for s in graph.successors(op)} - members
    frontier = list(outside_successors)
    seen: set[Op] = set(frontier)
    while frontier:
        node = frontier.pop()
        for succ in graph.successors(node):
            if succ in members:
                return False
            if succ not in seen:
                seen.add(succ)
                frontier.append(succ)
    return True


def immediate_dominators(func: Func) -> dict[Op | str, Op | str]:
    """Immediate dominator of every top-level op; sources hang off the virtual `ENTRY` node."""
    graph = dataflow_graph(func)
    graph.add_node(ENTRY)
    for op in func.ops:
        if graph.in_degree(op) == 0 or any(v.producer is None for v in op.operands):
            graph.add_edge(ENTRY, op)
    return dict(nx.immediate_dominators(graph, ENTRY))


def dominates(idom: dict[Op | str, Op | str], a: Op, b: Op) -> bool:
    """Whether `a` dominates `b` (every path from the entry to `b` passes through `a`)."""
    node: Op | str = b
    while True:
        if node is a:
            return True
        parent = idom.get(node)
        if parent is None or parent == node:
            return False
        node = parent


@dataclass(frozen=True)
class LiveInterval:
    """A value is live from the op that defines it to the last op that reads it (indices)."""

    start: int
    end: int


def liveness(func: Func) -> dict[Value, LiveInterval]:
    """Live interval of every value in op-index order; arguments start at -1, outputs end at n.

    Weights and constants are included (a memory planner may keep them out of the arena).
    """
    index = {op: i for i, op in enumerate(func.ops)}
    intervals: dict[Value, LiveInterval] = {}
    values: list[tuple[Value, int]] = [(a, -1) for a in func.args]
    values += [(r, index[op]) for op in func.ops for r in op.results]
    for value, start in values:
        end = start
        for use in value.uses:
            user = _top_level(use.op)
            if user in index:
                end = max(end, len(func.ops) if user.isa(Return) else index[user])
        intervals[value] = LiveInterval(start, end)
    return intervals


def _top_level(op: Op) -> Op:
    """The top-level op that contains `op` (itself when not nested in a region)."""
    while op.block is not None and op.block.parent is not None and isinstance(op.block.parent,
                                                                              Op):
        op = op.block.parent
    return op


def is_source(op: Op) -> bool:
    """Weights and constants: ops that read nothing and cost nothing at run time."""
    return op.isa((Weight, Constant))


def compute_ops(func: Func) -> list[Op]:
    """Top-level ops that do work at run time: not weights, constants or the return.

    After fusion each `kiln.fused` op counts once — it is one kernel — which makes this the
    number to compare before and after a pipeline.
    """
    return [op for op in func.ops if not (is_source(op) or op.isa(Return))]


def layer_output(op: Op) -> tuple[str, Value]:
    """A fixed-point layer's name and output: the requantize that follows `op` when it is the
    only user (the fixed-point pass names the exact accumulator `<name>.acc`), else `op`'s result.

    Code generators and cost models name layers alike through this one rule.
    """
    result = op.results[0]
    users = result.users
    if len(users) == 1 and users[0].name == "kiln.requantize":
        result = users[0].results[0]
    name = result.name or op.name.split(".")[-1]
    return name.removesuffix(".acc"), result

"""The compiled IR as a small JSON graph: the data behind the report's picture.

Nodes are the function's inputs and outputs and every compute op, ops inside a fused group
included (their `group` names the group, drawn as a box around them). Each node carries its
layer (the per-layer row it belongs to) and FLOPs, so the report can colour nodes by cost.
Weights and constants are not drawn: they are parameters, not dataflow.
"""

from __future__ import annotations

from typing import Any

from kiln.ir.analysis import compute_ops, is_source
from kiln.ir.costs import op_flops
from kiln.ir.graph import Module, Op, Value
from kiln.ir.ops.fused import Fused
from kiln.report.layers import layer_name


class _Builder:
    def __init__(self) -> None:
        self.nodes: list[dict[str, Any]] = []
        self.edges: list[list[str]] = []
        self.groups: list[dict[str, Any]] = []
        self.source: dict[Value, str] = {}

    def node(self, kind: str, label: str, layer: str | None, flops: int = 0,
             group: str | None = None, shape: list[int] | None = None) -> str:
        node_id = f"n{len(self.nodes)}"
        self.nodes.append({"id": node_id, "op": kind, "label": label, "layer": layer,
                           "group": group, "flops": flops, "shape": shape})
        return node_id

    def connect(self, op: Op, node_id: str) -> None:
        for operand in op.operands:
            src = self.source.get(operand)
            if src is not None and [src, node_id] not in self.edges:
                self.edges.append([src, node_id])

    def add_op(self, op: Op, layer: str, group: str | None) -> str:
        shape = list(op.results[0].type.shape) if op.results else None
        label = op.results[0].name if op.results and op.results[0].name else layer
        node_id = self.node(op.name, str(label), layer, op_flops(op), group, shape)
        self.connect(op, node_id)
        self.source.update({r: node_id for r in op.results})
        return node_id

    def add_fused(self, op: Op, layer: str) -> None:
        assert op.region is not None
        group = f"g{len(self.groups)}"
        pattern = op.kind.pattern if isinstance(op.kind, Fused) else ""
        self.groups.append({"id": group, "label": layer, "pattern": pattern})
        for arg, operand in zip(op.region.args, op.operands):
            if operand in self.source:
                self.source[arg] = self.source[operand]
        for inner in op.region.ops:
            if inner.name == "kiln.yield":
                for result, yielded in zip(op.results, inner.operands):
                    if yielded in self.source:
                        self.source[result] = self.source[yielded]
            elif not is_source(inner):
                self.add_op(inner, layer, group)


def graph_of(module: Module) -> dict[str, Any]:
    """`{"nodes", "edges", "groups"}` of the module's entry function (module docstring)."""
    func = module.main
    b = _Builder()
    for i, arg in enumerate(func.args):
        b.source[arg] = b.node("input", arg.name or f"input{i}", None,
                               shape=list(arg.type.shape))
    for index, op in enumerate(compute_ops(func)):
        layer = layer_name(op, index)
        if op.isa(Fused) and op.region is not None:
            b.add_fused(op, layer)
        else:
            b.add_op(op, layer, None)
    for i, value in enumerate(func.outputs):
        out = b.node("output", f"output{i}", None, shape=list(value.type.shape))
        src = b.source.get(value)
        if src is not None:
            b.edges.append([src, out])
    return {"nodes": b.nodes, "edges": b.edges, "groups": b.groups}

"""Walks a captured ATen graph and builds the kiln function, node by node.

Each node is converted by its entry in the conversion table under the node's source location.
Nodes kiln cannot convert are collected (the values they would have produced are "poisoned", so
later nodes that depend on them are skipped without extra noise) and reported together in one
`UnsupportedOpError`. After each node, the kiln result types are checked against torch's: a
mismatch is a bug in a converter, reported with the node's name.
"""

from __future__ import annotations

from typing import Any, cast

import torch
import torch.fx

from kiln.errors import Diagnostic, DiagnosticList, KilnError, UnsupportedOpError
from kiln.frontend.torch_capture import Captured, GraphInput, to_numpy
from kiln.frontend.torch_ctx import Converted, Ctx, Unsupported, bind_args, tensor_type
from kiln.frontend.torch_fold import ConstantFolder
from kiln.frontend.torch_modules import ModuleCapture, plan_captures
from kiln.frontend.torch_ops import lookup, op_name
from kiln.frontend.torch_source import ValueNamer, node_location
from kiln.ir.builder import Builder, new_function
from kiln.ir.graph import Func, Module, Value, clean_name
from kiln.ir.location import Location
from kiln.ir.ops.core import Weight
from kiln.ir.types import QuantType

HINT = ("rewrite that part of the model with supported operations, or add a conversion to "
        "CONVERTERS in kiln/frontend/torch_ops.py (or file an issue)")

Env = dict[torch.fx.Node, Any]


class GraphConverter:
    """Converts one `Captured` graph into the `@forward` function of a new kiln Module."""

    def __init__(self, captured: Captured, model: torch.nn.Module, name: str) -> None:
        self.captured = captured
        self.model = model
        self.module = Module(name)
        self.env: Env = {}
        self.poisoned: set[torch.fx.Node] = set()
        self.problems = DiagnosticList()
        self.folder = ConstantFolder()
        nodes = list(captured.graph.nodes)
        self.namer = ValueNamer(nodes)
        self.captures = {c.output: c for c in plan_captures(captured.graph, model)}
        self.absorbed = {n for c in self.captures.values() for n in c.nodes} - set(self.captures)
        self.func, self.builder = self._signature(nodes)

    def _signature(self, nodes: list[torch.fx.Node]) -> tuple[Func, Builder]:
        user = [n for n in nodes if n.op == "placeholder"
                and not self.captured.inputs[n.name].is_weight]
        func, builder = new_function(self.module, "forward",
                                     [tensor_type(n.meta["val"]) for n in user],
                                     [self.captured.inputs[n.name].name for n in user])
        self.env.update(zip(user, func.args))
        return func, builder

    # -- the walk -----------------------------------------------------------------------------
    def run(self) -> Module:
        live = _live_nodes(self.captured.outputs)
        for node in self.captured.graph.nodes:
            if node not in live or node in self.absorbed or node in self.env:
                continue
            if node.op == "placeholder":
                self._weight(node, self.captured.inputs[node.name])
            elif node.op == "get_attr":
                self._get_attr(node)
            elif node.op == "call_function":
                self._call(node)
        self._raise_unsupported()
        self.builder.ret(*[self._output(v) for v in self.captured.outputs])
        _drop_dead_ops(self.func, self.module)
        return self.module

    def _raise_unsupported(self) -> None:
        """One error for every unconvertible op: a summary with the hint, then one per site."""
        items = list(dict.fromkeys(self.problems.items))
        if not items:
            return
        ops = sorted({d.op_name for d in items if d.op_name})
        summary = (f"the model uses {len(ops)} operation(s) kiln cannot convert "
                   f"({', '.join(ops)}), at the places listed below")
        raise UnsupportedOpError(diagnostics=[Diagnostic(summary, hint=HINT), *items])

    def _weight(self, node: torch.fx.Node, spec: GraphInput) -> None:
        assert spec.array is not None
        scope = spec.name.rpartition(".")[0] or None
        self.env[node] = self.builder.weight(spec.name, spec.array, loc=Location(scope=scope))

    def _get_attr(self, node: torch.fx.Node) -> None:
        tensor: Any = self.captured.owner
        for part in str(node.target).split("."):
            tensor = getattr(tensor, part)
        if not isinstance(tensor, torch.Tensor):
            raise KilnError(f"graph attribute '{node.target}' is not a tensor")
        self.env[node] = self.builder.weight(str(node.target), to_numpy(tensor))

    def _call(self, node: torch.fx.Node) -> None:
        if self.folder.try_fold(node):
            return
        if getattr(node.target, "__name__", "") == "getitem":
            self._getitem(node)
            return
        capture = self.captures.get(node)
        convert = lookup(node.target)
        if capture is None and convert is None:
            self._unsupported(node, "kiln has no conversion for this operation")
            return
        if any(arg in self.poisoned for arg in node.all_input_nodes):
            self.poisoned.add(node)
            return
        start = len(self.func.body.ops)
        with self.builder.at_loc(node_location(node)):
            try:
                if capture is not None:
                    result = self._apply(capture)
                else:
                    assert convert is not None
                    result = convert(self._ctx(node))
            except Unsupported as exc:
                self._unsupported(node, str(exc))
                return
        self._check(node, result)
        self._name(node, result, start)
        self.env[node] = result

    def _apply(self, capture: ModuleCapture) -> Value:
        return capture.convert(self.builder, self._lookup(capture.input), capture.module)

    def _ctx(self, node: torch.fx.Node) -> Ctx:
        args = bind_args(node.target, node.args, dict(node.kwargs))
        return Ctx(node, args, self.builder, self._lookup, self.model)

    def _lookup(self, node: torch.fx.Node) -> Value:
        folded = self.folder.tensor(node)
        if node not in self.env and folded is not None:
            self.env[node] = self.builder.constant(to_numpy(folded), name=node.name)
        value = self.env.get(node)
        if not isinstance(value, Value):
            raise Unsupported(f"input '{node.name}' has no single kiln value")
        return value

    def _getitem(self, node: torch.fx.Node) -> None:
        source, index = cast(torch.fx.Node, node.args[0]), cast(int, node.args[1])
        if source in self.poisoned:
            self.poisoned.add(node)
            return
        parts = self.env.get(source)
        value = parts[index] if isinstance(parts, tuple) else None
        if value is None:
            self._unsupported(node, f"output {index} of '{source.name}' cannot be expressed "
                              "(e.g. max-pool indices)", source)
            return
        self.env[node] = value

    def _unsupported(self, node: torch.fx.Node, why: str, origin: Any = None) -> None:
        origin = origin if isinstance(origin, torch.fx.Node) else node
        self.poisoned.add(node)
        self.problems.add(Diagnostic(why, op_name=op_name(origin.target),
                                     loc=node_location(origin)))

    def _output(self, node: Any) -> Value:
        try:
            if isinstance(node, torch.fx.Node):
                return self._lookup(node)
        except Unsupported:
            pass
        raise KilnError(f"model output {node} is not a tensor computed by the model",
                        hint="return only tensors (a tensor or a tuple/list of tensors)")

    # -- checks and names -----------------------------------------------------------------------
    def _check(self, node: torch.fx.Node, result: Converted) -> None:
        metas = node.meta.get("val")
        metas = metas if isinstance(metas, (tuple, list)) else (metas,)
        results = result if isinstance(result, tuple) else (result,)
        for i, (meta, value) in enumerate(zip(metas, results)):
            if value is None or not isinstance(meta, torch.Tensor):
                continue
            if isinstance(value.type.dtype, QuantType):
                continue  # torch's fake tensors do not carry a quantized tensor's qparams
            expected = tensor_type(meta)
            if (value.type.shape, value.type.dtype) != (expected.shape, expected.dtype):
                raise KilnError(f"frontend bug: node '{node.name}' ({op_name(node.target)}) "
                                f"result {i}: kiln infers {value.type}, torch says {expected}",
                                hint="please report this with the model")

    def _name(self, node: torch.fx.Node, result: Converted, start: int) -> None:
        created = {id(r) for op in self.func.body.ops[start:] for r in op.results}
        results = result if isinstance(result, tuple) else (result,)
        base = self.namer.name(node)
        single = sum(v is not None for v in results) == 1
        for i, value in enumerate(results):
            if value is not None and id(value) in created:
                value.name = clean_name(base if single else f"{base}_{i}")


def _live_nodes(outputs: list[Any]) -> set[torch.fx.Node]:
    """The nodes the outputs depend on (dead code, e.g. unused max-pool indices, is skipped)."""
    live: set[torch.fx.Node] = set()
    stack = [n for n in outputs if isinstance(n, torch.fx.Node)]
    while stack:
        node = stack.pop()
        if node not in live:
            live.add(node)
            stack.extend(node.all_input_nodes)
    return live


def _drop_dead_ops(func: Func, module: Module) -> None:
    """Erase ops whose results nothing uses (e.g. a transpose folded into a linear)."""
    for op in reversed(list(func.body.ops)):
        if not op.kind.SIDE_EFFECTS and not any(r.uses for r in op.results):
            op.erase()
    used = {op.kind.name for op in func.body.ops if isinstance(op.kind, Weight)}
    for name in [n for n in module.weights if n not in used]:
        del module.weights[name]


def convert_graph(captured: Captured, model: torch.nn.Module, name: str) -> Module:
    """The kiln Module for a captured ATen graph."""
    return GraphConverter(captured, model, name).run()

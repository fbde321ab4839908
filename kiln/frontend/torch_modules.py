"""Module captures: whole nn modules that kiln has as one op but ATen spells as many.

`F.local_response_norm` is plain Python over ATen (square, 5-D pad, avg_pool3d, pow, div), so
no decomposition table can keep it. Instead, the nodes that an `nn.LocalResponseNorm` produced
(found through `nn_module_stack`) are replaced by one `kiln.local_response_norm`, provided the
group has exactly one tensor input and one output used outside it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
import torch.fx

from kiln.frontend.torch_source import module_stack
from kiln.ir.builder import Builder
from kiln.ir.graph import Value
from kiln.ir.ops import nn_norm

CaptureFn = Callable[[Builder, Value, torch.nn.Module], Value]


def _local_response_norm(builder: Builder, x: Value, module: torch.nn.Module) -> Value:
    assert isinstance(module, torch.nn.LocalResponseNorm)
    kind = nn_norm.LocalResponseNorm(size=int(module.size), alpha=float(module.alpha),
                                     beta=float(module.beta), k=float(module.k))
    return builder.add(kind, x)


CAPTURES: dict[type[torch.nn.Module], CaptureFn] = {
    torch.nn.LocalResponseNorm: _local_response_norm,
}


@dataclass
class ModuleCapture:
    """The nodes of one captured module instance, its single input and single output."""

    path: str
    module: torch.nn.Module
    nodes: set[torch.fx.Node]
    input: torch.fx.Node
    output: torch.fx.Node
    convert: CaptureFn


def _groups(nodes: Iterable[torch.fx.Node], model: torch.nn.Module
            ) -> dict[str, tuple[torch.nn.Module, list[torch.fx.Node]]]:
    groups: dict[str, tuple[torch.nn.Module, list[torch.fx.Node]]] = {}
    for node in nodes:
        for path, _ in module_stack(node):
            module = _submodule(model, path)
            if module is not None and type(module) in CAPTURES:
                groups.setdefault(path, (module, []))[1].append(node)
                break
    return groups


def _submodule(model: torch.nn.Module, path: str) -> torch.nn.Module | None:
    try:
        return model.get_submodule(path) if path else model
    except AttributeError:
        return None


def plan_captures(graph: torch.fx.Graph, model: torch.nn.Module) -> list[ModuleCapture]:
    """Every captured module instance whose nodes form a single-input, single-output group."""
    calls = [n for n in graph.nodes if n.op == "call_function"]
    plans = []
    for path, (module, nodes) in _groups(calls, model).items():
        members = set(nodes)
        inputs = {a for n in nodes for a in n.all_input_nodes if a not in members}
        outputs = [n for n in nodes if any(u not in members for u in n.users)]
        if len(inputs) == 1 and len(outputs) == 1:
            plans.append(ModuleCapture(path, module, members, inputs.pop(), outputs[0],
                                       CAPTURES[type(module)]))
    return plans

"""Capture path 2 (fallback): `torch.fx` symbolic tracing, then lowering to ATen with make_fx.

Symbolic tracing sees nn modules, functional calls and tensor methods and records each call's
stack trace and module stack. Running the traced graph through an fx `Interpreter` under
`make_fx` (with node meta preserved) lowers every call to ATen ops that keep their source node's
stack trace and module path, so the same conversion table serves both capture paths.
Parameters and buffers are passed to the traced function explicitly (`functional_call`), which
makes each one a placeholder whose fully qualified name is known by position; `functionalize`
turns in-place ops (`relu_`, `+=`) into their pure forms.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.fx
import torch.fx.traceback as fx_traceback
import torch.nn.functional as F
from torch.func import functional_call, functionalize
from torch.fx.experimental.proxy_tensor import make_fx
from torch.overrides import TorchFunctionMode

from kiln.frontend.torch_capture import (
    Captured,
    GraphInput,
    decomposition_table,
    flatten_outputs,
    to_numpy,
)


def _attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
               attn_mask: torch.Tensor | None = None, dropout_p: float = 0.0,
               is_causal: bool = False, scale: float | None = None,
               enable_gqa: bool = False) -> torch.Tensor:
    """scaled_dot_product_attention in plain ops (ATen's own lowering adds NaN guards)."""
    scores = query @ key.transpose(-2, -1) * (scale or query.shape[-1] ** -0.5)
    if is_causal:
        rows, cols = query.shape[-2], key.shape[-2]
        causal = torch.ones(rows, cols, dtype=torch.bool).tril()
        mask = torch.zeros(rows, cols, dtype=scores.dtype).masked_fill(~causal, float("-inf"))
        scores = scores + mask
    if attn_mask is not None:
        scores = scores + attn_mask
    return torch.softmax(scores, dim=-1) @ value


class _PlainAttention(TorchFunctionMode):
    """Replaces `F.scaled_dot_product_attention` calls (in any module) by `_attention`."""

    def __torch_function__(self, func: Any, types: Any, args: Any = (),
                           kwargs: Any = None) -> Any:
        if func is F.scaled_dot_product_attention:
            return _attention(*args, **(kwargs or {}))
        return func(*args, **(kwargs or {}))


class _Interpreted(torch.nn.Module):
    """Runs a GraphModule node by node, so make_fx sees each node's meta as it traces."""

    def __init__(self, graph_module: torch.fx.GraphModule) -> None:
        super().__init__()
        self.inner = graph_module

    def forward(self, *args: Any) -> Any:
        with fx_traceback.preserve_node_meta(), _PlainAttention():
            return torch.fx.Interpreter(self.inner).run(*args)


def symbolic_trace(model: torch.nn.Module) -> torch.fx.GraphModule:
    """torch.fx symbolic tracing that records stack traces and module stacks."""
    tracer = torch.fx.Tracer()
    tracer.record_stack_traces = True
    graph = tracer.trace(model)
    return torch.fx.GraphModule(tracer.root, graph, model.__class__.__name__)


def capture_fx(model: torch.nn.Module, args: tuple[torch.Tensor, ...],
               arg_names: Sequence[str]) -> Captured:
    """Symbolically trace `model`, then lower the traced graph to ATen on fake `args`."""
    traced = symbolic_trace(model)
    wrapper = _Interpreted(traced)
    tensors = {**dict(wrapper.named_parameters()), **dict(wrapper.named_buffers())}

    def run(state: dict[str, torch.Tensor], *inputs: torch.Tensor) -> Any:
        return functional_call(wrapper, state, inputs)

    lowered = make_fx(functionalize(run), decomposition_table=decomposition_table().materialize(),
                      tracing_mode="fake")(tensors, *args)
    placeholders = [n for n in lowered.graph.nodes if n.op == "placeholder"]
    names = [name.removeprefix("inner.") for name in tensors]
    inputs = {node.name: GraphInput(fqn, to_numpy(tensor))
              for node, fqn, tensor in zip(placeholders, names, tensors.values())}
    for i, node in enumerate(placeholders[len(tensors):]):
        inputs[node.name] = GraphInput(arg_names[i] if i < len(arg_names) else node.name)
    output_node = next(n for n in lowered.graph.nodes if n.op == "output")
    return Captured(graph=lowered.graph, inputs=inputs,
                    outputs=flatten_outputs(output_node.args[0]), owner=lowered, method="fx")

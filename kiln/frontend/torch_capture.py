"""What both capture paths (torch.export, torch.fx) hand to the converter: an ATen graph.

`Captured` is the common currency: an fx graph of ATen ops whose placeholders are either user
inputs or named tensors (parameters, buffers, lifted constants) and whose nodes carry
`meta["val"]` (static shapes), `meta["stack_trace"]` and `meta["nn_module_stack"]`.

The decomposition table is PyTorch's core-ATen table minus the ops kiln has directly: keeping
`linear`, `layer_norm`, `softmax`, `hardswish`, ... gives one kiln op where the core table would
give five.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.fx

aten = torch.ops.aten

KEEP: tuple[Any, ...] = (
    aten.linear.default, aten.matmul.default, aten.layer_norm.default, aten.group_norm.default,
    aten.hardswish.default, aten.hardsigmoid.default, aten.silu.default, aten.relu6.default,
    aten.softmax.int, aten.log_softmax.int, aten.scaled_dot_product_attention.default,
    aten.adaptive_avg_pool1d.default, aten.adaptive_avg_pool2d.default,
    aten.max_pool1d.default, aten.max_pool2d.default, aten.avg_pool1d.default,
    aten.pad.default, aten.reflection_pad1d.default, aten.reflection_pad2d.default,
    aten.reflection_pad3d.default, aten.replication_pad1d.default,
    aten.replication_pad2d.default, aten.replication_pad3d.default,
)
"""Ops that the conversion table maps directly, so they are not decomposed."""


def decomposition_table() -> Any:
    """torch.export's default (core ATen) table without the ops in `KEEP`."""
    table = torch.export.default_decompositions()
    for op in KEEP:
        table.pop(op, None)
    return table


@dataclass(frozen=True)
class GraphInput:
    """A placeholder: a user input (`array` None) or a named tensor that becomes a kiln.weight."""

    name: str
    array: np.ndarray | None = None

    @property
    def is_weight(self) -> bool:
        return self.array is not None


@dataclass
class Captured:
    """An ATen-level fx graph plus what its placeholders and outputs mean."""

    graph: torch.fx.Graph
    inputs: dict[str, GraphInput]
    """Placeholder node name → meaning."""
    outputs: list[Any]
    """The user outputs in order (fx nodes, flattened)."""
    owner: torch.nn.Module
    """Module that owns `get_attr` targets (the traced GraphModule)."""
    method: str
    notes: list[str] = field(default_factory=list)


def to_numpy(tensor: torch.Tensor) -> np.ndarray:
    """A NumPy copy of a parameter/buffer; bfloat16 is widened to float32 (NumPy lacks it)."""
    t = tensor.detach().cpu()
    if t.dtype == torch.bfloat16:
        t = t.float()
    return np.array(t.numpy(), order="C", copy=True)


def flatten_outputs(value: Any) -> list[Any]:
    """The leaves of a nested tuple/list/dict of outputs, in order."""
    if isinstance(value, (tuple, list)):
        return [leaf for item in value for leaf in flatten_outputs(item)]
    if isinstance(value, dict):
        return [leaf for item in value.values() for leaf in flatten_outputs(item)]
    return [value]

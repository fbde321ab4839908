"""Constant folding at capture time: nodes that depend on no model input and no weight.

Causal masks (`ones(...).tril()`), position tables (`arange(n) * 2`) and other tensor factories
lower to ATen ops kiln need not know (`le`, `where`, `logical_and`). Whatever depends only on
Python values is evaluated once with PyTorch itself and enters the IR as one `kiln.constant`,
which is exact by construction.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.fx
from torch.fx.node import map_arg


class ConstantFolder:
    """Evaluates foldable nodes with real tensors and remembers their values."""

    def __init__(self) -> None:
        self.values: dict[torch.fx.Node, Any] = {}

    def __contains__(self, node: object) -> bool:
        return node in self.values

    def try_fold(self, node: torch.fx.Node) -> bool:
        """Evaluate `node` if every input is already folded; False when it cannot be."""
        if node.op != "call_function" or not callable(node.target):
            return False
        if any(arg not in self.values for arg in node.all_input_nodes):
            return False
        args = map_arg(node.args, self.values.__getitem__)
        kwargs = map_arg(node.kwargs, self.values.__getitem__)
        try:
            with torch.no_grad():
                self.values[node] = node.target(*args, **kwargs)
        except Exception:
            return False
        return True

    def tensor(self, node: torch.fx.Node) -> torch.Tensor | None:
        value = self.values.get(node)
        return value if isinstance(value, torch.Tensor) else None

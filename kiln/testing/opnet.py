"""`OpNet`: a small builder for op-coverage test modules (a conv-shaped input `x`, a sequence
input `v`), shared by the per-target op tests so each target's test lists only its ops."""

from __future__ import annotations

import numpy as np

from kiln.ir.builder import new_function
from kiln.ir.graph import Module, Value
from kiln.ir.types import TensorType


class OpNet:
    """Builds the test module: `w(...)` adds a random weight, `out(...)` marks values returned.
    `seed=None` draws fresh weights each time."""

    def __init__(self, name: str, seed: int | None = None) -> None:
        self.rng = np.random.default_rng(seed)
        self.module = Module(name)
        self.func, self.b = new_function(self.module, "forward",
                                         [TensorType((2, 3, 8, 9)), TensorType((2, 5, 16))],
                                         ["x", "v"])
        self.outs: list[Value] = []

    def w(self, *shape: int, positive: bool = False) -> Value:
        data = self.rng.standard_normal(shape).astype(np.float32)
        if positive:
            data = (np.abs(data) + 0.5).astype(np.float32)
        return self.b.weight(f"p{len(self.module.weights)}", data)

    def add(self, kind: object, *operands: Value) -> Value:
        return self.b.add(kind, *operands)  # type: ignore[arg-type]

    def out(self, *values: Value) -> None:
        self.outs.extend(values)

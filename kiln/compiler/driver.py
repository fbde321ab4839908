"""`kiln.compile`: model in, `CompiledModel` out.

The driver picks the frontend, runs the target's pipeline through the pass manager and hands
the optimized IR to the target. Until code-generating targets exist, the only target is
`reference`, which runs the optimized IR in kiln's interpreter: slow, but exactly the semantics
every later target is checked against.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from kiln.compiler.frontend_dispatch import to_module
from kiln.errors import KilnError
from kiln.ir.graph import Module
from kiln.ir.interpret import interpret, to_numpy
from kiln.ir.ops.core import Weight

TARGET_PIPELINES: dict[str, str] = {"reference": "default"}
"""Each target's default pipeline (named pipelines live in `compiler/pipelines.py`)."""


def _as_tuple(inputs: Any) -> tuple[Any, ...]:
    if inputs is None:
        return ()
    if isinstance(inputs, (tuple, list)):
        return tuple(inputs)
    return (inputs,)


def _rel_error(got: np.ndarray, want: np.ndarray) -> float:
    """max |got - want| / max |want| (floored at 1e-12): one number per output."""
    want64 = want.astype(np.float64)
    diff = np.max(np.abs(got.astype(np.float64) - want64)) if want.size else 0.0
    return float(diff / max(float(np.max(np.abs(want64))) if want.size else 0.0, 1e-12))


@dataclass
class CompiledModel:
    """What `kiln.compile` returns: callable, with its IR, generated files and a report."""

    ir: Module
    target: str
    pipeline: str
    runner: Callable[..., list[np.ndarray]]
    files: dict[str, str] = field(default_factory=dict)
    compile_seconds: float = 0.0
    reference_outputs: list[np.ndarray] | None = None
    example_inputs: tuple[Any, ...] = ()

    def __call__(self, *inputs: Any) -> Any:
        """Run the compiled model; torch inputs give torch outputs, NumPy inputs NumPy ones."""
        outs = self.runner(*inputs)
        if inputs and type(inputs[0]).__module__.startswith("torch"):
            import torch
            tensors = [torch.from_numpy(np.ascontiguousarray(o)) for o in outs]
            return tensors[0] if len(tensors) == 1 else tuple(tensors)
        return outs[0] if len(outs) == 1 else tuple(outs)

    def save(self, directory: str | Path) -> Path:
        """Write the optimized IR (`model.kir` + `.npz`), generated files and `report.json`."""
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        self.ir.save(out / "model.kir")
        for name, text in self.files.items():
            if name != "model.kir":
                (out / name).write_text(text)
        (out / "report.json").write_text(json.dumps(self.report(), indent=2, sort_keys=True))
        return out

    def report(self) -> dict[str, Any]:
        """Op counts, parameters, compile time and accuracy against the source model."""
        weights = [op.kind for op in self.ir.walk() if isinstance(op.kind, Weight)]
        params = sum(w.type.numel for w in weights)
        out: dict[str, Any] = {
            "target": self.target,
            "pipeline": self.pipeline,
            "ops": sum(n for name, n in self.ir.op_counts().items()
                       if name not in ("kiln.weight", "kiln.constant", "kiln.return")),
            "op_counts": self.ir.op_counts(),
            "parameters": params,
            "weight_bytes": sum(w.type.numel * w.type.numpy_dtype.itemsize for w in weights),
            "compile_seconds": round(self.compile_seconds, 4),
        }
        if self.reference_outputs is not None:
            got = [to_numpy(o) for o in _as_tuple(self(*self.example_inputs))]
            out["max_rel_error_vs_source"] = max(
                (_rel_error(g, w) for g, w in zip(got, self.reference_outputs)), default=0.0)
        return out


def _source_outputs(model: Any, inputs: Sequence[Any]) -> list[np.ndarray] | None:
    """The source model's outputs on the example inputs (torch models only)."""
    if not (hasattr(model, "forward") and hasattr(model, "parameters")) or not inputs:
        return None
    import torch
    with torch.no_grad():
        result = model(*[torch.as_tensor(x) for x in inputs])
    return [to_numpy(r) for r in _as_tuple(result)]


def compile_model(model: Any, example_inputs: Any = None, *, target: str = "reference",
                  pipeline: str | None = None, **options: Any) -> CompiledModel:
    """Frontend → pass pipeline → target. See `kiln.compile`."""
    from kiln.compiler.pass_manager import run_passes

    if target not in TARGET_PIPELINES:
        raise KilnError(f"unknown target '{target}'",
                        hint=f"available targets: {', '.join(sorted(TARGET_PIPELINES))}")
    start = time.perf_counter()
    inputs = _as_tuple(example_inputs)
    module = to_module(model, inputs)
    chosen = pipeline if pipeline is not None else TARGET_PIPELINES[target]
    optimized = run_passes(module, chosen, **options)

    def runner(*args: Any) -> list[np.ndarray]:
        return interpret(optimized, *args)

    compiled = CompiledModel(optimized, target, chosen, runner,
                             files={"model.kir": optimized.to_text()},
                             compile_seconds=time.perf_counter() - start,
                             example_inputs=inputs)
    compiled.reference_outputs = _source_outputs(model, inputs)
    return compiled

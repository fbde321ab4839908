"""`kiln.compile`: model in, `CompiledModel` out.

The driver picks the frontend, runs the target's pipeline through the pass manager, and hands
the optimized IR to the target's `build`. It also owns what is common to every target: turning
torch/NumPy inputs into arrays and back, and checking the artifact against the source model on
the example inputs for the report.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from kiln.compiler.frontend_dispatch import to_module
from kiln.ir.analysis import compute_ops
from kiln.ir.graph import Module
from kiln.ir.interpret import to_numpy
from kiln.ir.ops.core import Weight
from kiln.ir.ops.fused import Fused
from kiln.targets.target import Artifact, get_target

PASS_OPTIONS = ("calibration_data", "sample_inputs", "print_ir_after", "print_ir_after_change",
                "output", "verify", "check_numerics", "numerics_inputs", "numerics_rtol",
                "dump_dir", "time_passes", "reproducer_dir")
"""`kiln.compile` options that go to the pass manager; every other option goes to the target.
A target that declares an `example_inputs` or `calibration_data` option also receives those
values (its build may check ranges or quantize)."""


def _as_tuple(inputs: Any) -> tuple[Any, ...]:
    if inputs is None:
        return ()
    if isinstance(inputs, (tuple, list)):
        return tuple(inputs)
    return (inputs,)


def rel_error(got: np.ndarray, want: np.ndarray) -> float:
    """max |got - want| / max |want| (floored at 1e-12): the accuracy figure of every report."""
    if want.size == 0:
        return 0.0
    want64 = want.astype(np.float64)
    diff = float(np.max(np.abs(got.astype(np.float64) - want64)))
    return diff / max(float(np.max(np.abs(want64))), 1e-12)


@dataclass
class CompiledModel:
    """What `kiln.compile` returns: callable, with its IR, generated files and a report."""

    ir: Module
    target: str
    pipeline: str
    artifact: Artifact
    compile_seconds: float = 0.0
    source_outputs: list[np.ndarray] | None = None
    example_inputs: tuple[Any, ...] = ()

    @property
    def files(self) -> dict[str, str]:
        """Generated file name → source text."""
        return self.artifact.files

    def __call__(self, *inputs: Any) -> Any:
        """Run the compiled model; torch inputs give torch outputs, NumPy inputs NumPy ones."""
        outs = self.artifact.run(*[to_numpy(x) for x in inputs])
        if inputs and type(inputs[0]).__module__.startswith("torch"):
            from torch import from_numpy  # already imported: the caller passed a tensor
            tensors = [from_numpy(o if o.flags.c_contiguous else np.ascontiguousarray(o))
                       for o in outs]
            return tensors[0] if len(tensors) == 1 else tuple(tensors)
        return outs[0] if len(outs) == 1 else tuple(outs)

    def report(self) -> dict[str, Any]:
        """Op counts, parameters, compile time, accuracy vs the source, and the target's own."""
        weights = [op.kind for op in self.ir.walk() if isinstance(op.kind, Weight)]
        fused = [op for op in self.ir.main.ops if op.isa(Fused)]
        out: dict[str, Any] = {
            "target": self.target,
            "pipeline": self.pipeline,
            "ops": len(compute_ops(self.ir.main)),
            "fused_groups": len(fused),
            "op_counts": self.ir.op_counts(),
            "parameters": sum(w.type.numel for w in weights),
            "weight_bytes": sum(w.type.numel * w.type.numpy_dtype.itemsize for w in weights),
            "compile_seconds": round(self.compile_seconds, 4),
        }
        if self.source_outputs is not None:
            got = self.artifact.run(*[to_numpy(x) for x in self.example_inputs])
            out["max_rel_error_vs_source"] = max(
                (rel_error(g, w) for g, w in zip(got, self.source_outputs)), default=0.0)
        out.update(self.artifact.report())
        return out

    def export(self, directory: str | Path) -> Path:
        """Write what a user needs to use the model without kiln (target-specific)."""
        return self.artifact.export(Path(directory))

    def save(self, directory: str | Path) -> Path:
        """Write the optimized IR (`model.kir` + `.npz`), generated files and `report.json`."""
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        self.ir.save(out / "model.kir")
        for name, text in self.files.items():
            if name != "model.kir":
                (out / name).parent.mkdir(parents=True, exist_ok=True)
                (out / name).write_text(text)
        (out / "report.json").write_text(json.dumps(self.report(), indent=2, sort_keys=True))
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
    """Frontend → pass pipeline → target build. See `kiln.compile`."""
    from kiln.compiler.pass_manager import run_passes

    backend = get_target(target)
    pass_options = {k: v for k, v in options.items() if k in PASS_OPTIONS}
    target_options = backend.resolve_options(
        {k: v for k, v in options.items() if k not in PASS_OPTIONS})
    start = time.perf_counter()
    inputs = _as_tuple(example_inputs)
    shared = {"example_inputs": inputs, "calibration_data": pass_options.get("calibration_data")}
    for key, value in shared.items():  # for targets that declare them (gpu fp16 check, fpga)
        if key in target_options and target_options[key] is None:
            target_options[key] = value
    module = to_module(model, inputs)
    chosen = pipeline if pipeline is not None else backend.default_pipeline(target_options)
    if (pipeline is None and "quantize" in chosen.split(",")
            and pass_options.get("calibration_data") is None):
        pass_options["calibration_data"] = [inputs]  # a target's int8 option: calibrate on
        # the example inputs
    optimized = run_passes(module, chosen, **pass_options)
    artifact = backend.build(optimized, target_options)
    return CompiledModel(optimized, target, chosen, artifact,
                         compile_seconds=time.perf_counter() - start,
                         source_outputs=_source_outputs(model, inputs), example_inputs=inputs)

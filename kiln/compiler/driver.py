"""`kiln.compile`: model in, `CompiledModel` out.

The driver picks the frontend, runs the target's pipeline through the pass manager, and hands
the optimized IR to the target's `build`. It also owns what is common to every target: turning
torch/NumPy inputs into arrays and back, and checking the artifact against the source model on
the example inputs for the report.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from kiln.compiler.frontend_dispatch import to_module
from kiln.ir.graph import Module
from kiln.ir.interpret import to_numpy
from kiln.targets.target import Artifact, get_target

if TYPE_CHECKING:
    from kiln.compiler.instruments import PassRecord

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
    source_ir: Module | None = None
    """The module as the frontend made it, before any pass (the float reference for
    per-layer numerics of quantized pipelines)."""
    pass_records: tuple[PassRecord, ...] = ()
    """One record per pass the pipeline ran: time, op counts, statistics (for the report)."""
    target_options: dict[str, Any] = field(default_factory=dict)
    """The target's resolved options (the report lists the JSON-representable ones)."""

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

    def report(self, *, eval_data: Any = None) -> dict[str, Any]:
        """The unified report (`kiln.report`, schema in `kiln.report.schema`): model, pipeline,
        per-layer table, totals, numerics, environment and manifest, with schema 0's flat keys
        and the target's own totals kept at the top level. `eval_data=(x, y)` adds accuracy."""
        from kiln.report import build_report

        return build_report(self, eval_data=eval_data)

    def export(self, directory: str | Path) -> Path:
        """Write what a user needs to use the model without kiln (target-specific)."""
        return self.artifact.export(Path(directory))

    def save(self, directory: str | Path, *, source: dict[str, Any] | None = None) -> Path:
        """Write the artifact folder `kiln.load_compiled` reads back: the optimized IR
        (`model.kir` + `.npz`), `artifact.json`, `inputs.npz`, the target's exported files
        and `report.json` / `report.html` (`kiln.compiler.artifact_io`). `source` says where
        the model came from (e.g. `{"kind": "bundled", "model": "jet_mlp"}`), so tools can
        re-create it to compare against."""
        from kiln.compiler.artifact_io import save_artifact

        return save_artifact(self, directory, source=source)


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
    from kiln.compiler.pass_manager import PassManager

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
    result = PassManager(chosen, **pass_options).run(module)
    artifact = backend.build(result.module, target_options)
    return CompiledModel(result.module, target, chosen, artifact,
                         compile_seconds=time.perf_counter() - start,
                         source_outputs=_source_outputs(model, inputs), example_inputs=inputs,
                         source_ir=module, pass_records=tuple(result.records),
                         target_options=target_options)

"""The `fpga` target: calibrated fixed point, HLS C++ (io_parallel), g++ C-simulation.

    art = kiln.compile(model, x, target="fpga", precision=16, reuse_factor=1)
    art(x)            # runs the C-simulation of the generated HLS C++
    art.save("prj")   # the HLS project: firmware/, tb_<model>.cpp, tb_data/, Makefile,
                      # run_hls.tcl, hls_config.cfg, README.md

`build` takes the float IR of the `fpga` pipeline (graph passes, no fusion), converts it with
the `fixed-point` pass (`fixed<precision, I>` per tensor, I calibrated on `calibration_data`,
or on the example inputs when none is given; rounding `rnd`, saturation `sat`), logs the
chosen type of every layer, lowers and emits the HLS C++ (`kiln.codegen.hls`), and builds the
C-simulation (`fpga_csim`). A module that already holds fixed-point types is used as it is.

The C-simulation is bit-exact with kiln's interpreter on the fixed-point IR
(`art.artifact.module`; `art.ir` is the float IR the pipeline produced):
inputs are quantized on the host with kiln's exact `quantize_fixed`, the C++ computes every
layer on raw integers, and the host dequantizes the outputs and runs the float tail (a final
softmax stays float: it is not lowered to an HLS lookup table yet) with kiln's own reference
op semantics, so `art(x)` equals `interpret(art.artifact.module, x)` bit for bit (tolerance
0, float tail included). `art.report()` merges the estimator's totals and per-layer costs
(`kiln.targets.cost`) with each layer's chosen precision.

`reuse_factor` is one int or a dict layer name → RF (the estimator's layer names, e.g. `fc1`;
unnamed layers get 1); it changes pragmas only, never the arithmetic. `budget={"dsp": 500,
...}` (keys of `kiln.targets.cost.budget`) runs the budget search on the fixed-point module
and builds with the per-layer reuse factors it chose; `report()["budget"]` holds the request,
the choice and the Pareto table, and the totals are those of the chosen configuration.

Bad input: an op without an HLS implementation (every one named with its source line, before
any C++ is compiled); a precision too narrow for a calibrated range (a layer's type would have
negative fraction bits: the error names the layer and the narrowest width that works); a
failing g++ build (a `CompileError` naming the log in the build cache).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from kiln.codegen.hls import HlsOptions, Lowered, emit_lowered, lower
from kiln.codegen.hls.emitter import model_name
from kiln.codegen.hls.layers import ReuseFactor
from kiln.errors import KilnError
from kiln.ir.graph import Module, Op, Value
from kiln.ir.interpret import interpret_all
from kiln.ir.types import FixedType
from kiln.passes.fixed_point import quantized_already
from kiln.targets.fpga_csim import Csim, build_csim
from kiln.targets.target import Target

logger = logging.getLogger("kiln.targets.fpga")
DEFAULT_PRECISION = 16


def _run_op(op: Op, env: dict[Value, np.ndarray]) -> None:
    """One op by its reference semantics (the interpreter's definition of the op)."""
    outs = op.kind.reference_typed([v.type for v in op.operands], *[env[v] for v in op.operands])
    env.update(zip(op.results, outs))


@dataclass
class FpgaArtifact:
    """The HLS project and its C-simulation (module docstring)."""

    module: Module
    lowered: Lowered
    csim: Csim
    options: HlsOptions
    files: dict[str, str]
    precision: int | None
    budget: dict[str, Any] | None = None

    def raws_in(self, inputs: Sequence[np.ndarray]) -> np.ndarray:
        """Quantize on the host: one row of input raws per sample (batch rows of a sample)."""
        func = self.module.main
        if len(inputs) != len(func.args):
            raise KilnError(f"@{func.name} takes {len(func.args)} inputs, got {len(inputs)}")
        env: dict[Value, np.ndarray] = {}
        for i, (arg, x) in enumerate(zip(func.args, inputs)):
            x = np.asarray(x, dtype=arg.type.numpy_dtype)
            if tuple(x.shape[1:]) != tuple(arg.type.shape[1:]):
                want = ", ".join(map(str, arg.type.shape[1:]))
                raise KilnError(f"input {i} (%{arg.name}) has shape {list(x.shape)}, the "
                                f"compiled model expects [N, {want}]")
            env[arg] = x
        for op in self.lowered.input_ops:
            _run_op(op, env)
        count = len(next(iter(env.values())))
        return np.concatenate([env[v].reshape(count, -1) for v in self.lowered.input_values],
                              axis=1)

    def tail(self, raws: np.ndarray) -> list[np.ndarray]:
        """Dequantize and run the float tail per sample; stack the samples' results."""
        terminator = self.module.main.body.terminator
        assert terminator is not None
        sizes = np.cumsum([0, *(t.size for t in self.lowered.outputs)])
        per_sample = []
        for row in raws:
            env = {v: row[a:b].reshape(v.type.shape)
                   for v, a, b in zip(self.lowered.output_values, sizes[:-1], sizes[1:])}
            for op in self.lowered.tail:
                _run_op(op, env)
            per_sample.append([env[v] for v in terminator.operands])
        return [np.concatenate(outs, axis=0) for outs in zip(*per_sample)]

    def run(self, *inputs: np.ndarray) -> list[np.ndarray]:
        return self.tail(self.csim.run(self.raws_in(inputs)))

    def run_raw(self, *inputs: np.ndarray) -> np.ndarray:
        """The C-simulation's output raws (before dequantization), one row per sample."""
        return self.csim.run(self.raws_in(inputs))

    def report(self) -> dict[str, Any]:
        """The estimator's totals and per-layer costs (`kiln.targets.cost`), each layer with
        its chosen precision, plus the HLS functions and how the C-simulation runs."""
        from kiln.targets.cost.fpga_estimate import estimate

        est = estimate(self.module, part=self.options.part, clock_mhz=self.options.clock_mhz,
                       io="parallel", reuse_factor=self.options.reuse_factor).report()
        chosen = {t.name[2:]: str(t.dtype) for t in self.lowered.inputs}
        chosen.update({layer.output.name[2:]: str(layer.output.dtype)
                       for layer in self.lowered.layers})
        layers = est.pop("layers")
        assert isinstance(layers, list)
        for row in layers:
            row["precision"] = chosen.get(str(row.get("name")))
        return {
            **est, "layers": layers,
            "runtime": "C-simulation of the generated HLS C++ (g++, kiln_fixed.h)",
            "reuse_factor": self.options.reuse_factor, "precision": self.precision,
            "hls_functions": [layer_row(layer) for layer in self.lowered.layers],
            "host_tail": [op.name for op in self.lowered.tail],
            "csim_build_log": str(self.csim.log),
            **({"budget": self.budget} if self.budget is not None else {}),
        }

    def export(self, directory: Path) -> Path:
        directory.mkdir(parents=True, exist_ok=True)
        for name, text in self.files.items():
            (directory / name).parent.mkdir(parents=True, exist_ok=True)
            (directory / name).write_text(text)
        self.module.save(directory / "model_fixed.kir")
        return directory


def layer_row(layer: Any) -> dict[str, Any]:
    return {"name": layer.name, "kind": layer.kind, "source": layer.source,
            "shape": list(layer.output.shape), "type": str(layer.output.dtype),
            "weight_type": str(layer.weight_type) if layer.weight_type else None,
            "nonzero_weights": layer.nonzero_weights, "multiplies": layer.multiplies,
            "reuse_factor": layer.reuse_factor, "label": layer.label}


def _calibration(options: Mapping[str, Any]) -> Any:
    data = options.get("calibration_data")
    if data is not None:
        return data
    example = options.get("example_inputs")
    if not example:
        raise KilnError("the fpga target needs calibration data to choose fixed-point types",
                        hint="pass example inputs or calibration_data=[batches] to kiln.compile")
    return [tuple(example)]


def to_fixed(module: Module, options: Mapping[str, Any]) -> Module:
    """The `fixed-point` pass at the requested precision (a fixed module is returned as is)."""
    if quantized_already(module) is not None:
        return module
    from kiln.compiler.pass_manager import run_passes

    width = int(options.get("precision") or DEFAULT_PRECISION)
    return run_passes(module, f"fixed-point{{width={width}}}",
                      calibration_data=_calibration(options))


def check_precision(lowered: Lowered, width: int | None) -> None:
    """Every layer's chosen type needs fraction bits >= 0 (module docstring)."""
    problems = [(op, t) for op, t in _chosen_types(lowered) if t.frac_bits < 0]
    if not problems:
        return
    need = max(t.integer for _, t in problems)
    raise KilnError(diagnostics=[op.diagnostic(
        f"precision {width} bits is too narrow for '{_where(op)}': its calibrated range needs "
        f"{t.integer} integer bits ({t}), leaving no fraction bits",
        hint=f"the narrowest precision that works is {need}") for op, t in problems])


def _where(op: Op) -> str:
    return op.loc.describe() if op.loc is not None else f"%{op.results[0].name}"


def _chosen_types(lowered: Lowered) -> list[tuple[Op, FixedType]]:
    """(op, type) of each input quantize and each layer's requantize: the chosen precisions."""
    out = [(op, t.dtype) for op, t in zip(lowered.input_ops, lowered.inputs)]
    return out + [(layer.op, layer.output.dtype) for layer in lowered.layers
                  if layer.kind == "requantize"]


def log_precision(lowered: Lowered) -> None:
    for op, t in _chosen_types(lowered):
        logger.info("fpga: %s %s uses %s", op.name, _where(op), t)


def golden_files(module: Module, lowered: Lowered, inputs: Sequence[Any]) -> dict[str, str]:
    """tb_data/ input and output raws from kiln's interpreter on the example inputs."""
    if not inputs:
        return {}
    values = interpret_all(module, *inputs)
    rows_in = np.concatenate([values[v].reshape(-1) for v in lowered.input_values])
    rows_out = np.concatenate([values[v].reshape(-1) for v in lowered.output_values])
    return {"tb_data/tb_input_features.dat": " ".join(map(str, rows_in.tolist())) + "\n",
            "tb_data/tb_output_predictions.dat": " ".join(map(str, rows_out.tolist())) + "\n"}


def build_hls(fixed: Module, options: Mapping[str, Any], hls: HlsOptions) -> FpgaArtifact:
    """Lowering, HLS C++ (either flavor) and the C-simulation build of a fixed-point module;
    shared by the fpga and asic targets."""
    hls.check()
    lowered = lower(fixed, hls.reuse_factor, hls.io)
    check_precision(lowered, options.get("precision") or DEFAULT_PRECISION)
    log_precision(lowered)
    files = emit_lowered(fixed, lowered, hls)
    files.update(golden_files(fixed, lowered, tuple(options.get("example_inputs") or ())))
    name = model_name(fixed)
    csim = build_csim(files, name, sum(t.size for t in lowered.outputs),
                      options.get("cache_dir"), str(options.get("cxx") or "g++"))
    return FpgaArtifact(fixed, lowered, csim, hls, files, options.get("precision"))


def reuse_option(value: Any) -> ReuseFactor:
    """The `reuse_factor` option: an int, or a dict layer name → int."""
    if isinstance(value, Mapping):
        return {str(k): int(v) for k, v in value.items()}
    return int(value)


def budget_search(fixed: Module, options: Mapping[str, Any]) -> tuple[ReuseFactor,
                                                                        dict[str, Any]]:
    """Per-layer reuse factors meeting `options["budget"]` (the search's `KilnError` when
    none does) and the report's `budget` entry."""
    from kiln.targets.cost.budget import search

    budget = dict(options["budget"])
    result = search(fixed, str(options["part"]), budget,
                    clock_mhz=float(options["clock_mhz"]), io=options["io"])
    chosen = {k: v for k, v in result.reuse_factor.items() if v != 1}
    logger.info("fpga: budget %s met with reuse factors %s", budget, chosen or 1)
    return chosen, {"requested": budget, "chosen_reuse_factor": dict(result.reuse_factor),
                    "pareto": result.pareto}


def build(module: Module, options: Mapping[str, Any]) -> FpgaArtifact:
    """Fixed point, budget search, lowering, HLS C++ and the C-simulation build."""
    fixed = to_fixed(module, options)
    rf, budget = reuse_option(options["reuse_factor"]), None
    if options.get("budget") is not None:
        rf, budget = budget_search(fixed, options)
    hls = HlsOptions(rf, str(options["io"]), str(options["part"]), float(options["clock_mhz"]))
    hls.check()
    art = build_hls(fixed, options, hls)
    art.budget = budget
    return art


TARGET = Target(
    name="fpga",
    description="HLS C++ (Vitis-style, kiln_fixed.h) with a g++ C-simulation",
    pipeline="fpga",
    build=build,
    options={"part": "xczu9eg", "clock_mhz": 200.0, "io": "parallel", "reuse_factor": 1,
             "precision": None, "calibration_data": None, "budget": None,
             "example_inputs": None, "cache_dir": None, "cxx": "g++"},
)

"""The `fpga` target: calibrated fixed point, HLS C++ (io_parallel or io_stream), g++ C-sim.

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
layer on raw integers, and the host dequantizes the outputs and runs the float tail (with
`activations="host"` a final softmax stays float there; by default, `activations="lut"`,
softmax, sigmoid, tanh, hardsigmoid and hardswish are FPGA layers: lookup tables of
`table_size` entries, `kiln.ir.ops.lut`) with kiln's own reference op semantics, so
`art(x)` equals `interpret(art.artifact.module, x)` bit for bit (tolerance
0, float tail included). `art.report()` merges the estimator's totals and per-layer costs
(`kiln.targets.cost`) with each layer's chosen precision.

`io="stream"` builds the dataflow architecture instead (`kiln.codegen.hls.emit_stream`:
`hls::stream` FIFOs between layer functions under `DATAFLOW`, line buffers for convolutions
and pools) with FIFO depths sized by the stream estimator (`kiln.targets.cost.fpga_stream`);
the bits are those of io="parallel", and `report()` costs its stages, line buffers and FIFOs
(`fifos`: one row per edge with its depth).

`reuse_factor` is one int or a dict layer name → RF (the estimator's layer names, e.g. `fc1`;
unnamed layers get 1); it changes pragmas only, never the arithmetic. `budget={"dsp": 500,
...}` (keys of `kiln.targets.cost.budget`) runs the budget search on the fixed-point module
(the io mode's own estimator: io="stream" costs the dataflow design) and builds with the
per-layer reuse factors it chose; with `budget_precisions=[8, 10, 12, 16]` it also narrows
layers (weights and output, integer bits kept), each configuration realized in the IR and
accepted only when its outputs keep `min_sqnr_db` (default 30 dB) against the float model on
the calibration data, and the narrowed module is built. `report()["budget"]` holds the
request, the choice (`chosen_reuse_factor`, `chosen_bits`) and the Pareto table (config,
latency, resources, `sqnr_db`), and the totals are those of the chosen configuration.

`sanitize=True` builds the C-simulation with AddressSanitizer and UBSan (a finding is a
`KilnError`); `fit="auto"|"strict"|"off"` says how the estimate is checked against the part
before any C++ is compiled (`fpga_fit.py`: by default a model far too large for the part fails
fast, naming the resource and by how much).

Bad input: an op without an HLS implementation (every one named with its source line, before
any C++ is compiled); a precision too narrow for a calibrated range (a layer's type would have
negative fraction bits: the error names the layer and the narrowest width that works); a
failing g++ build (a `CompileError` naming the log in the build cache).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from kiln.codegen.hls import HlsOptions, Lowered, emit_lowered, lower
from kiln.codegen.hls.emitter import model_name
from kiln.codegen.hls.layers import ReuseFactor
from kiln.errors import KilnError
from kiln.ir.graph import Module, Op, Value
from kiln.ir.interpret import interpret_all, run_op
from kiln.ir.ops.core import Constant, Weight
from kiln.ir.types import FixedType
from kiln.passes.fixed_point import quantized_already
from kiln.targets.fpga_csim import Csim, build_csim
from kiln.targets.fpga_fit import check_fit
from kiln.targets.target import Target

logger = logging.getLogger("kiln.targets.fpga")
DEFAULT_PRECISION = 16


def _run_op(op: Op, env: dict[Value, np.ndarray], module: Module | None = None) -> None:
    """One op by its reference semantics (the interpreter's definition of the op); with
    `module`, weights it reads and fused regions too (the host tail may hold both)."""
    if module is None:
        outs = op.kind.reference_typed([v.type for v in op.operands],
                                       *[env[v] for v in op.operands])
        env.update(zip(op.results, outs))
        return
    _parameters(op.operands, env, module)
    env.update(zip(op.results, run_op(module, op, env)))


def _parameters(values: Sequence[Value], env: dict[Value, np.ndarray], module: Module) -> None:
    """Weights and constants among `values` that the host has not computed yet."""
    for v in values:
        if v not in env and v.producer is not None and v.producer.isa((Weight, Constant)):
            env[v] = run_op(module, v.producer, env)[0]


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
            if x.ndim and x.shape[0] == 0:
                raise KilnError(f"input {i} (%{arg.name}) has batch size 0",
                                hint="pass at least one sample")
            env[arg] = x
        for op in self.lowered.input_ops:
            _run_op(op, env)
        values = self.lowered.input_values
        count = len(env[values[0]]) if values else len(next(iter(env.values())))
        return np.concatenate([env[v].reshape(count, -1) for v in self.lowered.input_values],
                              axis=1)

    def tail(self, raws: np.ndarray, inputs: Sequence[np.ndarray] = ()) -> list[np.ndarray]:
        """Dequantize and run the float tail per sample; stack the samples' results. The
        tail may read the model's `inputs` (a residual around the HLS body) and weights."""
        terminator = self.module.main.body.terminator
        assert terminator is not None
        sizes = np.cumsum([0, *(t.size for t in self.lowered.outputs)])
        per_sample = []
        for i, row in enumerate(raws):
            env = {v: row[a:b].reshape(v.type.shape)
                   for v, a, b in zip(self.lowered.output_values, sizes[:-1], sizes[1:])}
            env.update({arg: np.asarray(x, dtype=arg.type.numpy_dtype)[
                slice(None) if len(raws) == 1 else slice(i, i + 1)]  # one sample: as given
                for arg, x in zip(self.module.main.args, inputs)})
            for op in self.lowered.tail:
                _run_op(op, env, self.module)
            _parameters(terminator.operands, env, self.module)  # a weight returned as it is
            per_sample.append([env[v] for v in terminator.operands])
        return [np.concatenate(outs, axis=0) if outs[0].ndim else outs[0]  # rank 0: no batch
                for outs in zip(*per_sample)]

    def run(self, *inputs: np.ndarray) -> list[np.ndarray]:
        return self.tail(self.csim.run(self.raws_in(inputs)), inputs)

    def run_raw(self, *inputs: np.ndarray) -> np.ndarray:
        """The C-simulation's output raws (before dequantization), one row per sample."""
        return self.csim.run(self.raws_in(inputs))

    def report(self) -> dict[str, Any]:
        """The estimator's totals and per-layer costs (`kiln.targets.cost`), each layer with
        its chosen precision, plus the HLS functions and how the C-simulation runs."""
        est = self._estimate()
        chosen = {t.name[2:]: str(t.dtype) for t in self.lowered.inputs}
        chosen.update({layer.output.name[2:]: str(layer.output.dtype)
                       for layer in self.lowered.layers})
        layers = est.pop("layers")
        assert isinstance(layers, list)
        for row in layers:
            row["precision"] = chosen.get(str(row.get("name")))
        return {
            **est, "layers": layers,
            "runtime": "C-simulation of the generated HLS C++ (g++, kiln_fixed.h)"
                       + (", sanitized" if self.csim.sanitized else ""),
            "reuse_factor": self.options.reuse_factor, "precision": self.precision,
            "hls_functions": [layer_row(layer) for layer in self.lowered.layers],
            "host_tail": [op.name for op in self.lowered.tail],
            "csim_build_log": str(self.csim.log),
            **({"budget": self.budget} if self.budget is not None else {}),
        }

    def _estimate(self) -> dict[str, Any]:
        """The estimator of the architecture built: per IR layer for io="parallel", per
        dataflow stage with FIFOs per edge for io="stream" (`cost.fpga_stream`)."""
        from kiln.targets.cost.fpga_estimate import estimate

        options = self.options
        if options.io == "stream":
            from kiln.targets.cost.fpga_stream import estimate_lowered

            est, _ = estimate_lowered(self.lowered, part=options.part,
                                      clock_mhz=options.clock_mhz)
            return est.report()
        return estimate(self.module, part=options.part, clock_mhz=options.clock_mhz,
                        io="parallel", reuse_factor=options.reuse_factor).report()

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
            "reuse_factor": layer.reuse_factor, "label": layer.label,
            **({"table_error": layer.table_error} if layer.table_error else {})}


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
    return run_passes(module, f"fixed-point{{width={width}}}" + activation_passes(options),
                      calibration_data=_calibration(options))


def activation_passes(options: Mapping[str, Any]) -> str:
    """`activations="lut"` (default): sigmoid, tanh, softmax, hardsigmoid and hardswish run
    on the FPGA (`fixed-activations`: lookup tables of `table_size` entries, hard ones
    exact; `table_range`: the tables' input range, a power of two, default per function);
    `"host"`: they stay float (a final softmax runs in the host tail). Layer norms always
    become `kiln.fixed_layer_norm` and, with "lut", GELUs `kiln.fixed_gelu`
    (`fixed-transformer`)."""
    mode = options.get("activations") or "lut"
    if mode not in ("lut", "host"):
        raise KilnError(f"fpga option activations={mode!r} is not one of 'lut', 'host'")
    size = int(options.get("table_size") or 1024)
    span = float(options.get("table_range") or 0.0)
    return f",fixed-activations{{table-size={size},table-range={span}}},fixed-transformer" \
        if mode == "lut" else ",fixed-transformer{gelu=false}"


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
    if hls.io == "stream" and hls.fifo_depths is None:
        from kiln.targets.cost.fpga_stream import fifo_depths

        hls = replace(hls, fifo_depths=fifo_depths(lowered))
    log_precision(lowered)
    files = emit_lowered(fixed, lowered, hls)
    files.update(golden_files(fixed, lowered, tuple(options.get("example_inputs") or ())))
    name = model_name(fixed)
    csim = build_csim(files, name, sum(t.size for t in lowered.outputs),
                      options.get("cache_dir"), str(options.get("cxx") or "g++"),
                      bool(options.get("sanitize")))
    return FpgaArtifact(fixed, lowered, csim, hls, files, options.get("precision"))


def reuse_option(value: Any) -> ReuseFactor:
    """The `reuse_factor` option: an int, or a dict layer name → int."""
    if isinstance(value, Mapping):
        return {str(k): int(v) for k, v in value.items()}
    return int(value)


def budget_search(fixed: Module, options: Mapping[str, Any], reference: Module | None = None,
                  ) -> tuple[ReuseFactor, dict[str, Any], Module]:
    """Per-layer reuse factors (and, with `budget_precisions`, widths checked against the
    float `reference` on the calibration data: `min_sqnr_db`) meeting `options["budget"]`
    (the search's `KilnError` when none does), the report's `budget` entry and the module to
    build."""
    from kiln.targets.cost.budget import search
    from kiln.targets.cost.budget_precision import PrecisionGuard, samples_of

    budget = dict(options["budget"])
    widths = [int(w) for w in options.get("budget_precisions") or ()]
    guard = None
    if widths and reference is not None:
        guard = PrecisionGuard(reference, samples_of(_calibration(options), 32),
                               float(options.get("min_sqnr_db") or 30.0))
    result = search(fixed, str(options["part"]), budget, precisions=widths, guard=guard,
                    clock_mhz=float(options["clock_mhz"]), io=options["io"])
    chosen = {k: v for k, v in result.reuse_factor.items() if v != 1}
    logger.info("fpga: budget %s met with reuse factors %s, widths %s", budget, chosen or 1,
                result.bits or "unchanged")
    entry = {"requested": budget, "chosen_reuse_factor": dict(result.reuse_factor),
             "chosen_bits": dict(result.bits), "pareto": result.pareto,
             **({"min_sqnr_db": guard.min_sqnr_db} if guard is not None else {})}
    return chosen, entry, result.module or fixed


def build(module: Module, options: Mapping[str, Any]) -> FpgaArtifact:
    """Fixed point, budget search, lowering, HLS C++ and the C-simulation build."""
    fixed = to_fixed(module, options)
    rf, budget = reuse_option(options["reuse_factor"]), None
    if options.get("budget") is not None:
        float_ir = module if quantized_already(module) is None else None
        rf, budget, fixed = budget_search(fixed, options, float_ir)
    hls = HlsOptions(rf, str(options["io"]), str(options["part"]), float(options["clock_mhz"]))
    hls.check()
    check_fit(fixed, options, rf)  # before any C++ is generated or compiled (fpga_fit.py)
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
             "example_inputs": None, "cache_dir": None, "cxx": "g++", "sanitize": False,
             "fit": "auto", "activations": "lut", "table_size": 1024, "table_range": None,
             "budget_precisions": None, "min_sqnr_db": 30.0},
)

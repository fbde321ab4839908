"""The cases of the cross-target fuzzer, and its two target-independent runners.

`make_case(seed)` draws the kind of model from the seed: a random kiln graph (most ops), a
graph of the layers the HLS targets implement (batch 1, so fpga and asic have something to
build), or a random PyTorch module traced by `kiln.trace` (`torchgen`). Every case's inputs are
finite standard normals from their own random stream; the calibration batches (for int8 and
fixed point) include the inputs themselves, so calibrated ranges cover what is run.

`PipelineRunner` runs every distinct named pipeline through the pass manager and compares the
interpreter before and after (`differential.check`, its 1e-5 tolerance); `TorchRunner`
compares the interpreter on a traced module with PyTorch's own outputs (`FP32_TOLERANCE`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from kiln.compiler.pipeline import format_pipeline, parse_pipeline
from kiln.compiler.pipelines import all_pipelines
from kiln.errors import KilnError
from kiln.ir.graph import Module, Value
from kiln.testing.differential import check, first_line
from kiln.testing.graphgen import random_inputs, random_module
from kiln.testing.xtarget import (
    FP32_TOLERANCE,
    Case,
    Result,
    failure,
    judge,
    reference_outputs,
)

INPUT_STREAM = 7_000_003
"""Inputs and calibration come from other random streams than the graph's."""
HLS_OPS: tuple[str, ...] = (
    "linear", "conv1d", "conv2d", "max_pool1d", "max_pool2d", "avg_pool1d", "avg_pool2d",
    "adaptive_avg_pool1d", "adaptive_avg_pool2d", "relu", "relu6", "clamp", "add", "sub",
    "maximum", "minimum", "reshape", "flatten", "batch_norm", "motif_conv_bn_act",
    "motif_residual", "motif_conv_flatten_linear")
"""Generators whose ops the HLS lowering implements (a few motifs reach for others)."""
NON_FLOAT = ("cast", "motif_integer")
"""Generators that make integer or f64 tensors, which only the interpreter computes: drawn
for one graph in `ALL_OPS_EVERY` (where every target should refuse them cleanly)."""
ALL_OPS_EVERY = 8
HLS_TRIES = 6
MAX_OPS = 8


def origin_of(seed: int) -> str:
    """Half the seeds are general graphs, three in ten HLS graphs, two in ten PyTorch."""
    return ("graph", "graph", "graph", "graph", "graph", "hls", "hls", "hls", "torch",
            "torch")[seed % 10]


def make_case(seed: int, origin: str | None = None) -> Case:
    """The case for `seed` (its origin from `origin_of` unless given)."""
    origin = origin or origin_of(seed)
    if origin == "torch":
        from kiln.testing.torchgen import torch_case

        return torch_case(seed)
    if origin == "hls":
        return hls_case(seed)
    from kiln.testing.generators import GENERATORS

    names = sorted(GENERATORS) if seed % ALL_OPS_EVERY == ALL_OPS_EVERY - 1 else \
        sorted(set(GENERATORS) - set(NON_FLOAT))
    module = random_module(seed, max_ops=MAX_OPS, ops=names, name=f"g{seed}")
    return case_for(module, seed, origin)


def hls_case(seed: int) -> Case:
    """A graph of HLS layers that the fpga lowering accepts: up to `HLS_TRIES` graphs are
    drawn (the generator does not know the templates' rules: no padded pools, no broadcast
    operands, batch 1 throughout), the first accepted one is kept, else the last."""
    from kiln.testing.xtarget_hls import hls_accepts

    case = None
    for k in range(HLS_TRIES):
        module = random_module(seed * HLS_TRIES + k, max_ops=MAX_OPS, ops=HLS_OPS, batch=1,
                               name=f"h{seed}")
        case = case_for(module, seed, "hls")
        if hls_accepts(case):
            break
    assert case is not None
    return case


def case_for(module: Module, seed: int, origin: str,
             torch_outputs: tuple[np.ndarray, ...] | None = None) -> Case:
    """A case on `module` with the inputs and calibration batches of `seed`."""
    inputs = tuple(random_inputs(module, seed + INPUT_STREAM))
    calibration = (inputs, *(tuple(random_inputs(module, seed + k * INPUT_STREAM))
                             for k in (2, 3)))
    return Case(seed, module, inputs, calibration, origin, torch_outputs)


def named_pipelines() -> list[str]:
    """One pipeline string per distinct expansion of the named pipelines."""
    seen: dict[str, str] = {}
    for name in all_pipelines():
        seen.setdefault(format_pipeline(parse_pipeline(name)), name)
    return sorted(seen.values())


class PipelineRunner:
    """Every named pipeline against the interpreter (first failing pipeline reported)."""

    name = "pipelines"

    def __init__(self) -> None:
        self.pipelines = named_pipelines()

    def run_batch(self, cases: Sequence[Case]) -> list[Result | None]:
        return [self.run_one(case) for case in cases]

    def run_one(self, case: Case) -> Result:
        try:
            want = reference_outputs(case)
        except Exception as exc:  # a generated model the interpreter rejects
            return Result(self.name, "crash", "interpreter: " + first_line(exc))
        for pipeline in self.pipelines:
            outcome = check(case.module, pipeline, case.inputs, want,
                            calibration=list(case.calibration))
            if outcome.status != "ok":
                status = "crash" if outcome.status == "refused" else outcome.status
                return Result(self.name, status, f"{pipeline}: {outcome.detail}")
        return Result(self.name, "ok")


class TorchRunner:
    """The interpreter on a traced PyTorch model against PyTorch (torch cases only)."""

    name = "torch"

    def run_batch(self, cases: Sequence[Case]) -> list[Result | None]:
        return [None if case.torch_outputs is None else self.run_one(case) for case in cases]

    def run_one(self, case: Case) -> Result:
        assert case.torch_outputs is not None
        try:
            got = reference_outputs(case)
        except KilnError as exc:
            return failure(self.name, exc)
        except Exception as exc:  # the interpreter crashing on a traced model
            return failure(self.name, exc)
        return judge(self.name, list(case.torch_outputs), got, FP32_TOLERANCE)


def amplification(module: Module, inputs: Sequence[np.ndarray]) -> float:
    """How much the model can amplify float32 rounding noise, output relative to output peak:
    `conditioning.condition` of each op times the largest of its operands', the largest over
    the outputs. The kiln graph generator keeps every op under `CONDITION_LIMIT`; a traced
    PyTorch model may chain cancellations (a layer norm of a nearly constant row feeding a
    cancelling linear layer), where a few ulps of honest rounding exceed `FP32_TOLERANCE`."""
    from kiln.ir.interpret import interpret_all
    from kiln.testing.conditioning import condition

    with np.errstate(all="ignore"):
        values = interpret_all(module, *inputs)
    factor: dict[Value, float] = {}
    for op in module.main.ops:
        if not op.results or any(v not in values for v in op.results):
            continue
        try:
            own = condition(op.kind, [values[v] for v in op.operands], values[op.results[0]])
        except Exception:  # an op the rules cannot evaluate: count it as not cancelling
            own = 1.0
        upstream = max((factor.get(v, 1.0) for v in op.operands), default=1.0)
        for value in op.results:
            factor[value] = max(own, 1.0) * upstream
    return max((factor.get(v, 1.0) for v in module.main.outputs), default=1.0)

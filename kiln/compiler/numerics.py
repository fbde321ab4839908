"""`check_numerics`: interpret the model after every pass and stop at the first pass that drifts.

Before the first pass the module is interpreted on sample inputs (the caller's, or two seeded
random samples from `kiln.ir.interpret.sample_inputs`); after each pass it runs again and its
outputs are compared with the previous stage's by relative error `max|a-b| / max|b|`. Beyond
`rtol`, the run stops with a `PassError` naming the pass and the first drifting op.

Finding the op relies on values keeping their names across passes (`Value.name`): each value
of the new stage is matched with the previous stage's value of the same name and shape. Walking
the new stage in program order, a matched value is *same* or *drifted*; an unmatched one is
*unknown*, or *tainted* when it reads a drifted or tainted value. The first op with a drifted
result whose operands are all same or unknown is where the error entered (a fused op counts as
one op: its results are matched like any other). Unknown operands of that op are named in the
message, since the error may come from them. With nothing matched, the output is named.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from kiln.compiler.instruments import Instrument, PassFailure, StepInfo
from kiln.errors import Diagnostic, InterpretError, KilnError, PassError, PipelineError
from kiln.ir.graph import Func, Module, Op, Value
from kiln.ir.interpret import interpret, sample_inputs
from kiln.ir.ops.core import Return

NUMERICS_SEEDS = (7, 1234)
"""Seeds of the default sample inputs (fixed, so a reproducer sees the same numbers)."""
DEFAULT_RTOL = 1e-5

Sample = Sequence[Any]


def rel_error(got: np.ndarray, want: np.ndarray) -> float:
    """`max|got - want| / max|want|` in float64; inf on a shape or NaN-pattern mismatch."""
    if got.shape != want.shape:
        return float("inf")
    a, b = np.asarray(got, np.float64), np.asarray(want, np.float64)
    nan_a, nan_b = np.isnan(a), np.isnan(b)
    if not np.array_equal(nan_a, nan_b):
        return float("inf")
    diff = np.where(nan_a, 0.0, np.abs(a - b))
    if diff.size == 0 or not diff.max() > 0:
        return 0.0
    scale = np.where(nan_b, 0.0, np.abs(b)).max()
    return float(diff.max() / max(scale, np.finfo(np.float32).tiny))


@dataclass(frozen=True)
class Stage:
    """One stage's numbers: per sample, its outputs, its values, and those values by name."""

    outputs: list[list[np.ndarray]]
    values: list[dict[Value, np.ndarray]]
    named: list[dict[str, np.ndarray]]


def run_stage(module: Module, samples: Sequence[Sample]) -> Stage:
    """Interpret `module` on every sample, keeping each top-level value."""
    runs = [_interpret_keeping(module, sample) for sample in samples]
    values = [seen for _, seen in runs]
    return Stage([outs for outs, _ in runs], values, [_by_name(v) for v in values])


def _interpret_keeping(module: Module,
                       sample: Sample) -> tuple[list[np.ndarray], dict[Value, np.ndarray]]:
    seen: dict[Value, np.ndarray] = {}
    outputs = interpret(module, *sample,
                        observer=lambda op, outs: seen.update(zip(op.results, outs)))
    return outputs, seen


def _by_name(values: dict[Value, np.ndarray]) -> dict[str, np.ndarray]:
    """Values by name; a name two values share is left out (it would match ambiguously)."""
    named: dict[str, np.ndarray] = {}
    shared: set[str] = set()
    for value, array in values.items():
        if value.name in named:
            shared.add(value.name)
        elif value.name:
            named[value.name] = array
    return {k: v for k, v in named.items() if k not in shared}


@dataclass(frozen=True)
class Drift:
    """Where a stage first departs from the previous one."""

    op: Op | None
    value: Value | None
    error: float
    unknown_operands: tuple[Value, ...] = ()


def locate_drift(func: Func, after: dict[Value, np.ndarray], before: dict[str, np.ndarray],
                 rtol: float) -> Drift | None:
    """The first op (program order) with a drifted result and no drifted or tainted operand."""
    status: dict[Value, str] = {arg: "same" for arg in func.args}
    for op in func.ops:
        if op.isa(Return):
            continue
        bad = any(status.get(v) in ("drift", "tainted") for v in op.operands)
        first: Drift | None = None
        for result in op.results:
            error = _classify(result, after, before, rtol, bad, status)
            if error is not None and first is None:
                first = Drift(op, result, error)
        if first is not None and not bad:
            unknown = tuple(v for v in op.operands
                            if status.get(v) == "unknown" and v.producer is not None)
            return Drift(op, first.value, first.error, unknown)
    return None


def _classify(value: Value, after: dict[Value, np.ndarray], before: dict[str, np.ndarray],
              rtol: float, bad_inputs: bool, status: dict[Value, str]) -> float | None:
    """Record `value`'s status; returns its error when it is matched and drifted."""
    got = after.get(value)
    want = before.get(value.name) if value.name else None
    if got is None or want is None or want.shape != got.shape:
        status[value] = "tainted" if bad_inputs else "unknown"
        return None
    error = rel_error(got, want)
    status[value] = "drift" if error > rtol else "same"
    return error if error > rtol else None


class CheckNumerics(Instrument):
    """Interprets the module after every pass; raises a `PassError` at the first drift."""

    def __init__(self, inputs: Sequence[Any] | None = None, rtol: float = DEFAULT_RTOL) -> None:
        if not rtol >= 0:
            raise PipelineError(f"numerics_rtol must be a non-negative number, got {rtol!r}")
        self.given = inputs
        self.rtol = rtol
        self._samples: list[Sample] = []
        self._stage: Stage | None = None
        self._drifted = False

    def before_pipeline(self, module: Module) -> None:
        self._samples = _samples(self.given, module.main)
        self._drifted = False
        try:
            self._stage = run_stage(module, self._samples)
        except KilnError as exc:
            head = Diagnostic("check_numerics cannot interpret the input module (before any "
                              "pass ran)", hint="load the module with its weights (.npz)")
            raise InterpretError(diagnostics=[head, *exc.diagnostics]) from exc

    def after_pass(self, info: StepInfo, module: Module, changed: bool, seconds: float) -> None:
        try:
            stage = run_stage(module, self._samples)
        except KilnError as exc:
            raise info.error("left IR the reference interpreter cannot run",
                             exc.diagnostics) from exc
        previous, self._stage = self._stage, stage
        assert previous is not None, "before_pipeline runs first"
        error, sample = _worst_output(stage, previous)
        if error > self.rtol:
            self._drifted = True
            raise self._drift_error(info, module.main, stage, previous, error, sample)

    def on_failure(self, failure: PassFailure) -> list[str]:
        if self.given is None or not self._drifted:
            return []
        return ["check_numerics ran on the caller's inputs; kiln-opt --check-numerics uses "
                f"seeded random ones (seeds {', '.join(map(str, NUMERICS_SEEDS))})"]

    def _drift_error(self, info: StepInfo, func: Func, stage: Stage, previous: Stage,
                     error: float, sample: int) -> PassError:
        drift = locate_drift(func, stage.values[sample], previous.named[sample], self.rtol)
        head = (f"changed the model's outputs: max rel error {error:.1e} > {self.rtol:g}; "
                f"{_describe(drift, func, stage, previous, sample)}")
        if drift is None or drift.op is None:
            return info.error(head)
        return info.error(head, [drift.op.diagnostic(_detail(drift, sample))])


def _samples(given: Sequence[Any] | None, func: Func) -> list[Sample]:
    """The caller's samples (one sample of arrays, or a list of samples), or seeded ones."""
    if given is None:
        return [sample_inputs(func, seed) for seed in NUMERICS_SEEDS]
    items = list(given)
    if items and hasattr(items[0], "shape"):
        return [items]
    return [list(sample) for sample in items]


def _worst_output(stage: Stage, previous: Stage) -> tuple[float, int]:
    """The largest output error over samples, and the sample it occurred on."""
    worst, where = 0.0, 0
    for i, (now, then) in enumerate(zip(stage.outputs, previous.outputs)):
        if len(now) != len(then):
            return float("inf"), i
        for got, want in zip(now, then):
            error = rel_error(got, want)
            if error > worst:
                worst, where = error, i
    return worst, where


def _describe(drift: Drift | None, func: Func, stage: Stage, previous: Stage,
              sample: int) -> str:
    if drift is not None and drift.op is not None and drift.value is not None:
        loc = drift.op.loc.describe()
        at = f" at {loc}" if loc else ""
        return (f"first drifting op: '{drift.op.name}' %{drift.value.name}{at}, "
                f"rel error {drift.error:.1e}")
    errors = [rel_error(got, want) for got, want
              in zip(stage.outputs[sample], previous.outputs[sample])]
    index = int(np.argmax(errors)) if errors else 0
    outputs = func.outputs
    name = f" (%{outputs[index].name})" if index < len(outputs) and outputs[index].name else ""
    return (f"no value could be matched by name across the pass; output {index}{name} of "
            f"@{func.name} drifted")


def _detail(drift: Drift, sample: int) -> str:
    assert drift.value is not None
    text = f"result %{drift.value.name} drifted: rel error {drift.error:.1e} on sample {sample}"
    if drift.unknown_operands:
        names = ", ".join(f"%{v.name or '?'}" for v in drift.unknown_operands)
        text += f"; operand(s) {names} did not exist before the pass and may carry the error"
    return text


__all__ = ["DEFAULT_RTOL", "NUMERICS_SEEDS", "CheckNumerics", "Drift", "Stage", "locate_drift",
           "rel_error", "run_stage"]

"""Differential checking of passes: run a pipeline, compare the interpreter before and after.

The contract every fp32 pass keeps: each output within `TOLERANCE` relative error of the
unoptimized module's, measured as max|got - want| / max(max|want|, `TINY`), with NaN in exactly
the same places (and infinities equal). A pass that raises on a valid module, leaves invalid IR
(the pass manager verifies after each pass) or produces IR the interpreter rejects *crashes*;
`check_elided` also runs the pipeline with the weights elided, where only crashes can show.
Passes that change numerics by design (quantization) are checked with `tolerance=None`: the
outputs must keep their number, shapes and dtypes, their values are not compared.
`kiln.testing.shrink` reduces a failing module; `kiln.testing.targets` says what to run.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from kiln.compiler.pass_manager import PassManager
from kiln.errors import KilnError, VerifyError
from kiln.ir.graph import Module
from kiln.ir.interpret import interpret

TOLERANCE = 1e-5
TINY = 1e-30

Status = Literal["ok", "mismatch", "crash", "refused"]
"""`refused`: a pass stopped with a diagnostic of its own (a `KilnError`, such as "needs
calibration data"); the caller decides whether that input deserved it (`Target.judge`)."""


@dataclass(frozen=True)
class Outcome:
    """How one module fared under one pipeline."""

    status: Status
    detail: str = ""
    runs: int = 0
    """Pass invocations that completed."""
    changed: int = 0
    """Of those, how many reported a change."""


def compare(want: Sequence[np.ndarray], got: Sequence[np.ndarray],
            tolerance: float | None = TOLERANCE) -> str | None:
    """None when `got` matches `want` (see the module docstring), else what differs; with
    `tolerance=None` only the number, shapes and dtypes of the outputs are compared."""
    if len(want) != len(got):
        return f"{len(got)} outputs instead of {len(want)}"
    for i, (a, b) in enumerate(zip(want, got)):
        problem = _compare_one(np.asarray(a), np.asarray(b), tolerance)
        if problem is not None:
            return f"output {i}: {problem}"
    return None


def _compare_one(want: np.ndarray, got: np.ndarray, tolerance: float | None) -> str | None:
    if want.shape != got.shape or want.dtype != got.dtype:
        return f"{got.dtype}{list(got.shape)} instead of {want.dtype}{list(want.shape)}"
    if tolerance is None:
        return None
    if want.size == 0 or not np.issubdtype(want.dtype, np.floating):
        return None if np.array_equal(want, got) else "values differ"
    a, b = want.astype(np.float64), got.astype(np.float64)
    if not np.array_equal(np.isnan(a), np.isnan(b)):
        return "NaN in different places"
    finite = np.isfinite(a) & np.isfinite(b)
    if not np.array_equal(a[~finite & ~np.isnan(a)], b[~finite & ~np.isnan(b)]):
        return "infinities differ"
    if not finite.any():
        return None
    scale = max(float(np.max(np.abs(a[finite]))), TINY)
    error = float(np.max(np.abs(a[finite] - b[finite]))) / scale
    return f"relative error {error:.3g} > {tolerance:g}" if error > tolerance else None


def run_quietly(module: Module, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
    """The interpreter's outputs, without NumPy's warnings about NaN and infinities."""
    with np.errstate(all="ignore"):
        return interpret(module, *inputs)


def check(module: Module, pipeline: str, inputs: Sequence[np.ndarray],
          want: Sequence[np.ndarray] | None = None, *, tolerance: float | None = TOLERANCE,
          calibration: Any = None) -> Outcome:
    """Run `pipeline` on (a copy of) `module` and compare interpreter outputs on `inputs`;
    `calibration` is handed to passes that calibrate (as `calibration_data`)."""
    if want is None:
        want = run_quietly(module, inputs)
    try:
        result = PassManager(pipeline, reproducer=False, calibration_data=calibration,
                             sample_inputs=list(inputs)).run(module)
    except Exception as exc:  # any other exception from a pass on valid input is a crash
        return failed(exc)
    runs, changed = len(result.records), sum(r.changed for r in result.records)
    try:
        got = run_quietly(result.module, inputs)
    except Exception as exc:  # so is a result the interpreter cannot run
        return Outcome("crash", "interpreting the result: " + first_line(exc), runs, changed)
    problem = compare(want, got, tolerance)
    return Outcome("ok" if problem is None else "mismatch", problem or "", runs, changed)


def check_elided(module: Module, pipeline: str, *, calibration: Any = None) -> Outcome:
    """Run `pipeline` on `module` with its weights elided (a `.kir` read without its `.npz`):
    nothing can be interpreted, so only a crash counts (a refusal is fair here: calibrating
    needs the weights)."""
    copy = module.clone()
    copy.weights = {}
    try:
        result = PassManager(pipeline, reproducer=False, calibration_data=calibration).run(copy)
    except Exception as exc:  # as in `check`
        return failed(exc, "weights elided: ")
    return Outcome("ok", "", len(result.records), sum(r.changed for r in result.records))


def failed(exc: Exception, prefix: str = "") -> Outcome:
    """A refusal when a pass raised a `KilnError` of its own; a crash when it raised anything
    else or left IR the verifier rejects."""
    cause = exc.__cause__
    refused = isinstance(cause, KilnError) and not isinstance(cause, VerifyError)
    return Outcome("refused" if refused else "crash", prefix + first_line(exc))


def first_line(exc: BaseException) -> str:
    """The exception's type and the first two lines of its message."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {' | '.join(text[:2])}" if text else type(exc).__name__

"""Differential fuzzing across targets: one random model, every pipeline and every target.

A `Case` is a float module with its inputs and calibration batches (and, for a model built as
a PyTorch module, PyTorch's outputs). `Runner`s take a whole batch of cases at once, so that a
target whose toolchain is slow builds one C library or one C-simulation program per batch and
bisects only when that build fails (`xtarget_cpu`, `xtarget_hls`, `xtarget_gpu`). Each case
gets one `Result` per runner:

- `ok`: within the runner's tolerance (`FP32_TOLERANCE` relative for float targets, 0 for the
  integer paths: cpu int8 and fixed point must equal `kiln.interpret` on their own IR);
- `refused`: the target's up-front support check rejected an op with a `KilnError` (an op it
  declares it cannot compile) — counted, not a bug;
- `mismatch`: numbers beyond the tolerance, or outputs of another number, shape or dtype;
- `crash`: any other exception, a `KilnError` raised after the support check passed (an op the
  target claims to support was refused), a compiler error on generated code, a signal.

`kiln.testing.xtarget_shrink` turns a failing case into a small `.kir` reproducer.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal, Protocol

import numpy as np

from kiln.errors import KilnError
from kiln.ir.graph import Module
from kiln.testing.differential import compare, first_line, run_quietly

Status = Literal["ok", "refused", "mismatch", "crash"]
STATUSES: tuple[Status, ...] = ("ok", "refused", "mismatch", "crash")
FP32_TOLERANCE = 1e-4
"""Relative error allowed to float targets (max |got - want| / max |want|, per output)."""


@dataclass(frozen=True)
class Case:
    """One random model: float IR, inputs, calibration batches, and where it came from."""

    seed: int
    module: Module
    inputs: tuple[np.ndarray, ...]
    calibration: tuple[tuple[np.ndarray, ...], ...]
    origin: str = "graph"
    """`graph` (kiln IR generator), `hls` (generator restricted to HLS layers), `torch`."""
    torch_outputs: tuple[np.ndarray, ...] | None = None

    @property
    def name(self) -> str:
        return f"{self.origin}{self.seed}"

    def with_module(self, module: Module) -> Case:
        """The same inputs and seed on another module (shrinking keeps the inputs)."""
        return replace(self, module=module, torch_outputs=None)


@dataclass(frozen=True)
class Result:
    """How one case fared on one runner."""

    runner: str
    status: Status
    detail: str = ""
    seconds: float = 0.0


class Runner(Protocol):
    """A target (or the pipelines): runs a batch of cases, one `Result` each, in order (None
    where the runner does not apply to a case: PyTorch's outputs of a kiln-built graph)."""

    name: str

    def run_batch(self, cases: Sequence[Case]) -> list[Result | None]: ...


class Refused(Exception):
    """Raised inside a runner when the target's support check refused the model."""


def judge(runner: str, want: Sequence[np.ndarray], got: Sequence[np.ndarray],
          tolerance: float) -> Result:
    """`ok` or `mismatch`: float outputs within `tolerance` (0: bit for bit), others equal."""
    if tolerance == 0.0:
        problem = _exact(want, got)
    else:
        problem = compare(want, [np.asarray(g) for g in got], tolerance)
    return Result(runner, "ok" if problem is None else "mismatch", problem or "")


def _exact(want: Sequence[np.ndarray], got: Sequence[np.ndarray]) -> str | None:
    problem = compare(want, [np.asarray(g) for g in got], None)
    if problem is not None:
        return problem
    for i, (a, b) in enumerate(zip(want, got)):
        a, b = np.asarray(a), np.asarray(b)
        if not np.array_equal(a, b, equal_nan=np.issubdtype(a.dtype, np.floating)):
            diff = int(np.sum(a != b))
            return f"output {i}: {diff} of {a.size} values differ (bit-exact path)"
    return None


def failure(runner: str, exc: BaseException, *, refusable: bool = False) -> Result:
    """A `Refused` (or, where `refusable`, a `KilnError`) is a refusal; anything else a
    crash, with the exception's first lines as the detail."""
    if isinstance(exc, Refused):
        return Result(runner, "refused", str(exc))
    if refusable and isinstance(exc, KilnError):
        return Result(runner, "refused", first_line(exc))
    return Result(runner, "crash", first_line(exc))


def reference_outputs(case: Case) -> list[np.ndarray]:
    """The interpreter's outputs of the case's float module."""
    return run_quietly(case.module, case.inputs)


def timed(runner: str, fn: Callable[[], Result]) -> Result:
    start = time.perf_counter()
    result = fn()
    return replace(result, runner=runner, seconds=time.perf_counter() - start)


@dataclass
class Tally:
    """Counts per runner and status, plus the failing (case, result) pairs."""

    counts: dict[str, dict[str, int]] = field(default_factory=dict)
    failures: list[tuple[Case, Result]] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    cpu: dict[str, float] = field(default_factory=dict)
    exact: dict[str, int] = field(default_factory=dict)
    """Runner → ok results compared bit for bit (int8: integer-only models)."""
    cases: int = 0
    ops: int = 0
    refusals: dict[str, dict[str, int]] = field(default_factory=dict)

    def add(self, case: Case, results: Iterable[Result | None]) -> None:
        for r in results:
            if r is None:
                continue
            row = self.counts.setdefault(r.runner, dict.fromkeys(STATUSES, 0))
            row[r.status] += 1
            if r.status == "ok" and r.detail == "bit-exact":
                self.exact[r.runner] = self.exact.get(r.runner, 0) + 1
            self.seconds[r.runner] = self.seconds.get(r.runner, 0.0) + r.seconds
            if r.status in ("mismatch", "crash"):
                self.failures.append((case, r))
            elif r.status == "refused":
                why = self.refusals.setdefault(r.runner, {})
                key = r.detail[:90]
                why[key] = why.get(key, 0) + 1

    def table(self, elapsed: float) -> str:
        """The summary: one row per runner (tried, ok, refused, mismatch, crash, models/s)."""
        head = f"{'target':<12}{'tried':>8}{'ok':>8}{'refused':>9}{'mismatch':>10}" \
               f"{'crash':>7}{'models/s':>10}{'per cpu-s':>11}"
        lines = [f"{self.cases} models ({self.ops} ops) in {elapsed:.1f} s", head,
                 "-" * len(head)]
        for name, row in self.counts.items():
            tried = sum(row.values())
            rate = tried / self.seconds[name] if self.seconds.get(name) else 0.0
            per_cpu = tried / self.cpu[name] if self.cpu.get(name) else 0.0
            lines.append(f"{name:<12}{tried:>8}{row['ok']:>8}{row['refused']:>9}"
                         f"{row['mismatch']:>10}{row['crash']:>7}{rate:>10.1f}{per_cpu:>11.1f}")
        lines += [f"{name}: {n} of its ok results compared bit for bit"
                  for name, n in self.exact.items()]
        return "\n".join(lines)


def run_cases(cases: Sequence[Case], runners: Sequence[Runner],
              tally: Tally | None = None) -> Tally:
    """Every case through every runner (each runner sees the whole batch); results tallied."""
    tally = tally or Tally()
    per_runner: list[list[Result | None]] = []
    for runner in runners:
        start, cpu = time.perf_counter(), cpu_seconds()
        try:
            results = runner.run_batch(cases)
        except Exception as exc:  # a runner that fails as a whole: every case crashed
            results = [failure(runner.name, exc) for _ in cases]
        tally.cpu[runner.name] = tally.cpu.get(runner.name, 0.0) + cpu_seconds() - cpu
        share = (time.perf_counter() - start) / max(sum(r is not None for r in results), 1)
        per_runner.append([None if r is None else replace(r, seconds=share) for r in results])
    for i, case in enumerate(cases):
        tally.cases += 1
        tally.ops += count_ops(case.module)
        tally.add(case, [results[i] for results in per_runner])
    return tally


def cpu_seconds() -> float:
    """CPU time of this process and of the children it waited for (compilers, C-simulations,
    forked runs): on a shared machine, models per CPU-second is the comparable rate."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def count_ops(module: Module) -> int:
    """Ops that compute something (weights, constants and the return not counted)."""
    from kiln.testing.shrink import size

    return size(module)


"""The pass manager: runs a pipeline on a copy of a module, verifying after every pass.

`run_passes(module, "canonicalize,cse,dce")` clones the module (the argument is never touched),
runs each pass with a fresh `PassContext`, verifies the IR after each one, and wraps any failure
in a `PassError` that names the pass and the pipeline so far (`after canonicalize,cse: pass 'dce'
failed`) while keeping the original diagnostics.

Everything else a run can do is an instrument (`kiln.compiler.instruments`), built once from the
options: print the IR after passes, dump every stage into a folder, time the passes, check
numerics after every pass, and write a reproducer when a pass fails (on by default). Text goes
to the `output` stream the caller gives (default: standard error, looked up when written); the
library prints nothing else.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn, TextIO

from kiln.compiler.instruments import (
    DumpDir,
    Instrument,
    PassFailure,
    PassRecord,
    PrintIR,
    StepInfo,
    TimePasses,
    count_ops,
    print_selection,
)
from kiln.compiler.numerics import DEFAULT_RTOL, CheckNumerics
from kiln.compiler.pipeline import PassStep, parse_pipeline
from kiln.compiler.reproducer import Reproducer
from kiln.errors import Diagnostic, KilnError, PassError, PipelineError, VerifyError
from kiln.ir.graph import Module
from kiln.ir.verifier import verify as verify_module
from kiln.passes.registry import PassContext


@dataclass(frozen=True)
class RunOptions:
    """Keyword options of `run_passes` / `PassManager` (unknown ones are an error)."""

    verify: bool = True
    """Verify the input and the IR after every pass."""
    print_ir_after: Sequence[str] | str | None = None
    """`"all"`, or pass names (a list or a comma-separated string) to print the IR after."""
    print_ir_after_change: bool = False
    """Print only after passes that changed the IR (alone: after every pass that changed it)."""
    output: TextIO | None = None
    """Where IR printouts and the timing table go; None means `sys.stderr`."""
    dump_dir: str | Path | None = None
    """Write `000_input.kir`, then `NNN_<pass>.kir` and `NNN_<pass>.diff` per pass, here."""
    time_passes: bool = False
    """Write the pass timing table to `output` after the run (records hold the numbers)."""
    check_numerics: bool = False
    """Interpret after every pass and stop at the first pass whose outputs drift."""
    numerics_inputs: Any = None
    """Samples for `check_numerics` (one sample of arrays, or a list); None: seeded random."""
    numerics_rtol: float = DEFAULT_RTOL
    """Largest relative error (`max|a-b|/max|b|`) one pass may introduce."""
    reproducer: bool = True
    """On a pass failure, write a reproducer folder and name it in the error."""
    reproducer_dir: str | Path | None = None
    """Where the reproducer goes; None: a fresh folder under `<tempdir>/kiln-reproducers/`."""
    instruments: Sequence[Instrument] = ()
    """The caller's own instruments, called after the built-in ones."""
    calibration_data: Any = None
    sample_inputs: Any = None

    @staticmethod
    def of(options: dict[str, Any]) -> RunOptions:
        valid = [f.name for f in dataclasses.fields(RunOptions)]
        unknown = sorted(set(options) - set(valid))
        if unknown:
            raise PipelineError(f"unknown pass-manager option(s): {', '.join(unknown)}",
                                hint=f"valid options: {', '.join(valid)}")
        return RunOptions(**options)

    def rerun_flags(self) -> tuple[str, ...]:
        """The `kiln-opt` flags that repeat this run's checks (for reproducers)."""
        flags = [] if self.verify else ["--no-verify"]
        if self.check_numerics:
            flags.append("--check-numerics")
            if self.numerics_rtol != DEFAULT_RTOL:
                flags += ["--numerics-rtol", repr(self.numerics_rtol)]
        return tuple(flags)


def build_instruments(options: RunOptions) -> list[Instrument]:
    """The instruments `options` ask for, in calling order: the text ones first (so a
    drifting stage is printed and dumped before check-numerics stops the run), the
    caller's, and the reproducer last."""
    chosen: list[Instrument] = []
    selection = print_selection(options.print_ir_after, options.print_ir_after_change)
    if selection is not None:
        chosen.append(PrintIR(selection, only_changed=options.print_ir_after_change,
                              output=options.output))
    if options.dump_dir is not None:
        chosen.append(DumpDir(options.dump_dir))
    if options.time_passes:
        chosen.append(TimePasses(options.output))
    if options.check_numerics:
        chosen.append(CheckNumerics(options.numerics_inputs, options.numerics_rtol))
    chosen.extend(options.instruments)
    if options.reproducer:
        chosen.append(Reproducer(options.reproducer_dir))
    return chosen


@dataclass
class PipelineResult:
    """The transformed module and one record per pass run."""

    module: Module
    records: list[PassRecord]


class PassManager:
    """A parsed pipeline plus run options and instruments; `run` may be called on many modules."""

    def __init__(self, pipeline: str, **options: Any) -> None:
        self.pipeline = pipeline
        self.steps: list[PassStep] = parse_pipeline(pipeline)
        self.options = RunOptions.of(options)
        self.instruments = build_instruments(self.options)

    def run(self, module: Module) -> PipelineResult:
        """Run every pass on a clone of `module`; the argument is left untouched."""
        if self.options.verify:
            _verify_input(module)
        work = module.clone()
        for instrument in self.instruments:
            instrument.before_pipeline(work)
        records: list[PassRecord] = []
        for index, step in enumerate(self.steps, 1):
            info = StepInfo(index, step, tuple(r.step for r in records))
            records.append(self._run_step(work, info))
        for instrument in self.instruments:
            instrument.after_pipeline(work, records)
        return PipelineResult(work, records)

    def _run_step(self, module: Module, info: StepInfo) -> PassRecord:
        for instrument in self.instruments:
            instrument.before_pass(info, module)
        ops_before = count_ops(module)
        try:
            changed, seconds, statistics = self._execute(module, info)
            for instrument in self.instruments:
                instrument.after_pass(info, module, changed, seconds)
        except PassError as exc:
            self._fail(info, exc)
        return PassRecord(str(info.step), changed, seconds, statistics,
                          ops_before=ops_before, ops_after=count_ops(module))

    def _execute(self, module: Module, info: StepInfo) -> tuple[bool, float, dict[str, int]]:
        """Run one pass and verify its output; every failure becomes a `PassError`."""
        step = info.step
        ctx = PassContext(step.name, info.done, calibration_data=self.options.calibration_data,
                          sample_inputs=self.options.sample_inputs)
        start = time.perf_counter()
        try:
            changed = step.info.fn(module, ctx, **step.options)
        except KilnError as exc:
            raise info.error("failed", exc.diagnostics) from exc
        except Exception as exc:  # a bug in the pass: still name the pass and the pipeline
            raise info.error(f"failed: {type(exc).__name__}: {exc}") from exc
        seconds = time.perf_counter() - start
        if not isinstance(changed, bool):
            raise info.error(f"returned {changed!r} instead of a bool")
        if self.options.verify:
            try:
                verify_module(module)
            except VerifyError as exc:
                raise info.error("left invalid IR", exc.diagnostics) from exc
        ctx.logger.debug("%s: changed=%s in %.3fs %s", step, changed, seconds, ctx.statistics)
        return changed, seconds, dict(ctx.statistics)

    def _fail(self, info: StepInfo, error: PassError) -> NoReturn:
        """Tell every instrument, add their notes to the error's hint, and re-raise it."""
        failure = PassFailure(info, tuple(self.steps), self.pipeline, error,
                              self.options.rerun_flags())
        notes = [note for instrument in self.instruments
                 for note in instrument.on_failure(failure)]
        if notes and error.diagnostics:
            head = error.diagnostics[0]
            hint = "; ".join([head.hint, *notes] if head.hint else notes)
            error.diagnostics[0] = dataclasses.replace(head, hint=hint)
            error.args = (error.format(),)
        raise error


def _verify_input(module: Module) -> None:
    try:
        verify_module(module)
    except VerifyError as exc:
        raise VerifyError(diagnostics=[Diagnostic("the input to the pipeline is invalid "
                                                  "(before any pass ran)"),
                                       *exc.diagnostics]) from exc


def run_passes(module: Module, pipeline: str, **options: Any) -> Module:
    """Run `pipeline` on a copy of `module` and return the copy (see `RunOptions`)."""
    return PassManager(pipeline, **options).run(module).module


__all__ = ["PassManager", "PassRecord", "PipelineResult", "RunOptions", "build_instruments",
           "run_passes"]

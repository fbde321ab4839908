"""The pass manager: runs a pipeline on a copy of a module, verifying after every pass.

`run_passes(module, "canonicalize,cse,dce")` clones the module (the argument is never touched),
runs each pass with a fresh `PassContext`, verifies the IR after each one, and wraps any failure
in a `PassError` that names the pass and the pipeline so far (`after canonicalize,cse: pass 'dce'
failed`) while keeping the original diagnostics. IR dumps (`print_ir_after`) are written to the
`output` stream the caller gives (default: standard error, read at call time); the library
prints nothing else.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO

from kiln.compiler.pipeline import PassStep, parse_pipeline
from kiln.errors import Diagnostic, KilnError, PassError, PipelineError, VerifyError
from kiln.ir.graph import Module
from kiln.ir.verifier import verify as verify_module
from kiln.passes.registry import PassContext, all_passes


@dataclass(frozen=True)
class RunOptions:
    """Keyword options of `run_passes` / `PassManager` (unknown ones are an error)."""

    verify: bool = True
    """Verify the input and the IR after every pass."""
    print_ir_after: Sequence[str] | str | None = None
    """`"all"`, or pass names (a list or a comma-separated string) to dump the IR after."""
    print_ir_after_change: bool = False
    """Dump only after passes that changed the IR (alone: after every pass that changed it)."""
    output: TextIO | None = None
    """Where IR dumps go; None means `sys.stderr`."""
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

    def dump_selection(self) -> frozenset[str] | None:
        """Pass names to dump after (`{"*"}` for all), None for no dumps; checks the names."""
        chosen = self.print_ir_after
        if chosen is None:
            return frozenset({"*"}) if self.print_ir_after_change else None
        names = chosen.split(",") if isinstance(chosen, str) else list(chosen)
        names = [n.strip() for n in names if n.strip()]
        if names == ["all"]:
            return frozenset({"*"})
        known = all_passes()
        unknown = [n for n in names if n not in known]
        if unknown:
            raise PipelineError(f"print_ir_after names unknown pass(es): {', '.join(unknown)}",
                                hint=f"use 'all' or some of: {', '.join(known)}")
        return frozenset(names)


@dataclass(frozen=True)
class PassRecord:
    """What one pass did: whether it changed the IR, how long it took, its statistics."""

    step: str
    changed: bool
    seconds: float
    statistics: dict[str, int] = field(default_factory=dict)


@dataclass
class PipelineResult:
    """The transformed module and one record per pass run."""

    module: Module
    records: list[PassRecord]


class PassManager:
    """A parsed pipeline plus run options; `run` may be called on many modules."""

    def __init__(self, pipeline: str, **options: Any) -> None:
        self.pipeline = pipeline
        self.steps: list[PassStep] = parse_pipeline(pipeline)
        self.options = RunOptions.of(options)
        self._dump = self.options.dump_selection()

    def run(self, module: Module) -> PipelineResult:
        """Run every pass on a clone of `module`; the argument is left untouched."""
        if self.options.verify:
            _verify_input(module)
        work = module.clone()
        records: list[PassRecord] = []
        for step in self.steps:
            records.append(self._run_step(work, step, tuple(r.step for r in records)))
        return PipelineResult(work, records)

    def _run_step(self, module: Module, step: PassStep, done: tuple[str, ...]) -> PassRecord:
        ctx = PassContext(step.name, done, calibration_data=self.options.calibration_data,
                          sample_inputs=self.options.sample_inputs)
        start = time.perf_counter()
        try:
            changed = step.info.fn(module, ctx, **step.options)
        except KilnError as exc:
            raise _pass_error(done, step, "failed", exc.diagnostics) from exc
        except Exception as exc:  # a bug in the pass: still name the pass and the pipeline
            raise _pass_error(done, step, f"failed: {type(exc).__name__}: {exc}", []) from exc
        seconds = time.perf_counter() - start
        if not isinstance(changed, bool):
            raise _pass_error(done, step, f"returned {changed!r} instead of a bool", [])
        if self.options.verify:
            try:
                verify_module(module)
            except VerifyError as exc:
                raise _pass_error(done, step, "left invalid IR", exc.diagnostics) from exc
        ctx.logger.debug("%s: changed=%s in %.3fs %s", step, changed, seconds, ctx.statistics)
        self._maybe_dump(module, step, changed)
        return PassRecord(str(step), changed, seconds, dict(ctx.statistics))

    def _maybe_dump(self, module: Module, step: PassStep, changed: bool) -> None:
        if self._dump is None or not ({"*", step.name} & self._dump):
            return
        if self.options.print_ir_after_change and not changed:
            return
        stream = self.options.output if self.options.output is not None else sys.stderr
        stream.write(f"// -----// IR Dump After {step} //----- //\n{module.to_text()}\n")


def _verify_input(module: Module) -> None:
    try:
        verify_module(module)
    except VerifyError as exc:
        raise VerifyError(diagnostics=[Diagnostic("the input to the pipeline is invalid "
                                                  "(before any pass ran)"),
                                       *exc.diagnostics]) from exc


def _pass_error(done: tuple[str, ...], step: PassStep, what: str,
                diagnostics: list[Diagnostic]) -> PassError:
    where = f"after {','.join(done)}" if done else "at the start of the pipeline"
    head = Diagnostic(f"{where}: pass '{step}' {what}")
    kept = [d if d.pass_name else dataclasses.replace(d, pass_name=step.name)
            for d in diagnostics]
    return PassError(diagnostics=[head, *kept])


def run_passes(module: Module, pipeline: str, **options: Any) -> Module:
    """Run `pipeline` on a copy of `module` and return the copy (see `RunOptions`)."""
    return PassManager(pipeline, **options).run(module).module

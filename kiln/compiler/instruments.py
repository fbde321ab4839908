"""Pass instruments: small objects the pass manager calls around every pass.

An `Instrument` overrides the hooks it needs; the manager calls every registered instrument, in
order, at each point of a run:

    before_pipeline(module)                    once, on the working copy, before any pass
    before_pass(info, module)                  before each pass
    after_pass(info, module, changed, seconds) after each pass that succeeded and verified
    after_pipeline(module, records)            once, after the last pass
    on_failure(failure) -> notes               when a pass raised, left invalid IR, or an
                                               instrument's `after_pass` raised a `PassError`

`after_pass` may stop the run by raising `info.error(...)` (check-numerics does). The notes
`on_failure` returns are appended to the error's hint (the reproducer says where it wrote).

This module holds the hooks and the plain-text instruments (print the IR, dump it into a folder,
time the passes); numerics checking lives in `kiln.compiler.numerics`, reproducers in
`kiln.compiler.reproducer`. Nothing here prints: output goes to the stream the caller gave, or
`sys.stderr` looked up when written (so a captured stderr is honoured).
"""

from __future__ import annotations

import difflib
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TextIO

from kiln.compiler.pipeline import PassStep
from kiln.errors import Diagnostic, KilnError, PassError, PipelineError
from kiln.ir.graph import Module
from kiln.passes.registry import all_passes

_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")
_DUMP_FILE = re.compile(r"^\d{3}_[A-Za-z0-9_.-]*\.(kir|diff)$")


@dataclass(frozen=True)
class StepInfo:
    """A pass as it runs: its 1-based position, the step, and the steps that ran before it."""

    index: int
    step: PassStep
    done: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        return self.step.name

    def __str__(self) -> str:
        return str(self.step)

    def error(self, what: str, diagnostics: Sequence[Diagnostic] = ()) -> PassError:
        """`after cse,dce: pass 'x' <what>`, then `diagnostics`, each tagged with this pass."""
        where = f"after {','.join(self.done)}" if self.done else "at the start of the pipeline"
        head = Diagnostic(f"{where}: pass '{self.step}' {what}")
        kept = [d if d.pass_name else replace(d, pass_name=self.name) for d in diagnostics]
        return PassError(diagnostics=[head, *kept])


@dataclass(frozen=True)
class PassRecord:
    """What one pass did: whether it changed the IR, its time, op counts and statistics."""

    step: str
    changed: bool
    seconds: float
    statistics: dict[str, int] = field(default_factory=dict)
    ops_before: int = 0
    """Ops in the module before the pass (nested region ops included)."""
    ops_after: int = 0


@dataclass(frozen=True)
class PassFailure:
    """What instruments learn when a pass fails."""

    info: StepInfo
    steps: tuple[PassStep, ...]
    """The whole pipeline, named pipelines expanded."""
    pipeline: str
    """The pipeline as the caller wrote it."""
    error: PassError
    rerun_flags: tuple[str, ...] = ()
    """`kiln-opt` flags that repeat the run's checks (`--check-numerics`, `--no-verify`)."""

    @property
    def remaining(self) -> tuple[PassStep, ...]:
        """The failing pass and every pass after it."""
        return self.steps[self.info.index - 1:]


class Instrument:
    """Hooks around every pass; each does nothing unless overridden."""

    def before_pipeline(self, module: Module) -> None:
        """Called once with the working copy, before the first pass."""

    def before_pass(self, info: StepInfo, module: Module) -> None:
        """Called before each pass."""

    def after_pass(self, info: StepInfo, module: Module, changed: bool, seconds: float) -> None:
        """Called after each pass that ran and verified; may raise `info.error(...)`."""

    def after_pipeline(self, module: Module, records: Sequence[PassRecord]) -> None:
        """Called once after the last pass."""

    def on_failure(self, failure: PassFailure) -> list[str]:
        """Called when a pass fails; returns notes for the error's hint."""
        return []


def resolve_stream(output: TextIO | None) -> TextIO:
    """The caller's stream, or the current `sys.stderr` (looked up now, not at import)."""
    return output if output is not None else sys.stderr


def count_ops(module: Module) -> int:
    """Every op of every function, nested region ops included."""
    return sum(1 for _ in module.walk())


# -- print the IR --------------------------------------------------------------------------------
def print_selection(chosen: Sequence[str] | str | None,
                    only_changed: bool) -> frozenset[str] | None:
    """Pass names to print after (`{"*"}` for all), None for no printing; checks the names.

    `chosen` is `"all"`, a comma-separated string or a list of pass names; with `only_changed`
    alone, the IR is printed after every pass that changed it.
    """
    if chosen is None:
        return frozenset({"*"}) if only_changed else None
    names = chosen.split(",") if isinstance(chosen, str) else list(chosen)
    names = [n.strip() for n in names if n.strip()]
    if "all" in names:
        return frozenset({"*"})
    known = all_passes()
    unknown = [n for n in names if n not in known]
    if unknown:
        raise PipelineError(f"print_ir_after names unknown pass(es): {', '.join(unknown)}",
                            hint=f"use 'all' or some of: {', '.join(known)}")
    return frozenset(names)


class PrintIR(Instrument):
    """Writes the IR after the selected passes (`// -----// IR Dump After dce //----- //`)."""

    def __init__(self, selection: frozenset[str], *, only_changed: bool = False,
                 output: TextIO | None = None) -> None:
        self.selection = selection
        self.only_changed = only_changed
        self.output = output

    def after_pass(self, info: StepInfo, module: Module, changed: bool, seconds: float) -> None:
        if not ({"*", info.name} & self.selection) or (self.only_changed and not changed):
            return
        resolve_stream(self.output).write(
            f"// -----// IR Dump After {info.step} //----- //\n{module.to_text()}\n")


# -- dump into a folder --------------------------------------------------------------------------
def dump_name(index: int, pass_name: str) -> str:
    """`003_fold-constants`: the stem of a stage's dump files (safe on every file system)."""
    return f"{index:03d}_{_UNSAFE.sub('_', pass_name).strip('.') or 'pass'}"


class DumpDir(Instrument):
    """Writes `000_input.kir`, then `NNN_<pass>.kir` and `NNN_<pass>.diff` after each pass.

    The diff is a unified diff against the previous stage (empty when the pass changed nothing).
    Weights are not written (the text references them by name). The folder is created; dump
    files left in it by an earlier run (`NNN_*.kir`, `NNN_*.diff`) are removed first, so the
    folder always shows one run.
    """

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self._previous = ("", "")

    def before_pipeline(self, module: Module) -> None:
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            for stale in self.folder.iterdir():
                if _DUMP_FILE.match(stale.name) and stale.is_file():
                    stale.unlink()
        except OSError as exc:
            raise KilnError(f"cannot prepare the dump folder {self.folder}: {exc}") from None
        self._previous = self._write(dump_name(0, "input"), module.to_text())

    def after_pass(self, info: StepInfo, module: Module, changed: bool, seconds: float) -> None:
        stem, text = dump_name(info.index, info.name), module.to_text()
        before_file, before = self._previous
        diff = difflib.unified_diff(before.splitlines(keepends=True),
                                    text.splitlines(keepends=True),
                                    fromfile=before_file, tofile=f"{stem}.kir")
        self._previous = self._write(stem, text)
        self._write_file(self.folder / f"{stem}.diff", "".join(diff))

    def _write(self, stem: str, text: str) -> tuple[str, str]:
        self._write_file(self.folder / f"{stem}.kir", text)
        return f"{stem}.kir", text

    @staticmethod
    def _write_file(path: Path, text: str) -> None:
        try:
            path.write_text(text, encoding="utf-8")
        except OSError as exc:
            raise KilnError(f"cannot write IR dump {path}: {exc}") from None


# -- time the passes -----------------------------------------------------------------------------
TIMING_COLUMNS = ("#", "pass", "time ms", "ops before", "ops after", "changed")


def format_timing(records: Sequence[PassRecord]) -> str:
    """The pass timing table: one row per pass, then a total; columns aligned.

    Text columns are left-aligned, numbers right-aligned; the total row sums the times and shows
    the op counts before the first pass and after the last one.
    """
    rows = [(str(i), r.step, f"{r.seconds * 1e3:.3f}", str(r.ops_before), str(r.ops_after),
             "yes" if r.changed else "no") for i, r in enumerate(records, 1)]
    total_ms = sum(r.seconds for r in records) * 1e3
    first, last = (records[0].ops_before, records[-1].ops_after) if records else (0, 0)
    rows.append(("", "total", f"{total_ms:.3f}", str(first), str(last), ""))
    widths = [max(len(row[c]) for row in [TIMING_COLUMNS, *rows]) for c in range(6)]
    right = (True, False, True, True, True, False)

    def line(row: Sequence[str]) -> str:
        cells = (cell.rjust(w) if r else cell.ljust(w) for cell, w, r in zip(row, widths, right))
        return "  ".join(cells).rstrip()

    body = [line(TIMING_COLUMNS), line(["-" * w for w in widths]), *map(line, rows)]
    return "// -----// Pass timing //----- //\n" + "\n".join(body) + "\n"


class TimePasses(Instrument):
    """Writes the timing table (`format_timing`) after the pipeline ran."""

    def __init__(self, output: TextIO | None = None) -> None:
        self.output = output

    def after_pipeline(self, module: Module, records: Sequence[PassRecord]) -> None:
        resolve_stream(self.output).write(format_timing(records))


__all__ = ["DumpDir", "Instrument", "PassFailure", "PassRecord", "PrintIR", "StepInfo",
           "TimePasses", "count_ops", "dump_name", "format_timing", "print_selection",
           "resolve_stream"]

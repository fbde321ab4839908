"""Reproducers: when a pass fails, write what `kiln-opt` needs to make it fail again.

The folder holds

    input.kir, input.npz   the IR the failing pass received, and its weights
    pipeline.txt           the failing pass and the rest of the pipeline, the full pipeline, and
                           the exact `kiln-opt` command that reproduces the failure
    error.txt              the error as it was reported

Passes registered outside kiln (a user's or a test's) are named in the command with
`--load-passes FILE`, the Python file that registers them, so a fresh `kiln-opt` knows them.
The default folder is a fresh one under `<tempdir>/kiln-reproducers/` (`tempfile.mkdtemp`).
"""

from __future__ import annotations

import shlex
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from kiln.compiler.instruments import Instrument, PassFailure, StepInfo
from kiln.compiler.pipeline import PassStep, format_pipeline
from kiln.errors import KilnError
from kiln.ir.graph import Module

INPUT_FILE = "input.kir"
PIPELINE_FILE = "pipeline.txt"
ERROR_FILE = "error.txt"


class Reproducer(Instrument):
    """Keeps a copy of the IR before each pass; on failure, writes the reproducer folder."""

    def __init__(self, folder: str | Path | None = None) -> None:
        self.folder = Path(folder) if folder is not None else None
        self._before: Module | None = None

    def before_pipeline(self, module: Module) -> None:
        self._before = None

    def before_pass(self, info: StepInfo, module: Module) -> None:
        self._before = module.clone()  # weight arrays are shared: only the graph is copied

    def on_failure(self, failure: PassFailure) -> list[str]:
        if self._before is None:
            return []
        try:
            folder = self._folder(failure.info.name)
            command = write_reproducer(folder, self._before, failure)
        except (OSError, KilnError) as exc:
            return [f"could not write a reproducer: {exc}"]
        return [f"reproducer written to {folder}; rerun with: {command}"]

    def _folder(self, pass_name: str) -> Path:
        if self.folder is not None:
            self.folder.mkdir(parents=True, exist_ok=True)
            return self.folder
        parent = Path(tempfile.gettempdir()) / "kiln-reproducers"
        parent.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=f"{pass_name}-", dir=parent))


def write_reproducer(folder: Path, module: Module, failure: PassFailure) -> str:
    """Write the reproducer files into `folder`; returns the `kiln-opt` command."""
    module.save(folder / INPUT_FILE)
    remaining = format_pipeline(list(failure.remaining))
    command = rerun_command(folder / INPUT_FILE, remaining, failure.rerun_flags,
                            plugin_files(failure.remaining))
    lines = [f"# kiln reproducer: pass '{failure.info.step}' failed",
             f"failing pass: {failure.info.step}",
             f"remaining pipeline: {remaining}",
             f"full pipeline: {format_pipeline(list(failure.steps))}",
             f"as given: {failure.pipeline}",
             f"command: {command}"]
    (folder / PIPELINE_FILE).write_text("\n".join(lines) + "\n", encoding="utf-8")
    (folder / ERROR_FILE).write_text(failure.error.format() + "\n", encoding="utf-8")
    return command


def rerun_command(path: Path, pipeline: str, flags: Sequence[str],
                  plugins: Sequence[str] = ()) -> str:
    """`kiln-opt PATH -p PIPELINE FLAGS...`, quoted for a POSIX shell."""
    loads = [arg for plugin in plugins for arg in ("--load-passes", plugin)]
    return shlex.join(["kiln-opt", str(path), "-p", pipeline, *flags, *loads])


def plugin_files(steps: Sequence[PassStep]) -> list[str]:
    """Where passes that are not kiln's own come from: their module's file (else its name)."""
    found: list[str] = []
    for step in steps:
        name = step.info.fn.__module__
        if name == "kiln" or name.startswith("kiln."):
            continue
        module = sys.modules.get(name)
        where = str(getattr(module, "__file__", None) or name)
        if where not in found:
            found.append(where)
    return found


__all__ = ["ERROR_FILE", "INPUT_FILE", "PIPELINE_FILE", "Reproducer", "plugin_files",
           "rerun_command", "write_reproducer"]

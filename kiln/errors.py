"""Typed errors for everything a user can trigger.

A `KilnError` carries one or more `Diagnostic`s. Each names the op, the model's source location
(file:line and module path, from the fx node's stack trace or the ONNX node name), the pass that
was running, and a hint saying what to do. The message is formatted once, so every entry point
(Python API, `kiln-opt`, the CLI) shows the same text.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from kiln.ir.location import Location


@dataclass(frozen=True)
class Diagnostic:
    """One problem: what went wrong, where in the model, and what to do about it."""

    message: str
    op_name: str | None = None
    loc: Location | None = None
    pass_name: str | None = None
    hint: str | None = None
    excerpt: str | None = None

    def format(self) -> str:
        where = self.loc.describe() if self.loc is not None else ""
        head = f"{where}: error: " if where else "error: "
        if self.op_name:
            head += f"'{self.op_name}' op "
        lines = [head + self.message]
        if self.pass_name:
            lines.append(f"  in pass '{self.pass_name}'")
        if self.hint:
            lines.append(f"  hint: {self.hint}")
        if self.excerpt:
            lines.extend("  " + line for line in self.excerpt.splitlines())
        return "\n".join(lines)


class KilnError(Exception):
    """Base class of every error kiln raises for bad input or a failed compile step."""

    def __init__(self, message: str | None = None, *, diagnostics: list[Diagnostic] | None = None,
                 hint: str | None = None) -> None:
        self.diagnostics: list[Diagnostic] = list(diagnostics or [])
        if message is not None and not self.diagnostics:
            self.diagnostics.append(Diagnostic(message, hint=hint))
        super().__init__(self.format())

    def format(self) -> str:
        return "\n".join(d.format() for d in self.diagnostics)

    def __str__(self) -> str:
        return self.format()


class ParseError(KilnError):
    """Malformed IR text; the message holds `line:col`, the line and a caret."""


class VerifyError(KilnError):
    """The IR breaks an invariant: use before def, a type that disagrees with inference, ..."""


class UnsupportedOpError(KilnError):
    """A frontend met ops kiln does not know; every such op is listed at once."""


class ImportError_(KilnError):
    """A model file could not be read (truncated, not ONNX, inconsistent graph)."""


class PassError(KilnError):
    """A pass failed or left invalid IR; names the pass and the pipeline so far."""


class PipelineError(KilnError):
    """A pipeline string names an unknown pass or option, or an option has a bad value."""


class InterpretError(KilnError):
    """The reference interpreter could not run a module (bad inputs, elided weights)."""


class KilnWarning(UserWarning):
    """Suspicious but usable input (NaN/Inf in weights, an opset newer than kiln knows).

    Issued with `warnings.warn(..., KilnWarning)`, so callers can silence it or turn it into an
    error (`warnings.simplefilter("error", KilnWarning)`); the message names the tensor and where
    it came from.
    """


@dataclass
class DiagnosticList:
    """Collects diagnostics so a frontend can report every problem at once."""

    items: list[Diagnostic] = field(default_factory=list)

    def add(self, diagnostic: Diagnostic) -> None:
        self.items.append(diagnostic)

    def raise_if_any(self, cls: type[KilnError], summary: str) -> None:
        if self.items:
            raise cls(diagnostics=[Diagnostic(summary), *self.items])

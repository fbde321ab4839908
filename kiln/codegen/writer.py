"""An indent-aware code writer shared by every code generator (C, Triton, HLS C++).

Generated code is built from logic, not string templates: `with w.block("for (...)"):` opens a
brace block and indents what is written inside it, so nesting in the generator mirrors nesting
in the output. The writer only accumulates text; it never touches the file system.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager


class CodeWriter:
    """Accumulates lines at the current indentation; `text()` joins them with a final newline."""

    def __init__(self, indent: str = "    ", *, open_brace: str = " {",
                 close_brace: str = "}") -> None:
        self._indent = indent
        self._open = open_brace
        self._close = close_brace
        self._level = 0
        self._lines: list[str] = []

    def line(self, text: str = "") -> None:
        """One line at the current indentation (an empty line stays empty, no trailing blanks)."""
        self._lines.append(self._indent * self._level + text if text else "")

    def lines(self, texts: Iterable[str]) -> None:
        for text in texts:
            self.line(text)

    def blank(self) -> None:
        """An empty line, never two in a row (keeps the output tidy whatever the emitters do)."""
        if self._lines and self._lines[-1] != "":
            self._lines.append("")

    def raw(self, text: str) -> None:
        """Verbatim text (a preprocessor block, a license header); not indented."""
        self._lines.extend(text.rstrip("\n").split("\n"))

    @contextmanager
    def indented(self) -> Iterator[None]:
        self._level += 1
        try:
            yield
        finally:
            self._level -= 1

    @contextmanager
    def block(self, header: str, trailer: str = "") -> Iterator[None]:
        """`header {` ... `}` + `trailer` (e.g. `;` after a struct) with the body indented; an
        empty header opens a bare scope."""
        self.line(header + self._open if header else self._open.strip())
        with self.indented():
            yield
        self.line(self._close + trailer)

    def text(self) -> str:
        body = "\n".join(self._lines).rstrip("\n")
        return body + "\n" if body else ""

    def __len__(self) -> int:
        return len(self._lines)

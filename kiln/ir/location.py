"""Source locations: where in the user's model an op came from."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Location:
    """Model file and line (from the fx node's stack trace) and module path (`layer1.0.conv1`).

    Every field is optional: an ONNX node has a name but no Python line, a parsed op may have none.
    Fused ops keep the locations of everything they absorbed in `fused`.
    """

    file: str | None = None
    line: int | None = None
    scope: str | None = None
    fused: tuple[Location, ...] = ()

    @property
    def known(self) -> bool:
        return bool(self.file or self.scope or self.fused)

    def describe(self) -> str:
        """`net.py:21 (layer1.0.conv1)`: the form used in error messages."""
        parts = []
        if self.file:
            parts.append(f"{self.file}:{self.line}" if self.line is not None else self.file)
        if self.scope:
            parts.append(f"({self.scope})")
        if not parts and self.fused:
            return self.fused[0].describe()
        return " ".join(parts)


UNKNOWN = Location()

"""The op definition protocol and the op registry.

An op *kind* is a frozen dataclass subclass of `OpDef`: its fields are the op's typed attributes,
its class variables say the op's text name and operand signature, and its methods give the
semantics (`infer_type`, `verify`, `reference`). The graph node (`kiln.ir.graph.Op`) holds one
`OpDef` instance as `op.kind`, so `isinstance(op.kind, Conv2d)` is how passes match and
`op.kind.stride` is how they read attributes. Changing an attribute means replacing the kind
(`dataclasses.replace`), which keeps attributes immutable and hashable.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import ClassVar, TypeVar

import numpy as np

from kiln.errors import KilnError
from kiln.ir.types import TensorType


class OpError(KilnError):
    """Raised by `infer_type` / `verify` / `reference`; the caller adds the op and its location."""


@dataclasses.dataclass(frozen=True)
class OpDef:
    """Base of every op kind. Subclasses are `@register_op` frozen dataclasses."""

    NAME: ClassVar[str] = ""
    OPERANDS: ClassVar[tuple[str, ...]] = ()
    """Operand names; a trailing `?` marks an optional operand, `*` a variadic one (last)."""
    NUM_RESULTS: ClassVar[int | None] = 1
    """How many results; None when an attribute decides (e.g. `split`)."""
    HAS_REGION: ClassVar[bool] = False
    ISOLATED_FROM_ABOVE: ClassVar[bool] = False
    """Region ops whose body sees outer values only through its block arguments."""
    SIDE_EFFECTS: ClassVar[bool] = False
    """True for ops DCE/CSE must keep (return); everything else is pure."""

    # -- semantics -------------------------------------------------------------------------
    def infer_type(self, operands: Sequence[TensorType]) -> tuple[TensorType, ...]:
        """Result types from operand types; raise `OpError` on a mismatch."""
        raise NotImplementedError(f"{self.NAME} has no type inference")

    def verify(self, operands: Sequence[TensorType]) -> None:
        """Extra checks beyond type inference (attribute ranges); raise `OpError`."""

    def reference(self, *args: np.ndarray) -> tuple[np.ndarray, ...]:
        """The executable spec: NumPy results for NumPy operands of the operand types."""
        raise NotImplementedError(f"{self.NAME} has no reference implementation")

    def reference_typed(self, operands: Sequence[TensorType],
                        *args: np.ndarray) -> tuple[np.ndarray, ...]:
        """`reference` given the operand types too: callers that know them (the interpreter,
        constant folding) call this, because some ops read their operand's type (dequantize
        needs the input's scale and zero point). Defaults to `reference`."""
        return self.reference(*args)

    # -- helpers ---------------------------------------------------------------------------
    @classmethod
    def attr_fields(cls) -> tuple[dataclasses.Field, ...]:
        return dataclasses.fields(cls)

    def non_default_attrs(self) -> dict[str, object]:
        """Attributes that differ from their defaults, sorted by name (what the printer shows)."""
        out: dict[str, object] = {}
        for f in sorted(self.attr_fields(), key=lambda f: f.name):
            value = getattr(self, f.name)
            if f.default is not dataclasses.MISSING and _same(value, f.default):
                continue
            if f.default_factory is not dataclasses.MISSING and _same(value, f.default_factory()):
                continue
            out[f.name] = value
        return out

    @classmethod
    def operand_range(cls) -> tuple[int, int | None]:
        """(minimum, maximum) operand count; maximum None for variadic ops."""
        required = sum(1 for n in cls.OPERANDS if not n.endswith(("?", "*")))
        if any(n.endswith("*") for n in cls.OPERANDS):
            return required, None
        return required, len(cls.OPERANDS)

    @classmethod
    def summary(cls) -> str:
        return (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""


def _same(a: object, b: object) -> bool:
    if type(a) is not type(b):
        return False
    return bool(a == b)


_REGISTRY: dict[str, type[OpDef]] = {}
T = TypeVar("T", bound=type[OpDef])


def register_op(cls: T) -> T:
    """Register an op kind under its `NAME`; a duplicate name is a programming error."""
    if not cls.NAME.startswith("kiln."):
        raise ValueError(f"op name must start with 'kiln.': {cls.NAME!r}")
    if cls.NAME in _REGISTRY:
        raise ValueError(f"op {cls.NAME} registered twice")
    if not (cls.__doc__ or "").strip():
        raise ValueError(f"op {cls.NAME} needs a one-line docstring")
    _REGISTRY[cls.NAME] = cls
    return cls


def lookup_op(name: str) -> type[OpDef] | None:
    return _REGISTRY.get(name)


def all_ops() -> dict[str, type[OpDef]]:
    """Every registered op kind by name (sorted), including ops registered by user code."""
    return dict(sorted(_REGISTRY.items()))


def builtin_ops() -> dict[str, type[OpDef]]:
    """The op kinds kiln itself defines (sorted); coverage tables and tests iterate these, so
    an op registered by a user or a test never counts as one a target must implement."""
    return {name: cls for name, cls in all_ops().items() if cls.__module__.startswith("kiln.")}


def fail(message: str) -> OpError:
    """Build an `OpError` for `raise fail(...)` in op semantics."""
    return OpError(message)

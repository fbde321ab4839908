"""The pass registry and the pass calling convention.

A pass is a plain function `def dce(module: Module, ctx: PassContext) -> bool` that edits the
module in place through the rewriter and returns whether it changed anything. Its options are
keyword-only parameters with a type hint and a default; `@register_pass("dce")` records it under
its kebab-case name, and its docstring's first line is the summary `kiln-opt --list-passes` shows.

The registry lives here, not in `kiln.compiler`, so that passes never import the compiler: the
compiler (pipeline parser, pass manager) imports passes, never the other way round.

Option types a pass may declare (the pipeline parser converts text to them):
`int`, `float`, `bool` (`true`/`false`), `str`, `Literal["a", "b"]` (one of the listed strings),
`tuple[str, ...]` / `tuple[int, ...]` / `tuple[float, ...]` (elements separated by `|`, e.g.
`skip=conv1|fc`), and any of these `| None` (written `none`).
"""

from __future__ import annotations

import inspect
import logging
import re
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from kiln.ir.graph import Module

_NAME_RE = re.compile(r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$")


@dataclass(frozen=True)
class PassContext:
    """What a pass gets besides the module: its name, run-wide inputs, a logger, its statistics.

    Frozen so a pass cannot rebind anything; `statistics` is the one mutable part, a counter
    dict owned by this single pass invocation (the pass manager collects it afterwards).
    """

    pass_name: str
    pipeline_so_far: tuple[str, ...] = ()
    calibration_data: Any = None
    """Sample batches for calibration-driven passes (quantization); None when not given."""
    sample_inputs: Any = None
    """Inputs to check numerics on or to derive shapes from; None when not given."""
    logger: logging.Logger = field(default_factory=lambda: logging.getLogger("kiln.passes"))
    statistics: dict[str, int] = field(default_factory=dict)

    def count(self, what: str, n: int = 1) -> None:
        """Add `n` to the statistic `what` (e.g. `ctx.count("folded")`)."""
        self.statistics[what] = self.statistics.get(what, 0) + n


class PassFn(Protocol):
    """The signature every pass has (its keyword-only options vary)."""

    __name__: str

    def __call__(self, module: Module, ctx: PassContext, /, **options: Any) -> bool: ...


@dataclass(frozen=True)
class PassOption:
    """One keyword option of a pass: its pipeline name, parameter name, type and default."""

    name: str
    param: str
    type: Any
    default: Any

    def describe(self) -> str:
        return f"{self.name}: {type_name(self.type)} = {format_value(self.default)}"


@dataclass(frozen=True)
class PassInfo:
    """A registered pass: name, function, one-line summary and options."""

    name: str
    fn: PassFn
    summary: str
    options: tuple[PassOption, ...] = ()

    def option(self, name: str) -> PassOption | None:
        return next((o for o in self.options if o.name == name), None)

    def describe(self) -> str:
        """`name: summary` plus one indented line per option (for `--list-passes`)."""
        lines = [f"{self.name}: {self.summary}"]
        lines.extend(f"    {o.describe()}" for o in self.options)
        return "\n".join(lines)


_PASSES: dict[str, PassInfo] = {}


def type_name(tp: Any) -> str:
    """How an option type is shown to users (`int`, `bool`, `'a'|'b'`, `list of str`)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Literal:
        return "|".join(repr(a) for a in args)
    if origin is tuple:
        return f"list of {type_name(args[0])} (a|b|...)"
    if origin in (typing.Union, _union_type()):
        return " or ".join("none" if a is type(None) else type_name(a) for a in args)
    return getattr(tp, "__name__", str(tp))


def _union_type() -> Any:
    import types
    return getattr(types, "UnionType", typing.Union)


def format_value(value: Any) -> str:
    """An option value in pipeline syntax (`true`, `64`, `a|b`, `none`)."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        return "|".join(format_value(v) for v in value)
    return str(value)


def _check_option_type(tp: Any, where: str) -> None:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp in (int, float, bool, str) or origin is typing.Literal:
        return
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis and args[0] in (int, float, str):
        return
    if origin in (typing.Union, _union_type()) and type(None) in args:
        for arg in args:
            if arg is not type(None):
                _check_option_type(arg, where)
        return
    raise ValueError(f"{where}: unsupported option type {tp!r}")


def _options_of(name: str, fn: Callable[..., bool]) -> tuple[PassOption, ...]:
    params = list(inspect.signature(fn).parameters.values())
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if len(positional) != 2:
        raise ValueError(f"pass '{name}' must take (module, ctx) positionally, then "
                         "keyword-only options")
    options = []
    for p in params[2:]:
        where = f"pass '{name}' option '{p.name}'"
        if p.kind is not p.KEYWORD_ONLY:
            raise ValueError(f"{where} must be keyword-only")
        if p.default is p.empty:
            raise ValueError(f"{where} needs a default")
        hint = p.annotation
        if isinstance(hint, str):
            hint = eval(hint, {**vars(typing), **fn.__globals__})
        _check_option_type(hint, where)
        options.append(PassOption(p.name.replace("_", "-"), p.name, hint, p.default))
    return tuple(options)


def register_pass(name: str) -> Callable[[Callable[..., bool]], Callable[..., bool]]:
    """Register a pass function under a kebab-case `name`; a duplicate name raises."""
    if not _NAME_RE.match(name):
        raise ValueError(f"pass name must be kebab-case: {name!r}")

    def decorate(fn: Callable[..., bool]) -> Callable[..., bool]:
        if name in _PASSES:
            raise ValueError(f"pass '{name}' registered twice "
                             f"({_PASSES[name].fn.__module__} and {fn.__module__})")
        doc = inspect.getdoc(fn) or ""
        if not doc.strip():
            raise ValueError(f"pass '{name}' needs a docstring (its first line is the summary)")
        info = PassInfo(name, typing.cast(PassFn, fn), doc.strip().splitlines()[0],
                        _options_of(name, fn))
        _PASSES[name] = info
        return fn

    return decorate


def lookup_pass(name: str) -> PassInfo | None:
    """The pass registered under `name`, or None."""
    _load_builtin_passes()
    return _PASSES.get(name)


def all_passes() -> dict[str, PassInfo]:
    """Every registered pass by name, sorted."""
    _load_builtin_passes()
    return dict(sorted(_PASSES.items()))


def _load_builtin_passes() -> None:
    """Import `kiln.passes` (its `__init__` imports every built-in pass module by name)."""
    import kiln.passes  # noqa: F401


def unregister_pass(name: str) -> None:
    """Remove a pass (tests that register throwaway passes clean up with this)."""
    _PASSES.pop(name, None)


__all__ = ["PassContext", "PassFn", "PassInfo", "PassOption", "all_passes", "format_value",
           "lookup_pass", "register_pass", "type_name", "unregister_pass"]

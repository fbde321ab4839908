"""Pipeline strings: `"canonicalize,fold-constants{max-elements=64},cse,dce"`.

Grammar: `pipeline := [item (',' item)*]`, `item := name ['{' key '=' value (',' key '=' value)*
'}']`, blanks allowed around every token. A name is a registered pass or a named pipeline
(`default`), which expands in place and takes no options. Option keys are the pass's keyword
parameter names in kebab-case; values are converted by the parameter's type hint:

- `int`, `float` (Python spelling, `inf` and `nan` included), `bool` (`true` / `false`), `str`;
- `Literal["a", "b"]`: one of the listed words;
- `tuple[str, ...]` (or of int / float): elements separated by `|` (`skip=conv1|fc`, empty = none);
- `X | None`: `none`, or a value of X.

Values cannot contain `,`, `{`, `}` (`|` separates list elements). Every mistake is a
`PipelineError` that quotes the pipeline with a caret under the offending spot.
"""

from __future__ import annotations

import difflib
import re
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from kiln.compiler.pipelines import all_pipelines, lookup_pipeline
from kiln.errors import Diagnostic, PipelineError
from kiln.passes.registry import (
    PassInfo,
    PassOption,
    all_passes,
    format_value,
    lookup_pass,
    type_name,
)

_ITEM = re.compile(r"\s*([A-Za-z0-9_.-]*)\s*(?:\{([^{}]*)\})?\s*$")


@dataclass(frozen=True)
class PassStep:
    """One pass of a parsed pipeline with its converted options (by parameter name)."""

    info: PassInfo
    options: Mapping[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.info.name

    def __str__(self) -> str:
        """The step in pipeline syntax (options in declaration order, only those given)."""
        given = [o for o in self.info.options if o.param in self.options]
        if not given:
            return self.info.name
        body = ",".join(f"{o.name}={format_value(self.options[o.param])}" for o in given)
        return f"{self.info.name}{{{body}}}"


def format_pipeline(steps: list[PassStep]) -> str:
    """Steps back to a pipeline string (named pipelines appear expanded)."""
    return ",".join(str(s) for s in steps)


def _error(text: str, pos: int, message: str, hint: str | None = None) -> PipelineError:
    excerpt = f"{text}\n{' ' * pos}^" if text else None
    return PipelineError(diagnostics=[Diagnostic(message, hint=hint, excerpt=excerpt)])


def _split_top(text: str, start: int = 0) -> list[tuple[int, str]]:
    """Split at commas outside braces; each piece with its offset in `text`."""
    pieces, depth, begin = [], 0, start
    for i in range(start, len(text)):
        ch = text[i]
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth < 0:
                raise _error(text, i, "unbalanced '}' in pipeline")
        elif ch == "," and depth == 0:
            pieces.append((begin, text[begin:i]))
            begin = i + 1
    if depth:
        raise _error(text, len(text), "missing '}' in pipeline")
    pieces.append((begin, text[begin:]))
    return pieces


def parse_pipeline(text: str, _stack: tuple[str, ...] = ()) -> list[PassStep]:
    """Parse and expand a pipeline string into steps; raises `PipelineError` on any mistake."""
    if not text.strip():
        return []
    steps: list[PassStep] = []
    for pos, item in _split_top(text):
        match = _ITEM.match(item)
        name = match.group(1) if match else ""
        if not match or not name:
            where = pos + len(item) - len(item.lstrip())
            what = "empty pass name" if not item.strip() else f"malformed pass '{item.strip()}'"
            raise _error(text, where, f"{what} in pipeline",
                         hint="write passes as name or name{option=value,...}, comma separated")
        where = pos + item.index(name)
        steps.extend(_expand(text, where, name, match.group(2), _stack))
    return steps


def _expand(text: str, pos: int, name: str, body: str | None,
            stack: tuple[str, ...]) -> list[PassStep]:
    info = lookup_pass(name)
    if info is not None:
        return [PassStep(info, _parse_options(text, pos, info, body))]
    named = lookup_pipeline(name)
    if named is None:
        raise _error(text, pos, f"unknown pass '{name}'", hint=_unknown_pass_hint(name))
    if body is not None:
        raise _error(text, pos, f"named pipeline '{name}' takes no options")
    if name in stack:
        raise _error(text, pos, f"named pipeline '{name}' includes itself")
    return parse_pipeline(named, (*stack, name))


def _unknown_pass_hint(name: str) -> str:
    names = [*all_passes(), *all_pipelines()]
    close = difflib.get_close_matches(name, names, n=1)
    guess = f"did you mean '{close[0]}'? " if close else ""
    return (f"{guess}passes: {', '.join(all_passes())}; "
            f"named pipelines: {', '.join(all_pipelines())}")


def _parse_options(text: str, pos: int, info: PassInfo, body: str | None) -> dict[str, Any]:
    if body is None or not body.strip():
        return {}
    offset = text.index("{", pos) + 1
    options: dict[str, Any] = {}
    for at, entry in _split_top(body):
        where = offset + at + len(entry) - len(entry.lstrip())
        key, eq, raw = (s.strip() for s in entry.partition("="))
        if not eq or not key:
            raise _error(text, where, f"pass '{info.name}': expected option=value, got "
                         f"'{entry.strip()}'")
        option = info.option(key)
        if option is None:
            raise _error(text, where, f"pass '{info.name}' has no option '{key}'",
                         hint=_options_hint(info, key))
        if option.param in options:
            raise _error(text, where, f"pass '{info.name}': option '{key}' given twice")
        options[option.param] = _convert_or_raise(text, where, info, option, raw)
    return options


def _options_hint(info: PassInfo, key: str) -> str:
    if not info.options:
        return f"'{info.name}' takes no options"
    close = difflib.get_close_matches(key, [o.name for o in info.options], n=1)
    guess = f"did you mean '{close[0]}'? " if close else ""
    listed = "; ".join(o.describe() for o in info.options)
    return f"{guess}options of '{info.name}': {listed}"


def _convert_or_raise(text: str, pos: int, info: PassInfo, option: PassOption, raw: str) -> Any:
    try:
        return convert_value(option.type, raw)
    except ValueError:
        raise _error(text, pos, f"pass '{info.name}' option '{option.name}' expects "
                     f"{type_name(option.type)}, got '{raw}'") from None


def convert_value(tp: Any, raw: str) -> Any:
    """Text to a value of option type `tp`; `ValueError` when it does not fit."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if type(None) in args:
        if raw == "none":
            return None
        return convert_value(next(a for a in args if a is not type(None)), raw)
    if origin is typing.Literal:
        for choice in args:
            if str(choice) == raw:
                return choice
        raise ValueError(raw)
    if origin is tuple:
        return tuple(convert_value(args[0], part.strip()) for part in raw.split("|")) \
            if raw else ()
    if tp is bool:
        if raw not in ("true", "false"):
            raise ValueError(raw)
        return raw == "true"
    if tp is int:
        return int(raw)
    if tp is float:
        return float(raw)
    if tp is str:
        return raw
    raise ValueError(f"unsupported option type {tp!r}")

"""Printer of the text IR: Module → deterministic MLIR-like text that `parser.parse` reads back.

Grammar (what the printer writes; the parser also accepts blanks anywhere between tokens, `//`
line comments and a single result type without parentheses, `-> tensor<2xf32>`)::

    module    := 'kiln.module' SYMBOL '{' func* '}'
    func      := 'kiln.func' SYMBOL '(' [arg (',' arg)*] ')' '->' '(' [type (',' type)*] ')'
                 '{' op* '}'
    arg       := VALUE ':' type
    op        := [VALUE (',' VALUE)* '='] OPNAME operands [attrs] [region] [':' types] [loc]
               | VALUE '=' 'kiln.weight' SYMBOL ':' type [loc]
    operands  := VALUE (',' VALUE)*                     kiln.return / kiln.yield (bare)
               | (nothing)                              ops with results, no operands, no region
               | '(' [VALUE (',' VALUE)*] ')'          every other op
    attrs     := '{' NAME '=' attr (',' NAME '=' attr)* '}'     sorted by name, defaults omitted
    region    := '(' '{' ['^bb0' ['(' arg (',' arg)* ')'] ':'] op* '}' ')'
    loc       := 'loc' '(' body ')'
    body      := 'unknown' | [file] [STRING] ['fused' '[' body (',' body)* ']']
    file      := STRING ':' (INT | '?')  |  '?' ':' INT

A location body is up to three parts, in order: the file and line (`"net.py":14`, `?` for a
missing line or file), the module scope (`"layer1.0.conv1"`, a string not followed by `:`) and
the fused locations (`fused["conv1", "relu"]`). So `loc("net.py":14 "conv1")`, `loc("conv1")`
(scope only), `loc("net.py":?)` (file only), `loc(fused["conv1", "relu"])`.

Values print as `%name` when `Value.name` is set, else as a number; names are made unique within
a function, regions included (`%x`, `%x_1`, ...), and numbers skip every name that is itself a
number. Attribute values: ints, floats (`repr`: `0.1`, `1e-05`, `nan`, `-inf`), `true`/`false`,
`none`, JSON strings, `[a, b]` lists, element types (`f16`, `fixed<16,6>`, `q<i8, 0.05, 0>`),
tensor types and `dense<[1.0, 2.0]> : tensor<2xf32>` (or the splat `dense<0.5> : tensor<2x2xf32>`;
elements print in the shortest text that reads back to the same value at their own precision).
Whether an int prints as a float comes from the op's field annotation (`typing.get_type_hints`).
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from collections.abc import Iterator, Mapping

import numpy as np

from kiln.errors import KilnError
from kiln.ir.graph import Block, Func, Module, Op, Value, clean_name
from kiln.ir.lexer import format_symbol, quote
from kiln.ir.location import Location
from kiln.ir.ops.attrs import Dense
from kiln.ir.ops.base import OpDef
from kiln.ir.ops.core import Return, Weight, Yield
from kiln.ir.types import DType, TensorType

INDENT = "  "


# -- attribute annotations (shared with the parser) -----------------------------------------------
def attribute_types(kind: type[OpDef]) -> Mapping[str, object]:
    """Attribute name → its annotation, resolved (`float | None`, `tuple[int, ...]`, `DType`).

    An annotation that cannot be resolved becomes `object`: any value is then accepted as written.
    """
    return _attribute_types(typing.cast(type, kind))  # a class is hashable; mypy doubts it


@functools.cache
def _attribute_types(kind: type) -> Mapping[str, object]:
    try:
        hints = typing.get_type_hints(kind)
    except Exception:  # a forward reference the op's module cannot resolve
        hints = {}
    fields = {f.name: hints.get(f.name, object) for f in dataclasses.fields(kind)}
    return types.MappingProxyType(fields)


def union_members(annotation: object) -> tuple[object, ...]:
    """The members of `X | Y` / `Optional[X]`; `(annotation,)` for anything else."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return typing.get_args(annotation)
    return (annotation,)


def _prefers_float(annotation: object) -> bool:
    members = union_members(annotation)
    return float in members and int not in members


def _element_annotation(annotation: object, index: int) -> object:
    for member in union_members(annotation):
        if typing.get_origin(member) is tuple:
            args = typing.get_args(member)
            if len(args) == 2 and args[1] is Ellipsis:
                return args[0]
            if index < len(args):
                return args[index]
    return object


# -- values: attributes, dense literals, locations -----------------------------------------------
def format_float(value: float) -> str:
    """`repr(float(x))`: shortest text that reads back to the same double (`nan`, `-inf`)."""
    return repr(float(value))


def format_attr(value: object, annotation: object = object) -> str:
    """The text of one attribute value; `annotation` decides whether ints print as floats."""
    if value is None:
        return "none"
    if isinstance(value, (bool, np.bool_)):
        return "true" if value else "false"
    if isinstance(value, (int, np.integer)):
        return format_float(float(value)) if _prefers_float(annotation) else str(int(value))
    if isinstance(value, (float, np.floating)):
        return format_float(float(value))
    if isinstance(value, str):
        return quote(value)
    if isinstance(value, (tuple, list)):
        items = (format_attr(v, _element_annotation(annotation, i)) for i, v in enumerate(value))
        return "[" + ", ".join(items) + "]"
    if isinstance(value, (DType, TensorType)):
        return str(value)
    if isinstance(value, Dense):
        return format_dense(value)
    raise KilnError(f"cannot print attribute value {value!r} of type {type(value).__name__}")


def _format_element(value: np.generic) -> str:
    if isinstance(value, np.bool_):
        return "true" if value else "false"
    if isinstance(value, np.integer):
        return str(int(value))
    exact = format_float(float(value))  # always reads back to the same value
    short = str(value)  # NumPy's shortest text for this precision: 0.1 for float32(0.1)
    if not any(ch in short for ch in ".en"):
        short += ".0"
    back = np.array(float(short), dtype=value.dtype)
    same = back.tobytes() == np.array(value).tobytes() or bool(np.isnan(back) and np.isnan(value))
    return short if same and len(short) < len(exact) else exact


def format_dense(dense: Dense) -> str:
    """`dense<[1.0, 2.0]> : tensor<2xf32>`, or `dense<v> : type` when all elements are equal."""
    type_text = str(dense.type)
    flat = dense.array.reshape(-1)
    raw = flat.tobytes()
    if flat.size and raw == raw[:flat.itemsize] * flat.size:
        return f"dense<{_format_element(flat[0])}> : {type_text}"
    items = ", ".join(_format_element(v) for v in flat)
    return f"dense<[{items}]> : {type_text}"


def format_location(loc: Location) -> str:
    """`loc(...)`, empty for an unknown location (the grammar is in the module docstring)."""
    if loc == Location():
        return ""
    return f"loc({_loc_body(loc)})"


def _loc_body(loc: Location) -> str:
    parts = []
    if loc.file is not None or loc.line is not None:
        file = quote(loc.file) if loc.file is not None else "?"
        parts.append(f"{file}:{loc.line if loc.line is not None else '?'}")
    if loc.scope is not None:
        parts.append(quote(loc.scope))
    if loc.fused:
        parts.append("fused[" + ", ".join(_loc_body(inner) for inner in loc.fused) + "]")
    return " ".join(parts) or "unknown"


# -- names ----------------------------------------------------------------------------------------
def _defined_values(block: Block) -> Iterator[Value]:
    """Every value a block defines, in text order: arguments, then each op's results and region."""
    yield from block.args
    for op in block.ops:
        yield from op.results
        if op.region is not None:
            yield from _defined_values(op.region)


class _Namer:
    """Unique names for the values of one function (see the module docstring)."""

    def __init__(self, func: Func) -> None:
        values = list(_defined_values(func.body))
        self._reserved = {clean_name(v.name) for v in values if v.name}
        self._used: set[str] = set()
        self._names: dict[int, str] = {}
        self._counter = 0
        for value in values:
            self.name(value)

    def name(self, value: Value) -> str:
        found = self._names.get(id(value))
        if found is None:
            found = self._fresh(clean_name(value.name))
            self._names[id(value)] = found
            self._used.add(found)
        return found

    def _fresh(self, hint: str | None) -> str:
        if hint is not None and hint not in self._used:
            return hint
        if hint is not None:
            n = 1
            while f"{hint}_{n}" in self._used or f"{hint}_{n}" in self._reserved:
                n += 1
            return f"{hint}_{n}"
        while str(self._counter) in self._used or str(self._counter) in self._reserved:
            self._counter += 1
        return str(self._counter)


# -- structure ------------------------------------------------------------------------------------
class _Printer:
    def __init__(self, locations: bool) -> None:
        self.locations = locations
        self.lines: list[str] = []

    def func(self, func: Func, depth: int) -> None:
        namer = _Namer(func)
        args = ", ".join(f"%{namer.name(a)}: {a.type}" for a in func.args)
        term = func.body.terminator
        results = term.operands if term is not None and term.isa(Return) else ()
        result_types = ", ".join(str(v.type) for v in results)
        self.lines.append(f"{INDENT * depth}kiln.func {format_symbol(func.name)}({args}) -> "
                          f"({result_types}) {{")
        for op in func.ops:
            self.op(op, namer, depth + 1)
        self.lines.append(f"{INDENT * depth}}}")

    def op(self, op: Op, namer: _Namer, depth: int) -> None:
        pad = INDENT * depth
        head = ", ".join(f"%{namer.name(r)}" for r in op.results)
        head = f"{pad}{head} = " if head else pad
        loc = format_location(op.loc) if self.locations else ""
        tail = f" {loc}" if loc else ""
        if isinstance(op.kind, Weight) and len(op.results) == 1 and not op.operands:
            self.lines.append(f"{head}kiln.weight {format_symbol(op.kind.name)} : "
                              f"{op.kind.type}{tail}")
            return
        text = head + op.name + self._operands(op, namer) + self._attrs(op.kind)
        if op.results:
            tail = " : " + ", ".join(str(r.type) for r in op.results) + tail
        if op.region is None:
            self.lines.append(text + tail)
            return
        self.lines.append(text + " ({")
        self._block_label(op.region, namer, pad)
        for inner in op.region.ops:
            self.op(inner, namer, depth + 1)
        self.lines.append(f"{pad}}})" + tail)

    def _block_label(self, block: Block, namer: _Namer, pad: str) -> None:
        if block.args:
            args = ", ".join(f"%{namer.name(a)}: {a.type}" for a in block.args)
            self.lines.append(f"{pad}^bb0({args}):")
        else:
            self.lines.append(f"{pad}^bb0:")

    @staticmethod
    def _operands(op: Op, namer: _Namer) -> str:
        names = ", ".join(f"%{namer.name(v)}" for v in op.operands)
        if isinstance(op.kind, (Return, Yield)) and op.region is None:
            return f" {names}" if names else ""
        if op.operands or op.region is not None or not op.results:
            return f"({names})"
        return ""

    @staticmethod
    def _attrs(kind: OpDef) -> str:
        attrs = kind.non_default_attrs()
        if not attrs:
            return ""
        annotations = attribute_types(type(kind))
        items = (f"{k} = {format_attr(v, annotations.get(k, object))}" for k, v in attrs.items())
        return " {" + ", ".join(items) + "}"


def print_module(module: Module, *, locations: bool = True) -> str:
    """The module's text (weights are not included: they live in the `.npz` beside it)."""
    printer = _Printer(locations)
    printer.lines.append(f"kiln.module {format_symbol(module.name)} {{")
    for i, func in enumerate(module.funcs.values()):
        if i:
            printer.lines.append("")
        printer.func(func, 1)
    printer.lines.append("}")
    return "\n".join(printer.lines) + "\n"


def print_func(func: Func, *, locations: bool = True) -> str:
    """One function's text, as it appears inside its module (for dumps and diagnostics)."""
    printer = _Printer(locations)
    printer.func(func, 0)
    return "\n".join(printer.lines) + "\n"

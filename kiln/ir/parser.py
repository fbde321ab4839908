"""Parser of the text IR: the text `kiln.ir.printer` writes → an equal `Module`.

Recursive descent over a `Cursor` (`kiln.ir.lexer`), one function per grammar rule (the grammar
is in the printer's docstring). Ops are built with the result types *as printed*, not inferred,
so that a wrong type in the text is caught by the verifier (run at the end unless
`verify=False`) instead of being silently corrected. Every malformed input raises `ParseError`
with `line:col`, the source line and a caret; a well-formed module that breaks an IR rule raises
`VerifyError`, each diagnostic with the op's source line.
"""

from __future__ import annotations

import difflib
import typing
from collections.abc import Mapping

import numpy as np

import kiln.ir.ops  # noqa: F401  (registers every op family the text may name)
from kiln.errors import KilnError
from kiln.ir.graph import Block, Func, Module, Op, Value
from kiln.ir.lexer import (
    OP_NAME,
    VALUE,
    Cursor,
    read_attr_value,
    read_dtype,
    read_location,
    read_type,
)
from kiln.ir.location import UNKNOWN, Location
from kiln.ir.ops.base import OpDef, all_ops, lookup_op
from kiln.ir.ops.core import Return, Weight
from kiln.ir.printer import attribute_types, union_members
from kiln.ir.types import DType, TensorType
from kiln.ir.verifier import collect_diagnostics, raise_problems

_NO_MATCH = object()


def parse(text: str, weights: Mapping[str, np.ndarray] | None = None, *, verify: bool = True,
          filename: str | None = None) -> Module:
    """Parse a module. `weights` (name → array) are checked against the `kiln.weight` types and
    stored in `module.weights`; without them the weights stay elided (`module.weights` empty).
    `filename` only prefixes error positions."""
    if not isinstance(text, str):
        raise KilnError(f"parse() takes the IR text as str, not {type(text).__name__}")
    parser = _Parser(Cursor(text, filename), weights)
    module = parser.module()
    if verify:
        parser.verify(module)
    return module


def parse_type(text: str) -> TensorType:
    """A tensor type from its text (`tensor<2x3xf32>`): the inverse of `str(TensorType)`."""
    c = Cursor(text)
    return _whole(c, read_type(c))


def parse_dtype(text: str) -> DType:
    """An element type from its text (`f16`, `fixed<16,6>`, `q<i8, 0.05, 0>`)."""
    c = Cursor(text)
    return _whole(c, read_dtype(c))


def parse_location(text: str) -> Location:
    """A location from its text (`loc("net.py":14 "conv1")`)."""
    c = Cursor(text)
    if not c.keyword("loc"):
        raise c.error(f"expected 'loc(', found {c.describe_next()}")
    return _whole(c, read_location(c))


T = typing.TypeVar("T")


def _whole(c: Cursor, value: T) -> T:
    if not c.at_end():
        raise c.error(f"unexpected {c.describe_next()} after the end")
    return value


class _Parser:
    """One parse: the cursor, the given weights, the value scopes and op source positions."""

    def __init__(self, cursor: Cursor, weights: Mapping[str, np.ndarray] | None) -> None:
        self.c = cursor
        self.weights = {name: np.asarray(array) for name, array in (weights or {}).items()}
        self.scopes: list[dict[str, Value]] = []
        self.positions: dict[int, int] = {}
        """id(op) → offset of its name, for diagnostics of the verifier."""

    # -- module and functions ----------------------------------------------------------------
    def module(self) -> Module:
        c = self.c
        if not c.keyword("kiln.module", OP_NAME):
            raise c.error(f"expected 'kiln.module', found {c.describe_next()}")
        module = Module(c.symbol("a module name"))
        open_pos = c.expect("{", "to open the module")
        while not c.accept("}"):
            if c.at_end():
                raise c.error("unterminated module: expected '}'",
                              hint=f"the '{{' at {c.where(open_pos)} is never closed")
            self.func(module)
        if not c.at_end():
            raise c.error(f"unexpected {c.describe_next()} after the end of the module")
        module.weights = dict(self.weights)
        return module

    def func(self, module: Module) -> None:
        c = self.c
        if not c.keyword("kiln.func", OP_NAME):
            raise c.error(f"expected 'kiln.func' or '}}', found {c.describe_next()}")
        name_pos = c.here()
        func = Func(c.symbol("a function name"), [])
        if func.name in module.funcs:
            raise c.error(f"function @{func.name} defined twice", name_pos)
        self.scopes = [{}]
        c.expect("(", "to open the argument list")
        if not c.accept(")"):
            self.block_arg(func.body)
            while c.accept(","):
                self.block_arg(func.body)
            c.expect(")", "to close the argument list")
        arrow = c.expect("->", "before the result types")
        declared = self.type_list() if c.accept("(") else [read_type(c)]
        self.body(func.body, "function body")
        returned = func.body.terminator
        if returned is not None and returned.isa(Return):
            actual = [v.type for v in returned.operands]
            if actual != declared:
                raise c.error(f"function @{func.name} declares results ({_types(declared)}) but "
                              f"its kiln.return gives ({_types(actual)})", arrow)
        module.add_func(func)

    def type_list(self) -> list[TensorType]:
        """After `(`: `type, ...)`."""
        c = self.c
        if c.accept(")"):
            return []
        out = [read_type(c)]
        while c.accept(","):
            out.append(read_type(c))
        c.expect(")", "to close the type list")
        return out

    def block_arg(self, block: Block) -> None:
        name, pos = self.value_name()
        self.c.expect(":", f"after %{name}")
        self.define(name, block.add_arg(read_type(self.c), name), pos)

    def body(self, block: Block, what: str, label: bool = False) -> None:
        """`{ op* }`, with an optional block label first in a region."""
        c = self.c
        open_pos = c.expect("{", f"to open the {what}")
        if label and c.accept("^"):
            self.block_label(block)
        while not c.accept("}"):
            if c.at_end():
                raise c.error(f"unterminated {what}: expected '}}'",
                              hint=f"the '{{' at {c.where(open_pos)} is never closed")
            self.op(block)

    # -- values --------------------------------------------------------------------------------
    def value_name(self) -> tuple[str, int]:
        pos = self.c.here()
        m = self.c.match(VALUE)
        if m is None:
            raise self.c.error(f"expected a value (%name), found {self.c.describe_next()}")
        return m.group(1), pos

    def define(self, name: str, value: Value, pos: int) -> None:
        if any(name in scope for scope in self.scopes):
            raise self.c.error(f"value %{name} defined twice", pos)
        self.scopes[-1][name] = value
        value.name = name

    def use(self) -> Value:
        name, pos = self.value_name()
        for scope in reversed(self.scopes):
            if name in scope:
                return scope[name]
        raise self.c.error(f"undefined value %{name}", pos,
                           hint="values must be defined before they are used")

    # -- ops -------------------------------------------------------------------------------------
    def op(self, block: Block) -> None:
        c = self.c
        names: list[tuple[str, int]] = []
        if c.peek("%"):
            names.append(self.value_name())
            while c.accept(","):
                names.append(self.value_name())
            c.expect("=", "after the result names")
        name_pos = c.here()
        m = c.match(OP_NAME)
        if m is None:
            raise c.error(f"expected an op, found {c.describe_next()}")
        kind_cls = self.lookup(m.group(0), name_pos)
        if kind_cls is Weight and c.peek("@"):
            op = self.weight_op(names, name_pos)
        else:
            op = self.generic_op(kind_cls, names, name_pos)
        block.append(op)
        self.positions[id(op)] = name_pos
        for (name, pos), value in zip(names, op.results):
            self.define(name, value, pos)

    def lookup(self, name: str, pos: int) -> type[OpDef]:
        kind_cls = lookup_op(name)
        if kind_cls is None:
            close = difflib.get_close_matches(name, list(all_ops()), n=3, cutoff=0.6)
            guess = f"; did you mean {', '.join(close)}?" if close else ""
            raise self.c.error(f"unknown op '{name}'{guess}", pos)
        return kind_cls

    def weight_op(self, names: list[tuple[str, int]], name_pos: int) -> Op:
        c = self.c
        symbol = c.symbol("a weight name")
        c.expect(":", "before the weight type")
        type = read_type(c)
        loc = self.location()
        if len(names) != 1:
            raise c.error(f"kiln.weight has one result, not {len(names)}", name_pos)
        if self.weights:
            self.check_weight(symbol, type, name_pos)
        return Op(Weight(name=symbol, type=type), [], [type], loc)

    def check_weight(self, symbol: str, type: TensorType, pos: int) -> None:
        array = self.weights.get(symbol)
        if array is None:
            raise self.c.error(f"weight @{symbol} is not among the given weights", pos)
        if tuple(array.shape) != type.shape or array.dtype != type.numpy_dtype:
            raise self.c.error(f"weight @{symbol} is {array.dtype}{list(array.shape)} but its type "
                               f"{type} needs {type.numpy_dtype}{list(type.shape)}", pos)

    def generic_op(self, kind_cls: type[OpDef], names: list[tuple[str, int]],
                   name_pos: int) -> Op:
        c = self.c
        operands = self.operands()
        kind = self.kind(kind_cls, name_pos)
        if isinstance(kind, Weight) and self.weights:  # the generic spelling of a weight
            self.check_weight(kind.name, kind.type, name_pos)
        region = None
        if self.peek_region():
            if not kind_cls.HAS_REGION:
                raise c.error(f"'{kind_cls.NAME}' does not take a region")
            region = self.region()
        types_pos = c.end  # right after the op when the types are missing
        types = []
        if c.accept(":"):
            types_pos = c.here()
            types = self.type_list_bare()
        if len(types) != len(names):
            raise c.error(f"'{kind_cls.NAME}' has {len(names)} result names but {len(types)} "
                          "result types", types_pos)
        return Op(kind, operands, types, self.location(), [n for n, _ in names], region)

    def type_list_bare(self) -> list[TensorType]:
        out = [read_type(self.c)]
        while self.c.accept(","):
            out.append(read_type(self.c))
        return out

    def operands(self) -> list[Value]:
        c = self.c
        if c.peek("(") and not self.peek_region():
            c.expect("(")
            if c.accept(")"):
                return []
            out = [self.use()]
            while c.accept(","):
                out.append(self.use())
            c.expect(")", "to close the operand list")
            return out
        if c.peek("%"):
            out = [self.use()]
            while c.accept(","):
                out.append(self.use())
            return out
        return []

    def peek_region(self) -> bool:
        start = self.c.pos
        found = self.c.accept("(") and self.c.peek("{")
        self.c.pos = start
        return found

    def region(self) -> Block:
        """`({ ^bb0(%a: type, ...): op* })`; inner values are visible inside only."""
        c = self.c
        c.expect("(")
        c.enter()
        block = Block()
        self.scopes.append({})
        self.body(block, "region", label=True)
        c.expect(")", "to close the region")
        self.scopes.pop()
        c.leave()
        return block

    def block_label(self, block: Block) -> None:
        """After `^`: `bb0(%a: type, ...):` or `bb0:`."""
        c = self.c
        c.ident("a block label")
        if c.accept("(") and not c.accept(")"):
            self.block_arg(block)
            while c.accept(","):
                self.block_arg(block)
            c.expect(")", "to close the block arguments")
        c.expect(":", "after the block label")

    def kind(self, kind_cls: type[OpDef], name_pos: int) -> OpDef:
        """The op's attributes `{k = v, ...}` checked against its fields, then the kind."""
        c = self.c
        values: dict[str, object] = {}
        if c.peek("{"):
            c.expect("{")
            if not c.accept("}"):
                self.attribute(kind_cls, values)
                while c.accept(","):
                    self.attribute(kind_cls, values)
                c.expect("}", "to close the attributes")
        try:
            return kind_cls(**values)
        except KilnError as exc:
            messages = "; ".join(d.message for d in exc.diagnostics)
            raise c.error(f"'{kind_cls.NAME}' op: {messages}", name_pos) from None
        except Exception as exc:  # op classes validate in their own ways
            raise c.error(f"'{kind_cls.NAME}' op: bad attributes: {exc}", name_pos) from None

    def attribute(self, kind_cls: type[OpDef], values: dict[str, object]) -> None:
        c = self.c
        key_pos = c.here()
        key = c.ident("an attribute name")
        fields = attribute_types(kind_cls)
        if key not in fields:
            valid = ", ".join(sorted(fields)) or "none"
            raise c.error(f"'{kind_cls.NAME}' op has no attribute '{key}' (valid: {valid})",
                          key_pos)
        if key in values:
            raise c.error(f"attribute '{key}' given twice", key_pos)
        c.expect("=", f"after attribute '{key}'")
        value_pos = c.here()
        raw = read_attr_value(c)
        value = coerce(raw, fields[key])
        if value is _NO_MATCH:
            written = c.text[value_pos:c.pos]
            raise c.error(f"'{kind_cls.NAME}' op attribute '{key}' expects "
                          f"{describe_annotation(fields[key])}, got {written}", value_pos)
        values[key] = value

    def location(self) -> Location:
        return read_location(self.c) if self.c.keyword("loc") else UNKNOWN

    # -- verification ------------------------------------------------------------------------------
    def verify(self, module: Module) -> None:
        """Run the verifier; each diagnostic gets the op's source line and a caret."""
        def excerpt(op: Op) -> str | None:
            pos = self.positions.get(id(op))
            return None if pos is None else f"at {self.c.where(pos)}:\n{self.c.excerpt(pos)}"

        raise_problems(collect_diagnostics(module, excerpt), f"module @{module.name}")


def _types(types: list[TensorType]) -> str:
    return ", ".join(str(t) for t in types)


# -- attribute values against field annotations ---------------------------------------------------
def coerce(value: object, annotation: object) -> object:
    """`value` as the annotation wants it (lists → tuples, ints → floats), or `_NO_MATCH`."""
    members = union_members(annotation)
    if len(members) > 1:
        for member in members:
            out = coerce(value, member)
            if out is not _NO_MATCH:
                return out
        return _NO_MATCH
    origin = typing.get_origin(annotation)
    if origin is tuple:
        return _coerce_tuple(value, typing.get_args(annotation))
    if origin is typing.Literal:
        choices = typing.get_args(annotation)
        return value if any(type(c) is type(value) and c == value for c in choices) else _NO_MATCH
    return _coerce_leaf(value, annotation)


def _coerce_tuple(value: object, args: tuple[object, ...]) -> object:
    if not isinstance(value, tuple):
        return _NO_MATCH
    if len(args) == 2 and args[1] is Ellipsis:
        items = [coerce(v, args[0]) for v in value]
    elif len(args) == len(value):
        items = [coerce(v, a) for v, a in zip(value, args)]
    else:
        return _NO_MATCH
    return _NO_MATCH if any(i is _NO_MATCH for i in items) else tuple(items)


def _coerce_leaf(value: object, annotation: object) -> object:
    if annotation is object or annotation is typing.Any:
        return value
    if annotation is None or annotation is type(None):
        return None if value is None else _NO_MATCH
    if annotation is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        return float(value) if ok else _NO_MATCH  # type: ignore[arg-type]
    if annotation is int:
        return value if isinstance(value, int) and not isinstance(value, bool) else _NO_MATCH
    if isinstance(annotation, type):
        return value if isinstance(value, annotation) else _NO_MATCH
    return value


def describe_annotation(annotation: object) -> str:
    """`float | None`, `tuple[int, ...]`, `DType`: an annotation as a reader would write it."""
    if annotation is type(None) or annotation is None:
        return "none"
    members = union_members(annotation)
    if len(members) > 1:
        return " | ".join(describe_annotation(m) for m in members)
    origin = typing.get_origin(annotation)
    if origin is tuple:
        args = typing.get_args(annotation)
        if len(args) == 2 and args[1] is Ellipsis:
            return f"[{describe_annotation(args[0])}, ...]"
        return "[" + ", ".join(describe_annotation(a) for a in args) + "]"
    if origin is typing.Literal:
        return " | ".join(repr(a) for a in typing.get_args(annotation))
    if isinstance(annotation, type):
        return annotation.__name__
    return str(annotation)

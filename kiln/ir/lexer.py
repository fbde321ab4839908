"""The scanner of the text IR: a cursor over the source with position-aware errors.

The format is MLIR-like and context dependent (`tensor<2x3xf32>` is one type, `>>` closes two
brackets), so there is no token stream: the parsers ask the cursor for what they expect next
(`expect("=")`, `match(NUMBER)`), and the cursor skips blanks and `//` comments before each
request. Every failure goes through `Cursor.error`, which builds a `ParseError` whose message holds
`line:col`, the source line and a caret under the column: the one error shape of the parser.
"""

from __future__ import annotations

import bisect
import json
import re
import warnings
from collections.abc import Callable, Iterator
from typing import TypeVar

import numpy as np

from kiln.errors import Diagnostic, KilnError, ParseError
from kiln.ir.location import Location
from kiln.ir.ops.attrs import Dense
from kiln.ir.types import DType, FixedType, QuantType, ScalarType, SparseEncoding, TensorType

T = TypeVar("T")
SCALAR_NAMES = ("f32", "f16", "bf16", "f64", "i8", "u8", "i16", "i32", "i64", "bool")

BLANK = re.compile(r"(?:[ \t\r\n\f\v]+|//[^\n]*)+")
IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
OP_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.]*")
VALUE = re.compile(r"%([A-Za-z0-9_.]+)")
BARE_SYMBOL = re.compile(r"[A-Za-z0-9_.$-]+")
NUMBER = re.compile(r"[-+]?(?:(?:\d+\.\d*|\.\d+)(?:[eE][-+]?\d+)?|\d+[eE][-+]?\d+|\d+|inf|nan)"
                    r"(?![A-Za-z0-9_.])")
INTEGER = re.compile(r"[-+]?\d+(?![A-Za-z0-9_.])")
STRING = re.compile(r'"(?:[^"\\\n]|\\.)*"')

MAX_NUMBER_CHARS = 80
"""Longer numerals are rejected: Python refuses to convert huge ints and no real IR needs one."""
EXCERPT_WIDTH = 120
"""Longer source lines are cut to this many characters around the error column."""
MAX_DEPTH = 64
"""Nesting limit (lists, regions, fused locations): hostile input cannot exhaust the stack."""
MAX_RANK = 16
"""Most dimensions a tensor type may have (NumPy allows 64; no model needs more than a few)."""
MAX_ELEMENTS = 2**31 - 1
"""Largest tensor a type may describe: generated code indexes with 32-bit ints, and a bigger
size in a file is corrupt or hostile (the frontends use the same limit)."""


class Cursor:
    """A position in the source text plus the helpers every parser function shares."""

    def __init__(self, text: str, filename: str | None = None) -> None:
        self.text = text
        self.pos = 0
        self.end = 0
        """Offset just past the last consumed token (where a missing token should have been)."""
        self.filename = filename
        self.depth = 0
        self._line_starts = [0] + [m.end() for m in re.finditer("\n", text)]

    # -- position and errors -----------------------------------------------------------------
    def line_col(self, pos: int) -> tuple[int, int]:
        """1-based line and column of a source offset."""
        line = bisect.bisect_right(self._line_starts, pos) - 1
        return line + 1, pos - self._line_starts[line] + 1

    def excerpt(self, pos: int) -> str:
        """The source line holding `pos`, and a caret under it."""
        line, col = self.line_col(pos)
        start = self._line_starts[line - 1]
        end = self.text.find("\n", start)
        source = self.text[start:] if end < 0 else self.text[start:end]
        caret = col - 1
        if len(source) > EXCERPT_WIDTH:  # a window around the column of a very long line
            start = max(0, min(caret - EXCERPT_WIDTH // 2, len(source) - EXCERPT_WIDTH))
            head = "..." if start else ""
            tail = "..." if start + EXCERPT_WIDTH < len(source) else ""
            source = head + source[start:start + EXCERPT_WIDTH] + tail
            caret += len(head) - start
        source = "".join(ch if ch.isprintable() else " " for ch in source)
        return f"{source}\n{' ' * caret}^"

    def where(self, pos: int) -> str:
        line, col = self.line_col(pos)
        return f"{self.filename}:{line}:{col}" if self.filename else f"{line}:{col}"

    def error(self, message: str, pos: int | None = None, hint: str | None = None) -> ParseError:
        """A `ParseError` at `pos` (default: the next non-blank character)."""
        if pos is None:
            self.skip()
            pos = self.pos
        pos = min(max(pos, 0), len(self.text))
        diagnostic = Diagnostic(f"{self.where(pos)}: {message}", hint=hint,
                                excerpt=self.excerpt(pos))
        return ParseError(diagnostics=[diagnostic])

    # -- scanning ----------------------------------------------------------------------------
    def skip(self) -> None:
        """Move past blanks and `//` comments."""
        m = BLANK.match(self.text, self.pos)
        if m:
            self.pos = m.end()

    def at_end(self) -> bool:
        self.skip()
        return self.pos >= len(self.text)

    def here(self) -> int:
        """Offset of the next non-blank character (what errors point at)."""
        self.skip()
        return self.pos

    def peek(self, literal: str) -> bool:
        self.skip()
        return self.text.startswith(literal, self.pos)

    def accept(self, literal: str) -> bool:
        """Consume `literal` if it comes next."""
        if self.peek(literal):
            self.pos += len(literal)
            self.end = self.pos
            return True
        return False

    def expect(self, literal: str, context: str = "") -> int:
        """Consume `literal` or fail; returns its offset."""
        pos = self.here()
        if not self.accept(literal):
            found = self.describe_next()
            where = f" {context}" if context else ""
            raise self.error(f"expected '{literal}'{where}, found {found}")
        return pos

    def match(self, regex: re.Pattern[str]) -> re.Match[str] | None:
        """Consume and return a match of `regex` at the next non-blank character."""
        self.skip()
        m = regex.match(self.text, self.pos)
        if m:
            self.pos = self.end = m.end()
        return m

    def describe_next(self) -> str:
        """A short quote of what comes next, for 'expected X, found Y' messages."""
        self.skip()
        if self.pos >= len(self.text):
            return "end of input"
        m = re.compile(r"[A-Za-z0-9_.%@^$-]+|\S").match(self.text, self.pos)
        return f"'{m.group(0)[:30]}'" if m else "a blank"

    # -- nesting -----------------------------------------------------------------------------
    def enter(self) -> None:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise self.error(f"nesting deeper than {MAX_DEPTH} levels")

    def leave(self) -> None:
        self.depth -= 1

    # -- small literals ----------------------------------------------------------------------
    def keyword(self, word: str, regex: re.Pattern[str] = IDENT) -> bool:
        """Consume `word` if the next identifier is exactly it."""
        start = self.here()
        m = self.match(regex)
        if m is not None and m.group(0) == word:
            return True
        self.pos = start
        return False

    def ident(self, what: str = "an identifier") -> str:
        m = self.match(IDENT)
        if m is None:
            raise self.error(f"expected {what}, found {self.describe_next()}")
        return m.group(0)

    def number(self) -> int | float | None:
        """An int (`-3`) or float (`0.5`, `1e-05`, `nan`, `-inf`) if one comes next."""
        pos = self.here()
        m = self.match(NUMBER)
        if m is None:
            return None
        text = m.group(0)
        if len(text) > MAX_NUMBER_CHARS:
            raise self.error("numeral too long", pos)
        if any(ch in text for ch in ".eEn"):  # fraction, exponent, inf or nan
            return float(text)
        return int(text)

    def integer(self, what: str = "an integer") -> int:
        pos = self.here()
        m = self.match(INTEGER)
        if m is None:
            raise self.error(f"expected {what}, found {self.describe_next()}")
        if len(m.group(0)) > MAX_NUMBER_CHARS:
            raise self.error("numeral too long", pos)
        return int(m.group(0))

    def string(self) -> str | None:
        """A double-quoted JSON-style string if one comes next."""
        pos = self.here()
        if not self.peek('"'):
            return None
        m = self.match(STRING)
        if m is None:
            raise self.error("unterminated string", pos)
        try:
            value = json.loads(m.group(0))
        except ValueError as exc:
            raise self.error(f"bad string literal: {exc}", pos) from None
        if not isinstance(value, str):
            raise self.error("bad string literal", pos)
        return value

    def symbol(self, what: str = "a symbol") -> str:
        """`@name` or `@"any text"`: module, function and weight names."""
        self.expect("@", f"before {what}")
        if self.text.startswith('"', self.pos):
            return self.string() or ""
        m = BARE_SYMBOL.match(self.text, self.pos)
        if m is None:
            raise self.error(f"expected {what} after '@'", self.pos)
        self.pos = self.end = m.end()
        return m.group(0)


def quote(text: str) -> str:
    """The string literal for `text` (JSON escapes, ASCII only: the text stays 7-bit clean)."""
    return json.dumps(text, ensure_ascii=True)


def format_symbol(name: str) -> str:
    """`@name`, quoted as `@"..."` when the name has characters outside `[A-Za-z0-9_.$-]`."""
    return f"@{name}" if BARE_SYMBOL.fullmatch(name) else f"@{quote(name)}"


# -- literals: types, dense tensors, locations, attribute values ---------------------------------
# Each reader parses exactly what the printer writes (`str()` of the type classes for types) and
# turns a `KilnError` from a constructor (`fixed<99,1>`) into a `ParseError` at the literal.

_DIM = re.compile(r"(\d+)[ \t]*x")
MAX_SPLAT = 1 << 24
"""Largest element count a splat `dense<v>` may expand to (it is materialized)."""


def build(c: Cursor, pos: int, ctor: Callable[..., T], *args: object) -> T:
    """`ctor(*args)`, with a `KilnError` from its validation reported at `pos`."""
    try:
        return ctor(*args)
    except KilnError as exc:
        first = exc.diagnostics[0] if exc.diagnostics else Diagnostic(str(exc))
        raise c.error(first.message, pos, first.hint) from None


def read_type(c: Cursor) -> TensorType:
    """`tensor<2x3xf32>`, `tensor<f32>`, `tensor<16x32xf32, nm<2,4>>`."""
    pos = c.here()
    if not c.keyword("tensor"):
        raise c.error(f"expected a tensor type, found {c.describe_next()}")
    return _tensor_body(c, pos)


def _tensor_body(c: Cursor, pos: int) -> TensorType:
    c.expect("<", "after 'tensor'")
    shape: list[int] = []
    count = 1
    while (m := c.match(_DIM)) is not None:
        if len(m.group(1)) > MAX_NUMBER_CHARS or len(shape) >= MAX_RANK:
            raise c.error(f"tensor types have at most {MAX_RANK} dimensions of at most "
                          f"{MAX_ELEMENTS} elements in all", m.start())
        shape.append(int(m.group(1)))
        count *= shape[-1]
    if count > MAX_ELEMENTS:
        raise c.error(f"tensor type of {count} elements is too large (at most {MAX_ELEMENTS})",
                      pos)
    dtype = read_dtype(c)
    encoding = _read_encoding(c) if c.accept(",") else None
    c.expect(">", "to close the tensor type")
    return build(c, pos, TensorType, tuple(shape), dtype, encoding)


def read_dtype(c: Cursor) -> DType:
    """`f32` ... `bool`, `fixed<16,6>` (optionally `,signed|unsigned,rounding,saturation`),
    `q<i8, 0.05, 0>` or per channel `q<i8, [0.1, 0.2], [0, 0], axis=0>`."""
    pos = c.here()
    name = c.ident("an element type")
    if name == "fixed":
        return _fixed(c, pos)
    if name == "q":
        return _quant(c, pos)
    return build(c, pos, ScalarType, name)


def _fixed(c: Cursor, pos: int) -> FixedType:
    c.expect("<", "after 'fixed'")
    width = c.integer("the fixed-point width")
    c.expect(",", "after the fixed-point width")
    integer = c.integer("the fixed-point integer bits")
    modes: list[str] = []
    while len(modes) < 3 and c.accept(","):
        modes.append(c.ident("a fixed-point mode"))
    c.expect(">", "to close the fixed-point type")
    signed = True
    if modes:
        if modes[0] not in ("signed", "unsigned"):
            raise c.error(f"expected 'signed' or 'unsigned', found '{modes[0]}'", pos)
        signed = modes[0] == "signed"
    rounding = modes[1] if len(modes) > 1 else "trn"
    saturation = modes[2] if len(modes) > 2 else "wrap"
    return build(c, pos, FixedType, width, integer, signed, rounding, saturation)


def _quant(c: Cursor, pos: int) -> QuantType:
    c.expect("<", "after 'q'")
    storage = build(c, c.here(), ScalarType, c.ident("a storage type"))
    c.expect(",", "after the storage type")
    scales = tuple(float(_real(c)) for _ in _one_or_list(c))
    c.expect(",", "after the scale")
    zero_points = tuple(c.integer("a zero point") for _ in _one_or_list(c))
    axis = None
    if c.accept(","):
        if not c.keyword("axis"):
            raise c.error(f"expected 'axis=', found {c.describe_next()}")
        c.expect("=", "after 'axis'")
        axis = c.integer("the quantization axis")
    c.expect(">", "to close the quantized type")
    return build(c, pos, QuantType, storage, scales, zero_points, axis)


def _one_or_list(c: Cursor) -> Iterator[None]:
    """Yield once per element of `x` or `[x, y, ...]`, the caller reading each element."""
    if not c.accept("["):
        yield None
        return
    yield None
    while c.accept(","):
        yield None
    c.expect("]", "to close the list")


def _real(c: Cursor) -> int | float:
    value = c.number()
    if value is None:
        raise c.error(f"expected a number, found {c.describe_next()}")
    return value


def _read_encoding(c: Cursor) -> SparseEncoding:
    pos = c.here()
    name = c.ident("a sparse encoding (csr, nm<n,m>, block<r,c>)")
    params: list[int] = []
    if c.accept("<"):
        params.append(c.integer("an encoding parameter"))
        while c.accept(","):
            params.append(c.integer("an encoding parameter"))
        c.expect(">", "to close the sparse encoding")
    return build(c, pos, SparseEncoding, name, tuple(params))


def read_dense(c: Cursor) -> Dense:
    """After `dense`: `<[1.0, 2.0]> : tensor<2xf32>` or the splat `<0.5> : tensor<2x2xf32>`."""
    c.expect("<", "after 'dense'")
    values_pos = c.here()
    splat = not c.accept("[")
    values: list[int | float | bool] = [_element(c)] if splat else []
    fast = None if splat else _fast_elements(c)
    if fast is not None:
        values = fast
    elif not splat and not c.accept("]"):
        values.append(_element(c))
        while c.accept(","):
            values.append(_element(c))
        c.expect("]", "to close the dense values")
    c.expect(">", "to close the dense literal")
    c.expect(":", "before the type of the dense literal")
    type_pos = c.here()
    return _dense_array(c, values, splat, read_type(c), values_pos, type_pos)


_LIST_BODY = re.compile(r"[^\]]*\]")
_ELEMENT = re.compile(r"[ \t\r\n]*(?:(true)|(false)|(" + NUMBER.pattern + r"))[ \t\r\n]*")


def _fast_elements(c: Cursor) -> list[int | float | bool] | None:
    """After `[`: a plain list of numbers up to `]`, read in bulk (large constants); None when
    anything is unusual, and the careful element-by-element path then reports the error."""
    m = _LIST_BODY.match(c.text, c.pos)
    if m is None:
        return None
    body = c.text[c.pos:m.end() - 1]
    if not body.strip():
        c.pos = c.end = m.end()
        return []
    values: list[int | float | bool] = []
    for item in body.split(","):
        e = _ELEMENT.fullmatch(item)
        if e is None or len(item) > MAX_NUMBER_CHARS + 16:
            return None
        text = e.group(3)
        if text is None:
            values.append(e.group(1) is not None)
        else:
            values.append(float(text) if any(ch in text for ch in ".eEn") else int(text))
    c.pos = c.end = m.end()
    return values


def _element(c: Cursor) -> int | float | bool:
    if c.keyword("true"):
        return True
    if c.keyword("false"):
        return False
    return _real(c)


def _dense_array(c: Cursor, values: list[int | float | bool], splat: bool, type: TensorType,
                 values_pos: int, type_pos: int) -> Dense:
    dtype = type.dtype
    if not isinstance(dtype, ScalarType) or dtype.name == "bf16" or type.encoding is not None:
        raise c.error(f"dense literals hold f16, f32, f64, integer or bool elements, not {dtype}",
                      type_pos)
    count = type.numel
    if splat and count > MAX_SPLAT:
        raise c.error(f"splat literal of {count} elements is too large", type_pos)
    if not splat and len(values) != count:
        raise c.error(f"dense literal has {len(values)} values but {type} holds {count}",
                      values_pos)
    for value in values[:1] if splat else values:
        problem = _element_problem(value, dtype)
        if problem:
            raise c.error(f"{problem} in a dense literal of {type}", values_pos)
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if splat:
            array = np.full(type.shape, values[0], dtype=dtype.numpy)
        else:
            array = np.array(values, dtype=dtype.numpy).reshape(type.shape)
    return Dense.of(array)


def _element_problem(value: int | float | bool, dtype: ScalarType) -> str | None:
    if dtype.name == "bool":
        return None if isinstance(value, bool) else f"{value!r} is not true/false"
    if isinstance(value, bool):
        return f"{'true' if value else 'false'} is not a number"
    if dtype.is_float:
        return None
    if not isinstance(value, int):
        return f"{value!r} is not an integer"
    info = np.iinfo(dtype.numpy)
    return None if info.min <= value <= info.max else f"{value} is out of range of {dtype}"


def read_location(c: Cursor) -> Location:
    """After `loc`: `("net.py":14 "layer1.conv")`; see `kiln.ir.printer` for the grammar."""
    c.expect("(", "after 'loc'")
    loc = Location() if c.peek(")") else _loc_body(c)
    c.expect(")", "to close the location")
    return loc


def _loc_body(c: Cursor) -> Location:
    pos = c.here()
    if c.keyword("unknown"):
        return Location()
    file: str | None = None
    line: int | None = None
    scope: str | None = None
    found = False
    if c.accept("?"):
        c.expect(":", "after '?' (a location without file)")
        line, found = _line(c), True
    elif c.peek('"'):
        text = c.string()
        if c.accept(":"):
            file, line = text, _line(c)
        else:
            scope = text
        found = True
    if scope is None and c.peek('"'):
        scope, found = c.string(), True
    fused: tuple[Location, ...] = ()
    if c.keyword("fused"):
        fused, found = _fused(c), True
    if not found:
        raise c.error(f"expected a location, found {c.describe_next()}", pos)
    return Location(file, line, scope, fused)


def _line(c: Cursor) -> int | None:
    return None if c.accept("?") else c.integer("a line number or '?'")


def _fused(c: Cursor) -> tuple[Location, ...]:
    c.expect("[", "after 'fused'")
    c.enter()
    items: list[Location] = []
    if not c.accept("]"):
        items.append(_loc_body(c))
        while c.accept(","):
            items.append(_loc_body(c))
        c.expect("]", "to close the fused location list")
    c.leave()
    return tuple(items)


_WORDS: dict[str, object] = {"true": True, "false": False, "none": None}


def read_attr_value(c: Cursor) -> object:
    """One attribute value, by its syntax alone: int, float, bool, none, string, `[...]` (as a
    tuple), an element type, a tensor type or a dense literal. The op's field annotation then
    decides whether it fits (`kiln.ir.parser`)."""
    pos = c.here()
    text = c.string()
    if text is not None:
        return text
    if c.accept("["):
        return _attr_list(c)
    number = c.number()
    if number is not None:
        return number
    m = c.match(IDENT)
    if m is None:
        raise c.error(f"expected an attribute value, found {c.describe_next()}")
    word = m.group(0)
    if word in _WORDS:
        return _WORDS[word]
    if word == "tensor":
        return _tensor_body(c, pos)
    if word == "dense":
        return read_dense(c)
    c.pos = pos
    if word in ("fixed", "q") or word in SCALAR_NAMES:
        return read_dtype(c)
    raise c.error(f"expected an attribute value, found '{word}'", pos,
                  hint="values are numbers, true/false, none, \"strings\", [lists], "
                       "element types, tensor<...> types or dense<...> literals")


def _attr_list(c: Cursor) -> tuple[object, ...]:
    c.enter()
    items: list[object] = []
    if not c.accept("]"):
        items.append(read_attr_value(c))
        while c.accept(","):
            items.append(read_attr_value(c))
        c.expect("]", "to close the list")
    c.leave()
    return tuple(items)

"""Fuzzing the text IR: mutated `.kir` text (and `.npz` weights) only ever raise `KilnError`.

The corpus is the printed IR of bundled models (`kiln.trace(model).to_text()`); hypothesis
mutates it with byte flips, deletions, duplications, token swaps and inserted hostile snippets
(deep nesting, huge numerals and shapes, NUL bytes, quotes), then `kiln.parse` (lexer, parser
and verifier) and `kiln.load` (the same plus the weights archive) must either succeed or raise a
`KilnError`: never another exception, never a hang (a hard per-example alarm besides
hypothesis's deadline), never a blown Python stack. The profile is derandomized and
database-free, so CI sees the same examples every run; `bench/fuzz_parser.py` runs the same
mutators for as long as one likes.
"""

from __future__ import annotations

import re
import signal
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import kiln
from kiln.errors import KilnError, ParseError, VerifyError
from kiln.ir.lexer import MAX_DEPTH, MAX_ELEMENTS, MAX_RANK
from kiln.models import example_inputs, get_model

CORPUS_MODELS = ("digits_mlp", "resnet8", "transformer_layer")
TOKEN = re.compile(r"%[A-Za-z0-9_.]+|@[A-Za-z0-9_.$-]+|[A-Za-z_][A-Za-z0-9_.]*|\d+|\S")
SNIPPETS = ("[" * 200, "{" * 200, "(" * 200, "tensor<" * 100, "fused[" * 100,
            "({ ^bb0(%q: tensor<2xf32>): " * 70, "9" * 200, "1" * 79, "nan", "-inf", "\x00",
            '"', "\\", "é", "\ud7ff", "x" * 5000, "%", "@", "kiln.fused", "dense<", ">>",
            "tensor<4294967296x4294967296xf32>", "tensor<" + "1x" * 40 + "f32>", "loc(",
            "kiln.weight @w : tensor<2147483647xf32>", "}")
PROFILE = settings(max_examples=250, deadline=2000, derandomize=True, database=None,
                   suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
ALARM_SECONDS = 20


@cache
def corpus() -> tuple[tuple[str, dict[str, np.ndarray]], ...]:
    out = []
    for name in CORPUS_MODELS:
        module = kiln.trace(get_model(name), example_inputs(name))
        out.append((module.to_text(), dict(module.weights)))
    return tuple(out)


@pytest.fixture(scope="module")
def texts() -> tuple[tuple[str, dict[str, np.ndarray]], ...]:
    """The corpus, traced before hypothesis starts timing examples."""
    return corpus()


@contextmanager
def alarm(seconds: int = ALARM_SECONDS) -> Iterator[None]:
    """Fail (instead of hanging the suite) if the body runs longer than `seconds`."""
    def expired(signum: int, frame: object) -> None:
        raise TimeoutError(f"parsing took more than {seconds} s: a hang")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


# -- mutators (shared with bench/fuzz_parser.py) ---------------------------------------------------
def mutate(text: str, draw: st.DrawFn) -> str:
    """One to four edits of one kind, positions drawn by hypothesis."""
    kind = draw(st.sampled_from(["flip", "delete", "duplicate", "swap", "insert"]))
    for _ in range(draw(st.integers(1, 4))):
        text = EDITS[kind](text, draw)
    return text


def _position(text: str, draw: st.DrawFn) -> int:
    return draw(st.integers(0, max(len(text) - 1, 0)))


def _flip(text: str, draw: st.DrawFn) -> str:
    data = bytearray(text.encode("utf-8"))
    if not data:
        return text
    data[_position(text, draw) % len(data)] = draw(st.integers(0, 255))
    return data.decode("utf-8", errors="replace")


def _delete(text: str, draw: st.DrawFn) -> str:
    i = _position(text, draw)
    return text[:i] + text[i + draw(st.integers(1, 64)):]


def _duplicate(text: str, draw: st.DrawFn) -> str:
    i = _position(text, draw)
    j = min(len(text), i + draw(st.integers(1, 200)))
    return text[:j] + text[i:j] + text[j:]


def _swap(text: str, draw: st.DrawFn) -> str:
    tokens = list(TOKEN.finditer(text))
    if len(tokens) < 2:
        return text
    a = tokens[draw(st.integers(0, len(tokens) - 1))]
    b = tokens[draw(st.integers(0, len(tokens) - 1))]
    if a.start() > b.start():
        a, b = b, a
    if a.end() > b.start():
        return text
    return (text[:a.start()] + b.group() + text[a.end():b.start()] + a.group()
            + text[b.end():])


def _insert(text: str, draw: st.DrawFn) -> str:
    i = _position(text, draw)
    return text[:i] + draw(st.sampled_from(SNIPPETS)) + text[i:]


EDITS = {"flip": _flip, "delete": _delete, "duplicate": _duplicate, "swap": _swap,
         "insert": _insert}


def _mutate_npz(data: bytes, draw: st.DrawFn) -> bytes:
    out = bytearray(data)
    for _ in range(draw(st.integers(1, 3))):
        i = draw(st.integers(0, len(out) - 1))
        if draw(st.booleans()):
            out[i] = draw(st.integers(0, 255))
        else:
            del out[i:i + draw(st.integers(1, 32))]
        if not out:
            break
    return bytes(out)


# -- the fuzz tests --------------------------------------------------------------------------------
def test_errors_of_the_text_ir_are_kiln_errors() -> None:
    assert issubclass(ParseError, KilnError) and issubclass(VerifyError, KilnError)


@PROFILE
@given(st.data())
def test_mutated_text_parses_or_raises_kiln_error(
        texts: tuple[tuple[str, dict[str, np.ndarray]], ...], data: st.DataObject) -> None:
    text, weights = data.draw(st.sampled_from(texts))
    mutated = mutate(text, data.draw)
    with_weights = data.draw(st.booleans())
    with alarm():
        try:
            module = kiln.parse(mutated, weights if with_weights else None)
        except KilnError as exc:
            assert str(exc)  # a message, never an empty error
            return
    module.to_text()  # whatever parses, prints


@settings(PROFILE, max_examples=120)
@given(st.data())
def test_mutated_files_load_or_raise_kiln_error(
        texts: tuple[tuple[str, dict[str, np.ndarray]], ...], data: st.DataObject) -> None:
    text, weights = data.draw(st.sampled_from(texts))
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "model.kir"
        kiln.parse(text, weights).save(path)
        npz = path.with_suffix(".npz")
        target = data.draw(st.sampled_from(["kir", "npz", "both"]))
        if target in ("kir", "both"):
            path.write_bytes(mutate(text, data.draw).encode("utf-8", errors="surrogatepass"))
        if target in ("npz", "both"):
            npz.write_bytes(_mutate_npz(npz.read_bytes(), data.draw))
        with alarm():
            try:
                kiln.load(path)
            except KilnError as exc:
                assert str(exc)


# -- targeted hostile inputs -----------------------------------------------------------------------
HEAD = "kiln.module @m {\n  kiln.func @f(%x: tensor<2x2xf32>) -> tensor<2x2xf32> {\n"
TAIL = "    kiln.return %y\n  }\n}\n"


def _region_chain(depth: int) -> str:
    opens = "".join(f"%r{i} = kiln.fused(%{'x' if i == 0 else f'a{i}'}) "
                    f"({{ ^bb0(%a{i + 1}: tensor<2x2xf32>): " for i in range(depth))
    return opens


@pytest.mark.parametrize("body", [
    "%y = kiln.transpose(%x) {perm = " + "[" * 100_000 + "0" + "]" * 100_000 + "} : "
    "tensor<2x2xf32>",
    "%y = kiln.relu(%x) : tensor<2x2xf32> loc(" + "fused[" * 100_000,
    _region_chain(2_000),
], ids=["attribute_lists", "fused_locations", "regions"])
def test_deep_nesting_is_refused_without_recursion(body: str) -> None:
    with alarm(), pytest.raises(ParseError, match=f"nesting deeper than {MAX_DEPTH} levels"):
        kiln.parse(HEAD + "    " + body + "\n" + TAIL)


@pytest.mark.parametrize("type_text, match", [
    ("tensor<1099511627776x1099511627776xf32>", "too large"),
    ("tensor<" + "9" * 79 + "xf32>", "too large"),
    ("tensor<" + "9" * 500 + "xf32>", "at most"),
    ("tensor<" + "1x" * (MAX_RANK + 1) + "f32>", f"at most {MAX_RANK} dimensions"),
    (f"tensor<{MAX_ELEMENTS + 1}xf32>", "too large"),
])
def test_absurd_tensor_types_are_refused(type_text: str, match: str) -> None:
    text = HEAD + f"    %y = kiln.relu(%x) : {type_text}\n" + TAIL
    with pytest.raises(ParseError, match=match):
        kiln.parse(text)


def test_huge_weight_type_is_refused_before_allocation() -> None:
    text = (HEAD + "    %w = kiln.weight @w : tensor<65536x65536xf32>\n"
            "    %y = kiln.relu(%x) : tensor<2x2xf32>\n" + TAIL)
    with pytest.raises(ParseError, match="too large"):
        kiln.parse(text)


def test_splat_and_numerals() -> None:
    splat = HEAD + ("    %c = kiln.constant {value = dense<1.0> : tensor<65536x1024xf32>} : "
                    "tensor<65536x1024xf32>\n    %y = kiln.relu(%x) : tensor<2x2xf32>\n" + TAIL)
    with pytest.raises(ParseError, match="splat literal of 67108864 elements is too large"):
        kiln.parse(splat)
    numeral = HEAD + "    %y = kiln.leaky_relu(%x) {slope = 1" + "0" * 200 + "} : " \
        "tensor<2x2xf32>\n" + TAIL
    with pytest.raises(ParseError, match="numeral too long"):
        kiln.parse(numeral)


@pytest.mark.parametrize("data", [b"\xff\xfe\x00kiln", b"kiln.module @m {\xc3\x28}", b""])
def test_undecodable_or_empty_files(data: bytes, tmp_path: Path) -> None:
    path = tmp_path / "bad.kir"
    path.write_bytes(data)
    with pytest.raises(KilnError):
        kiln.load(path)


def test_parse_takes_text_only() -> None:
    with pytest.raises(KilnError, match="takes the IR text as str"):
        kiln.parse(b"kiln.module @m {}")  # type: ignore[arg-type]


def test_weights_archive_with_a_pickle_is_refused(tmp_path: Path) -> None:
    module = kiln.parse(HEAD + "    %y = kiln.relu(%x) : tensor<2x2xf32>\n" + TAIL)
    module.save(tmp_path / "m.kir")
    np.savez(tmp_path / "m.npz", w=np.array([{"evil": 1}], dtype=object))
    with pytest.raises(KilnError, match="cannot read weights"):
        kiln.load(tmp_path / "m.kir")


def test_weights_that_disagree_with_their_types(tmp_path: Path) -> None:
    text = (HEAD + "    %w = kiln.weight @w : tensor<2x2xf32>\n"
            "    %y = kiln.add(%x, %w) : tensor<2x2xf32>\n" + TAIL)
    (tmp_path / "m.kir").write_text(text)
    np.savez(tmp_path / "m.npz", w=np.ones((3, 2), np.float32))
    with pytest.raises(ParseError, match=r"weight @w is float32\[3, 2\] but its type"):
        kiln.load(tmp_path / "m.kir")
    np.savez(tmp_path / "m.npz", v=np.ones((2, 2), np.float32))
    with pytest.raises(ParseError, match="weight @w is not among the given weights"):
        kiln.load(tmp_path / "m.kir")

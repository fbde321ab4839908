"""The shared code-generation helpers: the code writer and the identifier sanitizer."""

from __future__ import annotations

import re

import pytest

from kiln.codegen.names import C_KEYWORDS, Namer, c_prefix, comment, file_name, identifier
from kiln.codegen.writer import CodeWriter

HOSTILE = [
    '"; system("rm -rf /"); //',
    "*/ system(1); /*",
    "a\\\nb",
    "??/ trigraph",
    "line\nbreak",
    "",
    "123abc",
    "int",
    "kiln_sgemm",
    "__reserved",
    "é unicode ✓",
    "x" * 300,
]


def test_writer_blocks_indent_and_close() -> None:
    w = CodeWriter()
    w.line("int f(void);")
    with w.block("for (int i = 0; i < n; ++i)"):
        w.line("x[i] = 0;")
        with w.block("if (y)"):
            w.line("z();")
    with w.block(""):
        w.line("scoped();")
    w.blank()
    w.blank()
    assert w.text() == (
        "int f(void);\n"
        "for (int i = 0; i < n; ++i) {\n"
        "    x[i] = 0;\n"
        "    if (y) {\n"
        "        z();\n"
        "    }\n"
        "}\n"
        "{\n"
        "    scoped();\n"
        "}\n")


@pytest.mark.parametrize("hint", HOSTILE)
def test_identifiers_are_plain_c(hint: str) -> None:
    name = identifier(hint)
    assert re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", name), name
    assert len(name) <= 48


@pytest.mark.parametrize("hint", HOSTILE)
def test_namer_gives_safe_unique_names(hint: str) -> None:
    namer = Namer()
    first, second = namer.name(hint), namer.name(hint)
    for name in (first, second):
        assert re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", name)
        assert name not in C_KEYWORDS
    assert first != second


def test_namer_is_readable_deterministic_and_keyed() -> None:
    namer = Namer()
    assert namer.name("layer1.0.conv1") == "layer1_0_conv1"
    assert namer.name("conv1_out") == "conv1_out"
    assert namer.name("x") == "v_x"              # single letters belong to generated loops
    assert namer.name("int") == "v_int"          # keywords
    assert namer.name("sqrtf") == "v_sqrtf"      # libm names a kernel calls
    assert namer.name("kiln_sgemm") == "v_kiln_sgemm"  # the runtime's prefix
    assert namer.name("in0") == "v_in0"          # the C API's argument names
    assert namer.name("w", prefix="w_") == "w_w"
    key = object()
    assert namer.name("a.b", key=key) == namer.name("other", key=key) == "a_b"


def test_namer_order_decides_suffixes() -> None:
    one, two = Namer(), Namer()
    names1 = [one.name(h) for h in ("a.b", "a_b", "a b")]
    names2 = [two.name(h) for h in ("a.b", "a_b", "a b")]
    assert names1 == names2 == ["a_b", "a_b_2", "a_b_3"]


@pytest.mark.parametrize("hint", HOSTILE)
def test_comments_cannot_escape(hint: str) -> None:
    text = comment(hint)
    for bad in ("*/", "/*", "\\", "\n", "??", '"', ";"):
        assert bad not in text


@pytest.mark.parametrize("hint", HOSTILE)
def test_file_names_and_prefixes_are_safe(hint: str) -> None:
    assert re.fullmatch(r"[A-Za-z0-9_-]+\.c", file_name(hint, ".c"))
    prefix = c_prefix(hint)
    assert re.fullmatch(r"[a-z][a-z0-9_]*", prefix)
    assert not prefix.startswith("kiln")

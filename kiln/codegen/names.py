"""Identifiers, comments and file names in generated code, derived safely from model names.

Every identifier a code generator writes comes from here. Model names (module names, value
names, weight symbols, source file paths) are user input: a node called `"; system("rm -rf /")`
must never become code. `Namer.name` reduces a hint to `[A-Za-z0-9_]`, keeps it readable
(`layer1.0.conv1` → `layer1_0_conv1`), steers clear of keywords, of names the generated code or
its runtime use, and of each other (`_2`, `_3` ... in first-come order, so the same model always
gets the same names). `comment` whitelists the characters allowed inside a `/* */` comment, so no
`*/`, trigraph or line splice can escape it.
"""

from __future__ import annotations

import re

C_KEYWORDS = frozenset({
    "auto", "break", "case", "char", "const", "continue", "default", "do", "double", "else",
    "enum", "extern", "float", "for", "goto", "if", "inline", "int", "long", "register",
    "restrict", "return", "short", "signed", "sizeof", "static", "struct", "switch", "typedef",
    "union", "unsigned", "void", "volatile", "while", "_Bool", "_Complex", "_Imaginary", "asm",
    "typeof", "bool", "true", "false", "alignas", "alignof", "static_assert", "thread_local",
    "nullptr", "constexpr",
})
"""C99 keywords, C11/C23 additions and common GNU spellings (names must work with any -std)."""

C_LIBRARY = frozenset({
    "main", "abs", "exp", "expf", "log", "logf", "sqrt", "sqrtf", "pow", "powf", "fabs",
    "fabsf", "fmax", "fmaxf", "fmin", "fminf", "floor", "floorf", "ceil", "ceilf", "round",
    "roundf", "tanh", "tanhf", "erf", "erff", "sin", "cos", "tan", "NAN", "INFINITY",
    "HUGE_VAL", "memcpy", "memset", "memmove", "malloc", "calloc", "realloc", "free", "printf",
    "fprintf", "sprintf", "snprintf", "puts", "fopen", "fclose", "fread", "fwrite", "stdin",
    "stdout", "stderr", "exit", "size_t", "ptrdiff_t", "uint8_t", "uint32_t", "uint64_t",
    "int8_t", "int32_t", "int64_t", "uintptr_t", "NULL", "errno", "assert", "offsetof", "FILE",
    "EOF",
})
"""Library names the generated code and its runtime refer to; a value may not shadow them."""

RESERVED_PREFIXES = ("kiln", "KILN", "_", "k_", "w_", "v_")
"""Prefixes the generators keep for themselves (runtime, kernels, parameters, renamed values)."""

GENERATED_LOCALS = frozenset({
    "arena", "weights", "wts", "acc", "row", "col", "blk", "tile", "scratch", "rc", "lo", "hi",
    "bias", "src", "dst", "shape",
})
"""Fixed local names generated code uses besides the single-letter ones below."""

_LOCAL_RE = re.compile(r"^([a-z][0-9]*|(in|out)[0-9]+)$")
"""Generated code's own variables: one letter plus digits (`i0`, `t3`, `p`) and the API
arguments `in0`, `out1`."""

_INVALID = re.compile(r"[^A-Za-z0-9_]+")
_COMMENT_INVALID = re.compile(r"[^A-Za-z0-9_.:,\[\] +=<>/-]")

MAX_LENGTH = 48
"""Long enough to stay readable, short enough for every C compiler's significant length."""


def identifier(hint: str | None, fallback: str = "v") -> str:
    """`hint` reduced to a C identifier: invalid runs become `_`, a leading digit gets `v`."""
    text = _INVALID.sub("_", hint or "").strip("_")
    text = re.sub(r"_+", "_", text)[:MAX_LENGTH].rstrip("_")
    if not text:
        text = fallback
    if text[0].isdigit():
        text = "v" + text
    return text


def is_reserved(name: str) -> bool:
    return (name in C_KEYWORDS or name in C_LIBRARY or name in GENERATED_LOCALS
            or name.startswith(RESERVED_PREFIXES) or bool(_LOCAL_RE.match(name)))


class Namer:
    """Hands out unique, deterministic identifiers in one namespace."""

    def __init__(self, reserved: frozenset[str] = frozenset()) -> None:
        self._taken: set[str] = set(reserved)
        self._by_key: dict[object, str] = {}

    def name(self, hint: str | None, *, key: object = None, prefix: str = "") -> str:
        """A fresh identifier for `hint`; asking again with the same `key` returns the same one.

        `prefix` (`k_` for kernels, `w_` for parameters) marks a generator-owned namespace; it is
        added after sanitizing, so a model name can never forge one.
        """
        if key is not None and key in self._by_key:
            return self._by_key[key]
        base = identifier(hint)
        if not prefix and is_reserved(base):
            base = "v_" + base
        base = prefix + base
        unique, n = base, 2
        while unique in self._taken or unique in C_KEYWORDS:
            unique, n = f"{base}_{n}", n + 1
        self._taken.add(unique)
        if key is not None:
            self._by_key[key] = unique
        return unique

    def reserve(self, name: str) -> None:
        self._taken.add(name)


def comment(text: str | None, limit: int = 120) -> str:
    """Text safe inside `/* ... */`: whitelisted characters only (no `*`, `\\`, `?`, quotes,
    newlines; parentheses become brackets, so not even a comment reads like a call)."""
    text = (text or "").translate(str.maketrans("()", "[]"))
    return _COMMENT_INVALID.sub("_", text)[:limit].strip()


def file_name(hint: str | None, suffix: str = "", fallback: str = "model") -> str:
    """A portable file name (`[A-Za-z0-9_-]`, no dots or slashes, so no path escapes)."""
    text = re.sub(r"[^A-Za-z0-9_-]+", "_", hint or "").strip("_-")[:MAX_LENGTH]
    return (text or fallback) + suffix


def c_prefix(model_name: str | None) -> str:
    """The lower-case symbol prefix of a model's C API (`LeNet5` → `lenet5`)."""
    base = identifier(model_name, fallback="model").lower()
    if base in C_KEYWORDS or base in C_LIBRARY or base.startswith(("kiln", "_")):
        base = "model_" + base
    return base

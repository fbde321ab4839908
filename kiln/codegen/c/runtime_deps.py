"""Which runtime sources a generated model links: the ones defining functions it calls.

A model built from an empty cache used to compile every runtime file (~12, 6 s on two cores
for ResNet-8) though a float32 CNN calls into four or five of them. The generated code says
what it needs by the functions it calls, so the selection reads it like a linker reads
objects: every runtime `.c` file defines some external `kiln_*` functions; `model.c` needs
the files defining the functions it names, and those files need the files defining what they
name, to a fixed point. Header code (static inline functions, which every file may use)
counts as named by everyone. Nothing has to be declared by hand, so a new runtime file is
selected as soon as it is in the runtime list, and a kernel emitter cannot forget to say what
it calls. A selection that missed a file would fail to link (the cpu target links with
`--no-undefined`); one that takes a file too many only costs its compile.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

_COMMENT = re.compile(r"/\*.*?\*/|//[^\n]*", re.S)
_DEFINITION = re.compile(
    r"^(?!typedef\b|extern\b|#)([A-Za-z_][\w \t*]*?)\b(kiln_\w+)\s*\([^;{]*\)\s*\{", re.M)
"""A function definition at file scope: a line starting with its return type, the name, the
parameter list (possibly over several lines), then the body's brace."""
_STATIC_MACRO = re.compile(r"^\s*#\s*define\s+(\w+)[ \t][^\n]*\bstatic\b", re.M)
"""A macro standing for `static ...` (`KILN_INLINE` and file-local variants of it)."""
_IDENT = re.compile(r"\bkiln_\w+\b")


def strip_comments(text: str) -> str:
    """C text without its comments (a name in a comment is not a call)."""
    return _COMMENT.sub(" ", text)


def static_macros(*texts: str) -> frozenset[str]:
    """Names of the macros in `texts` whose expansion makes a definition `static`."""
    return frozenset(name for text in texts for name in _STATIC_MACRO.findall(text))


def defined_functions(source: str, local: frozenset[str] = frozenset()) -> frozenset[str]:
    """The external `kiln_*` functions a runtime `.c` file defines: not `static`, nor
    declared through a macro meaning `static` (its own ones, or those named in `local`)."""
    words = {"static", "inline", *local, *static_macros(source)}
    return frozenset(name for prefix, name in _DEFINITION.findall(strip_comments(source))
                     if words.isdisjoint(prefix.split()))


def _header_bodies(header: str) -> str:
    """The text inside braces of a header (inline function bodies, where calls are)."""
    out, depth = [], 0
    for char in strip_comments(header):
        if char == "}":
            depth -= 1
        if depth > 0:
            out.append(char)
        if char == "{":
            depth += 1
    return "".join(out)


def linked_sources(model_c: str, runtime: Mapping[str, str]) -> tuple[str, ...]:
    """The runtime `.c` files (names in `runtime`, sorted) that `model_c` needs, directly or
    through other runtime files or header code."""
    sources = sorted(name for name in runtime if name.endswith(".c"))
    local = static_macros(*(text for name, text in runtime.items() if name.endswith(".h")))
    owner = {fn: name for name in sources for fn in defined_functions(runtime[name], local)}
    headers = " ".join(_header_bodies(text) for name, text in runtime.items()
                       if name.endswith(".h"))
    needed: set[str] = set()
    pending = [strip_comments(model_c), headers]
    while pending:
        text = pending.pop()
        for ident in set(_IDENT.findall(text)):
            name = owner.get(ident)
            if name is not None and name not in needed:
                needed.add(name)
                pending.append(strip_comments(runtime[name]))
    return tuple(name for name in sources if name in needed)

"""Parts of kiln's C runtime built by hand, for kernel-level tests that call runtime functions
through ctypes or link them into a harness.

Which `.c` files to build is asked of `runtime_deps.linked_sources` (the same walk a model's
build uses) from the names of the functions a test calls, so a kernel moving to another file
or gaining a dependency needs no edit in each test's hand-kept source list.
"""

from __future__ import annotations

from pathlib import Path

from kiln.codegen.c.emitter import RUNTIME_HEADERS, runtime_sources
from kiln.codegen.c.runtime_deps import linked_sources
from kiln.targets.toolchains import gcc


def copy_runtime(work: Path, *functions: str) -> list[str]:
    """Every runtime header and the runtime sources that calling `functions` links, written
    into `work`; returns the sources' names."""
    runtime = runtime_sources()
    sources = list(linked_sources(" ".join(f"{fn}();" for fn in functions), runtime))
    for name in (*RUNTIME_HEADERS, *sources):
        (work / name).write_text(runtime[name])
    return sources


def build_runtime_library(work: Path, march: str, *functions: str) -> Path:
    """A shared library of the runtime sources `functions` need, built warning-free (-Werror)
    for `march` with every symbol visible; its path."""
    sources = copy_runtime(work, *functions)
    flags = [*gcc.flags(march, 1, False), "-Werror", "-fvisibility=default"]
    return gcc.compile_c(gcc.find("gcc"), work, sources, "libtest.so", flags, shared=True)


def build_sanitized_harness(work: Path, harness: str, *functions: str) -> Path:
    """`harness` (C source with a main) linked with the runtime sources `functions` need, built
    for this machine with AddressSanitizer and UBSan (-Werror); the executable's path."""
    sources = copy_runtime(work, *functions)
    (work / "harness.c").write_text(harness)
    flags = [*gcc.flags("native", 1, True), "-Werror"]
    return gcc.compile_c(gcc.find("gcc"), work, [*sources, "harness.c"], "harness", flags,
                         shared=False)


__all__ = ["build_runtime_library", "build_sanitized_harness", "copy_runtime"]

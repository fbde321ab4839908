"""GCC (or any gcc-compatible C compiler): find it, ask it about the machine, run it.

Every compile keeps its log (the command line, then the compiler's output); a failing compile
is a `CompileError` naming the log file. The machine probe (`vector_width`) reads the
compiler's predefined macros for the requested `-march`, which is also what decides the GEMM
tile the code generator packs weights for.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from kiln.errors import KilnError

BASE_FLAGS = ("-std=c99", "-O3", "-ffp-contract=fast", "-fno-math-errno", "-Wall", "-Wextra")
SANITIZE_FLAGS = ("-O1", "-fsanitize=address,undefined", "-fno-sanitize-recover=all",
                  "-fno-omit-frame-pointer", "-g")
"""Sanitized builds are for finding bugs, not speed: -O1 (after -O3, so it wins) keeps them
quick to compile."""
TIMEOUT_S = 600


class CompileError(KilnError):
    """The C compiler failed; `log` is the file with its command line and output."""

    def __init__(self, message: str, log: Path) -> None:
        self.log = log
        super().__init__(message, hint=f"the compiler log is {log}")


@dataclass(frozen=True)
class Toolchain:
    """A C compiler: its path and the version line that goes into cache keys."""

    cc: str
    version: str


def find(cc: str = "gcc") -> Toolchain:
    """The compiler called `cc` on PATH (or at that path); a clear error when missing."""
    path = shutil.which(cc)
    if path is None:
        raise KilnError(f"the C compiler '{cc}' was not found, so the cpu target cannot build",
                        hint="install gcc (e.g. `apt-get install gcc`), or pass cc='...' "
                             "naming another gcc-compatible compiler")
    return Toolchain(path, _version(path))


@functools.lru_cache(maxsize=8)
def _version(path: str) -> str:
    """`cc --version`'s first line and `-dumpfullversion` (a memo of a pure query)."""
    first = _run([path, "--version"]).stdout.splitlines()[:1]
    full = _run([path, "-dumpfullversion"]).stdout.strip()
    return " ".join([*first, full]).strip()


@functools.lru_cache(maxsize=8)
def _macros(path: str, march: str) -> frozenset[str]:
    result = _run([path, f"-march={march}", "-dM", "-E", "-x", "c", "-"], stdin="")
    if result.returncode != 0:
        raise KilnError(f"the C compiler rejects -march={march}",
                        hint=result.stderr.strip()[-300:] or "use march='native'")
    return frozenset(line.split()[1] for line in result.stdout.splitlines()
                     if line.startswith("#define "))


def vector_width(toolchain: Toolchain, march: str) -> int:
    """Float lanes of the widest vector unit `-march=<march>` enables (16, 8 or 4)."""
    macros = _macros(toolchain.cc, march)
    if "__AVX512F__" in macros:
        return 16
    if "__AVX__" in macros:
        return 8
    return 4


def flags(march: str, threads: int, sanitize: bool) -> list[str]:
    """Compile flags for generated code (warnings on: generated code must be clean). Symbols
    are hidden but for the model's API (`<MODEL>_API` in model.h), so libraries of several
    models never bind to each other's runtime."""
    out = [*BASE_FLAGS, f"-march={march}", "-fvisibility=hidden"]
    if threads > 1:
        out.append("-fopenmp")
    if sanitize:
        out += SANITIZE_FLAGS
    return out


def compile_c(toolchain: Toolchain, workdir: Path, sources: Sequence[str], output: str,
              flag_list: Sequence[str], *, shared: bool, log_name: str = "build.log") -> Path:
    """Compile and link `sources` (files in `workdir`, or objects anywhere) into
    `workdir/output`; the log goes beside it."""
    cmd = [toolchain.cc, *flag_list, *(["-shared", "-fPIC"] if shared else []), "-o", output,
           *sources, "-lm"]
    result = _run(cmd, cwd=workdir)
    log = workdir / log_name
    log.write_text(" ".join(cmd) + "\n\n" + result.stdout + result.stderr)
    if result.returncode != 0:
        first = next((line for line in result.stderr.splitlines() if "error" in line), "")
        raise CompileError(f"{Path(toolchain.cc).name} failed to build {output}"
                           + (f": {first.strip()}" if first else ""), log)
    return workdir / output


def compile_objects(toolchain: Toolchain, workdir: Path, sources: Sequence[str],
                    flag_list: Sequence[str], log_name: str = "build.log") -> list[Path]:
    """Compile each of `sources` (in `workdir`) to a position-independent object beside it:
    one compiler process per file, as many at once as the machine has CPUs (the runtime's
    files take 0.1-3 s each; one after another they were most of a cold build)."""
    cmds = [[toolchain.cc, *flag_list, "-fPIC", "-c", source] for source in sources]
    with ThreadPoolExecutor(max_workers=max(1, min(len(cmds), os.cpu_count() or 1))) as pool:
        results = list(pool.map(lambda cmd: _run(cmd, cwd=workdir), cmds))
    log = workdir / log_name
    log.write_text("".join(" ".join(cmd) + "\n\n" + r.stdout + r.stderr + "\n"
                           for cmd, r in zip(cmds, results)))
    failed = [(s, r) for s, r in zip(sources, results) if r.returncode != 0]
    if failed:
        first = next((line for _, r in failed for line in r.stderr.splitlines()
                      if "error" in line), "")
        raise CompileError(f"{Path(toolchain.cc).name} failed to build "
                           f"{', '.join(s for s, _ in failed)}"
                           + (f": {first.strip()}" if first else ""), log)
    return [workdir / (Path(s).stem + ".o") for s in sources]


def _run(cmd: Sequence[str], cwd: Path | None = None,
         stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(list(cmd), cwd=cwd, input=stdin, capture_output=True, text=True,
                              timeout=TIMEOUT_S, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise KilnError(f"could not run {cmd[0]}: {exc}") from None

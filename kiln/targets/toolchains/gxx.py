"""g++ for the fpga target's C-simulation: find it and build one program, keeping the log.

A failing build is a `CompileError` (from `gcc.py`) naming the log file, whose first line is
the command; the user sees kiln's message and the log's path, never the compiler's output.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

from kiln.errors import KilnError
from kiln.targets.toolchains.gcc import CompileError, Toolchain

TIMEOUT_S = 600


def find(cxx: str = "g++") -> Toolchain:
    """The C++ compiler `cxx` on PATH (or at that path) and its version line."""
    path = shutil.which(cxx)
    if path is None:
        raise KilnError(f"the C++ compiler '{cxx}' was not found, so the fpga target cannot run "
                        "its C-simulation",
                        hint="install g++ (e.g. `apt-get install g++`), or pass cxx='...'")
    first = run([path, "--version"]).stdout.splitlines()[:1]
    return Toolchain(path, " ".join(first))


def build(toolchain: Toolchain, workdir: Path, sources: Sequence[str], output: str,
          flags: Sequence[str], log_name: str = "csim_build.log") -> Path:
    """Compile and link `sources` (in `workdir`) to `workdir/output`; the log goes beside it."""
    cmd = [toolchain.cc, *flags, "-o", output, *sources]
    result = run(cmd, cwd=workdir)
    log = workdir / log_name
    log.write_text(" ".join(cmd) + "\n\n" + result.stdout + result.stderr)
    if result.returncode != 0:
        raise CompileError(f"{Path(toolchain.cc).name} failed to build the C-simulation "
                           f"{output}", log)
    return workdir / output


def run(cmd: Sequence[str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(list(cmd), cwd=cwd, capture_output=True, text=True,
                              timeout=TIMEOUT_S, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise KilnError(f"could not run {cmd[0]}: {exc}") from None

"""Triton on this machine: natively on a CUDA GPU, else in Triton's interpreter on CPU tensors.

**How the interpreter is switched on.** Triton decides once, when `triton.language` is first
imported, whether `@triton.jit` builds GPU kernels or interpreted ones (its standard library,
`tl.zeros`, `tl.sum`..., is itself jitted at that moment), and it reads that decision from the
environment variable `TRITON_INTERPRET`. PyTorch imports Triton as soon as it traces a model,
so the decision has to be made before any tracing: `prefer_interpreter` runs when
`kiln.targets.gpu` is imported (`kiln.compile(..., target="gpu")` imports it before it traces)
and, when this machine has no CUDA device and nothing has imported Triton yet, *writes*
`os.environ["TRITON_INTERPRET"] = "1"`. kiln never reads environment variables; this is the one
place it sets one, and only in a process that could not run Triton kernels otherwise. If
Triton was already imported in GPU mode on a machine without a GPU, kernels cannot run, and
`import_triton` raises an error saying how to fix it.

Generated sources are executed as modules whose text is registered in `linecache` under a
content-derived file name (Triton's JIT reads a kernel's source through `inspect`), so no file
is written anywhere.
"""

from __future__ import annotations

import hashlib
import linecache
import os
import sys
import types
from dataclasses import dataclass

from kiln.errors import KilnError

INTERPRETER = "triton interpreter on CPU (no CUDA device)"


@dataclass(frozen=True)
class Runtime:
    """Where kernels run: `device` for torch, whether Triton interprets, a line for reports."""

    device: str
    interpreter: bool
    description: str


def detect() -> Runtime:
    """CUDA when torch sees a device, the interpreter otherwise."""
    import torch

    if torch.cuda.is_available():
        name = torch.cuda.get_device_name(0)
        return Runtime("cuda", False, f"triton on CUDA ({name})")
    return Runtime("cpu", True, INTERPRETER)


def prefer_interpreter() -> None:
    """Ask Triton for its interpreter if this process has no CUDA device (module docstring)."""
    import torch

    if "triton" not in sys.modules and not torch.cuda.is_available():
        os.environ["TRITON_INTERPRET"] = "1"


def _interpreting(triton: types.ModuleType) -> bool:
    from triton.runtime.interpreter import InterpretedFunction

    return isinstance(triton.language.zeros, InterpretedFunction)


def import_triton(runtime: Runtime) -> types.ModuleType:
    """Import Triton, in interpreter mode when `runtime` needs it (module docstring)."""
    if runtime.interpreter:
        prefer_interpreter()
    try:
        import triton
    except ImportError as exc:
        raise KilnError("the gpu target needs Triton, which is not installed",
                        hint="install kiln's gpu extra: pip install 'kiln[gpu]' "
                             "(make venv does)") from exc
    if runtime.interpreter and not _interpreting(triton):
        raise KilnError("this machine has no CUDA device and Triton was imported before kiln "
                        "could switch it to its interpreter",
                        hint="import kiln.targets.gpu (or set TRITON_INTERPRET=1) before "
                             "anything imports triton or traces a model with torch")
    return triton


def load_source(source: str, name: str) -> types.ModuleType:
    """Execute generated source as a fresh module whose text `inspect` can find."""
    digest = hashlib.sha256(source.encode()).hexdigest()[:16]
    filename = f"<kiln-triton-{digest}/{name}.py>"
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    module = types.ModuleType(f"kiln_triton_{digest}_{name}")
    module.__file__ = filename
    exec(compile(source, filename, "exec"), module.__dict__)
    return module

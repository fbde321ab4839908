"""Triton code generation: kiln IR → `kernels.py` (Triton kernels) + `launcher.py`."""

from kiln.codegen.triton.emitter import Generated, emit, generate
from kiln.codegen.triton.options import TritonOptions

__all__ = ["Generated", "TritonOptions", "emit", "generate"]

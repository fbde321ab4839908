"""The C backend: kiln IR → a dependency-free C99 library (model.c, model.h, runtime headers,
weights.bin, example.c, Makefile). `lower` returns everything; `emit` the source texts."""

from kiln.codegen.c.emitter import CProgram, emit, lower
from kiln.codegen.c.options import COptions

__all__ = ["COptions", "CProgram", "emit", "lower"]

"""kiln: a compiler for deep-learning models.

The public face (DESIGN.md): trace or import a model into kiln's IR, transform it with passes,
run it with the reference interpreter, compile it for a target. Heavy dependencies (torch, onnx)
are imported only by the entry points that need them, so `kiln-opt` starts fast.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kiln.errors import KilnError

if TYPE_CHECKING:
    import numpy as np

    from kiln.compiler.driver import CompiledModel
    from kiln.ir.graph import Module

__version__ = "0.1.0"
__all__ = ["KilnError", "compile", "export_onnx", "import_onnx", "interpret", "load",
           "load_compiled", "parse", "run_passes", "trace"]


def trace(model: Any, example_inputs: Any) -> Module:
    """Trace a `torch.nn.Module` (torch.export, falling back to torch.fx) into a kiln Module."""
    from kiln.compiler.frontend_dispatch import trace_torch
    return trace_torch(model, example_inputs)


def import_onnx(path_or_model: Any,
                input_shapes: Mapping[str, tuple[int, ...]] | None = None) -> Module:
    """Import an ONNX model (a path, bytes or an `onnx.ModelProto`) into a kiln Module;
    `input_shapes` pins inputs whose dimensions are symbolic."""
    from kiln.frontend.onnx_import import import_onnx as _import
    return _import(path_or_model, input_shapes=input_shapes)


def export_onnx(module: Module, path: str | Path) -> None:
    """Write a kiln Module as an ONNX model runnable by onnxruntime."""
    from kiln.frontend.onnx_export import export_onnx as _export
    _export(module, path)


def parse(text: str, weights: Mapping[str, np.ndarray] | None = None) -> Module:
    """Parse IR text (the format `str(module)` prints); weights by name, or elided."""
    from kiln.ir.parser import parse as _parse
    return _parse(text, weights)


def load(path: str | Path) -> Module:
    """Read a module saved by `module.save(path)` (`.kir` text + `.npz` weights)."""
    from kiln.ir.serialize import load_module
    return load_module(path)


def interpret(module: Module, *inputs: Any) -> list[np.ndarray]:
    """Run a module with the reference interpreter; returns a list of NumPy arrays."""
    from kiln.ir.interpret import interpret as _interpret
    return _interpret(module, *inputs)


def run_passes(module: Module, pipeline: str, **options: Any) -> Module:
    """Run a pipeline string (`"canonicalize,cse,dce"`) on a copy of `module`."""
    from kiln.compiler.pass_manager import run_passes as _run
    return _run(module, pipeline, **options)


def compile(model: Any, example_inputs: Any = None, target: str = "reference",
            pipeline: str | None = None, **options: Any) -> CompiledModel:
    """Trace/import `model`, optimize it, and build it for `target`."""
    from kiln.compiler.driver import compile_model
    return compile_model(model, example_inputs, target=target, pipeline=pipeline, **options)


def load_compiled(directory: str | Path) -> CompiledModel:
    """Rebuild a model saved by `CompiledModel.save(directory)` (builds are cached: fast)."""
    from kiln.compiler.artifact_io import load_compiled as _load_compiled
    return _load_compiled(directory)

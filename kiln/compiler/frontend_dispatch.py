"""Turn whatever the user handed `kiln.compile` into a kiln Module."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kiln.errors import KilnError
from kiln.ir.graph import Module


def to_module(model: Any, example_inputs: Any) -> Module:
    """A kiln Module from a torch module, an ONNX path/ModelProto, a `.kir` path or a Module."""
    if isinstance(model, Module):
        return model
    if isinstance(model, (str, Path)):
        path = Path(model)
        if path.suffix == ".onnx":
            from kiln.frontend.onnx_import import import_onnx
            return import_onnx(path)
        if path.suffix == ".kir":
            from kiln.ir.serialize import load_module
            return load_module(path)
        raise KilnError(f"cannot tell what model '{path}' is",
                        hint="pass a torch.nn.Module, a kiln Module, or a .onnx / .kir file")
    if type(model).__name__ == "ModelProto":
        from kiln.frontend.onnx_import import import_onnx
        return import_onnx(model)
    if hasattr(model, "forward") and hasattr(model, "parameters"):
        if not example_inputs:
            raise KilnError("tracing a PyTorch model needs example_inputs",
                            hint="kiln.compile(model, (torch.randn(1, 3, 32, 32),), ...)")
        return trace_torch(model, example_inputs)
    raise KilnError(f"kiln cannot compile a {type(model).__name__}",
                    hint="pass a torch.nn.Module, a kiln Module, or a .onnx / .kir file")


def trace_torch(model: Any, example_inputs: Any) -> Module:
    """Trace a torch model; first let Triton pick its interpreter on a machine without CUDA.

    Tracing imports Triton through torch, and Triton fixes interpreter-or-GPU at import: doing
    it here keeps a later `target="gpu"` compile working in the same process.
    """
    from kiln.frontend.torch_trace import trace
    from kiln.targets.gpu_runtime import prefer_interpreter

    prefer_interpreter()
    return trace(model, example_inputs)

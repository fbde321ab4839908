"""The `gpu` target: Triton kernels from the fused IR, run on CUDA or in Triton's interpreter.

`kiln.compile(model, example_inputs, target="gpu", dtype="fp32"|"fp16"|"bf16")` runs the `gpu`
pipeline, generates `kernels.py` + `launcher.py` (`kiln.codegen.triton`), and loads them: on a
machine with a CUDA device the kernels are compiled by Triton and run natively; without one the
same kernels run under Triton's interpreter on CPU tensors (`gpu_runtime.py` says how that mode
is switched on), slow but numerically the same program, and `report()["runtime"]` says so.

Options: `dtype` (storage type; compute and accumulation stay fp32; fp16 warns about tensors
beyond its range, `gpu_precision.py`), `autotune` (wrap `tl.dot` GEMMs in `triton.autotune`;
only on a GPU), and `example_inputs`, filled in by `kiln.compile` with the example inputs for
the fp16 range check. int8: not lowered (the GPU kernels compute float tensors; quantized IR
is rejected with the ops named).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from kiln.codegen.triton import Generated, TritonOptions, generate
from kiln.errors import KilnError
from kiln.ir.graph import Module
from kiln.ir.ops.core import Constant, Weight
from kiln.targets.gpu_precision import warn_fp16_range
from kiln.targets.gpu_runtime import (
    Runtime,
    detect,
    import_triton,
    load_source,
    prefer_interpreter,
)
from kiln.targets.target import Target

prefer_interpreter()


@dataclass
class GpuArtifact:
    """The loaded kernels and launcher; runs NumPy arrays or (`run_tensors`) torch tensors."""

    module: Module
    generated: Generated
    options: TritonOptions
    runtime: Runtime
    launcher: Any
    files: dict[str, str]

    def run_tensors(self, *inputs: Any) -> tuple[Any, ...]:
        """Run on torch tensors; outputs stay on the device in the storage dtype."""
        func = self.module.main
        if len(inputs) != len(func.args):
            raise KilnError(f"@{func.name} takes {len(func.args)} inputs, got {len(inputs)}")
        for i, (x, arg) in enumerate(zip(inputs, func.args)):
            if tuple(x.shape) != arg.type.shape:
                raise KilnError(f"input {i} (%{arg.name}) has shape {list(x.shape)}, the "
                                f"compiled model expects {list(arg.type.shape)}")
        with np.errstate(all="ignore"):  # the interpreter computes masked lanes in NumPy too
            return tuple(self.launcher(*inputs))

    def run(self, *inputs: np.ndarray) -> list[np.ndarray]:
        import torch

        outs = self.run_tensors(*(torch.from_numpy(np.array(x, order="C")) for x in inputs))
        types = self.module.main.result_types
        return [o.float().cpu().numpy().astype(t.numpy_dtype) for o, t in zip(outs, types)]

    def report(self) -> dict[str, Any]:
        kernels = self.generated.kernels.values()
        plan = self.generated.plan
        return {
            "runtime": self.runtime.description,
            "dtype": self.options.dtype,
            "kernels": len(kernels),
            "kernel_families": dict(sorted(Counter(k.family for k in kernels).items())),
            "arena_bytes": plan.arena_bytes,
            "arena_bytes_without_reuse": plan.naive_bytes(),
            "autotune": self.options.autotune,
            "int8": "not lowered (float kernels only)",
        }

    def export(self, directory: Path) -> Path:
        """kernels.py, launcher.py, params.npz (fp32) and load.py, which rebuilds the model."""
        directory.mkdir(parents=True, exist_ok=True)
        for name, text in self.files.items():
            (directory / name).write_text(text)
        arrays: dict[str, Any] = _param_arrays(self.module, self.generated)
        np.savez(directory / "params.npz", **arrays)
        (directory / "load.py").write_text(LOAD_PY)
        return directory


LOAD_PY = '''"""Load the exported model: `import load; m = load.load("cuda")`, then `m(x)`.

Without a GPU, set TRITON_INTERPRET=1 before Python imports triton and load on "cpu".
"""

from pathlib import Path

import numpy as np
import torch

import kernels
import launcher


def load(device="cuda"):
    data = np.load(Path(__file__).with_name("params.npz"))
    params = {key: torch.from_numpy(data[key]).to(device=device, dtype=launcher.DTYPE)
              for key in data.files}
    return launcher.Launcher(kernels, params, device)
'''


def _param_arrays(module: Module, generated: Generated) -> dict[str, np.ndarray]:
    out = {}
    for key, op in generated.params.items():
        if isinstance(op.kind, Weight):
            out[key] = np.asarray(module.weights[op.kind.name], dtype=np.float32)
        elif isinstance(op.kind, Constant):
            out[key] = np.asarray(op.kind.value.array, dtype=np.float32)
    return out


def _samples(example: Any) -> list[Sequence[Any]]:
    if example is None or (isinstance(example, (tuple, list)) and not example):
        return []
    return [tuple(example) if isinstance(example, (tuple, list)) else (example,)]


def build(module: Module, options: Mapping[str, Any]) -> GpuArtifact:
    """Generate, load and wrap the kernels of optimized `module` (see the module docstring)."""
    runtime = detect()
    tune = bool(options.get("autotune", False)) and not runtime.interpreter
    emit_options = TritonOptions(str(options.get("dtype", "fp32")), runtime.interpreter, tune)
    if emit_options.dtype == "fp16":
        warn_fp16_range(module, _samples(options.get("example_inputs")))
    generated = generate(module, emit_options)
    import_triton(runtime)
    import torch

    kernels = load_source(generated.files["kernels.py"], "kernels")
    launcher_module = load_source(generated.files["launcher.py"], "launcher")
    dtype = getattr(torch, emit_options.torch_dtype.removeprefix("torch."))
    params = {key: torch.from_numpy(np.array(array, order="C")).to(runtime.device, dtype)
              for key, array in _param_arrays(module, generated).items()}
    launcher = launcher_module.Launcher(kernels, params, runtime.device)
    return GpuArtifact(module, generated, emit_options, runtime, launcher, generated.files)


TARGET = Target(
    name="gpu",
    description="Triton kernels: native on a CUDA GPU, Triton's interpreter on CPU otherwise",
    pipeline="gpu",
    build=build,
    options={"dtype": "fp32", "autotune": False, "example_inputs": None},
)

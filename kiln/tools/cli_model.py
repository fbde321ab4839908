"""Models named on the command line: what MODEL means, example inputs, `--prune`, `--option`.

MODEL is one of:
- a bundled model name (`kiln models` lists them): its own example inputs;
- `package.module:factory` for a PyTorch model built by calling `factory()` (needs
  `--input-shape`); the torch module is kept so the report compares against PyTorch;
- an `.onnx` file (`--input-shape` pins symbolic dimensions, one per input, in order);
- a `.kir` file (with its `.npz` weights beside it when saved by `module.save`).

Example inputs of ONNX and `.kir` models are standard-normal arrays of the input shapes, drawn
from a fixed seed (compiling twice gives the same artifact).
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from kiln.errors import KilnError
from kiln.ir.graph import Module

EXAMPLE_SEED = 0


@dataclass
class ModelSource:
    """A model loaded from the command line: its kiln module, inputs and torch module."""

    spec: str
    kind: str
    """bundled, torch, onnx or kir."""
    module: Module
    inputs: tuple[np.ndarray, ...]
    torch_model: Any = None
    input_shapes: tuple[tuple[int, ...], ...] = ()

    def describe(self) -> dict[str, Any]:
        """The `source` entry of `artifact.json`: enough to re-create a torch model."""
        return {"kind": self.kind, "model": self.spec,
                "input_shapes": [list(s) for s in self.input_shapes] or None}


def _random_inputs(module: Module, seed: int = EXAMPLE_SEED) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(seed)
    out = []
    for arg in module.main.args:
        dtype = arg.type.numpy_dtype
        if np.issubdtype(dtype, np.floating):
            out.append(rng.standard_normal(arg.type.shape).astype(dtype))
        else:
            out.append(rng.integers(0, 8, size=arg.type.shape).astype(dtype))
    return tuple(out)


def _onnx_names(path: Path) -> list[str]:
    """The graph inputs of an ONNX file that are not initializers."""
    try:
        import onnx
        graph = onnx.load(str(path), load_external_data=False).graph
    except Exception as exc:  # onnx raises assorted errors for a damaged file
        raise KilnError(f"cannot read {path} as an ONNX model: {exc}",
                        hint="check the file, or export it again") from None
    initializers = {t.name for t in graph.initializer}
    return [i.name for i in graph.input if i.name not in initializers]


def _load_file(path: Path, shapes: tuple[tuple[int, ...], ...]) -> ModelSource:
    import kiln

    if not path.is_file():
        raise KilnError(f"no such model file: {path}",
                        hint="give an existing .onnx or .kir file, a bundled model name "
                             "(`kiln models`) or package.module:factory")
    if path.suffix == ".kir":
        if shapes:
            raise KilnError("--input-shape does not apply to a .kir model: the IR fixes its "
                            "shapes", hint="leave --input-shape out")
        module = kiln.load(path)
        return ModelSource(str(path), "kir", module, _random_inputs(module))
    pinned = None
    if shapes:
        names = _onnx_names(path)
        if len(shapes) != len(names):
            raise KilnError(f"{path} has {len(names)} input(s) ({', '.join(names)}); "
                            f"--input-shape was given {len(shapes)} time(s)",
                            hint="give --input-shape once per model input, in order")
        pinned = dict(zip(names, shapes))
    module = kiln.import_onnx(path, input_shapes=pinned)
    return ModelSource(str(path), "onnx", module, _random_inputs(module), None, shapes)


def _trace(spec: str, kind: str, model: Any, inputs: tuple[Any, ...],
           shapes: tuple[tuple[int, ...], ...]) -> ModelSource:
    import kiln

    try:
        module = kiln.trace(model, inputs)
    except KilnError:
        raise
    except Exception as exc:  # torch raises anything for a forward that does not fit
        raise KilnError(f"tracing {spec} failed: {type(exc).__name__}: {exc}",
                        hint="check that --input-shape matches what the model's forward "
                             "expects") from None
    arrays = tuple(np.ascontiguousarray(x.detach().numpy()) for x in inputs)
    return ModelSource(spec, kind, module, arrays, model, shapes)


def _torch_inputs(shapes: tuple[tuple[int, ...], ...]) -> tuple[Any, ...]:
    import torch
    generator = torch.Generator().manual_seed(EXAMPLE_SEED)
    return tuple(torch.randn(*s, generator=generator) for s in shapes)


def _load_bundled(spec: str, shapes: tuple[tuple[int, ...], ...]) -> ModelSource:
    from kiln.models import example_inputs, get_model

    model = get_model(spec)
    inputs = _torch_inputs(shapes) if shapes else example_inputs(spec)
    return _trace(spec, "bundled", model, tuple(inputs), shapes)


def _import(name: str) -> Any:
    """Import `name`, also from the current folder (as `python -m` and uvicorn do: `net:make`
    names net.py where the command runs; the console script alone does not search there)."""
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError:
        here = str(Path.cwd())
        if "" in sys.path or here in sys.path:
            raise
        sys.path.insert(0, here)
        return importlib.import_module(name)


def make_factory_model(spec: str) -> Any:
    """Import `package.module:factory` and call it; a `KilnError` when that fails."""
    module_name, _, attr = spec.partition(":")
    try:
        factory = getattr(_import(module_name), attr)
    except (ImportError, AttributeError, ValueError) as exc:
        raise KilnError(f"cannot load '{spec}': {exc}",
                        hint="MODEL must be package.module:factory with the package "
                             "importable (check PYTHONPATH)") from None
    try:
        model = factory()
    except Exception as exc:  # the user's code
        raise KilnError(f"calling {spec}() failed: {type(exc).__name__}: {exc}") from None
    if not hasattr(model, "forward"):
        raise KilnError(f"{spec}() returned a {type(model).__name__}, not a torch.nn.Module")
    return model


def recreate_torch(source: dict[str, Any]) -> Any | None:
    """The torch model an artifact's `source` entry names, when it can be made again."""
    kind, spec = source.get("kind"), str(source.get("model"))
    if kind == "bundled":
        from kiln.models import get_model
        return get_model(spec)
    if kind == "torch":
        return make_factory_model(spec)
    return None


def load_source(spec: str, shapes: tuple[tuple[int, ...], ...] = ()) -> ModelSource:
    """The model MODEL names (module docstring)."""
    path = Path(spec)
    if path.suffix in (".onnx", ".kir"):
        return _load_file(path, shapes)
    from kiln.models import MODELS
    if spec in MODELS:
        return _load_bundled(spec, shapes)
    if ":" not in spec or path.exists():
        raise KilnError(f"cannot tell what model '{spec}' is",
                        hint=f"use a bundled model ({', '.join(MODELS)}), "
                        "package.module:factory, or a .onnx / .kir file")
    if not shapes:
        raise KilnError(f"{spec} is a PyTorch model: kiln needs its input shape",
                        hint="add --input-shape, e.g. --input-shape 1x3x32x32 (once per input)")
    model = make_factory_model(spec)
    return _trace(spec, "torch", model, _torch_inputs(shapes), shapes)


def parse_option(text: str) -> tuple[str, Any]:
    """`key=value` → (key, value): JSON when it parses (`4`, `true`, `{"dsp": 500}`),
    else the string; dashes in the key become underscores."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"--option takes key=value, not '{text}'")
    try:
        value = json.loads(raw)
    except ValueError:
        value = raw
    return key.strip().replace("-", "_"), value


PRUNE_METHODS = {"magnitude": "prune{{method=magnitude,sparsity={0}}}",
                 "global": "prune{{method=magnitude,scope=global,sparsity={0}}}",
                 "l1-channel": "prune{{method=l1-channel,sparsity={0}}}",
                 "channel": "prune{{method=l1-channel,sparsity={0}}}",
                 "csr": "sparsify{{format=csr,min-sparsity={0},enforce=true}}"}
"""`--prune METHOD:SPARSITY` → pipeline step (`--prune 0.5` is `magnitude:0.5`)."""
PRUNE_HELP = ("SPARSITY (0.5: zero the 50%% smallest weights of each layer), METHOD:SPARSITY "
              "with METHOD in magnitude, global, l1-channel (remove whole channels), csr; "
              "nm:N:M (N of every M weights kept, e.g. nm:2:4), block:RxC:SPARSITY; or a "
              "prune{...} / sparsify{...} pipeline step")


def _sparsity(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--prune: '{text}' is not a sparsity "
                                         "(a fraction like 0.5)") from None
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"--prune: sparsity {value} is outside [0, 1)")
    return value


def parse_prune(text: str) -> str:
    """The pipeline step `--prune TEXT` stands for (see `PRUNE_HELP`)."""
    if text.startswith(("prune{", "sparsify{")) or text in ("prune", "sparsify"):
        return text
    parts = text.split(":")
    if len(parts) == 1:
        return PRUNE_METHODS["magnitude"].format(_sparsity(parts[0]))
    method = parts[0].lower()
    if method == "nm" and len(parts) == 3 and all(p.isdigit() for p in parts[1:]):
        return f"sparsify{{format=nm,n={parts[1]},m={parts[2]},enforce=true}}"
    if method == "block" and len(parts) == 3:
        return (f"sparsify{{format=block,block={parts[1]},min-sparsity={_sparsity(parts[2])},"
                "enforce=true}")
    if method in PRUNE_METHODS and len(parts) == 2:
        return PRUNE_METHODS[method].format(_sparsity(parts[1]))
    raise argparse.ArgumentTypeError(f"--prune: cannot read '{text}'; expected {PRUNE_HELP}"
                                     .replace("%%", "%"))


__all__ = ["PRUNE_HELP", "ModelSource", "load_source", "make_factory_model", "parse_option",
           "parse_prune", "recreate_torch"]

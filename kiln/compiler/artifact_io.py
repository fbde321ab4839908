"""Compiled artifacts on disk: `art.save(DIR)` writes a folder, `kiln.load_compiled(DIR)` rebuilds.

The folder holds everything needed to run the model again without its source:

- `model.kir` + `model.npz`: the optimized IR the pipeline produced (`art.ir`);
- `build.kir` + `build.npz`: only when the target builds from another module than `art.ir`
  (fpga/asic: the fixed-point module its build calibrated), so a reload is bit-identical without
  calibrating again;
- `artifact.json`: target, pipeline, the JSON-representable resolved target options, the kiln
  version, the input/output names, shapes and dtypes, and where the model came from (`source`);
- `inputs.npz`: the example inputs (`input_0`, ...) and the source model's outputs on them
  (`source_output_0`, ...) when the source was a PyTorch model;
- the target's exported files (`art.export`) and `report.json` / `report.html` (`kiln.report`).

Reloading parses the IR and calls the target's `build` with the saved options; builds are
content-addressed in the target caches, so a reload of a folder built on this machine compiles
nothing. Options that do not survive JSON (calibration arrays, callables) are listed under
`unsaved_options` and the reload uses their defaults; `example_inputs` and `calibration_data`
are refilled from `inputs.npz` as `kiln.compile` fills them.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from kiln.errors import KilnError
from kiln.ir.graph import Module, Value
from kiln.ir.interpret import to_numpy

if TYPE_CHECKING:
    from kiln.compiler.driver import CompiledModel

logger = logging.getLogger("kiln.compiler.artifact_io")

FORMAT = "kiln-artifact-1"
MANIFEST = "artifact.json"
IR_FILE = "model.kir"
BUILD_IR_FILE = "build.kir"
INPUTS_FILE = "inputs.npz"
DERIVED_OPTIONS = ("example_inputs", "calibration_data")
"""Target options `kiln.compile` fills from the example inputs; refilled the same way."""
_HINT = "compile one with `kiln compile MODEL --target T -o DIR` (or `art.save(DIR)`)"


def _tensor_info(value: Value, fallback: str) -> dict[str, Any]:
    return {"name": value.name or fallback, "shape": list(value.type.shape),
            "dtype": str(value.type.numpy_dtype)}


def signature(module: Module) -> dict[str, list[dict[str, Any]]]:
    """Names, shapes and NumPy dtypes of the entry function's inputs and outputs."""
    func = module.main
    return {"inputs": [_tensor_info(v, f"input_{i}") for i, v in enumerate(func.args)],
            "outputs": [_tensor_info(v, f"output_{i}") for i, v in enumerate(func.outputs)]}


def _jsonable(value: Any) -> tuple[bool, Any]:
    """(True, the value as JSON data) or (False, None) when it has no faithful JSON form."""
    if isinstance(value, tuple):
        value = list(value)
    try:
        text = json.dumps(value, sort_keys=True)
    except (TypeError, ValueError):
        return False, None
    return True, json.loads(text)


def split_options(options: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """(options kept as JSON, names of those that cannot be saved), derived ones left out."""
    kept: dict[str, Any] = {}
    unsaved: list[str] = []
    for key, value in sorted(options.items()):
        if key in DERIVED_OPTIONS:
            continue
        ok, data = _jsonable(value)
        if ok:
            kept[key] = data
        else:
            unsaved.append(key)
            logger.warning("option %s=%r cannot be saved as JSON; a reload uses the target's "
                           "default", key, value)
    return kept, unsaved


def manifest_of(compiled: CompiledModel, source: Mapping[str, Any] | None,
                has_build_ir: bool) -> dict[str, Any]:
    """The `artifact.json` document of `compiled` (module docstring)."""
    from kiln import __version__

    options, unsaved = split_options(compiled.target_options)
    return {"format": FORMAT, "kiln_version": __version__, "target": compiled.target,
            "pipeline": compiled.pipeline, "options": options, "unsaved_options": unsaved,
            "model": compiled.ir.name, **signature(compiled.ir), "ir": IR_FILE,
            "build_ir": BUILD_IR_FILE if has_build_ir else None, "inputs_file": INPUTS_FILE,
            "source": dict(source) if source is not None else None,
            "compile_seconds": round(compiled.compile_seconds, 4)}


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _write_inputs(path: Path, compiled: CompiledModel) -> None:
    arrays = {f"input_{i}": to_numpy(x) for i, x in enumerate(compiled.example_inputs)}
    for i, out in enumerate(compiled.source_outputs or []):
        arrays[f"source_output_{i}"] = np.asarray(out)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".npz")
    os.close(fd)
    try:
        np.savez(tmp, **arrays)  # type: ignore[arg-type]
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _build_module(compiled: CompiledModel) -> Module | None:
    """The module the target built from, when it is not `compiled.ir` (fixed point)."""
    module = getattr(compiled.artifact, "module", None)
    return module if isinstance(module, Module) and module is not compiled.ir else None


def save_artifact(compiled: CompiledModel, directory: str | Path, *,
                  source: Mapping[str, Any] | None = None) -> Path:
    """Write the artifact folder of `compiled` (module docstring); returns the folder."""
    from kiln.report import save_report

    out = Path(directory)
    if out.exists() and not out.is_dir():
        raise KilnError(f"cannot write the artifact to {out}: it is a file",
                        hint="give a folder path (it is created when missing)")
    out.mkdir(parents=True, exist_ok=True)
    compiled.artifact.export(out)
    compiled.ir.save(out / IR_FILE)
    build_ir = _build_module(compiled)
    if build_ir is not None:
        build_ir.save(out / BUILD_IR_FILE)
    _write_inputs(out / INPUTS_FILE, compiled)
    manifest = manifest_of(compiled, source, build_ir is not None)
    _atomic_write_bytes(out / MANIFEST, (json.dumps(manifest, indent=2) + "\n").encode())
    save_report(compiled, out)
    return out


def read_manifest(directory: str | Path) -> dict[str, Any]:
    """The checked `artifact.json` of an artifact folder; a `KilnError` saying what is wrong."""
    folder = Path(directory)
    if not folder.is_dir():
        raise KilnError(f"no artifact folder {folder}", hint=_HINT)
    path = folder / MANIFEST
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise KilnError(f"{folder} is not a kiln artifact folder (no {MANIFEST})",
                        hint=_HINT) from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise KilnError(f"cannot read {path}: {exc}",
                        hint="the folder is damaged; compile the model again") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        found = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
        raise KilnError(f"{path} has format {found!r}, this kiln reads {FORMAT!r}",
                        hint="compile the model again with this version of kiln")
    missing = [k for k in ("target", "pipeline", "options", "inputs", "outputs", "ir")
               if k not in manifest]
    if missing:
        raise KilnError(f"{path} lacks {', '.join(missing)}",
                        hint="the folder is damaged; compile the model again")
    return manifest


def read_inputs(directory: str | Path) -> tuple[tuple[np.ndarray, ...], list[np.ndarray] | None]:
    """(example inputs, source outputs or None) from the folder's `inputs.npz` (may be absent)."""
    path = Path(directory) / INPUTS_FILE
    if not path.exists():
        return (), None
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: np.array(data[k]) for k in data.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise KilnError(f"cannot read {path}: {exc}",
                        hint="the folder is damaged; compile the model again") from None

    def series(prefix: str) -> list[np.ndarray]:
        return [arrays[f"{prefix}{i}"] for i in range(len(arrays)) if f"{prefix}{i}" in arrays]

    outputs = series("source_output_")
    return tuple(series("input_")), (outputs or None)


def _load_ir(folder: Path, name: str) -> Module:
    from kiln.ir.serialize import load_module

    path = folder / name
    if not path.exists():
        raise KilnError(f"{folder} lacks {name}", hint="the folder is damaged; compile again")
    return load_module(path)


def _options(target: Any, manifest: Mapping[str, Any],
             inputs: tuple[np.ndarray, ...]) -> dict[str, Any]:
    saved = manifest.get("options") or {}
    unknown = sorted(set(saved) - set(target.options))
    if unknown:
        logger.warning("ignoring saved options %s: target '%s' no longer has them",
                       ", ".join(unknown), target.name)
    options: dict[str, Any] = target.resolve_options(
        {k: v for k, v in saved.items() if k in target.options})
    derived: dict[str, Any] = {"example_inputs": inputs, "calibration_data": None}
    for key, value in derived.items():
        if key in options and options[key] is None:
            options[key] = value
    return options


def load_compiled(directory: str | Path) -> CompiledModel:
    """Rebuild the `CompiledModel` saved in `directory` by `CompiledModel.save`."""
    from kiln.compiler.driver import CompiledModel
    from kiln.targets.target import get_target

    folder = Path(directory)
    manifest = read_manifest(folder)
    ir = _load_ir(folder, str(manifest["ir"]))
    build_name = manifest.get("build_ir")
    build_ir = _load_ir(folder, str(build_name)) if build_name else ir
    inputs, source_outputs = read_inputs(folder)
    target = get_target(str(manifest["target"]))
    options = _options(target, manifest, inputs)
    artifact = target.build(build_ir, options)
    return CompiledModel(ir, target.name, str(manifest["pipeline"]), artifact,
                         source_outputs=source_outputs, example_inputs=inputs,
                         target_options=options)


__all__ = ["FORMAT", "MANIFEST", "load_compiled", "read_inputs", "read_manifest",
           "save_artifact", "signature", "split_options"]

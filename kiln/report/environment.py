"""Where and how a model was built (versions, compilers, flags), and what came out (hashes).

Two builds are comparable when their manifests agree: the sha256 of the IR text, of the
weights (names, dtypes, shapes and bytes) and of every generated file.
"""

from __future__ import annotations

import functools
import hashlib
import platform
import shlex
import sys
from collections.abc import Mapping
from importlib import metadata
from typing import Any

import numpy as np

import kiln
from kiln.errors import KilnError
from kiln.ir.graph import Module


def package_version(name: str) -> str | None:
    """An installed distribution's version (no import of the package itself)."""
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


@functools.lru_cache(maxsize=8)
def cxx_version(path: str) -> str | None:
    """A C++ compiler's `--version` line (a memo of a pure query); None when it cannot run."""
    from kiln.targets.toolchains import gxx

    try:
        return gxx.find(path).version
    except (KilnError, OSError):
        return None


def csim_command(log_path: str | None) -> list[str]:
    """The C-simulation build command: the first line of its build log (FPGA, ASIC)."""
    if not log_path:
        return []
    try:
        with open(log_path, encoding="utf-8") as log:
            return shlex.split(log.readline())
    except (OSError, ValueError):
        return []


def compilers(target_report: Mapping[str, Any]) -> tuple[dict[str, str], dict[str, list[str]]]:
    """Compiler name → version and → flags, from what the target's own report records."""
    versions: dict[str, str] = {}
    flags: dict[str, list[str]] = {}
    if isinstance(target_report.get("compiler"), str):
        versions["cc"] = target_report["compiler"]
        flags["cc"] = [str(f) for f in target_report.get("flags") or []]
    for key in ("tvm_version", "llvm_version"):  # the tvm target's toolchain
        if key in target_report:
            versions[key.removesuffix("_version")] = str(target_report[key])
    if "tvm_target" in target_report:
        flags["tvm"] = [f"target={target_report['tvm_target']}",
                        f"opt_level={target_report.get('opt_level')}"]
    command = csim_command(target_report.get("csim_build_log"))
    if command:
        version = cxx_version(command[0])
        versions["cxx"] = version or command[0]
        flags["cxx"] = [a for a in command[1:] if a.startswith("-") and a != "-o"]
    return versions, flags


def environment(target_report: Mapping[str, Any]) -> dict[str, Any]:
    versions, flags = compilers(target_report)
    return {
        "kiln": kiln.__version__,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "torch": package_version("torch"),
        "triton": package_version("triton"),
        "onnx": package_version("onnx"),
        "platform": f"{platform.system()} {platform.machine()}",
        "python_implementation": sys.implementation.name,
        "compilers": versions,
        "flags": flags,
    }


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def weights_sha256(module: Module) -> str:
    """One hash over every weight: name, dtype, shape and bytes, in name order."""
    digest = hashlib.sha256()
    for name in sorted(module.weights):
        array = np.ascontiguousarray(module.weights[name])
        digest.update(f"{name}\0{array.dtype.str}\0{array.shape}\0".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def manifest(ir: Module, files: Mapping[str, str], target_ir: Module | None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "ir_sha256": sha256_text(ir.to_text()),
        "weights_sha256": weights_sha256(ir),
        "files": {name: sha256_text(text) for name, text in sorted(files.items())},
    }
    if target_ir is not None and target_ir is not ir:
        out["target_ir_sha256"] = sha256_text(target_ir.to_text())
        out["target_weights_sha256"] = weights_sha256(target_ir)
    return out

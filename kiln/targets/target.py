"""The target protocol: what `kiln.compile` needs from a CPU, GPU, FPGA or ASIC backend.

A `Target` names its default pipeline, the compile options it accepts, and a `build` function
that turns optimized IR into an `Artifact`. The driver owns everything common (frontends, the
pass pipeline, input conversion, the accuracy check); a target owns its toolchain, build, cache,
run and cost model.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from kiln.errors import KilnError
from kiln.ir.graph import Module


class Artifact(Protocol):
    """A built model: runs NumPy arrays, lists its generated files, reports, exports."""

    files: dict[str, str]

    def run(self, *inputs: np.ndarray) -> list[np.ndarray]: ...

    def report(self) -> dict[str, Any]: ...

    def export(self, directory: Path) -> Path: ...


@dataclass(frozen=True)
class Target:
    """One backend: default pipeline, accepted options (with defaults) and the build step."""

    name: str
    description: str
    pipeline: str
    build: Callable[[Module, Mapping[str, Any]], Artifact]
    options: Mapping[str, Any] = field(default_factory=dict)
    pipeline_for: Callable[[Mapping[str, Any]], str] | None = None
    """The default pipeline given the resolved options (e.g. cpu's `quantize="int8"` adds the
    quantize pass); None: always `pipeline`."""

    def default_pipeline(self, options: Mapping[str, Any]) -> str:
        """The pipeline to run when the user names none."""
        return self.pipeline if self.pipeline_for is None else self.pipeline_for(options)

    def resolve_options(self, given: Mapping[str, Any]) -> dict[str, Any]:
        """Defaults overlaid with `given`; an unknown option is a clear error."""
        unknown = sorted(set(given) - set(self.options))
        if unknown:
            valid = ", ".join(f"{k}={v!r}" for k, v in self.options.items()) or "none"
            raise KilnError(f"target '{self.name}' has no option {', '.join(unknown)}",
                            hint=f"its options (with defaults): {valid}")
        return {**self.options, **given}


_TARGETS: dict[str, str] = {
    "reference": "kiln.targets.reference:TARGET",
    "cpu": "kiln.targets.cpu:TARGET",
    "gpu": "kiln.targets.gpu:TARGET",
    "fpga": "kiln.targets.fpga:TARGET",
    "asic": "kiln.targets.asic:TARGET",
    "tvm": "kiln.targets.tvm:TARGET",
}
"""Target name → `module:attribute`, imported on first use (a GPU toolchain loads only when
someone compiles for the GPU). Explicit: new targets add a line here."""


_USER_TARGETS: dict[str, Target] = {}
"""Targets defined outside kiln, added by `register_target` (plugins, user code)."""


def register_target(target: Target) -> Target:
    """Make a target defined outside kiln available to `kiln.compile(..., target=name)` and
    the command line; a name kiln or another plugin already uses is an error."""
    if target.name in _TARGETS or target.name in _USER_TARGETS:
        raise KilnError(f"target '{target.name}' is already registered",
                        hint="give your target a name of its own")
    _USER_TARGETS[target.name] = target
    return target


def unregister_target(name: str) -> None:
    """Remove a target added by `register_target` (tests clean up with this)."""
    _USER_TARGETS.pop(name, None)


def get_target(name: str) -> Target:
    """The target called `name`; a `KilnError` listing the valid ones otherwise."""
    if name in _USER_TARGETS:
        return _USER_TARGETS[name]
    spec = _TARGETS.get(name)
    if spec is None:
        raise KilnError(f"unknown target '{name}'",
                        hint=f"available targets: {', '.join(target_names())}")
    module_name, _, attr = spec.partition(":")
    target = getattr(importlib.import_module(module_name), attr)
    assert isinstance(target, Target)
    return target


def target_names() -> list[str]:
    return sorted({*_TARGETS, *_USER_TARGETS})

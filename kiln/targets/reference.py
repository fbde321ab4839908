"""The `reference` target: the optimized IR run by kiln's NumPy interpreter.

Slow, but it is exactly the semantics every other target is checked against, and it needs no
toolchain, so `kiln.compile` works everywhere.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from kiln.ir.graph import Module
from kiln.ir.interpret import interpret
from kiln.targets.target import Target


@dataclass
class ReferenceArtifact:
    """Runs the module in the interpreter; its only file is the IR text."""

    module: Module
    files: dict[str, str] = field(default_factory=dict)

    def run(self, *inputs: np.ndarray) -> list[np.ndarray]:
        return interpret(self.module, *inputs)

    def report(self) -> dict[str, Any]:
        return {"runtime": "kiln reference interpreter (NumPy)"}

    def export(self, directory: Path) -> Path:
        directory.mkdir(parents=True, exist_ok=True)
        self.module.save(directory / "model.kir")
        return directory


def build(module: Module, options: Mapping[str, Any]) -> ReferenceArtifact:
    return ReferenceArtifact(module, {"model.kir": module.to_text()})


TARGET = Target(name="reference", description="kiln's NumPy reference interpreter",
                pipeline="default", build=build)

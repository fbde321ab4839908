"""Minimized reproducers for the cross-target fuzzer's failures.

`write_reproducer` shrinks a failing case's float module with `kiln.testing.shrink` (delta
debugging over ops: return an earlier value, drop outputs, bypass ops, freeze values into
weights), keeping a candidate when the same runner still fails it with the same status, then
writes `<target>_<case>.kir` (+ `.npz` weights), `<target>_<case>.inputs.npz` (the inputs and
calibration batches) and `<target>_<case>.json` (target, status, detail, seed). `load_case`
reads them back for regression tests; a failure against PyTorch (`torch`) is not shrunk (the
PyTorch model is not IR), its traced module is written as it is.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from kiln.ir.graph import Module
from kiln.ir.serialize import load_module
from kiln.testing.shrink import shrink
from kiln.testing.xtarget import Case, Result, Runner


def still_fails(runner: Runner, case: Case, result: Result):  # type: ignore[no-untyped-def]
    """The predicate `shrink` needs: the same runner fails the candidate the same way."""
    def fails(candidate: Module) -> bool:
        try:
            got = runner.run_batch([case.with_module(candidate)])[0]
        except Exception:  # a runner failing as a whole on a candidate: not this bug
            return False
        return got is not None and got.status == result.status
    return fails


def minimize(case: Case, result: Result, runner: Runner, budget: int = 150) -> Module:
    """The smallest module found that `runner` still fails with `result.status`."""
    if result.runner == "torch":
        return case.module
    return shrink(case.module, still_fails(runner, case, result), case.inputs, budget)


def write_reproducer(case: Case, result: Result, runner: Runner, directory: Path,
                     budget: int = 150) -> Path:
    """Shrink and write the reproducer files (module docstring); the `.kir` path."""
    directory.mkdir(parents=True, exist_ok=True)
    small = minimize(case, result, runner, budget)
    stem = directory / f"{result.runner}_{case.name}"
    small.save(stem.with_suffix(".kir"))
    arrays = {f"x{i}": x for i, x in enumerate(case.inputs)}
    arrays.update({f"c{k}_{i}": x for k, batch in enumerate(case.calibration)
                   for i, x in enumerate(batch)})
    np.savez(stem.with_suffix(".inputs.npz"), **arrays)  # type: ignore[arg-type]
    meta = {"target": result.runner, "status": result.status, "detail": result.detail,
            "seed": case.seed, "origin": case.origin}
    stem.with_suffix(".json").write_text(json.dumps(meta, indent=1) + "\n")
    return stem.with_suffix(".kir")


def load_case(kir: Path) -> tuple[Case, dict[str, object]]:
    """A reproducer's case (module, inputs, calibration) and its metadata."""
    module = load_module(kir)
    data = np.load(kir.with_suffix(".inputs.npz"))
    inputs = tuple(data[f"x{i}"] for i in range(len(module.main.args)))
    batches = sorted({int(k[1:].split("_")[0]) for k in data.files if k.startswith("c")})
    calibration = tuple(tuple(data[f"c{k}_{i}"] for i in range(len(inputs))) for k in batches)
    meta = json.loads(kir.with_suffix(".json").read_text())
    return Case(int(meta["seed"]), module, inputs, calibration, str(meta["origin"])), meta

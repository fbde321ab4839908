"""The ONNX backend test data shipped inside the `onnx` package, run through kiln.

Directories `onnx/backend/test/data/{pytorch-converted,pytorch-operator,simple}`: each case is a
`model.onnx` plus `test_data_set_*/input_*.pb` and `output_*.pb`. Plus the `light` models the
`real` cases point to (AlexNet, ResNet-50, DenseNet-121, ... with constant-filled weights): their
inputs are made as the ONNX runner's `generate_dummy_data(random=False)` makes them and their
outputs are `light/<model>_output_0.pb`. kiln imports each model, interprets it, and compares
with the expected outputs at the ONNX backend tests' tolerances (rtol=1e-3, atol=1e-7). A case
that needs an op kiln does not support is skipped (UnsupportedOpError); one that imports and then
gives a wrong answer or crashes with anything but a KilnError fails.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from kiln.errors import UnsupportedOpError
from kiln.frontend.onnx_import import import_onnx
from kiln.ir.interpret import interpret

DATA = Path(onnx.__file__).parent / "backend" / "test" / "data"
SUITES = ("pytorch-converted", "pytorch-operator", "simple")
CASES = sorted(p for suite in SUITES for p in (DATA / suite).glob("test_*") if p.is_dir())
CASES += sorted((DATA / "light").glob("light_*.onnx"))
RTOL, ATOL = 1e-3, 1e-7
MIN_PASSED = 101
"""Floor for the summary (0.9 × today's count): 112 of 149 pass today, 37 use unsupported ops
(3-D conv/pool, sequences, strings, Gradient, Shrink, Sign, Expand/Gather on runtime shapes)."""

DataSet = tuple[list[np.ndarray], list[np.ndarray]]


def _load(path: Path) -> np.ndarray:
    return numpy_helper.to_array(onnx.load_tensor(str(path)))


def _data_sets(case: Path) -> list[DataSet]:
    """(inputs, expected outputs) of a case directory or of a light model file."""
    if case.is_dir():
        return [([_load(p) for p in sorted(d.glob("input_*.pb"))],
                 [_load(p) for p in sorted(d.glob("output_*.pb"))])
                for d in sorted(case.glob("test_data_set_*"))]
    model = onnx.load(str(case), load_external_data=False)
    inits = {t.name for t in model.graph.initializer}
    inputs = []
    for value in model.graph.input:
        if value.name in inits:
            continue
        shape = tuple(d.dim_value if d.HasField("dim_value") else 1
                      for d in value.type.tensor_type.shape.dim)
        n = math.prod(shape)
        inputs.append((np.arange(n).reshape(shape) / n).astype(np.float32))
    outputs = [_load(case.with_name(f"{case.stem}_output_{i}.pb"))
               for i in range(len(model.graph.output))]
    return [(inputs, outputs)]


def run_case(case: Path) -> str:
    """'passed' or 'unsupported: <reason>'; raises on a wrong answer or a crash."""
    try:
        module = import_onnx(case / "model.onnx" if case.is_dir() else case)
    except UnsupportedOpError as exc:
        return "unsupported: " + exc.diagnostics[-1].format().splitlines()[0]
    data_sets = _data_sets(case)
    assert data_sets, f"{case.name} has no test data"
    for inputs, expected in data_sets:
        got = interpret(module, *inputs)
        assert len(got) == len(expected), f"{case.name}: {len(got)} outputs"
        for g, want in zip(got, expected):
            assert g.shape == want.shape, f"{case.name}: shape {g.shape} != {want.shape}"
            np.testing.assert_allclose(g, want, rtol=RTOL, atol=ATOL, err_msg=case.name)
    return "passed"


@pytest.mark.parametrize("case", CASES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_backend_case(case: Path) -> None:
    outcome = run_case(case)
    if outcome != "passed":
        pytest.skip(outcome)


def test_backend_summary() -> None:
    """Every case that imports gives the right answer, and the pass count stays above a floor."""
    assert CASES, f"no ONNX backend test data under {DATA}"
    outcomes = {case.name: run_case(case) for case in CASES}
    passed = sum(o == "passed" for o in outcomes.values())
    unsupported = sum(o.startswith("unsupported") for o in outcomes.values())
    attempted = len(outcomes)
    print(f"onnx backend data: passed {passed} / attempted {attempted} "
          f"(unsupported {unsupported})")
    assert passed == attempted - unsupported
    assert passed >= MIN_PASSED

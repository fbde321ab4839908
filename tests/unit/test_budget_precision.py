"""Per-layer precision in the budget search (`kiln.targets.cost.budget_precision`).

Widths are realized in the fixed-point IR (types re-derived, the module verifies and runs in
the interpreter), every narrowing is checked by SQNR against the float model on calibration
samples from a fresh seed, the threshold is honoured, the Pareto rows carry the error, and
io="stream" searches with the stream estimator.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

import kiln
from kiln.compiler.pass_manager import run_passes
from kiln.errors import KilnError
from kiln.ir.graph import Module
from kiln.ir.interpret import interpret
from kiln.ir.types import FixedType
from kiln.ir.verifier import verify
from kiln.models import example_inputs, get_model
from kiln.targets.cost.budget import search
from kiln.targets.cost.budget_precision import PrecisionGuard, narrow, samples_of, sqnr_db
from kiln.targets.cost.fpga_stream import StreamEstimate, estimate_stream


@pytest.fixture(scope="module")
def jet() -> tuple[Module, Module, list[Any]]:
    """(float IR, fixed-point IR with LUT softmax, calibration batches)."""
    rng = np.random.default_rng()
    calib = [(rng.standard_normal((16, 16)).astype(np.float32),)]
    float_ir = run_passes(kiln.trace(get_model("jet_mlp"), example_inputs("jet_mlp")),
                          "canonicalize,fold-constants,cse,dce")
    fixed_ir = run_passes(float_ir, "fixed-point{width=16},fixed-activations",
                          calibration_data=calib)
    return float_ir, fixed_ir, calib


def _type(module: Module, name: str) -> FixedType:
    value = next(r for op in module.main.ops for r in op.results if r.name == name)
    assert isinstance(value.type.dtype, FixedType)
    return value.type.dtype


def test_narrow_realizes_inputs_weights_and_outputs(jet: tuple[Module, Module, list]) -> None:
    _, fixed_ir, _ = jet
    narrowed = narrow(fixed_ir, {"fc2": 8})
    assert narrowed is not None
    verify(narrowed)
    for name in ("fc1", "fc2", "fc2.weight.fixed"):  # fc2's input, output and weights
        before, after = _type(fixed_ir, name), _type(narrowed, name)
        assert (after.width, after.integer) == (8, before.integer), name
    assert _type(narrowed, "fc3").width == 16 and _type(fixed_ir, "fc2").width == 16
    x = np.random.default_rng().standard_normal((1, 16)).astype(np.float32)
    assert interpret(narrowed, x)[0].shape == (1, 5)
    too_narrow = max(_type(fixed_ir, "fc1").integer, 1) - 1
    assert narrow(fixed_ir, {"fc1": too_narrow}) is None  # no fraction bits left


def test_sqnr() -> None:
    assert sqnr_db([np.ones(3)], [np.ones(3)]) == math.inf
    assert sqnr_db([np.array([1.1, 0.9])], [np.ones(2)]) == pytest.approx(20.0)


def test_guard_threshold_decides_the_widths(jet: tuple[Module, Module, list]) -> None:
    float_ir, fixed_ir, calib = jet
    strict = PrecisionGuard(float_ir, samples_of(calib, 16), min_sqnr_db=200.0)
    result = search(fixed_ir, "xczu9eg", {"dsp": 600}, precisions=[8, 10, 12], guard=strict)
    assert result.bits == {} and result.estimate.total("dsp") <= 600  # reuse factors only
    loose = PrecisionGuard(float_ir, samples_of(calib, 16), min_sqnr_db=30.0)
    result = search(fixed_ir, "xczu9eg", {"lut": 20000}, precisions=[8, 10, 12], guard=loose)
    assert result.bits and set(result.bits.values()) <= {8, 10, 12}
    assert result.estimate.total("lut") <= 20000
    assert loose.sqnr_db(result.bits) >= 30.0
    assert result.module is not None and _type(result.module, "fc1").width in (8, 10, 12)
    rows = result.pareto
    assert rows and all({"latency_cycles", "dsp", "lut", "bram", "sqnr_db", "bits",
                         "reuse_factor"} <= set(row) for row in rows)


def test_stream_search_costs_the_dataflow_design(jet: tuple[Module, Module, list]) -> None:
    float_ir, fixed_ir, calib = jet
    result = search(fixed_ir, "xczu9eg", {"dsp": 1000}, io="stream")
    assert isinstance(result.estimate, StreamEstimate)
    chosen = {k: v for k, v in result.reuse_factor.items() if v != 1}
    again = estimate_stream(fixed_ir, reuse_factor=chosen)
    assert again.total("dsp") == result.estimate.total("dsp") <= 1000
    with pytest.raises(KilnError, match="needs a PrecisionGuard"):
        search(fixed_ir, "xczu9eg", {"dsp": 1000}, io="stream", precisions=[8])
    guard = PrecisionGuard(float_ir, samples_of(calib, 8), min_sqnr_db=20.0)
    # 5 DSPs: the softmax normalizer's multipliers; every dense product must leave the DSPs
    narrowed = search(fixed_ir, "xczu9eg", {"dsp": 5, "latency_ns": 2000}, io="stream",
                      precisions=[4, 5, 8], guard=guard)
    assert narrowed.estimate.total("dsp") <= 5 and narrowed.bits
    assert guard.sqnr_db(narrowed.bits) >= 20.0


def test_fpga_target_builds_the_narrowed_module(jet: tuple[Module, Module, list],
                                                tmp_path: Any) -> None:
    _, _, calib = jet
    art = kiln.compile(get_model("jet_mlp"), example_inputs("jet_mlp"), target="fpga",
                       budget={"lut": 20000}, budget_precisions=[8, 10, 12],
                       calibration_data=calib, cache_dir=str(tmp_path))
    entry = art.report()["budget"]
    assert entry["chosen_bits"] and entry["min_sqnr_db"] == 30.0
    fixed_ir = art.artifact.module  # type: ignore[attr-defined]
    for name, width in entry["chosen_bits"].items():
        assert _type(fixed_ir, name).width <= width
    x = np.random.default_rng().standard_normal((1, 16)).astype(np.float32)
    assert np.array_equal(np.asarray(art(x)).reshape(-1),
                          interpret(fixed_ir, x)[0].reshape(-1))

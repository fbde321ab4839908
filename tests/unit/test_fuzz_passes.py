"""The random graph generator, the differential checker, and a bounded fuzz of every named
pipeline and every registered pass (`bench/fuzz_passes.py` runs thousands of graphs)."""

from __future__ import annotations

import importlib.util
import math
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from kiln.errors import KilnError
from kiln.ir.builder import new_function
from kiln.ir.graph import Module
from kiln.ir.interpret import interpret
from kiln.ir.ops import all_ops
from kiln.ir.ops.elementwise import Clamp, LeakyRelu, Relu
from kiln.ir.ops.nn_norm import LocalResponseNorm
from kiln.ir.parser import parse
from kiln.ir.rewriter import Rewriter
from kiln.ir.types import TensorType
from kiln.ir.verifier import verify
from kiln.passes.registry import PassContext, register_pass, unregister_pass
from kiln.testing import random_inputs, random_module
from kiln.testing.differential import check, check_elided, compare, run_quietly
from kiln.testing.generators import GENERATORS, OP_GENERATORS
from kiln.testing.shrink import failure_predicate, shrink, size
from kiln.testing.targets import (
    INPUT_SEED_OFFSET,
    fuzz_calibration,
    fuzz_inputs,
    fuzz_targets,
)

FUZZ_RUNS = 4000
"""Target runs the bounded fuzz makes: FUZZ_RUNS / targets graphs (at least 40, at most 150;
about 100 graphs and 40 s single-threaded with the 41 targets of today)."""

NOT_GENERATED_FAMILIES = {
    "kiln.ir.ops.quant", "kiln.ir.ops.qnn", "kiln.ir.ops.qnn_pool",  # integer, bit-exact paths
    "kiln.ir.ops.qnn_eltwise",
    "kiln.ir.ops.fused",  # made by `fuse`
    "kiln.ir.ops.layout",  # NHWC twins, made by `layout`
    "kiln.ir.ops.lut",  # fixed-point FPGA activations, made by `fixed-activations`
    "kiln.ir.ops.fixed_norm",  # fixed-point layer norm / GELU, made by `fixed-transformer`
}
"""Op families the generator leaves out on purpose (its float graphs never need them); any
other op a new family or file registers must get a generator."""


# -- the generator -----------------------------------------------------------------------------
def test_a_thousand_seeds_build_and_verify() -> None:
    for seed in range(1000):
        verify(random_module(seed))


def test_generation_is_deterministic() -> None:
    for seed in (0, 7, 123):
        assert random_module(seed) == random_module(seed)
        a, b = random_inputs(random_module(seed), 5), random_inputs(random_module(seed), 5)
        assert all(np.array_equal(x, y) for x, y in zip(a, b))


def test_generated_outputs_are_finite_and_moderate() -> None:
    for seed in range(300):
        module = random_module(seed)
        for out in interpret(module, *random_inputs(module, seed + INPUT_SEED_OFFSET)):
            assert np.all(np.isfinite(out)), seed
            assert float(np.max(np.abs(out), initial=0.0)) < 1e6, seed


def test_the_generator_covers_every_op_not_excluded() -> None:
    seen: Counter[str] = Counter()
    for seed in range(400):
        seen.update(random_module(seed, max_ops=16).op_counts())
    expected = {name for name, cls in all_ops().items()
                if cls.__module__.startswith("kiln.")  # not the test-only ops of test files
                and cls.__module__ not in NOT_GENERATED_FAMILIES and name != "kiln.yield"}
    assert sorted(expected - set(seen)) == []


@pytest.mark.parametrize("name", sorted(GENERATORS))
def test_each_generator_alone_builds_valid_modules(name: str) -> None:
    made: Counter[str] = Counter()
    for seed in range(12):
        module = random_module(seed, max_ops=4, ops=[name])
        verify(module)
        made.update(module.op_counts())
    if name in OP_GENERATORS:
        assert made[f"kiln.{name}"] > 0


def test_ops_accepts_the_kiln_prefix_and_rejects_unknown_names() -> None:
    assert "kiln.softmax" in random_module(3, ops=["kiln.softmax"]).op_counts()
    with pytest.raises(KilnError, match="no op frobnicate"):
        random_module(0, ops=["frobnicate"])


def test_special_inputs_hold_nan_and_infinities() -> None:
    module = random_module(2)
    plain = random_inputs(module, 9)
    special = random_inputs(module, 9, special=0.2)
    assert all(np.isfinite(x).all() for x in plain)
    values = np.concatenate([x.ravel() for x in special])
    assert np.isnan(values).any() and np.isposinf(values).any() and np.isneginf(values).any()
    assert len(fuzz_inputs(module, 3)) == len(plain)


# -- regressions the fuzzer found --------------------------------------------------------------
def test_local_response_norm_windows_after_an_infinity_stay_finite() -> None:
    """The reference summed windows as differences of running sums, so an inf channel made
    every later window inf - inf = NaN (and a huge one cost later windows their precision);
    torch sums each window, as the decomposition does."""
    torch = pytest.importorskip("torch")
    kind = LocalResponseNorm(size=3, alpha=0.5, k=2.0)
    x = np.random.default_rng(0).standard_normal((1, 7, 2)).astype(np.float32)
    x[0, 1, 0] = np.inf
    x[0, 2, 1] = 1e18
    (got,) = kind.reference(x)
    want = torch.nn.functional.local_response_norm(torch.from_numpy(x), 3, 0.5, 0.75, 2.0)
    np.testing.assert_allclose(got, want.numpy(), rtol=1e-5)
    assert np.isfinite(got[0, 4:]).all()


def test_fixed_point_clamp_with_an_infinite_bound() -> None:
    """fixed-point keeps `clamp(x, min=-inf)` (a valid, one-sided clamp); interpreting the
    result raised OverflowError: cannot convert Infinity to integer ratio."""
    module = Module("clamp")
    func, b = new_function(module, "forward", [TensorType((2, 3))])
    b.ret(b.add(Clamp(min=-math.inf, max=1.5), func.args[0]))
    inputs = random_inputs(module, 0)
    outcome = check(module, "fixed-point", inputs, tolerance=None, calibration=[tuple(inputs)])
    assert outcome.status == "ok", outcome.detail


def test_fixed_point_keeps_elided_weights_elided() -> None:
    """`fixed-point{policy=uniform}` (which needs no data) on a module whose weights are elided
    left it half-elided: the verifier then wants data for @w."""
    text = """
kiln.module @m {
  kiln.func @forward(%x: tensor<3x4xf32>) -> tensor<3x4xf32> {
    %w = kiln.weight @w : tensor<4xf32>
    %c = kiln.constant {value = dense<1.0> : tensor<f32>} : tensor<f32>
    %a = kiln.add(%x, %w) : tensor<3x4xf32>
    %b = kiln.add(%a, %c) : tensor<3x4xf32>
    kiln.return %b
  }
}
"""
    outcome = check_elided(parse(text), "fixed-point{policy=uniform,width=16,integer=6}")
    assert outcome.status == "ok", outcome.detail


# -- the comparison ----------------------------------------------------------------------------
def test_compare_uses_the_relative_error_and_nan_positions() -> None:
    want = np.array([1.0, -4.0, np.nan], np.float32)
    assert compare([want], [want.copy()]) is None
    close = want + np.float32(3e-5)
    assert compare([want], [close]) is None  # 3e-5 / 4 < 1e-5
    problem = compare([want], [want + np.float32(1e-4)])
    assert problem is not None and "relative error" in problem
    moved = np.array([np.nan, -4.0, 1.0], np.float32)
    assert compare([want], [moved]) == "output 0: NaN in different places"
    assert compare([want], [want[:2]]) is not None
    assert compare([want], []) == "0 outputs instead of 1"
    inf = np.array([np.inf, 1.0], np.float32)
    assert compare([inf], [-inf]) is not None and compare([inf], [inf.copy()]) is None


# -- planted bugs are caught, shrunk and reported ----------------------------------------------
@pytest.fixture
def planted_passes() -> Iterator[None]:
    """`test-leaky`: relu → leaky_relu(0.5) (a wrong rewrite); `test-raise`: always raises."""
    def leaky(module: Module, ctx: PassContext) -> bool:
        """Rewrite relu into a leaky relu (wrong on purpose)."""
        rewriter = Rewriter(module)
        for op in list(module.main.ops):
            if op.isa(Relu):
                new = rewriter.builder_before(op).add(LeakyRelu(slope=0.5), op.operands[0])
                rewriter.replace_op(op, [new])
        return rewriter.changes > 0

    def raises(module: Module, ctx: PassContext) -> bool:
        """Fail on every module."""
        raise RuntimeError("planted crash")

    register_pass("test-leaky")(leaky)
    register_pass("test-raise")(raises)
    try:
        yield
    finally:
        unregister_pass("test-leaky")
        unregister_pass("test-raise")


@pytest.mark.usefixtures("planted_passes")
def test_a_wrong_rewrite_is_a_mismatch_and_shrinks_to_the_relu() -> None:
    for seed in range(50):
        module = random_module(seed, max_ops=10, ops=["relu", "add", "conv2d", "exp", "sub"])
        inputs = random_inputs(module, seed)
        outcome = check(module, "test-leaky", inputs)
        if outcome.status == "mismatch":
            break
    else:
        pytest.fail("the planted bug was never caught")
    assert "relative error" in outcome.detail
    small = shrink(module, failure_predicate("test-leaky", inputs, "mismatch"), inputs)
    assert size(small) < size(module) and size(small) <= 2
    assert "kiln.relu" in small.op_counts()
    verify(small)


@pytest.mark.usefixtures("planted_passes")
def test_a_raising_pass_is_a_crash() -> None:
    module = random_module(1)
    outcome = check(module, "canonicalize,test-raise", random_inputs(module, 1))
    assert outcome.status == "crash" and "planted crash" in outcome.detail


def _load_bench() -> object:
    path = Path(__file__).parents[2] / "bench" / "fuzz_passes.py"
    name = "fuzz_passes_bench"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    sys.modules[name] = bench  # dataclasses look their module up while the file runs
    spec.loader.exec_module(bench)
    return bench


@pytest.mark.usefixtures("planted_passes")
def test_the_bench_writes_shrunk_reproducers(tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    bench = _load_bench()
    status = bench.main(["--graphs", "4", "--targets", "dce,test-raise",  # type: ignore[attr-defined]
                         "--out", str(tmp_path), "--cases-per-target", "1"])
    assert status == 1
    out, err = capsys.readouterr()
    assert "test-raise" in out and "total" in out
    assert "reproducer:" in err
    case = next((tmp_path / "test-raise").iterdir())
    assert {p.name for p in case.iterdir()} >= {"original.kir", "minimized.kir", "inputs.npz",
                                               "pipeline.txt"}


# -- the bounded fuzz --------------------------------------------------------------------------
def test_every_pipeline_and_pass_keeps_numerics() -> None:
    """Random graphs through every named pipeline and every pass alone (with the fuzzer's option
    sets): outputs within 1e-5 with NaN where they were (lossy passes: same shapes and dtypes),
    and no pass crashes, with the weights present or elided."""
    targets = fuzz_targets()
    assert "default" in [t.pipeline for t in targets]
    failures = []
    for seed in range(min(150, max(40, FUZZ_RUNS // len(targets)))):
        module = random_module(seed)
        inputs, calibration = fuzz_inputs(module, seed), fuzz_calibration(module, seed)
        want = run_quietly(module, inputs)
        for target in targets:
            outcomes = (check(module, target.pipeline, inputs, want, tolerance=target.tolerance,
                              calibration=calibration),
                        check_elided(module, target.pipeline, calibration=calibration))
            verdicts = (target.judge(outcomes[0]), target.judge(outcomes[1], elided=True))
            failures += [f"seed {seed}, {target.pipeline}: {v}: {o.detail}"
                         for o, v in zip(outcomes, verdicts) if v in ("mismatch", "crash")]
    assert failures == [], "\n".join(failures[:20]) + \
        "\n(reproduce and shrink: bench/fuzz_passes.py --seed N --graphs 1)"

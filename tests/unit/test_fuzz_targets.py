"""The cross-target fuzzer (`bench/fuzz.py`): its parts, and a bounded deterministic run.

The bounded run sends a fixed set of random models (kiln graphs, graphs of HLS layers, traced
PyTorch modules) through PyTorch, every named pipeline and every target this machine has:
cpu fp32 (1e-4 relative to the interpreter), cpu int8 (bit for bit on integer-only models),
gpu under Triton's interpreter (1e-4), fpga and asic C-simulations (bit for bit with the
interpreter on the fixed-point IR). It must find nothing. The parts are tested on purpose-made
failures: a batch with one model gcc rejects, a child that segfaults, a refusal after the
support check, a mismatch, and shrinking to a reproducer.
"""

from __future__ import annotations

import os
import shutil
import signal
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from kiln.errors import KilnError
from kiln.ir.graph import Module
from kiln.ir.parser import parse
from kiln.testing import xtarget_gpu  # noqa: F401  (Triton's mode, before any tracing)
from kiln.testing.xtarget import Case, Result, Tally, failure, judge, run_cases
from kiln.testing.xtarget_batch import ChildDied, bisect, in_child
from kiln.testing.xtarget_cases import PipelineRunner, TorchRunner, case_for, make_case
from kiln.testing.xtarget_shrink import load_case, write_reproducer

HAVE_GCC = shutil.which("gcc") is not None
HAVE_GXX = shutil.which("g++") is not None
BOUNDED_SEEDS = range(100, 130)
"""30 models: 15 kiln graphs, 9 HLS-layer graphs, 6 PyTorch modules (about 40 s)."""


def _runners(work: Path) -> list:  # type: ignore[type-arg]
    from kiln.testing.xtarget_cpu import CpuRunner
    from kiln.testing.xtarget_gpu import GpuRunner
    from kiln.testing.xtarget_hls import HlsRunner

    found: list = [PipelineRunner(), TorchRunner(), GpuRunner()]  # type: ignore[type-arg]
    if HAVE_GCC:
        found += [CpuRunner(work), CpuRunner(work, int8=True)]
    if HAVE_GXX:
        found += [HlsRunner(work, "fpga"), HlsRunner(work, "asic")]
    return found


def test_bounded_run_across_targets_finds_nothing(tmp_path: Path) -> None:
    cases = [make_case(seed) for seed in BOUNDED_SEEDS]
    assert {c.origin for c in cases} == {"graph", "hls", "torch"}
    tally = run_cases(cases, _runners(tmp_path))
    report = "\n".join(f"{c.name} {r.runner} {r.status}: {r.detail}" for c, r in tally.failures)
    assert not tally.failures, report
    assert tally.counts["torch"]["ok"] == sum(c.origin == "torch" for c in cases)
    assert tally.counts["pipelines"]["ok"] == len(cases)
    floors = {"gpu": len(cases) // 2, "cpu": len(cases) // 2, "cpu-int8": len(cases) // 2,
              "fpga": sum(c.origin == "hls" for c in cases) // 2}  # the rest: refusals
    for name, floor in floors.items():
        if name in tally.counts:
            assert tally.counts[name]["ok"] >= floor, (name, tally.counts[name])
    assert "models/s" in tally.table(1.0)


def test_cases_are_deterministic() -> None:
    for seed in (3, 5, 8):
        a, b = make_case(seed), make_case(seed)
        assert a.module == b.module and a.origin == b.origin
        for x, y in zip(a.inputs, b.inputs):
            np.testing.assert_array_equal(x, y)
        assert np.isfinite(np.concatenate([x.ravel() for x in a.inputs])).all()
    torch_case = make_case(8)
    assert torch_case.origin == "torch" and torch_case.torch_outputs is not None


# -- judging ------------------------------------------------------------------------------------
def test_judge_tolerances() -> None:
    want = [np.array([1.0, 2.0, 4.0], np.float32)]
    near = [want[0] * np.float32(1 + 2e-5)]
    assert judge("t", want, near, 1e-4).status == "ok"
    assert judge("t", want, near, 0.0).status == "mismatch"
    far = [want[0] + np.float32(0.01)]
    assert judge("t", want, far, 1e-4).status == "mismatch"
    assert judge("t", want, [want[0][:2]], 1e-4).status == "mismatch"
    assert judge("t", want, [want[0].copy()], 0.0).status == "ok"


def test_refusal_and_crash_classification() -> None:
    assert failure("t", KilnError("no kernel"), refusable=True).status == "refused"
    assert failure("t", KilnError("no kernel")).status == "crash"
    assert failure("t", ValueError("boom"), refusable=True).status == "crash"


# -- batching -----------------------------------------------------------------------------------
def test_bisect_finds_the_failing_items() -> None:
    def attempt(items: Sequence[int]) -> int:
        if 3 in items or 6 in items:
            raise ValueError("bad")
        return sum(items)

    good, bad = bisect(list(range(8)), attempt)
    assert sorted(i for i, _ in bad) == [3, 6]
    assert sorted(i for group, _ in good for i in group) == [0, 1, 2, 4, 5, 7]


def test_child_answers_and_dies() -> None:
    assert in_child(lambda: [np.arange(3)])[0].tolist() == [0, 1, 2]
    with pytest.raises(RuntimeError, match="ZeroDivisionError"):
        in_child(lambda: 1 // 0)
    with pytest.raises(ChildDied, match="SIGSEGV"):
        in_child(lambda: os.kill(os.getpid(), signal.SIGSEGV))


def _relu_case(seed: int, name: str) -> Case:
    module = parse(f"""
kiln.module @{name} {{
  kiln.func @forward(%x: tensor<1x7xf32>) -> (tensor<1x3xf32>) {{
    %w = kiln.weight @w : tensor<3x7xf32>
    %y = kiln.linear(%x, %w) : tensor<1x3xf32>
    %r = kiln.relu(%y) : tensor<1x3xf32>
    kiln.return %r
  }}
}}""", {"w": np.random.default_rng(seed).standard_normal((3, 7)).astype(np.float32)})
    return case_for(module, seed, "graph")


@pytest.mark.skipif(not HAVE_GCC, reason="needs gcc")
def test_cpu_batch_isolates_a_model_gcc_rejects(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    from kiln.testing import xtarget_cpu

    runner = xtarget_cpu.CpuRunner(tmp_path)
    real = runner.write

    def sabotage(folder: Path, ready: Sequence[xtarget_cpu._Ready]) -> None:
        real(folder, ready)
        (folder / f"m{ready[1].index}" / "model.c").write_text("int broken(void) { return }\n")

    monkeypatch.setattr(runner, "write", sabotage)
    results = runner.run_batch([_relu_case(s, f"m{s}") for s in range(4)])
    assert [r.status if r else None for r in results] == ["ok", "crash", "ok", "ok"]
    assert results[1] is not None and results[1].detail.startswith("gcc:")


@pytest.mark.skipif(not HAVE_GCC, reason="needs gcc")
def test_cpu_refusing_after_the_support_check_is_a_crash(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from kiln.testing import xtarget_cpu

    def refuse(module: Module, options: object) -> None:
        raise KilnError("no kernel for this attribute")

    monkeypatch.setattr(xtarget_cpu, "lower", refuse)
    result = xtarget_cpu.CpuRunner(tmp_path).run_batch([_relu_case(1, "m1")])[0]
    assert result is not None and result.status == "crash"


@pytest.mark.skipif(not HAVE_GXX, reason="needs g++")
def test_fpga_batch_is_bit_exact_and_isolates_a_bad_model(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from kiln.testing import xtarget_hls

    runner = xtarget_hls.HlsRunner(tmp_path, "fpga")
    cases = [_relu_case(s, f"m{s}") for s in range(3)]
    assert [r.status if r else None for r in runner.run_batch(cases)] == ["ok"] * 3
    real = runner.write

    def sabotage(folder: Path, ready: Sequence[xtarget_hls._Ready]) -> None:
        real(folder, ready)
        path = folder / "firmware" / f"{ready[0].name}.cpp"
        path.write_text(path.read_text() + "\nint oops = ;\n")

    monkeypatch.setattr(runner, "write", sabotage)
    statuses = [r.status if r else None for r in runner.run_batch(cases)]
    assert statuses == ["crash", "ok", "ok"]


# -- shrinking ----------------------------------------------------------------------------------
class _FailsOnTanh:
    """A runner that 'mismatches' every model holding a tanh (a stand-in for a target bug)."""

    name = "fake"

    def run_batch(self, cases: Sequence[Case]) -> list[Result | None]:
        return [Result(self.name, "mismatch" if any(op.name == "kiln.tanh"
                                                    for op in c.module.main.ops) else "ok")
                for c in cases]


def test_shrinks_to_a_reproducer_and_reads_it_back(tmp_path: Path) -> None:
    module = parse("""
kiln.module @big {
  kiln.func @forward(%x: tensor<2x5xf32>) -> (tensor<2x5xf32>) {
    %a = kiln.relu(%x) : tensor<2x5xf32>
    %b = kiln.sigmoid(%a) : tensor<2x5xf32>
    %c = kiln.tanh(%b) : tensor<2x5xf32>
    %d = kiln.neg(%c) : tensor<2x5xf32>
    %e = kiln.add(%d, %a) : tensor<2x5xf32>
    kiln.return %e
  }
}""")
    case = case_for(module, 11, "graph")
    runner = _FailsOnTanh()
    result = runner.run_batch([case])[0]
    assert result is not None
    path = write_reproducer(case, result, runner, tmp_path)
    back, meta = load_case(path)
    assert [op.name for op in back.module.main.ops if op.name != "kiln.return"] == ["kiln.tanh"]
    assert meta["target"] == "fake" and meta["status"] == "mismatch" and meta["seed"] == 11
    for x, y in zip(back.inputs, case.inputs):
        np.testing.assert_array_equal(x, y)
    assert len(back.calibration) == len(case.calibration)


def test_tally_counts_and_skips() -> None:
    tally = Tally()
    case = _relu_case(0, "m0")
    tally.add(case, [Result("a", "ok"), None, Result("a", "crash", "x"),
                     Result("b", "refused", "why")])
    assert tally.counts["a"] == {"ok": 1, "refused": 0, "mismatch": 0, "crash": 1}
    assert tally.refusals["b"] == {"why": 1}
    assert len(tally.failures) == 1

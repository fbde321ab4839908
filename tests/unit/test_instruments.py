"""Pass instruments: printing, dumps, timing, numerics checking and reproducers.

The broken passes live in `instrument_passes.py`, loaded the way `kiln-opt --load-passes` loads
them (so reproducers can name the file) and unregistered after each test.
"""

from __future__ import annotations

import io
import shlex
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pytest

import kiln
from kiln.compiler.instruments import (
    Instrument,
    PassFailure,
    PassRecord,
    StepInfo,
    dump_name,
    format_timing,
)
from kiln.compiler.numerics import locate_drift, rel_error, run_stage
from kiln.compiler.pass_manager import PassManager, run_passes
from kiln.errors import InterpretError, PassError
from kiln.ir.builder import new_function
from kiln.ir.graph import Module
from kiln.ir.location import Location
from kiln.ir.ops.elementwise import Add, Mul, Relu
from kiln.ir.parser import parse
from kiln.ir.serialize import load_module
from kiln.ir.types import TensorType
from kiln.models import example_inputs, get_model, list_models
from kiln.passes.registry import unregister_pass
from kiln.tools.kiln_opt import load_passes, main

PLUGIN = Path(__file__).with_name("instrument_passes.py")
KILN_OPT = Path(sys.executable).parent / "kiln-opt"
BROKEN = "canonicalize,broken-scale,cse,dce"


@pytest.fixture
def broken() -> Iterator[None]:
    """Registers `broken-scale` and `broken-crash` for one test."""
    module = load_passes(str(PLUGIN))
    yield
    for name in module.BROKEN_PASSES:
        unregister_pass(name)
    sys.modules.pop(module.__name__, None)


def net() -> Module:
    """x * w → relu → + b, a dead relu at the end; every op named and located in net.py."""
    m = Module("net")
    func, b = new_function(m, "forward", [TensorType((2, 4))], ["x"])
    rng = np.random.default_rng(3)
    w = b.weight("fc1.weight", rng.standard_normal(4).astype(np.float32))
    with b.at_loc(Location("net.py", 12, "fc1")):
        h = b.add(Mul(), func.args[0], w, name="fc1")
    with b.at_loc(Location("net.py", 13, "relu1")):
        r = b.add(Relu(), h, name="relu1")
    bias = b.weight("out.bias", rng.standard_normal(4).astype(np.float32))
    with b.at_loc(Location("net.py", 14, "out")):
        out = b.add(Add(), r, bias, name="out")
    b.add(Relu(), out, name="dead")
    b.ret(out)
    return m


def drift_error(pipeline: str, tmp_path: Path, **options: object) -> str:
    with pytest.raises(PassError) as info:
        run_passes(net(), pipeline, check_numerics=True, reproducer_dir=tmp_path / "repro",
                   **options)
    return str(info.value)


# -- check numerics ------------------------------------------------------------------------------
def test_check_numerics_names_the_pass_and_the_op(broken: None, tmp_path: Path) -> None:
    text = drift_error(BROKEN, tmp_path)
    assert text.startswith("error: after canonicalize: pass 'broken-scale' changed the model's "
                           "outputs: max rel error ")
    assert "> 1e-05; first drifting op: 'kiln.mul' %fc1 at net.py:13 (relu1), rel error " \
           "5.0e-01" in text
    assert "net.py:13 (relu1): error: 'kiln.mul' op result %fc1 drifted" in text
    assert "operand(s) %scale did not exist before the pass" in text


def test_an_unmatched_product_points_at_its_first_matched_user(broken: None,
                                                               tmp_path: Path) -> None:
    text = drift_error("broken-scale{keep-name=false}", tmp_path)
    assert "first drifting op: 'kiln.relu' %relu1 at net.py:13 (relu1)" in text
    assert "operand(s) %scaled did not exist before the pass and may carry the error" in text


def test_rtol_and_given_inputs(broken: None, tmp_path: Path) -> None:
    run_passes(net(), "broken-scale{factor=1.000001}", check_numerics=True, numerics_rtol=1e-4)
    zero = np.zeros((2, 4), np.float32)  # scaling zero changes nothing: the given input is used
    run_passes(net(), "broken-scale", check_numerics=True, numerics_inputs=[zero])
    with pytest.raises(PassError, match=r"broken-scale(.|\n)*hint: check_numerics ran on the "
                                        r"caller's inputs; kiln-opt"):
        run_passes(net(), "broken-scale", check_numerics=True, reproducer_dir=tmp_path,
                   numerics_inputs=[[zero], [zero + 1]])


def test_check_numerics_needs_weights() -> None:
    elided = parse(net().to_text())
    with pytest.raises(InterpretError, match="cannot interpret the input module"):
        run_passes(elided, "dce", check_numerics=True)


@pytest.mark.parametrize("name", list_models())
def test_default_pipeline_keeps_every_bundled_model(name: str) -> None:
    module = kiln.trace(get_model(name), example_inputs(name))
    result = PassManager("default", check_numerics=True).run(module)
    assert [r.step for r in result.records] == ["canonicalize", "fold-batchnorm", "fold-constants",
                                                "cse", "fuse", "cse", "dce"]
    run_passes(module, "default", check_numerics=True, numerics_inputs=example_inputs(name))


def test_drift_on_a_traced_model_names_the_layer(broken: None, tmp_path: Path) -> None:
    module = kiln.trace(get_model("lenet5"), example_inputs("lenet5"))
    with pytest.raises(PassError) as info:
        run_passes(module, BROKEN, check_numerics=True, reproducer_dir=tmp_path)
    assert "pass 'broken-scale' changed the model's outputs" in str(info.value)
    assert "first drifting op: 'kiln.mul' %conv1 at (relu1)" in str(info.value)


FUSED_BEFORE = """kiln.module @m {
  kiln.func @forward(%x: tensor<4xf32>) -> (tensor<4xf32>) {
    %a = kiln.mul(%x, %x) : tensor<4xf32>
    %b = kiln.relu(%a) : tensor<4xf32>
    %out = kiln.neg(%b) : tensor<4xf32>
    kiln.return %out
  }
}
"""
FUSED_AFTER = """kiln.module @m {
  kiln.func @forward(%x: tensor<4xf32>) -> (tensor<4xf32>) {
    %a = kiln.mul(%x, %x) : tensor<4xf32>
    %b = kiln.fused(%a) {pattern = "relu"} ({
    ^bb0(%p: tensor<4xf32>):
      %q = kiln.exp(%p) : tensor<4xf32>
      kiln.yield %q
    }) : tensor<4xf32> loc("net.py":5 "act")
    %out = kiln.neg(%b) : tensor<4xf32>
    kiln.return %out
  }
}
"""


def test_a_fused_op_is_matched_by_its_result_names() -> None:
    samples = [[np.linspace(-1, 1, 4, dtype=np.float32)]]
    before, after = run_stage(parse(FUSED_BEFORE), samples), parse(FUSED_AFTER)
    drift = locate_drift(after.main, run_stage(after, samples).values[0], before.named[0], 1e-5)
    assert drift is not None and drift.op is not None and drift.value is not None
    assert (drift.op.name, drift.value.name, drift.op.loc.line) == ("kiln.fused", "b", 5)
    assert locate_drift(after.main, run_stage(after, samples).values[0], {}, 1e-5) is None


def test_rel_error() -> None:
    a = np.array([1.0, 2.0, np.nan])
    assert rel_error(a, a) == 0.0
    assert rel_error(np.array([1.0, 2.5]), np.array([1.0, 2.0])) == pytest.approx(0.25)
    assert rel_error(a, np.array([1.0, 2.0, 3.0])) == float("inf")
    assert rel_error(np.zeros(2), np.zeros(3)) == float("inf")
    assert rel_error(np.zeros(2), np.zeros(2)) == 0.0


# -- reproducers ---------------------------------------------------------------------------------
def test_reproducer_folder_holds_input_weights_and_pipeline(broken: None, tmp_path: Path) -> None:
    text = drift_error(BROKEN, tmp_path)
    folder = tmp_path / "repro"
    assert f"reproducer written to {folder}; rerun with: kiln-opt " in text
    assert sorted(p.name for p in folder.iterdir()) == ["error.txt", "input.kir", "input.npz",
                                                       "pipeline.txt"]
    assert load_module(folder / "input.kir") == run_passes(net(), "canonicalize")
    lines = (folder / "pipeline.txt").read_text().splitlines()
    assert "remaining pipeline: broken-scale,cse,dce" in lines
    assert f"full pipeline: {BROKEN}" in lines
    command = next(line for line in lines if line.startswith("command: "))
    assert command == "command: " + shlex.join([
        "kiln-opt", str(folder / "input.kir"), "-p", "broken-scale,cse,dce", "--check-numerics",
        "--load-passes", str(PLUGIN)])
    assert "changed the model's outputs" in (folder / "error.txt").read_text()


def rerun(folder: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    """The reproducer's command, run with this venv's `kiln-opt`."""
    text = (folder / "pipeline.txt").read_text()
    command = shlex.split(text.split("command: ", 1)[1].splitlines()[0])
    assert command[0] == "kiln-opt"
    return subprocess.run([str(KILN_OPT), *command[1:], *extra], capture_output=True,
                          text=True, timeout=120, check=False)


def test_rerunning_the_reproducer_repeats_the_drift(broken: None, tmp_path: Path) -> None:
    drift_error(BROKEN, tmp_path)
    again = rerun(tmp_path / "repro", "--reproducer-dir", str(tmp_path / "again"))
    assert again.returncode == 1 and again.stdout == ""
    assert again.stderr.startswith("kiln-opt: error: at the start of the pipeline: pass "
                                   "'broken-scale' changed the model's outputs")
    assert "first drifting op: 'kiln.mul' %fc1 at net.py:13 (relu1)" in again.stderr
    assert (tmp_path / "again" / "input.kir").read_text() == \
        (tmp_path / "repro" / "input.kir").read_text()


def test_kiln_opt_reproduces_a_crash(tmp_path: Path) -> None:
    source = tmp_path / "net.kir"
    net().save(source)
    folder = tmp_path / "crash"
    first = subprocess.run([str(KILN_OPT), str(source), "-p", "dce,broken-crash,cse",
                            "--load-passes", str(PLUGIN), "--reproducer-dir", str(folder)],
                           capture_output=True, text=True, timeout=120, check=False)
    assert first.returncode == 1
    assert "after dce: pass 'broken-crash' failed" in first.stderr
    assert f"reproducer written to {folder}" in first.stderr
    assert "remaining pipeline: broken-crash,cse" in (folder / "pipeline.txt").read_text()
    again = rerun(folder, "--no-reproducer")
    assert again.returncode == 1
    assert "'kiln.relu' op broken-crash refuses this op" in again.stderr
    assert "reproducer written" not in again.stderr


def test_default_reproducer_folder_is_fresh_under_tempdir(broken: None, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    for _ in range(2):
        with pytest.raises(PassError, match="reproducer written to "):
            run_passes(net(), "dce,broken-crash")
    made = sorted((tmp_path / "kiln-reproducers").iterdir())
    assert len(made) == 2 and all(p.name.startswith("broken-crash-") for p in made)
    with pytest.raises(PassError) as info:
        run_passes(net(), "broken-crash", reproducer=False)
    assert "reproducer" not in str(info.value)


def test_an_instrument_rejecting_a_pass_gets_a_reproducer_too(tmp_path: Path) -> None:
    class Unhook(Instrument):
        def after_pass(self, info: StepInfo, module: Module, changed: bool,
                       seconds: float) -> None:
            if info.name == "cse":
                raise info.error("was rejected by a test instrument")

    with pytest.raises(PassError, match=r"pass 'cse' was rejected(.|\n)*reproducer written"):
        run_passes(net(), "dce,cse", instruments=[Unhook()], reproducer_dir=tmp_path)
    assert "\nremaining pipeline: cse\n" in (tmp_path / "pipeline.txt").read_text()


# -- dumps, printing, timing ---------------------------------------------------------------------
def test_dump_dir_writes_every_stage_and_its_diff(tmp_path: Path) -> None:
    folder = tmp_path / "dumps" / "nested"
    folder.mkdir(parents=True)
    (folder / "007_old.kir").write_text("stale")
    (folder / "notes.txt").write_text("mine")
    run_passes(net(), "cse,fold-constants{max-elements=64},dce", dump_dir=folder)
    assert sorted(p.name for p in folder.iterdir()) == [
        "000_input.kir", "001_cse.diff", "001_cse.kir", "002_fold-constants.diff",
        "002_fold-constants.kir", "003_dce.diff", "003_dce.kir", "notes.txt"]
    assert (folder / "000_input.kir").read_text() == net().to_text()
    assert (folder / "001_cse.diff").read_text() == ""
    diff = (folder / "003_dce.diff").read_text()
    assert diff.startswith("--- 002_fold-constants.kir\n+++ 003_dce.kir\n")
    assert "\n-    %dead = kiln.relu(%out)" in diff and "\n+" not in diff.split("+++", 1)[1]


def test_dump_names_are_sanitized() -> None:
    assert dump_name(3, "a/b c") == "003_a_b_c"
    assert dump_name(12, "..") == "012_pass"


def test_print_ir_after_change_prints_only_changing_passes() -> None:
    out = io.StringIO()
    result = PassManager("cse,dce,dce", print_ir_after_change=True, output=out).run(net())
    assert [r.changed for r in result.records] == [False, True, False]
    assert out.getvalue().count("IR Dump After") == 1
    assert out.getvalue().startswith("// -----// IR Dump After dce //----- //\nkiln.module")


@pytest.mark.parametrize(("selection", "count"), [("all", 3), ("dce", 2), ("cse, dce", 3),
                                                  (["cse"], 1)])
def test_print_ir_after_selections(selection: str | list[str], count: int) -> None:
    out = io.StringIO()
    run_passes(net(), "cse,dce,dce", print_ir_after=selection, output=out)
    assert out.getvalue().count("IR Dump After") == count


def test_timing_table_format() -> None:
    records = [PassRecord("canonicalize", False, 0.0012, ops_before=7, ops_after=7),
               PassRecord("fold-constants{max-elements=64}", True, 0.01234, ops_before=7,
                          ops_after=5)]
    assert format_timing(records) == (
        "// -----// Pass timing //----- //\n"
        "#  pass                             time ms  ops before  ops after  changed\n"
        "-  -------------------------------  -------  ----------  ---------  -------\n"
        "1  canonicalize                       1.200           7          7  no\n"
        "2  fold-constants{max-elements=64}   12.340           7          5  yes\n"
        "   total                             13.540           7          5\n")


def test_time_passes_writes_the_table_and_keeps_records() -> None:
    out = io.StringIO()
    result = PassManager("cse,dce", time_passes=True, output=out).run(net())
    lines = out.getvalue().splitlines()
    assert lines[1].split() == ["#", "pass", "time", "ms", "ops", "before", "ops", "after",
                                "changed"]
    assert [line.split()[:2] for line in lines[3:5]] == [["1", "cse"], ["2", "dce"]]
    assert [(r.ops_before, r.ops_after) for r in result.records] == [(7, 7), (7, 6)]
    assert all(r.seconds > 0 for r in result.records)
    assert lines[-1].split() == ["total", f"{sum(r.seconds for r in result.records) * 1e3:.3f}",
                                 "7", "6"]


# -- the instrument protocol ---------------------------------------------------------------------
class Recorder(Instrument):
    def __init__(self) -> None:
        self.calls: list[str] = []

    def before_pipeline(self, module: Module) -> None:
        self.calls.append("begin")

    def before_pass(self, info: StepInfo, module: Module) -> None:
        self.calls.append(f"before {info.index} {info.step}")

    def after_pass(self, info: StepInfo, module: Module, changed: bool, seconds: float) -> None:
        self.calls.append(f"after {info.step} {changed}")

    def after_pipeline(self, module: Module, records: Sequence[PassRecord]) -> None:
        self.calls.append(f"end {len(records)}")

    def on_failure(self, failure: PassFailure) -> list[str]:
        remaining = ",".join(str(s) for s in failure.remaining)
        self.calls.append(f"failed {failure.info.step} then {remaining}")
        return ["a note from the recorder"]


def test_instruments_see_every_hook_in_order(broken: None) -> None:
    recorder = Recorder()
    manager = PassManager("cse,dce", instruments=[recorder])
    manager.run(net())
    assert recorder.calls == ["begin", "before 1 cse", "after cse False", "before 2 dce",
                              "after dce True", "end 2"]
    recorder.calls.clear()
    with pytest.raises(PassError, match="hint: a note from the recorder") as info:
        PassManager("dce,broken-crash,cse", instruments=[recorder], reproducer=False).run(net())
    assert recorder.calls[-1] == "failed broken-crash then broken-crash,cse"
    assert str(info.value).count("a note from the recorder") == 1


def test_kiln_opt_flags(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = tmp_path / "net.kir"
    net().save(source)
    dumps = tmp_path / "dumps"
    assert main([str(source), "-p", "cleanup", "--check-numerics", "--time-passes",
                 "--dump-dir", str(dumps), "--print-ir-after", "all"]) == 0
    out, err = capsys.readouterr()
    assert "%dead" not in out and err.count("IR Dump After") == 4
    assert "// -----// Pass timing //----- //" in err and "total" in err
    assert (dumps / "004_dce.kir").read_text() == out

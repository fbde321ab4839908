"""Pass registry, pipeline strings and the pass manager (verification, dumps, error wrapping)."""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import Literal

import numpy as np
import pytest

from kiln.compiler import pipelines
from kiln.compiler.pass_manager import PassManager, run_passes
from kiln.compiler.pipeline import format_pipeline, parse_pipeline
from kiln.errors import KilnError, PassError, PipelineError, VerifyError
from kiln.ir.builder import new_function
from kiln.ir.graph import Module
from kiln.ir.location import Location
from kiln.ir.ops.elementwise import Add, Relu
from kiln.ir.types import TensorType
from kiln.passes.registry import PassContext, all_passes, register_pass, unregister_pass


def small_module() -> Module:
    m = Module("t")
    func, b = new_function(m, "forward", [TensorType((2, 3))], ["x"])
    bias = b.weight("bias", np.arange(3, dtype=np.float32))
    with b.at_loc(Location("net.py", 7, "block.add")):
        y = b.add(Add(), func.args[0], bias, name="y")
    dead = b.add(Relu(), y, name="dead")
    del dead
    b.ret(b.add(Relu(), y, name="z"))
    return m


SEEN: list[dict[str, object]] = []


@pytest.fixture
def test_passes() -> Iterator[None]:
    """Throwaway passes: one with an option of every supported type, one failing, one breaking."""

    @register_pass("test-options")
    def options_pass(module: Module, ctx: PassContext, *, count: int = 3, scale: float = 0.5,
                     flag: bool = False, label: str = "x", mode: Literal["fast", "slow"] = "fast",
                     skip: tuple[str, ...] = (), limit: int | None = None) -> bool:
        """Records its options."""
        SEEN.append({"count": count, "scale": scale, "flag": flag, "label": label, "mode": mode,
                     "skip": skip, "limit": limit, "calibration": ctx.calibration_data})
        ctx.count("calls")
        return False

    @register_pass("test-fail")
    def fail_pass(module: Module, ctx: PassContext) -> bool:
        """Always fails with a diagnostic on the first op."""
        raise module.main.ops[1].error("this op is not liked")

    @register_pass("test-crash")
    def crash_pass(module: Module, ctx: PassContext) -> bool:
        """A pass with a bug."""
        return 1 // 0 > 0

    @register_pass("test-break")
    def break_pass(module: Module, ctx: PassContext) -> bool:
        """Moves the return to the top of the function (use before definition)."""
        ops = module.main.body.ops
        ops.insert(0, ops.pop())
        return True

    SEEN.clear()
    yield
    for name in ("test-options", "test-fail", "test-crash", "test-break"):
        unregister_pass(name)


# -- registry ----------------------------------------------------------------------------------
def test_builtin_passes_are_registered_with_summaries() -> None:
    passes = all_passes()
    for name in ("canonicalize", "cse", "dce", "fold-constants"):
        assert name in passes and passes[name].summary
    fold = passes["fold-constants"]
    assert [o.name for o in fold.options] == ["max-elements", "inline-limit"]
    assert "max-elements: int = 1048576" in fold.describe()


def test_registration_rejects_bad_passes() -> None:
    with pytest.raises(ValueError, match="registered twice"):
        register_pass("dce")(lambda module, ctx: False)
    with pytest.raises(ValueError, match="kebab-case"):
        register_pass("Bad_Name")
    with pytest.raises(ValueError, match="docstring"):
        register_pass("no-doc")(lambda module, ctx: False)

    def positional(module: Module, ctx: PassContext, x: int = 1) -> bool:
        """Doc."""
        return False

    def no_default(module: Module, ctx: PassContext, *, x: int) -> bool:
        """Doc."""
        return False

    def odd_type(module: Module, ctx: PassContext, *, x: dict[str, int] | None = None) -> bool:
        """Doc."""
        return False

    for fn, message in ((positional, "keyword-only"), (no_default, "needs a default"),
                        (odd_type, "unsupported option type")):
        with pytest.raises(ValueError, match=message):
            register_pass("tmp-pass")(fn)
    assert "tmp-pass" not in all_passes()


# -- pipeline strings --------------------------------------------------------------------------
def test_options_are_converted_by_type(test_passes: None) -> None:
    (step,) = parse_pipeline(" test-options{count=7, scale=inf,flag=true,label=hi,mode=slow,"
                             "skip=a|b,limit=none} ")
    assert step.options == {"count": 7, "scale": float("inf"), "flag": True, "label": "hi",
                            "mode": "slow", "skip": ("a", "b"), "limit": None}
    text = format_pipeline([step])
    assert text == ("test-options{count=7,scale=inf,flag=true,label=hi,mode=slow,skip=a|b,"
                    "limit=none}")
    assert parse_pipeline(text) == [step]


def test_named_pipelines_expand() -> None:
    steps = parse_pipeline("cleanup,dce")
    assert [s.name for s in steps] == ["canonicalize", "fold-constants", "cse", "dce", "dce"]
    assert parse_pipeline("") == [] and parse_pipeline("  ") == []


@pytest.mark.parametrize(("pipeline", "message"), [
    ("canonicalize,dcee", r"unknown pass 'dcee'(.|\n)*did you mean 'dce'\?(.|\n)*passes: "
                          r"canonicalize, cse, dce"),
    ("fold-constants{max-elems=4}", r"pass 'fold-constants' has no option 'max-elems'(.|\n)*"
                                    r"max-elements: int = 1048576"),
    ("dce{x=1}", r"has no option 'x'(.|\n)*'dce' takes no options"),
    ("fold-constants{max-elements=lots}",
     r"option 'max-elements' expects int, got 'lots'"),
    ("test-options{flag=yes}", r"option 'flag' expects bool, got 'yes'"),
    ("test-options{mode=medium}", r"option 'mode' expects 'fast'\|'slow', got 'medium'"),
    ("test-options{count=1,count=2}", "option 'count' given twice"),
    ("test-options{count}", "expected option=value"),
    ("cse,,dce", "empty pass name"),
    ("cse,", "empty pass name"),
    ("cse{", "missing '}'"),
    ("cse}", "unbalanced '}'"),
    ("default{x=1}", "named pipeline 'default' takes no options"),
])
def test_pipeline_errors(test_passes: None, pipeline: str, message: str) -> None:
    with pytest.raises(PipelineError, match=message):
        parse_pipeline(pipeline)


def test_pipeline_error_points_at_the_spot() -> None:
    with pytest.raises(PipelineError) as info:
        parse_pipeline("cse, nope")
    assert "cse, nope\n       ^" in str(info.value)


def test_recursive_named_pipeline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(pipelines._PIPELINES, "loop-a", "cse,loop-b")
    monkeypatch.setitem(pipelines._PIPELINES, "loop-b", "loop-a")
    with pytest.raises(PipelineError, match="'loop-a' includes itself"):
        parse_pipeline("loop-a")


def test_register_pipeline_rejects_pass_names_and_duplicates() -> None:
    with pytest.raises(PipelineError, match="is a pass name"):
        pipelines.register_pipeline("dce", "cse")
    with pytest.raises(PipelineError, match="already registered"):
        pipelines.register_pipeline("default", "cse")


# -- pass manager ------------------------------------------------------------------------------
def test_run_passes_returns_a_new_module_and_leaves_the_argument() -> None:
    m = small_module()
    before = m.to_text()
    out = run_passes(m, "dce")
    assert out is not m and m.to_text() == before and "%dead" in before
    assert "%dead" not in out.to_text()


def test_options_reach_passes_and_statistics_are_recorded(test_passes: None) -> None:
    result = PassManager("test-options{count=5},dce", calibration_data=[1, 2]).run(small_module())
    assert SEEN == [{"count": 5, "scale": 0.5, "flag": False, "label": "x", "mode": "fast",
                     "skip": (), "limit": None, "calibration": [1, 2]}]
    first, second = result.records
    assert (first.step, first.changed, first.statistics) == ("test-options{count=5}", False,
                                                             {"calls": 1})
    assert (second.step, second.changed, second.statistics["ops-erased"]) == ("dce", True, 1)


def test_unknown_run_option_lists_valid_ones() -> None:
    with pytest.raises(PipelineError, match=r"unknown pass-manager option\(s\): verfy(.|\n)*"
                                            r"valid options: verify, print_ir_after"):
        run_passes(small_module(), "dce", verfy=False)
    with pytest.raises(PipelineError, match="unknown pass\\(es\\): nope"):
        run_passes(small_module(), "dce", print_ir_after=["nope"])


def test_print_ir_after(test_passes: None) -> None:
    out = io.StringIO()
    run_passes(small_module(), "cse,dce", print_ir_after="all", output=out)
    dumps = out.getvalue()
    assert dumps.count("IR Dump After") == 2 and "IR Dump After cse //" in dumps
    out = io.StringIO()
    run_passes(small_module(), "cse,dce", print_ir_after="dce", output=out)
    assert out.getvalue().startswith("// -----// IR Dump After dce //----- //\nkiln.module")
    out = io.StringIO()
    run_passes(small_module(), "cse,dce,dce", print_ir_after_change=True, output=out)
    assert out.getvalue().count("IR Dump After") == 1  # only the first dce changed anything


def test_failing_pass_names_pass_and_pipeline_and_keeps_diagnostics(test_passes: None) -> None:
    with pytest.raises(PassError) as info:
        run_passes(small_module(), "cse,dce,test-fail")
    text = str(info.value)
    assert text.startswith("error: after cse,dce: pass 'test-fail' failed\n")
    assert "net.py:7 (block.add): error: 'kiln.add' op this op is not liked" in text
    assert "in pass 'test-fail'" in text
    assert info.value.diagnostics[1].op_name == "kiln.add"


def test_crashing_pass_is_wrapped(test_passes: None) -> None:
    with pytest.raises(PassError, match="at the start of the pipeline: pass 'test-crash' "
                                        "failed: ZeroDivisionError") as info:
        run_passes(small_module(), "test-crash")
    assert isinstance(info.value.__cause__, ZeroDivisionError)


def test_invalid_ir_after_a_pass_is_caught(test_passes: None) -> None:
    with pytest.raises(PassError, match="after cse: pass 'test-break' left invalid IR"):
        run_passes(small_module(), "cse,test-break")
    run_passes(small_module(), "test-break", verify=False)  # the caller opted out


def test_invalid_input_is_reported_before_any_pass(test_passes: None) -> None:
    m = small_module()
    ops = m.main.body.ops
    ops.insert(0, ops.pop())
    with pytest.raises(VerifyError, match="before any pass ran"):
        run_passes(m, "dce")
    assert issubclass(VerifyError, KilnError)

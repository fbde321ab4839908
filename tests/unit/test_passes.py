"""The clean-up passes: what each one changes, and that the interpreter's outputs stay the same."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from kiln.compiler.pass_manager import run_passes
from kiln.ir.builder import Builder, new_function
from kiln.ir.graph import Module, Value
from kiln.ir.interpret import interpret, sample_inputs
from kiln.ir.ops.core import Cast, Constant, Weight
from kiln.ir.ops.elementwise import Add, Clamp, Div, Exp, Mul, Relu, Sub
from kiln.ir.ops.shape import (
    Concat,
    Dropout,
    Expand,
    Flatten,
    Identity,
    Pad,
    Reshape,
    Slice,
    Squeeze,
    Transpose,
    Unsqueeze,
)
from kiln.ir.types import F32, I32, TensorType

Body = Callable[[Builder, list[Value]], list[Value]]


def build(body: Body, *shapes: tuple[int, ...], dtype: object = F32) -> Module:
    m = Module("t")
    types = [TensorType(s, dtype) for s in shapes]  # type: ignore[arg-type]
    func, b = new_function(m, "forward", types, [f"x{i}" for i in range(len(shapes))])
    b.ret(*body(b, func.args))
    return m


def run_checked(m: Module, pipeline: str, seeds: int = 2) -> Module:
    """Run `pipeline` and check the interpreter gives identical outputs before and after."""
    out = run_passes(m, pipeline)
    for seed in range(seeds):
        inputs = sample_inputs(m.main, seed)
        for want, got in zip(interpret(m, *inputs), interpret(out, *inputs)):
            np.testing.assert_allclose(got, want, rtol=1e-6, atol=0)
    return out


def names(m: Module) -> list[str]:
    return [op.name for op in m.main.ops]


# -- dce -----------------------------------------------------------------------------------------
def test_dce_removes_dead_chains_and_unreferenced_weights() -> None:
    def body(b: Builder, xs: list[Value]) -> list[Value]:
        w = b.weight("w", np.ones(3, np.float32))
        unused = b.weight("unused", np.ones(3, np.float32))
        b.add(Exp(), b.add(Add(), xs[0], unused))  # a dead chain
        return [b.add(Add(), xs[0], w)]

    m = build(body, (2, 3))
    out = run_checked(m, "dce")
    assert names(out) == ["kiln.weight", "kiln.add", "kiln.return"]
    assert sorted(out.weights) == ["w"] and sorted(m.weights) == ["unused", "w"]
    assert run_passes(out, "dce").to_text() == out.to_text()


# -- cse -----------------------------------------------------------------------------------------
def test_cse_merges_identical_ops_weights_and_constants() -> None:
    def body(b: Builder, xs: list[Value]) -> list[Value]:
        w = b.weight("w", np.ones(3, np.float32))
        w_again = b.add(Weight(name="w", type=TensorType((3,))))
        c1, c2 = b.constant(np.array(2, np.float32)), b.constant(np.array(2, np.float32))
        c3 = b.constant(np.array(3, np.float32))
        a1, a2 = b.add(Add(), xs[0], w), b.add(Add(), xs[0], w_again)
        m1, m2, m3 = b.add(Mul(), a1, c1), b.add(Mul(), a2, c2), b.add(Mul(), a2, c3)
        return [m1, m2, m3]

    out = run_checked(build(body, (2, 3)), "cse")
    assert out.op_counts() == {"kiln.add": 1, "kiln.constant": 2, "kiln.mul": 2,
                               "kiln.return": 1, "kiln.weight": 1}


def test_cse_keeps_ops_that_differ_in_signed_zero_or_kind() -> None:
    def body(b: Builder, xs: list[Value]) -> list[Value]:
        x = xs[0]
        return [b.add(Clamp(min=0.0), x), b.add(Clamp(min=-0.0), x), b.add(Clamp(min=0.0), x),
                b.add(Add(), x, x), b.add(Sub(), x, x),
                b.add(Clamp(max=float("nan")), x), b.add(Clamp(max=float("nan")), x)]

    out = run_checked(build(body, (4,)), "cse")
    assert out.op_counts()["kiln.clamp"] == 3 and out.op_counts()["kiln.add"] == 1


# -- fold-constants ------------------------------------------------------------------------------
def test_fold_constants_small_results_become_constants() -> None:
    def body(b: Builder, xs: list[Value]) -> list[Value]:
        two = b.constant(np.array(2, np.float32))
        c = b.add(Mul(), b.constant(np.arange(3, dtype=np.float32)), two)
        return [b.add(Add(), xs[0], b.add(Exp(), c))]

    out = run_checked(build(body, (2, 3)), "fold-constants,dce")
    assert names(out) == ["kiln.constant", "kiln.add", "kiln.return"]
    folded = out.main.ops[0].kind
    assert isinstance(folded, Constant)
    np.testing.assert_allclose(folded.value.array, np.exp(np.arange(3) * 2.0), rtol=1e-6)


def test_fold_constants_large_results_become_weights() -> None:
    def body(b: Builder, xs: list[Value]) -> list[Value]:
        w = b.weight("fc.weight", np.arange(200, dtype=np.float32).reshape(20, 10))
        wt = b.add(Transpose(perm=(1, 0)), w, name="wt")
        return [b.add(Add(), xs[0], b.add(Reshape(shape=(200,)), wt))]

    m = build(body, (200,))
    out = run_checked(m, "fold-constants,dce")
    assert names(out) == ["kiln.weight", "kiln.add", "kiln.return"]
    assert list(out.weights) == ["fold.reshape"] and "fc.weight" in m.weights
    np.testing.assert_array_equal(out.weights["fold.reshape"],
                                  np.arange(200).reshape(20, 10).T.reshape(200))


def test_fold_constants_respects_max_elements_and_elided_weights() -> None:
    def body(b: Builder, xs: list[Value]) -> list[Value]:
        w = b.weight("w", np.ones((10, 10), np.float32))
        return [b.add(Add(), xs[0], b.add(Exp(), w))]

    m = build(body, (10, 10))
    assert "kiln.exp" in names(run_passes(m, "fold-constants{max-elements=99}"))
    assert "kiln.exp" not in names(run_passes(m, "fold-constants{max-elements=100}"))
    m.weights.clear()  # weights elided: nothing to fold with
    assert "kiln.exp" in names(run_passes(m, "fold-constants"))


def _growing(b: Builder, xs: list[Value]) -> list[Value]:
    big = b.add(Expand(shape=(10, 10)), b.constant(np.array(3, np.float32)))  # 1 element → 100
    small = b.add(Expand(shape=(2, 10)), b.constant(np.array(2, np.float32)))  # 20: inline
    cat = b.add(Concat(), *[small] * 5, name="cat")  # 100 elements from 100
    w = b.weight("w", np.ones((10, 10), np.float32))
    return [b.add(Add(), b.add(Add(), xs[0], big), b.add(Mul(), cat, w))]


def test_fold_constants_never_grows_the_model() -> None:
    out = run_checked(build(_growing, (10, 10)), "fold-constants,dce")
    assert out.op_counts()["kiln.expand"] == 1 and "kiln.concat" not in out.op_counts()
    assert list(out.weights) == ["fold.mul"]  # cat folded, then cat * w


def test_fold_constants_adds_no_weight_beside_elided_ones() -> None:
    m = build(_growing, (10, 10))
    m.weights.clear()
    counts = run_passes(m, "fold-constants,dce").op_counts()
    assert counts["kiln.concat"] == 1 and counts["kiln.constant"] == 2  # small was inlined


def test_fold_constants_integer_ops() -> None:
    def body(b: Builder, xs: list[Value]) -> list[Value]:
        c = b.add(Div(), b.constant(np.array([7, -7], np.int32)), b.constant(np.array(2, np.int32)))
        return [b.add(Add(), xs[0], c)]

    out = run_checked(build(body, (2,), dtype=I32), "fold-constants,dce")
    folded = out.main.ops[0].kind
    assert isinstance(folded, Constant) and folded.value.array.tolist() == [3, -3]


# -- canonicalize --------------------------------------------------------------------------------
def _noop_cases() -> dict[str, Body]:
    def zero(b: Builder, x: Value) -> Value:
        return b.constant(np.zeros(x.type.shape[-1:], np.float32))

    return {
        "identity": lambda b, xs: [b.add(Identity(), xs[0])],
        "dropout": lambda b, xs: [b.add(Dropout(p=0.2), xs[0])],
        "reshape-same": lambda b, xs: [b.add(Reshape(shape=(2, 3)), xs[0])],
        "expand-same": lambda b, xs: [b.add(Expand(shape=(2, 3)), xs[0])],
        "cast-same": lambda b, xs: [b.add(Cast(to=F32), xs[0])],
        "concat-one": lambda b, xs: [b.add(Concat(axis=1), xs[0])],
        "slice-all": lambda b, xs: [b.add(Slice(axes=(0, 1), starts=(0, 0), ends=(2, 3),
                                                steps=(1, 1)), xs[0])],
        "pad-zero": lambda b, xs: [b.add(Pad(pads=(0, 0, 0, 0), mode="edge"), xs[0])],
        "clamp-inf": lambda b, xs: [b.add(Clamp(min=float("-inf"), max=float("inf")), xs[0])],
        "transpose-id": lambda b, xs: [b.add(Transpose(perm=(0, 1)), xs[0])],
        "transpose-twice": lambda b, xs: [b.add(Transpose(perm=(1, 0)),
                                                b.add(Transpose(perm=(1, 0)), xs[0]))],
        "add-zero": lambda b, xs: [b.add(Add(), xs[0], zero(b, xs[0]))],
        "zero-add": lambda b, xs: [b.add(Add(), zero(b, xs[0]), xs[0])],
        "sub-zero": lambda b, xs: [b.add(Sub(), xs[0], zero(b, xs[0]))],
        "mul-one": lambda b, xs: [b.add(Mul(), b.constant(np.array(1, np.float32)), xs[0])],
        "div-one": lambda b, xs: [b.add(Div(), xs[0], b.constant(np.ones((2, 3), np.float32)))],
        "flatten-reshape": lambda b, xs: [b.add(Reshape(shape=(2, 3)),
                                                b.add(Flatten(start_dim=0), xs[0]))],
    }


@pytest.mark.parametrize("case", sorted(_noop_cases()))
def test_canonicalize_removes_noops(case: str) -> None:
    out = run_checked(build(_noop_cases()[case], (2, 3)), "canonicalize")
    assert names(out) == ["kiln.return"]
    assert out.main.outputs[0] is out.main.args[0]


@pytest.mark.parametrize(("body", "expected"), [
    (lambda b, xs: [b.add(Mul(), xs[0], b.constant(np.zeros(3, np.float32)))],
     ["kiln.constant", "kiln.mul"]),  # x * 0 is NaN for x = NaN: never folded
    (lambda b, xs: [b.add(Add(), xs[0], b.constant(np.zeros((4, 2, 3), np.float32)))],
     ["kiln.constant", "kiln.add"]),  # broadcasting changes the shape
    (lambda b, xs: [b.add(Sub(), b.constant(np.array(0, np.float32)), xs[0])],
     ["kiln.constant", "kiln.sub"]),  # 0 - x is -x
    (lambda b, xs: [b.add(Add(), xs[0], b.constant(np.array([0, 0, 1], np.float32)))],
     ["kiln.constant", "kiln.add"]),  # not a splat
    (lambda b, xs: [b.add(Clamp(min=0.0), xs[0])], ["kiln.clamp"]),
    (lambda b, xs: [b.add(Pad(pads=(0, 0, 1, 0)), xs[0])], ["kiln.pad"]),
])
def test_canonicalize_keeps_real_work(body: Body, expected: list[str]) -> None:
    out = run_checked(build(body, (2, 3)), "canonicalize")
    assert names(out) == [*expected, "kiln.return"]


def test_canonicalize_views_become_one_reshape() -> None:
    def body(b: Builder, xs: list[Value]) -> list[Value]:
        y = b.add(Unsqueeze(axes=(0,)), b.add(Flatten(), xs[0]))
        return [b.add(Squeeze(axes=(0,)), b.add(Reshape(shape=(1, 1, 24)), y))]

    out = run_checked(build(body, (2, 3, 4)), "canonicalize")
    assert names(out) == ["kiln.reshape", "kiln.return"]
    assert out.main.ops[0].kind == Reshape(shape=(1, 24))
    assert out.main.ops[0].operands[0] is out.main.args[0]


def test_canonicalize_composes_transposes() -> None:
    def body(b: Builder, xs: list[Value]) -> list[Value]:
        return [b.add(Transpose(perm=(2, 0, 1)), b.add(Transpose(perm=(1, 2, 0)), xs[0])),
                b.add(Transpose(perm=(0, 2, 1)), b.add(Transpose(perm=(1, 0, 2)), xs[0]))]

    out = run_checked(build(body, (2, 3, 4)), "canonicalize")
    assert [op.kind for op in out.main.ops[:-1]] == [Transpose(perm=(1, 2, 0))]
    assert out.main.outputs[0] is out.main.args[0]


def test_default_pipeline_keeps_numerics() -> None:
    def body(b: Builder, xs: list[Value]) -> list[Value]:
        w = b.weight("w", np.linspace(-1, 1, 12, dtype=np.float32).reshape(4, 3))
        wt = b.add(Transpose(perm=(1, 0)), w)
        h = b.add(Add(), b.add(Identity(), xs[0]), b.constant(np.array(0, np.float32)))
        h2 = b.add(Add(), b.add(Identity(), xs[0]), b.constant(np.array(0, np.float32)))
        y = b.add(Mul(), b.add(Relu(), h), b.add(Reshape(shape=(3, 4)), wt))
        return [b.add(Add(), y, b.add(Relu(), h2))]

    out = run_checked(build(body, (3, 4)), "cleanup", seeds=3)
    assert out.op_counts() == {"kiln.add": 1, "kiln.constant": 1, "kiln.mul": 1,
                               "kiln.relu": 1, "kiln.return": 1}
    assert out.weights == {}

"""The fuse pass: which groups form, the rules they keep, and bit-exact numerics.

Every test builds a small graph, runs `fuse` through the pass manager (which verifies the IR),
checks the groups, and checks that the interpreter gives *identical* arrays before and after on
fresh random inputs: a fused op runs its region, so fusion must not change a single bit.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from kiln.compiler.pass_manager import run_passes
from kiln.errors import KilnError
from kiln.ir.analysis import dataflow_graph, is_convex
from kiln.ir.builder import Builder, new_function
from kiln.ir.fusion_rules import is_epilogue_anchor, is_reduction
from kiln.ir.graph import Module, Op, Value
from kiln.ir.interpret import interpret
from kiln.ir.location import Location
from kiln.ir.ops.elementwise import Add, Exp, Gelu, Mul, Relu, Sigmoid, Sub, Tanh
from kiln.ir.ops.fused import Fused
from kiln.ir.ops.nn_conv import Conv2d, Linear, MatMul
from kiln.ir.ops.nn_norm import BatchNorm, LayerNorm, Softmax
from kiln.ir.ops.nn_pool import AvgPool2d, MaxPool2d
from kiln.ir.ops.reduce import ReduceMax, ReduceSum
from kiln.ir.ops.shape import Expand
from kiln.ir.types import TensorType

Body = Callable[[Builder, list[Value]], list[Value]]
CONV = Conv2d(stride=(1, 1), padding=(1, 1, 1, 1), dilation=(1, 1), groups=1)


def build(body: Body, *shapes: tuple[int, ...]) -> Module:
    module = Module("t")
    types = [TensorType(s) for s in shapes]
    func, b = new_function(module, "forward", types, [f"x{i}" for i in range(len(shapes))])
    b.ret(*body(b, func.args))
    return module


def fuse(module: Module, rng: np.random.Generator, pipeline: str = "fuse") -> Module:
    """Run `pipeline` and check identical outputs on three fresh random inputs."""
    out = run_passes(module, pipeline)
    for _ in range(3):
        inputs = [rng.standard_normal(a.type.shape).astype(np.float32)
                  for a in module.main.args]
        for want, got in zip(interpret(module, *inputs), interpret(out, *inputs)):
            assert np.array_equal(got, want), "fusion changed the numbers"
    return out


def groups(module: Module) -> list[Op]:
    return [op for op in module.main.ops if op.isa(Fused)]


def patterns(module: Module) -> list[tuple[str, str]]:
    return [(g.kind.kind, g.kind.pattern) for g in groups(module)]  # type: ignore[attr-defined]


def top_names(module: Module) -> list[str]:
    return [op.name for op in module.main.ops if op.name not in ("kiln.weight", "kiln.constant")]


def weight(b: Builder, name: str, *shape: int, seed: int = 1) -> Value:
    rng = np.random.default_rng(seed)
    return b.weight(name, rng.standard_normal(shape).astype(np.float32))


# -- epilogues -----------------------------------------------------------------------------------
def test_conv_bias_relu_is_one_epilogue(rng: np.random.Generator) -> None:
    def body(b: Builder, xs: list[Value]) -> list[Value]:
        w, bias = weight(b, "w", 4, 3, 3, 3), weight(b, "b", 1, 4, 1, 1, seed=2)
        with b.at_loc(Location("net.py", 10, "conv")):
            y = b.add(Add(), b.add(CONV, xs[0], w, name="conv"), bias, name="add")
        return [b.add(Relu(), y, name="relu", loc=Location("net.py", 11, "relu"))]

    out = fuse(build(body, (1, 3, 8, 8)), rng)
    assert patterns(out) == [("epilogue", "conv2d+add+relu")]
    (group,) = groups(out)
    assert [v.name for v in group.operands] == ["x0", "w", "b"]  # weights stay outside
    assert [op.name for op in out.main.ops] == ["kiln.weight"] * 2 + ["kiln.fused", "kiln.return"]
    assert group.result.name == "relu"
    assert group.loc == Location(fused=(Location("net.py", 10, "conv"),
                                        Location("net.py", 10, "conv"),
                                        Location("net.py", 11, "relu")))
    assert "net.py:10 (conv): error: 'kiln.fused' op boom" in group.error("boom").format()


def test_linear_gelu(rng: np.random.Generator) -> None:
    def body(b: Builder, xs: list[Value]) -> list[Value]:
        y = b.add(Linear(), xs[0], weight(b, "w", 16, 8), weight(b, "b", 16, seed=2))
        return [b.add(Gelu(), y)]

    out = fuse(build(body, (2, 8)), rng)
    assert patterns(out) == [("epilogue", "linear+gelu")]


def test_conv_folded_bias_residual_relu(rng: np.random.Generator) -> None:
    """conv (batch norm folded into its bias) + residual add + relu: one group."""
    def body(b: Builder, xs: list[Value]) -> list[Value]:
        y = b.add(CONV, xs[0], weight(b, "w", 4, 4, 3, 3), weight(b, "b", 4, seed=2))
        return [b.add(Relu(), b.add(Add(), y, xs[0]))]

    out = fuse(build(body, (1, 4, 6, 6)), rng)
    assert patterns(out) == [("epilogue", "conv2d+add+relu")]
    assert [v.name for v in groups(out)[0].operands] == ["x0", "w", "b"]


def test_conv_batch_norm_residual_relu(rng: np.random.Generator) -> None:
    """Without fold-batchnorm, batch norm is a per-channel elementwise op of the epilogue."""
    def body(b: Builder, xs: list[Value]) -> list[Value]:
        y = b.add(CONV, xs[0], weight(b, "w", 4, 4, 3, 3))
        scale, shift = weight(b, "s", 4, seed=2), weight(b, "t", 4, seed=3)
        mean, var = weight(b, "m", 4, seed=4), b.weight("v", np.full(4, 0.5, np.float32))
        y = b.add(BatchNorm(), y, scale, shift, mean, var)
        return [b.add(Relu(), b.add(Add(), xs[1], y))]

    out = fuse(build(body, (1, 4, 6, 6), (1, 4, 6, 6)), rng)
    assert patterns(out) == [("epilogue", "conv2d+batch_norm+add+relu")]


def test_decomposed_silu_epilogue(rng: np.random.Generator) -> None:
    def body(b: Builder, xs: list[Value]) -> list[Value]:
        y = b.add(Linear(), xs[0], weight(b, "w", 8, 8))
        return [b.add(Mul(), y, b.add(Sigmoid(), y))]

    assert patterns(fuse(build(body, (3, 8)), rng)) == [("epilogue", "linear+sigmoid+mul")]


def test_one_anchor_per_group(rng: np.random.Generator) -> None:
    """Two matmuls meeting in an add: the add joins the first; the second stays alone."""
    def body(b: Builder, xs: list[Value]) -> list[Value]:
        p = b.add(MatMul(), xs[0], weight(b, "w1", 8, 8))
        q = b.add(MatMul(), xs[0], weight(b, "w2", 8, 8, seed=2))
        return [b.add(Relu(), b.add(Add(), p, q))]

    out = fuse(build(body, (4, 8)), rng)
    assert patterns(out) == [("epilogue", "matmul+add+relu")]
    assert top_names(out).count("kiln.matmul") == 1
    for group in groups(out):
        assert group.region is not None
        assert sum(is_epilogue_anchor(op) or is_reduction(op) for op in group.region.ops) == 1


def test_epilogue_keeps_the_anchor_shape(rng: np.random.Generator) -> None:
    """An add that broadcasts the anchor's result to a bigger shape is not its epilogue."""
    def body(b: Builder, xs: list[Value]) -> list[Value]:
        y = b.add(Linear(), xs[0], weight(b, "w", 8, 8))  # (1, 8)
        return [b.add(Add(), y, xs[1])]  # (4, 8)

    out = fuse(build(body, (1, 8), (4, 8)), rng)
    assert groups(out) == []


# -- elementwise chains --------------------------------------------------------------------------
def test_elementwise_chain_with_broadcast(rng: np.random.Generator) -> None:
    def body(b: Builder, xs: list[Value]) -> list[Value]:
        c = b.constant(np.array([0.5, 2.0, -1.0], np.float32))
        wide = b.add(Expand(shape=(4, 3)), c)
        y = b.add(Mul(), xs[0], wide)
        y = b.add(Add(), y, xs[1])
        return [b.add(Tanh(), y)]

    out = fuse(build(body, (4, 3), (4, 3)), rng)
    assert patterns(out) == [("elementwise", "expand+mul+add+tanh")]
    assert top_names(out) == ["kiln.fused", "kiln.return"]


def test_single_op_is_not_wrapped(rng: np.random.Generator) -> None:
    out = fuse(build(lambda b, xs: [b.add(Relu(), xs[0])], (4,)), rng)
    assert groups(out) == []
    assert top_names(out) == ["kiln.relu", "kiln.return"]


def test_max_ops_bounds_group_size(rng: np.random.Generator) -> None:
    def body(b: Builder, xs: list[Value]) -> list[Value]:
        y = xs[0]
        for op in (Relu(), Tanh(), Exp(), Sigmoid(), Relu(), Tanh(), Exp()):
            y = b.add(op, y)
        return [y]

    module = build(body, (5,))
    bounded = fuse(module, rng, "fuse{max-ops=3}")
    assert patterns(bounded) == [("elementwise", "relu+tanh+exp"),
                                 ("elementwise", "sigmoid+relu+tanh")]
    assert top_names(bounded)[-2:] == ["kiln.exp", "kiln.return"]
    assert patterns(fuse(module, rng)) == [
        ("elementwise", "relu+tanh+exp+sigmoid+relu+tanh+exp")]


# -- reductions ----------------------------------------------------------------------------------
def test_softmax_absorbs_its_scale(rng: np.random.Generator) -> None:
    def body(b: Builder, xs: list[Value]) -> list[Value]:
        scaled = b.add(Mul(), xs[0], b.constant(np.array(0.25, np.float32)))
        return [b.add(Exp(), b.add(Softmax(axis=-1), scaled))]

    out = fuse(build(body, (2, 4, 6)), rng)
    assert patterns(out) == [("reduction", "mul+softmax+exp")]


def test_attention_scale_goes_to_the_matmul_unless_epilogues_are_off(
        rng: np.random.Generator) -> None:
    def body(b: Builder, xs: list[Value]) -> list[Value]:
        scores = b.add(MatMul(), xs[0], xs[1])
        scaled = b.add(Mul(), scores, b.constant(np.array(0.25, np.float32)))
        return [b.add(Softmax(axis=-1), scaled)]

    module = build(body, (2, 4, 8), (2, 8, 4))
    assert patterns(fuse(module, rng)) == [("epilogue", "matmul+mul")]
    assert patterns(fuse(module, rng, "fuse{epilogue=false}")) == [("reduction", "mul+softmax")]
    assert patterns(fuse(module, rng, "fuse{anchors=softmax}")) == [("reduction", "mul+softmax")]


def test_decomposed_softmax_is_one_reduction_group(rng: np.random.Generator) -> None:
    def body(b: Builder, xs: list[Value]) -> list[Value]:
        top = b.add(ReduceMax(axes=(1,), keepdims=True), xs[0])
        e = b.add(Exp(), b.add(Sub(), xs[0], top))
        total = b.add(ReduceSum(axes=(1,), keepdims=True), e)
        return [b.add(Mul(), e, b.add(Exp(), b.add(Sub(), xs[1], total)))]

    out = fuse(build(body, (3, 5), (3, 1)), rng)
    assert patterns(out) == [("reduction", "reduce_max+sub+exp+reduce_sum+sub+exp+mul")]


def test_reductions_over_other_rows_stay_apart(rng: np.random.Generator) -> None:
    def body(b: Builder, xs: list[Value]) -> list[Value]:
        rows = b.add(ReduceSum(axes=(1,), keepdims=True), xs[0])
        cols = b.add(ReduceSum(axes=(0,), keepdims=True), b.add(Sub(), xs[0], rows))
        return [cols]

    out = fuse(build(body, (3, 5)), rng)
    assert patterns(out) == [("reduction", "reduce_sum+sub")]


def test_layer_norm_with_residual_input_yields_the_sum(rng: np.random.Generator) -> None:
    """x + y feeds the layer norm and a later residual: it is computed once and yielded."""
    def body(b: Builder, xs: list[Value]) -> list[Value]:
        h = b.add(Add(), xs[0], xs[1], name="h")
        n = b.add(LayerNorm(), h, weight(b, "g", 8), weight(b, "beta", 8, seed=2), name="n")
        y = b.add(Linear(), n, weight(b, "w", 8, 8, seed=3))
        return [b.add(Add(), h, y)]

    out = fuse(build(body, (4, 8), (4, 8)), rng)
    assert patterns(out) == [("reduction", "add+layer_norm"), ("epilogue", "linear+add")]
    norm = groups(out)[0]
    assert [r.name for r in norm.results] == ["h", "n"]
    assert [len(r.uses) for r in norm.results] == [1, 1]


# -- the rules -----------------------------------------------------------------------------------
def test_convexity_refuses_a_diamond(rng: np.random.Generator) -> None:
    """conv → relu → add ← pool ← conv: the add would make the group feed the pool and read
    it back, so it stays out; conv + relu still fuse."""
    def body(b: Builder, xs: list[Value]) -> list[Value]:
        y = b.add(CONV, xs[0], weight(b, "w", 4, 4, 3, 3))
        pooled = b.add(AvgPool2d(kernel=(3, 3), stride=(1, 1), padding=(1, 1, 1, 1)), y)
        return [b.add(Add(), b.add(Relu(), y), pooled)]

    module = build(body, (1, 4, 6, 6))
    func = module.main
    conv, _, relu, add = [op for op in func.ops if op.name != "kiln.weight"][:4]
    assert not is_convex(dataflow_graph(func), [conv, relu, add])
    out = fuse(module, rng)
    assert patterns(out) == [("epilogue", "conv2d+relu")]
    assert top_names(out) == ["kiln.fused", "kiln.avg_pool2d", "kiln.add", "kiln.return"]


def test_intermediate_used_outside_is_yielded(rng: np.random.Generator) -> None:
    def body(b: Builder, xs: list[Value]) -> list[Value]:
        y = b.add(Linear(), xs[0], weight(b, "w", 8, 8), name="y")
        return [b.add(Relu(), y, name="r"), y]

    out = fuse(build(body, (2, 8)), rng)
    (group,) = groups(out)
    assert [r.name for r in group.results] == ["y", "r"]
    assert out.main.outputs == [group.results[1], group.results[0]]


def test_dependents_between_members_move_after_the_group(rng: np.random.Generator) -> None:
    """A pool reading the conv sits between the conv and its relu; it runs after the group."""
    def body(b: Builder, xs: list[Value]) -> list[Value]:
        y = b.add(CONV, xs[0], weight(b, "w", 4, 4, 3, 3))
        pooled = b.add(MaxPool2d(kernel=(2, 2), stride=(2, 2)), y)
        return [b.add(Relu(), y), pooled]

    out = fuse(build(body, (1, 4, 6, 6)), rng)
    assert top_names(out) == ["kiln.fused", "kiln.max_pool2d", "kiln.return"]


def test_exclude_and_kind_switches(rng: np.random.Generator) -> None:
    def body(b: Builder, xs: list[Value]) -> list[Value]:
        y = b.add(Gelu(), b.add(Linear(), xs[0], weight(b, "w", 8, 8)))
        return [b.add(Tanh(), b.add(Relu(), xs[1])), y]

    module = build(body, (2, 8), (3,))
    assert patterns(fuse(module, rng)) == [("epilogue", "linear+gelu"),
                                           ("elementwise", "relu+tanh")]
    assert patterns(fuse(module, rng, "fuse{exclude=gelu}")) == [("elementwise", "relu+tanh")]
    assert patterns(fuse(module, rng, "fuse{elementwise=false}")) == [("epilogue", "linear+gelu")]
    assert patterns(fuse(module, rng, "fuse{anchors=conv2d}")) == [("elementwise", "relu+tanh")]


@pytest.mark.parametrize(("options", "message"), [
    ("max-ops=1", "max-ops must be at least 2"),
    ("anchors=relu", "cannot anchor a group on relu"),
    ("exclude=nope", "exclude names unknown op(s) nope"),
])
def test_bad_options_are_errors(options: str, message: str) -> None:
    module = build(lambda b, xs: [b.add(Relu(), xs[0])], (4,))
    with pytest.raises(KilnError, match=message.replace("(", r"\(").replace(")", r"\)")):
        run_passes(module, f"fuse{{{options}}}")


def test_deterministic_and_idempotent(rng: np.random.Generator) -> None:
    def body(b: Builder, xs: list[Value]) -> list[Value]:
        y = b.add(Relu(), b.add(CONV, xs[0], weight(b, "w", 4, 4, 3, 3)))
        z = b.add(Relu(), b.add(CONV, y, weight(b, "w2", 4, 4, 3, 3, seed=2)))
        return [b.add(Sigmoid(), b.add(Add(), y, z))]

    module = build(body, (1, 4, 5, 5))
    first = fuse(module, rng)
    assert run_passes(module, "fuse").to_text() == first.to_text()
    assert run_passes(first, "fuse").to_text() == first.to_text()
    assert patterns(first) == [("epilogue", "conv2d+relu"), ("epilogue", "conv2d+relu+add+sigmoid")]


# -- random graphs -------------------------------------------------------------------------------
def _random_graph(rng: np.random.Generator, size: int) -> Module:
    """A random DAG over (4, 8) tensors: anchors, reductions, elementwise and opaque ops."""
    from kiln.ir.ops.shape import Reshape

    def body(b: Builder, xs: list[Value]) -> list[Value]:
        values = list(xs)

        def pick() -> Value:
            return values[int(rng.integers(max(0, len(values) - 5), len(values)))]

        for i in range(size):
            choice = int(rng.integers(0, 8))
            if choice == 0:
                y = b.add(Linear(), pick(), weight(b, f"w{i}", 8, 8, seed=i))
            elif choice == 1:
                y = b.add(Softmax(axis=-1), pick())
            elif choice == 2:
                x = pick()
                y = b.add(Sub(), x, b.add(ReduceMax(axes=(1,), keepdims=True), x))
            elif choice == 3:
                y = b.add(Reshape(shape=(4, 8)), pick())  # opaque: never fuses
            elif choice in (4, 5):
                y = b.add((Add(), Mul())[choice - 4], pick(), pick())
            else:
                y = b.add((Relu(), Tanh())[choice - 6], pick())
            values.append(y)
        return [v for v in values[len(xs):] if not v.uses] or [values[-1]]

    return build(body, (4, 8), (4, 8))


@pytest.mark.parametrize("max_ops", [2, 3, 16])
def test_random_graphs_fuse_exactly(max_ops: int, rng: np.random.Generator) -> None:
    """Random wiring exercises convexity and op placement; the verifier runs after fuse."""
    for _ in range(12):
        module = _random_graph(rng, int(rng.integers(6, 24)))
        pipeline = f"fuse{{max-ops={max_ops}}}"
        out = fuse(module, rng, pipeline)
        assert run_passes(module, pipeline).to_text() == out.to_text()
        for group in groups(out):
            assert group.region is not None
            inner = [op for op in group.region.ops if op.name != "kiln.yield"]
            assert 2 <= len(inner) <= max_ops
            assert sum(is_epilogue_anchor(op) for op in inner) <= 1

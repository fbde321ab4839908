"""fold-constants and cse through fused regions, and fused modules in the text format.

Each test fuses a small graph, runs the pass under test, and checks both the structure and that
the interpreter's outputs are identical to the unoptimized module's on fresh random inputs.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

import kiln
from kiln.compiler.pass_manager import run_passes
from kiln.ir.builder import Builder, new_function
from kiln.ir.graph import Module, Op, Value
from kiln.ir.interpret import interpret
from kiln.ir.ops.elementwise import Add, Mul, Relu, Tanh
from kiln.ir.ops.fused import Fused
from kiln.ir.ops.nn_conv import Linear
from kiln.ir.types import TensorType

Body = Callable[[Builder, list[Value]], list[Value]]


def build(body: Body, *shapes: tuple[int, ...]) -> Module:
    module = Module("t")
    func, b = new_function(module, "forward", [TensorType(s) for s in shapes],
                           [f"x{i}" for i in range(len(shapes))])
    b.ret(*body(b, func.args))
    return module


def same_outputs(a: Module, b: Module, rng: np.random.Generator) -> None:
    for _ in range(3):
        inputs = [rng.standard_normal(v.type.shape).astype(np.float32) for v in a.main.args]
        for want, got in zip(interpret(a, *inputs), interpret(b, *inputs)):
            assert np.array_equal(got, want)


def fused_ops(module: Module) -> list[Op]:
    return [op for op in module.main.ops if op.isa(Fused)]


def pattern(op: Op) -> str:
    assert isinstance(op.kind, Fused)
    return op.kind.pattern


def test_fold_constant_subexpression_inside_a_group(rng: np.random.Generator) -> None:
    """Without folding first, `c1 * c2` joins the chain; fold-constants then folds it inside
    the region and passes the product in from outside."""
    def body(b: Builder, xs: list[Value]) -> list[Value]:
        c1 = b.constant(np.arange(6, dtype=np.float32).reshape(2, 3))
        c2 = b.constant(np.full((2, 3), 0.5, np.float32))
        return [b.add(Tanh(), b.add(Add(), xs[0], b.add(Mul(), c1, c2)))]

    module = build(body, (2, 3))
    fused = run_passes(module, "fuse")
    assert [pattern(op) for op in fused_ops(fused)] == ["mul+add+tanh"]
    folded = run_passes(fused, "fold-constants,dce")
    (group,) = fused_ops(folded)
    assert pattern(group) == "add+tanh" and len(group.operands) == 2
    assert group.operands[1].producer is not None
    assert group.operands[1].producer.name == "kiln.constant"
    same_outputs(module, folded, rng)


def test_large_folded_values_become_weights_outside(rng: np.random.Generator) -> None:
    def body(b: Builder, xs: list[Value]) -> list[Value]:
        w = b.weight("w", rng.standard_normal((10, 10)).astype(np.float32))
        return [b.add(Relu(), b.add(Add(), xs[0], b.add(Mul(), w, w)))]

    module = build(body, (10, 10))
    folded = run_passes(module, "fuse,fold-constants,dce")
    (group,) = fused_ops(folded)
    assert pattern(group) == "add+relu"
    producer = group.operands[1].producer
    assert producer is not None and producer.name == "kiln.weight"
    assert [name for name in folded.weights if name.startswith("fold.")] == \
        [producer.kind.name]  # type: ignore[attr-defined]
    same_outputs(module, folded, rng)


def test_a_fused_op_of_constants_folds_entirely(rng: np.random.Generator) -> None:
    def body(b: Builder, xs: list[Value]) -> list[Value]:
        c = b.constant(np.array([-1.0, 2.0, 3.0], np.float32))
        return [b.add(Add(), xs[0], b.add(Tanh(), b.add(Relu(), c)))]

    module = build(body, (3,))
    grouped = run_passes(module, "fuse{max-ops=2}")
    assert [pattern(op) for op in fused_ops(grouped)] == ["relu+tanh"]  # the add stays out
    folded = run_passes(grouped, "fold-constants,dce")
    assert fused_ops(folded) == []
    assert [op.name for op in folded.main.ops] == ["kiln.constant", "kiln.add", "kiln.return"]
    same_outputs(module, folded, rng)


def test_cse_merges_identical_groups(rng: np.random.Generator) -> None:
    """Two branches computing relu(linear(x, w)) fuse into two equal groups; cse keeps one."""
    def body(b: Builder, xs: list[Value]) -> list[Value]:
        w = b.weight("w", rng.standard_normal((4, 4)).astype(np.float32))
        one = b.add(Relu(), b.add(Linear(), xs[0], w))
        two = b.add(Relu(), b.add(Linear(), xs[0], w))
        return [one, two]

    module = build(body, (3, 4))
    fused = run_passes(module, "fuse")
    assert len(fused_ops(fused)) == 2
    merged = run_passes(fused, "cse,dce")
    assert [pattern(op) for op in fused_ops(merged)] == ["linear+relu"]
    assert merged.main.outputs[0] is merged.main.outputs[1]
    same_outputs(module, merged, rng)


def test_fused_module_round_trips_through_text(rng: np.random.Generator) -> None:
    def body(b: Builder, xs: list[Value]) -> list[Value]:
        w = b.weight("w", rng.standard_normal((4, 4)).astype(np.float32))
        y = b.add(Linear(), xs[0], w, name="y")
        return [b.add(Relu(), y), y]

    fused = run_passes(build(body, (3, 4)), "fuse")
    text = fused.to_text()
    parsed = kiln.parse(text, fused.weights)
    assert parsed.to_text() == kiln.parse(parsed.to_text(), fused.weights).to_text()
    same_outputs(fused, parsed, rng)

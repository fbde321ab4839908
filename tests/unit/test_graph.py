"""The SSA graph, builder, rewriter and interpreter core."""

from __future__ import annotations

import numpy as np
import pytest

from kiln.errors import InterpretError, KilnError
from kiln.ir.builder import new_function
from kiln.ir.graph import Module
from kiln.ir.interpret import interpret, interpret_all, sample_inputs
from kiln.ir.location import Location
from kiln.ir.ops.elementwise import Add, Mul, Relu, Sub
from kiln.ir.rewriter import Rewriter, apply_patterns
from kiln.ir.types import F32, I8, TensorType


def small_module() -> Module:
    m = Module("t")
    func, b = new_function(m, "forward", [TensorType((2, 3))], ["x"])
    bias = b.weight("bias", np.arange(3, dtype=np.float32))
    with b.at_loc(Location("net.py", 7, "block.add")):
        y = b.add(Add(), func.args[0], bias, name="y")
    z = b.add(Relu(), y, name="z")
    b.ret(z)
    return m


def test_use_lists_track_operands() -> None:
    m = small_module()
    x = m.main.args[0]
    add = x.uses[0].op
    assert add.name == "kiln.add" and add.loc.describe() == "net.py:7 (block.add)"
    relu = add.result.uses[0].op
    assert [u.op for u in relu.result.uses] == [m.main.return_op]


def test_interpret_matches_numpy(rng: np.random.Generator) -> None:
    m = small_module()
    x = rng.standard_normal((2, 3)).astype(np.float32)
    (out,) = interpret(m, x)
    np.testing.assert_array_equal(out, np.maximum(x + np.arange(3, dtype=np.float32), 0))


def test_interpret_accepts_torch_and_float64(rng: np.random.Generator) -> None:
    torch = pytest.importorskip("torch")
    m = small_module()
    x = rng.standard_normal((2, 3))
    (a,) = interpret(m, x)
    (b,) = interpret(m, torch.from_numpy(x.astype(np.float32)))
    np.testing.assert_array_equal(a, b)


def test_interpret_rejects_bad_inputs() -> None:
    m = small_module()
    with pytest.raises(InterpretError, match=r"shape \[3, 2\], expected \[2, 3\]"):
        interpret(m, np.zeros((3, 2), np.float32))
    with pytest.raises(InterpretError, match="takes 1 inputs, got 2"):
        interpret(m, np.zeros((2, 3), np.float32), np.zeros((2, 3), np.float32))
    with pytest.raises(InterpretError, match="dtype int64"):
        interpret(m, np.zeros((2, 3), np.int64))


def test_interpret_elided_weight_names_it() -> None:
    m = small_module()
    m.weights.clear()
    with pytest.raises(InterpretError, match=r"weight @bias has no data"):
        interpret(m, np.ones((2, 3), np.float32))


def test_interpret_all_records_every_value(rng: np.random.Generator) -> None:
    m = small_module()
    values = interpret_all(m, rng.standard_normal((2, 3)).astype(np.float32))
    assert {v.name for v in values} == {"bias", "y", "z"}


def test_type_inference_error_names_op_and_location() -> None:
    m = Module("t")
    func, b = new_function(m, "forward", [TensorType((2, 3)), TensorType((4,))])
    expected = r"net.py:3: error: 'kiln.add' op shapes \[2, 3\] and \[4\]"
    with pytest.raises(KilnError, match=expected), b.at_loc(Location("net.py", 3)):
        b.add(Add(), *func.args)
    with pytest.raises(KilnError, match="element types differ"):
        b.add(Add(), func.args[0], b.constant(np.zeros(3, np.int8)))


def test_rewriter_replace_and_erase_keep_uses_consistent() -> None:
    m = small_module()
    relu = m.ops_of(Relu)[0]
    add = relu.operands[0].producer
    assert add is not None
    rw = Rewriter(m)
    rw.replace_op(relu, [add.result])
    assert m.main.return_op.operands[0] is add.result
    assert rw.changes == 2 and m.op_counts().get("kiln.relu") is None
    with pytest.raises(KilnError, match="still has 1 uses"):
        add.erase()


def test_apply_patterns_reaches_fixed_point(rng: np.random.Generator) -> None:
    """x - x - ... chains: a pattern that rewrites sub(a, b) -> add(a, b*-1) fires once each."""
    m = Module("t")
    func, b = new_function(m, "forward", [TensorType((4,))])
    v = func.args[0]
    for _ in range(3):
        v = b.add(Sub(), v, func.args[0])
    b.ret(v)

    def sub_to_add(op, rw: Rewriter) -> bool:  # type: ignore[no-untyped-def]
        if not op.isa(Sub):
            return False
        bb = rw.builder_before(op)
        neg = bb.add(Mul(), op.operands[1], bb.constant(np.float32(-1)))
        rw.replace_op(op, [bb.add(Add(), op.operands[0], neg)])
        return True

    x = rng.standard_normal(4).astype(np.float32)
    (before,) = interpret(m, x)
    assert apply_patterns(m, [sub_to_add]) > 0
    assert "kiln.sub" not in m.op_counts()
    (after,) = interpret(m, x)
    np.testing.assert_allclose(after, before, rtol=1e-6)


def test_sample_inputs_are_random_not_zero() -> None:
    m = small_module()
    (x,) = sample_inputs(m.main, seed=3)
    assert x.dtype == np.float32 and np.count_nonzero(x) == x.size


def test_types_basics() -> None:
    t = TensorType((1, 8), I8)
    assert str(t) == "tensor<1x8xi8>" and t.numel == 8 and t.with_dtype(F32).dtype == F32
    with pytest.raises(KilnError, match="negative dimension"):
        TensorType((-1, 2))

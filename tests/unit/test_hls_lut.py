"""Fixed-point activations (`kiln.ir.ops.lut`): stated table errors, exact hard functions,
the lookup-table softmax, the `fixed-activations` pass and the ops' text form.

Errors are checked against float64 math on every raw of a 16-bit input type (the whole input
range), hard functions against exact rational arithmetic (`fractions.Fraction`), on inputs
from fresh seeds.
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest

from kiln.errors import KilnError
from kiln.ir import fixed
from kiln.ir.builder import new_function
from kiln.ir.graph import Module
from kiln.ir.interpret import interpret
from kiln.ir.ops import elementwise as ew
from kiln.ir.ops.base import OpError
from kiln.ir.ops.lut import (
    FLOAT_FN,
    FixedActivation,
    LutSoftmax,
    softmax_errors,
    softmax_raw,
    table_error,
)
from kiln.ir.ops.nn_norm import Softmax
from kiln.ir.parser import parse
from kiln.ir.types import F32, FixedType, TensorType
from kiln.passes.fixed_activations import fixed_activations
from kiln.passes.fixed_point import fixed_point
from kiln.passes.registry import PassContext

IN = FixedType(16, 5, True, "rnd", "sat")
UNIT = FixedType(16, 1, False, "rnd", "sat")
SIGNED_UNIT = FixedType(16, 1, True, "rnd", "sat")


def _brute(kind: FixedActivation, t: FixedType) -> float:
    lo, hi = t.raw_range
    raw = np.arange(lo, hi + 1, dtype=np.int64)
    got = fixed.fixed_to_float(kind.apply(raw, t), kind.to)
    return float(np.abs(got - FLOAT_FN[kind.function](fixed.fixed_to_float(raw, t))).max())


@pytest.mark.parametrize(("function", "to", "range_", "bound"), [
    ("sigmoid", UNIT, 8.0, 2.0 ** -8),  # half a step (2^-7) x max slope 1/4, + tail, + LSB
    ("tanh", SIGNED_UNIT, 4.0, 2.0 ** -8 + 2.0 ** -15)])  # half a step (2^-8) x slope 1 + LSB
def test_table_error_is_stated_and_bounded(function: str, to: FixedType, range_: float,
                                           bound: float) -> None:
    kind = FixedActivation(function, to, 1024, range_)
    stated = table_error(function, IN, to, 1024, range_)
    assert stated == _brute(kind, IN)  # every raw of the 16-bit input: the whole range
    assert stated <= bound
    assert table_error(function, IN, to, 4096, range_) < stated / 3  # 4x table, ~4x smaller


@pytest.mark.parametrize("function", ["hardsigmoid", "hardswish"])
def test_hard_functions_round_the_exact_value_once(function: str) -> None:
    to = UNIT if function == "hardsigmoid" else FixedType(16, 6, True, "rnd", "sat")
    kind = FixedActivation(function, to)
    raw = np.random.default_rng().integers(*IN.raw_range, size=400)
    got = kind.apply(raw, IN)
    for r, y in zip(raw.tolist(), got.tolist()):
        x = Fraction(r, 2 ** IN.frac_bits)
        exact = min(max(x / 6 + Fraction(1, 2), 0), 1) if function == "hardsigmoid" else \
            x * min(max(x + 3, 0), 6) / 6
        scaled = min(max(exact * 2 ** to.frac_bits, Fraction(to.raw_range[0])),
                     Fraction(to.raw_range[1]))
        assert abs(Fraction(y) - scaled) <= Fraction(1, 2), (r, y, scaled)  # rnd: nearest
    assert table_error(function, IN, to) <= 2.0 ** -(to.frac_bits + 1) + 1e-12


def test_lut_softmax_matches_float_softmax_within_its_tables() -> None:
    kind = LutSoftmax(UNIT)
    rng = np.random.default_rng()
    raw = rng.integers(-2 ** 13, 2 ** 13, size=(64, 10))
    got = fixed.fixed_to_float(softmax_raw(raw, IN, kind), UNIT)
    x = fixed.fixed_to_float(raw, IN)
    want = np.exp(x - x.max(-1, keepdims=True))
    want /= want.sum(-1, keepdims=True)
    errors = softmax_errors(IN, kind)
    assert errors["exp_table_error"] <= 2.0 ** -8 and errors["inv_table_rel_error"] <= 2.0 ** -10
    # exp entries are off by at most a relative step/2 (2^-8), 1/m by 2^-10: products < 1.3 %
    assert np.abs(got - want).max() <= 0.013
    picked = want[np.arange(len(want)), got.argmax(-1)]  # argmax kept up to near-ties
    assert np.all(picked >= want.max(-1) - 0.013)
    assert np.abs(got.sum(-1) - 1.0).max() <= 0.02


def test_bad_tables_are_refused() -> None:
    x = [TensorType((1, 4), IN)]
    with pytest.raises(OpError, match="power of two"):
        FixedActivation("sigmoid", UNIT, 1000).verify(x)
    with pytest.raises(OpError, match="power of two"):
        LutSoftmax(UNIT, 1024, 6.0).verify(x)
    with pytest.raises(OpError, match="not one of"):
        FixedActivation("gelu", UNIT).verify(x)
    with pytest.raises(OpError, match="fixed<> to fixed<>"):
        FixedActivation("sigmoid", UNIT).infer_type([TensorType((1, 4), F32)])


def _float_model() -> Module:
    m = Module("acts")
    func, b = new_function(m, "forward", [TensorType((1, 8), F32)])
    w = b.weight("w", np.random.default_rng(0).standard_normal((8, 8)).astype(np.float32))
    h = b.add(ew.Sigmoid(), b.add(ew.Mul(), func.args[0], w))
    h = b.add(ew.Add(), b.add(ew.Hardswish(), h), b.add(ew.Tanh(), h))
    b.ret(b.add(Softmax(axis=1), h))
    return m


def test_pass_replaces_float_islands_and_the_text_form_round_trips() -> None:
    m = _float_model()
    rng = np.random.default_rng()
    data = [(rng.standard_normal((1, 8)).astype(np.float32),) for _ in range(4)]
    fixed_point(m, PassContext("fixed-point", calibration_data=data), width=16)
    ctx = PassContext("fixed-activations")
    assert fixed_activations(m, ctx, table_size=512)
    assert ctx.statistics == {"sigmoid": 1, "hardswish": 1, "tanh": 1, "softmax": 1}
    counts = m.op_counts()
    assert counts["kiln.fixed_activation"] == 3 and counts["kiln.lut_softmax"] == 1
    assert not {"kiln.sigmoid", "kiln.tanh", "kiln.softmax", "kiln.hardswish"} & set(counts)
    text = m.to_text()
    assert "table_size = 512" in text and 'function = "tanh"' in text
    again = parse(text)
    again.weights.update(m.weights)
    assert again.to_text() == text
    x = rng.standard_normal((1, 8)).astype(np.float32)
    assert np.array_equal(interpret(again, x)[0], interpret(m, x)[0])


def test_hardswish_input_without_fraction_bits_is_refused() -> None:
    with pytest.raises(OpError, match="fraction bits"):
        FixedActivation("hardswish", FixedType(8, 10, True)).verify(
            [TensorType((1, 2), FixedType(8, 10, True))])
    with pytest.raises(KilnError):
        FixedActivation("sigmoid", UNIT, 1024, 3.0).verify([TensorType((1, 2), IN)])


def test_table_range_option() -> None:
    m = _float_model()
    rng = np.random.default_rng()
    data = [(rng.standard_normal((1, 8)).astype(np.float32),) for _ in range(2)]
    fixed_point(m, PassContext("fixed-point", calibration_data=data), width=16)
    with pytest.raises(KilnError, match=r"table-range=3\.0 must be a power of two"):
        fixed_activations(m, PassContext("fixed-activations"), table_range=3.0)
    fixed_activations(m, PassContext("fixed-activations"), table_range=2.0)
    ranges = {getattr(op.kind, "function", "softmax"): op.kind.range for op in m.main.ops
              if op.name in ("kiln.fixed_activation", "kiln.lut_softmax")}
    assert ranges == {"sigmoid": 2.0, "tanh": 2.0, "hardswish": 8.0, "softmax": 2.0}

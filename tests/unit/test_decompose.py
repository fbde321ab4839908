"""decompose: each decomposition removes its op and stays within its stated tolerance of the op
(max|Δ| / max|ref| on random inputs, fresh seeds); bad option values are reported."""

from __future__ import annotations

import inspect
import warnings
from dataclasses import dataclass, field

import numpy as np
import pytest
from conftest import rel_error

from kiln.compiler.pass_manager import run_passes
from kiln.errors import KilnError
from kiln.ir.builder import new_function
from kiln.ir.graph import Module
from kiln.ir.interpret import interpret
from kiln.ir.ops import elementwise as ew
from kiln.ir.ops.base import OpDef
from kiln.ir.ops.nn_conv import Conv1d, Linear
from kiln.ir.ops.nn_norm import BatchNorm, LayerNorm, LocalResponseNorm, LogSoftmax, Softmax
from kiln.ir.ops.nn_pool import AdaptiveAvgPool1d, AdaptiveAvgPool2d, AvgPool1d, MaxPool1d
from kiln.ir.types import TensorType
from kiln.passes.decompose import DECOMPOSITIONS, decomposable

TOLERANCE = 1e-5


@dataclass(frozen=True)
class Case:
    """One op on `shapes` inputs (the first is the function argument, the rest weights)."""

    id: str
    op: OpDef
    shapes: tuple[tuple[int, ...], ...]
    scale: float = 3.0
    exact: bool = False
    positive: tuple[int, ...] = field(default=())
    """Operand indices drawn from U(0.5, 1.5) (variances)."""


CASES = [
    Case("gelu", ew.Gelu(), ((3, 17),)),
    Case("gelu-tanh", ew.Gelu(approximate="tanh"), ((3, 17),)),
    Case("sigmoid", ew.Sigmoid(), ((4, 9),), scale=8.0),
    Case("silu", ew.Silu(), ((4, 9),), scale=8.0),
    Case("hardswish", ew.Hardswish(), ((5, 11),)),
    Case("hardsigmoid", ew.Hardsigmoid(), ((5, 11),)),
    Case("relu", ew.Relu(), ((2, 8),), exact=True),
    Case("relu6", ew.Relu6(), ((2, 8),), scale=6.0, exact=True),
    Case("clamp", ew.Clamp(min=-0.5, max=1.0), ((2, 8),), exact=True),
    Case("clamp-min", ew.Clamp(min=0.25), ((2, 8),), exact=True),
    Case("leaky_relu", ew.LeakyRelu(slope=0.1), ((2, 8),), exact=True),
    Case("softmax", Softmax(axis=1), ((2, 5, 3),)),
    Case("softmax-last", Softmax(), ((4, 7),), scale=10.0),
    Case("log_softmax", LogSoftmax(axis=0), ((6, 3),)),
    Case("layer_norm", LayerNorm(normalized_ndim=2), ((2, 3, 4), (3, 4), (3, 4)), scale=1.0),
    Case("layer_norm-plain", LayerNorm(), ((2, 8),), scale=1.0),
    Case("batch_norm", BatchNorm(), ((2, 3, 4, 4), (3,), (3,), (3,), (3,)), positive=(4,)),
    Case("batch_norm-2d", BatchNorm(eps=1e-3), ((5, 3), (3,), (3,), (3,), (3,)), positive=(4,)),
    Case("local_response_norm", LocalResponseNorm(size=5, alpha=0.01), ((2, 7, 3, 3),)),
    Case("local_response_norm-even", LocalResponseNorm(size=2, beta=0.5, k=2.0), ((1, 4, 6),)),
    Case("linear", Linear(), ((2, 3, 5), (4, 5), (4,)), scale=1.0),
    Case("linear-no-bias", Linear(), ((3, 5), (2, 5)), scale=1.0),
    Case("conv1d", Conv1d(stride=(2,), padding=(1, 2), dilation=(2,), groups=2),
         ((2, 4, 19), (6, 2, 3), (6,)), scale=1.0, exact=True),
    Case("max_pool1d", MaxPool1d(kernel=(3,), stride=(2,), padding=(1, 1), ceil_mode=True),
         ((2, 3, 10),), exact=True),
    Case("avg_pool1d", AvgPool1d(kernel=(3,), stride=(2,), padding=(1, 1),
                                 count_include_pad=False), ((2, 3, 10),)),
    Case("adaptive_avg_pool2d-global", AdaptiveAvgPool2d(), ((2, 3, 5, 7),)),
    Case("adaptive_avg_pool2d-divisible", AdaptiveAvgPool2d(output_size=(2, 3)),
         ((1, 2, 4, 6),)),
    Case("adaptive_avg_pool1d", AdaptiveAvgPool1d(output_size=(4,)), ((2, 3, 8),)),
]


def one_op(case: Case, rng: np.random.Generator) -> Module:
    module = Module("t")
    func, b = new_function(module, "forward", [TensorType(case.shapes[0])], ["x"])
    params = []
    for i, shape in enumerate(case.shapes[1:], start=1):
        if i in case.positive:
            array = rng.uniform(0.5, 1.5, shape)
        else:
            array = rng.standard_normal(shape)
        params.append(b.weight(f"p{i}", array.astype(np.float32)))
    b.ret(b.add(case.op, func.args[0], *params, name="y"))
    return module


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_decomposition_matches_the_op(case: Case, rng: np.random.Generator) -> None:
    module = one_op(case, rng)
    short = case.op.NAME.removeprefix("kiln.")
    out = run_passes(module, f"decompose{{ops={short}}}")
    assert case.op.NAME not in out.op_counts()
    assert out.main.outputs[0].name == "y"
    for _ in range(3):
        x = (rng.standard_normal(case.shapes[0]) * case.scale).astype(np.float32)
        (want,), (got,) = interpret(module, x), interpret(out, x)
        error = rel_error(got, want)
        assert error == 0.0 if case.exact else error <= TOLERANCE, error


@pytest.mark.parametrize("op", [ew.LeakyRelu(slope=1.5), AdaptiveAvgPool2d(output_size=(3, 3))],
                         ids=["leaky_relu-steep", "adaptive_avg_pool2d-uneven"])
def test_ops_without_an_exact_form_stay(op: OpDef, rng: np.random.Generator) -> None:
    module = one_op(Case("x", op, ((1, 2, 4, 4),)), rng)
    out = run_passes(module, "decompose")
    assert out.to_text() == module.to_text()


def test_listed_ops_inside_a_decomposition_are_decomposed_too(rng: np.random.Generator) -> None:
    module = one_op(Case("x", ew.Hardswish(), ((2, 3),)), rng)
    assert "kiln.clamp" in run_passes(module, "decompose{ops=hardswish}").op_counts()
    counts = run_passes(module, "decompose{ops=hardswish|kiln.clamp}").op_counts()
    assert "kiln.clamp" not in counts and counts["kiln.maximum"] == counts["kiln.minimum"] == 1


def test_unknown_op_names_are_reported_with_the_valid_ones(rng: np.random.Generator) -> None:
    module = one_op(Case("x", ew.Gelu(), ((2, 3),)), rng)
    with pytest.raises(KilnError) as info:
        run_passes(module, "decompose{ops=gelu|conv2d}")
    text = str(info.value)
    assert "no decomposition for 'conv2d'" in text
    assert "decomposable ops: adaptive_avg_pool1d, " in text and "softmax (or all)" in text


def test_every_decomposition_states_its_formula() -> None:
    for cls, fn in DECOMPOSITIONS.items():
        assert inspect.getdoc(fn), f"{fn.__name__} ({cls.NAME}) has no docstring"
    assert set(decomposable()) >= {"gelu", "layer_norm", "softmax", "batch_norm", "linear"}


@pytest.mark.parametrize("name", ["transformer_layer", "mobilenet_v2ish", "conv1d_net"])
def test_bundled_models_decompose_fully(name: str) -> None:
    import kiln
    from kiln.models import example_inputs, get_model

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module = kiln.trace(get_model(name), example_inputs(name))
    out = run_passes(module, "decompose")
    assert not {cls.NAME for cls in DECOMPOSITIONS} & set(out.op_counts())
    for seed in (7, 8):
        x = np.random.default_rng(seed).standard_normal(module.main.args[0].type.shape)
        (want,), (got,) = interpret(module, x.astype(np.float32)), interpret(out, x)
        assert rel_error(got, want) <= TOLERANCE

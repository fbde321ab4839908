"""fold-batchnorm: what folds where, and that outputs stay within 1e-5 relative of the unfolded
module (max|Δ| / max|ref| on random inputs, fresh seeds, non-trivial batch-norm statistics)."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable

import numpy as np
import pytest
from conftest import rel_error

from kiln.compiler.pass_manager import run_passes
from kiln.ir.builder import Builder, new_function
from kiln.ir.graph import Module, Value
from kiln.ir.interpret import interpret, sample_inputs
from kiln.ir.ops.core import Weight
from kiln.ir.ops.elementwise import Mul, Relu
from kiln.ir.ops.nn_conv import Conv1d, Conv2d, ConvTranspose2d, Linear
from kiln.ir.ops.nn_norm import BatchNorm
from kiln.ir.parser import parse
from kiln.ir.types import TensorType

TOLERANCE = 1e-5
Body = Callable[[Builder, Value, np.random.Generator], list[Value]]


def build(body: Body, shape: tuple[int, ...], rng: np.random.Generator) -> Module:
    module = Module("t")
    func, b = new_function(module, "forward", [TensorType(shape)], ["x"])
    b.ret(*body(b, func.args[0], rng))
    return module


def randn(rng: np.random.Generator, *shape: int) -> np.ndarray:
    return rng.standard_normal(shape).astype(np.float32)


def batch_norm(b: Builder, x: Value, rng: np.random.Generator, name: str = "bn",
               eps: float = 1e-5) -> Value:
    """A batch norm over channel axis 1 with random statistics (var in 0.5..1.5)."""
    c = x.type.shape[1]
    params = [b.weight(f"{name}.weight", rng.uniform(0.5, 1.5, c).astype(np.float32)),
              b.weight(f"{name}.bias", randn(rng, c)),
              b.weight(f"{name}.running_mean", (randn(rng, c) * 0.5).astype(np.float32)),
              b.weight(f"{name}.running_var", rng.uniform(0.5, 1.5, c).astype(np.float32))]
    return b.add(BatchNorm(eps=eps), x, *params, name=name)


def fold_checked(module: Module, pipeline: str = "fold-batchnorm", seeds: int = 3) -> Module:
    """Run `pipeline`; outputs stay within TOLERANCE of the input module's."""
    out = run_passes(module, pipeline)
    for seed in range(100, 100 + seeds):
        inputs = sample_inputs(module.main, seed)
        for got, want in zip(interpret(out, *inputs), interpret(module, *inputs)):
            assert rel_error(got, want) <= TOLERANCE
    return out


def counts(module: Module) -> dict[str, int]:
    return module.op_counts()


# -- folding into the producer ---------------------------------------------------------------------
CONVS = {
    "conv2d": (Conv2d(padding=(1, 1, 1, 1)), (2, 3, 6, 6), (4, 3, 3, 3)),
    "conv2d-grouped": (Conv2d(groups=2, stride=(2, 2)), (1, 4, 7, 7), (6, 2, 3, 3)),
    "conv2d-depthwise": (Conv2d(groups=4, padding=(1, 1, 1, 1)), (1, 4, 5, 5), (4, 1, 3, 3)),
    "conv1d": (Conv1d(padding=(2, 2)), (2, 4, 16), (8, 4, 5)),
    "conv_transpose2d": (ConvTranspose2d(stride=(2, 2)), (1, 3, 4, 4), (3, 5, 3, 3)),
    "conv_transpose2d-grouped": (ConvTranspose2d(groups=3, padding=(1, 1, 1, 1)),
                                 (1, 6, 4, 4), (6, 2, 3, 3)),
}


@pytest.mark.parametrize("bias", [False, True], ids=["no-bias", "bias"])
@pytest.mark.parametrize("case", sorted(CONVS))
def test_conv_then_batch_norm_folds(case: str, bias: bool, rng: np.random.Generator) -> None:
    kind, x_shape, w_shape = CONVS[case]

    def body(b: Builder, x: Value, rng: np.random.Generator) -> list[Value]:
        w = b.weight("conv.weight", randn(rng, *w_shape))
        extra = []
        if bias:
            channels = w_shape[1] * kind.groups if isinstance(kind, ConvTranspose2d) \
                else w_shape[0]
            extra = [b.weight("conv.bias", randn(rng, channels))]
        return [batch_norm(b, b.add(kind, x, w, *extra, name="conv"), rng)]

    module = build(body, x_shape, rng)
    out = fold_checked(module)
    assert "kiln.batch_norm" not in counts(out)
    (conv,) = [op for op in out.main.ops if op.name == kind.NAME]
    assert len(conv.operands) == 3 and conv.result.name == "conv"
    assert sorted(out.weights) == ["conv.bias.bnfold", "conv.weight.bnfold"]


def test_folded_weights_are_computed_in_float64_and_rounded_once(
        rng: np.random.Generator) -> None:
    def body(b: Builder, x: Value, rng: np.random.Generator) -> list[Value]:
        conv = b.add(Conv2d(), x, b.weight("w", randn(rng, 3, 2, 1, 1)))
        return [batch_norm(b, conv, rng, eps=1e-3)]

    module = build(body, (1, 2, 3, 3), rng)
    w = module.weights
    gamma, beta = w["bn.weight"].astype(np.float64), w["bn.bias"].astype(np.float64)
    mean, var = w["bn.running_mean"].astype(np.float64), w["bn.running_var"].astype(np.float64)
    s = gamma / np.sqrt(var + 1e-3)
    out = run_passes(module, "fold-batchnorm")
    want_w = (w["w"].astype(np.float64) * s[:, None, None, None]).astype(np.float32)
    np.testing.assert_array_equal(out.weights["w.bnfold"], want_w)
    np.testing.assert_array_equal(out.weights["w.bias.bnfold"],
                                  (beta - mean * s).astype(np.float32))


def test_linear_then_1d_batch_norm_folds(rng: np.random.Generator) -> None:
    def body(b: Builder, x: Value, rng: np.random.Generator) -> list[Value]:
        fc = b.add(Linear(), x, b.weight("fc.weight", randn(rng, 6, 5)),
                   b.weight("fc.bias", randn(rng, 6)), name="fc")
        return [batch_norm(b, fc, rng)]

    out = fold_checked(build(body, (4, 5), rng))
    assert counts(out) == {"kiln.linear": 1, "kiln.return": 1, "kiln.weight": 2}
    assert sorted(out.weights) == ["fc.bias.bnfold", "fc.weight.bnfold"]


# -- scale and shift -------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(2, 3, 4, 5), (2, 3, 7), (4, 3)])
def test_batch_norm_after_relu_becomes_scale_and_shift(shape: tuple[int, ...],
                                                       rng: np.random.Generator) -> None:
    def body(b: Builder, x: Value, rng: np.random.Generator) -> list[Value]:
        return [batch_norm(b, b.add(Relu(), x), rng)]

    out = fold_checked(build(body, shape, rng))
    assert [op.name for op in out.main.ops if not op.isa(Weight)] == [
        "kiln.relu", "kiln.mul", "kiln.add", "kiln.return"]
    channel_shape = (3,) + (1,) * (len(shape) - 2)
    assert out.weights["bn.bnfold.scale"].shape == channel_shape
    assert out.weights["bn.bnfold.shift"].shape == channel_shape
    assert sorted(out.weights) == ["bn.bnfold.scale", "bn.bnfold.shift"]


def test_conv_with_another_user_is_not_folded(rng: np.random.Generator) -> None:
    def body(b: Builder, x: Value, rng: np.random.Generator) -> list[Value]:
        conv = b.add(Conv2d(), x, b.weight("w", randn(rng, 4, 3, 1, 1)))
        return [batch_norm(b, conv, rng), conv]

    module = build(body, (1, 3, 4, 4), rng)
    out = fold_checked(module)
    conv = next(op for op in out.main.ops if op.isa(Conv2d))
    assert len(conv.operands) == 2 and "w" in out.weights
    assert counts(out)["kiln.mul"] == counts(out)["kiln.add"] == 1
    kept = run_passes(module, "fold-batchnorm{scale-shift=false}")
    assert kept.to_text() == run_passes(module, "dce").to_text()


def test_linear_of_rank_3_is_not_folded_into(rng: np.random.Generator) -> None:
    """A (N, C, F) linear result has its features on the last axis, the batch norm on axis 1."""
    def body(b: Builder, x: Value, rng: np.random.Generator) -> list[Value]:
        fc = b.add(Linear(), x, b.weight("w", randn(rng, 4, 4)))
        return [batch_norm(b, fc, rng)]

    out = fold_checked(build(body, (2, 4, 4), rng))
    assert counts(out)["kiln.linear"] == 1 and counts(out)["kiln.mul"] == 1


def test_elided_weights_leave_the_batch_norm_and_say_why(
        rng: np.random.Generator, caplog: pytest.LogCaptureFixture) -> None:
    def body(b: Builder, x: Value, rng: np.random.Generator) -> list[Value]:
        return [batch_norm(b, b.add(Conv2d(), x, b.weight("w", randn(rng, 2, 2, 1, 1))), rng)]

    text = build(body, (1, 2, 3, 3), rng).to_text()
    elided = parse(text)
    with caplog.at_level(logging.DEBUG, logger="kiln.passes"):
        out = run_passes(elided, "fold-batchnorm")
    assert out.to_text() == elided.to_text()
    assert "not folding %bn: a batch-norm parameter has no data" in caplog.text


def test_statistics_count_folds_and_scale_shifts(rng: np.random.Generator) -> None:
    from kiln.compiler.pass_manager import PassManager

    def body(b: Builder, x: Value, rng: np.random.Generator) -> list[Value]:
        conv = b.add(Conv2d(), x, b.weight("w", randn(rng, 2, 2, 1, 1)))
        folded = batch_norm(b, conv, rng, "bn1")
        return [batch_norm(b, b.add(Mul(), folded, folded), rng, "bn2")]

    result = PassManager("fold-batchnorm").run(build(body, (1, 2, 3, 3), rng))
    assert result.records[0].statistics == {"folded": 1, "scale-shift": 1}
    assert counts(result.module)["kiln.add"] == 1


# -- the bundled models ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def traced() -> Callable[[str], Module]:
    import kiln
    from kiln.models import example_inputs, get_model

    cache: dict[str, Module] = {}

    def get(name: str) -> Module:
        if name not in cache:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                cache[name] = kiln.trace(get_model(name), example_inputs(name))
        return cache[name]

    return get


@pytest.mark.parametrize("name", ["resnet8", "mobilenet_v2ish", "digits_cnn", "conv1d_net"])
def test_bundled_models_end_with_no_batch_norm(name: str, traced: Callable[[str], Module]) -> None:
    module = traced(name)
    assert counts(module)["kiln.batch_norm"] > 0
    out = fold_checked(module, seeds=2)
    assert "kiln.batch_norm" not in counts(out)
    assert counts(out).get("kiln.mul", 0) == counts(module).get("kiln.mul", 0)  # all folded
    assert not [n for n in out.weights if "running" in n]

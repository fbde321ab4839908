"""The quantize pass: accuracy on real data, bit-exact integer paths, SQNR, mixed precision.

Accuracy: the trained digits models (sklearn's 8×8 digits, fixed split) are traced at batch 50,
calibrated on 200 training images and evaluated on the 450 test images; int8 per-channel PTQ
must stay within 0.5 points of fp32 for every observer. Bit-exactness: every integer value of a
quantized model equals the independent re-implementation of `qnn_numpy.py`.
"""

from __future__ import annotations

import functools
import logging

import numpy as np
import pytest
import qnn_numpy

import kiln
import kiln.passes.quantize
from kiln.ir.graph import Module
from kiln.ir.interpret import interpret, interpret_all
from kiln.ir.types import I8, U8, QuantType
from kiln.passes.calibrate import OBSERVERS
from kiln.passes.quantize import INTEGER_OPS, QuantOptions, quantize_module

torch = pytest.importorskip("torch")
from kiln.models import example_inputs, get_model, load_digits_data  # noqa: E402

BATCH = 50


@functools.cache
def _traced(name: str, batch: int, seed: int) -> Module:
    module = kiln.trace(get_model(name), example_inputs(name, batch=batch, seed=seed))
    return kiln.run_passes(module, "fold-batchnorm,dce")


def float_module(name: str, batch: int = BATCH, seed: int = 0) -> Module:
    """A fresh copy of the traced, batch-norm-folded float model (tracing once per test run)."""
    return _traced(name, batch, seed).clone()


@pytest.fixture(scope="module")
def digits() -> dict[str, np.ndarray]:
    x_train, _ = load_digits_data("train")
    x_test, y_test = load_digits_data("test")
    return {"calib": x_train[:200], "x": x_test, "y": y_test}


@pytest.fixture(scope="module", params=["digits_cnn", "digits_mlp"])
def digits_model(request: pytest.FixtureRequest,
                 digits: dict[str, np.ndarray]) -> tuple[str, Module, float]:
    """(name, traced float module, its fp32 test accuracy)."""
    module = float_module(request.param)
    return request.param, module, accuracy(module, digits["x"], digits["y"])


def accuracy(module: Module, x: np.ndarray, y: np.ndarray) -> float:
    logits = [interpret(module, x[i:i + BATCH])[0] for i in range(0, len(x), BATCH)]
    return float((np.concatenate(logits).argmax(axis=1) == y).mean())


def assert_bit_exact(module: Module, *inputs: np.ndarray) -> int:
    """Every value equals the independent re-computation; returns the integer ops checked."""
    mine = qnn_numpy.run_integer_model(module, *inputs)
    kiln_values = interpret_all(module, *inputs)
    checked = 0
    for op in module.main.ops:
        for value in op.results:
            if value in kiln_values:
                np.testing.assert_array_equal(kiln_values[value], mine[value], err_msg=op.name)
        checked += isinstance(op.kind, INTEGER_OPS)
    return checked


# -- accuracy and bit-exactness on the digits models -------------------------------------------
@pytest.mark.parametrize("observer", OBSERVERS)
def test_int8_ptq_keeps_digits_accuracy(digits_model: tuple[str, Module, float],
                                        observer: str, digits: dict[str, np.ndarray]) -> None:
    name, module, fp32 = digits_model
    quantized = kiln.run_passes(module, f"quantize{{observer={observer}}}",
                                calibration_data=digits["calib"])
    int8 = accuracy(quantized, digits["x"], digits["y"])
    assert int8 >= fp32 - 0.005, f"{name} {observer}: fp32 {fp32:.4f}, int8 {int8:.4f}"
    assert assert_bit_exact(quantized, digits["x"][:BATCH]) >= 2


def test_the_main_path_is_integer(digits: dict[str, np.ndarray]) -> None:
    quantized = kiln.run_passes(float_module("digits_cnn"), "quantize",
                                calibration_data=digits["calib"])
    counts = quantized.op_counts()
    assert counts["kiln.qconv2d"] == 2 and counts["kiln.qlinear"] == 1
    assert counts["kiln.quantize"] == 1 and counts["kiln.dequantize"] == 1
    assert not {"kiln.conv2d", "kiln.linear", "kiln.relu"} & set(counts)
    pools = quantized.ops_of(kiln.ir.ops.nn_pool.MaxPool2d)
    assert all(isinstance(p.result.type.dtype, QuantType) for p in pools)


@pytest.mark.parametrize("name", ["resnet8", "conv1d_net", "transformer_layer"])
def test_random_models_are_bit_exact_and_accurate(name: str, rng: np.random.Generator) -> None:
    """Residual adds, global pooling, 1-D convs, matmuls of activations, float islands."""
    module = float_module(name, batch=2, seed=1)
    shape = module.main.args[0].type.shape
    calib = [rng.standard_normal(shape).astype(np.float32) for _ in range(8)]
    quantized = module.clone()
    report = quantize_module(quantized, calib)
    x = rng.standard_normal(shape).astype(np.float32)
    assert assert_bit_exact(quantized, x) >= 3
    sqnr = 10 * np.log10(np.sum(interpret(module, x)[0].astype(np.float64) ** 2)
                         / np.sum((interpret(module, x)[0] - interpret(quantized, x)[0]) ** 2))
    logging.getLogger(__name__).info("%s: output SQNR %.1f dB on fresh data", name, sqnr)
    assert sqnr > 25.0 and report.output_sqnr_db[0] > 25.0
    assert all(layer.sqnr_db is not None and layer.sqnr_db > 20 for layer in report.quantized)


class ConcatNet(torch.nn.Module):
    """Concat of two branches with different ranges, average pooling, zero padding, softmax."""

    def __init__(self) -> None:
        super().__init__()
        self.a = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.b = torch.nn.Conv2d(3, 5, 1)
        self.pool = torch.nn.AvgPool2d(3, 2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.cat([torch.relu(self.a(x)), self.b(x)], 1)
        y = torch.nn.functional.pad(self.pool(y), (1, 1, 1, 1))
        return torch.softmax(y.flatten(1), -1)


def test_concat_pools_and_padding_stay_integer(rng: np.random.Generator) -> None:
    torch.manual_seed(0)
    module = kiln.trace(ConcatNet().eval(), (torch.zeros(2, 3, 8, 8),))
    calib = [rng.standard_normal((2, 3, 8, 8)).astype(np.float32) for _ in range(16)]
    quantized = kiln.run_passes(module, "quantize", calibration_data=calib)
    counts = quantized.op_counts()
    # a branch whose range differs from the concat's is rescaled (one or both, by the data)
    assert counts["kiln.qrescale"] in (1, 2) and counts["kiln.qavg_pool2d"] == 1
    assert counts["kiln.softmax"] == 1 and counts["kiln.dequantize"] == 1  # float island
    pad = quantized.ops_of(kiln.ir.ops.shape.Pad)[0]
    assert isinstance(pad.result.type.dtype, QuantType)
    assert pad.kind.value == pad.result.type.dtype.zero_point[0]  # pads real zeros
    x = rng.standard_normal((2, 3, 8, 8)).astype(np.float32)
    # 2 qconv2d, the qrescale(s), qavg_pool2d
    assert assert_bit_exact(quantized, x) == 3 + counts["kiln.qrescale"]
    want = interpret(module, x)[0]
    assert np.abs(interpret(quantized, x)[0] - want).max() <= 0.05 * np.abs(want).max()


def test_resnet8_sqnr_report(rng: np.random.Generator) -> None:
    module = float_module("resnet8", batch=2, seed=1)
    calib = [rng.standard_normal((2, 3, 32, 32)).astype(np.float32) for _ in range(2)]
    report = quantize_module(module, calib, QuantOptions(observer="percentile"))
    names = [layer.name for layer in report.quantized]
    assert {"stage1", "stage2.shortcut", "fc"} <= set(names)  # qadd, a 1x1 conv, the head
    assert [layer.op for layer in report.layers].count("kiln.add") == 3
    assert report.output_sqnr_db[0] > 30.0


# -- options -----------------------------------------------------------------------------------
def test_dtype_and_symmetric_options_pick_the_activation_types(
        digits: dict[str, np.ndarray]) -> None:
    module = float_module("digits_mlp")
    for pipeline, storage, symmetric in (("quantize{dtype=uint8}", U8, False),
                                         ("quantize{symmetric=true}", I8, True),
                                         ("quantize{dtype=uint8,symmetric=true}", U8, True)):
        quantized = kiln.run_passes(module, pipeline, calibration_data=digits["calib"])
        for op in quantized.ops_of(kiln.ir.ops.qnn.QLinear):
            q = op.result.type.dtype
            assert isinstance(q, QuantType) and q.storage == storage
            if symmetric:
                assert q.zero_point == ((0,) if storage == I8 else (128,))
            w = op.operands[1].type.dtype
            assert isinstance(w, QuantType) and w.axis == 0 and set(w.zero_point) == {0}


def test_per_tensor_weights(digits: dict[str, np.ndarray]) -> None:
    quantized = kiln.run_passes(float_module("digits_cnn"), "quantize{per-channel=false}",
                                calibration_data=digits["calib"])
    for op in quantized.ops_of(kiln.ir.ops.qnn.QConv2d):
        w = op.operands[1].type.dtype
        assert isinstance(w, QuantType) and w.axis is None and len(op.kind.multiplier) == 1


def test_keep_float_by_op_or_value_name(digits: dict[str, np.ndarray]) -> None:
    module = float_module("digits_cnn")
    quantized = kiln.run_passes(module, "quantize{keep-float=conv2|linear}",
                                calibration_data=digits["calib"])
    counts = quantized.op_counts()
    assert counts["kiln.qconv2d"] == 1 and counts["kiln.conv2d"] == 1
    assert counts["kiln.linear"] == 1 and "kiln.qlinear" not in counts
    assert accuracy(quantized, digits["x"], digits["y"]) >= accuracy(module, digits["x"],
                                                                      digits["y"]) - 0.005


def test_max_error_keeps_noisy_layers_float(digits: dict[str, np.ndarray],
                                            caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="kiln.passes"):
        quantized = kiln.run_passes(float_module("digits_cnn"), "quantize{max-error=0.009}",
                                    calibration_data=digits["calib"])
    counts = quantized.op_counts()
    assert "kiln.qconv2d" in counts and "kiln.conv2d" in counts  # conv2's error is ~1 %
    assert "exceeds max-error 0.009" in caplog.text and "SQNR" in caplog.text


def test_calibration_data_forms(digits: dict[str, np.ndarray]) -> None:
    """One big array (split into batches), a list of arrays, or a list of input tuples."""
    module = float_module("digits_mlp")
    batches = [digits["calib"][i:i + BATCH] for i in range(0, 200, BATCH)]
    texts = {kiln.run_passes(module, "quantize", calibration_data=data).to_text()
             for data in (digits["calib"], batches, [(b,) for b in batches])}
    assert len(texts) == 1


def test_a_quantized_module_is_not_quantized_twice(digits: dict[str, np.ndarray],
                                                   caplog: pytest.LogCaptureFixture) -> None:
    once = kiln.run_passes(float_module("digits_mlp"), "quantize",
                           calibration_data=digits["calib"])
    with caplog.at_level(logging.INFO, logger="kiln.passes"):
        twice = kiln.run_passes(once, "quantize")
    assert twice.to_text() == once.to_text()
    assert "already has integer ops" in caplog.text


def test_quantized_modules_survive_the_cleanup_passes(digits: dict[str, np.ndarray]) -> None:
    quantized = kiln.run_passes(float_module("digits_cnn"), "quantize",
                                calibration_data=digits["calib"])
    cleaned = kiln.run_passes(quantized, "canonicalize,fold-constants,cse,dce")
    x = digits["x"][:BATCH]
    np.testing.assert_array_equal(interpret(cleaned, x)[0], interpret(quantized, x)[0])
    assert cleaned.op_counts().get("kiln.qconv2d") == 2


# -- bad input ---------------------------------------------------------------------------------
@pytest.mark.parametrize(("data", "message"), [
    (None, "needs calibration data: the option calibration_data was not given"),
    ([], "the option calibration_data is empty"),
    (np.zeros((50, 1, 4, 4), np.float32),
     "calibration_data input 0 (%x) has shape [50, 1, 4, 4], @forward expects [50, 1, 8, 8]"),
    ([np.zeros((7, 1, 8, 8), np.float32)], "calibration_data input 0 (%x) has shape [7, 1, 8, 8]"),
    ([(np.zeros((50, 1, 8, 8), np.float32),) * 2], "has 2 input(s)"),
])
def test_bad_calibration_data_names_the_pass_and_the_option(data: object, message: str) -> None:
    with pytest.raises(kiln.KilnError) as info:
        kiln.run_passes(float_module("digits_mlp"), "quantize", calibration_data=data,
                        reproducer=False)
    text = str(info.value)
    assert message in text and "quantize" in text


@pytest.mark.parametrize(("pipeline", "option"), [
    ("quantize{observer=histogram}", "observer"), ("quantize{dtype=int4}", "dtype"),
])
def test_unknown_observer_or_dtype(pipeline: str, option: str) -> None:
    with pytest.raises(kiln.KilnError) as info:
        kiln.run_passes(float_module("digits_mlp"), pipeline, calibration_data=[],
                        reproducer=False)
    assert option in str(info.value) and "quantize" in str(info.value)

"""The report's numerics: SQNR arithmetic, per-layer SQNR of fixed-point and int8 IR against
independently computed values, and accuracy on an evaluation set against PyTorch's."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

import kiln
from kiln.errors import KilnError
from kiln.ir.fixed import dequantize_affine, fixed_to_float
from kiln.ir.interpret import interpret_all
from kiln.ir.types import FixedType, QuantType
from kiln.models import get_model
from kiln.models.digits import load_digits_data
from kiln.report.layer_numerics import sqnr_db


def test_sqnr_of_a_known_signal_and_noise(rng: np.random.Generator) -> None:
    signal = rng.standard_normal(1000)
    noise = rng.standard_normal(1000)
    noise *= np.sqrt(np.sum(signal ** 2) / np.sum(noise ** 2)) / 10.0  # power ratio 100
    assert sqnr_db(signal, signal + noise) == pytest.approx(20.0, abs=1e-3)
    assert sqnr_db(signal, signal.copy()) is None  # identical: no noise at all


def _real(values: dict[Any, np.ndarray], name: str) -> np.ndarray:
    value, array = next((v, a) for v, a in values.items() if v.name == name)
    dtype = value.type.dtype
    if isinstance(dtype, FixedType):
        return fixed_to_float(array, dtype)
    if isinstance(dtype, QuantType):
        return dequantize_affine(array, dtype, np.float64)
    return np.asarray(array, np.float64)


def _sqnr(ref: np.ndarray, got: np.ndarray) -> float:
    return float(10 * np.log10(np.sum(ref ** 2) / np.sum((ref - got) ** 2)))


@pytest.fixture(scope="module")
def digits() -> tuple[torch.nn.Module, np.ndarray, np.ndarray]:
    x, y = load_digits_data("test")
    return get_model("digits_cnn").eval(), x[:96], y[:96]


@pytest.mark.parametrize("precision", [10, 16])
def test_fpga_sqnr_matches_the_interpreted_fixed_point_module(
        digits: tuple[torch.nn.Module, np.ndarray, np.ndarray], precision: int) -> None:
    model, x, _ = digits
    art = kiln.compile(model, (torch.from_numpy(x[:1]),), target="fpga", precision=precision)
    sqnr = art.report()["numerics"]["per_layer_sqnr_db"]
    want = interpret_all(art.ir, x[:1])
    got = interpret_all(art.artifact.module, x[:1])
    for name in ("conv1", "relu2", "fc"):
        assert sqnr[name] == pytest.approx(_sqnr(_real(want, name), _real(got, name)), abs=1e-2)
    # ~6 dB per bit: 16-bit layers are far cleaner than 10-bit ones
    assert (sqnr["fc"] > 60) if precision == 16 else (15 < sqnr["fc"] < 60)


def test_cpu_int8_sqnr_compares_with_the_float_pipeline(
        digits: tuple[torch.nn.Module, np.ndarray, np.ndarray]) -> None:
    model, x, _ = digits
    art = kiln.compile(model, (torch.from_numpy(x[:1]),), target="cpu", quantize="int8")
    report = art.report()
    sqnr = report["numerics"]["per_layer_sqnr_db"]
    float_ir = kiln.compile(model, (torch.from_numpy(x[:1]),), target="reference",
                            pipeline="canonicalize,fold-batchnorm,fold-constants,cse,fuse,cse,"
                                     "dce").ir
    want, got = interpret_all(float_ir, x[:1]), interpret_all(art.ir, x[:1])
    assert sqnr["fc"] == pytest.approx(_sqnr(_real(want, "fc"), _real(got, "fc")), abs=1e-2)
    assert 15 < sqnr["fc"] < 60  # 8-bit activations
    rows = {r["name"]: r for r in report["per_layer"]}
    assert rows["fc"]["sqnr_db"] == sqnr["fc"] and rows["fc"]["precision"].startswith("q<i8")


def test_accuracy_on_an_eval_set_matches_pytorch(
        digits: tuple[torch.nn.Module, np.ndarray, np.ndarray]) -> None:
    model, x, y = digits
    art = kiln.compile(model, (torch.from_numpy(x[:1]),), target="cpu")
    with torch.no_grad():
        torch_top1 = float((model(torch.from_numpy(x)).argmax(1).numpy() == y).mean())
    accuracy = art.report(eval_data=(x, y))["numerics"]["accuracy"]
    assert accuracy["samples"] == len(y) and accuracy["source_top1"] == torch_top1
    assert abs(accuracy["top1"] - torch_top1) <= 1 / len(y)  # float32 ties at most
    assert accuracy["top1"] > 0.8


def test_regression_targets_report_mse(rng: np.random.Generator) -> None:
    model = torch.nn.Linear(3, 2).eval()
    x = rng.standard_normal((5, 3)).astype(np.float32)
    y = rng.standard_normal((5, 2)).astype(np.float32)
    art = kiln.compile(model, (torch.from_numpy(x[:2]),))  # batch 2: the last chunk is padded
    accuracy = art.report(eval_data=(torch.from_numpy(x), y))["numerics"]["accuracy"]
    with torch.no_grad():
        pred = model(torch.from_numpy(x)).numpy().astype(np.float64)
    assert accuracy["mse"] == pytest.approx(float(np.mean((pred - y) ** 2)), rel=1e-5)


@pytest.mark.parametrize("eval_data", [np.zeros((2, 3)), (np.ones((3, 3)), np.ones(2))])
def test_bad_eval_data_is_a_clear_error(eval_data: Any) -> None:
    art = kiln.compile(torch.nn.Linear(3, 2).eval(), (torch.randn(1, 3),))
    with pytest.raises(KilnError, match="eval_data"):
        art.report(eval_data=eval_data)

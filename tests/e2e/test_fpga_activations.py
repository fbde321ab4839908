"""FPGA activations (`kiln.ir.ops.lut`) in the generated HLS C++, bit for bit.

With the fpga target's default `activations="lut"` softmax, sigmoid, tanh, hardsigmoid and
hardswish are HLS layers: the C-simulation of both architectures (io="parallel" and
io="stream") must equal kiln's interpreter on the fixed-point IR exactly (tolerance 0) on
fresh random samples, the stated table errors must reach the report and the generated code,
and on scikit-learn's digits the lookup-table softmax must classify as well as the float
host tail (within 1 %).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

import kiln
from kiln.compiler.driver import CompiledModel
from kiln.ir.interpret import interpret, sample_inputs
from kiln.models import example_inputs, get_model
from kiln.models.digits import load_digits_data
from kiln.targets.fpga import FpgaArtifact

pytestmark = pytest.mark.skipif(shutil.which("g++") is None, reason="needs g++")


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("kiln-fpga-activations-cache")


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 24), nn.Sigmoid(), nn.Linear(24, 16), nn.Tanh(),
                         nn.Linear(16, 12), nn.Hardswish(), nn.Linear(12, 8), nn.Hardsigmoid(),
                         nn.Linear(8, 5), nn.Softmax(dim=1)).eval()


def _compile(model: nn.Module, x: Any, cache: Path, **options: Any) -> CompiledModel:
    return kiln.compile(model, x, target="fpga", precision=16, cache_dir=str(cache),
                        fit="off", **options)


def _check_bit_exact(art: CompiledModel, seeds: tuple[int, ...]) -> None:
    fpga = art.artifact
    assert isinstance(fpga, FpgaArtifact)
    for seed in seeds:
        xs = sample_inputs(fpga.module.main, seed)
        out, want = art(*xs), interpret(fpga.module, *xs)
        got = out if isinstance(out, (list, tuple)) else [out]
        assert len(got) == len(want)
        for g, w in zip(got, want):
            assert np.array_equal(np.asarray(g).reshape(w.shape), w), seed


@pytest.mark.parametrize("io", ["parallel", "stream"])
def test_every_activation_runs_on_the_fpga_bit_exactly(io: str, cache: Path) -> None:
    x = torch.randn(1, 16)
    art = _compile(_mlp(), (x,), cache, io=io)
    report = art.report()
    assert report["host_tail"] == ["kiln.dequantize"]
    kinds = [row["kind"] for row in report["hls_functions"]]
    assert kinds.count("activation") == 4 and kinds.count("softmax") == 1
    errors = [row["table_error"] for row in report["hls_functions"] if "table_error" in row]
    assert len(errors) == 5
    sigmoid = errors[0]["max_abs_error"]
    assert 0 < sigmoid <= 2.0 ** -8
    assert errors[-1]["exp_table_error"] <= 2.0 ** -8
    weights = next(text for name, text in art.artifact.files.items()  # type: ignore[union-attr]
                   if name.endswith("_weights.h"))
    assert weights.count("max |error| vs float") == 5
    assert "kiln::lut_softmax<" in "".join(art.artifact.files.values()) or io == "stream"
    _check_bit_exact(art, (int(np.random.SeedSequence().entropy % 2 ** 31), 7))


def test_host_mode_keeps_the_float_softmax(cache: Path) -> None:
    art = _compile(get_model("jet_mlp"), example_inputs("jet_mlp"), cache, activations="host")
    assert art.report()["host_tail"] == ["kiln.dequantize", "kiln.softmax"]
    with pytest.raises(kiln.KilnError, match="activations='gpu' is not one of"):
        _compile(get_model("jet_mlp"), example_inputs("jet_mlp"), cache, activations="gpu")


@pytest.mark.parametrize("io", ["parallel", "stream"])
def test_mobilenet_lowers_with_hard_activations(io: str, cache: Path) -> None:
    name = "mobilenet_v2ish"
    art = _compile(get_model(name), example_inputs(name), cache, io=io)
    functions = [row["kind"] for row in art.report()["hls_functions"]]
    assert "activation" in functions and "mul" in functions
    _check_bit_exact(art, (int(np.random.SeedSequence().entropy % 2 ** 31),))


def test_lut_softmax_classifies_digits_like_the_float_tail(cache: Path) -> None:
    model = nn.Sequential(get_model("digits_mlp"), nn.Softmax(dim=1)).eval()
    x_train, _ = load_digits_data("train")
    x_test, y_test = load_digits_data("test")
    calib = [(torch.from_numpy(x_train[i:i + 64]),) for i in range(0, 256, 64)]
    accuracy = {}
    for mode in ("lut", "host"):
        art = _compile(model, (torch.from_numpy(x_test[:1]),), cache, activations=mode,
                       calibration_data=calib)
        probs = np.asarray(art(x_test))
        accuracy[mode] = float((probs.argmax(axis=1) == y_test).mean())
    assert accuracy["host"] > 0.9
    assert abs(accuracy["lut"] - accuracy["host"]) <= 0.01

"""The fpga target's C-simulation against kiln's interpreter, bit for bit.

Each bundled model that fits is compiled at 16 and 8 bits (calibrated on its example inputs);
three fresh random samples run in one C-simulation, and both the output raws and `art(x)` (host
dequantization and float tail included) must equal the interpreter on the fixed-point IR
exactly (tolerance 0). One build cache serves the module.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import kiln
from kiln.compiler.driver import CompiledModel
from kiln.ir.interpret import interpret, interpret_all, sample_inputs
from kiln.models import example_inputs, get_model
from kiln.targets.fpga import FpgaArtifact

pytestmark = pytest.mark.skipif(shutil.which("g++") is None, reason="needs g++")
MODELS = ["jet_mlp", "digits_cnn", "digits_mlp", "lenet5", "conv1d_net", "resnet8"]


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("kiln-fpga-cache")


def _compile(name: str, precision: int, cache: Path, **options: Any) -> CompiledModel:
    return kiln.compile(get_model(name), example_inputs(name), target="fpga",
                        precision=precision, cache_dir=str(cache), **options)


def _fpga(art: CompiledModel) -> FpgaArtifact:
    assert isinstance(art.artifact, FpgaArtifact)
    return art.artifact


@pytest.mark.parametrize("precision", [16, 8])
@pytest.mark.parametrize("name", MODELS)
def test_csim_is_bit_exact(name: str, precision: int, cache: Path) -> None:
    art = _compile(name, precision, cache)
    fpga = _fpga(art)
    fixed = fpga.module
    samples = [sample_inputs(fixed.main, seed) for seed in (101, 202, 303)]
    batch = [np.concatenate(xs, axis=0) for xs in zip(*samples)]
    raws = fpga.run_raw(*batch)
    got = art(*batch)
    got = list(got) if isinstance(got, tuple) else [got]
    for i, xs in enumerate(samples):
        values = interpret_all(fixed, *xs)
        want_raw = np.concatenate([values[v].reshape(-1)
                                   for v in fpga.lowered.output_values])
        np.testing.assert_array_equal(raws[i], want_raw)
        for g, w in zip(got, interpret(fixed, *xs)):
            np.testing.assert_array_equal(g[i:i + 1], w)


def test_report_lists_layer_precisions(cache: Path) -> None:
    report = _compile("jet_mlp", 16, cache).report()
    kinds = [row["kind"] for row in report["hls_functions"]]
    assert kinds.count("dense") == 4 and kinds.count("requantize") == 4
    assert all(row["type"].startswith("fixed<") for row in report["hls_functions"])
    precisions = {row["name"]: row["precision"] for row in report["layers"]}
    assert all(precisions[f"fc{i}"].startswith("fixed<16,") for i in range(1, 5))
    for key in ("latency_cycles", "ii", "dsp", "bram", "lut", "ff"):
        assert isinstance(report[key], int), key
    assert report["host_tail"] == ["kiln.dequantize"]  # activations="lut": softmax on the FPGA
    assert kinds.count("softmax") == 1


def test_zero_weights_emit_no_multiplier(cache: Path) -> None:
    model = get_model("jet_mlp")
    fc2_torch = model.get_submodule("fc2")
    with torch.no_grad():
        fc2_torch.get_parameter("weight")[:, ::2] = 0.0  # prune half of fc2
    art = kiln.compile(model, example_inputs("jet_mlp"), target="fpga", cache_dir=str(cache))
    fpga = _fpga(art)
    fc2 = next(layer for layer in fpga.lowered.layers if layer.source == "(fc2)"
               and layer.kind == "dense")
    assert fc2.weight is not None
    assert fc2.nonzero_weights == int(np.count_nonzero(fc2.weight)) <= 32 * 32
    assert f"kiln::dense<64, 32, {fc2.nonzero_weights}," in \
        art.files["firmware/jetmlp.cpp"]
    x = sample_inputs(fpga.module.main, 5)
    np.testing.assert_array_equal(art(*x), interpret(fpga.module, *x)[0])


def test_saved_project_runs_its_csim(cache: Path, tmp_path: Path) -> None:
    art = _compile("digits_cnn", 16, cache)
    out = art.save(tmp_path / "prj")
    for name in ("firmware/digitscnn.cpp", "firmware/kiln_fixed.h", "tb_digitscnn.cpp",
                 "Makefile", "run_hls.tcl", "hls_config.cfg", "README.md",
                 "tb_data/tb_input_features.dat", "tb_data/tb_output_predictions.dat"):
        assert (out / name).is_file(), name
    result = subprocess.run(["make", "-s", "csim"], cwd=out, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 mismatching raws" in result.stdout


def test_digits_cnn_accuracy_within_half_a_point(cache: Path) -> None:
    pytest.importorskip("sklearn")
    from kiln.models.digits import load_digits_data

    x_train, _ = load_digits_data("train")
    x_test, y_test = load_digits_data("test")
    x_test, y_test = x_test[:100], y_test[:100]
    model = get_model("digits_cnn")
    calib = [x_train[i:i + 1] for i in range(0, 256, 4)]
    art = kiln.compile(model, x_test[:1], target="fpga", precision=16,
                       calibration_data=calib, cache_dir=str(cache))
    with torch.no_grad():
        fp32 = model(torch.from_numpy(x_test)).numpy().argmax(1)
    csim = np.asarray(art(x_test)).argmax(1)  # 100 images in one C-simulation run
    acc_fp32 = float((fp32 == y_test).mean()) * 100
    acc_csim = float((csim == y_test).mean()) * 100
    assert abs(acc_csim - acc_fp32) <= 0.5, (acc_csim, acc_fp32)

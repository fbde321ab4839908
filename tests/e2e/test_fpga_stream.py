"""The fpga target's io_stream architecture on the bundled models, bit for bit.

Each bundled model that the HLS lowering supports is compiled with `io="stream"` (calibrated
fixed<16,I>, a reuse factor per model); three fresh random samples run in one C-simulation of
the dataflow design, and its output raws and `art(x)` (host dequantization and float tail
included) must equal kiln's interpreter on the fixed-point IR exactly (tolerance 0). Two
models are also built with io="parallel": the two architectures give the same bits and write
the same Vitis scripts. resnet8 also runs as a concurrent dataflow (a thread per stage, FIFOs
bounded at the depths the stream estimator sized): it must not deadlock. (mobilenet_v2ish,
with its hardswish / hardsigmoid / squeeze-excitation layers, is checked in both architectures
by tests/e2e/test_fpga_activations.py; refusals are tested in tests/unit/test_hls_stream.py.)
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import kiln
from kiln.compiler.driver import CompiledModel
from kiln.ir.interpret import interpret, interpret_all, sample_inputs
from kiln.models import example_inputs, get_model
from kiln.targets.fpga import FpgaArtifact

pytestmark = pytest.mark.skipif(shutil.which("g++") is None, reason="needs g++")
MODELS = {"jet_mlp": 1, "digits_mlp": 4, "lenet5": 8, "digits_cnn": 4, "conv1d_net": 2,
          "resnet8": 16}
KEYS = ("latency_cycles", "ii", "dsp", "bram", "lut", "ff")


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("kiln-fpga-stream-cache")


@pytest.fixture(scope="module")
def stream_models(cache: Path) -> dict[str, CompiledModel]:
    return {name: _compile(name, cache, io="stream", reuse_factor=rf)
            for name, rf in MODELS.items()}


def _compile(name: str, cache: Path, **options: Any) -> CompiledModel:
    return kiln.compile(get_model(name), example_inputs(name), target="fpga", precision=16,
                        cache_dir=str(cache), fit="off", **options)


def _fpga(art: CompiledModel) -> FpgaArtifact:
    assert isinstance(art.artifact, FpgaArtifact)
    return art.artifact


def _samples(fpga: FpgaArtifact, seeds: tuple[int, ...]) -> tuple[list[list[np.ndarray]],
                                                                   list[np.ndarray]]:
    samples = [sample_inputs(fpga.module.main, seed) for seed in seeds]
    return samples, [np.concatenate(xs, axis=0) for xs in zip(*samples)]


@pytest.mark.parametrize("name", list(MODELS))
def test_stream_csim_is_bit_exact(name: str, stream_models: dict[str, CompiledModel]) -> None:
    art = stream_models[name]
    fpga = _fpga(art)
    assert fpga.options.io == "stream" and "#pragma HLS DATAFLOW" in \
        next(v for k, v in art.files.items() if k.startswith("firmware/") and
             k.endswith(".cpp"))
    samples, batch = _samples(fpga, (401, 502, 603))
    raws = fpga.run_raw(*batch)
    got = art(*batch)
    got = list(got) if isinstance(got, tuple) else [got]
    for i, xs in enumerate(samples):
        values = interpret_all(fpga.module, *xs)
        want = np.concatenate([values[v].reshape(-1) for v in fpga.lowered.output_values])
        np.testing.assert_array_equal(raws[i], want)
        for g, w in zip(got, interpret(fpga.module, *xs)):
            np.testing.assert_array_equal(g[i:i + 1], w)


@pytest.mark.parametrize("name", ["digits_cnn"])
def test_stream_and_parallel_give_the_same_bits(name: str, cache: Path,
                                                stream_models: dict[str, CompiledModel]
                                                ) -> None:
    stream = stream_models[name]
    parallel = _compile(name, cache, io="parallel", reuse_factor=MODELS[name])
    _, batch = _samples(_fpga(stream), (7, 8, 9, 10))
    np.testing.assert_array_equal(_fpga(stream).run_raw(*batch),
                                  _fpga(parallel).run_raw(*batch))
    for script in ("run_hls.tcl", "hls_config.cfg", "Makefile"):
        assert stream.files[script] == parallel.files[script], script


def test_stream_report_has_stages_and_fifos(stream_models: dict[str, CompiledModel]) -> None:
    report = stream_models["resnet8"].report()
    assert report["io"] == "stream"
    for key in KEYS:
        assert isinstance(report[key], int), key
        for row in report["layers"]:
            assert isinstance(row[key], int), (key, row["name"])
    ops = [row["op"] for row in report["layers"]]
    assert ops.count("conv2d") == 9 and ops.count("add") == 3 and ops.count("fork") == 3
    fifos = report["fifos"]
    assert {"name", "from", "to", "depth", "width_bits", "bram", "lutram"} <= set(fifos[0])
    assert all(row["depth"] >= 2 for row in fifos)
    assert report["bram"] == sum(r["bram"] for r in report["layers"]) + \
        sum(r["bram"] for r in fifos)
    assert report["lut"] == sum(r["lut"] for r in report["layers"]) + \
        sum(r["lutram"] for r in fifos)
    assert report["ii"] == max(row["ii"] for row in report["layers"])
    conv = next(r for r in report["layers"] if r["name"] == "stage1.conv1")
    assert conv["reuse_factor"] == 16 and conv["ii"] == 32 * 32 * 16
    assert report["precision"] == 16 and report["hls_functions"]


def test_resnet8_runs_as_concurrent_dataflow(stream_models: dict[str, CompiledModel],
                                             tmp_path: Path) -> None:
    """One thread per stage, FIFOs blocking at the sized depths (`kiln_dataflow.h`): the
    residual network finishes (no deadlock) with the interpreter's bits."""
    art = stream_models["resnet8"]
    fpga = _fpga(art)
    for rel, text in art.files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    tb = next(k for k in art.files if k.startswith("tb_"))
    top = next(k for k in art.files if k.startswith("firmware/") and k.endswith(".cpp"))
    subprocess.run(["g++", "-std=c++14", "-O1", "-w", "-DKILN_DATAFLOW_THREADS", "-pthread",
                    "-Ifirmware", "-o", "threaded", tb, top], cwd=tmp_path, check=True,
                   capture_output=True)
    samples, batch = _samples(fpga, (71, 72))
    np.savetxt(tmp_path / "in.dat", fpga.raws_in(batch), fmt="%d")
    run = subprocess.run(["./threaded", "in.dat", "out.dat"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    got = np.loadtxt(tmp_path / "out.dat", dtype=np.int64, ndmin=2)
    for i, xs in enumerate(samples):
        values = interpret_all(fpga.module, *xs)
        want = np.concatenate([values[v].reshape(-1) for v in fpga.lowered.output_values])
        np.testing.assert_array_equal(got[i], want)


def test_saved_stream_project_runs_its_csim(stream_models: dict[str, CompiledModel],
                                            tmp_path: Path) -> None:
    out = stream_models["digits_mlp"].save(tmp_path / "prj")
    name = next(p.stem for p in (out / "firmware").glob("*_weights.h")).removesuffix("_weights")
    for rel in (f"firmware/{name}.cpp", "firmware/kiln_stream_layers.h",
                "firmware/kiln_stream.h", f"tb_{name}.cpp", "Makefile", "run_hls.tcl",
                "README.md", "tb_data/tb_input_features.dat"):
        assert (out / rel).is_file(), rel
    assert "io_stream" in (out / "README.md").read_text()
    result = subprocess.run(["make", "-s", "csim"], cwd=out, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 mismatching raws" in result.stdout


"""The `kiln` command line end to end: compile → run → report → bench on cpu and fpga, explain,
--prune / --plugin, and what bad input does (exit codes, messages, never a traceback).

Numerics: `kiln run` on a fresh random input is compared with `kiln.interpret` on the saved IR
(cpu: relative error ≤ 1e-5, float32 kernels vs the float64-rounded reference; fpga: bit-exact
against the saved fixed-point module, the C-simulation's contract) and with PyTorch (cpu ≤ 1e-5,
fpga ≤ 2e-2 relative: 16-bit fixed point).
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch

import kiln
from kiln.models import get_model
from kiln.tools.cli import main

MODEL = "jet_mlp"


def rel_error(got: np.ndarray, want: np.ndarray) -> float:
    want64 = np.asarray(want, dtype=np.float64)
    diff = np.max(np.abs(np.asarray(got, dtype=np.float64) - want64))
    return float(diff / max(float(np.max(np.abs(want64))), 1e-12))


def quiet_main(argv: list[str]) -> int:
    """`main` with its stdout swallowed (for module-scoped fixtures, which have no capsys)."""
    with contextlib.redirect_stdout(io.StringIO()):
        return main(argv)


@pytest.fixture(scope="module", params=["cpu", "fpga"])
def artifact(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp(f"cli_{request.param}") / "art"
    assert quiet_main(["compile", MODEL, "--target", request.param, "-o", str(out), "-q"]) == 0
    return out


def test_compile_writes_the_folder(artifact: Path) -> None:
    manifest = json.loads((artifact / "artifact.json").read_text())
    assert manifest["source"] == {"kind": "bundled", "model": MODEL, "input_shapes": None}
    assert manifest["inputs"] == [{"name": "x", "shape": [1, 16], "dtype": "float32"}]
    assert manifest["outputs"][0]["shape"] == [1, 5]
    for name in ("model.kir", "model.npz", "inputs.npz", "report.json", "report.html"):
        assert (artifact / name).is_file(), name
    assert manifest["target"] in {"cpu", "fpga"}
    generated = "model.c" if manifest["target"] == "cpu" else "firmware"
    assert (artifact / generated).exists()


def test_run_matches_interpreter_and_pytorch(artifact: Path, tmp_path: Path,
                                             rng: np.random.Generator,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    x = rng.standard_normal((1, 16)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    out = tmp_path / "y.npy"
    assert main(["run", str(artifact), "--input", str(tmp_path / "x.npy"), "-o", str(out)]) == 0
    got = np.load(out)
    target = json.loads((artifact / "artifact.json").read_text())["target"]
    if target == "fpga":  # bit-exact with the interpreter on the fixed-point module
        want = kiln.interpret(kiln.load(artifact / "build.kir"), x)[0]
        np.testing.assert_array_equal(got, want)
    else:
        want = kiln.interpret(kiln.load(artifact / "model.kir"), x)[0]
        assert rel_error(got, want) <= 1e-5
    with torch.no_grad():
        reference = get_model(MODEL)(torch.from_numpy(x)).numpy()
    assert rel_error(got, reference) <= (1e-5 if target == "cpu" else 2e-2)
    capsys.readouterr()
    assert main(["run", str(artifact), "--input", str(tmp_path / "x.npy"), "--json"]) == 0
    document = json.loads(capsys.readouterr().out)
    np.testing.assert_array_equal(np.asarray(document["outputs"][0]["values"], np.float32), got)


def test_report_text_json_html(artifact: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = json.loads((artifact / "artifact.json").read_text())["target"]
    assert main(["report", str(artifact)]) == 0
    assert target in capsys.readouterr().out
    assert main(["report", str(artifact), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["target"] == target
    (artifact / "report.html").unlink()
    assert main(["report", str(artifact), "--html"]) == 0
    path = Path(capsys.readouterr().out.strip())
    assert path == artifact / "report.html" and "<html" in path.read_text().lower()


def test_bench_json(artifact: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", str(artifact), "--runs", "3", "--warmup", "1", "--json"]) == 0
    document = json.loads(capsys.readouterr().out)
    engines = [row["engine"] for row in document["results"]]
    assert engines == [f"kiln {document['target']}", "pytorch"]  # bundled: PyTorch re-created
    for row in document["results"]:
        assert 0 < row["min_ms"] <= row["median_ms"] <= row["p90_ms"]
    assert main(["bench", str(artifact), "--runs", "2", "--warmup", "0"]) == 0
    assert "median" in capsys.readouterr().out


ODDNET = '''
import torch
from torch import nn
import torch.nn.functional as F


class OddNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(16, 32)
        self.norm = nn.LayerNorm(32)
        self.fc2 = nn.Linear(32, 8)

    def forward(self, x):
        h = F.gelu(self.fc1(x))
        h = self.norm(h)
        return F.softmax(self.fc2(h), dim=-1)


def make():
    torch.manual_seed(0)
    return OddNet().eval()
'''


@pytest.fixture
def oddnet(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    (tmp_path / "cli_oddnet.py").write_text(ODDNET)
    monkeypatch.syspath_prepend(str(tmp_path))
    return "cli_oddnet:make"


def test_explain_lists_every_unsupported_op(oddnet: str,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["explain", oddnet, "--input-shape", "1x16", "--target", "fpga"]
    assert main(argv) == 1
    text = capsys.readouterr().out
    assert "2 problem(s)" in text
    for op, where in (("kiln.gelu", "cli_oddnet.py:15"), ("kiln.layer_norm",
                                                         "cli_oddnet.py:16 (norm)")):
        assert f"{where}: error: '{op}' op has no HLS implementation" in text
    assert main([*argv, "--json"]) == 1
    document = json.loads(capsys.readouterr().out)
    bad = {row["op"]: row["source"] for row in document["ops"] if row["status"] == "unsupported"}
    assert bad == {"kiln.gelu": "cli_oddnet.py:15", "kiln.layer_norm": "cli_oddnet.py:16 (norm)"}
    assert document["unsupported"] == 2 and document["ok"] is False
    fc1 = next(row for row in document["ops"] if row["result"] == "%fc1")
    assert fc1["status"] == "supported" and fc1["detail"] == "HLS layer: dense"


def test_explain_cpu_fuses(oddnet: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["explain", oddnet, "--input-shape", "1x16", "-t", "cpu", "--json"]) == 0
    document = json.loads(capsys.readouterr().out)
    status = {row["op"]: row["status"] for row in document["ops"]}
    assert status["kiln.gelu"] == "fused" and status["kiln.layer_norm"] == "supported"
    assert document["ok"] is True and document["unsupported"] == 0


PLUGIN = '''
from kiln.passes.registry import register_pass


@register_pass("cli-test-count")
def cli_test_count(module, ctx):
    """Count the ops (a plugin pass for the CLI test); changes nothing."""
    ctx.count("ops", sum(1 for _ in module.walk()))
    return False
'''


def test_prune_and_plugin(tmp_path: Path, rng: np.random.Generator,
                          capsys: pytest.CaptureFixture[str]) -> None:
    from kiln.passes.registry import lookup_pass, unregister_pass

    (tmp_path / "plugin.py").write_text(PLUGIN)
    out = tmp_path / "pruned"
    argv = ["compile", MODEL, "-t", "cpu", "--prune", "magnitude:0.5", "--plugin",
            str(tmp_path / "plugin.py"), "--pipeline", "cpu,cli-test-count", "-o", str(out),
            "--json"]
    try:
        assert main(argv) == 0
    finally:
        if lookup_pass("cli-test-count") is not None:
            unregister_pass("cli-test-count")
    summary = json.loads(capsys.readouterr().out)
    assert summary["pipeline"] == ("canonicalize,fold-batchnorm,prune{method=magnitude,"
                                   "sparsity=0.5},cpu,cli-test-count")
    module = kiln.load(out / "model.kir")
    for name in ("fc1.weight", "fc2.weight", "fc3.weight", "fc4.weight"):
        weight = module.weights[name]
        assert np.count_nonzero(weight == 0) >= weight.size // 2, name
    x = rng.standard_normal((1, 16)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    assert main(["run", str(out), "-i", str(tmp_path / "x.npy"), "-o", str(tmp_path / "y.npz"),
                 "-q"]) == 0
    got = np.load(tmp_path / "y.npz")["softmax"]
    assert rel_error(got, kiln.interpret(module, x)[0]) <= 1e-5


@pytest.mark.parametrize(("spec", "step"), [
    ("0.25", "prune{method=magnitude,sparsity=0.25}"),
    ("l1-channel:0.5", "prune{method=l1-channel,sparsity=0.5}"),
    ("nm:2:4", "sparsify{format=nm,n=2,m=4,enforce=true}"),
    ("block:4x4:0.5", "sparsify{format=block,block=4x4,min-sparsity=0.5,enforce=true}"),
])
def test_prune_specs(spec: str, step: str) -> None:
    from kiln.tools.cli_model import parse_prune
    assert parse_prune(spec) == step


LRNNET = '''
import torch
from torch import nn


class LrnNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.lrn = nn.LocalResponseNorm(3)

    def forward(self, x):
        return self.lrn(torch.relu(self.conv(x)))


def make():
    return LrnNet().eval()
'''


def test_explain_gpu_decomposes_what_it_lacks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "cli_lrnnet.py").write_text(LRNNET)
    monkeypatch.syspath_prepend(str(tmp_path))
    argv = ["explain", "cli_lrnnet:make", "--input-shape", "1x3x6x6", "-t", "gpu", "--json"]
    assert main(argv) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["decompose"] == ["local_response_norm"]
    assert document["pipeline"].startswith("decompose{ops=local_response_norm},")
    row = next(r for r in document["ops"] if r["op"] == "kiln.local_response_norm")
    assert row["status"] == "decomposed" and "kiln.avg_pool2d" in row["detail"]
    assert row["source"] == "cli_lrnnet.py:13 (lrn)"
    assert main([*argv[:-1], "--pipeline", "gpu"]) == 1  # as is, the gpu target refuses it
    text = capsys.readouterr().out
    assert "UNSUPPORTED" in text and "no Triton lowering" in text


def test_int8_compile_matches_interpreter(tmp_path: Path, rng: np.random.Generator) -> None:
    out = tmp_path / "q"
    assert quiet_main(["compile", MODEL, "-t", "cpu", "--quantize", "int8", "-o", str(out),
                       "-q"]) == 0
    assert "kiln.qlinear" in (out / "model.kir").read_text()
    x = rng.standard_normal((1, 16)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    assert main(["run", str(out), "-i", str(tmp_path / "x.npy"), "-o", str(tmp_path / "y.npy"),
                 "-q"]) == 0
    want = kiln.interpret(kiln.load(out / "model.kir"), x)[0]
    # int8 layers are exact; the float softmax after the final dequantize rounds differently
    # in C (float32) and in the reference (float64, rounded once): a few ulps
    assert rel_error(np.load(tmp_path / "y.npy"), want) <= 1e-6


def test_onnx_with_pinned_shape(tmp_path: Path, rng: np.random.Generator,
                                capsys: pytest.CaptureFixture[str]) -> None:
    from kiln.models import example_inputs

    kiln.export_onnx(kiln.trace(get_model(MODEL), example_inputs(MODEL)), tmp_path / "m.onnx")
    out = tmp_path / "o"
    assert main(["compile", str(tmp_path / "m.onnx"), "-t", "reference", "--input-shape",
                 "1x16", "-o", str(out), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert "artifact.json" in summary["files"]
    x = rng.standard_normal((1, 16)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    assert main(["run", str(out), "-i", str(tmp_path / "x.npy"), "--json"]) == 0
    got = np.asarray(json.loads(capsys.readouterr().out)["outputs"][0]["values"], np.float32)
    with torch.no_grad():
        reference = get_model(MODEL)(torch.from_numpy(x)).numpy()
    assert rel_error(got, reference) <= 1e-5
    assert main(["compile", str(tmp_path / "m.onnx"), "-t", "cpu", "--input-shape", "1x16",
                 "--input-shape", "1x4", "-o", str(out)]) == 1
    assert "has 1 input(s)" in capsys.readouterr().err

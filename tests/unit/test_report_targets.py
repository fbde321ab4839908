"""`art.report()` on every target: the unified schema validates, survives JSON, keeps the
schema-0 keys callers rely on, and labels every latency as measured or estimated."""

from __future__ import annotations

import hashlib
import importlib.util
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import kiln
from kiln.compiler.driver import CompiledModel
from kiln.report import load_report, problems_of, render_text, save_report, validate_report


class Tiny(torch.nn.Module):
    """conv → relu → pool → linear: small enough for every target (and Triton's interpreter)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 4, 3, padding=1)
        self.relu = torch.nn.ReLU()
        self.pool = torch.nn.MaxPool2d(2)
        self.fc = torch.nn.Linear(4 * 2 * 2, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.relu(self.conv(x))), 1))


Built = dict[str, CompiledModel]
Reports = dict[str, dict[str, Any]]
HAS_TVM = importlib.util.find_spec("tvm") is not None
TARGETS = ("reference", "cpu", "gpu", "fpga", "asic", *(("tvm",) if HAS_TVM else ()))


@pytest.fixture(scope="module")
def built() -> dict[str, CompiledModel]:
    torch.manual_seed(3)
    model = Tiny().eval()
    x = (torch.randn(1, 1, 4, 4),)
    return {t: kiln.compile(model, x, target=t) for t in TARGETS}


@pytest.fixture(scope="module")
def reports(built: Built) -> dict[str, dict[str, Any]]:
    return {t: art.report() for t, art in built.items()}


@pytest.mark.parametrize("target", TARGETS)
def test_report_validates_and_round_trips_json(built: Built,
                                               target: str) -> None:
    art = built[target]
    report = art.report()
    assert problems_of(report) == []
    again = json.loads(json.dumps(report, allow_nan=False))
    assert validate_report(again) == report
    assert report["target"] == target and report["model"]["name"] == "Tiny"
    assert report["max_rel_error_vs_source"] == report["numerics"]["max_rel_error"]
    assert report["numerics"]["reference"] == "pytorch"
    ops = [row["ops"] for row in report["per_layer"]]
    assert any("kiln.conv2d" in o for o in ops) and any("kiln.linear" in o for o in ops)
    assert report["totals"]["flops"] == sum(r["flops"] for r in report["per_layer"]) > 0
    assert [p["step"] for p in report["passes"]] == [
        str(s) for s in kiln.compiler.pipeline.parse_pipeline(art.pipeline)]


@pytest.mark.parametrize("target", TARGETS)
def test_output_error_is_measured_against_pytorch(built: Built, reports: Reports,
                                                  target: str) -> None:
    art = built[target]
    got = art.artifact.run(*[x.numpy() for x in art.example_inputs])[0].astype(np.float64)
    assert art.source_outputs is not None
    want = art.source_outputs[0].astype(np.float64)
    numerics = reports[target]["numerics"]
    assert numerics["max_abs_error"] == pytest.approx(float(np.max(np.abs(got - want))))
    bound = 5e-2 if target in ("fpga", "asic") else 1e-5  # 16-bit fixed point vs float
    assert numerics["max_rel_error"] <= bound


@pytest.mark.parametrize("target", TARGETS)
def test_manifest_hashes_the_ir_and_every_file(built: Built, reports: Reports,
                                               target: str) -> None:
    art = built[target]
    manifest = reports[target]["manifest"]
    sha = hashlib.sha256(art.ir.to_text().encode()).hexdigest()
    assert manifest["ir_sha256"] == sha
    assert set(manifest["files"]) == set(art.files)
    for name, text in art.files.items():
        assert manifest["files"][name] == hashlib.sha256(text.encode()).hexdigest()


def test_latency_labels_per_target(reports: Reports) -> None:
    cpu = reports["cpu"]
    assert cpu["totals"]["latency"]["source"] == "measured"
    assert cpu["totals"]["latency"]["value"] > 0
    assert {r["latency"]["source"] for r in cpu["per_layer"]} == {"estimated"}
    fpga = reports["fpga"]
    assert fpga["totals"]["latency"]["source"] == "estimated"
    assert fpga["totals"]["latency"]["value"] == pytest.approx(fpga["latency_ns"] / 1e3)
    conv = next(r for r in fpga["per_layer"] if r["op"] == "kiln.conv2d")
    assert conv["latency"]["source"] == "estimated" and conv["latency_cycles"] > 0
    assert conv["latency"]["value"] == pytest.approx(conv["latency_cycles"] / 200.0)
    gpu = reports["gpu"]  # Triton's interpreter: no GPU time to measure
    assert gpu["totals"]["latency"]["source"] == "unavailable"


def test_schema0_keys_stay_at_the_top_level(reports: Reports) -> None:
    fpga = reports["fpga"]
    for key in ("latency_cycles", "ii", "dsp", "bram", "lut", "ff", "layers", "ops",
                "fused_groups", "op_counts", "parameters", "weight_bytes", "compile_seconds"):
        assert key in fpga, key
    assert fpga["totals"]["dsp"] == fpga["dsp"] == sum(r["dsp"] for r in fpga["layers"])
    asic = reports["asic"]
    assert asic["area_um2"] > 0 and asic["energy_pj"] > 0
    assert asic["totals"]["area_um2"] == asic["area_um2"]
    assert reports["cpu"]["arena_bytes"] > 0
    assert reports["gpu"]["kernels"] >= 1


def test_fixed_point_targets_report_per_layer_types_and_sqnr(reports: Reports) -> None:
    for target in ("fpga", "asic"):
        report = reports[target]
        conv = next(r for r in report["per_layer"] if r["op"] == "kiln.conv2d")
        assert conv["dtype"].startswith("fixed<") and conv["precision"] == conv["dtype"]
        sqnr = report["numerics"]["per_layer_sqnr_db"]
        assert conv["sqnr_db"] == sqnr[conv["name"]] and 30 < conv["sqnr_db"] < 200
    assert reports["cpu"]["numerics"]["per_layer_sqnr_db"] == {}


def test_environment_names_versions_and_compilers(reports: Reports) -> None:
    env = reports["cpu"]["environment"]
    assert env["kiln"] == kiln.__version__ and env["torch"] == torch.__version__
    assert env["numpy"] == np.__version__
    assert "gcc" in env["compilers"]["cc"] and "-O3" in env["flags"]["cc"]
    fpga_env = reports["fpga"]["environment"]
    assert "cxx" in fpga_env["compilers"] and fpga_env["flags"]["cxx"]


@pytest.mark.skipif(not HAS_TVM, reason="target tvm needs Apache TVM: pip install 'kiln[tvm]'")
def test_tvm_report_measures_latency_and_names_its_toolchain(reports: Reports) -> None:
    report = reports["tvm"]
    assert report["totals"]["latency"]["source"] == "measured"
    assert "TVM" in report["totals"]["latency"]["method"]
    assert report["environment"]["compilers"]["tvm"] == report["tvm_version"]
    assert {r["latency"]["source"] for r in report["per_layer"]} == {"estimated"}


def test_save_load_and_text(built: Built, tmp_path: Path) -> None:
    art = built["fpga"]
    save_report(art, tmp_path)
    loaded = load_report(tmp_path)
    assert loaded["per_layer"] == json.loads(json.dumps(art.report()["per_layer"]))
    assert (tmp_path / "report.html").read_text().startswith("<!DOCTYPE html>")
    text = render_text(loaded)
    assert "target fpga" in text and "DSP" in text
    for row in loaded["per_layer"]:
        assert row["name"] in text

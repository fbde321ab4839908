"""`kiln.compile`: frontend dispatch, target options, reports, save."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import kiln
from kiln.errors import KilnError
from kiln.models import example_inputs, get_model


@pytest.fixture(scope="module")
def mlp() -> torch.nn.Module:
    return get_model("jet_mlp")


def test_compile_torch_model_reports_accuracy(mlp: torch.nn.Module) -> None:
    x = example_inputs("jet_mlp", batch=2, seed=11)
    art = kiln.compile(mlp, x)
    report = art.report()
    assert report["target"] == "reference" and report["max_rel_error_vs_source"] <= 1e-5
    assert report["parameters"] == sum(p.numel() for p in mlp.parameters())
    out = art(*x)
    assert isinstance(out, torch.Tensor)
    np.testing.assert_allclose(out.numpy(), mlp(*x).detach().numpy(), rtol=1e-5, atol=1e-7)
    assert isinstance(art(x[0].numpy()), np.ndarray)


def test_compile_accepts_module_kir_and_onnx(mlp: torch.nn.Module, tmp_path: Path) -> None:
    x = example_inputs("jet_mlp", seed=5)
    module = kiln.trace(mlp, x)
    module.save(tmp_path / "mlp.kir")
    kiln.export_onnx(module, tmp_path / "mlp.onnx")
    want = mlp(*x).detach().numpy()
    for source in (module, tmp_path / "mlp.kir", str(tmp_path / "mlp.onnx")):
        got = kiln.compile(source)(x[0].numpy())
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)


def test_compile_errors_are_clear(mlp: torch.nn.Module, tmp_path: Path) -> None:
    with pytest.raises(KilnError, match=r"(?s)unknown target .tpu.*available targets: .*reference"):
        kiln.compile(mlp, example_inputs("jet_mlp"), target="tpu")
    with pytest.raises(KilnError, match="target 'reference' has no option reuse_factor"):
        kiln.compile(mlp, example_inputs("jet_mlp"), reuse_factor=4)
    with pytest.raises(KilnError, match="needs example_inputs"):
        kiln.compile(mlp)
    with pytest.raises(KilnError, match="cannot tell what model"):
        kiln.compile(tmp_path / "model.bin")


def test_save_writes_ir_files_and_report(mlp: torch.nn.Module, tmp_path: Path) -> None:
    art = kiln.compile(mlp, example_inputs("jet_mlp"))
    art.save(tmp_path / "out")
    assert (tmp_path / "out" / "model.kir").exists() and (tmp_path / "out" / "model.npz").exists()
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["ops"] == art.report()["ops"]
    assert kiln.load(tmp_path / "out" / "model.kir") == art.ir


def test_cpu_then_gpu_in_one_process() -> None:
    """Tracing imports Triton through torch; a later gpu compile must still find the interpreter
    on a machine without CUDA (a fresh process, since this one may have imported Triton)."""
    import subprocess
    import sys

    code = ("import kiln; from kiln.models import get_model, example_inputs; "
            "m = get_model('digits_mlp'); x = example_inputs('digits_mlp'); "
            "kiln.trace(m, x); art = kiln.compile(m, x, target='gpu'); "
            "assert art.report()['max_rel_error_vs_source'] < 1e-4")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-2000:]

"""Every bundled model compiled for the gpu target and run, compared with PyTorch.

Without a CUDA device the kernels run in Triton's interpreter on CPU tensors (the report says
so); with one they run natively. Tolerances (max|a-b| / max|b|): fp32 1e-4, fp16 1e-2. Each
model is compiled once per dtype (module-scoped fixture) and checked on fresh inputs (another
seed than the example inputs it was compiled with).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import kiln
import kiln.targets.gpu
from kiln.models import MODELS, get_model, list_models
from kiln.targets.gpu_runtime import INTERPRETER
from tests.conftest import rel_error

TOLERANCE = {"fp32": 1e-4, "fp16": 1e-2}
CASES = [(name, dtype, 1) for name in list_models() for dtype in ("fp32", "fp16")]
CASES += [("lenet5", "fp32", 3), ("conv1d_net", "fp16", 2)]


@pytest.fixture(scope="module", params=CASES, ids=lambda c: f"{c[0]}-{c[1]}-b{c[2]}")
def compiled(request: pytest.FixtureRequest) -> tuple[Any, Any, Any]:
    name, dtype, batch = request.param
    model = get_model(name)
    example = MODELS[name].example_inputs(batch=batch, seed=0)
    return request.param, model, kiln.compile(model, example, target="gpu", dtype=dtype)


def test_matches_pytorch(compiled: tuple[Any, Any, Any]) -> None:
    (name, dtype, batch), model, art = compiled
    inputs = MODELS[name].example_inputs(batch=batch, seed=7)
    with torch.no_grad():
        want = model(*inputs)
    got = art(*inputs)
    assert isinstance(got, torch.Tensor) and got.dtype == want.dtype
    error = rel_error(got.numpy(), want.numpy())
    assert error <= TOLERANCE[dtype], f"{name} {dtype}: rel error {error:.3g}"


def test_report_and_files(compiled: tuple[Any, Any, Any]) -> None:
    (_, dtype, _), _, art = compiled
    report = art.report()
    assert report["target"] == "gpu" and report["dtype"] == dtype
    assert report["max_rel_error_vs_source"] <= TOLERANCE[dtype]
    if not torch.cuda.is_available():
        assert report["runtime"] == INTERPRETER
    assert report["kernels"] >= 1
    assert set(art.files) == {"kernels.py", "launcher.py"}
    assert art.files["kernels.py"].count("@triton.jit") == report["kernels"]
    assert "class Launcher" in art.files["launcher.py"]


def test_fused_groups_are_single_kernels() -> None:
    """resnet8: every fused group is one kernel whose comment names the pattern and ops."""
    model = get_model("resnet8")
    art = kiln.compile(model, MODELS["resnet8"].example_inputs(), target="gpu")
    source = art.files["kernels.py"]
    assert "# fused epilogue conv2d+add+relu" in source
    assert "conv2d stage1.conv2 at" in source
    fused = art.report()["fused_groups"]
    launches = art.files["launcher.py"].count("k.k_")
    assert launches == art.report()["kernels"] and fused < launches
    assert art.report()["arena_bytes"] < art.report()["arena_bytes_without_reuse"]
    assert np.isfinite(art(*MODELS["resnet8"].example_inputs(seed=3)).numpy()).all()


def test_export_runs_without_kiln(tmp_path: Path) -> None:
    """`export` writes kernels, launcher, parameters and a loader that need only torch+triton."""
    model = get_model("jet_mlp")
    x = MODELS["jet_mlp"].example_inputs(seed=5)
    art = kiln.compile(model, x, target="gpu")
    out = art.export(tmp_path)
    assert {p.name for p in out.iterdir()} >= {"kernels.py", "launcher.py", "params.npz",
                                               "load.py"}
    np.save(tmp_path / "x.npy", x[0].numpy())
    script = ("import numpy as np, torch, load\n"
              "device = 'cuda' if torch.cuda.is_available() else 'cpu'\n"
              "m = load.load(device)\n"
              "y = m(torch.from_numpy(np.load('x.npy')).to(device))[0]\n"
              "np.save('y.npy', y.float().cpu().numpy())\n")
    env = {**os.environ, "TRITON_INTERPRET": "1"} if not torch.cuda.is_available() \
        else dict(os.environ)
    subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, check=True,
                   capture_output=True)
    with torch.no_grad():
        want = model(*x).numpy()
    assert rel_error(np.load(tmp_path / "y.npy"), want) <= TOLERANCE["fp32"]

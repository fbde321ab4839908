"""Every bundled model compiled for the cpu target and compared with PyTorch.

Traced at batch 1 and at batch 4 (shapes are static), run on the example inputs and on fresh
ones; fp32 relative error (max |kiln - torch| / max |torch|) at most 1e-4. One build cache
serves the session, so the runtime is compiled once.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import kiln
from kiln.models import example_inputs, get_model, list_models
from kiln.targets.toolchains import gcc

pytestmark = pytest.mark.skipif(gcc.shutil.which("gcc") is None, reason="needs gcc")
TOL = 1e-4


def cache_dir(factory: pytest.TempPathFactory) -> Path:
    return factory.getbasetemp() / "kiln-cpu-cache"


def rel_error(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.abs(got.astype(np.float64) - want).max() / max(np.abs(want).max(), 1e-12))


@pytest.mark.parametrize("batch", [1, 4])
@pytest.mark.parametrize("name", list_models())
def test_bundled_model_matches_pytorch(name: str, batch: int,
                                       tmp_path_factory: pytest.TempPathFactory) -> None:
    model = get_model(name)
    inputs = example_inputs(name, batch)
    art = kiln.compile(model, inputs, target="cpu", cache_dir=cache_dir(tmp_path_factory))
    assert art.report()["max_rel_error_vs_source"] <= TOL
    log = (art.artifact.entry / "build.log").read_text()  # type: ignore[attr-defined]
    assert "warning" not in log, log
    fresh = example_inputs(name, batch, seed=11)
    with torch.no_grad():
        want = model(*fresh)
    got = art(*fresh)
    assert isinstance(got, torch.Tensor) and got.shape == want.shape
    assert rel_error(got.numpy(), want.numpy()) <= TOL
    as_numpy = art(*(t.numpy() for t in fresh))
    assert isinstance(as_numpy, np.ndarray)
    assert np.array_equal(as_numpy, got.numpy())

"""transformer_layer (fp32) on the cpu target at batch 1, 3 and 64 against PyTorch.

The batches reach the row kernels at different row counts (layer norm: 16, 48, 1024 rows of
64; softmax: 64, 192, 4096 rows of 16, one AVX-512 vector each) and the GELU epilogue of fc1
at different GEMM block splits. Inputs are fresh (seeded from the test id, not the example
inputs), scaled up so GELU sees its tails; relative error (max |kiln - torch| / max |torch|)
at most 1e-4.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import kiln
from kiln.models import get_model
from kiln.targets.toolchains import gcc

pytestmark = pytest.mark.skipif(gcc.shutil.which("gcc") is None, reason="needs gcc")
TOL = 1e-4


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.getbasetemp() / "kiln-cpu-cache"


@pytest.mark.parametrize("batch", [1, 3, 64])
def test_transformer_layer_matches_pytorch(batch: int, cache: Path,
                                           rng: np.random.Generator) -> None:
    model = get_model("transformer_layer").eval()
    calib = torch.from_numpy(rng.standard_normal((batch, 16, 64)).astype(np.float32))
    art = kiln.compile(model, (calib,), target="cpu", cache_dir=cache)
    for scale in (1.0, 6.0):
        x = torch.from_numpy((rng.standard_normal((batch, 16, 64)) * scale).astype(np.float32))
        with torch.no_grad():
            want = model(x).numpy().astype(np.float64)
        got = np.asarray(art(x.numpy()), np.float64)
        assert got.shape == want.shape
        err = np.abs(got - want).max() / np.abs(want).max()
        assert err <= TOL, (batch, scale, err)

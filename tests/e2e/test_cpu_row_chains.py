"""Pointwise chains feeding a softmax / log-softmax / layer norm on the cpu target.

A fused row group whose pointwise ops all feed one last softmax (last axis) or layer norm runs
as one elementwise pass into the result and then the vectorized runtime kernel in place
(`emit_rows._emit_chain_then_kernel`); a softmax over another axis keeps the scalar row loops.
Each case is checked against PyTorch (relative error <= 1e-4) in a build under
AddressSanitizer + UBSan, at odd sizes (rows of 17 and 5: no whole vector, or one and a tail)
and batch 3, once with 2 threads (the chain's pass is an OpenMP loop, the kernel runs after
it), and the kernel notes say which path ran.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import kiln
from kiln.targets.toolchains import gcc

pytestmark = pytest.mark.skipif(gcc.shutil.which("gcc") is None, reason="needs gcc")
TOL = 1e-4


class Chains(nn.Module):
    """Four row groups: scale → softmax, difference → log-softmax, sum → layer norm (affine
    and plain), and scale → softmax over the middle axis (no runtime kernel)."""

    def __init__(self, length: int) -> None:
        super().__init__()
        self.ln = nn.LayerNorm(length)
        self.plain = nn.LayerNorm(length, elementwise_affine=False)
        with torch.no_grad():
            self.ln.weight.uniform_(0.5, 1.5)
            self.ln.bias.uniform_(-1.0, 1.0)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return (torch.softmax(x * 0.25, dim=-1), torch.log_softmax(x - y, dim=-1),
                self.ln(x + y), self.plain(x * y), torch.softmax(x * 3.0, dim=1))


@pytest.mark.parametrize("length,threads", [(5, 1), (17, 2), (32, 1)])
def test_chains_into_row_kernels(length: int, threads: int, tmp_path: Path,
                                 rng: np.random.Generator) -> None:
    model = Chains(length).eval()
    shape = (3, 7, length)
    x, y = (torch.from_numpy((rng.standard_normal(shape) * 3).astype(np.float32))
            for _ in range(2))
    art = kiln.compile(model, (x, y), target="cpu", cache_dir=tmp_path, sanitize=True,
                       threads=threads)
    assert "sanitized" in art.report()["runtime"]
    notes = [k["kernel"] for k in art.report()["kernels"]]
    for chain in ("mul, then softmax rows", "sub, then log_softmax rows",
                  "add, then layer_norm rows", "mul, then layer_norm rows"):
        assert any(n.startswith(chain) for n in notes), (chain, notes)
    assert "rows mul+softmax" in notes, notes  # dim=1: the scalar row loops
    x2, y2 = (torch.from_numpy((rng.standard_normal(shape) * 3).astype(np.float32))
              for _ in range(2))
    with torch.no_grad():
        wants = model(x2, y2)
    gots = art(x2, y2)
    assert len(gots) == len(wants)
    for got, want in zip(gots, wants):
        w = want.numpy().astype(np.float64)
        err = np.abs(np.asarray(got, np.float64) - w).max() / np.abs(w).max()
        assert err <= TOL, err


class WeightAlsoSummed(nn.Module):
    """layer_norm(x + h, weight=h) over the whole tensor, its result feeding a matmul: h (a
    concat, computed outside the group) dies at the layer norm, is read by the chain at full
    shape and is the layer norm's weight — the result must not overwrite it, since the kernel
    reads the weight after the chain has written the result."""

    def __init__(self) -> None:
        super().__init__()
        self.m = nn.Parameter(torch.randn(16, 16) * 0.3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.cat([x[2:], x[:2]], 0)
        return nn.functional.layer_norm(x + h, (4, 16), weight=h) @ self.m


def test_chain_does_not_overwrite_the_layer_norm_weight(tmp_path: Path,
                                                        rng: np.random.Generator) -> None:
    model = WeightAlsoSummed().eval()
    x = torch.from_numpy(rng.standard_normal((4, 16)).astype(np.float32))
    art = kiln.compile(model, (x,), target="cpu", cache_dir=tmp_path)
    notes = [k["kernel"] for k in art.report()["kernels"]]
    assert any(n.startswith("add, then layer_norm rows") for n in notes), notes
    x2 = torch.from_numpy(rng.standard_normal((4, 16)).astype(np.float32))
    with torch.no_grad():
        want = model(x2).numpy().astype(np.float64)
    got = np.asarray(art(x2), np.float64)
    assert np.abs(got - want).max() / np.abs(want).max() <= TOL

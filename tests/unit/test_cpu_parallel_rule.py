"""The parallel cost rule (`COptions.parallel_worth`): with threads > 1, a loop becomes an OpenMP
parallel region only when the region's work (GEMM FLOPs, or an elementwise / row pass's
elements times `PASS_FLOPS_PER_ELEMENT`) reaches `parallel_min_flops`; smaller ones run serially,
blocked exactly as with threads=1, because waking a sleeping worker costs more than they save.

Emission tests lower the IR of a threads=1 compile with other options (no compiler call);
numeric tests build at threads=2, once with the default rule and once with every region
parallel (`parallel_min_flops=0`), and compare with PyTorch on fresh random inputs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import kiln
from kiln.codegen.c.emitter import lower
from kiln.codegen.c.options import PARALLEL_MIN_FLOPS, PASS_FLOPS_PER_ELEMENT, COptions
from kiln.ir.graph import Module
from kiln.models import example_inputs, get_model

PRAGMA = "#pragma omp parallel for"


class MulAdd(torch.nn.Module):
    """One fused elementwise pass over the inputs' shape."""

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return x * y + x


class Dense(torch.nn.Module):
    """One linear layer with a relu epilogue: a GEMM kernel blocked over its rows."""

    def __init__(self, k: int, n: int) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(k, n)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.fc(x))


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One build cache for the module: the runtime objects are compiled once."""
    return tmp_path_factory.mktemp("kiln-cache")


def lowered(model: torch.nn.Module, *xs: torch.Tensor) -> Module:
    """The IR the cpu target generates C from (a threads=1 compile's `ir`)."""
    return kiln.compile(model, xs, target="cpu", threads=1).ir


def model_c(ir: Module, threads: int, least: int) -> str:
    return lower(ir, COptions(threads=threads, parallel_min_flops=least)).sources["model.c"]


def test_rule_is_a_threshold_on_work() -> None:
    options = COptions(threads=2, parallel_min_flops=1000)
    assert options.parallel_worth(1000) and not options.parallel_worth(999)
    assert not COptions(threads=1, parallel_min_flops=0).parallel_worth(10**9)


@pytest.mark.parametrize("rows", [8, 64])
def test_elementwise_pass_is_parallel_only_from_the_threshold(rows: int) -> None:
    ir = lowered(MulAdd().eval(), torch.randn(rows, 256), torch.randn(rows, 256))
    work = rows * 256 * PASS_FLOPS_PER_ELEMENT
    assert model_c(ir, 2, work).count(PRAGMA) == 1
    below = model_c(ir, 2, work + 1)
    assert PRAGMA not in below
    assert below == model_c(ir, 1, work + 1)  # serial: the threads=1 code, byte for byte
    assert PRAGMA not in model_c(ir, 1, 0)


def test_default_rule_small_pass_serial_large_pass_parallel() -> None:
    small = lowered(MulAdd().eval(), torch.randn(32, 256), torch.randn(32, 256))  # 8K floats
    assert PRAGMA not in model_c(small, 2, PARALLEL_MIN_FLOPS)
    rows = -(-PARALLEL_MIN_FLOPS // (256 * PASS_FLOPS_PER_ELEMENT))
    large = lowered(MulAdd().eval(), torch.randn(rows, 256), torch.randn(rows, 256))
    assert PRAGMA in model_c(large, 2, PARALLEL_MIN_FLOPS)


def test_gemm_blocks_are_parallel_only_from_the_threshold() -> None:
    rows = 64
    ir = lowered(Dense(256, 128).eval(), torch.randn(rows, 256))
    work = 2 * rows * 256 * 128
    assert model_c(ir, 2, work).count(PRAGMA) == 1
    below = model_c(ir, 2, work + 1)
    assert PRAGMA not in below
    assert below == model_c(ir, 1, work + 1)


@pytest.mark.parametrize("name", ["mobilenet_v2ish", "digits_cnn"])
def test_batch_one_small_models_emit_no_region(name: str) -> None:
    """Every region of these at batch 1 is far below the default: threads=2 generates the
    threads=1 code (the 3 SE multiplies of MobileNet used to be 3 parallel regions)."""
    ir = lowered(get_model(name).eval(), *example_inputs(name, batch=1, seed=3))
    two = model_c(ir, 2, PARALLEL_MIN_FLOPS)
    assert PRAGMA not in two
    assert two == model_c(ir, 1, PARALLEL_MIN_FLOPS)


@pytest.mark.parametrize("name,batch", [("mobilenet_v2ish", 4), ("lenet5", 16),
                                        ("transformer_layer", 8)])
@pytest.mark.parametrize("least", [0, PARALLEL_MIN_FLOPS])
def test_threads_two_match_torch(name: str, batch: int, least: int, cache: Path) -> None:
    """At threads=2, every region parallel (0: elementwise and row passes included) or only
    those the default rule keeps; fp32 within 1e-4 of PyTorch on fresh inputs."""
    torch.manual_seed(5)
    model = get_model(name).eval()
    xs = example_inputs(name, batch=batch, seed=7)
    art = kiln.compile(model, xs, target="cpu", threads=2, cache_dir=cache,
                       parallel_min_flops=least)
    source = model_c(art.ir, 2, least)
    if least == 0:
        assert PRAGMA in source
    for seed in (11, 12):
        fresh = example_inputs(name, batch=batch, seed=seed)
        with torch.no_grad():
            want = model(*fresh).numpy()
        got = np.asarray(art(*(x.numpy() for x in fresh)))
        assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max()

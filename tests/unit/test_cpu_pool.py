"""Pooling on the cpu target (`kiln_pool.c`, `kiln_pool.h`, `emit_pool.py`) against PyTorch.

Kernel level: `kiln_pool.c` built alone (for this machine and, on x86, for baseline x86-64
with 4-lane vectors), every pool the C target emits — the 2x2 stride-2 blocks at every row
width around the block sizes (4, 8, 16) and odd input sizes, ceil mode, padding, dilation,
other windows, average pooling with and without counting the padding — with NaN guards
after the output (a write past it would show) and NaN inputs (NaN wins a max, as in torch).
End to end: models whose pools take each path of `emit_pool` compiled for the cpu target,
one under the sanitizers.
"""

from __future__ import annotations

import ctypes
import platform
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import kiln
from kiln.codegen.c.emitter import RUNTIME_HEADERS, config_header
from kiln.codegen.c.options import COptions
from kiln.targets.toolchains import gcc

pytestmark = pytest.mark.skipif(gcc.shutil.which("gcc") is None, reason="needs gcc")
MARCHES = ["native"] + (["x86-64"] if platform.machine() in ("x86_64", "AMD64") else [])
GUARD = 64


@pytest.fixture(scope="module", params=MARCHES)
def pool(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Any:
    work: Path = tmp_path_factory.mktemp(f"pool-{request.param}")
    root = resources.files("kiln.codegen.c").joinpath("runtime")
    for name in (*RUNTIME_HEADERS, "kiln_pool.c"):
        (work / name).write_text(root.joinpath(name).read_text())
    toolchain = gcc.find("gcc")
    width = gcc.vector_width(toolchain, request.param)
    (work / "kiln_config.h").write_text(config_header(COptions(width)))
    flags = [*gcc.flags(request.param, 1, False), "-Werror", "-fvisibility=default"]
    out = gcc.compile_c(toolchain, work, ["kiln_pool.c"], "libpool.so", flags, shared=True)
    return ctypes.CDLL(str(out))


def run_pool(lib: Any, kind: str, x: np.ndarray, k: tuple[int, int], s: tuple[int, int],
             pad: tuple[int, int], dil: tuple[int, int], oh: int, ow: int,
             include_pad: bool = True) -> np.ndarray:
    """One call of kiln_maxpool2d / kiln_avgpool2d; the output is followed by NaN guards."""
    n, c, h, w = x.shape
    shape = np.array([h, w, *k, *s, pad[0], pad[1], pad[0], pad[1], *dil, oh, ow], np.int32)
    y = np.full(n * c * oh * ow + GUARD, np.nan, np.float32)
    p = ctypes.c_void_p
    if kind == "max":
        lib.kiln_maxpool2d(p(x.ctypes.data), p(y.ctypes.data), n * c, p(shape.ctypes.data))
    else:
        lib.kiln_avgpool2d(p(x.ctypes.data), p(y.ctypes.data), n * c, p(shape.ctypes.data),
                           int(include_pad))
    assert np.isnan(y[-GUARD:]).all(), "the kernel wrote past its output"
    return y[:-GUARD].reshape(n, c, oh, ow)


def torch_pool(kind: str, x: np.ndarray, k: tuple[int, int], s: tuple[int, int],
               pad: tuple[int, int], dil: tuple[int, int], ceil: bool,
               include_pad: bool = True) -> np.ndarray:
    t = torch.from_numpy(x)
    if kind == "max":
        return F.max_pool2d(t, k, s, pad, dil, ceil_mode=ceil).numpy()
    return F.avg_pool2d(t, k, s, pad, ceil_mode=ceil, count_include_pad=include_pad).numpy()


@pytest.mark.parametrize("ow", [1, 2, 3, 4, 5, 7, 8, 9, 14, 15, 16, 17, 31, 33])
@pytest.mark.parametrize("odd", [False, True])
def test_max_2x2_blocks_every_row_width(pool: Any, rng: np.random.Generator, ow: int,
                                        odd: bool) -> None:
    """Row widths below, at and between the block sizes; an odd input drops its last row
    and column (floor mode) and the blocks must not read them into the result."""
    h, w = 2 * 3 + odd, 2 * ow + odd
    x = rng.standard_normal((2, 3, h, w)).astype(np.float32)
    want = torch_pool("max", x, (2, 2), (2, 2), (0, 0), (1, 1), False)
    got = run_pool(pool, "max", x, (2, 2), (2, 2), (0, 0), (1, 1), *want.shape[2:])
    assert np.array_equal(got, want)


@pytest.mark.parametrize("ow", [3, 8, 14, 17])
def test_max_2x2_nan_wins(pool: Any, rng: np.random.Generator, ow: int) -> None:
    """A NaN anywhere in a window (any of its four positions) makes that output NaN."""
    x = rng.standard_normal((1, 2, 6, 2 * ow)).astype(np.float32)
    x.flat[rng.choice(x.size, size=max(2, x.size // 7), replace=False)] = np.nan
    want = torch_pool("max", x, (2, 2), (2, 2), (0, 0), (1, 1), False)
    got = run_pool(pool, "max", x, (2, 2), (2, 2), (0, 0), (1, 1), *want.shape[2:])
    assert np.array_equal(np.isnan(got), np.isnan(want))
    assert np.array_equal(got[~np.isnan(want)], want[~np.isnan(want)])


CASES = [  # kind, kernel, stride, padding, dilation, ceil, count_include_pad, H, W
    ("max", (2, 2), (2, 2), (0, 0), (1, 1), True, True, 9, 11),    # ceil: last window hangs
    ("max", (3, 3), (2, 2), (1, 1), (1, 1), False, True, 13, 10),
    ("max", (3, 3), (2, 2), (1, 1), (1, 1), True, True, 12, 9),
    ("max", (2, 2), (1, 1), (0, 0), (1, 1), False, True, 7, 9),    # overlapping windows
    ("max", (2, 3), (2, 1), (1, 1), (2, 1), False, True, 11, 8),   # dilation, unequal
    ("max", (2, 2), (2, 2), (1, 1), (1, 1), False, True, 8, 8),    # 2x2/2 but padded
    ("avg", (2, 2), (2, 2), (0, 0), (1, 1), False, True, 9, 12),
    ("avg", (3, 3), (2, 2), (1, 1), (1, 1), True, True, 10, 7),
    ("avg", (3, 3), (2, 2), (1, 1), (1, 1), True, False, 11, 11),
    ("avg", (3, 2), (1, 2), (1, 1), (1, 1), False, False, 6, 9),
]


@pytest.mark.parametrize("case", CASES)
def test_pools_match_torch(pool: Any, rng: np.random.Generator, case: tuple) -> None:
    kind, k, s, pad, dil, ceil, include, h, w = case
    x = rng.standard_normal((2, 3, h, w)).astype(np.float32)
    want = torch_pool(kind, x, k, s, pad, dil, ceil, include)
    oh, ow = want.shape[2:]
    got = run_pool(pool, kind, x, k, s, pad, dil, oh, ow, include_pad=include)
    assert np.abs(got - want).max() <= 1e-6 * max(float(np.abs(want).max()), 1.0)


class Pools(nn.Module):
    """Each path of emit_pool: the inline 2x2/2 blocks (odd sizes, narrow rows), a ceil-mode
    2x2 (the general loop), padded 3x3, 1-D max and average pools, average 2x2."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3, padding=1)
        self.p1 = nn.MaxPool2d(2)
        self.p2 = nn.MaxPool2d(2, ceil_mode=True)
        self.p3 = nn.MaxPool2d(3, 2, padding=1)
        self.p4 = nn.AvgPool2d(2)
        self.p5 = nn.MaxPool1d(2)
        self.p6 = nn.AvgPool1d(3, 2, padding=1, count_include_pad=False)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        y = torch.relu(self.conv(x))
        rows = y.flatten(1, 2)
        return (self.p1(y), self.p2(y), self.p3(y), self.p4(y), self.p5(rows), self.p6(rows),
                self.p1(self.p1(y)))


def check_pools(x: torch.Tensor, **options: Any) -> kiln.CompiledModel:
    torch.manual_seed(int(np.random.default_rng().integers(1 << 16)))
    model = Pools().eval()
    compiled = kiln.compile(model, x, target="cpu", **options)
    got = compiled(x.numpy())
    with torch.no_grad():
        want = model(x)
    assert len(got) == len(want)
    for g, t in zip(got, want):
        scale = max(float(t.abs().max()), 1.0)
        assert np.abs(np.asarray(g) - t.numpy()).max() <= 1e-4 * scale
    return compiled


@pytest.mark.parametrize("hw", [(9, 11), (16, 34), (6, 7)])
def test_model_pools_match_torch(hw: tuple[int, int]) -> None:
    x = torch.randn(2, 2, *hw, generator=torch.Generator().manual_seed(sum(hw)))
    compiled = check_pools(x)
    kinds = [k["kernel"] for k in compiled.report()["kernels"] if "pool" in k["kernel"]]
    # p1 (twice) takes the inline blocks; ceil mode too where it adds no window (even
    # sizes); the padded 3x3 the general loop
    even = hw[0] % 2 == 0 and hw[1] % 2 == 0
    assert kinds.count("max pool 2x2/2") == 2 + even
    assert "max pool" in kinds and "average pool" in kinds


def test_model_pools_under_sanitizers() -> None:
    """ASan/UBSan over every pool path: no read or write outside the input and output."""
    check_pools(torch.randn(1, 2, 9, 13), sanitize=True)


@pytest.mark.parametrize("planes,h,w", [
    (48, 4, 4), (32, 8, 8), (16, 16, 16),  # mobilenet's SE and head pools: 16 at a time
    (37, 3, 5), (19, 7, 9), (21, 1, 33),   # odd planes (a scalar tail), partial vectors
    (5, 2, 2), (17, 1, 1),                 # fewer than 16 planes; planes too short for it
])
def test_global_average_matches_torch(pool: Any, rng: np.random.Generator, planes: int,
                                      h: int, w: int) -> None:
    """kiln_adaptive_avgpool2d to 1x1: 16 planes at a time (AVX-512), the rest one by one;
    NaN guards after the output."""
    x = rng.standard_normal((1, planes, h, w)).astype(np.float32)
    y = np.full(planes + GUARD, np.nan, np.float32)
    p = ctypes.c_void_p
    pool.kiln_adaptive_avgpool2d(p(x.ctypes.data), p(y.ctypes.data), planes, h, w, 1, 1)
    assert np.isnan(y[-GUARD:]).all(), "the kernel wrote past its output"
    want = F.adaptive_avg_pool2d(torch.from_numpy(x), 1).numpy().reshape(-1)
    np.testing.assert_allclose(y[:planes], want, rtol=1e-5, atol=1e-6)

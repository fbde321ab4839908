"""Implicit-GEMM convolution on the cpu target (`kiln_conv_gemm`, kiln_conv_gemm.h).

Kernel level: the runtime built on its own (for this machine and for baseline x86-64, whose
4-lane vectors give a 4x8 GEMM tile), `kiln_conv_gemm` compared with a float64 NumPy
convolution on odd shapes: K not a multiple of anything, pixel counts not a multiple of NR
(and narrow last panels), several blocks of K, stride, dilation, asymmetric padding, 1x1,
conv1d, column sub-ranges, bias and clamp; the same for the stride-1 "wide grid" kernel
`kiln_conv_gemm_wide` (odd OW/WP, ranges starting mid-row, OW = 1), plus an ASan harness with
exact-size buffers for its reads past the padded image. End to end: a model compiled with
kiln compared with PyTorch (wide and gather convs, fused residual epilogues, grouped convs,
conv1d, OpenMP threads, sanitized).
"""

from __future__ import annotations

import ctypes
import platform
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

import kiln
from kiln.codegen.c.conv_anchors import conv_kc, padded_dims
from kiln.codegen.c.packing import gemm_tile, pack_panels
from kiln.targets.toolchains import gcc
from kiln.testing.runtime_lib import build_runtime_library, build_sanitized_harness

pytestmark = pytest.mark.skipif(gcc.shutil.which("gcc") is None, reason="needs gcc")
MARCHES = ["native"] + (["x86-64"] if platform.machine() in ("x86_64", "AMD64") else [])
FIELDS = ("C", "H", "W", "KH", "KW", "sh", "sw", "pt", "pl", "dh", "dw", "OH", "OW")


class Shape(ctypes.Structure):
    _fields_ = [(name, ctypes.c_int) for name in FIELDS]


def ptr(a: np.ndarray | None) -> ctypes.c_void_p | None:
    return None if a is None else ctypes.c_void_p(a.ctypes.data)


CALLS = ("kiln_conv_gemm", "kiln_sgemm")


class Lib:
    """The two runtime files the implicit GEMM needs, built for one -march, and its tile."""

    def __init__(self, path: Path, march: str) -> None:
        self.dll = ctypes.CDLL(str(path))
        self.dll.kiln_conv_gemm.restype = None
        self.dll.kiln_conv_gemm_pad.restype = None
        self.dll.kiln_conv_gemm_wide.restype = None
        self.dll.kiln_conv_gemm_pad_wide.restype = None
        width = gcc.vector_width(gcc.find("gcc"), march) if march == "native" else 4
        self.mr, self.nr = gemm_tile(width)


@pytest.fixture(scope="module", params=MARCHES)
def lib(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Lib:
    work = tmp_path_factory.mktemp(f"convgemm-{request.param}")
    out = build_runtime_library(work, request.param, *CALLS)
    return Lib(out, request.param)


def reference(x: np.ndarray, w: np.ndarray, bias: np.ndarray, geo: dict[str, int]) -> np.ndarray:
    """(Cout, OH*OW) in float64: the convolution written out tap by tap."""
    c, h, wd = x.shape
    xp = np.zeros((c, h + geo["pt"] + 64, wd + geo["pl"] + 64))
    xp[:, geo["pt"]:geo["pt"] + h, geo["pl"]:geo["pl"] + wd] = x
    out = np.zeros((w.shape[0], geo["OH"], geo["OW"])) + bias[:, None, None]
    for ky in range(geo["KH"]):
        for kx in range(geo["KW"]):
            y0, x0 = ky * geo["dh"], kx * geo["dw"]
            win = xp[:, y0:y0 + geo["OH"] * geo["sh"]:geo["sh"],
                     x0:x0 + geo["OW"] * geo["sw"]:geo["sw"]]
            out += np.einsum("oc,cyx->oyx", w[:, :, ky, kx].astype(np.float64), win)
    return out.reshape(w.shape[0], -1)


def run_conv_gemm(lib: Lib, x: np.ndarray, w: np.ndarray, bias: np.ndarray | None,
                  geo: dict[str, int], cols: tuple[int, int], kc: int, lo: float,
                  hi: float) -> tuple[np.ndarray, np.ndarray]:
    """`kiln_conv_gemm` over pixel columns `cols` into a padded output (and the output)."""
    mr, nr = lib.mr, lib.nr
    cout, k = w.shape[0], w[0].size
    shape = Shape(*(geo[f] for f in FIELDS))
    hp, wp = padded_dims(geo)
    src = x
    if (hp, wp, geo["pt"], geo["pl"]) != (geo["H"], geo["W"], 0, 0):
        src = np.full((geo["C"], hp, wp), np.nan, np.float32)  # every float must be written
        lib.dll.kiln_conv_gemm_pad(ptr(x), ctypes.byref(shape), geo["C"], ptr(src))
        assert not np.isnan(src).any()
    a = pack_panels(w.reshape(cout, k), mr)
    ldy = geo["OH"] * geo["OW"] + 5
    y = np.full((cout, ldy), -7.0, np.float32)
    panel = np.zeros(kc * nr + 1, np.float32)
    n0, n1 = cols
    lib.dll.kiln_conv_gemm(ptr(src), ctypes.byref(shape), ptr(a), cout, ptr(bias), ctypes.c_void_p(
        y.ctypes.data + 4 * n0), ctypes.c_ssize_t(ldy), n0, n1, ctypes.c_float(lo),
       ctypes.c_float(hi), kc, ptr(panel))
    return y, src


def geometry(c: int, h: int, w: int, k: tuple[int, int], s: tuple[int, int],
             p: tuple[int, int, int, int], d: tuple[int, int]) -> dict[str, int]:
    oh = (h + p[0] + p[2] - d[0] * (k[0] - 1) - 1) // s[0] + 1
    ow = (w + p[1] + p[3] - d[1] * (k[1] - 1) - 1) // s[1] + 1
    return dict(zip(FIELDS, (c, h, w, *k, *s, p[0], p[1], *d, oh, ow)))


# (C, H, W, Cout, kernel, stride, padding t/l/b/r, dilation, kc)
CASES = [
    (3, 11, 9, 13, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 256),   # K=27, P=99
    (7, 10, 13, 9, (5, 3), (2, 1), (2, 0, 1, 2), (1, 2), 40),    # several K blocks
    (5, 1, 37, 11, (1, 4), (1, 3), (0, 2, 0, 1), (1, 1), 7),     # conv1d, stride 3
    (17, 6, 6, 19, (1, 1), (1, 1), (0, 0, 0, 0), (1, 1), 256),   # 1x1: the image is B
    (6, 9, 9, 8, (1, 1), (2, 2), (0, 0, 0, 0), (1, 1), 5),       # 1x1 strided, narrow panel
    (4, 4, 4, 21, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 256),    # P=16 < NR
    (2, 12, 14, 5, (3, 3), (1, 1), (3, 2, 0, 0), (3, 2), 9),     # dilation, one-sided pad
    (40, 7, 5, 33, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 123),   # K=360 in 3 blocks
]


@pytest.mark.parametrize("case", CASES, ids=[f"case{i}" for i in range(len(CASES))])
def test_conv_gemm_matches_numpy(lib: Lib, case: tuple) -> None:
    c, h, wd, cout, k, s, p, d, kc = case
    rng = np.random.default_rng(abs(hash(case)) % 2**32)
    geo = geometry(c, h, wd, k, s, p, d)
    x = rng.standard_normal((c, h, wd), dtype=np.float32)
    w = rng.standard_normal((cout, c, *k), dtype=np.float32)
    bias = rng.standard_normal(cout, dtype=np.float32)
    want = reference(x, w, bias, geo)
    pixels = geo["OH"] * geo["OW"]
    y, _ = run_conv_gemm(lib, x, w, bias, geo, (0, pixels), kc, -np.inf, np.inf)
    np.testing.assert_allclose(y[:, :pixels], want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
    assert (y[:, pixels:] == -7.0).all()  # nothing written past the pixels


def test_column_block_bias_none_and_clamp(lib: Lib) -> None:
    geo = geometry(6, 9, 11, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1))
    rng = np.random.default_rng(5)
    x = rng.standard_normal((6, 9, 11), dtype=np.float32)
    w = rng.standard_normal((10, 6, 3, 3), dtype=np.float32)
    want = np.clip(reference(x, w, np.zeros(10, np.float32), geo), -1.5, 2.0)
    n0, n1 = 37, 80  # a block of columns, as the OpenMP/tiled driver hands out
    y, _ = run_conv_gemm(lib, x, w, None, geo, (n0, n1), 20, -1.5, 2.0)
    np.testing.assert_allclose(y[:, n0:n1], want[:, n0:n1], rtol=1e-4, atol=1e-4)
    assert (y[:, :n0] == -7.0).all() and (y[:, n1:] == -7.0).all()


def test_kc_blocks_fit_the_panel_budget() -> None:
    assert conv_kc(72, 32) == 72
    assert conv_kc(576, 32) == 192  # three even blocks of at most 256 rows
    assert all(conv_kc(k, 32) <= 256 and -(-k // conv_kc(k, 32)) * conv_kc(k, 32) >= k
               for k in range(1, 3000, 7))


class Net(torch.nn.Module):
    """Convs of every scheme kiln_conv_gemm serves, with clamp and residual epilogues."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = torch.nn.Conv2d(3, 12, 3, stride=1, padding=1)
        self.c2 = torch.nn.Conv2d(12, 12, 3, stride=1, padding=2, dilation=2)
        self.c3 = torch.nn.Conv2d(12, 40, (5, 3), stride=(2, 1), padding=(2, 0))
        self.c4 = torch.nn.Conv2d(40, 40, 1)  # 1x1: kiln_pwconv into the tile (relu6, + y)
        self.g = torch.nn.Conv2d(40, 40, 3, padding=1, groups=4, bias=False)
        self.d = torch.nn.Conv1d(40, 9, 4, stride=3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.c1(x))
        y = torch.nn.functional.hardswish(self.c2(y) + y)  # tiled epilogue with a residual
        y = torch.clamp(self.c3(y), -1.0, 1.5)
        y = self.g(torch.nn.functional.relu6(self.c4(y)) + y)
        return self.d(y.flatten(2))


def test_end_to_end_matches_torch_sanitized_with_threads(tmp_path: Path) -> None:
    """One build covers the lot: every scheme, fused epilogues, 2 OpenMP threads (a panel
    scratch per thread), under AddressSanitizer and UBSan (no read outside any buffer)."""
    torch.manual_seed(11)
    net = Net().eval()
    x = torch.randn(3, 3, 13, 10)
    art = kiln.compile(net, x, target="cpu", threads=2, sanitize=True, cache_dir=tmp_path,
                       parallel_min_flops=0)
    kernels = " ".join(k["kernel"] for k in art.report()["kernels"])
    for scheme in ("conv implicit gemm", "conv 1x1 pointwise", "grouped conv implicit gemm",
                   "conv wide implicit gemm"):
        assert scheme in kernels, scheme
    for seed in (1, 2):
        xs = torch.randn(3, 3, 13, 10, generator=torch.Generator().manual_seed(seed))
        want = net(xs).detach().numpy()
        got = np.asarray(art(xs.numpy()))
        assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max()


def run_wide(lib: Lib, x: np.ndarray, w: np.ndarray, bias: np.ndarray | None,
             geo: dict[str, int], cols: tuple[int, int], lo: float, hi: float) -> np.ndarray:
    """`kiln_conv_gemm_wide` over pixel columns `cols` into a padded output; the padded
    image is sized exactly (plus the documented slack), so ASan-free over-reads still land
    in NaN-free memory and any read past the slack would show up as a wrong answer."""
    cout, k = w.shape[0], w[0].size
    shape = Shape(*(geo[f] for f in FIELDS))
    hp, wp = padded_dims(geo)
    src = np.full(geo["C"] * hp * wp + lib.nr, np.nan, np.float32)
    lib.dll.kiln_conv_gemm_pad_wide(ptr(x), ctypes.byref(shape), geo["C"], ptr(src))
    assert not np.isnan(src).any()  # the slack is zeroed too
    a = pack_panels(w.reshape(cout, k), lib.mr)
    ldy = geo["OH"] * geo["OW"] + 5
    y = np.full((cout, ldy), -7.0, np.float32)
    n0, n1 = cols
    lib.dll.kiln_conv_gemm_wide(ptr(src), ctypes.byref(shape), ptr(a), cout, ptr(bias),
                                ctypes.c_void_p(y.ctypes.data + 4 * n0), ctypes.c_ssize_t(ldy),
                                n0, n1, ctypes.c_float(lo), ctypes.c_float(hi))
    return y


# (C, H, W, Cout, kernel, padding t/l/b/r, dilation, pixel columns or None for all)
WIDE_CASES = [
    (3, 11, 9, 13, (3, 3), (1, 1, 1, 1), (1, 1), None),     # odd OW=9, WP=11, M % MR != 0
    (40, 7, 5, 33, (3, 3), (1, 1, 1, 1), (1, 1), None),     # K=360
    (2, 12, 14, 5, (3, 3), (3, 2, 0, 0), (3, 2), None),     # dilation, one-sided padding
    (7, 10, 13, 9, (5, 3), (2, 0, 1, 2), (1, 2), (17, 80)),  # asymmetric, starts mid-row
    (4, 4, 4, 21, (3, 3), (1, 1, 1, 1), (1, 1), (5, 6)),    # one pixel: a narrow tile
    (5, 1, 37, 11, (1, 4), (0, 2, 0, 1), (1, 1), (3, 30)),  # conv1d
    (6, 33, 35, 17, (3, 3), (1, 1, 1, 1), (1, 1), (40, 1100)),  # many tiles, rows > NR
    (3, 6, 3, 8, (3, 3), (0, 0, 0, 0), (1, 1), None),       # OW=1: a run per pixel
]


@pytest.mark.parametrize("case", WIDE_CASES, ids=[f"wide{i}" for i in range(len(WIDE_CASES))])
def test_conv_gemm_wide_matches_numpy(lib: Lib, case: tuple) -> None:
    c, h, wd, cout, k, p, d, cols = case
    rng = np.random.default_rng(abs(hash(case)) % 2**32)
    geo = geometry(c, h, wd, k, (1, 1), p, d)
    x = rng.standard_normal((c, h, wd), dtype=np.float32)
    w = rng.standard_normal((cout, c, *k), dtype=np.float32)
    bias = rng.standard_normal(cout, dtype=np.float32)
    pixels = geo["OH"] * geo["OW"]
    n0, n1 = cols or (0, pixels)
    want = reference(x, w, bias, geo)
    y = run_wide(lib, x, w, bias, geo, (n0, n1), -np.inf, np.inf)
    np.testing.assert_allclose(y[:, n0:n1], want[:, n0:n1], rtol=1e-4,
                               atol=1e-4 * np.abs(want).max())
    assert (y[:, :n0] == -7.0).all() and (y[:, n1:] == -7.0).all()


def test_conv_gemm_wide_bias_none_and_clamp(lib: Lib) -> None:
    geo = geometry(6, 9, 11, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1))
    rng = np.random.default_rng(7)
    x = rng.standard_normal((6, 9, 11), dtype=np.float32)
    w = rng.standard_normal((10, 6, 3, 3), dtype=np.float32)
    want = np.clip(reference(x, w, np.zeros(10, np.float32), geo), -1.5, 2.0)
    y = run_wide(lib, x, w, None, geo, (37, 80), -1.5, 2.0)
    np.testing.assert_allclose(y[:, 37:80], want[:, 37:80], rtol=1e-4, atol=1e-4)
    assert (y[:, :37] == -7.0).all() and (y[:, 80:] == -7.0).all()


HARNESS = r"""
#include <stdio.h>
#include <stdlib.h>
#include "kiln_conv_gemm.h"

/* Each shape: x, the padded image (exactly C*HP*WP + KILN_CG_WIDE_SLACK floats) and y
 * (exactly M * pixels) on the heap, so AddressSanitizer flags any read or write outside. */
static void one(kiln_conv_shape s, int M, int n0, int n1) {
    const int K = s.C * s.KH * s.KW, P = s.OH * s.OW;
    const size_t pad = (size_t)s.C * KILN_CG_HP(&s) * KILN_CG_WP(&s) + KILN_CG_WIDE_SLACK;
    float* x = malloc(sizeof(float) * s.C * s.H * s.W);
    float* xp = malloc(sizeof(float) * pad);
    float* a = calloc((size_t)(M + KILN_MR) * K, sizeof(float));
    float* bias = malloc(sizeof(float) * M);
    float* y = malloc(sizeof(float) * M * P);
    for (int i = 0; i < s.C * s.H * s.W; ++i) x[i] = (float)(i % 7) - 3.0f;
    for (int i = 0; i < M; ++i) bias[i] = (float)i;
    kiln_conv_gemm_pad_wide(x, &s, s.C, xp);
    kiln_conv_gemm_wide(xp, &s, a, M, bias, y + n0, P, n0, n1, -1e30f, 1e30f);
    printf("%g\n", (double)y[n1 - 1]);
    free(x), free(xp), free(a), free(bias), free(y);
}

int main(void) {
    /* C, H, W, KH, KW, sh, sw, pt, pl, dh, dw, OH, OW */
    one((kiln_conv_shape){3, 6, 3, 3, 3, 1, 1, 0, 0, 1, 1, 4, 1}, 5, 0, 4);
    one((kiln_conv_shape){2, 12, 14, 3, 3, 1, 1, 3, 2, 3, 2, 9, 10}, 9, 13, 90);
    one((kiln_conv_shape){4, 5, 5, 3, 3, 1, 1, 1, 1, 1, 1, 5, 5}, 3, 24, 25);
    one((kiln_conv_shape){5, 1, 37, 1, 4, 1, 1, 0, 2, 1, 1, 1, 37}, 11, 0, 37);
    return 0;
}
"""


def test_conv_gemm_wide_stays_in_bounds_under_asan(tmp_path: Path) -> None:
    """The wide kernel's last tile reads up to NR floats past the padded image: the
    documented slack must cover it, and no store may leave y (ASan + UBSan, exact buffers)."""
    exe = build_sanitized_harness(tmp_path, HARNESS, *CALLS)
    run = subprocess.run([str(exe)], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert len(run.stdout.split()) == 4


def test_wide_routing_rule() -> None:
    """Stride 1 with K up to WIDE_MAXK (measured faster) goes wide, and so do strided convs
    (on the image's phases, test_cpu_conv_strided.py) but for strided 1x1 and strided dilated
    ones; larger K keeps the gather."""
    from kiln.codegen.c.conv_anchors import WIDE_MAXK, ConvAnchor
    fits = ConvAnchor.wide_fits
    assert fits(geometry(64, 8, 8, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1)), 576)
    assert fits(geometry(2, 12, 14, (3, 3), (1, 1), (3, 2, 0, 0), (3, 2)), 18)
    assert fits(geometry(16, 8, 8, (3, 3), (2, 2), (1, 1, 1, 1), (1, 1)), 144)
    assert fits(geometry(16, 8, 8, (3, 3), (1, 2), (1, 1, 1, 1), (1, 1)), 144)
    assert not fits(geometry(16, 8, 8, (1, 1), (2, 2), (0, 0, 0, 0), (1, 1)), 16)
    assert not fits(geometry(16, 9, 9, (3, 3), (2, 2), (1, 1, 1, 1), (2, 2)), 144)
    assert not fits(geometry(96, 8, 8, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1)), WIDE_MAXK + 1)

"""Winograd transform vectors that span several tile rows (`kiln_wg_group`, kiln_winograd.c).

Rows of 4 tiles (and of 8 with AVX-512's 16-lane vectors) share a transform vector; the
output transform stores each tile row's piece straight into y or through the row buffers, and
the epilogue's clamp is specialized (none, lower bound only, both). These tests aim at what
that adds over test_cpu_winograd.py: plane widths that give 4 and 8 tiles a row for both tile
sizes, chunks whose tile rows are not a multiple of the group (a last group past the chunk),
partial edge tiles in grouped rows (buffered, not direct), pixel blocks that split a group,
the three clamp kinds, the one-permute row split of the padded image (rows of at most 32
floats, the last rows of the image on the 8-float path); each against a float64 NumPy
convolution with fresh random data, built for this machine and for baseline x86-64, and the
same shapes under AddressSanitizer/UBSan with exact-size buffers. End to end: a residual block
on odd planes at batch 1 and 5 against PyTorch.
"""

from __future__ import annotations

import ctypes
import platform
import subprocess
from importlib import resources
from pathlib import Path

import numpy as np
import pytest
import torch

import kiln
from kiln.codegen.c.emitter import RUNTIME_HEADERS
from kiln.codegen.c.packing import gemm_tile
from kiln.codegen.c.winograd_anchor import image_floats, scratch_floats, winograd_weights
from kiln.targets.toolchains import gcc

pytestmark = pytest.mark.skipif(gcc.shutil.which("gcc") is None, reason="needs gcc")
MARCHES = ["native"] + (["x86-64"] if platform.machine() in ("x86_64", "AMD64") else [])
FIELDS = ("C", "H", "W", "KH", "KW", "sh", "sw", "pt", "pl", "dh", "dw", "OH", "OW")
SOURCES = ("kiln_gemm.c", "kiln_winograd.c", "kiln_winograd_pad.c")


class Shape(ctypes.Structure):
    _fields_ = [(name, ctypes.c_int) for name in FIELDS]


def fresh_seed() -> int:
    """A new seed on every run (shown by pytest's assertion rewriting on failure)."""
    return int(np.random.SeedSequence().generate_state(1)[0])


def copy_sources(work: Path) -> None:
    root = resources.files("kiln.codegen.c").joinpath("runtime")
    for name in (*RUNTIME_HEADERS, *SOURCES):
        (work / name).write_text(root.joinpath(name).read_text())


class Lib:
    """The Winograd runtime built for one -march, and its GEMM tile."""

    def __init__(self, work: Path, march: str) -> None:
        copy_sources(work)
        flags = [*gcc.flags(march, 1, False), "-Werror", "-fvisibility=default"]
        out = gcc.compile_c(gcc.find("gcc"), work, list(SOURCES), "libtest.so", flags,
                            shared=True)
        self.dll = ctypes.CDLL(str(out))
        for name in ("kiln_wg_pad", "kiln_winograd_conv"):
            getattr(self.dll, name).restype = None
        for name in ("kiln_wg_image_floats", "kiln_wg_scratch_floats"):
            getattr(self.dll, name).restype = ctypes.c_size_t
        width = gcc.vector_width(gcc.find("gcc"), march) if march == "native" else 4
        self.mr, self.nr = gemm_tile(width)


@pytest.fixture(scope="module", params=MARCHES)
def lib(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Lib:
    return Lib(tmp_path_factory.mktemp(f"wg-groups-{request.param}"), request.param)


def geometry(c: int, h: int, w: int, pad: int) -> dict[str, int]:
    return dict(zip(FIELDS, (c, h, w, 3, 3, 1, 1, pad, pad, 1, 1, h + 2 * pad - 2,
                             w + 2 * pad - 2)))


def reference(x: np.ndarray, w: np.ndarray, bias: np.ndarray | None, pad: int) -> np.ndarray:
    """(Cout, OH*OW) in float64."""
    c, h, wd = x.shape
    xp = np.zeros((c, h + 2 * pad, wd + 2 * pad))
    xp[:, pad:pad + h, pad:pad + wd] = x
    oh, ow = h + 2 * pad - 2, wd + 2 * pad - 2
    out = np.zeros((w.shape[0], oh, ow)) + (0.0 if bias is None else bias[:, None, None])
    for ky in range(3):
        for kx in range(3):
            out += np.einsum("oc,cyx->oyx", w[:, :, ky, kx].astype(np.float64),
                             xp[:, ky:ky + oh, kx:kx + ow])
    return out.reshape(w.shape[0], -1)


def conv(lib: Lib, x: np.ndarray, w: np.ndarray, bias: np.ndarray | None, pad: int, m: int,
         rows: int, cols: tuple[int, int] | None = None, lo: float = -np.inf,
         hi: float = np.inf) -> np.ndarray:
    """Pixels `cols` of the conv through `kiln_wg_pad` + `kiln_winograd_conv`; the output has
    sentinel columns past the pixels and the scratch starts as NaN."""
    geo = geometry(x.shape[0], x.shape[1], x.shape[2], pad)
    shape = Shape(*(geo[f] for f in FIELDS))
    cout = w.shape[0]
    xs = np.full(image_floats(geo, m), np.nan, np.float32)
    assert lib.dll.kiln_wg_image_floats(ctypes.byref(shape), m) == xs.size
    scratch = np.full(scratch_floats(geo, m, cout, rows, lib.mr, lib.nr), np.nan, np.float32)
    assert lib.dll.kiln_wg_scratch_floats(ctypes.byref(shape), m, cout, rows) == scratch.size
    lib.dll.kiln_wg_pad(ctypes.c_void_p(x.ctypes.data), ctypes.byref(shape), m,
                        ctypes.c_void_p(xs.ctypes.data))
    u = winograd_weights(w, m, lib.mr)
    pixels = geo["OH"] * geo["OW"]
    n0, n1 = cols or (0, pixels)
    ldy = pixels + 5
    y = np.full((cout, ldy), -7.0, np.float32)
    lib.dll.kiln_winograd_conv(
        ctypes.c_void_p(xs.ctypes.data), ctypes.byref(shape), m, ctypes.c_void_p(u.ctypes.data),
        cout, None if bias is None else ctypes.c_void_p(bias.ctypes.data),
        ctypes.c_void_p(y.ctypes.data + 4 * n0), ctypes.c_ssize_t(ldy), n0, n1,
        ctypes.c_float(lo), ctypes.c_float(hi), rows, ctypes.c_void_p(scratch.ctypes.data))
    return y


# (Cin, H, W, Cout, padding, m, rows per chunk): tiles a row = ceil(OW / m)
CASES = [
    (16, 16, 16, 16, 1, 4, 4),    # 4 tiles a row, whole plane in one chunk, direct
    (24, 16, 16, 20, 1, 4, 3),    # 4 a row, chunks of 3 tile rows: a group past the chunk
    (17, 15, 15, 16, 1, 4, 2),    # 4 a row with a partial last tile: buffered
    (40, 8, 8, 36, 1, 2, 4),      # F(2,3) 4 a row (ResNet-8's last stage), half-vector pieces
    (19, 7, 7, 23, 1, 2, 3),      # F(2,3) 4 a row, partial tiles, odd chunk
    (16, 32, 32, 16, 1, 4, 8),    # 8 a row (ResNet-8's first stage), direct
    (21, 30, 30, 18, 1, 4, 3),    # 8 a row, partial tiles, odd chunk
    (16, 16, 16, 24, 1, 2, 5),    # F(2,3) 8 a row, odd chunk
    (18, 14, 14, 17, 2, 4, 4),    # padding 2: 4 a row, OW 16
    (20, 18, 18, 16, 0, 4, 2),    # no padding: 4 a row, OW 16
]


@pytest.mark.parametrize("case", CASES, ids=[f"case{i}" for i in range(len(CASES))])
def test_grouped_rows_match_numpy(lib: Lib, case: tuple[int, ...]) -> None:
    c, h, wd, cout, pad, m, rows = case
    rng = np.random.default_rng(fresh_seed())
    x = rng.standard_normal((c, h, wd), dtype=np.float32)
    w = rng.standard_normal((cout, c, 3, 3), dtype=np.float32)
    bias = rng.standard_normal(cout, dtype=np.float32)
    want = reference(x, w, bias, pad)
    pixels = want.shape[1]
    y = conv(lib, x, w, bias, pad, m, rows)
    err = np.abs(y[:, :pixels] - want).max() / np.abs(want).max()
    assert err <= 1e-4, err
    assert (y[:, pixels:] == -7.0).all()  # nothing written past the pixels


@pytest.mark.parametrize("bounds", [(-np.inf, np.inf), (0.0, np.inf), (-0.5, 1.5),
                                    (-np.inf, 0.25)], ids=["none", "relu", "both", "hi"])
@pytest.mark.parametrize("case", [(16, 16, 16, 16, 1, 4, 3), (32, 8, 8, 32, 1, 2, 4),
                                  (16, 32, 32, 16, 1, 4, 8)], ids=["g4", "half", "g8"])
def test_clamp_kinds_and_pixel_blocks(lib: Lib, case: tuple[int, ...],
                                      bounds: tuple[float, float]) -> None:
    """Every clamp kind, bias NULL, and pixel blocks that start or end inside a group."""
    c, h, wd, cout, pad, m, rows = case
    rng = np.random.default_rng(fresh_seed())
    x = rng.standard_normal((c, h, wd), dtype=np.float32)
    w = rng.standard_normal((cout, c, 3, 3), dtype=np.float32)
    lo, hi = bounds
    raw = reference(x, w, None, pad)
    want = np.clip(raw, lo, hi)
    pixels = want.shape[1]
    # the conv's own scale: the clamp caps values, not the rounding error of the ones it keeps
    # (F(4x4, 3x3) here is ~4e-6 of it; measured against the clamped outputs' 1.5, ~1.4e-4)
    scale = np.abs(raw).max()
    for n0, n1 in ((0, pixels), (wd * m, pixels), (3, pixels - wd - 1), (wd + 1, 3 * wd)):
        y = conv(lib, x, w, None, pad, m, rows, cols=(n0, n1), lo=lo, hi=hi)
        assert np.abs(y[:, n0:n1] - want[:, n0:n1]).max() <= 1e-4 * scale
        assert (y[:, :n0] == -7.0).all() and (y[:, n1:] == -7.0).all()


HARNESS = r"""
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include "kiln_winograd.h"

static unsigned long long state = 88172645463325252ULL;
static float rnd(void) { /* xorshift: data the kernel cannot special-case */
    state ^= state << 13, state ^= state >> 7, state ^= state << 17;
    return (float)(state % 2001) / 1000.0f - 1.0f;
}

/* x, the image, the scratch, u and y exactly as large as documented, on the heap, so
 * AddressSanitizer flags any access outside them; zero weights, so every output must be its
 * bias, clamped (the values are checked by the NumPy tests). */
static int one(int C, int H, int W, int pad, int M, int m, int rows, int n0, int n1) {
    const kiln_conv_shape s = {C, H, W, 3, 3, 1, 1, pad, pad, 1, 1, H + 2 * pad - 2,
                               W + 2 * pad - 2};
    const int a2 = (m + 2) * (m + 2), mp = (M + KILN_MR - 1) / KILN_MR * KILN_MR;
    float* x = malloc(sizeof(float) * C * H * W);
    float* xs = malloc(sizeof(float) * kiln_wg_image_floats(&s, m));
    float* scratch = malloc(sizeof(float) * kiln_wg_scratch_floats(&s, m, M, rows));
    float* u = calloc((size_t)a2 * mp * C, sizeof(float));
    float* bias = malloc(sizeof(float) * M);
    float* y = malloc(sizeof(float) * M * (n1 - n0));
    for (int i = 0; i < C * H * W; ++i) x[i] = rnd();
    for (int i = 0; i < M; ++i) bias[i] = rnd();
    kiln_wg_pad(x, &s, m, xs);
    kiln_winograd_conv(xs, &s, m, u, M, bias, y, n1 - n0, n0, n1, -0.5f, 0.5f, rows, scratch);
    int bad = 0;
    for (int o = 0; o < M; ++o)
        for (int p = n0; p < n1; ++p)
            bad += y[(size_t)o * (n1 - n0) + p - n0] != fminf(fmaxf(bias[o], -0.5f), 0.5f);
    free(x), free(xs), free(scratch), free(u), free(bias), free(y);
    return bad;
}

int main(void) {
    /* C, H, W, pad, M, m, rows, n0, n1: the shapes of the grouped paths */
    int bad = one(16, 16, 16, 1, 16, 4, 3, 0, 256);
    bad += one(17, 15, 15, 1, 9, 4, 2, 20, 200);
    bad += one(40, 8, 8, 1, 36, 2, 3, 0, 64);
    bad += one(19, 7, 7, 1, 23, 2, 3, 5, 49);
    bad += one(5, 32, 32, 1, 16, 4, 3, 0, 1024);
    bad += one(21, 30, 30, 1, 18, 4, 3, 31, 899);
    bad += one(3, 16, 16, 1, 24, 2, 5, 0, 256);
    bad += one(18, 14, 14, 2, 17, 4, 4, 0, 256);
    printf("%d\n", bad);
    return 0;
}
"""


def test_grouped_rows_stay_in_bounds_under_asan(tmp_path: Path) -> None:
    """Group loads and stores past the chunk, half-vector pieces, the row buffers of four
    tile rows and the one-permute row split stay inside the documented sizes."""
    copy_sources(tmp_path)
    (tmp_path / "harness.c").write_text(HARNESS)
    flags = [*gcc.flags("native", 1, True), "-Werror"]
    exe = gcc.compile_c(gcc.find("gcc"), tmp_path, [*SOURCES, "harness.c"], "harness", flags,
                        shared=False)
    run = subprocess.run([str(exe)], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["0"]  # zero weights: every output is its clamped bias


class Residual(torch.nn.Module):
    """conv-relu, conv + shortcut, relu: both Winograd epilogues, F(4,3) and F(2,3)."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.a = torch.nn.Conv2d(c, c, 3, padding=1)
        self.b = torch.nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.b(torch.relu(self.a(x))) + x)


@pytest.mark.parametrize("c,hw", [(16, 15), (24, 16), (32, 7), (20, 30)])
@pytest.mark.parametrize("batch", [1, 5])
def test_residual_block_matches_torch(tmp_path: Path, c: int, hw: int, batch: int) -> None:
    torch.manual_seed(fresh_seed())
    net = Residual(c).eval()
    x = torch.randn(batch, c, hw, hw)
    art = kiln.compile(net, x, target="cpu", threads=1, cache_dir=tmp_path)
    kernels = [k["kernel"] for k in art.report()["kernels"]]
    assert sum("winograd" in k for k in kernels) == 2, kernels
    xs = torch.randn(batch, c, hw, hw)
    want = net(xs).detach().numpy()
    got = np.asarray(art(xs.numpy()))
    assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max()

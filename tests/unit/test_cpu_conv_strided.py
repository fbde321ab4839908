"""Strided convolutions on the wide grid: the image split into stride phases (kiln_conv_gemm.h).

A stride-s conv reads padded (oy*s + ky, ox*s + kx); split into s x s phase planes, tap (ky, kx)
is phase (ky%s, kx%s) at (oy + ky/s, ox + kx/s): the wide-grid micro-kernel runs unchanged
with another offset table, and the one pass that splits the image replaces the gather's KH*KW
copies. Kernel level, built for this machine and for baseline x86-64 (a 4x8 tile), against a
float64 NumPy convolution: stride 2 and 3, padding 0/1/2 (and one-sided), odd planes, kernels
wider than the stride and not, conv1d, batch 1/3/64, M not a multiple of MR, bias or none,
clamp; the grid size the code generator allocates against the C macro; exact-size buffers
under AddressSanitizer/UBSan, and the traps for a dilated strided conv and a stride past the
phase tables. End to end: strided nets (relu on store, residual tile, no bias) and ResNet-8
against PyTorch at batch 1, 3 and 64, and a sanitized build on 2 OpenMP threads.
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
from kiln.codegen.c.conv_anchors import WIDE_GROUP, ConvAnchor, grid_floats
from kiln.codegen.c.packing import gemm_tile, pack_panels
from kiln.models import example_inputs, get_model
from kiln.targets.toolchains import gcc
from kiln.testing.runtime_lib import build_runtime_library, build_sanitized_harness

pytestmark = pytest.mark.skipif(gcc.shutil.which("gcc") is None, reason="needs gcc")
MARCHES = ["native"] + (["x86-64"] if platform.machine() in ("x86_64", "AMD64") else [])
FIELDS = ("C", "H", "W", "KH", "KW", "sh", "sw", "pt", "pl", "dh", "dw", "OH", "OW")


def fresh_seed() -> int:
    """A new seed on every run (shown by pytest's assertion rewriting on failure)."""
    return int(np.random.SeedSequence().generate_state(1)[0])


class Shape(ctypes.Structure):
    _fields_ = [(name, ctypes.c_int) for name in FIELDS]


def ptr(a: np.ndarray | None) -> ctypes.c_void_p | None:
    return None if a is None else ctypes.c_void_p(a.ctypes.data)


class Lib:
    """The wide-grid runtime built for one -march, and the GEMM tile it uses."""

    def __init__(self, path: Path, march: str) -> None:
        self.dll = ctypes.CDLL(str(path))
        self.dll.kiln_conv_gemm_wide_batch.restype = None
        width = gcc.vector_width(gcc.find("gcc"), march) if march == "native" else 4
        self.mr, self.nr = gemm_tile(width)


@pytest.fixture(scope="module", params=MARCHES)
def lib(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Lib:
    work = tmp_path_factory.mktemp(f"convstrided-{request.param}")
    out = build_runtime_library(work, request.param, "kiln_conv_gemm_wide_batch")
    return Lib(out, request.param)


def geometry(c: int, h: int, w: int, k: tuple[int, int], s: tuple[int, int],
             p: tuple[int, int, int, int]) -> dict[str, int]:
    """Conv fields for stride s, padding top/left/bottom/right, dilation 1."""
    oh = (h + p[0] + p[2] - k[0]) // s[0] + 1
    ow = (w + p[1] + p[3] - k[1]) // s[1] + 1
    return dict(zip(FIELDS, (c, h, w, *k, *s, p[0], p[1], 1, 1, oh, ow)))


def reference(x: np.ndarray, w: np.ndarray, bias: np.ndarray | None,
              geo: dict[str, int]) -> np.ndarray:
    """(N, Cout, OH*OW) in float64, tap by tap."""
    n, c, h, wd = x.shape
    sh, sw, oh, ow = geo["sh"], geo["sw"], geo["OH"], geo["OW"]
    xp = np.zeros((n, c, h + geo["pt"] + sh * oh + 8, wd + geo["pl"] + sw * ow + 8))
    xp[:, :, geo["pt"]:geo["pt"] + h, geo["pl"]:geo["pl"] + wd] = x
    out = np.zeros((n, w.shape[0], oh, ow))
    if bias is not None:
        out += bias[None, :, None, None]
    for ky in range(geo["KH"]):
        for kx in range(geo["KW"]):
            win = xp[:, :, ky:ky + sh * oh:sh, kx:kx + sw * ow:sw]
            out += np.einsum("oc,ncyx->noyx", w[:, :, ky, kx].astype(np.float64), win)
    return out.reshape(n, w.shape[0], -1)


def run_batch(lib: Lib, x: np.ndarray, w: np.ndarray, bias: np.ndarray | None,
              geo: dict[str, int], lo: float, hi: float) -> np.ndarray:
    """`kiln_conv_gemm_wide_batch` over every image of x: scratch of the size the code
    generator allocates, filled with NaN (every grid float the kernel reads must be written),
    an output filled with NaN with a sentinel past its end."""
    n, cout, k = x.shape[0], w.shape[0], w[0].size
    shape = Shape(*(geo[f] for f in FIELDS))
    scratch = np.full(WIDE_GROUP * geo["C"] * grid_floats(geo) + lib.nr, np.nan, np.float32)
    a = pack_panels(w.reshape(cout, k), lib.mr)
    pixels = geo["OH"] * geo["OW"]
    y = np.full(n * cout * pixels + 7, np.nan, np.float32)
    y[-7:] = -7.0
    lib.dll.kiln_conv_gemm_wide_batch(ptr(x), ctypes.byref(shape), ptr(a), cout, ptr(bias),
                                      ptr(y), n, ctypes.c_float(lo), ctypes.c_float(hi),
                                      ptr(scratch))
    assert (y[-7:] == -7.0).all()
    return y[:-7].reshape(n, cout, pixels)


# (images, C, H, W, Cout, kernel, stride, padding t/l/b/r, bias)
CASES = [
    (64, 16, 32, 32, 32, (3, 3), (2, 2), (1, 1, 1, 1), True),   # ResNet-8 stage 2: 16x16 out
    (3, 32, 16, 16, 64, (3, 3), (2, 2), (1, 1, 1, 1), True),    # stage 3: 8x8 out, shuffles
    (3, 3, 32, 32, 16, (3, 3), (2, 2), (1, 1, 1, 1), False),    # MobileNet stem, no bias
    (1, 5, 9, 11, 7, (3, 3), (2, 2), (1, 1, 1, 1), True),       # batch 1, odd plane
    (3, 4, 13, 12, 9, (3, 3), (2, 2), (0, 0, 0, 0), True),      # no padding, odd H
    (3, 5, 10, 7, 11, (3, 3), (2, 2), (2, 2, 2, 2), True),      # padding 2 (odd phase start)
    (3, 6, 11, 9, 5, (5, 5), (2, 2), (2, 2, 2, 2), True),       # kernel 5: 3 taps per phase
    (3, 6, 14, 13, 5, (3, 3), (3, 3), (1, 1, 1, 1), True),      # stride 3: generic split
    (3, 6, 8, 9, 5, (2, 2), (2, 2), (0, 0, 0, 0), True),        # kernel = stride
    (3, 4, 9, 10, 6, (3, 1), (2, 2), (1, 0, 1, 0), True),       # one column phase
    (3, 4, 10, 9, 6, (3, 3), (2, 1), (1, 2, 0, 1), True),       # strides differ, one-sided
    (3, 5, 1, 37, 11, (1, 4), (1, 2), (0, 1, 0, 2), True),      # conv1d, stride 2
    (64, 3, 5, 5, 4, (3, 3), (2, 2), (1, 1, 1, 1), True),       # 3x3 out: tiles span images
]


@pytest.mark.parametrize("case", CASES, ids=[f"case{i}" for i in range(len(CASES))])
def test_strided_wide_batch_matches_numpy(lib: Lib, case: tuple) -> None:
    n, c, h, wd, cout, k, s, p, has_bias = case
    rng = np.random.default_rng(fresh_seed())
    geo = geometry(c, h, wd, k, s, p)
    assert ConvAnchor.wide_fits(geo, c * k[0] * k[1])
    x = rng.standard_normal((n, c, h, wd), dtype=np.float32)
    w = rng.standard_normal((cout, c, *k), dtype=np.float32)
    bias = rng.standard_normal(cout, dtype=np.float32) if has_bias else None
    want = reference(x, w, bias, geo)
    got = run_batch(lib, x, w, bias, geo, -np.inf, np.inf)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


def test_strided_wide_batch_clamps(lib: Lib) -> None:
    rng = np.random.default_rng(fresh_seed())
    geo = geometry(6, 11, 10, (3, 3), (2, 2), (1, 1, 1, 1))
    x = rng.standard_normal((3, 6, 11, 10), dtype=np.float32)
    w = rng.standard_normal((10, 6, 3, 3), dtype=np.float32)
    bias = rng.standard_normal(10, dtype=np.float32)
    want = np.clip(reference(x, w, bias, geo), -1.5, 2.0)
    got = run_batch(lib, x, w, bias, geo, -1.5, 2.0)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_routing() -> None:
    """Strided convs take the grid unless dilated, 1x1 (the gather reads its one tap from the
    image) or strided past the phase tables."""
    geo = geometry(16, 32, 32, (3, 3), (2, 2), (1, 1, 1, 1))
    assert ConvAnchor.wide_fits(geo, 144)
    assert not ConvAnchor.wide_fits(geometry(16, 32, 32, (1, 1), (2, 2), (0, 0, 0, 0)), 16)
    assert not ConvAnchor.wide_fits({**geo, "dh": 2}, 144)
    assert not ConvAnchor.wide_fits(geometry(4, 40, 40, (5, 5), (5, 5), (0, 0, 0, 0)), 100)


HARNESS = r"""
#include <stdio.h>
#include <stdlib.h>
#include "kiln_conv_gemm.h"

/* Each shape: x, the scratch (exactly KILN_CG_WIDE_BATCH_FLOATS) and y (exactly images *
 * M * pixels) on the heap, so AddressSanitizer flags any access outside them; prints the
 * grid floats per channel (checked against the code generator's) and one output. */
static void one(kiln_conv_shape s, int M, int images) {
    const int K = s.C * s.KH * s.KW, P = s.OH * s.OW;
    const size_t image = (size_t)s.C * s.H * s.W;
    float* x = malloc(sizeof(float) * image * images);
    float* xp = malloc(sizeof(float) * KILN_CG_WIDE_BATCH_FLOATS(&s));
    float* a = calloc((size_t)(M + KILN_MR) * K, sizeof(float));
    float* y = malloc(sizeof(float) * M * P * images);
    for (size_t i = 0; i < image * images; ++i) x[i] = (float)(i % 7) - 3.0f;
    for (int i = 0; i < M * K; ++i) a[i] = (float)(i % 5) - 2.0f;
    kiln_conv_gemm_wide_batch(x, &s, a, M, NULL, y, images, -1e30f, 1e30f, xp);
    printf("%zu %g\n", KILN_CG_GRID(&s), (double)y[M * P * images - 1]);
    free(x), free(xp), free(a), free(y);
}

int main(int argc, char** argv) {
    (void)argv;
    if (argc == 2) { /* dilation with stride: must trap, not return */
        one((kiln_conv_shape){2, 9, 9, 3, 3, 2, 2, 0, 0, 2, 1, 3, 4}, 3, 1);
        return 0;
    }
    if (argc == 3) { /* stride past KILN_CG_WIDE_MAX_STRIDE: must trap */
        one((kiln_conv_shape){2, 20, 20, 5, 5, 5, 5, 0, 0, 1, 1, 4, 4}, 3, 1);
        return 0;
    }
    /* C, H, W, KH, KW, sh, sw, pt, pl, dh, dw, OH, OW */
    one((kiln_conv_shape){16, 32, 32, 3, 3, 2, 2, 1, 1, 1, 1, 16, 16}, 32, 3);
    one((kiln_conv_shape){32, 16, 16, 3, 3, 2, 2, 1, 1, 1, 1, 8, 8}, 20, 3);
    one((kiln_conv_shape){5, 10, 7, 3, 3, 2, 2, 2, 2, 1, 1, 6, 5}, 11, 3);
    one((kiln_conv_shape){4, 13, 12, 3, 3, 2, 2, 0, 0, 1, 1, 6, 5}, 9, 1);
    one((kiln_conv_shape){6, 14, 13, 3, 3, 3, 3, 1, 1, 1, 1, 5, 5}, 5, 2);
    one((kiln_conv_shape){4, 10, 9, 3, 3, 2, 1, 1, 2, 1, 1, 5, 10}, 6, 3);
    one((kiln_conv_shape){3, 5, 5, 3, 3, 2, 2, 1, 1, 1, 1, 3, 3}, 4, 5);
    return 0;
}
"""
HARNESS_SHAPES = [  # the shapes of HARNESS, in order, as `geometry` arguments
    (16, 32, 32, (3, 3), (2, 2), (1, 1, 1, 1)), (32, 16, 16, (3, 3), (2, 2), (1, 1, 1, 1)),
    (5, 10, 7, (3, 3), (2, 2), (2, 2, 2, 2)), (4, 13, 12, (3, 3), (2, 2), (0, 0, 0, 0)),
    (6, 14, 13, (3, 3), (3, 3), (1, 1, 1, 1)), (4, 10, 9, (3, 3), (2, 1), (1, 2, 0, 1)),
    (3, 5, 5, (3, 3), (2, 2), (1, 1, 1, 1)),
]


def test_strided_in_bounds_under_asan_and_traps(tmp_path: Path) -> None:
    """The phase split and the loads stay inside the exact scratch the header sizes (which
    the code generator's `grid_floats` must match), no store leaves y; a dilated strided
    conv and a stride past the phase tables trap."""
    exe = build_sanitized_harness(tmp_path, HARNESS, "kiln_conv_gemm_wide_batch")
    run = subprocess.run([str(exe)], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    grids = [int(line.split()[0]) for line in run.stdout.splitlines()]
    assert grids == [grid_floats(geometry(*shape)) for shape in HARNESS_SHAPES]
    for extra in (["dilated"], ["stride", "5"]):
        trap = subprocess.run([str(exe), *extra], capture_output=True, text=True, timeout=60)
        assert trap.returncode != 0 and trap.stdout == ""


class Strided(torch.nn.Module):
    """Stride-2 convs with relu on store (whole images), a residual epilogue (per image, tile)
    and no bias, padding 0, 1 and 2, on odd planes; the residual is a 1x1 stride-2 conv,
    which stays on the gather (its 10-pixel output rows: a copy of 8 then an overlapping
    one)."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = torch.nn.Conv2d(3, 12, 3, stride=2, padding=1)
        self.c2 = torch.nn.Conv2d(12, 12, 3, stride=1, padding=1, bias=False)
        self.c3 = torch.nn.Conv2d(12, 16, 5, stride=2, padding=2, bias=False)
        self.sc = torch.nn.Conv2d(12, 16, 1, stride=2)
        self.c4 = torch.nn.Conv2d(16, 16, 3, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.c1(x))
        y = torch.relu(self.c2(y) + y)
        y = self.c3(y) + self.sc(y)
        return self.c4(y) * 0.5 + 1.0


SHAPE = (3, 41, 37)  # c1: 21 x 19, c3 and sc: 11 x 10, c4: 5 x 4


def check_net(net: torch.nn.Module, shape: tuple[int, ...], tmp_path: Path) -> list[str]:
    """Compiles `net` at batch 1, 3 and 64 and checks each against PyTorch; the kernel notes."""
    notes: list[str] = []
    for batch in (1, 3, 64):
        x = torch.randn(batch, *shape)
        art = kiln.compile(net, x, target="cpu", cache_dir=tmp_path)
        notes = [k["kernel"] for k in art.report()["kernels"]]
        for _ in range(2):
            xs = torch.randn(batch, *shape)
            with torch.no_grad():
                want = net(xs).numpy()
            got = np.asarray(art(xs.numpy()))
            assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max()
    return notes


def test_strided_net_matches_torch(tmp_path: Path) -> None:
    torch.manual_seed(fresh_seed() % (1 << 31))
    notes = check_net(Strided().eval(), SHAPE, tmp_path)
    wide = [k for k in notes if "conv wide implicit gemm" in k]
    assert len(wide) == 4 and sum("(whole images)" in k for k in wide) >= 1
    assert sum(k.startswith("conv implicit gemm") for k in notes) == 1  # sc


def test_strided_net_sanitized_with_threads(tmp_path: Path) -> None:
    torch.manual_seed(fresh_seed() % (1 << 31))
    net = Strided().eval()
    x = torch.randn(5, *SHAPE)
    art = kiln.compile(net, x, target="cpu", threads=2, sanitize=True, cache_dir=tmp_path,
                       parallel_min_flops=0)
    notes = [k["kernel"] for k in art.report()["kernels"]]
    assert sum("conv wide implicit gemm" in k for k in notes) == 4
    assert sum(k.startswith("conv implicit gemm") for k in notes) == 1
    for _ in range(2):
        xs = torch.randn(5, *SHAPE)
        with torch.no_grad():
            want = net(xs).numpy()
        got = np.asarray(art(xs.numpy()))
        assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max()


@pytest.mark.parametrize("name", ["resnet8", "mobilenet_v2ish"])
def test_models_with_strided_convs_match_torch(name: str, tmp_path: Path) -> None:
    model = get_model(name).eval()
    for batch in (1, 3, 64):
        x = example_inputs(name, batch=batch, seed=fresh_seed() % (1 << 30))
        art = kiln.compile(model, x, target="cpu", cache_dir=tmp_path)
        if name == "resnet8":  # the two stride-2 3x3 convs; the 1x1 shortcuts gather
            notes = [k["kernel"] for k in art.report()["kernels"]]
            assert sum("conv wide implicit gemm" in k for k in notes) == 3  # and the stem
        with torch.no_grad():
            want = model(*x).numpy()
        got = np.asarray(art(*(t.numpy() for t in x)))
        assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max()

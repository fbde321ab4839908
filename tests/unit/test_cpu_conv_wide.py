"""The wide-grid convolution over whole images (`kiln_conv_gemm_wide_batch`, kiln_conv_gemm.h).

Kernel level, built for this machine and for baseline x86-64 (4-lane vectors, a 4x8 tile):
several images in one call against a float64 NumPy convolution, on the shapes where tiles run
from one image into the next and vectors skip the padding columns of small planes (4x4, 8x8,
10x10, odd 5x7, OW = 1, conv1d, dilation), batch 1, 3 and 64, M not a multiple of MR, bias
or none, clamp. Exact-size buffers under AddressSanitizer/UBSan, and the guard that traps on
a K past the offset table instead of returning with the output unwritten. End to end: the
digits CNN, LeNet-5 and ResNet-8 against PyTorch at batch 1, 3 and 64, and a net mixing
whole-image convs with per-image residual epilogues on 2 OpenMP threads, sanitized.
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
from kiln.codegen.c.conv_anchors import WIDE_GROUP, padded_dims
from kiln.codegen.c.packing import gemm_tile, pack_panels
from kiln.models import example_inputs, get_model
from kiln.targets.toolchains import gcc
from kiln.testing.runtime_lib import build_runtime_library, build_sanitized_harness

pytestmark = pytest.mark.skipif(gcc.shutil.which("gcc") is None, reason="needs gcc")
MARCHES = ["native"] + (["x86-64"] if platform.machine() in ("x86_64", "AMD64") else [])
FIELDS = ("C", "H", "W", "KH", "KW", "sh", "sw", "pt", "pl", "dh", "dw", "OH", "OW")
CALLS = ("kiln_conv_gemm_wide_batch",)


class Shape(ctypes.Structure):
    _fields_ = [(name, ctypes.c_int) for name in FIELDS]


def ptr(a: np.ndarray | None) -> ctypes.c_void_p | None:
    return None if a is None else ctypes.c_void_p(a.ctypes.data)


class Lib:
    """kiln_gemm.c + kiln_conv_gemm.c built for one -march, and the GEMM tile it uses."""

    def __init__(self, path: Path, march: str) -> None:
        self.dll = ctypes.CDLL(str(path))
        self.dll.kiln_conv_gemm_wide_batch.restype = None
        width = gcc.vector_width(gcc.find("gcc"), march) if march == "native" else 4
        self.mr, self.nr = gemm_tile(width)


@pytest.fixture(scope="module", params=MARCHES)
def lib(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Lib:
    work = tmp_path_factory.mktemp(f"convwide-{request.param}")
    out = build_runtime_library(work, request.param, *CALLS)
    return Lib(out, request.param)


def geometry(c: int, h: int, w: int, k: tuple[int, int], p: tuple[int, int, int, int],
             d: tuple[int, int]) -> dict[str, int]:
    """Stride-1 conv fields (padding top/left/bottom/right)."""
    oh = h + p[0] + p[2] - d[0] * (k[0] - 1)
    ow = w + p[1] + p[3] - d[1] * (k[1] - 1)
    return dict(zip(FIELDS, (c, h, w, *k, 1, 1, p[0], p[1], *d, oh, ow)))


def reference(x: np.ndarray, w: np.ndarray, bias: np.ndarray | None,
              geo: dict[str, int]) -> np.ndarray:
    """(N, Cout, OH*OW) in float64, tap by tap."""
    n, c, h, wd = x.shape
    xp = np.zeros((n, c, h + geo["pt"] + 64, wd + geo["pl"] + 64))
    xp[:, :, geo["pt"]:geo["pt"] + h, geo["pl"]:geo["pl"] + wd] = x
    out = np.zeros((n, w.shape[0], geo["OH"], geo["OW"]))
    if bias is not None:
        out += bias[None, :, None, None]
    for ky in range(geo["KH"]):
        for kx in range(geo["KW"]):
            y0, x0 = ky * geo["dh"], kx * geo["dw"]
            win = xp[:, :, y0:y0 + geo["OH"], x0:x0 + geo["OW"]]
            out += np.einsum("oc,ncyx->noyx", w[:, :, ky, kx].astype(np.float64), win)
    return out.reshape(n, w.shape[0], -1)


def run_batch(lib: Lib, x: np.ndarray, w: np.ndarray, bias: np.ndarray | None,
              geo: dict[str, int], lo: float, hi: float) -> np.ndarray:
    """`kiln_conv_gemm_wide_batch` over every image of x, into an output filled with NaN
    (every float must be written) with a sentinel past its end (none may be)."""
    n, cout, k = x.shape[0], w.shape[0], w[0].size
    shape = Shape(*(geo[f] for f in FIELDS))
    hp, wp = padded_dims(geo)
    scratch = np.full(WIDE_GROUP * geo["C"] * hp * wp + lib.nr, np.nan, np.float32)
    a = pack_panels(w.reshape(cout, k), lib.mr)
    pixels = geo["OH"] * geo["OW"]
    y = np.full(n * cout * pixels + 7, np.nan, np.float32)
    y[-7:] = -7.0
    lib.dll.kiln_conv_gemm_wide_batch(ptr(x), ctypes.byref(shape), ptr(a), cout, ptr(bias),
                                      ptr(y), n, ctypes.c_float(lo), ctypes.c_float(hi),
                                      ptr(scratch))
    assert (y[-7:] == -7.0).all()
    return y[:-7].reshape(n, cout, pixels)


# (images, C, H, W, Cout, kernel, padding t/l/b/r, dilation, bias)
CASES = [
    (64, 8, 4, 4, 16, (3, 3), (1, 1, 1, 1), (1, 1), True),    # digits conv2: one vector/image
    (3, 6, 14, 14, 16, (5, 5), (0, 0, 0, 0), (1, 1), True),   # LeNet conv2: 7 vectors/image
    (3, 1, 28, 28, 6, (5, 5), (2, 2, 2, 2), (1, 1), True),    # LeNet conv1: K = 25
    (1, 16, 8, 8, 21, (3, 3), (1, 1, 1, 1), (1, 1), False),   # batch 1, M % MR != 0
    (3, 5, 5, 7, 9, (3, 3), (1, 1, 1, 1), (1, 1), True),      # odd plane 5x7
    (3, 3, 6, 3, 8, (3, 3), (0, 0, 0, 0), (1, 1), True),      # OW = 1
    (3, 4, 9, 11, 5, (3, 3), (3, 2, 0, 0), (3, 2), True),     # dilation, one-sided padding
    (3, 5, 1, 37, 11, (1, 4), (0, 2, 0, 1), (1, 1), True),    # conv1d
    (3, 2, 2, 2, 3, (3, 3), (2, 2, 2, 2), (1, 1), True),      # 2x2 input, 4x4 output
    (64, 3, 33, 34, 4, (3, 3), (1, 1, 1, 1), (1, 1), True),   # wide rows: no shuffle
]


@pytest.mark.parametrize("case", CASES, ids=[f"case{i}" for i in range(len(CASES))])
def test_wide_batch_matches_numpy(lib: Lib, case: tuple) -> None:
    n, c, h, wd, cout, k, p, d, has_bias = case
    rng = np.random.default_rng()
    geo = geometry(c, h, wd, k, p, d)
    x = rng.standard_normal((n, c, h, wd), dtype=np.float32)
    w = rng.standard_normal((cout, c, *k), dtype=np.float32)
    bias = rng.standard_normal(cout, dtype=np.float32) if has_bias else None
    want = reference(x, w, bias, geo)
    got = run_batch(lib, x, w, bias, geo, -np.inf, np.inf)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


def test_wide_batch_clamps(lib: Lib) -> None:
    rng = np.random.default_rng()
    geo = geometry(6, 10, 10, (3, 3), (1, 1, 1, 1), (1, 1))
    x = rng.standard_normal((3, 6, 10, 10), dtype=np.float32)
    w = rng.standard_normal((10, 6, 3, 3), dtype=np.float32)
    bias = rng.standard_normal(10, dtype=np.float32)
    want = np.clip(reference(x, w, bias, geo), -1.5, 2.0)
    got = run_batch(lib, x, w, bias, geo, -1.5, 2.0)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


HARNESS = r"""
#include <stdio.h>
#include <stdlib.h>
#include "kiln_conv_gemm.h"

/* Each shape: x, the scratch (exactly KILN_CG_WIDE_BATCH_FLOATS) and y (exactly images *
 * M * pixels) on the heap, so AddressSanitizer flags any access outside them. */
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
    printf("%g\n", (double)y[M * P * images - 1]);
    free(x), free(xp), free(a), free(y);
}

int main(int argc, char** argv) {
    (void)argv;
    if (argc > 1) { /* K past the offset table: must trap, not return */
        one((kiln_conv_shape){KILN_CG_WIDE_MAXK, 1, 2, 1, 2, 1, 1, 0, 0, 1, 1, 1, 1}, 3, 1);
        return 0;
    }
    /* C, H, W, KH, KW, sh, sw, pt, pl, dh, dw, OH, OW */
    one((kiln_conv_shape){8, 4, 4, 3, 3, 1, 1, 1, 1, 1, 1, 4, 4}, 16, 5);
    one((kiln_conv_shape){6, 14, 14, 5, 5, 1, 1, 0, 0, 1, 1, 10, 10}, 16, 3);
    one((kiln_conv_shape){3, 6, 3, 3, 3, 1, 1, 0, 0, 1, 1, 4, 1}, 5, 3);
    one((kiln_conv_shape){2, 12, 14, 3, 3, 1, 1, 3, 2, 3, 2, 9, 10}, 9, 1);
    one((kiln_conv_shape){5, 1, 37, 1, 4, 1, 1, 0, 2, 1, 1, 1, 37}, 11, 2);
    one((kiln_conv_shape){3, 33, 34, 3, 3, 1, 1, 1, 1, 1, 1, 33, 34}, 4, 3);
    return 0;
}
"""


def test_wide_batch_in_bounds_under_asan_and_traps_past_max_k(tmp_path: Path) -> None:
    """Loads run up to NR floats past the last padded image of a group: the scratch size of
    the header must cover them, and no store may leave y. A K past KILN_CG_WIDE_MAXK traps."""
    exe = build_sanitized_harness(tmp_path, HARNESS, *CALLS)
    run = subprocess.run([str(exe)], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert len(run.stdout.split()) == 6
    trap = subprocess.run([str(exe), "trap"], capture_output=True, text=True, timeout=60)
    assert trap.returncode != 0 and trap.stdout == ""


@pytest.mark.parametrize("name", ["digits_cnn", "lenet5", "resnet8"])
def test_models_match_torch_at_batch_1_3_64(name: str, tmp_path: Path) -> None:
    model = get_model(name).eval()
    for batch in (1, 3, 64):
        x = example_inputs(name, batch=batch, seed=int(np.random.default_rng().integers(1 << 30)))
        art = kiln.compile(model, x, target="cpu", cache_dir=tmp_path)
        kernels = " ".join(k["kernel"] for k in art.report()["kernels"])
        if name != "resnet8":  # its 3x3 convs run Winograd, its 1x1 shortcuts a plain GEMM
            assert "conv wide implicit gemm (whole images)" in kernels
        with torch.no_grad():
            want = model(*x).numpy()
        got = np.asarray(art(*(t.numpy() for t in x)))
        assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max()


class Mixed(torch.nn.Module):
    """Whole-image wide convs (clamp or no epilogue) next to per-image ones (residual tile);
    no 3x3 kernels, which may run Winograd instead."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = torch.nn.Conv2d(3, 10, (3, 5), padding=(1, 2))
        self.c2 = torch.nn.Conv2d(10, 10, (5, 3), padding=(2, 1), bias=False)
        self.c3 = torch.nn.Conv2d(10, 7, (3, 5), padding=(0, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.c1(x))
        y = torch.relu(self.c2(y) + y)
        return self.c3(y)


def test_mixed_schemes_sanitized_with_threads(tmp_path: Path) -> None:
    """2 OpenMP threads (blocks of images, a padded scratch per thread) and per-image residual
    epilogues in one sanitized build; batch 5 splits 3 + 2 images."""
    torch.manual_seed(int(np.random.default_rng().integers(1 << 30)))
    net = Mixed().eval()
    x = torch.randn(5, 3, 7, 9)
    art = kiln.compile(net, x, target="cpu", threads=2, sanitize=True, cache_dir=tmp_path,
                       parallel_min_flops=0)
    notes = [k["kernel"] for k in art.report()["kernels"]]
    assert sum("(whole images)" in k for k in notes) == 2
    assert any("conv wide implicit gemm, epilogue add+relu" in k for k in notes)
    for _ in range(2):
        xs = torch.randn(5, 3, 7, 9)
        with torch.no_grad():
            want = net(xs).numpy()
        got = np.asarray(art(xs.numpy()))
        assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max()

"""The wide-grid conv's walk over output pixels and its tap offset table (kiln_conv_gemm.c).

`kiln_wide_next` cuts the output pixels into vectors of at most WL lanes spanning at most
2 * WL grid columns and gives each lane its grid column; `kiln_wide_offsets` gives each of the
K rows its offset on the (phase-split) grid. Both were rewritten for batch-1 latency (the lane
indices from the row starts in vector registers instead of a pixel-by-pixel loop through
memory, the divisions of the offset table per row and column instead of per tap), so this file
sweeps random geometries across the cases that shape the walk: output rows narrower than a
vector (several row starts in one vector), about one or two vectors wide, wider grids than
output rows (padding, strides 1-3, dilation), pixel ranges [n0, n1) that start and end inside
a row (the threaded split's `kiln_conv_gemm_wide`), and several images per call. Each result
is checked against a float64 NumPy convolution (fresh seeds; rel. error <= 1e-4), built for this
machine and for baseline x86-64 (4-lane vectors), and the same sweep runs as a C harness under
AddressSanitizer/UBSan with exact-size buffers.
"""

from __future__ import annotations

import ctypes
import platform
import subprocess
from pathlib import Path

import numpy as np
import pytest

from kiln.codegen.c.conv_anchors import WIDE_GROUP, grid_floats
from kiln.codegen.c.packing import gemm_tile, pack_panels
from kiln.targets.toolchains import gcc
from kiln.testing.runtime_lib import build_runtime_library, build_sanitized_harness

pytestmark = pytest.mark.skipif(gcc.shutil.which("gcc") is None, reason="needs gcc")
MARCHES = ["native"] + (["x86-64"] if platform.machine() in ("x86_64", "AMD64") else [])
FIELDS = ("C", "H", "W", "KH", "KW", "sh", "sw", "pt", "pl", "dh", "dw", "OH", "OW")
CALLS = ("kiln_conv_gemm_wide_batch", "kiln_conv_gemm_wide", "kiln_conv_gemm_pad_wide")


class Shape(ctypes.Structure):
    _fields_ = [(name, ctypes.c_int) for name in FIELDS]


def ptr(a: np.ndarray | None) -> ctypes.c_void_p | None:
    return None if a is None else ctypes.c_void_p(a.ctypes.data)


def fresh_seed() -> int:
    """A new seed on every run (shown by pytest's assertion rewriting on failure)."""
    return int(np.random.SeedSequence().generate_state(1)[0])


class Lib:
    """The wide-grid entry points built for one -march, and the GEMM tile it uses."""

    def __init__(self, path: Path, march: str) -> None:
        self.dll = ctypes.CDLL(str(path))
        for name in CALLS:
            getattr(self.dll, name).restype = None
        width = gcc.vector_width(gcc.find("gcc"), march) if march == "native" else 4
        self.mr, self.nr = gemm_tile(width)


@pytest.fixture(scope="module", params=MARCHES)
def lib(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Lib:
    work = tmp_path_factory.mktemp(f"widewalk-{request.param}")
    return Lib(build_runtime_library(work, request.param, *CALLS), request.param)


def random_geometry(rng: np.random.Generator) -> dict[str, int]:
    """A conv the wide scheme takes: stride 1-3 (dilation only with stride 1), padding 0-2 on
    each side, kernels 1-5, planes from 1 to 40 columns (output rows from 1 pixel to over two
    vectors of AVX-512), 1-3 channels."""
    kh, kw = (int(v) for v in rng.integers(1, 6, 2))
    sh, sw = (int(v) for v in rng.integers(1, 4, 2))
    dh, dw = (int(v) for v in rng.integers(1, 3, 2)) if sh == sw == 1 else (1, 1)
    pt, pl, pb, pr = (int(v) for v in rng.integers(0, 3, 4))
    h = int(rng.integers(max(1, dh * (kh - 1) + 1 - pt - pb), 24))
    w = int(rng.integers(max(1, dw * (kw - 1) + 1 - pl - pr), 41))
    oh = (h + pt + pb - dh * (kh - 1) - 1) // sh + 1
    ow = (w + pl + pr - dw * (kw - 1) - 1) // sw + 1
    c = int(rng.integers(1, 4))
    return dict(zip(FIELDS, (c, h, w, kh, kw, sh, sw, pt, pl, dh, dw, oh, ow)))


def reference(x: np.ndarray, w: np.ndarray, bias: np.ndarray,
              geo: dict[str, int]) -> np.ndarray:
    """(N, Cout, OH*OW) in float64, tap by tap."""
    n, c, h, wd = x.shape
    sh, sw, oh, ow = geo["sh"], geo["sw"], geo["OH"], geo["OW"]
    span_h = (oh - 1) * sh + (geo["KH"] - 1) * geo["dh"] + 1
    span_w = (ow - 1) * sw + (geo["KW"] - 1) * geo["dw"] + 1
    xp = np.zeros((n, c, max(h + geo["pt"], span_h), max(wd + geo["pl"], span_w)))
    xp[:, :, geo["pt"]:geo["pt"] + h, geo["pl"]:geo["pl"] + wd] = x
    out = np.zeros((n, w.shape[0], oh, ow)) + bias[None, :, None, None]
    for ky in range(geo["KH"]):
        for kx in range(geo["KW"]):
            y0, x0 = ky * geo["dh"], kx * geo["dw"]
            win = xp[:, :, y0:y0 + (oh - 1) * sh + 1:sh, x0:x0 + (ow - 1) * sw + 1:sw]
            out += np.einsum("oc,ncyx->noyx", w[:, :, ky, kx].astype(np.float64), win)
    return out.reshape(n, w.shape[0], -1)


def close(got: np.ndarray, want: np.ndarray) -> bool:
    return bool(np.abs(got - want).max() <= 1e-4 * max(np.abs(want).max(), 1.0))


def test_random_geometries_whole_images(lib: Lib) -> None:
    """`kiln_conv_gemm_wide_batch` on 1-5 images: every output written (NaN-filled), none past
    the end (sentinel), values as NumPy's."""
    seed = fresh_seed()
    rng = np.random.default_rng(seed)
    for case in range(60):
        geo = random_geometry(rng)
        n, cout = int(rng.integers(1, 6)), int(rng.integers(1, 2 * lib.mr + 2))
        k = geo["C"] * geo["KH"] * geo["KW"]
        x = rng.standard_normal((n, geo["C"], geo["H"], geo["W"]), dtype=np.float32)
        w = rng.standard_normal((cout, geo["C"], geo["KH"], geo["KW"]), dtype=np.float32)
        bias = rng.standard_normal(cout, dtype=np.float32)
        scratch = np.full(WIDE_GROUP * geo["C"] * grid_floats(geo) + lib.nr, np.nan,
                          np.float32)
        pixels = geo["OH"] * geo["OW"]
        y = np.full(n * cout * pixels + 7, np.nan, np.float32)
        y[-7:] = -7.0
        a = pack_panels(w.reshape(cout, k), lib.mr)  # a name keeps it alive during the call
        lib.dll.kiln_conv_gemm_wide_batch(
            ptr(x), ctypes.byref(Shape(*(geo[f] for f in FIELDS))), ptr(a), cout, ptr(bias),
            ptr(y), n, ctypes.c_float(-np.inf), ctypes.c_float(np.inf), ptr(scratch))
        assert (y[-7:] == -7.0).all(), (seed, case, geo)
        got = y[:-7].reshape(n, cout, pixels)
        assert close(got, reference(x, w, bias, geo)), (seed, case, geo)


def test_random_pixel_ranges(lib: Lib) -> None:
    """`kiln_conv_gemm_wide` on pixels [n0, n1) of one padded image (a thread's share): the
    range's first and last vectors start and end inside output rows; columns outside the
    range stay untouched."""
    seed = fresh_seed()
    rng = np.random.default_rng(seed)
    for case in range(60):
        geo = random_geometry(rng)
        cout = int(rng.integers(1, 2 * lib.mr + 2))
        k = geo["C"] * geo["KH"] * geo["KW"]
        x = rng.standard_normal((1, geo["C"], geo["H"], geo["W"]), dtype=np.float32)
        w = rng.standard_normal((cout, geo["C"], geo["KH"], geo["KW"]), dtype=np.float32)
        bias = rng.standard_normal(cout, dtype=np.float32)
        shape = ctypes.byref(Shape(*(geo[f] for f in FIELDS)))
        xp = np.full(geo["C"] * grid_floats(geo) + lib.nr, np.nan, np.float32)
        lib.dll.kiln_conv_gemm_pad_wide(ptr(x), shape, geo["C"], ptr(xp))
        pixels = geo["OH"] * geo["OW"]
        n0 = int(rng.integers(0, pixels))
        n1 = int(rng.integers(n0 + 1, pixels + 1))
        y = np.full((cout, pixels), -7.0, np.float32)
        a = pack_panels(w.reshape(cout, k), lib.mr)
        lib.dll.kiln_conv_gemm_wide(ptr(xp), shape, ptr(a), cout, ptr(bias),
                                    ctypes.c_void_p(y.ctypes.data + 4 * n0),
                                    ctypes.c_ssize_t(pixels), n0, n1,
                                    ctypes.c_float(-np.inf), ctypes.c_float(np.inf))
        want = reference(x, w, bias, geo)[0]
        assert close(y[:, n0:n1], want[:, n0:n1]), (seed, case, geo, n0, n1)
        assert (y[:, :n0] == -7.0).all() and (y[:, n1:] == -7.0).all(), (seed, case, geo)


HARNESS = r"""
#include <stdio.h>
#include <stdlib.h>
#include "kiln_conv_gemm.h"

static unsigned next(unsigned* s) { *s = *s * 1103515245u + 12345u; return (*s >> 8) % 65536u; }
static int pick(unsigned* s, int lo, int hi) { return lo + (int)(next(s) % (unsigned)(hi - lo)); }

/* Random geometries as in the Python sweep; x, the scratch (exactly
 * KILN_CG_WIDE_BATCH_FLOATS), the padded image of the range call (exactly C * GRID + SLACK)
 * and y (exactly images * M * pixels) on the heap, so AddressSanitizer flags any access
 * outside them. */
int main(int argc, char** argv) {
    unsigned seed = argc > 1 ? (unsigned)strtoul(argv[1], NULL, 10) : 1u;
    double sum = 0.0;
    for (int t = 0; t < 300; ++t) {
        kiln_conv_shape s;
        s.KH = pick(&seed, 1, 6), s.KW = pick(&seed, 1, 6);
        s.sh = pick(&seed, 1, 4), s.sw = pick(&seed, 1, 4);
        s.dh = s.dw = 1;
        if (s.sh == 1 && s.sw == 1) s.dh = pick(&seed, 1, 3), s.dw = pick(&seed, 1, 3);
        s.pt = pick(&seed, 0, 3), s.pl = pick(&seed, 0, 3);
        const int pb = pick(&seed, 0, 3), pr = pick(&seed, 0, 3);
        const int hmin = s.dh * (s.KH - 1) + 1 - s.pt - pb;
        const int wmin = s.dw * (s.KW - 1) + 1 - s.pl - pr;
        s.H = pick(&seed, hmin > 1 ? hmin : 1, 24), s.W = pick(&seed, wmin > 1 ? wmin : 1, 41);
        s.OH = (s.H + s.pt + pb - s.dh * (s.KH - 1) - 1) / s.sh + 1;
        s.OW = (s.W + s.pl + pr - s.dw * (s.KW - 1) - 1) / s.sw + 1;
        s.C = pick(&seed, 1, 4);
        const int M = pick(&seed, 1, 2 * KILN_MR + 2), images = pick(&seed, 1, 6);
        const int K = s.C * s.KH * s.KW, P = s.OH * s.OW;
        const size_t image = (size_t)s.C * s.H * s.W;
        float* x = malloc(sizeof(float) * image * images);
        float* xp = malloc(sizeof(float) * KILN_CG_WIDE_BATCH_FLOATS(&s));
        float* xq = malloc(sizeof(float) * (s.C * KILN_CG_GRID(&s) + KILN_CG_WIDE_SLACK));
        float* a = calloc((size_t)(M + KILN_MR) * K, sizeof(float));
        float* y = malloc(sizeof(float) * M * P * images);
        for (size_t i = 0; i < image * images; ++i) x[i] = (float)(i % 7) - 3.0f;
        for (int i = 0; i < M * K; ++i) a[i] = (float)(i % 5) - 2.0f;
        kiln_conv_gemm_wide_batch(x, &s, a, M, NULL, y, images, -1e30f, 1e30f, xp);
        sum += y[M * P * images - 1];
        const int n0 = pick(&seed, 0, P), n1 = pick(&seed, n0 + 1, P + 1);
        kiln_conv_gemm_pad_wide(x, &s, s.C, xq);
        kiln_conv_gemm_wide(xq, &s, a, M, NULL, y + n0, P, n0, n1, -1e30f, 1e30f);
        sum += y[n1 - 1];
        free(x), free(xp), free(xq), free(a), free(y);
    }
    printf("%g\n", sum);
    return 0;
}
"""


def test_random_geometries_in_bounds_under_asan(tmp_path: Path) -> None:
    """No load or store outside exact-size buffers on 300 random geometries per seed, both
    entry points, under AddressSanitizer and UBSan."""
    exe = build_sanitized_harness(tmp_path, HARNESS, *CALLS)
    for seed in (fresh_seed() % 100000, fresh_seed() % 100000):
        run = subprocess.run([str(exe), str(seed)], capture_output=True, text=True,
                             timeout=120)
        assert run.returncode == 0, (seed, run.stderr)
        assert len(run.stdout.split()) == 1

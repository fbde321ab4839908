"""The GEMM row tiles (kiln_gemm_tile.h): every row count through kiln_sgemm and
kiln_sgemm_bpanel.

Only MR, 4, 2 and 1 rows have a tile kernel of their own (compile time: see the header); any
other remainder of a panel runs as a sum of those. So every row count from 1 to 2*MR+1 is
compared here with a float64 NumPy product, for both kernel files, on this machine and on
baseline x86-64 (4x8 tile) — packed and strided A, packed, strided and padded B, narrow and
full column panels, accumulation onto C over two blocks of K, bias, clamp — plus an
AddressSanitizer harness with exact-size heap buffers, so a remainder tile that read or wrote
a row past M would be caught.
"""

from __future__ import annotations

import ctypes
import platform
import subprocess
from pathlib import Path

import numpy as np
import pytest

from kiln.codegen.c.packing import gemm_tile, pack_panels
from kiln.targets.toolchains import gcc
from kiln.testing.runtime_lib import build_runtime_library, build_sanitized_harness

pytestmark = pytest.mark.skipif(gcc.shutil.which("gcc") is None, reason="needs gcc")
MARCHES = ["native"] + (["x86-64"] if platform.machine() in ("x86_64", "AMD64") else [])
CALLS = ("kiln_sgemm", "kiln_sgemm_bpanel")
F = ctypes.POINTER(ctypes.c_float)


class GemmArgs(ctypes.Structure):
    """`kiln_gemm_args` (kiln_gemm.h)."""

    _fields_ = [("M", ctypes.c_int), ("N", ctypes.c_int), ("K", ctypes.c_int),
                ("A", ctypes.c_void_p), ("lda", ctypes.c_ssize_t), ("a_packed", ctypes.c_int),
                ("B", ctypes.c_void_p), ("ldb", ctypes.c_ssize_t), ("b_packed", ctypes.c_int),
                ("b_padded", ctypes.c_int), ("C", ctypes.c_void_p), ("ldc", ctypes.c_ssize_t),
                ("bias_row", ctypes.c_void_p), ("bias_col", ctypes.c_void_p),
                ("lo", ctypes.c_float), ("hi", ctypes.c_float)]


def ptr(a: np.ndarray | None) -> ctypes.c_void_p | None:
    return None if a is None else ctypes.c_void_p(a.ctypes.data)


def addr(a: np.ndarray | None) -> int | None:
    """An array's address for a pointer field of `GemmArgs`."""
    return None if a is None else int(a.ctypes.data)


class Lib:
    """kiln_gemm.c and kiln_gemm_bpanel.c built for one -march, and the tile they use."""

    def __init__(self, path: Path, march: str) -> None:
        self.dll = ctypes.CDLL(str(path))
        self.dll.kiln_sgemm.restype = None
        self.dll.kiln_sgemm_bpanel.restype = None
        width = gcc.vector_width(gcc.find("gcc"), march) if march == "native" else 4
        self.mr, self.nr = gemm_tile(width)


@pytest.fixture(scope="module", params=MARCHES)
def lib(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Lib:
    work = tmp_path_factory.mktemp(f"gemmtiles-{request.param}")
    out = build_runtime_library(work, request.param, *CALLS)
    return Lib(out, request.param)


def close(got: np.ndarray, want: np.ndarray) -> bool:
    return bool(np.abs(got - want).max() <= 1e-5 * max(np.abs(want).max(), 1.0))


@pytest.mark.parametrize("n_kind", ["narrow", "half", "full"])
def test_bpanel_every_row_count(lib: Lib, n_kind: str) -> None:
    """kiln_sgemm_bpanel over two blocks of K (the second accumulates onto C and applies
    bias and clamp), for every M up to 2*MR+1, into a C wider than the panel (columns past
    nc must keep their value)."""
    rng = np.random.default_rng()
    mr, nr = lib.mr, lib.nr
    nc = {"narrow": nr // 2 - 1, "half": nr // 2 + 1, "full": nr}[n_kind]
    width = nr if nc > nr // 2 else nr // 2  # KILN_GEMM_PANEL(nc)
    k, k1 = 23, 9
    for m in range(1, 2 * mr + 2):
        a = rng.standard_normal((m, k)).astype(np.float32)
        b = rng.standard_normal((k, nc)).astype(np.float32)
        bias = rng.standard_normal(m).astype(np.float32)
        packed = pack_panels(a, mr)
        ldc = nc + 3
        c = np.full((m, ldc), -7.0, np.float32)
        for k0, kc, load_c, br, lo, hi in ((0, k1, 0, None, -np.inf, np.inf),
                                           (k1, k - k1, 1, bias, -0.5, 1.5)):
            panel = np.zeros((kc, width), np.float32)
            panel[:, :nc] = b[k0:k0 + kc]
            lib.dll.kiln_sgemm_bpanel(ptr(packed), m, k, k0, kc, ptr(panel), ptr(c),
                                      ctypes.c_ssize_t(ldc), nc, load_c, ptr(br),
                                      ctypes.c_float(lo), ctypes.c_float(hi))
        want = np.clip(a.astype(np.float64) @ b + bias[:, None], -0.5, 1.5)
        assert close(c[:, :nc], want), (m, nc)
        assert (c[:, nc:] == -7.0).all(), (m, nc)


@pytest.mark.parametrize("n", [5, 16, 35])
def test_sgemm_every_row_count(lib: Lib, n: int) -> None:
    """kiln_sgemm for every M up to 2*MR+1: A packed or strided, B strided, packed or
    padded (whole vectors, a vector and a scalar sliver, or the sliver alone), with row and
    column bias and a clamp."""
    rng = np.random.default_rng()
    mr, nr, k = lib.mr, lib.nr, 19
    for m in range(1, 2 * mr + 2):
        a = rng.standard_normal((m, k)).astype(np.float32)
        b = rng.standard_normal((k, n)).astype(np.float32)
        br = rng.standard_normal(m).astype(np.float32)
        bc = rng.standard_normal(n).astype(np.float32)
        want = np.clip(a.astype(np.float64) @ b + br[:, None] + bc[None, :], -1.0, 2.0)
        ldp = -(-n // (nr // 2)) * (nr // 2)
        padded = np.zeros((k, ldp), np.float32)
        padded[:, :n] = b
        for a_packed in (0, 1):
            for b_mode in (0, 1, 2):
                aa = pack_panels(a, mr) if a_packed else a
                bb = {0: b, 1: pack_panels(np.ascontiguousarray(b.T), nr), 2: padded}[b_mode]
                c = np.full((m, n), np.nan, np.float32)
                g = GemmArgs(m, n, k, addr(aa), k, a_packed, addr(bb),
                             ldp if b_mode == 2 else n, int(b_mode == 1), int(b_mode == 2),
                             addr(c), n, addr(br), addr(bc), -1.0, 2.0)
                lib.dll.kiln_sgemm(ctypes.byref(g), 0, m, 0, n)
                assert close(c, want), (m, n, a_packed, b_mode)


HARNESS = r"""
#include <stdio.h>
#include <stdlib.h>
#include "kiln_gemm.h"

/* A strided A of exactly M*K floats and a C of exactly M*N: a tile that touched a row past
 * M reads or writes outside its heap block. */
static float sgemm(int M, int N, int K, int b_packed) {
    float* a = malloc(sizeof(float) * M * K);
    float* b = malloc(sizeof(float) * K * ((N + KILN_NR - 1) / KILN_NR) * KILN_NR);
    float* c = malloc(sizeof(float) * M * N);
    for (int i = 0; i < M * K; ++i) a[i] = (float)(i % 5) - 2.0f;
    for (int i = 0; i < K * ((N + KILN_NR - 1) / KILN_NR) * KILN_NR; ++i) b[i] = 0.5f;
    kiln_gemm_args g = {M, N, K, a, K, 0, b, N, b_packed, 0, c, N, NULL, NULL, -1e30f, 1e30f};
    kiln_sgemm(&g, 0, M, 0, N);
    float out = c[M * N - 1];
    free(a), free(b), free(c);
    return out;
}

/* A packed A (whole MR-row panels, as packed) and a C of exactly M rows of nc floats. */
static float bpanel(int M, int nc) {
    const int K = 7, width = KILN_GEMM_PANEL(nc);
    float* a = calloc((size_t)((M + KILN_MR - 1) / KILN_MR) * KILN_MR * K, sizeof(float));
    float* bp = malloc(sizeof(float) * K * width);
    float* c = malloc(sizeof(float) * M * nc);
    float* bias = malloc(sizeof(float) * M);
    for (int i = 0; i < K * width; ++i) bp[i] = 0.25f;
    for (int i = 0; i < M; ++i) bias[i] = (float)i;
    kiln_sgemm_bpanel(a, M, K, 0, 3, bp, c, nc, nc, 0, NULL, -1e30f, 1e30f);
    kiln_sgemm_bpanel(a, M, K, 3, 4, bp, c, nc, nc, 1, bias, -1e30f, 1e30f);
    float out = c[M * nc - 1];
    free(a), free(bp), free(c), free(bias);
    return out;
}

int main(void) {
    int lines = 0;
    for (int M = 1; M <= 2 * KILN_MR + 1; ++M) {
        printf("%g %g %g %g\n", (double)sgemm(M, KILN_NR + 3, 6, 0),
               (double)sgemm(M, 5, 6, 1), (double)bpanel(M, KILN_NR / 2 - 1),
               (double)bpanel(M, KILN_NR));
        ++lines;
    }
    return lines == 2 * KILN_MR + 1 ? 0 : 1;
}
"""


def test_tiles_stay_in_bounds_under_asan(tmp_path: Path) -> None:
    """Every row count, exact heap buffers, AddressSanitizer and UBSan."""
    exe = build_sanitized_harness(tmp_path, HARNESS, *CALLS)
    run = subprocess.run([str(exe)], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    mr = gemm_tile(gcc.vector_width(gcc.find("gcc"), "native"))[0]
    assert len(run.stdout.split()) == 4 * (2 * mr + 1)

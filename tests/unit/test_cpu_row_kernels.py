"""The row kernels (`kiln_norm.c`: softmax, log-softmax, layer norm) and GELU (`kiln_math.h`)
built under AddressSanitizer + UBSan and compared with kiln's reference ops / float64.

A small driver program (below) runs one kernel on a file of floats and writes the result; it
is built sanitized for this machine (`-march=native`: the one-vector-per-row softmax path
when a row is exactly KILN_VLEN long, the butterfly reductions) and for baseline x86-64 (4
lanes). Row lengths straddle each vector width (1, 3, 4, 7, 8, 15, 16, 17, 31, 32, 33, 64,
100), row counts are odd, and each kernel runs out of place and in place (y == x).
"""

from __future__ import annotations

import platform
import subprocess
from importlib import resources
from pathlib import Path

import numpy as np
import pytest
from scipy.special import erf, erfc

from kiln.codegen.c.emitter import RUNTIME_HEADERS
from kiln.ir.ops.nn_norm import LayerNorm, LogSoftmax, Softmax
from kiln.targets.toolchains import gcc

pytestmark = pytest.mark.skipif(gcc.shutil.which("gcc") is None, reason="needs gcc")
MARCHES = ["native"] + (["x86-64"] if platform.machine() in ("x86_64", "AMD64") else [])
LENGTHS = [1, 3, 4, 7, 8, 15, 16, 17, 31, 32, 33, 64, 100]

DRIVER = r"""
#include <stdio.h>
#include <stdlib.h>
#include "kiln_norm.h"

/* driver OP ROWS L AFFINE INPLACE IN OUT: OP 0 softmax, 1 log-softmax, 2 layer norm (IN holds
 * x, then w and b when AFFINE bit 0 / bit 1 is set), 3 gelu (ROWS * L values). */
int main(int argc, char** argv) {
    if (argc != 8) return 2;
    int op = atoi(argv[1]), rows = atoi(argv[2]), L = atoi(argv[3]), affine = atoi(argv[4]);
    int inplace = atoi(argv[5]);
    size_t n = (size_t)rows * L;
    size_t total = n + ((affine & 1) ? (size_t)L : 0) + ((affine & 2) ? (size_t)L : 0);
    float* in = malloc(total * sizeof(float));
    float* out = malloc(n * sizeof(float));
    FILE* f = fopen(argv[6], "rb");
    if (in == NULL || out == NULL || f == NULL || fread(in, sizeof(float), total, f) != total)
        return 3;
    fclose(f);
    const float* w = (affine & 1) ? in + n : NULL;
    const float* b = (affine & 2) ? in + n + ((affine & 1) ? L : 0) : NULL;
    float* y = inplace ? in : out;
    if (op == 0 || op == 1) kiln_softmax_rows(in, y, rows, L, op);
    else if (op == 2) kiln_layer_norm_rows(in, w, b, y, rows, L, 1e-5f);
    else for (size_t i = 0; i < n; ++i) y[i] = kiln_geluf(in[i]);
    f = fopen(argv[7], "wb");
    if (f == NULL || fwrite(y, sizeof(float), n, f) != n) return 4;
    fclose(f);
    free(in);
    free(out);
    return 0;
}
"""


class Driver:
    """The sanitized driver program in its build directory."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.calls = 0

    def run(self, op: int, x: np.ndarray, affine: tuple[np.ndarray | None, np.ndarray | None]
            = (None, None), inplace: bool = False) -> np.ndarray:
        rows, length = x.shape
        self.calls += 1
        src, dst = self.work / f"in{self.calls}.bin", self.work / f"out{self.calls}.bin"
        parts = [x] + [p for p in affine if p is not None]
        src.write_bytes(b"".join(p.astype("<f4").tobytes() for p in parts))
        bits = (affine[0] is not None) | ((affine[1] is not None) << 1)
        result = subprocess.run(
            ["./driver", str(op), str(rows), str(length), str(bits), str(int(inplace)),
             src.name, dst.name], cwd=self.work, capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
        assert "runtime error" not in result.stderr and "Sanitizer" not in result.stderr
        return np.fromfile(dst, "<f4").reshape(x.shape)


@pytest.fixture(scope="module", params=MARCHES)
def driver(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Driver:
    work = tmp_path_factory.mktemp(f"rows-{request.param}")
    root = resources.files("kiln.codegen.c").joinpath("runtime")
    for name in (*RUNTIME_HEADERS, "kiln_norm.c"):
        (work / name).write_text(root.joinpath(name).read_text())
    (work / "driver.c").write_text(DRIVER)
    flags = [*gcc.flags(request.param, 1, True), "-Werror"]
    gcc.compile_c(gcc.find("gcc"), work, ["driver.c", "kiln_norm.c"], "driver", flags,
                  shared=False)
    return Driver(work)


def rel(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.abs(got.astype(np.float64) - want).max() / max(np.abs(want).max(), 1.0))


@pytest.mark.parametrize("length", LENGTHS)
def test_softmax_rows(driver: Driver, rng: np.random.Generator, length: int) -> None:
    x = (rng.standard_normal((5, length)) * 4).astype(np.float32)
    if length > 1:
        x[1, length // 2] = -np.inf  # a masked score: exactly 0 in softmax
    for op, ref in ((0, Softmax(axis=1)), (1, LogSoftmax(axis=1))):
        (want,) = ref.reference(x)
        finite = np.isfinite(want)
        for inplace in (False, True):
            got = driver.run(op, x.copy(), inplace=inplace)
            assert np.array_equal(np.isfinite(got), finite)
            assert rel(got[finite], want[finite]) <= 2e-6, (op, inplace)
        if op == 0:
            assert length == 1 or got[1, length // 2] == 0.0
            assert np.abs(got.sum(axis=1) - 1).max() <= 2e-6


@pytest.mark.parametrize("length", LENGTHS)
def test_layer_norm_rows(driver: Driver, rng: np.random.Generator, length: int) -> None:
    x = (rng.standard_normal((3, length)) * 3 + 1.5).astype(np.float32)
    w = rng.standard_normal(length).astype(np.float32)
    b = rng.standard_normal(length).astype(np.float32)
    for affine in ((w, b), (w, None), (None, b), (None, None)):
        args = [p if p is not None else np.ones(length, np.float32) if i == 0
                else np.zeros(length, np.float32) for i, p in enumerate(affine)]
        (want,) = LayerNorm(eps=1e-5).reference(x, *args)
        for inplace in (False, True):
            got = driver.run(2, x.copy(), affine, inplace)
            assert rel(got, want) <= 1e-5, (affine[0] is None, affine[1] is None, inplace)


def test_gelu_keeps_relative_accuracy_everywhere(driver: Driver) -> None:
    """Per element, not against the largest value: the negative tail (x/2 erfc(-x/sqrt 2)),
    where 1 + erf cancels, and both sides of the switch to erf's Taylor series (|x| = 0.5
    sqrt 2) — one erfc serves both signs."""
    t = np.concatenate([np.linspace(-12, 12, 60_001), np.linspace(0.69, 0.73, 4001),
                        -np.linspace(0.69, 0.73, 4001)]).astype(np.float32)
    t = t[t != 0]
    wide = t.astype(np.float64)
    want = np.where(wide < 0, 0.5 * wide * erfc(-wide / np.sqrt(2)),
                    0.5 * wide * (1 + erf(wide / np.sqrt(2))))
    got = driver.run(3, t.reshape(1, -1))[0].astype(np.float64)
    err = np.abs(got - want) / np.abs(want)
    assert err[t >= -4].max() < 2e-6
    # deep in the tail the float rounding of (x/sqrt 2)^2 inside exp(-x^2/2) dominates: a
    # relative error of about x^2/2 * 2^-24, 1.8e-5 at x = -12 (1 + erf would be off by 100%)
    assert err[t < -4].max() < 3e-5
    special = driver.run(3, np.array([[np.inf, np.nan, 0.0, -0.0, 30.0, -30.0]], np.float32))[0]
    assert special[0] == np.inf and np.isnan(special[1]) and special[2] == 0 == special[3]
    assert special[4] == 30.0 and special[5] == 0

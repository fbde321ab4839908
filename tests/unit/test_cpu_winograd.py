"""Winograd convolution on the cpu target (`kiln_winograd_conv`, kiln_winograd.h).

Kernel level: the runtime built on its own (for this machine and for baseline x86-64, whose
4-lane vectors give a 4x8 GEMM tile), F(2x2,3x3) and F(4x4,3x3) compared with a float64 NumPy
convolution on odd shapes: OH/OW not multiples of the tile (partial tiles at the right and
bottom edges), rows narrower than a transform vector, padding 0/1/2, channel counts that are
not multiples of MR or a vector, several chunks of tile rows, pixel sub-ranges that split tile
rows, bias and clamp; the scratch sizes the code generator computes against the C ones; the
same kernels built under AddressSanitizer/UBSan with exact-size buffers. End to end: models
compiled with Winograd on match PyTorch (relu, residual add + relu, batch > 1, threads,
sanitized), ResNet-8 says which convs took Winograd and matches with it on and off.
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
    """A new seed on every run (printed by pytest's assertion rewriting on failure)."""
    return int(np.random.SeedSequence().generate_state(1)[0])


def ptr(a: np.ndarray | None) -> ctypes.c_void_p | None:
    return None if a is None else ctypes.c_void_p(a.ctypes.data)


class Lib:
    """kiln_gemm.c + kiln_winograd.c built for one -march, and its GEMM tile."""

    def __init__(self, path: Path, march: str) -> None:
        self.dll = ctypes.CDLL(str(path))
        for name in ("kiln_wg_pad", "kiln_winograd_conv"):
            getattr(self.dll, name).restype = None
        for name in ("kiln_wg_image_floats", "kiln_wg_scratch_floats"):
            getattr(self.dll, name).restype = ctypes.c_size_t
        width = gcc.vector_width(gcc.find("gcc"), march) if march == "native" else 4
        self.mr, self.nr = gemm_tile(width)


def build(work: Path, march: str, sanitize: bool) -> Lib:
    root = resources.files("kiln.codegen.c").joinpath("runtime")
    for name in (*RUNTIME_HEADERS, "kiln_winograd.h", *SOURCES):
        (work / name).write_text(root.joinpath(name).read_text())
    flags = [*gcc.flags(march, 1, sanitize), "-Werror", "-fvisibility=default"]
    out = gcc.compile_c(gcc.find("gcc"), work, list(SOURCES), "libtest.so", flags, shared=True)
    return Lib(out, march)


@pytest.fixture(scope="module", params=MARCHES)
def lib(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Lib:
    return build(tmp_path_factory.mktemp(f"winograd-{request.param}"), request.param, False)


def geometry(c: int, h: int, w: int, pad: int) -> dict[str, int]:
    return dict(zip(FIELDS, (c, h, w, 3, 3, 1, 1, pad, pad, 1, 1, h + 2 * pad - 2,
                             w + 2 * pad - 2)))


def reference(x: np.ndarray, w: np.ndarray, bias: np.ndarray | None, pad: int) -> np.ndarray:
    """(Cout, OH*OW) in float64, tap by tap."""
    c, h, wd = x.shape
    xp = np.zeros((c, h + 2 * pad, wd + 2 * pad))
    xp[:, pad:pad + h, pad:pad + wd] = x
    oh, ow = h + 2 * pad - 2, wd + 2 * pad - 2
    out = np.zeros((w.shape[0], oh, ow))
    if bias is not None:
        out += bias[:, None, None]
    for ky in range(3):
        for kx in range(3):
            out += np.einsum("oc,cyx->oyx", w[:, :, ky, kx].astype(np.float64),
                             xp[:, ky:ky + oh, kx:kx + ow])
    return out.reshape(w.shape[0], -1)


def run(lib: Lib, x: np.ndarray, w: np.ndarray, bias: np.ndarray | None, pad: int, m: int,
        cols: tuple[int, int] | None = None, rows: int = 2, lo: float = -np.inf,
        hi: float = np.inf) -> np.ndarray:
    """`kiln_winograd_conv` over pixels `cols` of an output padded with sentinels."""
    geo = geometry(x.shape[0], x.shape[1], x.shape[2], pad)
    shape = Shape(*(geo[f] for f in FIELDS))
    cout = w.shape[0]
    xs_n = image_floats(geo, m)
    assert lib.dll.kiln_wg_image_floats(ctypes.byref(shape), m) == xs_n
    scratch_n = scratch_floats(geo, m, cout, rows, lib.mr, lib.nr)
    assert lib.dll.kiln_wg_scratch_floats(ctypes.byref(shape), m, cout, rows) == scratch_n
    xs = np.full(xs_n, np.nan, np.float32)
    lib.dll.kiln_wg_pad(ptr(x), ctypes.byref(shape), m, ptr(xs))
    u = winograd_weights(w, m, lib.mr)
    scratch = np.full(scratch_n, np.nan, np.float32)
    pixels = geo["OH"] * geo["OW"]
    n0, n1 = cols or (0, pixels)
    ldy = pixels + 3
    y = np.full((cout, ldy), -7.0, np.float32)
    lib.dll.kiln_winograd_conv(ptr(xs), ctypes.byref(shape), m, ptr(u), cout, ptr(bias),
                               ctypes.c_void_p(y.ctypes.data + 4 * n0), ctypes.c_ssize_t(ldy),
                               n0, n1, ctypes.c_float(lo), ctypes.c_float(hi), rows,
                               ptr(scratch))
    return y


# (Cin, H, W, Cout, padding, rows per chunk)
CASES = [
    (16, 32, 32, 16, 1, 3),   # ResNet-8's first stage, several chunks
    (3, 11, 9, 13, 1, 2),     # odd sizes: partial tiles at both edges
    (5, 7, 30, 9, 0, 1),      # no padding, one tile row per chunk
    (7, 6, 5, 20, 2, 4),      # padding 2, a row narrower than a vector
    (33, 8, 8, 35, 1, 8),     # Cin, Cout past MR and vector multiples; one chunk
    (1, 3, 3, 1, 0, 1),       # one output pixel
    (12, 19, 21, 17, 1, 2),   # rows wider than one vector, not a multiple
]


@pytest.mark.parametrize("m", [2, 4])
@pytest.mark.parametrize("case", CASES, ids=[f"case{i}" for i in range(len(CASES))])
def test_winograd_matches_numpy(lib: Lib, case: tuple, m: int) -> None:
    c, h, wd, cout, pad, rows = case
    rng = np.random.default_rng(fresh_seed())
    x = rng.standard_normal((c, h, wd), dtype=np.float32)
    w = rng.standard_normal((cout, c, 3, 3), dtype=np.float32)
    bias = rng.standard_normal(cout, dtype=np.float32)
    want = reference(x, w, bias, pad)
    pixels = want.shape[1]
    y = run(lib, x, w, bias, pad, m, rows=rows)
    err = np.abs(y[:, :pixels] - want).max() / np.abs(want).max()
    assert err <= 1e-4, err
    assert (y[:, pixels:] == -7.0).all()  # nothing written past the pixels


@pytest.mark.parametrize("m", [2, 4])
@pytest.mark.parametrize("hw", [(13, 11), (32, 32)])  # through the row buffer; stored directly
def test_pixel_block_bias_none_and_clamp(lib: Lib, m: int, hw: tuple[int, int]) -> None:
    rng = np.random.default_rng(fresh_seed())
    x = rng.standard_normal((6, *hw), dtype=np.float32)
    w = rng.standard_normal((10, 6, 3, 3), dtype=np.float32)
    want = np.clip(reference(x, w, None, 1), -1.5, 2.0)
    pixels = hw[0] * hw[1]
    blocks = ((37, 80), (0, 1), (11, 12), (100, 143), (64, 512), (pixels - 5, pixels))
    for n0, n1 in (b for b in blocks if b[1] <= pixels):
        y = run(lib, x, w, None, 1, m, cols=(n0, n1), rows=2, lo=-1.5, hi=2.0)
        np.testing.assert_allclose(y[:, n0:n1], want[:, n0:n1], rtol=1e-4, atol=1e-4)
        assert (y[:, :n0] == -7.0).all() and (y[:, n1:] == -7.0).all()


HARNESS = r"""
#include <stdio.h>
#include <stdlib.h>
#include "kiln_winograd.h"

/* Each shape: x, the phase-split image (exactly kiln_wg_image_floats), the scratch (exactly
 * kiln_wg_scratch_floats) and y (exactly M * (n1 - n0)) on the heap, so AddressSanitizer
 * flags any read or write outside them; the result is checked against a direct loop. */
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
    for (int i = 0; i < C * H * W; ++i) x[i] = (float)(i % 7) - 3.0f;
    for (int i = 0; i < M; ++i) bias[i] = (float)i;
    kiln_wg_pad(x, &s, m, xs);
    kiln_winograd_conv(xs, &s, m, u, M, bias, y, n1 - n0, n0, n1, -1e30f, 1e30f, rows, scratch);
    int bad = 0;
    for (int o = 0; o < M; ++o)
        for (int p = n0; p < n1; ++p) bad += y[(size_t)o * (n1 - n0) + p - n0] != (float)o;
    free(x), free(xs), free(scratch), free(u), free(bias), free(y);
    return bad;
}

int main(void) {
    /* C, H, W, pad, M, m, rows, n0, n1 */
    int bad = one(3, 5, 4, 0, 5, 2, 1, 0, 6);
    bad += one(4, 13, 11, 1, 9, 4, 2, 17, 90);
    bad += one(17, 7, 30, 2, 3, 4, 3, 0, 7 * 30);
    bad += one(2, 3, 3, 0, 1, 2, 1, 0, 1);
    bad += one(9, 20, 19, 1, 8, 2, 4, 100, 101);
    printf("%d\n", bad);
    return 0;
}
"""


def test_winograd_stays_in_bounds_under_asan(tmp_path: Path) -> None:
    """Whole-vector stores past phase rows, junk lanes of narrow tile rows and partial edge
    tiles must all stay inside the documented buffer sizes (ASan + UBSan, exact buffers)."""
    build_dir = tmp_path / "asan"
    build_dir.mkdir()
    root = resources.files("kiln.codegen.c").joinpath("runtime")
    for name in (*RUNTIME_HEADERS, "kiln_winograd.h", *SOURCES):
        (build_dir / name).write_text(root.joinpath(name).read_text())
    (build_dir / "harness.c").write_text(HARNESS)
    flags = [*gcc.flags("native", 1, True), "-Werror"]
    exe = gcc.compile_c(gcc.find("gcc"), build_dir, [*SOURCES, "harness.c"], "harness", flags,
                        shared=False)
    run = subprocess.run([str(exe)], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["0"]  # zero weights: every output is its bias


class Block(torch.nn.Module):
    """Winograd convs with every epilogue the driver has: none, relu on store (clamp), and a
    residual add + relu (tile); F(4,3) on a wide plane, F(2,3) on a narrow one."""

    def __init__(self) -> None:
        super().__init__()
        self.a = torch.nn.Conv2d(16, 20, 3, padding=1)
        self.b = torch.nn.Conv2d(20, 20, 3, padding=1)
        self.c = torch.nn.Conv2d(20, 17, 3, padding=0)
        self.d = torch.nn.Conv2d(17, 16, 3, padding=2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.a(x))
        y = torch.relu(self.b(y) + y)
        y = self.c(y)
        return self.d(y[:, :, :5, :7])


def test_end_to_end_matches_torch_sanitized_with_threads(tmp_path: Path) -> None:
    """Every Winograd path in one sanitized build with 2 OpenMP threads, batch 3, odd sizes;
    fresh inputs each run."""
    torch.manual_seed(fresh_seed())
    net = Block().eval()
    x = torch.randn(3, 16, 17, 18)
    art = kiln.compile(net, x, target="cpu", threads=2, sanitize=True, cache_dir=tmp_path,
                       parallel_min_flops=0)
    kernels = [k["kernel"] for k in art.report()["kernels"]]
    assert sum("winograd F(4x4" in k for k in kernels) >= 2, kernels
    assert any("winograd F(2x2" in k for k in kernels), kernels
    assert any("winograd" in k and "add" in k for k in kernels), kernels
    for _ in range(2):
        xs = torch.randn(3, 16, 17, 18)
        want = net(xs).detach().numpy()
        got = np.asarray(art(xs.numpy()))
        assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max()


def test_resnet8_matches_torch_and_says_which_convs_took_winograd(tmp_path: Path) -> None:
    from kiln.models import MODELS, get_model
    spec, model = MODELS["resnet8"], get_model("resnet8")
    x = spec.example_inputs(2, seed=fresh_seed())
    want = model(*x).detach().numpy()
    for winograd in (True, False):
        art = kiln.compile(model, x, target="cpu", winograd=winograd, cache_dir=tmp_path)
        kernels = [k["kernel"] for k in art.report()["kernels"]]
        took = [k for k in kernels if "winograd" in k]
        assert len(took) == (4 if winograd else 0), kernels
        got = np.asarray(art(*(t.numpy() for t in x)))
        assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max()


def test_weight_that_is_not_a_parameter_takes_the_implicit_gemm() -> None:
    """Winograd needs its weights transformed at build time; a conv whose weight is computed
    (here: scaled by an input) falls back to the implicit GEMM and still matches."""

    class Scaled(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = torch.nn.Parameter(torch.randn(16, 16, 3, 3))

        def forward(self, x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
            return torch.nn.functional.conv2d(x, self.w * s, padding=1)

    net = Scaled().eval()
    x, s = torch.randn(1, 16, 12, 12), torch.randn(1, 1, 1, 1)
    art = kiln.compile(net, (x, s), target="cpu")
    assert not any("winograd" in k["kernel"] for k in art.report()["kernels"])
    got = np.asarray(art(x.numpy(), s.numpy()))
    want = net(x, s).detach().numpy()
    assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max()


def test_routing_rule() -> None:
    """3x3 / stride 1 / dilation 1 / groups 1 with at least MIN_CHANNELS in and out; F(4,3)
    from F4_MIN_TILES tiles per row."""

    def route(conv: torch.nn.Conv2d, hw: int) -> list[str]:
        art = kiln.compile(conv.eval(), torch.randn(1, conv.in_channels, hw, hw), target="cpu")
        return [k["kernel"] for k in art.report()["kernels"]]

    assert "winograd F(4x4" in route(torch.nn.Conv2d(16, 16, 3, padding=1), 16)[0]
    assert "winograd F(2x2" in route(torch.nn.Conv2d(64, 64, 3, padding=1), 8)[0]
    for conv in (torch.nn.Conv2d(8, 16, 3, padding=1), torch.nn.Conv2d(16, 16, 3, stride=2),
                 torch.nn.Conv2d(16, 16, 3, dilation=2), torch.nn.Conv2d(16, 16, 5),
                 torch.nn.Conv2d(16, 16, 3, groups=2), torch.nn.Conv2d(16, 16, 3, padding=3)):
        assert "winograd" not in route(conv, 16)[0]

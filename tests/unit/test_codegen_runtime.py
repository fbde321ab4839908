"""The hand-written C runtime, tested on its own: built with gcc (-Werror) into a shared
library with `kiln_testlib.c`, each kernel compared with NumPy / kiln's reference ops.

Built twice: for this machine (`-march=native`) and for baseline x86-64 (SSE only), so the
portable vector fallback (4 lanes, 4x8 GEMM tile) is exercised too.
"""

from __future__ import annotations

import ctypes
import platform
from importlib import resources
from pathlib import Path

import numpy as np
import pytest
from scipy.special import erf

from kiln.codegen.c.emitter import RUNTIME_HEADERS, RUNTIME_SOURCES
from kiln.codegen.c.packing import pack_panels
from kiln.ir.ops.nn_conv import Conv2d
from kiln.ir.ops.nn_norm import LayerNorm, LogSoftmax, Softmax
from kiln.ir.ops.nn_pool import AvgPool2d, MaxPool2d
from kiln.targets.toolchains import gcc

pytestmark = pytest.mark.skipif(gcc.shutil.which("gcc") is None, reason="needs gcc")
MARCHES = ["native"] + (["x86-64"] if platform.machine() in ("x86_64", "AMD64") else [])


def ptr(a: np.ndarray | None) -> ctypes.c_void_p | None:
    return None if a is None else ctypes.c_void_p(a.ctypes.data)


class Lib:
    """The test library with typed wrappers."""

    def __init__(self, path: Path) -> None:
        self.lib = ctypes.CDLL(str(path))
        self.mr, self.nr, self.vlen = (getattr(self.lib, f"kiln_test_{n}")() for n in
                                       ("mr", "nr", "vlen"))

    def call(self, name: str, *args: object) -> None:
        fn = getattr(self.lib, f"kiln_test_{name}")
        fn.restype = None
        fn(*[ctypes.c_float(a) if isinstance(a, float) else a for a in args])

    def unary(self, which: int, x: np.ndarray) -> np.ndarray:
        y = np.empty_like(x)
        self.call("unary", which, ptr(x), ptr(y), x.size)
        return y


@pytest.fixture(scope="module", params=MARCHES)
def lib(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Lib:
    work = tmp_path_factory.mktemp(f"runtime-{request.param}")
    root = resources.files("kiln.codegen.c").joinpath("runtime")
    for name in (*RUNTIME_HEADERS, *RUNTIME_SOURCES, "kiln_testlib.c"):
        (work / name).write_text(root.joinpath(name).read_text())
    toolchain = gcc.find("gcc")
    flags = [*gcc.flags(request.param, 1, False), "-Werror", "-fvisibility=default"]
    out = gcc.compile_c(toolchain, work, ["kiln_testlib.c", *RUNTIME_SOURCES], "libtest.so",
                        flags, shared=True)
    return Lib(out)


def ulps(got: np.ndarray, want: np.ndarray) -> np.ndarray:
    spacing = np.spacing(np.abs(want.astype(np.float32)))
    return np.abs(got.astype(np.float64) - want) / spacing


def test_vector_width_matches_the_compiler(lib: Lib) -> None:
    assert lib.vlen in (4, 8, 16)
    assert lib.nr == 2 * lib.vlen


def test_exp_within_two_ulp_of_the_exact_value(lib: Lib) -> None:
    x = np.linspace(-87.0, 88.7, 400_001, dtype=np.float32)
    want = np.exp(x.astype(np.float64))
    assert ulps(lib.unary(0, x), want).max() <= 2.0
    y = np.empty_like(x)
    lib.call("exp_vf", ptr(x), ptr(y), x.size)
    assert ulps(y, want).max() <= 2.0
    special = np.array([np.inf, -np.inf, np.nan, 100.0, -120.0, 0.0], np.float32)
    got = lib.unary(0, special)
    assert got[0] == np.inf and got[1] == 0 and np.isnan(got[2]) and got[3] == np.inf
    assert got[4] == 0 and got[5] == 1


def test_log_tanh_erf_accuracy(lib: Lib) -> None:
    x = np.geomspace(1e-40, 1e30, 200_001).astype(np.float32)
    assert ulps(lib.unary(1, x), np.log(x.astype(np.float64))).max() <= 2.0
    special = lib.unary(1, np.array([0.0, -1.0, np.inf, np.nan], np.float32))
    assert special[0] == -np.inf and np.isnan(special[1]) and special[2] == np.inf
    t = np.linspace(-12, 12, 200_001, dtype=np.float32)
    wide = t.astype(np.float64)
    for which, fn in ((2, np.tanh), (3, erf)):
        want = fn(wide)
        rel = np.abs(lib.unary(which, t) - want) / np.maximum(np.abs(want), 1e-30)
        assert rel.max() < 1e-6, which
    sig = 1 / (1 + np.exp(-wide))
    assert np.abs(lib.unary(4, t) - sig).max() < 1e-6
    gelu = 0.5 * wide * (1 + erf(wide / np.sqrt(2)))
    assert np.abs(lib.unary(5, t) - gelu).max() / np.abs(gelu).max() < 1e-6


@pytest.mark.parametrize("rows,k,width", [(5, 3, 8), (16, 7, 8), (33, 1, 32), (1, 4, 4)])
def test_python_and_c_packing_agree(lib: Lib, rows: int, k: int, width: int) -> None:
    m = np.random.default_rng(rows * k).standard_normal((rows, k)).astype(np.float32)
    want = pack_panels(m, width)
    got = np.full(want.size, np.nan, np.float32)
    lib.call("pack", ptr(m), rows, k, width, ptr(got))
    assert np.array_equal(got, want)
    # panel p, step k, lane r is m[p*width + r, k]
    panel = want.reshape(-1, k, width)
    assert panel[0, k - 1, 0] == m[0, k - 1]


@pytest.mark.parametrize("m,n,k", [(1, 5, 16), (7, 33, 9), (16, 100, 27), (13, 17, 1),
                                   (64, 128, 64), (3, 70, 130)])
def test_sgemm_packed_and_strided(lib: Lib, rng: np.random.Generator, m: int, n: int,
                                  k: int) -> None:
    a = rng.standard_normal((m, k)).astype(np.float32)
    b = rng.standard_normal((k, n)).astype(np.float32)
    bias_r = rng.standard_normal(m).astype(np.float32)
    bias_c = rng.standard_normal(n).astype(np.float32)
    for lo, hi, br, bc in ((-np.inf, np.inf, None, None), (0.0, np.inf, bias_r, None),
                           (-0.5, 0.5, None, bias_c), (0.0, 6.0, bias_r, bias_c)):
        want = a.astype(np.float64) @ b
        want += (0 if br is None else br[:, None]) + (0 if bc is None else bc[None, :])
        want = np.clip(want, lo, hi)
        ldp = -(-n // (lib.nr // 2)) * (lib.nr // 2)  # a padded B's row pitch
        padded = np.zeros((k, ldp), np.float32)
        padded[:, :n] = b
        for a_packed in (0, 1):
            for b_mode in (0, 1, 2):  # strided, packed, strided with padded rows
                aa = pack_panels(a, lib.mr) if a_packed else a
                bb = {0: b, 1: pack_panels(np.ascontiguousarray(b.T), lib.nr), 2: padded}[b_mode]
                ldb = ldp if b_mode == 2 else n
                c = np.full((m, n), np.nan, np.float32)
                lib.call("sgemm", m, n, k, ptr(aa), k, a_packed, ptr(bb), ldb, b_mode, ptr(c),
                         n, ptr(br), ptr(bc), float(lo), float(hi))
                assert np.abs(c - want).max() <= 1e-5 * max(np.abs(want).max(), 1.0)


def conv_shape(c: int, h: int, w: int, k: int, s: int, p: int, d: int) -> list[int]:
    oh = (h + 2 * p - d * (k - 1) - 1) // s + 1
    ow = (w + 2 * p - d * (k - 1) - 1) // s + 1
    return [c, h, w, k, k, s, s, p, p, d, d, oh, ow]


@pytest.mark.parametrize("k,s,p,d", [(3, 1, 1, 1), (5, 2, 2, 1), (3, 2, 0, 2), (1, 1, 0, 1)])
def test_im2col_times_weights_is_a_convolution(lib: Lib, rng: np.random.Generator, k: int,
                                                s: int, p: int, d: int) -> None:
    c, h, w, cout = 3, 9, 11, 4
    x = rng.standard_normal((1, c, h, w)).astype(np.float32)
    wt = rng.standard_normal((cout, c, k, k)).astype(np.float32)
    shape = np.array(conv_shape(c, h, w, k, s, p, d), np.int32)
    oh, ow = shape[11], shape[12]
    ld = int(oh * ow) + 5
    col = np.full((c * k * k, ld), np.nan, np.float32)
    lib.call("im2col", ptr(x), ptr(shape), ptr(col), ld)
    assert not col[:, oh * ow:].any()
    got = (wt.reshape(cout, -1) @ col[:, :oh * ow]).reshape(1, cout, oh, ow)
    (want,) = Conv2d(stride=(s, s), padding=(p, p, p, p), dilation=(d, d)).reference(x, wt)
    assert np.abs(got - want).max() < 1e-5 * np.abs(want).max()


@pytest.mark.parametrize("k,s,p,groups,cout", [(3, 1, 1, 5, 5), (3, 2, 1, 5, 5),
                                               (5, 1, 2, 1, 4), (3, 2, 0, 5, 10)])
def test_direct_conv(lib: Lib, rng: np.random.Generator, k: int, s: int, p: int, groups: int,
                     cout: int) -> None:
    c, h, w = 5, 10, 7
    x = rng.standard_normal((1, c, h, w)).astype(np.float32)
    wt = rng.standard_normal((cout, c // groups, k, k)).astype(np.float32)
    bias = rng.standard_normal(cout).astype(np.float32)
    shape = np.array(conv_shape(c, h, w, k, s, p, 1), np.int32)
    y = np.empty((1, cout, shape[11], shape[12]), np.float32)
    lib.call("conv_direct", ptr(x), ptr(wt), ptr(bias), ptr(y), ptr(shape), cout, groups)
    (want,) = Conv2d(stride=(s, s), padding=(p, p, p, p), groups=groups).reference(x, wt, bias)
    assert np.abs(y - want).max() < 1e-5 * np.abs(want).max()


@pytest.mark.parametrize("kind,k,s,pads,ceil,include", [
    ("max", 2, 2, (0, 0, 0, 0), False, True), ("max", 3, 2, (1, 1, 1, 1), True, True),
    ("avg", 3, 2, (1, 0, 1, 0), True, True), ("avg", 3, 2, (1, 1, 1, 1), False, False),
    ("avg", 2, 2, (0, 0, 0, 0), True, True)])
def test_pools_follow_pytorch(lib: Lib, rng: np.random.Generator, kind: str, k: int, s: int,
                              pads: tuple[int, ...], ceil: bool, include: bool) -> None:
    x = rng.standard_normal((2, 3, 9, 8)).astype(np.float32)
    op: MaxPool2d | AvgPool2d
    if kind == "max":
        op = MaxPool2d(kernel=(k, k), stride=(s, s), padding=pads, dilation=(1, 1),
                       ceil_mode=ceil)
    else:
        op = AvgPool2d(kernel=(k, k), stride=(s, s), padding=pads, ceil_mode=ceil,
                       count_include_pad=include)
    (want,) = op.reference(x)
    oh, ow = want.shape[2:]
    shape = np.array([9, 8, k, k, s, s, pads[0], pads[1], pads[2], pads[3], 1, 1, oh, ow],
                     np.int32)
    y = np.empty_like(want)
    mode = 0 if kind == "max" else (1 if include else 2)
    lib.call("pool", ptr(x), ptr(y), 6, ptr(shape), mode)
    assert np.abs(y - want).max() < 1e-6 * max(np.abs(want).max(), 1)


@pytest.mark.parametrize("length", [1, 5, 16, 37, 300])
def test_row_kernels(lib: Lib, rng: np.random.Generator, length: int) -> None:
    x = (rng.standard_normal((4, length)) * 5).astype(np.float32)
    for log, op in ((0, Softmax(axis=1)), (1, LogSoftmax(axis=1))):
        y = np.empty_like(x)
        lib.call("softmax", ptr(x), ptr(y), 4, length, log)
        (want,) = op.reference(x)
        assert np.abs(y - want).max() <= 2e-6 * max(np.abs(want).max(), 1.0)
    w = rng.standard_normal(length).astype(np.float32)
    b = rng.standard_normal(length).astype(np.float32)
    y = np.empty_like(x)
    lib.call("layer_norm", ptr(x), ptr(w), ptr(b), ptr(y), 4, length, 1e-5)
    (want,) = LayerNorm(eps=1e-5).reference(x, w, b)
    assert np.abs(y - want).max() <= 1e-5 * max(np.abs(want).max(), 1.0)
    inplace = x.copy()
    lib.call("softmax", ptr(inplace), ptr(inplace), 4, length, 0)
    assert np.allclose(inplace, Softmax(axis=1).reference(x)[0], rtol=1e-5, atol=1e-7)

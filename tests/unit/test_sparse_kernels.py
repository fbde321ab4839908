"""The sparse-weight kernels of the C runtime (`kiln_sparse.c`), on their own: built with gcc
(-Werror) into a shared library and compared through ctypes with NumPy (float64 products,
fp32 relative error ≤ 1e-4 of the largest output), for every format, odd column counts (the
vector tails), padded and unpadded B, transposed stores, bias and clamping. Plus the Python
side: the index arrays' raw bits and the cost rule.
"""

from __future__ import annotations

import ctypes
import platform
from importlib import resources
from pathlib import Path

import numpy as np
import pytest

from kiln.codegen.c.emit_sparse import MAX_DENSITY, as_float_bits, choose, sparse_arrays
from kiln.ir import sparse
from kiln.ir.types import SparseEncoding
from kiln.targets.toolchains import gcc

pytestmark = pytest.mark.skipif(gcc.shutil.which("gcc") is None, reason="needs gcc")
MARCHES = ["native"] + (["x86-64"] if platform.machine() in ("x86_64", "AMD64") else [])
TOL = 1e-4
CODES = {"csr": 0, "nm": 1, "block": 2}
ENCODINGS = [SparseEncoding("csr"), SparseEncoding("nm", (2, 4)), SparseEncoding("nm", (1, 3)),
             SparseEncoding("block", (4, 4)), SparseEncoding("block", (2, 2)),
             SparseEncoding("block", (8, 1)), SparseEncoding("block", (3, 5))]


class KilnSparse(ctypes.Structure):
    _fields_ = [("rows", ctypes.c_int), ("cols", ctypes.c_int), ("format", ctypes.c_int),
                ("p0", ctypes.c_int), ("p1", ctypes.c_int), ("values", ctypes.c_void_p),
                ("indices", ctypes.c_void_p), ("pos", ctypes.c_void_p),
                ("indptr", ctypes.c_void_p)]


def ptr(a: np.ndarray | None) -> ctypes.c_void_p | None:
    return None if a is None else ctypes.c_void_p(a.ctypes.data)


@pytest.fixture(scope="module", params=MARCHES)
def lib(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
        ) -> ctypes.CDLL:
    work: Path = tmp_path_factory.mktemp(f"sparse-{request.param}")
    root = resources.files("kiln.codegen.c").joinpath("runtime")
    for name in ("kiln_vec.h", "kiln_sparse.h", "kiln_sparse.c"):
        (work / name).write_text(root.joinpath(name).read_text())
    flags = [*gcc.flags(request.param, 1, False), "-Werror", "-fvisibility=default"]
    path = gcc.compile_c(gcc.find("gcc"), work, ["kiln_sparse.c"], "libsparse.so", flags,
                         shared=True)
    library = ctypes.CDLL(str(path))
    for name in ("kiln_spmm", "kiln_spmv", "kiln_sp_transpose", "kiln_sparse_linear"):
        getattr(library, name).restype = None
    library.kiln_sparse_linear_scratch.restype = ctypes.c_size_t
    return library


class Weight:
    """A random weight with `encoding`'s pattern, its arrays and the C struct over them."""

    def __init__(self, rng: np.random.Generator, rows: int, cols: int,
                 encoding: SparseEncoding, zeros: float = 0.7) -> None:
        dense = rng.standard_normal((rows, cols)).astype(np.float32)
        self.matrix = sparse.enforce(dense, encoding, zeros)
        self.arrays = sparse_arrays(self.matrix, encoding)
        p0, p1 = encoding.params or (0, 0)
        a = self.arrays
        self.struct = KilnSparse(rows, cols, CODES[encoding.format], p0, p1,
                                 a["values"].ctypes.data,
                                 *(a[k].ctypes.data if k in a else None
                                   for k in ("indices", "pos", "indptr")))

    @property
    def ref(self) -> ctypes._Pointer[KilnSparse]:
        return ctypes.pointer(self.struct)


def shape_for(encoding: SparseEncoding, rows: int, cols: int) -> tuple[int, int]:
    """Rows and columns rounded up to what the encoding tiles."""
    r, c = encoding.params if encoding.format == "block" else (1, 1)
    if encoding.format == "nm":
        c = encoding.params[1]
    return -(-rows // r) * r, -(-cols // c) * c


def close(got: np.ndarray, want: np.ndarray) -> None:
    scale = max(float(np.abs(want).max()), 1e-6)
    assert float(np.abs(got - want).max()) / scale <= TOL


def reference(w: np.ndarray, b: np.ndarray, bias: np.ndarray | None, lo: float,
              hi: float) -> np.ndarray:
    out = w.astype(np.float64) @ b.astype(np.float64)
    if bias is not None:
        out += bias[:, None]
    return np.clip(out, lo, hi)


@pytest.mark.parametrize("encoding", ENCODINGS, ids=str)
@pytest.mark.parametrize("n", [1, 3, 7, 17, 127])
def test_spmm_matches_numpy(lib: ctypes.CDLL, encoding: SparseEncoding, n: int) -> None:
    rng = np.random.default_rng([n, len(str(encoding))])
    rows, cols = shape_for(encoding, 19, 37)
    weight = Weight(rng, rows, cols, encoding)
    bias = rng.standard_normal(rows).astype(np.float32)
    for padded in (0, 1):
        ldb = -(-n // 16) * 16 + 16 if padded else n
        b = np.zeros((cols, ldb), np.float32)
        b[:, :n] = rng.standard_normal((cols, n))
        for transposed in (False, True):
            c = np.full((n, rows) if transposed else (rows, n), np.nan, np.float32)
            rs, cs = (1, rows) if transposed else (n, 1)
            lib.kiln_spmm(weight.ref, ptr(b), ctypes.c_ssize_t(ldb), n, padded, ptr(c),
                          ctypes.c_ssize_t(rs), ctypes.c_ssize_t(cs), ptr(bias),
                          ctypes.c_float(-0.5), ctypes.c_float(np.inf))
            want = reference(weight.matrix, b[:, :n], bias, -0.5, np.inf)
            close(c.T if transposed else c, want)


@pytest.mark.parametrize("encoding", ENCODINGS, ids=str)
@pytest.mark.parametrize("m", [1, 3, 5, 8, 17])
def test_sparse_linear_matches_numpy(lib: ctypes.CDLL, encoding: SparseEncoding,
                                     m: int) -> None:
    """Rows below KILN_SP_MIN_BATCH gather (spmv); from it, transpose + spmm + transpose."""
    rng = np.random.default_rng([m, 7, len(str(encoding))])
    rows, cols = shape_for(encoding, 33, 127)
    weight = Weight(rng, rows, cols, encoding, zeros=0.9)
    x = rng.standard_normal((m, cols)).astype(np.float32)
    y = np.full((m, rows), np.nan, np.float32)
    floats = lib.kiln_sparse_linear_scratch(m, cols, rows)
    scratch = np.full(max(floats, 1), np.nan, np.float32)
    lib.kiln_sparse_linear(weight.ref, ptr(x), ctypes.c_ssize_t(cols), m, ptr(y),
                           ctypes.c_ssize_t(rows), None, ctypes.c_float(-np.inf),
                           ctypes.c_float(np.inf), ptr(scratch) if floats else None)
    close(y, reference(weight.matrix, x.T, None, -np.inf, np.inf).T)


def test_spmv_strided_rows(lib: ctypes.CDLL) -> None:
    rng = np.random.default_rng(11)
    weight = Weight(rng, 24, 40, SparseEncoding("csr"), zeros=0.5)
    x = rng.standard_normal((3, 48)).astype(np.float32)  # ldx 48 > K 40
    y = np.zeros((3, 30), np.float32)
    bias = rng.standard_normal(24).astype(np.float32)
    lib.kiln_spmv(weight.ref, ptr(x), ctypes.c_ssize_t(48), 3, ptr(y), ctypes.c_ssize_t(30),
                  ptr(bias), ctypes.c_float(0.0), ctypes.c_float(6.0))
    close(y[:, :24], reference(weight.matrix, x[:, :40].T, bias, 0.0, 6.0).T)
    assert not y[:, 24:].any()


@pytest.mark.parametrize("m,k", [(1, 1), (16, 16), (17, 33), (64, 127)])
def test_transpose_pads_with_zeros(lib: ctypes.CDLL, m: int, k: int) -> None:
    x = np.random.default_rng(m * k).standard_normal((m, k)).astype(np.float32)
    ldt = -(-m // 16) * 16 + 16
    xt = np.full((k, ldt), np.nan, np.float32)
    lib.kiln_sp_transpose(ptr(x), m, k, ctypes.c_ssize_t(k), ptr(xt), ldt)
    np.testing.assert_array_equal(xt[:, :m], x.T)
    assert not xt[:, m:].any()


def test_index_arrays_travel_as_raw_bits() -> None:
    idx = np.array([0, 1, 7, 1 << 20], np.int32)
    assert as_float_bits(idx).view(np.int32).tolist() == idx.tolist()
    pos = np.array([3, 0, 2], np.uint8)
    assert as_float_bits(pos).view(np.uint8)[:3].tolist() == [3, 0, 2]


@pytest.mark.parametrize("fmt", ["csr", "block"])
def test_cost_rule_picks_dense_when_dense(fmt: str) -> None:
    encoding = SparseEncoding(fmt, (4, 4) if fmt == "block" else ())
    for batch in (1, 64):
        assert not choose(encoding, 0.6, batch, 512, 512).sparse
        assert "dense: sparse would be slower at density 0.60" in choose(
            encoding, 0.6, batch, 512, 512).reason
        low = choose(encoding, 0.05, batch, 512, 512)
        regime = "gemv" if batch == 1 else "gemm"
        assert low.sparse == (MAX_DENSITY[(fmt, regime)] >= 0.05)
    assert not choose(encoding, 0.05, 64, 512, 512, mode="off").sparse
    assert choose(encoding, 0.9, 64, 512, 512, mode="always").sparse
    assert not choose(encoding, 0.01, 64, 8, 8).sparse  # tiny layer
    assert not choose(encoding, 0.7, 256, 64, 576, conv=True).sparse
    assert choose(encoding, 0.1, 256, 64, 576, conv=True).sparse

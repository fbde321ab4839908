"""Sparse weight encodings: pattern checks, magnitude enforcement and the arrays codegen stores.

A sparse weight stays a dense array in `module.weights`; its `TensorType.encoding` (`csr`,
`nm<n,m>`, `block<r,c>`) is metadata that promises a zero pattern, so the interpreter runs it
exactly as the dense weight. Code generators call the encoders here to get the compressed arrays.

Every check and encoder works on the weight's **matrix view**: rows are output features, columns
the reduction (the dot-product dimension), in the order kiln's GEMM reads them:

- conv `(O, I/groups, *kernel)` → `(O, I/groups · prod(kernel))`, columns in `(i, kh, kw)` order
  (row-major OIHW: the im2col order of `kiln.ir.ops.nn_conv.conv_nd`);
- linear `(out, in)` → itself;
- a matmul weight: lhs `(M, K)` → itself, rhs `(K, N)` → its transpose `(N, K)` (`transposed`).

Patterns:
- `csr`: any zeros; the weight qualifies when its fraction of zeros is at least `min_sparsity`.
- `nm<n,m>`: every group of `m` consecutive columns of a row holds at most `n` non-zeros
  (`m` must divide the column count).
- `block<r,c>`: the matrix tiles into `r×c` blocks (`r` divides the rows, `c` the columns), each
  all-zero or stored whole; qualifies when the fraction of all-zero blocks is at least
  `min_sparsity`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kiln.errors import KilnError
from kiln.ir.types import SparseEncoding


@dataclass(frozen=True)
class CSR:
    """Compressed sparse rows of the matrix view: row `i`'s non-zeros are
    `values[indptr[i]:indptr[i+1]]` at columns `indices[...]` (int32 indices)."""

    shape: tuple[int, int]
    indptr: np.ndarray
    indices: np.ndarray
    values: np.ndarray


@dataclass(frozen=True)
class NM:
    """N:M compressed rows: for each group of `m` columns, `n` values and their positions
    (0..m-1, int8) inside the group; groups with fewer non-zeros are padded with zeros at the
    lowest free positions. `values` and `indices` are (rows, columns / m · n)."""

    shape: tuple[int, int]
    n: int
    m: int
    values: np.ndarray
    indices: np.ndarray


@dataclass(frozen=True)
class BlockSparse:
    """Block-CSR (BSR): block row `i` holds blocks `blocks[indptr[i]:indptr[i+1]]`, each r×c,
    at block columns `indices[...]` (int32)."""

    shape: tuple[int, int]
    block: tuple[int, int]
    indptr: np.ndarray
    indices: np.ndarray
    blocks: np.ndarray


Encoded = CSR | NM | BlockSparse


# -- the matrix view ----------------------------------------------------------------------------
def weight_matrix(weight: np.ndarray, transposed: bool = False) -> np.ndarray:
    """The (outputs, reduction) matrix view of a weight (module docstring)."""
    w = np.asarray(weight)
    if transposed:
        if w.ndim != 2:
            raise KilnError(f"a transposed (K, N) weight must be 2-D, got shape {list(w.shape)}")
        return w.T
    if w.ndim < 2:
        raise KilnError(f"a weight matrix needs rank >= 2, got shape {list(w.shape)}")
    return w.reshape(w.shape[0], -1)


def from_matrix(matrix: np.ndarray, shape: tuple[int, ...], transposed: bool = False) -> np.ndarray:
    """The inverse of `weight_matrix`: a weight of `shape` from its matrix view."""
    return np.ascontiguousarray(matrix.T if transposed else matrix).reshape(shape)


# -- pattern checks ------------------------------------------------------------------------------
def zero_fraction(matrix: np.ndarray) -> float:
    """Fraction of exactly-zero entries (0 for an empty matrix)."""
    return float(np.count_nonzero(matrix == 0)) / matrix.size if matrix.size else 0.0


def pattern_mismatch(shape: tuple[int, int], encoding: SparseEncoding) -> str | None:
    """Why `encoding`'s tiling does not divide a matrix of `shape` (None when it does)."""
    rows, cols = shape
    if encoding.format == "nm":
        n, m = encoding.params
        if n > m:
            return f"nm<{n},{m}> keeps more values than a group holds (n must be <= m)"
        if cols % m:
            return f"m={m} does not divide the {cols} reduction inputs"
    if encoding.format == "block":
        r, c = encoding.params
        if rows % r or cols % c:
            return f"block {r}x{c} does not tile the {rows}x{cols} weight matrix"
    return None


def _checked(matrix: np.ndarray, encoding: SparseEncoding) -> None:
    reason = pattern_mismatch((matrix.shape[0], matrix.shape[1]), encoding)
    if reason is not None:
        raise KilnError(reason)


def nm_groups(matrix: np.ndarray, m: int) -> np.ndarray:
    """(rows, columns / m, m) view of the column groups."""
    return matrix.reshape(matrix.shape[0], -1, m)


def is_nm(matrix: np.ndarray, n: int, m: int) -> bool:
    """Every group of m consecutive columns has at most n non-zeros."""
    _checked(matrix, SparseEncoding("nm", (n, m)))
    return bool(np.all(np.count_nonzero(nm_groups(matrix, m), axis=2) <= n))


def tiles(matrix: np.ndarray, r: int, c: int) -> np.ndarray:
    """(rows / r, columns / c, r, c) view of the r×c blocks."""
    rows, cols = matrix.shape
    return matrix.reshape(rows // r, r, cols // c, c).transpose(0, 2, 1, 3)


def zero_block_fraction(matrix: np.ndarray, r: int, c: int) -> float:
    """Fraction of r×c blocks that are all zero."""
    _checked(matrix, SparseEncoding("block", (r, c)))
    nonzero = np.any(tiles(matrix, r, c) != 0, axis=(2, 3))
    return 1.0 - float(np.count_nonzero(nonzero)) / nonzero.size if nonzero.size else 0.0


def satisfies(matrix: np.ndarray, encoding: SparseEncoding, min_sparsity: float) -> bool:
    """Whether the matrix qualifies for `encoding` (the module docstring's rules)."""
    if encoding.format == "nm":
        return is_nm(matrix, *encoding.params)
    if encoding.format == "block":
        r, c = encoding.params
        nonzero = np.any(tiles(matrix, r, c) != 0, axis=(2, 3))
        return _enough(nonzero.size - int(np.count_nonzero(nonzero)), nonzero.size, min_sparsity)
    return _enough(int(np.count_nonzero(matrix == 0)), matrix.size, min_sparsity)


def _enough(zeros: int, size: int, min_sparsity: float) -> bool:
    """At least the round(min_sparsity · size) zeros `enforce` makes: counted in entries (or
    blocks), so a matrix `enforce` pruned always qualifies (0.9 · 256² rounds to 58982 zeros,
    a fraction of 0.89999)."""
    return zeros >= prune_count(size, min_sparsity)


# -- enforcing a pattern by magnitude ----------------------------------------------------------
def smallest(scores: np.ndarray, count: int) -> np.ndarray:
    """Boolean mask of the `count` smallest entries of a 1-D array (ties: lower index first)."""
    mask = np.zeros(scores.shape, bool)
    mask[np.argsort(scores, kind="stable")[:max(count, 0)]] = True
    return mask


def prune_count(size: int, sparsity: float) -> int:
    """How many of `size` entries a sparsity asks to be zero (rounded to nearest)."""
    return min(size, round(sparsity * size))


def enforce_magnitude(matrix: np.ndarray, sparsity: float) -> np.ndarray:
    """Zero the round(sparsity · size) entries of smallest |value| (existing zeros count)."""
    flat = matrix.reshape(-1)
    drop = smallest(np.abs(flat.astype(np.float64)), prune_count(flat.size, sparsity))
    return np.where(drop, flat.dtype.type(0), flat).reshape(matrix.shape)


def enforce_nm(matrix: np.ndarray, n: int, m: int) -> np.ndarray:
    """Keep the n largest |values| of every m-column group, zero the rest (ties: lower column
    kept)."""
    _checked(matrix, SparseEncoding("nm", (n, m)))
    groups = nm_groups(matrix, m)
    order = np.argsort(-np.abs(groups.astype(np.float64)), axis=2, kind="stable")
    keep = np.zeros(groups.shape, bool)
    np.put_along_axis(keep, order[:, :, :n], True, axis=2)
    return np.where(keep, groups, groups.dtype.type(0)).reshape(matrix.shape)


def enforce_blocks(matrix: np.ndarray, r: int, c: int, sparsity: float) -> np.ndarray:
    """Zero the round(sparsity · blocks) r×c blocks of smallest L1 norm."""
    _checked(matrix, SparseEncoding("block", (r, c)))
    blocks = tiles(matrix, r, c)
    norms = np.abs(blocks.astype(np.float64)).sum(axis=(2, 3))
    drop = smallest(norms.reshape(-1), prune_count(norms.size, sparsity)).reshape(norms.shape)
    out = np.where(drop[:, :, None, None], blocks.dtype.type(0), blocks)
    return out.transpose(0, 2, 1, 3).reshape(matrix.shape)


def enforce(matrix: np.ndarray, encoding: SparseEncoding, min_sparsity: float) -> np.ndarray:
    """The matrix with `encoding`'s pattern imposed by magnitude."""
    if encoding.format == "nm":
        return enforce_nm(matrix, *encoding.params)
    if encoding.format == "block":
        r, c = encoding.params
        return enforce_blocks(matrix, r, c, min_sparsity)
    return enforce_magnitude(matrix, min_sparsity)


# -- encoders and decoders --------------------------------------------------------------------
def encode_csr(matrix: np.ndarray) -> CSR:
    rows, cols = np.nonzero(matrix)
    indptr = np.zeros(matrix.shape[0] + 1, np.int32)
    np.cumsum(np.bincount(rows, minlength=matrix.shape[0]), out=indptr[1:])
    return CSR((matrix.shape[0], matrix.shape[1]), indptr, cols.astype(np.int32),
               matrix[rows, cols].copy())


def decode_csr(csr: CSR) -> np.ndarray:
    out = np.zeros(csr.shape, csr.values.dtype)
    rows = np.repeat(np.arange(csr.shape[0]), np.diff(csr.indptr))
    out[rows, csr.indices] = csr.values
    return out


def encode_nm(matrix: np.ndarray, n: int, m: int) -> NM:
    """The n kept positions of each group: its non-zeros first, then the lowest zero positions
    (a stable sort of `value == 0`), each group's positions in increasing order."""
    if not is_nm(matrix, n, m):
        raise KilnError(f"the matrix does not follow the {n}:{m} pattern")
    groups = nm_groups(matrix, m)
    pick = np.sort(np.argsort(groups == 0, axis=2, kind="stable")[:, :, :n], axis=2)
    values = np.take_along_axis(groups, pick, axis=2)
    rows = matrix.shape[0]
    return NM((rows, matrix.shape[1]), n, m, values.reshape(rows, -1),
              pick.astype(np.int8).reshape(rows, -1))


def decode_nm(nm: NM) -> np.ndarray:
    rows, cols = nm.shape
    out = np.zeros((rows, cols // nm.m, nm.m), nm.values.dtype)
    idx = nm.indices.reshape(rows, -1, nm.n).astype(np.int64)
    np.put_along_axis(out, idx, nm.values.reshape(rows, -1, nm.n), axis=2)
    return out.reshape(rows, cols)


def encode_blocks(matrix: np.ndarray, r: int, c: int) -> BlockSparse:
    blocks = tiles(matrix, r, c)
    keep = np.any(blocks != 0, axis=(2, 3))
    brow, bcol = np.nonzero(keep)
    indptr = np.zeros(keep.shape[0] + 1, np.int32)
    np.cumsum(keep.sum(axis=1), out=indptr[1:])
    return BlockSparse((matrix.shape[0], matrix.shape[1]), (r, c), indptr,
                       bcol.astype(np.int32), blocks[brow, bcol].copy())


def decode_blocks(bsr: BlockSparse) -> np.ndarray:
    r, c = bsr.block
    rows, cols = bsr.shape
    out = np.zeros((rows // r, cols // c, r, c), bsr.blocks.dtype)
    brow = np.repeat(np.arange(rows // r), np.diff(bsr.indptr))
    out[brow, bsr.indices] = bsr.blocks
    return out.transpose(0, 2, 1, 3).reshape(rows, cols)


def encode(weight: np.ndarray, encoding: SparseEncoding, transposed: bool = False) -> Encoded:
    """The compressed arrays of `weight` (any rank; see the matrix view) for `encoding`."""
    matrix = weight_matrix(weight, transposed)
    if encoding.format == "nm":
        return encode_nm(matrix, *encoding.params)
    if encoding.format == "block":
        _checked(matrix, encoding)
        return encode_blocks(matrix, *encoding.params)
    return encode_csr(matrix)


def decode(encoded: Encoded) -> np.ndarray:
    """The dense matrix view back from its encoding."""
    if isinstance(encoded, NM):
        return decode_nm(encoded)
    if isinstance(encoded, BlockSparse):
        return decode_blocks(encoded)
    return decode_csr(encoded)


__all__ = ["CSR", "NM", "BlockSparse", "Encoded", "decode", "encode", "enforce",
           "enforce_magnitude", "enforce_nm", "from_matrix", "is_nm", "pattern_mismatch",
           "prune_count", "satisfies", "smallest", "weight_matrix", "zero_block_fraction",
           "zero_fraction"]

"""Sparse-weight GEMM anchors for the C backend: linear and conv layers whose weight carries a
`csr`, `nm<n,m>` or `block<r,c>` encoding (the `sparsify` pass) run `kiln_sparse.c` kernels.

The weight is a build-time constant, so its compressed arrays (`kiln.ir.sparse.encode` of the
matrix view) are computed here and stored in the weights blob beside the dense ones; their
int32/uint8 index arrays travel as raw bits in float32 slots (`as_float_bits`), which the C
side reads through may_alias pointers.

Sparse is chosen only where it is faster: `choose` is the cost rule, a table of the highest
density at which each format beat the dense micro-kernel on this project's reference machine
(AMD EPYC, AVX-512, gcc -O3, one thread; `bench/cpu_sparse.py` measures it), split by
regime — a linear GEMV (fewer than `MIN_BATCH` activation rows: the kernel gathers x, so it
wins only by reading fewer weight bytes), a linear GEMM (each non-zero broadcast against a
whole row of transposed activations) or a convolution (the same against im2col columns, no
transposes). Anything else — too dense, a tiny layer, a weight
that is not a compile-time constant, grouped/depthwise convolutions, `sparse="off"` — runs the
dense kernel on the densified weight (`module.weights` holds it dense anyway), and the report
and the kernel's C comment say which and why: `sparse csr kernel, density 0.10` or
`dense: sparse would be slower at density 0.60`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from kiln.codegen.c.context import KernelContext
from kiln.codegen.c.conv_anchors import ConvAnchor
from kiln.codegen.c.expr import c_diff, c_product, c_ptr
from kiln.codegen.c.gemm_anchors import Anchor, Block, LinearAnchor
from kiln.ir import sparse
from kiln.ir.graph import Block as IRBlock
from kiln.ir.graph import Op, Value
from kiln.ir.ops.core import Weight
from kiln.ir.ops.nn_conv import Conv1d, Conv2d, Linear
from kiln.ir.types import SparseEncoding

MIN_BATCH = 8
"""Activation rows from which a linear layer runs the broadcast kernel (`KILN_SP_MIN_BATCH`)."""

MIN_MACS = 4096
"""Layers with fewer dense multiply-adds per activation row stay dense: call overhead wins."""

MAX_DENSITY: dict[tuple[str, str], float] = {
    ("csr", "gemv"): 0.12, ("csr", "gemm"): 0.40, ("csr", "conv"): 0.55,
    ("nm", "gemv"): 0.0, ("nm", "gemm"): 0.0, ("nm", "conv"): 0.50,
    ("block", "gemv"): 0.15, ("block", "gemm"): 0.55, ("block", "conv"): 0.55,
}
"""(format, regime) → the highest density (non-zeros, or non-zero blocks for `block`; `nm`
stores n/m) at which the sparse kernel is chosen. From `bench/cpu_sparse.py` (linear 256, 512,
1024 and a 64→64 3×3 conv; batch 1 and 64; sparse/dense latency):

- csr, GEMV: 90 % zeros 1.16× / 1.20× / 1.36× (256/512/1024), 95 % 1.5-2.3×, 75 % 0.6-0.7×
  — the dense AVX-512 GEMV does 16 multiply-adds per load, the gather one per two loads;
- csr, GEMM: 75 % zeros 1.7-2.2×, 90 % 3.7-4.2×, 50 % 0.93-1.08×;
- block 4×4, GEMV: 90 % 1.5-1.9×, 75 % 0.8-1.06×; GEMM: 50 % 1.6-2.0×, 90 % 4.0-5.4×;
- nm<2,4>: 0.26-0.42× (GEMV), 0.93-1.13× (linear GEMM): half the weights plus positions do
  not pay off there, so linear layers stay dense;
- conv (its own regime: no transposes, hundreds of im2col columns): csr 50 % 1.13-1.17×,
  90 % 2.5-2.8×; nm<2,4> 1.16-1.18×; block 50 % 1.8×, 90 % 3.4-3.9×."""

FORMAT_CODES = {"csr": "KILN_SP_CSR", "nm": "KILN_SP_NM", "block": "KILN_SP_BLOCK"}


@dataclass(frozen=True)
class Choice:
    """The kernel a sparse layer gets, and the phrase the report shows."""

    sparse: bool
    reason: str


def density(matrix: np.ndarray, encoding: SparseEncoding) -> float:
    """The fraction of the matrix the kernel computes with (what the cost rule compares)."""
    if encoding.format == "nm":
        n, m = encoding.params
        return n / m
    if encoding.format == "block":
        return 1.0 - sparse.zero_block_fraction(matrix, *encoding.params)
    return 1.0 - sparse.zero_fraction(matrix)


def choose(encoding: SparseEncoding, dens: float, batch: int, rows: int, cols: int,
           mode: str = "auto", conv: bool = False) -> Choice:
    """The cost rule (module docstring): sparse kernel or dense, for a weight matrix of
    `rows × cols` applied to `batch` activation columns (a convolution's: output pixels).
    `mode`: `auto` applies the rule, `off` says dense, `always` sparse (benchmarks, tests)."""
    label = str(encoding)
    if mode == "off" or not supported(encoding):
        return Choice(False, f"dense: sparse kernels off ({label}, density {dens:.2f})")
    if mode == "always":
        return Choice(True, f"sparse {label} kernel, density {dens:.2f} (forced)")
    if rows * cols < MIN_MACS:
        return Choice(False, f"dense: layer too small for a sparse kernel ({label}, "
                      f"density {dens:.2f})")
    regime = "conv" if conv else ("gemv" if batch < MIN_BATCH else "gemm")
    if dens > MAX_DENSITY[(encoding.format, regime)]:
        return Choice(False, f"dense: sparse would be slower at density {dens:.2f} "
                      f"({label}, {regime})")
    return Choice(True, f"sparse {label} kernel, density {dens:.2f}")


def as_float_bits(array: np.ndarray) -> np.ndarray:
    """int32 / uint8 data as float32 words with the same bytes (uint8 zero-padded to 4)."""
    raw = np.ascontiguousarray(array).tobytes()
    raw += b"\0" * (-len(raw) % 4)
    return np.frombuffer(raw, np.float32).copy() if raw else np.zeros(1, np.float32)


def sparse_arrays(weight: np.ndarray, encoding: SparseEncoding) -> dict[str, np.ndarray]:
    """The float32 arrays the C struct points at: `values` and, per format, `indices`,
    `pos`, `indptr` (index arrays as raw bits)."""
    encoded = sparse.encode(weight, encoding)
    if isinstance(encoded, sparse.NM):
        return {"values": encoded.values.astype(np.float32).ravel(),
                "pos": as_float_bits(encoded.indices.astype(np.uint8))}
    if isinstance(encoded, sparse.BlockSparse):
        values = encoded.blocks.astype(np.float32).ravel()
    else:
        values = encoded.values.astype(np.float32)
    return {"values": values if values.size else np.zeros(1, np.float32),
            "indices": as_float_bits(encoded.indices.astype(np.int32)),
            "indptr": as_float_bits(encoded.indptr.astype(np.int32))}


def supported(encoding: SparseEncoding) -> bool:
    """Encodings the C kernels read (nm positions must fit a byte below 128)."""
    return encoding.format != "nm" or encoding.params[1] < 128


class _SparseMixin:
    """Shared by both anchors: the decision and the `kiln_sparse` struct declaration."""

    ctx: KernelContext
    op: Op
    choice: Choice

    def decide(self, batch: int) -> bool:
        ctx, value = self.ctx, self.op.operands[1]
        source = ctx.source_op(value)
        encoding = source.results[0].type.encoding if source is not None else None
        if source is None or not source.isa(Weight) or encoding is None:
            self.choice = Choice(False, "dense: the sparse weight is not a build-time constant")
            return False
        data = ctx.constant_array(value)
        if data is None:  # unreachable: source_op found the weight
            return False
        matrix = sparse.weight_matrix(data)
        rows, cols = matrix.shape
        self.choice = choose(encoding, density(matrix, encoding), batch, rows, cols,
                             ctx.options.sparse, conv=not self.op.isa(Linear))
        ctx.note(self.choice.reason)
        if self.choice.sparse:
            self.declare(encoding, rows, cols)
        return self.choice.sparse

    def declare(self, encoding: SparseEncoding, rows: int, cols: int) -> None:
        ctx, value = self.ctx, self.op.operands[1]
        tag = str(encoding).replace("<", "").replace(">", "").replace(",", "_")
        refs: dict[str, str] = {}
        for key in _keys(encoding):
            ident = ctx.packed(value, f"sp{tag}_{key}", _array_maker(encoding, key))
            refs[key] = ident or "NULL"
        p0, p1 = encoding.params if encoding.params else (0, 0)
        casts = {"indices": "const kiln_i32_a*", "pos": "const unsigned char*",
                 "indptr": "const kiln_i32_a*"}
        fields = [str(rows), str(cols), FORMAT_CODES[encoding.format], str(p0), str(p1),
                  refs["values"], *(f"({ctype}){refs[key]}" if key in refs else "NULL"
                                    for key, ctype in casts.items())]
        ctx.w.line(f"const kiln_sparse sparse_w = {{{', '.join(fields)}}};")


def _array_maker(encoding: SparseEncoding, key: str) -> Callable[[np.ndarray], np.ndarray]:
    """Build-time maker of one of `sparse_arrays`' arrays (one weights-blob entry each)."""
    return lambda weight: sparse_arrays(weight, encoding)[key]


def _keys(encoding: SparseEncoding) -> tuple[str, ...]:
    return ("values", "pos") if encoding.format == "nm" else ("values", "indices", "indptr")


class SparseLinearAnchor(_SparseMixin, LinearAnchor):
    """A linear layer with a sparse weight: `kiln_sparse_linear` per block of rows."""

    def setup(self) -> None:
        self.use_sparse = self.decide(self.view.rows_n)
        if not self.use_sparse:
            super().setup()
            return
        self.k = self.op.operands[1].type.shape[1]

    def scratch_per_thread(self) -> int:
        if not self.use_sparse or self.view.rows_n < MIN_BATCH:
            return 0
        vlen, n = self.ctx.options.vector_width, self.view.cols_n
        return (self.k + n) * (-(-self.view.rows_n // vlen) * vlen)  # kiln_sparse_linear_scratch

    def block(self, bvars: dict[int, str], blk: Block, dst: str, ldd: int, lo: str,
              hi: str) -> None:
        if not self.use_sparse:
            super().block(bvars, blk, dst, ldd, lo, hi)
            return
        ctx = self.ctx
        x = c_ptr(ctx.ref(self.op.operands[0]), c_product(blk.r0, self.k))
        bias = ctx.ref(self.op.operands[2]) if len(self.op.operands) > 2 else "NULL"
        scratch = self.thread_scratch or "NULL"
        ctx.w.line(f"kiln_sparse_linear(&sparse_w, {x}, {self.k}, {c_diff(blk.r1, blk.r0)}, "
                   f"{dst}, {ldd}, {bias}, {lo}, {hi}, {scratch});")


class SparseConvAnchor(_SparseMixin, ConvAnchor):
    """A groups = 1 convolution with a sparse weight: im2col (unless 1×1) then `kiln_spmm`,
    each non-zero of W multiply-adding a row of the column buffer."""

    def setup(self) -> None:
        geo = self.geometry()
        self.use_sparse = self.decide(geo["OH"] * geo["OW"])
        if not self.use_sparse:
            super().setup()
            return
        ctx = self.ctx
        self.k = geo["C"] * geo["KH"] * geo["KW"]
        self.p = geo["OH"] * geo["OW"]
        self.direct = (geo["KH"], geo["KW"], geo["sh"], geo["sw"], geo["pt"], geo["pl"]) == (
            1, 1, 1, 1, 0, 0) and self.op.operands[0].type.shape[2:] == self.view.shape[2:]
        self.ld = self.p
        if not self.direct:
            self.declare_shape()
            half = ctx.options.nr // 2
            self.ld = -(-self.p // half) * half
            self.col = ctx.scratch(self.k * self.ld)

    def scratch_per_thread(self) -> int:
        return 0 if self.use_sparse else super().scratch_per_thread()

    def prologue(self, bvars: dict[int, str]) -> None:
        if not self.use_sparse:
            super().prologue(bvars)
        elif self.direct:
            self.b = self.image(bvars)
        else:
            self.ctx.w.line(f"kiln_im2col({self.image(bvars)}, &shape, {self.col}, {self.ld});")
            self.b = self.col

    def block(self, bvars: dict[int, str], blk: Block, dst: str, ldd: int, lo: str,
              hi: str) -> None:
        if not self.use_sparse:
            super().block(bvars, blk, dst, ldd, lo, hi)
            return
        n = c_diff(blk.c1, blk.c0)
        self.ctx.w.line(f"kiln_spmm(&sparse_w, {c_ptr(self.b, blk.c0)}, {self.ld}, {n}, "
                        f"{int(not self.direct)}, {dst}, {ldd}, 1, {self.bias()}, {lo}, {hi});")


def weight_encoding(value: Value) -> SparseEncoding | None:
    """The encoding of the weight behind `value`, through fused-group arguments (whose types
    do not repeat it)."""
    while isinstance(value.owner, IRBlock) and isinstance(value.owner.parent, Op):
        value = value.owner.parent.operands[value.index]
    return value.type.encoding


def sparse_anchor(op: Op) -> type[Anchor] | None:
    """The sparse anchor for `op` when its weight carries an encoding (None otherwise: the
    usual anchor, which reads the weight densely)."""
    if len(op.operands) < 2 or weight_encoding(op.operands[1]) is None:
        return None
    kind = op.kind
    if isinstance(kind, Linear):
        return SparseLinearAnchor
    if isinstance(kind, (Conv1d, Conv2d)) and kind.groups == 1 and not (
            op.operands[0].type.shape[1] == 1 == op.results[0].type.shape[1]):
        return SparseConvAnchor
    return None

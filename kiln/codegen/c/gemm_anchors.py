"""GEMM-like anchors: ops whose output is computed block by block, with an epilogue after each.

Every anchor sees its output as `batch × rows × cols` (`GemmView`): a convolution's NCHW output
is N × Cout × (OH·OW), a linear layer's is 1 × (leading dims) × out_features, a batched matmul's
is (batch dims) × M × N. Blocks run over columns (convolutions: all output channels of a slab
of pixels) or rows (linear/matmul: a slab of rows, all outputs), so the block in the epilogue
tile is small enough to stay in cache. An anchor emits its kernel in three steps: `setup` (once:
packed weights, shapes), `prologue` (per batch index: the image, padded if need be), `block`
(one block into `dst`).

How the GEMMs proper compute (convolutions: `conv_anchors`; which anchor an op gets:
`anchors.anchor_class`):

- linear: x (strided A) × packed weight (NR-column panels as B), bias per column.
- matmul: strided A × strided B per batch index (broadcast batch dims read at stride 0).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from kiln.codegen.c.context import KernelContext
from kiln.codegen.c.expr import c_diff, c_product, c_ptr, c_sum, contiguous_strides
from kiln.codegen.c.packing import pack_panels, panels
from kiln.ir.graph import Op, Value

Shape = tuple[int, ...]


@dataclass(frozen=True)
class GemmView:
    """The anchor's output shape split into batch, row and column dims."""

    shape: Shape
    batch: tuple[int, ...]
    rows: tuple[int, ...]
    cols: tuple[int, ...]
    by_rows: bool

    @property
    def rows_n(self) -> int:
        return math.prod(self.shape[d] for d in self.rows)

    @property
    def cols_n(self) -> int:
        return math.prod(self.shape[d] for d in self.cols)


@dataclass(frozen=True)
class Block:
    """One block of one batch index: rows [r0, r1) × cols [c0, c1) (C names), block number."""

    r0: str
    r1: str
    c0: str
    c1: str
    index: str


class Anchor:
    """Base class; subclasses fill `view` and implement the three steps."""

    clamp_ok = True

    def __init__(self, ctx: KernelContext) -> None:
        self.ctx = ctx
        self.op = ctx.op
        self.view = self.make_view()
        self.fixed_block: int | None = None
        """Block size the anchor needs (a grouped conv's rows per group), None for any."""
        self.thread_scratch = ""
        """Set by the driver: this thread's `scratch_per_thread()` floats."""
        self.images_ok = False
        """Set by the driver before `setup` when there is no epilogue tile: the anchor may then
        compute whole images itself (`images`) instead of per batch index and block."""
        self.whole_images = False
        """Set by `setup` when the anchor does so (the driver then calls only `images`)."""

    def make_view(self) -> GemmView:
        raise NotImplementedError

    def take_epilogue(self, epilogue: tuple[Op, ...], yields: tuple[Value, ...]) -> bool:
        """Whether the anchor applies this (non-clamp) epilogue itself as it stores, so the
        driver needs no tile (asked before `setup`; the anchor keeps what it needs)."""
        return False

    def inplace_reads(self) -> tuple[Value, ...]:
        """With a taken epilogue: the epilogue operands read only at each result element's own
        position, before it is stored (the result may overwrite them)."""
        return ()

    def setup(self) -> None:
        """Declarations before the batch loop."""

    def prologue(self, bvars: dict[int, str]) -> None:
        """Per batch index (outside the parallel block loop)."""

    def block(self, bvars: dict[int, str], blk: Block, dst: str, ldd: int, lo: str,
              hi: str) -> None:
        raise NotImplementedError

    def scratch_per_thread(self) -> int:
        """Floats of scratch each thread needs inside the block loop."""
        return 0

    def images(self, i0: str, i1: str, dst: str, lo: str, hi: str) -> None:
        """With `whole_images`: batch indices [i0, i1), every output into `dst` (the result),
        bias and clamp on store."""
        raise NotImplementedError

    def gemm(self, args: dict[str, str | int], m: str, n: str) -> None:
        """`kiln_gemm_args g = {...}; kiln_sgemm(&g, 0, m, 0, n);` in a block of its own."""
        w = self.ctx.w
        with w.block(""):
            fields = ", ".join(f".{k} = {v}" for k, v in args.items())
            w.line(f"const kiln_gemm_args g = {{{fields}}};")
            w.line(f"kiln_sgemm(&g, 0, {m}, 0, {n});")


def offset(bvars: dict[int, str], strides: dict[int, int]) -> str:
    """Σ batch var × stride (the dims an operand is broadcast over have no stride)."""
    return c_sum(*(c_product(v, strides[d]) for d, v in bvars.items() if strides.get(d)))


class LinearAnchor(Anchor):
    """x (rows × in) times the packed (out × in) weight, bias per output column."""

    def make_view(self) -> GemmView:
        shape = self.op.results[0].type.shape
        return GemmView(shape, (), tuple(range(len(shape) - 1)), (len(shape) - 1,),
                        by_rows=True)

    def setup(self) -> None:
        ctx = self.ctx
        n, k = self.op.operands[1].type.shape
        self.k, nr = k, ctx.options.nr
        packed = ctx.packed(self.op.operands[1], f"pb{nr}", lambda a: pack_panels(a, nr))
        if packed is None:
            packed = ctx.scratch(panels(n, nr) * nr * k)
            ctx.w.line(f"kiln_pack_panels({ctx.ref(self.op.operands[1])}, {n}, {k}, {nr}, "
                       f"{packed});")
        self.b = packed
        ctx.note("linear gemm")

    def block(self, bvars: dict[int, str], blk: Block, dst: str, ldd: int, lo: str,
              hi: str) -> None:
        x = self.ctx.ref(self.op.operands[0])
        bias = self.ctx.ref(self.op.operands[2]) if len(self.op.operands) > 2 else "NULL"
        n, m = self.view.cols_n, c_diff(blk.r1, blk.r0)
        self.gemm({"M": m, "N": n, "K": self.k, "A": c_ptr(x, c_product(blk.r0, self.k)),
                   "lda": self.k, "a_packed": 0, "B": self.b, "ldb": 0, "b_packed": 1,
                   "b_padded": 0,
                   "C": dst, "ldc": ldd, "bias_row": "NULL", "bias_col": bias, "lo": lo,
                   "hi": hi}, m, str(n))


class MatMulAnchor(Anchor):
    """Batched matmul: per batch index, strided lhs × strided rhs (numpy broadcasting)."""

    def make_view(self) -> GemmView:
        lhs, rhs = (v.type.shape for v in self.op.operands)
        shape = self.op.results[0].type.shape
        n_rows, n_cols = int(len(lhs) > 1), int(len(rhs) > 1)
        nb = len(shape) - n_rows - n_cols
        return GemmView(shape, tuple(range(nb)), tuple(range(nb, nb + n_rows)),
                        tuple(range(nb + n_rows, len(shape))), by_rows=True)

    def batch_strides(self, operand: int) -> dict[int, int]:
        """Element strides of an operand along the output's batch dims (0: broadcast)."""
        shape = self.op.operands[operand].type.shape
        batch_out = tuple(self.view.shape[d] for d in self.view.batch)
        if len(shape) <= 2:
            return {}
        own, step = shape[:-2], shape[-2] * shape[-1]
        lead = len(batch_out) - len(own)
        strides = {}
        for i, (size, stride) in enumerate(zip(own, contiguous_strides(own))):
            if size != 1 or batch_out[lead + i] == 1:
                strides[lead + i] = stride * step
        return strides

    def setup(self) -> None:
        lhs = self.op.operands[0].type.shape
        self.k = lhs[-1]
        self.ctx.note("matmul gemm")

    def block(self, bvars: dict[int, str], blk: Block, dst: str, ldd: int, lo: str,
              hi: str) -> None:
        ctx = self.ctx
        lhs, rhs = (ctx.ref(v) for v in self.op.operands)
        n, m = self.view.cols_n, c_diff(blk.r1, blk.r0)
        a = c_ptr(lhs, c_sum(offset(bvars, self.batch_strides(0)), c_product(blk.r0, self.k)))
        b = c_ptr(rhs, offset(bvars, self.batch_strides(1)))
        self.gemm({"M": m, "N": n, "K": self.k, "A": a, "lda": self.k, "a_packed": 0, "B": b,
                   "ldb": n, "b_packed": 0, "b_padded": 0, "C": dst, "ldc": ldd, "bias_row": "NULL",
                   "bias_col": "NULL", "lo": lo, "hi": hi}, m, str(n))

"""GEMM-like anchors: ops whose output is computed block by block, with an epilogue after each.

Every anchor sees its output as `batch × rows × cols` (`GemmView`): a convolution's NCHW output
is N × Cout × (OH·OW), a linear layer's is 1 × (leading dims) × out_features, a batched matmul's
is (batch dims) × M × N. Blocks run over columns (convolutions: all output channels of a slab
of pixels) or rows (linear/matmul: a slab of rows, all outputs), so the block in the epilogue
tile is small enough to stay in cache. An anchor emits its kernel in three steps: `setup` (once:
packed weights, shapes), `prologue` (per batch index: im2col), `block` (one block into `dst`).

How each op computes (chosen by shape):

- conv (groups = 1): implicit GEMM, packed weights as A (MR-row panels) × im2col of the image
  as B; a 1×1, stride-1, unpadded conv skips im2col (the image already is B).
- depthwise conv (groups = C = Cout), and grouped convs with few taps (≤ 32 per output):
  direct, `kiln_conv2d_direct`, blocks of output channels (stride 1 over a padded grid).
- grouped conv: one block per group: im2col of the group's channels × its packed weights.
- conv_transpose2d: direct gather, one block (`kiln_conv_transpose2d`).
- linear: x (strided A) × packed weight (NR-column panels as B), bias per column.
- matmul: strided A × strided B per batch index (broadcast batch dims read at stride 0).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from kiln.codegen.c.context import KernelContext
from kiln.codegen.c.expr import c_diff, c_product, c_ptr, c_sum, contiguous_strides
from kiln.codegen.c.packing import pack_groups, pack_panels, panels
from kiln.ir.graph import Op
from kiln.ir.ops.nn_conv import Conv1d, Conv2d, ConvTranspose2d, Linear, MatMul

Shape = tuple[int, ...]

DIRECT_MAX_TAPS = 32
"""A grouped convolution with at most this many taps per output (Cin/groups × KH × KW) runs
directly, like a depthwise one: its per-group GEMMs would be slivers. (Measured here: with
groups = 1, im2col + GEMM beats the direct kernel even on a first layer with 9-27 taps, so
those always take the GEMM.)"""


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

    def make_view(self) -> GemmView:
        raise NotImplementedError

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


def _conv_geometry(op: Op) -> dict[str, int]:
    """The kiln_conv_shape fields of a conv1d/conv2d/conv_transpose2d (1-D as H = 1)."""
    kind = op.kind
    x, out = op.operands[0].type.shape, op.results[0].type.shape
    w = op.operands[1].type.shape
    stride, pad, dil = (tuple(getattr(kind, a)) for a in ("stride", "padding", "dilation"))
    if len(x) == 3:
        x, out, w = (*x[:2], 1, x[2]), (*out[:2], 1, out[2]), (*w[:2], 1, w[2])
        stride, pad, dil = (1, *stride), (0, pad[0], 0, pad[1]), (1, *dil)
    return {"C": x[1], "H": x[2], "W": x[3], "KH": w[2], "KW": w[3], "sh": stride[0],
            "sw": stride[1], "pt": pad[0], "pl": pad[1], "dh": dil[0], "dw": dil[1],
            "OH": out[2], "OW": out[3]}


class _ConvBase(Anchor):
    def make_view(self) -> GemmView:
        shape = self.op.results[0].type.shape
        return GemmView(shape, (0,), (1,), tuple(range(2, len(shape))), by_rows=False)

    def geometry(self) -> dict[str, int]:
        return _conv_geometry(self.op)

    def declare_shape(self, channels: int | None = None) -> None:
        geo = dict(self.geometry())
        if channels is not None:
            geo["C"] = channels
        values = ", ".join(str(v) for v in geo.values())
        self.ctx.w.line(f"const kiln_conv_shape shape = {{{values}}};")

    def image(self, bvars: dict[int, str]) -> str:
        x = self.op.operands[0]
        chw = math.prod(x.type.shape[1:])
        return c_ptr(self.ctx.ref(x), offset(bvars, {0: chw}))

    def bias(self) -> str:
        return self.ctx.ref(self.op.operands[2]) if len(self.op.operands) > 2 else "NULL"


class ConvAnchor(_ConvBase):
    """groups = 1: implicit GEMM (im2col unless 1×1/stride 1/no padding)."""

    def setup(self) -> None:
        geo, ctx = self.geometry(), self.ctx
        cout = self.view.shape[1]
        self.k = geo["C"] * geo["KH"] * geo["KW"]
        self.p = geo["OH"] * geo["OW"]
        self.direct = (geo["KH"], geo["KW"], geo["sh"], geo["sw"], geo["pt"], geo["pl"]) == (
            1, 1, 1, 1, 0, 0) and self.op.operands[0].type.shape[2:] == self.view.shape[2:]
        mr, k = ctx.options.mr, self.k
        packed = ctx.packed(self.op.operands[1], f"pa{mr}",
                            lambda a: pack_panels(a.reshape(cout, k), mr))
        self.a = packed or ctx.ref(self.op.operands[1])
        self.a_packed = int(packed is not None)
        self.ld = self.p
        if not self.direct:  # im2col rows padded to whole GEMM vectors: no scalar tail
            self.declare_shape()
            half = ctx.options.nr // 2
            self.ld = -(-self.p // half) * half
            self.col = ctx.scratch(self.k * self.ld)
        ctx.note("conv 1x1 gemm" if self.direct else "conv im2col+gemm")

    def prologue(self, bvars: dict[int, str]) -> None:
        if self.direct:
            self.b = self.image(bvars)
            return
        self.ctx.w.line(f"kiln_im2col({self.image(bvars)}, &shape, {self.col}, {self.ld});")
        self.b = self.col

    def block(self, bvars: dict[int, str], blk: Block, dst: str, ldd: int, lo: str,
              hi: str) -> None:
        cout = self.view.shape[1]
        n = c_diff(blk.c1, blk.c0)
        self.gemm({"M": cout, "N": n, "K": self.k, "A": self.a, "lda": self.k,
                   "a_packed": self.a_packed, "B": c_ptr(self.b, blk.c0), "ldb": self.ld,
                   "b_packed": 0, "b_padded": int(not self.direct), "C": dst, "ldc": ldd,
                   "bias_row": self.bias(),
                   "bias_col": "NULL", "lo": lo, "hi": hi}, str(cout), n)


class DirectConvAnchor(_ConvBase):
    """Depthwise convolutions and layers with few taps per output: `kiln_conv2d_direct`,
    blocks of output channels; with stride 1 over a zero-padded copy of the image (one long
    vector sweep per tap)."""

    def make_view(self) -> GemmView:
        shape = self.op.results[0].type.shape
        return GemmView(shape, (0,), (1,), tuple(range(2, len(shape))), by_rows=True)

    def setup(self) -> None:
        self.declare_shape()
        kind = self.op.kind
        assert isinstance(kind, (Conv1d, Conv2d))
        self.groups = kind.groups
        geo = self.geometry()
        depthwise = self.groups == self.view.shape[1] == geo["C"]
        self.flat = geo["sh"] == geo["sw"] == 1
        if self.flat:
            pitch = geo["OW"] + (geo["KW"] - 1) * geo["dw"]
            rows = geo["OH"] + (geo["KH"] - 1) * geo["dh"]
            self.padded = self.ctx.scratch(geo["C"] * (rows + 1) * pitch)
            self.acc = geo["OH"] * pitch
        self.ctx.note(("depthwise conv direct" if depthwise else "conv direct")
                      + (" (padded grid)" if self.flat else ""))

    def scratch_per_thread(self) -> int:
        return self.acc if self.flat else 0

    def prologue(self, bvars: dict[int, str]) -> None:
        self.x = self.image(bvars)
        if self.flat:
            self.ctx.w.line(f"kiln_conv_pad({self.x}, &shape, {self.padded});")

    def block(self, bvars: dict[int, str], blk: Block, dst: str, ldd: int, lo: str,
              hi: str) -> None:
        weight = self.ctx.ref(self.op.operands[1])
        padded, acc = (self.padded, self.thread_scratch) if self.flat else ("NULL", "NULL")
        self.ctx.w.line(f"kiln_conv2d_direct({self.x}, {padded}, {weight}, {self.bias()}, "
                        f"{dst}, {blk.r0}, {blk.r1}, {self.view.shape[1]}, {self.groups}, "
                        f"&shape, {lo}, {hi}, {acc});")


class GroupedConvAnchor(_ConvBase):
    """1 < groups < C: per group, im2col of its channels × its packed weights."""

    def make_view(self) -> GemmView:
        shape = self.op.results[0].type.shape
        return GemmView(shape, (0,), (1,), tuple(range(2, len(shape))), by_rows=True)

    def setup(self) -> None:
        geo, ctx, kind = self.geometry(), self.ctx, self.op.kind
        assert isinstance(kind, (Conv1d, Conv2d))
        self.groups = kind.groups
        cout = self.view.shape[1]
        self.cout_g, self.cin_g = cout // self.groups, geo["C"] // self.groups
        self.fixed_block = self.cout_g
        self.k = self.cin_g * geo["KH"] * geo["KW"]
        self.p = geo["OH"] * geo["OW"]
        half = ctx.options.nr // 2
        self.ld = -(-self.p // half) * half
        mr, k, g = ctx.options.mr, self.k, self.groups
        packed = ctx.packed(self.op.operands[1], f"pg{mr}",
                            lambda a: pack_groups(a.reshape(cout, k), g, mr))
        self.a = packed or ctx.ref(self.op.operands[1])
        self.a_packed = int(packed is not None)
        self.declare_shape(self.cin_g)
        ctx.note(f"grouped conv im2col+gemm ({g} groups)")

    def scratch_per_thread(self) -> int:
        return self.k * self.ld

    def prologue(self, bvars: dict[int, str]) -> None:
        self.x = self.image(bvars)

    def block(self, bvars: dict[int, str], blk: Block, dst: str, ldd: int, lo: str,
              hi: str) -> None:
        geo = self.geometry()
        plane = self.cin_g * geo["H"] * geo["W"]
        col = self.thread_scratch
        image = c_ptr(self.x, c_product(blk.index, plane))
        self.ctx.w.line(f"kiln_im2col({image}, &shape, {col}, {self.ld});")
        a_step = panels(self.cout_g, self.ctx.options.mr) * self.ctx.options.mr * self.k
        a_step = a_step if self.a_packed else self.cout_g * self.k
        bias = self.bias()
        bias = bias if bias == "NULL" else c_ptr(bias, blk.r0)
        self.gemm({"M": self.cout_g, "N": self.p, "K": self.k,
                   "A": c_ptr(self.a, c_product(blk.index, a_step)), "lda": self.k,
                   "a_packed": self.a_packed, "B": col, "ldb": self.ld, "b_packed": 0,
                   "b_padded": 1, "C": dst, "ldc": ldd, "bias_row": bias, "bias_col": "NULL",
                   "lo": lo, "hi": hi}, str(self.cout_g), str(self.p))


class ConvTransposeAnchor(_ConvBase):
    """Transposed convolution, gathered directly in one block."""

    clamp_ok = False

    def make_view(self) -> GemmView:
        shape = self.op.results[0].type.shape
        return GemmView(shape, (0,), (1,), tuple(range(2, len(shape))), by_rows=True)

    def setup(self) -> None:
        self.fixed_block = self.view.rows_n
        geo = dict(self.geometry())
        values = ", ".join(str(v) for v in geo.values())
        self.ctx.w.line(f"const kiln_conv_shape shape = {{{values}}};")
        self.ctx.note("conv_transpose2d direct")

    def prologue(self, bvars: dict[int, str]) -> None:
        self.x = self.image(bvars)

    def block(self, bvars: dict[int, str], blk: Block, dst: str, ldd: int, lo: str,
              hi: str) -> None:
        weight = self.ctx.ref(self.op.operands[1])
        kind = self.op.kind
        assert isinstance(kind, ConvTranspose2d)
        groups = kind.groups
        self.ctx.w.line(f"kiln_conv_transpose2d({self.x}, {weight}, {self.bias()}, {dst}, "
                        f"{self.view.shape[1]}, {groups}, &shape);")


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


def anchor_class(op: Op) -> type[Anchor] | None:
    """Which anchor computes `op` (None: not a GEMM-like op)."""
    from kiln.codegen.c.emit_sparse import sparse_anchor  # sparse weights (they import us)

    sparse = sparse_anchor(op)
    if sparse is not None:
        return sparse
    kind = op.kind
    if isinstance(kind, (Conv1d, Conv2d)):
        groups = kind.groups
        channels, cout = op.operands[0].type.shape[1], op.results[0].type.shape[1]
        taps = math.prod(op.operands[1].type.shape[1:])
        if groups == channels == cout or (groups > 1 and taps <= DIRECT_MAX_TAPS):
            return DirectConvAnchor
        return ConvAnchor if groups == 1 else GroupedConvAnchor
    if isinstance(kind, ConvTranspose2d):
        return ConvTransposeAnchor
    if isinstance(kind, Linear):
        return LinearAnchor
    if isinstance(kind, MatMul):
        return MatMulAnchor
    return None


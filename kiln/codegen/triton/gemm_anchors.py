"""The contraction anchors (linear, matmul, conv1d/conv2d, conv_transpose2d) as GEMMs.

The GEMM template (`emit_gemm.py`) multiplies an [M, K] operand A by a [K, N] operand B, once
per program-id-2 index (`pid_b`: matmul's batch, a convolution's group). Each anchor here says
what M, N, K and the batch are, how a tile of A and of B is addressed, and where output element
(rm, rn) lives, so the epilogue can read residuals and biases at the same position:

- **linear** `x (..., K) @ Wᵀ`: rows are the flattened leading dims; B[k, n] = W[n, k].
- **matmul** `(..., M, K) @ (..., K, N)`: batch dims broadcast NumPy-style (stride 0).
- **conv** (implicit GEMM, no im2col buffer): row m = (image, output position), column n = output
  channel of the group, k = (input channel of the group, kernel tap). A[m, k] is the input
  pixel that tap k of output m sees, `ih = oh·stride − pad + kh·dilation`, zero outside the
  image (masked load). B[k, n] = W[n, k] (OIHW is already K-contiguous).
- **conv_transpose2d**: the same GEMM run backwards, a gather: output oh takes input ih when
  `oh + pad − kh·dilation = ih·stride`, i.e. where that is non-negative and divisible.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from kiln.codegen.triton.blocks import uses_dot
from kiln.codegen.triton.kernel import KernelBuilder
from kiln.codegen.triton.space import Access, Coord, scaled, strides, total, unravel
from kiln.ir.graph import Op, Value
from kiln.ir.ops.nn_conv import ConvBase, ConvTranspose2d, Linear, MatMul

ROWS = "mask_m[:, None]"
COLS = "mask_n[None, :]"
SPATIAL_NAMES = {1: ("w",), 2: ("h", "w")}


@dataclass
class Anchor:
    """A contraction as a GEMM (see the module docstring); subclasses fill the addresses."""

    op: Op
    m: int
    n: int
    k: int
    batch: int = 1
    flats: dict[tuple[tuple[int, ...], tuple[int, ...]], Access] = field(default_factory=dict)

    @property
    def x(self) -> Value:
        return self.op.operands[0]

    @property
    def w(self) -> Value:
        return self.op.operands[1]

    @property
    def bias(self) -> Value | None:
        return self.op.operands[2] if len(self.op.operands) > 2 else None

    @property
    def bias_dim(self) -> int:
        return 1

    @property
    def a3d(self) -> bool:
        """True when the A tile is [BLOCK_M, BLOCK_K, BLOCK_N] (see `ConvAnchor`)."""
        return False

    def describe(self) -> str:
        return f"GEMM M={self.m} N={self.n} K={self.k}" + \
            (f" x {self.batch}" if self.batch > 1 else "")

    def prologue(self, kb: KernelBuilder) -> None:
        """Lines before the K loop (decompose rows into output coordinates)."""

    def step(self, kb: KernelBuilder) -> tuple[str, str, str, str]:
        """Lines at the top of each K step; returns (A offset, A mask, B offset, B mask)."""
        raise NotImplementedError

    def coord(self, kb: KernelBuilder, dim: int) -> Coord:
        """Coordinate of output dim `dim` in the epilogue."""
        raise NotImplementedError


class LinearAnchor(Anchor):
    def __init__(self, op: Op) -> None:
        out = op.results[0].type.shape
        k = op.operands[0].type.shape[-1]
        super().__init__(op, math.prod(out[:-1]), out[-1], k)
        self.flats[(out, tuple(range(len(out))))] = Access(
            total([scaled("rm[:, None]", self.n), "rn[None, :]"]), (ROWS, COLS))

    @property
    def bias_dim(self) -> int:
        return self.op.results[0].type.rank - 1

    def step(self, kb: KernelBuilder) -> tuple[str, str, str, str]:
        return (total([scaled("rm[:, None]", self.k), "rk[None, :]"]),
                "mask_m[:, None] & mask_k[None, :]",
                total([scaled("rn[None, :]", self.k), "rk[:, None]"]),
                "mask_k[:, None] & mask_n[None, :]")

    def coord(self, kb: KernelBuilder, dim: int) -> Coord:
        out = self.op.results[0].type.shape
        if dim == len(out) - 1:
            return Coord("rn[None, :]", COLS)
        kb.line(f"e{dim} = {unravel('rm', out[:-1], dim)}")
        return Coord(f"e{dim}[:, None]", ROWS)


class MatMulAnchor(Anchor):
    def __init__(self, op: Op) -> None:
        out = op.results[0].type.shape
        super().__init__(op, out[-2], out[-1], op.operands[0].type.shape[-1],
                         math.prod(out[:-2]))
        self.bases = ("", "")

    def prologue(self, kb: KernelBuilder) -> None:
        batch = self.op.results[0].type.shape[:-2]
        for d, size in enumerate(batch):
            if size > 1:
                kb.line(f"b{d} = {unravel('pid_b', batch, d)}")
        self.bases = (self._base(self.x, batch), self._base(self.w, batch))

    @staticmethod
    def _base(operand: Value, batch: tuple[int, ...]) -> str:
        """Offset of this batch's matrix in `operand` (broadcast dims have stride 0)."""
        shape = operand.type.shape
        lead = len(batch) - (len(shape) - 2)
        return total([scaled(f"b{lead + j}", stride)
                      for j, (size, stride) in enumerate(zip(shape[:-2], strides(shape)[:-2]))
                      if size > 1])

    def step(self, kb: KernelBuilder) -> tuple[str, str, str, str]:
        a_base, b_base = self.bases
        return (total([a_base, scaled("rm[:, None]", self.k), "rk[None, :]"]),
                "mask_m[:, None] & mask_k[None, :]",
                total([b_base, scaled("rk[:, None]", self.n), "rn[None, :]"]),
                "mask_k[:, None] & mask_n[None, :]")

    def coord(self, kb: KernelBuilder, dim: int) -> Coord:
        rank = self.op.results[0].type.rank
        if dim == rank - 1:
            return Coord("rn[None, :]", COLS)
        if dim == rank - 2:
            return Coord("rm[:, None]", ROWS)
        return Coord(f"b{dim}")


class ConvAnchor(Anchor):
    """conv1d / conv2d / conv_transpose2d as an implicit GEMM, one group per `pid_b`.

    A grouped convolution too small per group for `tl.dot` (a depthwise one: one channel per
    group, K = the kernel taps) is *spread* instead: N runs over all output channels at once
    and A becomes a [BLOCK_M, BLOCK_K, BLOCK_N] tile (each output channel reads its own
    group's input channels), so one program covers many groups.
    """

    def __init__(self, op: Op, spread: bool = False) -> None:
        kind = op.kind
        assert isinstance(kind, ConvBase)
        x, w, out = (v.type.shape for v in (op.operands[0], op.operands[1], op.results[0]))
        self.kind = kind
        self.transposed = isinstance(kind, ConvTranspose2d)
        self.nd = len(x) - 2
        self.cin_g = x[1] // kind.groups
        self.cout_g = out[1] // kind.groups
        self.taps = math.prod(w[2:])
        self.spread = spread
        m, k = out[0] * math.prod(out[2:]), self.cin_g * self.taps
        super().__init__(op, m, out[1] if spread else self.cout_g, k,
                         1 if spread else kind.groups)
        # index suffixes of row (m), depth (k) and column (n) vectors inside an A tile
        self.ix = ("[:, None, None]", "[None, :, None]", "[None, None, :]") if spread \
            else ("[:, None]", "[None, :]", "")

    @property
    def a3d(self) -> bool:
        return self.spread

    def names(self, prefix: str) -> list[str]:
        return [prefix + s for s in SPATIAL_NAMES[self.nd]]

    def prologue(self, kb: KernelBuilder) -> None:
        out = self.op.results[0].type.shape
        rows = (out[0], *out[2:])
        for d, name in enumerate(["n", *self.names("o")]):
            if rows[d] > 1:
                kb.line(f"{name} = {unravel('rm', rows, d)}")

    def step(self, kb: KernelBuilder) -> tuple[str, str, str, str]:
        w_shape = self.w.type.shape
        taps = (self.cin_g, *w_shape[2:])
        for d, name in enumerate(["ci", *self.names("k")]):
            if taps[d] > 1:
                kb.line(f"{name} = {unravel('rk', taps, d)}")
        im, ik, i_n = self.ix
        checks = [f"mask_m{im} & mask_k{ik}" + (f" & mask_n{i_n}" if self.spread else "")]
        positions = [self._position(kb, i, checks) for i in range(self.nd)]
        return self._a_offset(positions), " & ".join(checks), *self._b()

    def _position(self, kb: KernelBuilder, i: int, checks: list[str]) -> str:
        """Input coordinate along spatial axis i, adding its validity checks."""
        size, taps = self.x.type.shape[2 + i], self.w.type.shape[2 + i]
        stride, dilation = self.kind.stride[i], self.kind.dilation[i]
        before, after = self.kind.padding[i], self.kind.padding[self.nd + i]
        im, ik, _ = self.ix
        o_term = f"{self.names('o')[i]}{im}" if self.op.results[0].type.shape[2 + i] > 1 else ""
        k_term = f"{self.names('k')[i]}{ik}" if taps > 1 else ""
        name = self.names("i")[i]
        if not o_term and not k_term:
            return self._constant_position(kb, name, i, checks)
        if self.transposed:
            parts = [o_term or "0"] + ([f"+ {before}"] if before else []) + \
                ([f"- {scaled(k_term, dilation)}"] if k_term else [])
            t = kb.assign("t" + name[1:], " ".join(parts))
            checks.append(f"({t} >= 0)")
            if stride > 1:
                checks.append(f"({t} % {stride} == 0)")
            kb.line(f"{name} = {t} // {stride}" if stride > 1 else f"{name} = {t}")
            checks.append(f"({name} < {size})")
            return name
        expr = total([scaled(o_term, stride), scaled(k_term, dilation)])
        kb.line(f"{name} = {expr}" + (f" - {before}" if before else ""))
        if before:
            checks.append(f"({name} >= 0)")
        if after or before:
            checks.append(f"({name} < {size})")
        return name

    def _constant_position(self, kb: KernelBuilder, name: str, i: int,
                           checks: list[str]) -> str:
        """A position that is a Python int (one output, one tap along axis i): checked now,
        as a bool inside a mask is an error in Triton's interpreter; a position outside
        the input masks every tap (`rk < 0`)."""
        size, stride = self.x.type.shape[2 + i], self.kind.stride[i]
        before = self.kind.padding[i]
        if self.transposed:
            valid = before % stride == 0 and 0 <= before // stride < size
            pos = before // stride
        else:
            pos = -before
            valid = 0 <= pos < size
        kb.line(f"{name} = {pos if valid else 0}")
        if not valid:
            checks.append(f"(rk{self.ix[1]} < 0)")
        return name

    def _a_offset(self, positions: list[str]) -> str:
        x_shape = self.x.type.shape
        st = strides(x_shape)
        im, ik, i_n = self.ix
        if self.spread:
            group = scaled(f"(rn // {self.cout_g}){i_n}" if self.cout_g > 1 else f"rn{i_n}",
                           self.cin_g * st[1])
        else:
            group = scaled("pid_b", self.cin_g * st[1]) if self.batch > 1 else ""
        terms = [scaled(f"n{im}", st[0]) if x_shape[0] > 1 else "", group,
                 scaled(f"ci{ik}", st[1]) if self.cin_g > 1 else ""]
        terms += [scaled(p, st[2 + i]) for i, p in enumerate(positions) if x_shape[2 + i] > 1]
        varying = x_shape[0] > 1 or self.spread or self.cin_g > 1 or any(
            x_shape[2 + i] > 1 and (self.op.results[0].type.shape[2 + i] > 1
                                    or self.w.type.shape[2 + i] > 1)
            for i in range(len(positions)))
        if not varying:  # a scalar pointer with a block mask is an error in Triton
            terms.append(f"rk{ik} * 0")
        return total(terms)

    def _b(self) -> tuple[str, str]:
        mask = "mask_k[:, None] & mask_n[None, :]"
        if not self.transposed:
            group = scaled("pid_b", self.cout_g * self.k) if self.batch > 1 else ""
            return total([group, scaled("rn[None, :]", self.k), "rk[:, None]"]), mask
        tap = "rk[:, None]" if self.cin_g == 1 else f"(rk % {self.taps})[:, None]"
        per_in = self.cout_g * self.taps
        if self.spread:
            group_in = scaled(f"(rn // {self.cout_g})[None, :]" if self.cout_g > 1
                              else "rn[None, :]", self.cin_g * per_in)
            co_local = f"(rn % {self.cout_g})[None, :]" if self.cout_g > 1 else ""
        else:
            group_in = scaled("pid_b", self.cin_g * per_in) if self.batch > 1 else ""
            co_local = "rn[None, :]"
        return total([group_in, scaled("ci[:, None]", per_in) if self.cin_g > 1 else "",
                      scaled(co_local, self.taps), tap]), mask

    def coord(self, kb: KernelBuilder, dim: int) -> Coord:
        if dim == 0:
            return Coord("n[:, None]", ROWS)
        if dim == 1:
            base = scaled("pid_b", self.cout_g) if self.batch > 1 else ""
            kb.line(f"co = {total([base, 'rn[None, :]'])}")
            return Coord("co", COLS)
        return Coord(f"{self.names('o')[dim - 2]}[:, None]", ROWS)


def make_anchor(op: Op) -> Anchor:
    """The anchor of a contraction op; grouped convs too small for `tl.dot` are spread."""
    if op.isa(Linear):
        return LinearAnchor(op)
    if op.isa(MatMul):
        return MatMulAnchor(op)
    grouped = ConvAnchor(op)
    if grouped.batch > 1 and not uses_dot(grouped.m, grouped.n, grouped.k):
        return ConvAnchor(op, spread=True)
    return grouped

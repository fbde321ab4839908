"""Winograd convolution for 3x3, stride-1, dilation-1, ungrouped fp32 convs (`kiln_winograd`).

F(m x m, 3 x 3) computes each m x m output tile with (m+2)^2 multiplies per channel pair
instead of 9 m^2, the GEMMs running over all tiles of a chunk at once (kiln_winograd.h). The
weights are transformed here, at generation time (U = G g G^T), and packed as (m+2)^2 A
operands of the GEMM micro-kernel, so the kernel only transforms the image and the results.

The anchor keeps the implicit-GEMM view of ConvAnchor (N x Cout x OH*OW, blocks of pixel
columns), so the driver's epilogue strategies (clamp on store, tiles for residual adds) are
unchanged; a block boundary inside a tile row costs one recomputed output transform.
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np

from kiln.codegen.c.conv_anchors import ConvAnchor, _conv_geometry
from kiln.codegen.c.gemm_anchors import Block
from kiln.codegen.c.options import TILE_FLOATS
from kiln.codegen.c.packing import pack_panels, panels
from kiln.ir.graph import Op
from kiln.ir.ops.nn_conv import Conv2d

VL = 8
"""KILN_WG_VL: floats per vector of the phase-split image (kiln_winograd.h)."""
SLACK = 16
"""KILN_WG_SLACK: floats past the rows of the image, V and M, and the output rows (the widest
transform vector, 16 tiles with AVX-512)."""
SKEW = 16
"""KILN_WG_SKEW: floats between one position's V (or M) rows and the next's beyond the rows."""

CHUNK_FLOATS = 96 * 1024
"""Floats of V and M together in one chunk of tile rows (384 KiB: in L2 between the input
transform, the GEMMs and the output transform). Measured on ResNet-8's layers (1 thread):
chunks of 12K floats ran 1.1-2x slower (short GEMMs), 24K up to 1.3x; 48K and 96K the same
within noise, 96K covering whole 32x32 planes."""

MIN_CHANNELS = 16
"""Fewest input and output channels for Winograd (measured, 1 thread, against the wide
implicit GEMM: 8 -> 8 channels on 32x32 break even with F(2,3), 16 -> 16 win)."""
F4_MIN_TILES = 4
"""F(4,3) from this many tiles per row up (OW >= 13), else F(2,3): F(4,3)'s transform vectors
run over the tiles of a row, and with 2 tiles per row (8x8 planes) 3/4 of their lanes idle."""

MIN_BLOCK_TILE_ROWS = 4
"""Tile rows an epilogue block must hold (unless it is the whole plane) for Winograd: at most
a quarter of the work is then recomputed where blocks split a tile row."""

_G = {
    2: [[1, 0, 0], [Fraction(1, 2)] * 3, [Fraction(1, 2), Fraction(-1, 2), Fraction(1, 2)],
        [0, 0, 1]],
    4: [[Fraction(1, 4), 0, 0], [Fraction(-1, 6)] * 3,
        [Fraction(-1, 6), Fraction(1, 6), Fraction(-1, 6)],
        [Fraction(1, 24), Fraction(1, 12), Fraction(1, 6)],
        [Fraction(1, 24), Fraction(-1, 12), Fraction(1, 6)], [0, 0, 1]],
}
"""G of F(2,3) (points 0, 1, -1, infinity) and F(4,3) (0, 1, -1, 2, -2, infinity); B^T and
A^T are written out in kiln_winograd.c."""


def winograd_weights(weight: np.ndarray, m: int, mr: int) -> np.ndarray:
    """The (Cout, Cin, 3, 3) weight as U = G g G^T, position by position ((m+2)^2 of them,
    pos = i*(m+2) + j), each a (Cout x Cin) A operand in MR-row panels (kiln_winograd.h)."""
    g = np.array(_G[m], dtype=np.float64)
    u = np.einsum("ik,ockl,jl->ijoc", g, weight.astype(np.float64), g)
    a = m + 2
    return np.concatenate([pack_panels(u[i, j].astype(np.float32), mr)
                           for i in range(a) for j in range(a)])


def tiles(geo: dict[str, int], m: int) -> tuple[int, int]:
    """(tile rows, tiles per row): KILN_WG_TH, KILN_WG_TW."""
    return -(-geo["OH"] // m), -(-geo["OW"] // m)


def image_floats(geo: dict[str, int], m: int) -> int:
    """KILN_WG_IMAGE: the phase-split padded image."""
    th, tw = tiles(geo, m)
    return geo["C"] * (th * m + 2) * m * (tw + 1) + SLACK


def scratch_floats(geo: dict[str, int], m: int, cout: int, rows: int, mr: int,
                   nr: int) -> int:
    """`kiln_wg_scratch_floats`: V and M of a chunk of `rows` tile rows, four tile rows'
    output rows (a vector's tile rows, kiln_wg_group)."""
    _, tw = tiles(geo, m)
    gl = nr // 2
    ldt = -(-(rows * tw + SLACK) // gl) * gl
    steps = (geo["C"] * ldt + SKEW) + (panels(cout, mr) * mr * ldt + SKEW)
    return (m + 2) ** 2 * steps + 4 * m * (tw + 1) * m + SLACK * m


def chunk_rows(geo: dict[str, int], m: int, cout: int, mr: int) -> int:
    """Tile rows per chunk: as many as keep V and M within CHUNK_FLOATS (at least one)."""
    th, tw = tiles(geo, m)
    per_row = (m + 2) ** 2 * (geo["C"] + panels(cout, mr) * mr) * tw
    return max(1, min(th, CHUNK_FLOATS // per_row))


def winograd_tile(op: Op) -> int | None:
    """The tile size m the conv runs with (None: not a Winograd conv). 3x3, stride 1,
    dilation 1, groups 1, 2-D, padding at most 2."""
    kind = op.kind
    if not isinstance(kind, Conv2d) or kind.groups != 1:
        return None
    geo = _conv_geometry(op)
    if (geo["KH"], geo["KW"], geo["sh"], geo["sw"], geo["dh"], geo["dw"]) != (3, 3, 1, 1, 1, 1):
        return None
    cout = op.results[0].type.shape[1]
    if max(geo["pt"], geo["pl"]) > 2 or min(geo["C"], cout) < MIN_CHANNELS:
        return None
    m = 4 if -(-geo["OW"] // 4) >= F4_MIN_TILES else 2
    # The driver's blocks hold about TILE_FLOATS / Cout pixels; a block boundary inside a
    # tile row recomputes that row's transforms and GEMMs, so blocks must span several.
    block = TILE_FLOATS // cout
    if block < geo["OH"] * geo["OW"] and block < MIN_BLOCK_TILE_ROWS * m * geo["OW"]:
        return None
    return m


class WinogradAnchor(ConvAnchor):
    """`kiln_winograd_conv` when the weight is a compile-time parameter and the option is on;
    otherwise ConvAnchor's implicit GEMM (same view, so the driver cannot tell)."""

    def setup(self) -> None:
        ctx, op = self.ctx, self.op
        self.m = winograd_tile(op) or 2
        self.on = ctx.options.winograd and ctx.source_op(op.operands[1]) is not None
        if not self.on:
            super().setup()
            return
        geo, mr = self.geometry(), ctx.options.mr
        cout = self.view.shape[1]
        self.u = ctx.packed(op.operands[1], f"wg{self.m}a{mr}",
                            lambda a: winograd_weights(a, self.m, mr))
        self.rows = chunk_rows(geo, self.m, cout, mr)
        self.declare_shape()
        self.xs = ctx.scratch(image_floats(geo, self.m))
        ctx.note(f"conv winograd F({self.m}x{self.m},3x3)")

    def scratch_per_thread(self) -> int:
        if not self.on:
            return super().scratch_per_thread()
        return scratch_floats(self.geometry(), self.m, self.view.shape[1], self.rows,
                              self.ctx.options.mr, self.ctx.options.nr)

    def prologue(self, bvars: dict[int, str]) -> None:
        if not self.on:
            super().prologue(bvars)
            return
        self.ctx.w.line(f"kiln_wg_pad({self.image(bvars)}, &shape, {self.m}, {self.xs});")

    def block(self, bvars: dict[int, str], blk: Block, dst: str, ldd: int, lo: str,
              hi: str) -> None:
        if not self.on:
            super().block(bvars, blk, dst, ldd, lo, hi)
            return
        self.ctx.w.line(f"kiln_winograd_conv({self.xs}, &shape, {self.m}, {self.u}, "
                        f"{self.view.shape[1]}, {self.bias()}, {dst}, {ldd}, {blk.c0}, "
                        f"{blk.c1}, {lo}, {hi}, {self.rows}, {self.thread_scratch});")

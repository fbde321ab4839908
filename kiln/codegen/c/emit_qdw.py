"""The direct int8 depthwise convolution of the cpu target (`runtime/kiln_qdw.h`).

The VNNI depthwise path of `emit_qvnni` first copies every image into padded planes
(`kiln_qpack_images`) and gathers each tap row of a tile from them; this kernel reads the NCHW
planes where they lie: a tile of 16 output pixels gathers each kernel row's taps by one byte
permute from a window of at most 127 input bytes, the padding supplied by the masked loads.
Measured at batch 64 on MobileNet's four depthwise layers (3x3, 32..96 channels, 16x16 to
4x4 outputs, kernel alone, interleaved): 0.48x the time of pack + `kiln_qdwch_vnni`.

The tiles (window start and span, first pixel, count, the permute indices of each kernel row)
depend on the geometry only, so they are computed here and emitted as static data: nothing is
set up per call but the requantization constants (`kiln_qchannels`). Weights and the folded
bias are `emit_qvnni`'s depthwise ones (zero point 0; one int32 word of 4 taps per kernel row).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kiln.codegen.c.context import KernelContext
from kiln.codegen.c.emit_qvnni import VnniConv
from kiln.ir.graph import Op
from kiln.ir.ops.qnn import QConv2d

KH = 4
"""KILN_QDW_KH: most kernel rows, and taps per row (one int32 word)."""
SPAN = 127
"""KILN_QDW_SPAN: most input bytes a tile reads (the 128th window byte stays the pad)."""
LANES = 16
TILE_BYTES = 16 + KH * 64
"""sizeof(kiln_qdwtile)."""


@dataclass(frozen=True)
class DwGeom:
    """`kiln_qdwgeom`: one input plane and the depthwise convolution over it."""

    h: int
    w: int
    oh: int
    ow: int
    kh: int
    kw: int
    sh: int
    sw: int
    pt: int
    pl: int
    dh: int
    dw: int

    def fields(self) -> tuple[int, ...]:
        return (self.h, self.w, self.oh, self.ow, self.kh, self.kw, self.sh, self.sw, self.pt,
                self.pl, self.dh, self.dw)

    def fits(self) -> bool:
        """Whether one output pixel's taps lie within SPAN bytes (then every tile does: a
        tile stops growing before it passes SPAN) and a row's taps fill one word."""
        return (1 <= self.kh <= KH and 1 <= self.kw <= KH and self.oh * self.ow > 0 and
                (self.kh - 1) * self.dh * self.w + (self.kw - 1) * self.dw + 1 <= SPAN)

    def taps(self) -> np.ndarray:
        """[oh * ow, kh, kw] plane byte of each tap of each output pixel, -1 in the padding."""
        p = np.arange(self.oh * self.ow)
        iy = ((p // self.ow) * self.sh - self.pt)[:, None, None] + \
            (np.arange(self.kh) * self.dh)[None, :, None]
        ix = ((p % self.ow) * self.sw - self.pl)[:, None, None] + \
            (np.arange(self.kw) * self.dw)[None, None, :]
        inside = (iy >= 0) & (iy < self.h) & (ix >= 0) & (ix < self.w)
        return np.where(inside, iy * self.w + ix, -1)


@dataclass(frozen=True)
class Tile:
    """`kiln_qdwtile`: up to 16 consecutive output pixels and their window."""

    start: int
    span: int
    p0: int
    count: int
    idx: np.ndarray
    """[KH, 64] uint8: window byte of lane j's tap k of row ky at [ky, 4j + k]; max(span, 64),
    a byte holding the zero point (`kiln_qdw.h`), for taps in the padding, past kw or kh, and
    lanes past count."""


def tiles(geom: DwGeom) -> list[Tile]:
    """The tiles of a geometry that `fits`: greedy runs of at most 16 pixels whose taps span
    at most SPAN bytes."""
    assert geom.fits()
    taps = geom.taps()
    valid = taps >= 0
    lows = np.where(valid, taps, np.iinfo(np.int64).max).reshape(len(taps), -1).min(axis=1)
    highs = np.where(valid, taps, -1).reshape(len(taps), -1).max(axis=1)
    out = []
    p = 0
    while p < len(taps):
        lo, hi, count = int(lows[p]), int(highs[p]), 1
        while count < LANES and p + count < len(taps):
            h = max(hi, int(highs[p + count]))
            lo2 = min(lo, int(lows[p + count]))
            if h >= lo2 and h - lo2 + 1 > SPAN:
                break
            lo, hi, count = lo2, h, count + 1
        start, span = (lo, hi - lo + 1) if hi >= 0 else (0, 0)
        pad = max(span, 64)
        idx = np.full((KH, LANES, 4), pad, np.int64)
        block = taps[p:p + count]
        idx[:geom.kh, :count, :geom.kw] = np.where(block >= 0, block - start,
                                                   pad).transpose(1, 0, 2)
        out.append(Tile(start, span, p, count, idx.reshape(KH, 64).astype(np.uint8)))
        p += count
    return out


def plan(op: Op, conv: VnniConv | None) -> DwGeom | None:
    """The direct kernel's geometry of a 2-D depthwise qconv2d whose VNNI plan is `conv`, or
    None where it does not fit (then `kiln_qdwch_vnni` runs it)."""
    if conv is None or not conv.depthwise or not op.isa(QConv2d):
        return None
    kind = op.kind
    assert isinstance(kind, QConv2d)
    xs, ys, ws = op.operands[0].type.shape, op.results[0].type.shape, op.operands[1].type.shape
    geom = DwGeom(xs[2], xs[3], ys[2], ys[3], ws[2], ws[3], kind.stride[0], kind.stride[1],
                  kind.padding[0], kind.padding[1], kind.dilation[0], kind.dilation[1])
    return geom if geom.fits() else None


def scratch_floats(channels: int) -> int:
    """Floats of scratch: only the channel constants (`kiln_qch`, 8 words per channel and 8
    more); the tiles are static data and nothing is packed."""
    return 8 * (channels + 8)


def _tile_c(tile: Tile, kh: int) -> list[str]:
    """A tile's initializer lines (rows past kh left to C's zero fill: they are not read)."""
    rows = [", ".join(str(int(v)) for v in tile.idx[ky]) for ky in range(kh)]
    head = f"{{{tile.start}, {tile.span}, {tile.p0}, {tile.count}, {{"
    return [head, *[f"    {{{row}}}," for row in rows], "}},"]


def emit(ctx: KernelContext, geom: DwGeom, weights: str, unsigned: int, zx: int,
         scratch: str) -> None:
    """The call of the direct kernel over the whole batch (`rq` declared by the caller, with
    the folded bias; `weights`: emit_qvnni's depthwise words)."""
    x, y = ctx.op.operands[0], ctx.op.results[0]
    batch, channels = x.type.shape[:2]
    found = tiles(geom)
    ctx.w.line(f"const kiln_qdwgeom geo = {{{', '.join(map(str, geom.fields()))}}};")
    ctx.w.line(f"static const kiln_qdwtile tiles[{len(found)}] = {{")
    with ctx.w.indented():
        for tile in found:
            for line in _tile_c(tile, geom.kh):
                ctx.w.line(line)
    ctx.w.line("};")
    ctx.w.line(f"kiln_qch* qch = (kiln_qch*){scratch};")
    ctx.w.line(f"const int qmode = kiln_qchannels(&rq, {channels}, 0, qch);")
    ctx.w.line(f"kiln_qdw_direct_vnni(&geo, tiles, {len(found)}, {ctx.ref(x)}, {unsigned}, {zx}, "
               f"{channels}, {weights}, qch, qmode, {ctx.ref(y)}, {batch});")


__all__ = ["KH", "SPAN", "TILE_BYTES", "DwGeom", "Tile", "emit", "plan", "scratch_floats",
           "tiles"]

"""The AVX-512 VNNI path of the int8 convolutions and linear layers (`runtime/kiln_qvnni.h`).

vpdpbusd multiplies unsigned by signed bytes, so activations are read as uint8 (int8 storage
+128, the zero point zx' moving with it) and weights must be plain int8 with zero point 0 (the
quantize pass makes them symmetric); then Σ (x - zx) · w = Σ x' · w - zx' · Σ w and the last
term is folded into the int32 bias here, per output channel, wrapped to int32 like the
accumulator (wrapping is modular, so the stored bits equal the interpreter's). The generated
code keeps the int16 kernels under `#if !KILN_QVNNI` for machines without VNNI; both branches
share one scratch area, sized for the larger.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np

from kiln.codegen.c.context import KernelContext
from kiln.ir.graph import Op
from kiln.ir.ops.qnn import QConv1d, QConv2d, QLinear
from kiln.ir.types import QuantType

K_LIMIT = (2**31 - 1) // (255 * 128)
"""Longest dot product whose u8 · s8 sums stay exact in int32 (K · 255 · 128 < 2^31): 65793."""
TILE_BYTES = 84
"""sizeof(kiln_qtile)."""
BLOCK = 8
"""KILN_QVNR: output channels per block of packed weights."""


@dataclass(frozen=True)
class VnniConv:
    """The VNNI form of one (grouped) convolution or linear layer: the `kiln_qgeom` fields,
    the channels per group, and whether it runs depthwise (one channel per group)."""

    hp: int
    wp: int
    oh: int
    ow: int
    kh: int
    kw: int
    sh: int
    sw: int
    dh: int
    dw: int
    cin: int
    cout: int
    groups: int
    depthwise: bool
    elem: int = 4
    """Bytes per packed pixel (`kiln_qvnni.h`): 1 depthwise or when 4 taps of a row waste
    fewer multiplies than 4 channels (LeNet's 1-channel 5x5), else 4."""
    images: int = 1
    """Images per call, stacked in each packed plane (`kiln_qpack_images`): small planes fill
    pairs of tiles across images and amortize the per-call work (`stack`)."""
    rows: bool = False
    """A linear layer, or a convolution of single-pixel images (1x1 in and out, no padding,
    one group: squeeze-excitation blocks) run as one: the batch as rows, so 16 images fill a
    tile instead of one pixel per call and image."""

    def geometry(self, images: int | None = None) -> str:
        """The C initializer of the `kiln_qgeom` of `images` stacked images (default: a
        call's)."""
        fields = (self.hp * (self.images if images is None else images), self.wp, self.oh,
                  self.ow, self.kh, self.kw, self.sh, self.sw, self.dh, self.dw, self.elem)
        return "{" + ", ".join(map(str, fields)) + "}"

    def image_bytes(self) -> int:
        """Packed bytes of one image (`kiln_qpack_bytes` less its slack)."""
        planes = self.pack_channels() if self.elem == 1 else -(-self.cin // 4)
        return planes * self.hp * self.wp * self.elem

    def pack_channels(self) -> int:
        """Channels packed per call: all of them depthwise, else one group's."""
        return self.cin * self.groups if self.depthwise else self.cin

    def scratch_floats(self) -> int:
        """Floats of scratch: the tiles, the channel constants (`kiln_qch`, 8 words per
        output channel and 8 more), then the packed input (`kiln_qpack_bytes`)."""
        packed = self.image_bytes() * self.images + 128
        return self.tiles_floats() + self.channel_floats() + -(-packed // 4)

    def channel_floats(self) -> int:
        return 8 * (self.groups * self.cout + BLOCK)

    def tiles_floats(self) -> int:
        return self.oh * -(-self.ow // 16) * self.images * TILE_BYTES // 4

    def fits(self) -> bool:
        """Whether a tile's lanes reach their taps within one 128-byte vpermi2b window and
        the sums stay exact."""
        tap = self.dw if self.elem == 1 else 1
        steps = self.kh * -(-self.kw // 4)
        return (15 * self.sw * self.elem + 3 * tap < 128 and self.cin * self.kh * self.kw
                <= K_LIMIT and (not self.depthwise or steps <= 64))


def plan(op: Op) -> VnniConv | None:
    """The VNNI form of a qconv1d/qconv2d/qlinear, or None when it needs the int16 kernels
    (weights with a zero point, geometry out of the kernels' reach)."""
    qw = op.operands[1].type.dtype
    if not isinstance(qw, QuantType) or any(int(z) != 0 for z in qw.zero_point):
        return None
    if op.isa(QLinear):
        conv = _linear(op)
    elif _pixel_images(op):
        cout, cin = op.operands[1].type.shape[:2]
        m = op.operands[0].type.shape[0]
        conv = VnniConv(1, m, 1, m, 1, 1, 1, 1, 1, 1, cin, cout, 1, False, rows=True)
    else:
        conv = _conv(op)
    return conv if conv.fits() else None


def _linear(op: Op) -> VnniConv:
    n, k = op.operands[1].type.shape
    m = op.operands[0].type.numel // k
    return VnniConv(1, m, 1, m, 1, 1, 1, 1, 1, 1, k, n, 1, False, rows=True)


def _pixel_images(op: Op) -> bool:
    """Whether a convolution's images are single pixels in and out with a 1-tap kernel and
    one group (then NCHW is [batch, channels] on both sides)."""
    xs, ws, ys = op.operands[0].type.shape, op.operands[1].type.shape, op.results[0].type.shape
    kind = op.kind
    return (math.prod(xs[2:]) == 1 and math.prod(ys[2:]) == 1 and math.prod(ws[2:]) == 1
            and getattr(kind, "groups", 1) == 1 and not any(getattr(kind, "padding", ())))


def _conv(op: Op) -> VnniConv:
    kind = op.kind
    assert isinstance(kind, (QConv1d, QConv2d))
    xs, ws, ys = op.operands[0].type.shape, op.operands[1].type.shape, op.results[0].type.shape
    if len(xs) == 3:
        (h, w), (oh, ow), (kh, kw) = (1, xs[2]), (1, ys[2]), (1, ws[2])
        pad_h, pad_w = 0, kind.padding[0] + kind.padding[1]
        (sh, sw), (dh, dw) = (1, kind.stride[0]), (1, kind.dilation[0])
    else:
        (h, w), (oh, ow), (kh, kw) = xs[2:], ys[2:], ws[2:]
        p = kind.padding
        pad_h, pad_w = p[0] + p[2], p[1] + p[3]
        (sh, sw), (dh, dw) = kind.stride, kind.dilation
    groups = kind.groups
    cin, cout = xs[1] // groups, ws[0] // groups
    depthwise = cin == 1 and cout == 1 and groups > 1
    by_taps = kw / (-(-kw // 4) * 4) > cin / (-(-cin // 4) * 4)
    conv = VnniConv(h + pad_h, w + pad_w, oh, ow, kh, kw, sh, sw, dh, dw, cin, cout, groups,
                    depthwise, 1 if depthwise or by_taps else 4)
    return stack(conv, xs[0], op.operands[0].type.numel)


STACK_PIXELS = 256
"""Output planes up to 16x16 stack several images per call."""
STACK_BYTES = 24 * 1024
"""Packed bytes of a stack: with a block of weights, within a 32 KiB L1 data cache (each
block of 8 output channels sweeps the whole stack)."""


def stack(conv: VnniConv, batch: int, input_bytes: int) -> VnniConv:
    """`conv` with the most images per call that divide the batch and whose stacked scratch
    (packed planes and tiles) fits both STACK_BYTES and the int8 input itself (the arena
    stays about as small as the activations); one for large planes. Measured at batch 64
    (interleaved, against one image per call): digits_cnn 0.93x, mobilenet_v2ish 0.98x,
    resnet8 0.91x, lenet5 1.00x time."""
    if conv.oh * conv.ow > STACK_PIXELS:
        return conv
    per_image = conv.image_bytes() + conv.tiles_floats() * 4
    fit = max(1, min(STACK_BYTES, input_bytes) // per_image)
    images = max(d for d in range(1, min(batch, fit) + 1) if batch % d == 0)
    return dataclasses.replace(conv, images=images)


def input_zero_point(ctx: KernelContext) -> int:
    """zx': the input zero point as a uint8 byte (int8 storage is read +128)."""
    q = ctx.op.operands[0].type.dtype
    assert isinstance(q, QuantType)
    signed = np.dtype(q.storage.numpy).kind == "i"
    return int(q.zero_point[0]) + (128 if signed else 0)


def packed_weights(conv: VnniConv, w: np.ndarray) -> np.ndarray:
    """The int8 weights [groups · cout, cin, kh, kw] as the int32 words the kernels read."""
    w = np.asarray(w).astype(np.int8).reshape(conv.groups * conv.cout, conv.cin, conv.kh,
                                              conv.kw)
    if conv.depthwise:
        taps = -(-conv.kw // 4) * 4
        padded = np.zeros((w.shape[0], conv.kh, taps), np.int8)
        padded[:, :, :conv.kw] = w[:, 0]
        return padded.view("<i4").ravel()
    nb, c4, taps = -(-conv.cout // BLOCK), -(-conv.cin // 4), -(-conv.kw // 4)
    parts = []
    for g in range(conv.groups):
        part = w[g * conv.cout:(g + 1) * conv.cout]
        if conv.elem == 4:
            padded = np.zeros((nb * BLOCK, c4 * 4, conv.kh, conv.kw), np.int8)
            padded[:conv.cout, :conv.cin] = part
            blocks = padded.reshape(nb, BLOCK, c4, 4, conv.kh, conv.kw)
            blocks = blocks.transpose(0, 2, 4, 5, 1, 3)
        else:
            padded = np.zeros((nb * BLOCK, conv.cin, conv.kh, taps * 4), np.int8)
            padded[:conv.cout, :, :, :conv.kw] = part
            blocks = padded.reshape(nb, BLOCK, conv.cin, conv.kh, taps, 4)
            blocks = blocks.transpose(0, 2, 3, 4, 1, 5)
        parts.append(np.ascontiguousarray(blocks).view("<i4").ravel())
    return np.concatenate(parts)


def group_words(conv: VnniConv) -> int:
    """int32 words of packed weights per group."""
    steps = (-(-conv.cin // 4) * conv.kw if conv.elem == 4 else conv.cin * -(-conv.kw // 4))
    return -(-conv.cout // BLOCK) * BLOCK * steps * conv.kh


def folded_bias(conv: VnniConv, w: np.ndarray, bias: np.ndarray | None, zx: int) -> np.ndarray:
    """bias - zx' · Σ w per output channel, wrapped to int32 (module docstring)."""
    sums = np.asarray(w).astype(np.int64).reshape(conv.groups * conv.cout, -1).sum(axis=1)
    b = np.zeros_like(sums) if bias is None else np.asarray(bias).astype(np.int64)
    return (b - zx * sums).astype(np.int32)


def emit_scratch(ctx: KernelContext, conv: VnniConv, scratch: str) -> None:
    """Declares `geo`, `tiles`, `ntiles`, the channel constants `qch` and `qmode` (of `rq`,
    computed once per layer, not per image) and `P` in the scratch area."""
    ctx.w.line(f"const kiln_qgeom geo = {conv.geometry()};")
    ctx.w.line(f"kiln_qtile* tiles = (kiln_qtile*){scratch};")
    ctx.w.line(f"kiln_qch* qch = (kiln_qch*)({scratch} + {conv.tiles_floats()});")
    ctx.w.line(f"uint8_t* P = (uint8_t*)({scratch} + "
               f"{conv.tiles_floats() + conv.channel_floats()});")
    if conv.images == 1:
        ctx.w.line("const int ntiles = kiln_qtiles(&geo, tiles);")
    else:
        ctx.w.line(f"const kiln_qgeom geo1 = {conv.geometry(1)};")
        ctx.w.line(f"const int ntiles = kiln_qtiles_images(&geo1, {conv.images}, "
                   f"{conv.groups * conv.cout * conv.oh * conv.ow}L, tiles);")
    ctx.w.line(f"const int qmode = kiln_qchannels(&rq, {conv.groups * conv.cout}, 0, qch);")


def emit_rows(ctx: KernelContext, conv: VnniConv, weights: str, unsigned: int, zx: int) -> None:
    """The call of a `rows` layer: pack the [M, K] rows, one convolution storing [M, N]."""
    assert conv.rows
    x, y = ctx.op.operands[0], ctx.op.results[0]
    ctx.w.line(f"kiln_qpack_rows({ctx.ref(x)}, {unsigned}, {zx}, {conv.ow}, {conv.cin}, P);")
    ctx.w.line(f"kiln_qconvch_vnni(&geo, tiles, ntiles, P, {conv.cin}, {conv.cout}, "
               f"{weights}, qch, qmode, {ctx.ref(y)}, {conv.cout}L, 1L);")


def emit_images(ctx: KernelContext, conv: VnniConv, weights: str, unsigned: int, zx: int,
                pt: int, pl: int, packed: str | None = None) -> None:
    """The batch loop of a convolution: per call `conv.images` images (and per group) packed,
    convolved, requantized, stored NCHW (`X`, `Y`: the input and output). `packed`: the
    statement replacing the pack call where the input arrives packed (`emit_qgate`)."""
    xs, ys = ctx.op.operands[0].type.shape, ctx.op.results[0].type.shape
    h, w = (1 if len(xs) == 3 else xs[2]), xs[-1]
    plane, out_plane, n = h * w, conv.oh * conv.ow, conv.images
    channels = xs[1] if conv.depthwise else conv.cin

    def pack(x: str) -> str:
        if packed is not None:
            return packed
        where = f"{unsigned}, {zx}, {channels}, {h}, {w}, {pt}, {pl}"
        if n == 1:
            return f"kiln_qpack({x}, {where}, &geo, P);"
        return f"kiln_qpack_images({x}, {where}, &geo1, {n}, {xs[1] * plane}L, P);"

    with ctx.w.block(f"for (int b = 0; b < {xs[0]}; b += {n})"):
        if conv.depthwise:
            ctx.w.line(pack(f"X + (long)b * {xs[1] * plane}L"))
            ctx.w.line(f"kiln_qdwch_vnni(&geo, tiles, ntiles, P, {xs[1]}, {weights}, qch, "
                       f"qmode, Y + (long)b * {ys[1] * out_plane}L, 1L, {out_plane}L);")
            return
        with ctx.w.block(f"for (int g = 0; g < {conv.groups}; ++g)"):
            ctx.w.line(pack(f"X + ((long)b * {xs[1]} + g * {conv.cin}) * {plane}L"))
            ctx.w.line(f"kiln_qconvch_vnni(&geo, tiles, ntiles, P, {conv.cin}, {conv.cout}, "
                       f"{weights} + (long)g * {group_words(conv)}, qch + g * {conv.cout}, "
                       f"qmode, Y + ((long)b * {ys[1]} + g * {conv.cout}) * {out_plane}L, 1L, "
                       f"{out_plane}L);")


__all__ = ["K_LIMIT", "STACK_BYTES", "VnniConv", "emit_images", "emit_rows", "emit_scratch",
           "folded_bias", "group_words", "input_zero_point", "packed_weights", "plan", "stack"]

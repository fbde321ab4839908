"""Convolution anchors (the driver and the `Anchor` protocol: `gemm_anchors`).

How each convolution computes (chosen by shape in `anchors.anchor_class`):

- conv (groups = 1): implicit GEMM, packed weights as A (MR-row panels) × the image's
  receptive fields, gathered panel by panel (NR pixels × a block of K) into an L1-sized packed
  B (`kiln_conv_gemm`): no im2col buffer, every gathered value used by all output channels.
- depthwise conv (groups = C = Cout), and convs with few taps (≤ 32 per output, not 1×1):
  direct, `kiln_dwconv`, blocks of output channels over zero-padded lines.
- grouped conv: one block per group: `kiln_conv_gemm` of the group's channels × its weights.
- conv_transpose2d: direct gather, one block (`kiln_conv_transpose2d`).

Specialised anchors in their own modules take convs before the implicit GEMM: 1×1 convs on 1×1
images (`pixel_conv_anchor`), 1×1 stride-1 convs (`pointwise_anchor`), 3×3 stride-1 convs
with ≥ 16 channels (`winograd_anchor`); strided convs with dilation 1 run on the wide grid over
the image's phase planes (`ConvAnchor.wide_fits`).
"""

from __future__ import annotations

import math

from kiln.codegen.c.context import KernelContext
from kiln.codegen.c.expr import c_diff, c_product, c_ptr
from kiln.codegen.c.gemm_anchors import Anchor, Block, GemmView, offset
from kiln.codegen.c.packing import CONV_PANEL_FLOATS, pack_groups, panels
from kiln.codegen.c.params import float_literal
from kiln.codegen.c.store_epilogue import FusedEpilogue, fused_epilogue
from kiln.ir.graph import Op, Value
from kiln.ir.ops.nn_conv import Conv1d, Conv2d, ConvTranspose2d

DIRECT_MAX_TAPS = 32
"""A convolution with at most this many taps per output (Cin/groups × KH × KW) runs directly
(`kiln_dwconv`), like a depthwise one: its GEMMs would be slivers. With groups = 1 only when
the kernel is wider than 1×1 and the wide-grid GEMM cannot take it (dilated and strided):
the wide grid reads B straight from the image with no gather and batches small planes,
and measured 0.67× the direct kernel's time on LeNet-5's conv1 layer at batch 64 (whole model;
0.73× at batch 1) and 0.65× on conv1d_net; MobileNet's stride-2 stem (3 -> 16, hardswish)
0.82× on its phase grid (batch 64, the layer alone); a 1×1 conv with few input channels stays
a GEMM."""


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


WIDE_MAXK = 576  # at most KILN_CG_WIDE_MAXK (kiln_conv_gemm.h)
WIDE_GROUP = 2  # KILN_CG_WIDE_GROUP (kiln_conv_gemm.h): images padded at a time
"""Stride-1 convs with K <= WIDE_MAXK run `kiln_conv_gemm_wide` (no gather). Measured at
batch 64, 1 thread: ResNet-8 0.81x, digits CNN 0.83x the time of `kiln_conv_gemm`; 3x3 layers
0.67x (16 ch, 32x32) to 0.91x (64 ch, 8x8), but 1.03-1.10x from K = 864 up (96-256 ch):
with no blocking of K, a tile's rows of the image no longer stay in L1."""
WIDE_MAX_STRIDE = 4  # KILN_CG_WIDE_MAX_STRIDE (kiln_conv_gemm.h)
"""Strided convs (dilation 1, not 1x1) run wide on the image's phases. Measured at batch 64,
1 thread (CPU time, interleaved): ResNet-8's stride-2 3x3 layers 0.74x (16 -> 32, 32x32) and
0.90x (32 -> 64, 16x16) the time of the gather; the whole model 0.91x."""


class ConvAnchor(_ConvBase):
    """groups = 1: implicit GEMM, `kiln_conv_gemm` (B packed on the fly, panel by panel), or
    `kiln_conv_gemm_wide` (B rows read straight from the padded image, for stride > 1 its
    phases; `wide_fits`). A wide conv with no epilogue tile takes whole images
    (`kiln_conv_gemm_wide_batch`): one call per
    block of images, tiles running on from one image into the next, so small planes (the
    digits CNN's 4x4, LeNet's 10x10) waste no half tiles and pay no per-image call."""

    def setup(self) -> None:
        geo, ctx = self.geometry(), self.ctx
        cout = self.view.shape[1]
        self.k = geo["C"] * geo["KH"] * geo["KW"]
        self.a = packed_weight(ctx, self.op.operands[1], cout, self.k, 1)
        self.kc = conv_kc(self.k, ctx.options.nr)
        self.declare_shape()
        pointwise = (geo["KH"], geo["KW"], geo["sh"], geo["sw"], geo["pt"], geo["pl"]) == (
            1, 1, 1, 1, 0, 0) and self.op.operands[0].type.shape[2:] == self.view.shape[2:]
        self.wide = self.wide_fits(geo, self.k) and not pointwise
        self.whole_images = self.wide and self.images_ok
        self.padded: str | None = None  # whole images: per thread (scratch_per_thread)
        if self.wide and not self.whole_images:
            self.padded = ctx.scratch(geo["C"] * grid_floats(geo) + ctx.options.nr)
        elif not self.wide:
            self.padded = padded_scratch(ctx, geo, geo["C"])
        ctx.note("conv 1x1 gemm" if pointwise else
                 "conv wide implicit gemm" + (" (whole images)" if self.whole_images else "")
                 if self.wide else "conv implicit gemm")

    @staticmethod
    def wide_fits(geo: dict[str, int], k: int) -> bool:
        """`kiln_conv_gemm_wide` serves stride 1, and larger strides with dilation 1 (on the
        image's phases), with int32 offsets on its grid; it is faster than the gather while
        K <= WIDE_MAXK (see there). A strided 1x1 conv stays on the gather, which reads its
        one tap straight from the image (measured at batch 64: ResNet-8's 1x1 stride-2
        shortcuts took 1.2-1.3x the time with the phase copy)."""
        strided = (geo["sh"], geo["sw"]) != (1, 1)
        if strided and ((geo["dh"], geo["dw"]) != (1, 1) or geo["KH"] * geo["KW"] == 1 or
                        max(geo["sh"], geo["sw"]) > WIDE_MAX_STRIDE):
            return False
        return k <= WIDE_MAXK and geo["C"] * grid_floats(geo) < 2**31 - 4096

    def scratch_per_thread(self) -> int:
        if self.whole_images:  # KILN_CG_WIDE_BATCH_FLOATS (kiln_conv_gemm.h)
            geo = self.geometry()
            return WIDE_GROUP * geo["C"] * grid_floats(geo) + self.ctx.options.nr
        return 0 if self.wide else self.kc * self.ctx.options.nr

    def images(self, i0: str, i1: str, dst: str, lo: str, hi: str) -> None:
        geo, out = self.geometry(), self.view.shape
        chw = geo["C"] * geo["H"] * geo["W"]
        x = c_ptr(self.ctx.ref(self.op.operands[0]), c_product(i0, chw))
        y = c_ptr(dst, c_product(i0, math.prod(out[1:])))
        self.ctx.w.line(f"kiln_conv_gemm_wide_batch({x}, &shape, {self.a}, {out[1]}, "
                        f"{self.bias()}, {y}, {c_diff(i1, i0)}, {lo}, {hi}, "
                        f"{self.thread_scratch});")

    def prologue(self, bvars: dict[int, str]) -> None:
        if self.wide:
            assert self.padded is not None
            self.ctx.w.line(f"kiln_conv_gemm_pad_wide({self.image(bvars)}, &shape, "
                            f"{self.geometry()['C']}, {self.padded});")
            self.x = self.padded
            return
        self.x = pad_image(self.ctx, self.image(bvars), self.padded, self.geometry()["C"])

    def block(self, bvars: dict[int, str], blk: Block, dst: str, ldd: int, lo: str,
              hi: str) -> None:
        common = (f"{self.x}, &shape, {self.a}, {self.view.shape[1]}, {self.bias()}, {dst}, "
                  f"{ldd}, {blk.c0}, {blk.c1}, {lo}, {hi}")
        if self.wide:
            self.ctx.w.line(f"kiln_conv_gemm_wide({common});")
            return
        self.ctx.w.line(f"kiln_conv_gemm({common}, {self.kc}, {self.thread_scratch});")


def packed_weight(ctx: KernelContext, weight: Value, cout: int, k: int, groups: int) -> str:
    """The (Cout, K) conv weight in MR-row panels (each group's rows on their own): packed at
    build time when it is a parameter, else once per call into scratch."""
    mr = ctx.options.mr
    packed = ctx.packed(weight, f"pg{mr}" if groups > 1 else f"pa{mr}",
                        lambda a: pack_groups(a.reshape(cout, k), groups, mr))
    if packed is not None:
        return packed
    per = cout // groups
    step = panels(per, mr) * mr * k
    packed = ctx.scratch(step * groups)
    src = ctx.ref(weight)
    for g in range(groups):
        ctx.w.line(f"kiln_pack_panels({c_ptr(src, g * per * k)}, {per}, {k}, {mr}, "
                   f"{c_ptr(packed, g * step)});")
    return packed


def padded_dims(geo: dict[str, int]) -> tuple[int, int]:
    """Rows and columns per channel of the zero-padded image the implicit-GEMM gather reads:
    `KILN_CG_HP` and `KILN_CG_WP` of kiln_conv_gemm.h (the image plus every row and column
    a tap reaches)."""
    def span(o: str, st: str, k: str, d: str) -> int:
        return (geo[o] - 1) * geo[st] + (geo[k] - 1) * geo[d] + 1

    return (max(geo["H"] + geo["pt"], span("OH", "sh", "KH", "dh")),
            max(geo["W"] + geo["pl"], span("OW", "sw", "KW", "dw")))


def grid_floats(geo: dict[str, int]) -> int:
    """Floats per channel of the wide scheme's grid, `KILN_CG_GRID` of kiln_conv_gemm.h: the
    padded image, for stride > 1 split into the phases the taps read (one pass over the
    image instead of the gather's KH x KW)."""
    hp, wp = padded_dims(geo)
    py, px = min(geo["sh"], geo["KH"]), min(geo["sw"], geo["KW"])
    return py * px * -(-hp // geo["sh"]) * -(-wp // geo["sw"])


def padded_scratch(ctx: KernelContext, geo: dict[str, int], channels: int) -> str | None:
    """Scratch for the padded image (`padded_dims`), or None when the image needs none."""
    hp, wp = padded_dims(geo)
    if (hp, wp, geo["pt"], geo["pl"]) == (geo["H"], geo["W"], 0, 0):
        return None
    return ctx.scratch(channels * hp * wp)


def pad_image(ctx: KernelContext, image: str, padded: str | None, channels: int) -> str:
    """The image the gather reads: `padded` filled from `image` (once per batch index)."""
    if padded is None:
        return image
    ctx.w.line(f"kiln_conv_gemm_pad({image}, &shape, {channels}, {padded});")
    return padded


def conv_kc(k: int, nr: int) -> int:
    """Rows of K per packed B panel: all of K when the kc × NR panel fits CONV_PANEL_FLOATS,
    else K split evenly into the fewest blocks that do (each block reloads the C tile)."""
    most = max(1, CONV_PANEL_FLOATS // nr)
    blocks = -(-k // most)
    return -(-k // blocks)


class DirectConvAnchor(_ConvBase):
    """Depthwise convolutions and layers with few taps per output: `kiln_dwconv`, blocks of
    output channels, each group's input channels copied once into zero-padded lines (per
    thread, in L1) so every tap is one vector load; bias and clamp on store."""

    fused: FusedEpilogue | None = None
    """The epilogue `kiln_dwconv_act` applies (`take_epilogue`), None for the plain clamp."""

    def make_view(self) -> GemmView:
        shape = self.op.results[0].type.shape
        return GemmView(shape, (0,), (1,), tuple(range(2, len(shape))), by_rows=True)

    @staticmethod
    def scratch_floats(geo: dict[str, int], cin_g: int) -> int:
        """KILN_DW_SCRATCH (kiln_dwconv.h): the padded lines of one group's input channels,
        and the stride-2 phases of the flat path."""
        phase = -(-geo["OW"] // 16) * 16 + (geo["KW"] - 1) * geo["dw"] // geo["sw"] + 1
        flat = 16 * cin_g * ((geo["H"] + 1) // 2) * geo["OW"]
        return (cin_g * geo["H"] + 1 + geo["H"]) * geo["sw"] * phase + 32 + flat

    def setup(self) -> None:
        self.declare_shape()
        kind = self.op.kind
        assert isinstance(kind, (Conv1d, Conv2d))
        self.groups = kind.groups
        geo = self.geometry()
        self.lines = self.scratch_floats(geo, geo["C"] // self.groups)
        self.wide = geo["sw"] > 4  # past KILN_DW_MAX_STRIDE: the plain row loops
        depthwise = self.groups == self.view.shape[1] == geo["C"]
        self.ctx.note("depthwise conv direct" if depthwise else "conv direct")

    def take_epilogue(self, epilogue: tuple[Op, ...], yields: tuple[Value, ...]) -> bool:
        """Clamp then hardswish, as `kiln_dwconv_act` stores (not past KILN_DW_MAX_STRIDE)."""
        fused = fused_epilogue(self.op.results[0], epilogue, yields)
        ok = fused is not None and fused.residual is None and self.geometry()["sw"] <= 4
        self.fused = fused if ok else None
        return ok

    def scratch_per_thread(self) -> int:
        return 0 if self.wide else self.lines

    def prologue(self, bvars: dict[int, str]) -> None:
        self.x = self.image(bvars)

    def block(self, bvars: dict[int, str], blk: Block, dst: str, ldd: int, lo: str,
              hi: str) -> None:
        weight = self.ctx.ref(self.op.operands[1])
        common = (f"{self.bias()}, {dst}, {blk.r0}, {blk.r1}, {self.view.shape[1]}, "
                  f"{self.groups}, &shape, {lo}, {hi}")
        if self.wide:
            self.ctx.w.line(f"kiln_conv2d_direct({self.x}, NULL, {weight}, {common}, NULL);")
            return
        fused = self.fused
        if fused is not None:  # take_epilogue: its clamp, and hardswish on store
            lo, hi = float_literal(fused.lo), float_literal(fused.hi)
            common = (f"{self.bias()}, {dst}, {blk.r0}, {blk.r1}, {self.view.shape[1]}, "
                      f"{self.groups}, &shape, {lo}, {hi}")
            act = "KILN_DW_HARDSWISH" if fused.hardswish else "KILN_DW_NONE"
            self.ctx.w.line(f"kiln_dwconv_act({self.x}, {weight}, {common}, {act}, "
                            f"{self.thread_scratch});")
            return
        self.ctx.w.line(f"kiln_dwconv({self.x}, {weight}, {common}, {self.thread_scratch});")


class GroupedConvAnchor(_ConvBase):
    """1 < groups < C: per group, `kiln_conv_gemm` over its channels and packed weights."""

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
        self.kc = conv_kc(self.k, ctx.options.nr)
        self.a = packed_weight(ctx, self.op.operands[1], cout, self.k, self.groups)
        self.declare_shape(self.cin_g)
        self.padded = padded_scratch(ctx, geo, geo["C"])
        ctx.note(f"grouped conv implicit gemm ({self.groups} groups)")

    def scratch_per_thread(self) -> int:
        return self.kc * self.ctx.options.nr

    def prologue(self, bvars: dict[int, str]) -> None:
        self.x = pad_image(self.ctx, self.image(bvars), self.padded, self.geometry()["C"])

    def block(self, bvars: dict[int, str], blk: Block, dst: str, ldd: int, lo: str,
              hi: str) -> None:
        geo = self.geometry()
        hp, wp = (geo["H"], geo["W"]) if self.padded is None else padded_dims(geo)
        plane = self.cin_g * hp * wp
        image = c_ptr(self.x, c_product(blk.index, plane))
        a_step = panels(self.cout_g, self.ctx.options.mr) * self.ctx.options.mr * self.k
        bias = self.bias()
        bias = bias if bias == "NULL" else c_ptr(bias, blk.r0)
        self.ctx.w.line(f"kiln_conv_gemm({image}, &shape, "
                        f"{c_ptr(self.a, c_product(blk.index, a_step))}, {self.cout_g}, "
                        f"{bias}, {dst}, {ldd}, 0, {self.p}, {lo}, {hi}, {self.kc}, "
                        f"{self.thread_scratch});")


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

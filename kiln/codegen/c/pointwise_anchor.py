"""1×1 convolutions (stride 1, no padding): `kiln_pwconv`, straight from the image, the
epilogue applied in registers.

A pointwise conv's implicit im2col matrix is the image itself (C × H·W, rows H·W floats
apart), so B needs no gather. `kiln_pwconv` keeps MR output channels × 3 vectors of pixels in
registers, each vector read straight from its image — the vectors of one tile may belong to
different images, so a 4×4 plane fills every lane and a batch costs one call. The epilogues
MobileNet puts after its 1×1 convs are applied before the one store instead of through the
driver's tile (a second pass over the block): hardswish after an expand conv, the residual
add after a project conv, relu/relu6/clamp (`store_epilogue`). Any other epilogue still goes to
the tile, which `kiln_pwconv` then fills.

Measured on mobilenet_v2ish at batch 64, 1 thread (per-kernel medians of interleaved runs,
time vs the previous routes: `kiln_sgemm` on the image up to 32 outputs, the gathering
`kiln_conv_gemm` above, epilogues other than a clamp through the tile): 32 ← 16 at 16×16,
relu6 0.92x; 16 ← 32 + residual 0.87x; 64 ← 16 hardswish 0.66x; 24 ← 64 at 8×8 0.84x;
72 ← 24 hardswish 0.70x; 24 ← 72 + residual 0.84x; 96 ← 24 hardswish 0.72x; 32 ← 96 at 4×4
0.65x; 128 ← 32 at 4×4 hardswish 0.70x.
"""

from __future__ import annotations

from kiln.codegen.c.conv_anchors import _ConvBase, packed_weight
from kiln.codegen.c.expr import c_ptr, c_sum, contiguous_strides
from kiln.codegen.c.gemm_anchors import Block, offset
from kiln.codegen.c.params import float_literal
from kiln.codegen.c.store_epilogue import FusedEpilogue, fused_epilogue
from kiln.ir.graph import Op, Value
from kiln.ir.ops.nn_conv import Conv1d, Conv2d


def is_pointwise_conv(op: Op) -> bool:
    """groups = 1, a 1×1 kernel, stride 1, no padding: the output plane is the input's."""
    kind = op.kind
    if not isinstance(kind, (Conv1d, Conv2d)) or kind.groups != 1:
        return False
    x, w, out = (v.type.shape for v in (op.operands[0], op.operands[1], op.results[0]))
    return (all(d == 1 for d in w[2:]) and all(s == 1 for s in kind.stride)
            and not any(kind.padding) and x[2:] == out[2:])


class PointwiseConvAnchor(_ConvBase):
    """`kiln_pwconv` (see the module docstring): whole images per call when the epilogue is
    fused (or empty), else one image's block of pixels into the driver's tile."""

    fused: FusedEpilogue | None = None
    """The epilogue `kiln_pwconv` applies (`take_epilogue`), None for the driver's clamp."""

    def take_epilogue(self, epilogue: tuple[Op, ...], yields: tuple[Value, ...]) -> bool:
        """[+ residual] [clamp] [hardswish] (`store_epilogue.fused_epilogue`)."""
        fused = fused_epilogue(self.op.results[0], epilogue, yields)
        if fused is not None and fused.residual is not None and \
                self.ctx.scalar(fused.residual) is not None:
            fused = None  # a one-element constant is a literal, not a buffer: the tile
        self.fused = fused
        return fused is not None

    def inplace_reads(self) -> tuple[Value, ...]:
        """The residual: each value is loaded just before the output at its position is
        stored (kiln_pwconv.h), so the result may take the residual's memory."""
        res = self.fused.residual if self.fused is not None else None
        return () if res is None else (res,)

    def setup(self) -> None:
        geo, ctx = self.geometry(), self.ctx
        self.cout = self.view.shape[1]
        self.c = geo["C"]
        self.plane = geo["H"] * geo["W"]
        self.a = packed_weight(ctx, self.op.operands[1], self.cout, self.c, 1)
        self.whole_images = self.images_ok
        ctx.note("conv 1x1 pointwise" + (" (whole images)" if self.whole_images else ""))

    def _args(self, x: str, y: str, ldy: int, res: str, lo: str, hi: str, act: str) -> None:
        fields = {"x": x, "x_image": self.c * self.plane, "w": self.a, "bias": self.bias(),
                  "res": res, "y": y, "y_image": self.cout * self.plane, "ldy": ldy,
                  "C": self.c, "Cout": self.cout, "P": self.plane, "lo": lo, "hi": hi,
                  "act": act}
        body = ", ".join(f".{k} = {v}" for k, v in fields.items())
        self.ctx.w.line(f"const kiln_pw_args pw = {{{body}}};")

    def _epilogue(self, lo: str, hi: str) -> tuple[str, str, str, Value | None]:
        """(lo, hi, act, residual) of the store: the fused epilogue's, else the driver's."""
        if self.fused is None:
            return lo, hi, "KILN_PW_NONE", None
        f = self.fused
        act = "KILN_PW_HARDSWISH" if f.hardswish else "KILN_PW_NONE"
        return float_literal(f.lo), float_literal(f.hi), act, f.residual

    def images(self, i0: str, i1: str, dst: str, lo: str, hi: str) -> None:
        lo, hi, act, residual = self._epilogue(lo, hi)
        res = "NULL" if residual is None else self.ctx.ref(residual)
        # the driver calls this inside a block of its own (or the loop over image blocks)
        self._args(self.ctx.ref(self.op.operands[0]), dst, self.plane, res, lo, hi, act)
        self.ctx.w.line(f"kiln_pwconv(&pw, {i0}, {i1}, 0, {self.plane});")

    def prologue(self, bvars: dict[int, str]) -> None:
        self.x = self.image(bvars)

    def block(self, bvars: dict[int, str], blk: Block, dst: str, ldd: int, lo: str,
              hi: str) -> None:
        lo, hi, act, residual = self._epilogue(lo, hi)
        res = "NULL"
        if residual is not None:  # laid out as dst: the result's offset of this block
            strides = dict(enumerate(contiguous_strides(self.view.shape)))
            res = c_ptr(self.ctx.ref(residual), c_sum(offset(bvars, strides), blk.c0))
        with self.ctx.w.block(""):
            self._args(self.x, dst, ldd, res, lo, hi, act)
            self.ctx.w.line(f"kiln_pwconv(&pw, 0, 1, {blk.c0}, {blk.c1});")

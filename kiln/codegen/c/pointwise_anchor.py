"""1×1 convolutions (stride 1, no padding) as a plain GEMM on the image: no gather.

A pointwise conv's implicit im2col matrix is the image itself: (C × H·W), row-major, rows
H·W floats apart. `ConvAnchor` still gathers it panel by panel into a packed B
(`kiln_conv_gemm`), a copy of every input value per call; `kiln_sgemm` reads a strided B
directly (NR columns of a row per load). The packed weights (MR-row panels) are the same as
ConvAnchor's. But `kiln_sgemm` reads B once per MR-row panel of A, where the gathered panel
is read from L1 by all of them: the copy saved pays only for few output channels
(`POINTWISE_MAX_COUT`).
"""

from __future__ import annotations

from kiln.codegen.c.expr import c_diff, c_ptr
from kiln.codegen.c.gemm_anchors import Block, _ConvBase, packed_weight
from kiln.ir.graph import Op
from kiln.ir.ops.nn_conv import Conv1d, Conv2d

POINTWISE_MAX_COUT = 32
"""Output channels up to which a pointwise conv skips the gather. Measured on mobilenet_v2ish
at batch 64, 1 thread (per-kernel medians, 7 interleaved runs; time vs `ConvAnchor`): 16-32
outputs 0.72x (32 ← 16, 16×16), 0.75x (16 ← 32, 16×16, residual add), 0.87-0.97x (24-32 ←
64-96, 8×8 and 4×4); 64-128 outputs 1.05x (64 ← 16, 16×16), 1.07x, 1.13x (72, 96 ← 24, 8×8),
1.26x (128 ← 32, 4×4)."""


def is_pointwise_conv(op: Op) -> bool:
    """groups = 1, a 1×1 kernel, stride 1, no padding (the output plane is the input's), and
    at most POINTWISE_MAX_COUT output channels."""
    kind = op.kind
    if not isinstance(kind, (Conv1d, Conv2d)) or kind.groups != 1:
        return False
    x, w, out = (v.type.shape for v in (op.operands[0], op.operands[1], op.results[0]))
    return (all(d == 1 for d in w[2:]) and all(s == 1 for s in kind.stride)
            and not any(kind.padding) and x[2:] == out[2:] and out[1] <= POINTWISE_MAX_COUT)


class PointwiseConvAnchor(_ConvBase):
    """C[Cout, pixels of the block] = packed W (Cout × C) · x[:, pixels] + bias per row."""

    def setup(self) -> None:
        geo, ctx = self.geometry(), self.ctx
        self.cout = self.view.shape[1]
        self.k = geo["C"]
        self.plane = geo["H"] * geo["W"]
        self.a = packed_weight(ctx, self.op.operands[1], self.cout, self.k, 1)
        ctx.note("conv 1x1 as gemm on the image")

    def prologue(self, bvars: dict[int, str]) -> None:
        self.x = self.image(bvars)

    def block(self, bvars: dict[int, str], blk: Block, dst: str, ldd: int, lo: str,
              hi: str) -> None:
        n = c_diff(blk.c1, blk.c0)
        self.gemm({"M": self.cout, "N": n, "K": self.k, "A": self.a, "lda": self.k,
                   "a_packed": 1, "B": c_ptr(self.x, blk.c0), "ldb": self.plane, "b_packed": 0,
                   "b_padded": 0, "C": dst, "ldc": ldd, "bias_row": self.bias(),
                   "bias_col": "NULL", "lo": lo, "hi": hi}, str(self.cout), n)

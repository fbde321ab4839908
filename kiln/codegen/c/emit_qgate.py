"""The squeeze-excitation gate product written straight into the packed input of the
convolution after it (cpu target, AVX-512 VNNI).

In a MobileNetV3-style block the gate `kiln.qmul` (activation [N, C, H, W] times a per image
and channel gate [N, C, 1, 1]) has one reader, the 1x1 project convolution, and that
convolution's first step (`kiln_qpack_images`) reads every byte of the product once more to
interleave 4 channels per pixel (`kiln_qvnni.h`). Measured alone (MobileNet int8, batch 64)
the product was 8.6 % of the run and the packing of its result a good part of the 10.7 % the
packing took. Here the qmul kernel computes the same bytes (`kiln_qmul_pack4`: the
arithmetic of `kiln_qmul_invariant`, bit for bit) and stores them in that packed layout, in
the product's own buffer, which the convolution then reads in place of packing: one pass over
the tensor instead of three (product store, pack load, pack store).

Legality, checked by `gated_pack` for both kernels alike (each emitter asks it, so they
agree): the product's only user is that convolution as its input (the buffer's layout is
private to the two kernels), it is not a model output, the convolution takes the VNNI path
with 4 interleaved channels, unpadded, one group, and the packed stacks fit the product's
buffer (C a multiple of 4: exactly its bytes). No slack lies after the last stack in that
buffer, so the convolution copies its last stack into its own scratch (which has it).
Without VNNI both kernels keep their plain NCHW code (`#else`).

The product itself was the larger cost (the packing saved only ~2 %): one row (image and
channel) has a single factor g, and g takes at most 256 values, so on long rows each g met
gets a 256-byte table of its results (built once per call, by the same arithmetic) and rows
are looked up 64 bytes at a time (`TABLE_MIN_PIXELS`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from kiln.codegen.c.context import KernelContext
from kiln.codegen.c.emit_qvnni import VnniConv, plan
from kiln.ir.graph import Op, Value
from kiln.ir.ops.core import Return
from kiln.ir.ops.qnn import QConv1d, QConv2d
from kiln.ir.ops.qnn_eltwise import QMul
from kiln.ir.types import QuantType

Emitter = Callable[[KernelContext], None]
TABLE_MIN_PIXELS = 64
"""Rows (pixels per image and channel) from which `kiln_qmul_pack4` looks results up in a
table per gate value instead of computing each element. MobileNet int8 batch 64, interleaved
(CPU time, 400 rounds): tables from 64 pixels 0.893x the unfused time, from 16 pixels (its
4x4 block too) 0.914x, none 0.983x: on 16-pixel rows the table builds cost more than they
save."""


def _int8(value: Value) -> QuantType | None:
    q = value.type.dtype
    return q if isinstance(q, QuantType) and q.storage.bits == 8 and q.axis is None else None


def _unsigned(q: QuantType) -> int:
    return int(np.dtype(q.storage.numpy).kind == "u")


@dataclass(frozen=True)
class GatedPack:
    """A gate product packed for its convolution: the operands, the reader and its plan."""

    qmul: Op
    conv: Op
    plan: VnniConv
    x: Value
    """The activation [N, C, *spatial]."""
    gate: Value
    """The gate [N, C, 1...]."""

    @property
    def batch(self) -> int:
        return self.x.type.shape[0]

    @property
    def stack_bytes(self) -> int:
        """Packed bytes of one call's stack of images (`kiln_qpack_bytes` less its slack)."""
        return self.plan.image_bytes() * self.plan.images

    @property
    def stacks(self) -> int:
        return self.batch // self.plan.images

    def stack_line(self) -> str:
        """The convolution's statement in place of its pack call (inside its batch loop over
        `b`, with `X` its input and `S` its own packing scratch)."""
        return (f"P = kiln_qpacked_stack(X, b / {self.plan.images}, {self.stacks}, "
                f"{self.stack_bytes}L, S);")


def gated_pack(qmul: Op) -> GatedPack | None:
    """The fusion of `qmul` into its reader's packing, or None where it does not apply (module
    docstring)."""
    if not qmul.isa(QMul) or len(qmul.results) != 1:
        return None
    y = qmul.results[0]
    users = list(y.users)
    if len(users) != 1 or users[0].isa(Return) or not users[0].isa((QConv1d, QConv2d)):
        return None
    conv = users[0]
    if conv.operands[0] is not y or any(o is y for o in conv.operands[1:]):
        return None
    if any(_int8(v) is None for v in (*qmul.operands, y)):
        return None
    shape = y.type.shape
    if len(shape) < 3:
        return None
    gates = [v for v in qmul.operands
             if v.type.shape == (*shape[:2], *(1,) * (len(shape) - 2))]
    rows = [v for v in qmul.operands if v.type.shape == shape]
    if len(gates) != 1 or len(rows) != 1 or math.prod(shape[2:]) == 1:
        return None
    conv_plan = plan(conv)
    if conv_plan is None or conv_plan.rows or conv_plan.depthwise or conv_plan.groups != 1:
        return None
    h = 1 if len(shape) == 3 else shape[2]
    if conv_plan.elem != 4 or (conv_plan.hp, conv_plan.wp) != (h, shape[-1]):
        return None
    packed = GatedPack(qmul, conv, conv_plan, rows[0], gates[0])
    if packed.batch % conv_plan.images or packed.stacks * packed.stack_bytes > y.type.numel:
        return None
    return packed


def prepacked(conv: Op) -> GatedPack | None:
    """The gate product that packs `conv`'s input for it, if any."""
    producer = conv.operands[0].producer if conv.operands else None
    if producer is None or not producer.isa(QMul):
        return None
    packed = gated_pack(producer)
    return packed if packed is not None and packed.conv is conv else None


def emit_conv_prologue(ctx: KernelContext, packed: GatedPack) -> None:
    """Before the convolution's batch loop: keep its packing scratch (`P` then points into the
    input buffer, but for the last stack)."""
    ctx.w.line("uint8_t* const S = P;  /* the last packed stack is copied here (slack) */")
    ctx.note(f"input packed by {packed.qmul.name.removeprefix('kiln.')}")


def emit_qmul_packed(ctx: KernelContext, packed: GatedPack, plain: Emitter) -> None:
    """The product into the packed layout under KILN_QVNNI, `plain` (NCHW) otherwise."""
    kind = ctx.op.kind
    assert isinstance(kind, QMul)
    y = ctx.op.results[0]
    qx, qg, qy = _int8(packed.x), _int8(packed.gate), _int8(y)
    assert qx is not None and qg is not None and qy is not None
    low, high = kind._clamp()
    shape = y.type.shape
    signed = 1 - _unsigned(qy)
    w = ctx.w
    pixels = math.prod(shape[2:])
    tables = f"(uint8_t*){ctx.scratch(256 * 256 // 4)}" if pixels >= TABLE_MIN_PIXELS else "NULL"
    w.raw("#if KILN_QVNNI\n")
    w.line(f"/* the gated bytes in the packed layout of {ctx.shared.names[packed.conv.results[0]]}"
           f" (emit_qgate.py) */")
    w.line(f"static const kiln_qout out = {{{kind.multiplier[0]}, {31 - kind.shift[0]}, "
           f"{qy.zero_point[0]}, {low}, {high}}};")
    w.line(f"kiln_qmul_pack4({ctx.ref(packed.x)}, {_unsigned(qx)}, {qx.zero_point[0]}, "
           f"{ctx.ref(packed.gate)}, {_unsigned(qg)}, {qg.zero_point[0]}, &out, "
           f"{0x80 * signed}, {qy.zero_point[0] + 128 * signed}, {shape[1]}, "
           f"{pixels}L, {shape[0]}, {packed.plan.images}, {tables}, (uint8_t*){ctx.ref(y)});")
    w.raw("#else\n")
    if tables != "NULL":
        w.line(f"(void){tables};  /* the lookup tables' scratch */")
    plain(ctx)
    w.raw("#endif\n")
    ctx.note("packed for the next conv (vnni)")


def packing_qmul(plain: Emitter) -> Emitter:
    """`plain` (the qmul emitter), packing for the next convolution where `gated_pack`
    applies."""
    def emit(ctx: KernelContext) -> None:
        packed = gated_pack(ctx.op)
        if packed is None:
            plain(ctx)
        else:
            emit_qmul_packed(ctx, packed, plain)
    return emit


__all__ = ["GatedPack", "emit_conv_prologue", "emit_qmul_packed", "gated_pack", "packing_qmul",
           "prepacked"]

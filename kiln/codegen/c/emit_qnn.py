"""int8 kernels of the cpu target: quantize, dequantize and the GEMM-like `kiln.q*` ops (qadd,
qrescale, qreduce_mean and int8 max pooling live in `emit_qeltwise.py`).

Bit-exact with the interpreter (the arithmetic contract is `kiln/ir/requant.py`). Quantized
values live in the arena as packed 8-bit integers (the planner's 4 bytes per element leave
room); kernel parameters are declared `float*` by the context, so every kernel casts. Integer
parameters (shifted weights, int32 bias, multipliers, shifts) are emitted as `static const`
arrays inside the kernel: the float32 weights blob cannot hold int32 values exactly.

Convolutions and linear layers with symmetric weights run on AVX-512 VNNI (`emit_qvnni.py`,
`kiln_qvnni.h`: uint8 x int8 dot products, the zero point folded into the bias); the generated
code keeps the portable path under `#if !KILN_QVNNI`: operands shifted by their zero points to
int16 before the dot products (`kiln_qgemm.h`), so padding is a plain 0 and one int16 x int16 ->
int32 dot product serves int8 and uint8 alike (also the only path for weights with zero points).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from kiln.codegen.c import emit_qdw, emit_qgate, emit_qvnni
from kiln.codegen.c.context import KernelContext
from kiln.codegen.c.emit_qeltwise import emit_qadd, emit_qreduce_mean, emit_qrescale
from kiln.codegen.c.emit_qeltwise import emit_qmax_pool as emit_qmax_pool
from kiln.ir.graph import Op, Value
from kiln.ir.ops.core import Return
from kiln.ir.ops.nn_pool import MaxPool1d, MaxPool2d
from kiln.ir.ops.qnn import QAdd, QConv1d, QConv2d, QLinear, QRescale, RequantOp
from kiln.ir.ops.qnn_pool import QReduceMean
from kiln.ir.ops.quant import Dequantize, Quantize
from kiln.ir.types import I32, QuantType

Emitter = Callable[[KernelContext], None]


# -- types and literals ------------------------------------------------------------------------
def quant(value: Value) -> QuantType:
    q = value.type.dtype
    assert isinstance(q, QuantType)
    return q


def is_int8(value: Value) -> bool:
    """An 8-bit affine-quantized tensor quantized per tensor (what the int8 kernels store)."""
    q = value.type.dtype
    return isinstance(q, QuantType) and q.storage.bits == 8 and q.axis is None


def _unsigned(value: Value) -> int:
    return int(np.dtype(quant(value).storage.numpy).kind == "u")


def _ctype(value: Value) -> str:
    return "uint8_t" if _unsigned(value) else "int8_t"


def _array(ctx: KernelContext, ctype: str, name: str, data: Sequence[int] | np.ndarray) -> str:
    """A `static const` integer array in the kernel body; returns its name."""
    values = [int(v) for v in np.asarray(data).ravel()] or [0]
    ctx.w.line(f"static const {ctype} {name}[{len(values)}] = {{")
    with ctx.w.indented():
        for start in range(0, len(values), 16):
            ctx.w.line(", ".join(str(v) for v in values[start:start + 16]) + ",")
    ctx.w.line("};")
    return name


def _storage_range(value: Value) -> tuple[int, int]:
    info = np.iinfo(quant(value).storage.numpy)
    return int(info.min), int(info.max)


# -- what is supported -------------------------------------------------------------------------
def int8_problem(op: Op) -> str | None:
    """Why the int8 kernels cannot compile `op` (None when they can)."""
    ints = [v for v in (*op.operands, *op.results) if isinstance(v.type.dtype, QuantType)]
    if any(user.isa(Return) for v in ints if v in op.results for user in v.users):
        return ("its quantized result is a model output, but the cpu target returns float32 "
                "tensors (end the model with kiln.dequantize)")
    if op.isa(Quantize) or op.isa(Dequantize):
        if not is_int8(op.operands[0] if op.isa(Dequantize) else op.results[0]):
            return "only 8-bit per-tensor quantize/dequantize have C kernels"
        if op.isa(Quantize) and getattr(op.kind, "scheme", "div") != "div":
            return "only the 'div' quantization scheme has a C kernel"
        return None
    if op.isa((QConv1d, QConv2d, QLinear)):
        bad = [v for v in (op.operands[0], op.results[0]) if not is_int8(v)]
        if bad or (len(op.operands) == 3 and op.operands[2].type.dtype != I32):
            return "needs per-tensor 8-bit input and result and an i32 bias"
        return None
    if op.isa(QAdd):
        a, b = op.operands
        if a.type.shape != b.type.shape:
            return "qadd with broadcasting has no C kernel (operands must have equal shapes)"
        return None if all(is_int8(v) for v in ints) else "needs 8-bit per-tensor operands"
    if op.isa((QRescale, QReduceMean, MaxPool1d, MaxPool2d)):
        if not all(is_int8(v) for v in ints):
            return "needs 8-bit per-tensor operands"
        if op.isa(QReduceMean) and not _trailing_axes(op):
            return "qreduce_mean over non-trailing axes has no C kernel"
        return None
    return "has no int8 C kernel"


def _trailing_axes(op: Op) -> bool:
    axes = sorted(getattr(op.kind, "axes", ()))
    rank = op.operands[0].type.rank
    return axes == list(range(rank - len(axes), rank))


# -- float <-> int8 ----------------------------------------------------------------------------
def emit_quantize(ctx: KernelContext) -> None:
    """fixed.quantize_affine scheme 'div': t = rint(f32(x / s)) + zp, NaN → min, saturate."""
    x, y = ctx.op.operands[0], ctx.op.results[0]
    q = quant(y)
    lo, hi = _storage_range(y)
    scale = float(np.float32(q.scale[0]))
    w = ctx.w
    w.line(f"{_ctype(y)}* Y = ({_ctype(y)}*){ctx.ref(y)};")
    w.line(f"const float* X = {ctx.ref(x)};")
    with w.block(f"for (long i = 0; i < {x.type.numel}L; ++i)"):
        # float32 is exact here: rint(...) + zp can only round beyond 2^24, which saturates
        w.line(f"float t = nearbyintf(X[i] / {scale.hex()}f) + {q.zero_point[0]}.0f;")
        w.line(f"float c = t < {lo}.0f ? {lo}.0f : (t > {hi}.0f ? {hi}.0f : t);")
        w.line(f"Y[i] = ({_ctype(y)})(t != t ? {lo} : (int)c);")
    ctx.note("quantize int8")


def emit_dequantize(ctx: KernelContext) -> None:
    """fixed.dequantize_affine in float32: f32(q - zp) · f32(scale)."""
    x, y = ctx.op.operands[0], ctx.op.results[0]
    q = quant(x)
    scale = float(np.float32(q.scale[0]))
    ctx.w.line(f"const {_ctype(x)}* X = (const {_ctype(x)}*){ctx.ref(x)};")
    ctx.w.line(f"float* Y = {ctx.ref(y)};")
    with ctx.w.block(f"for (long i = 0; i < {x.type.numel}L; ++i)"):
        ctx.w.line(f"Y[i] = (float)((int)X[i] - {q.zero_point[0]}) * {scale.hex()}f;")
    ctx.note("dequantize int8")


# -- GEMM-like ops -----------------------------------------------------------------------------
def _requant(ctx: KernelContext, kind: RequantOp, bias: str, channels: int) -> None:
    """Declares `rq`, the kiln_requant of a GEMM with `channels` output channels."""
    y = ctx.op.results[0]
    low, high = kind._clamp()
    mult = _array(ctx, "int32_t", "mult", kind.multiplier)
    shift = _array(ctx, "int32_t", "shift", kind.shift)
    per_channel = int(len(kind.multiplier) > 1)
    assert not per_channel or len(kind.multiplier) == channels
    ctx.w.line(f"const kiln_requant rq = {{{bias}, {mult}, {shift}, {per_channel}, "
               f"{quant(y).zero_point[0]}, {low}, {high}, {_unsigned(y)}}};")


def _weights(ctx: KernelContext, groups: int) -> tuple[Gemm, str]:
    """The weights shifted by their zero points as a `Gemm` per group, and the bias (or
    NULL)."""
    op = ctx.op
    w_value = op.operands[1]
    data = ctx.constant_array(w_value)
    if data is None:
        raise op.error("the int8 cpu kernels need constant weights")
    qw = quant_weight(w_value)
    rows = w_value.type.shape[0]
    zp = np.asarray(qw.zero_point, np.int64)
    zp = zp.reshape((rows,) + (1,) * (w_value.type.rank - 1)) if qw.axis is not None else zp
    shifted = (np.asarray(data).astype(np.int64) - zp).reshape(rows, -1)
    gemm = Gemm.of(ctx, shifted, groups)
    bias = "NULL"
    if len(op.operands) == 3:
        b = ctx.constant_array(op.operands[2])
        if b is None:
            raise op.error("the int8 cpu kernels need a constant bias")
        bias = _array(ctx, "int32_t", "bias", np.asarray(b).astype(np.int64))
    return gemm, bias


QNB = 16
"""Channels per packed block (KILN_QNB of kiln_qgemm.h)."""


@dataclass(frozen=True)
class Gemm:
    """The int16 weights of a (grouped) GEMM as emitted: packed for `kiln_qgemm_packed` when
    a group has at least 4 output channels (the padding to 16 costs less than the plain
    loops' horizontal sums), else row-major for the plain `kiln_qgemm` (depthwise)."""

    name: str
    packed: bool
    n: int
    """Output channels per group."""
    k: int
    ld: int
    """Row stride of the activation matrix (K, or K rounded up to even when packed)."""
    group_stride: int

    @staticmethod
    def of(ctx: KernelContext, shifted: np.ndarray, groups: int) -> Gemm:
        n, k = shifted.shape[0] // groups, shifted.shape[1]
        if n < 4:
            name = _array(ctx, "int16_t", "wq", shifted)
            return Gemm(name, False, n, k, k, n * k)
        kp, np_ = k + k % 2, -(-n // QNB) * QNB
        parts = []
        for g in range(groups):
            block = np.zeros((np_, kp), np.int64)
            block[:n, :k] = shifted[g * n:(g + 1) * n]
            parts.append(block.reshape(np_ // QNB, QNB, kp // 2, 2).transpose(0, 2, 1, 3))
        name = _array(ctx, "int16_t", "wq", np.concatenate([p.ravel() for p in parts]))
        return Gemm(name, True, n, k, kp, np_ * kp)

    def call(self, m: int, a: str, group: str, rq_channel: str, out: str, rs: str,
             cs: str) -> str:
        """The C call computing rows `a` (m of them) of group `group` into `out`."""
        w = f"{self.name} + (long){group} * {self.group_stride}"
        if self.packed:
            return (f"kiln_qgemm_packed({m}, {self.n}, {self.ld}, {a}, {w}, &rq, {rq_channel}, "
                    f"{out}, {rs}, {cs});")
        return (f"kiln_qgemm({m}, {self.n}, {self.k}, {a}, {self.ld}, {w}, &rq, {rq_channel}, "
                f"{out}, {rs}, {cs});")


def quant_weight(value: Value) -> QuantType:
    q = value.type.dtype
    assert isinstance(q, QuantType)
    return q


def emit_qlinear(ctx: KernelContext) -> None:
    """x @ Wᵀ + b as a VNNI 1x1 convolution over the rows (`emit_qvnni`), with the int16 GEMM
    of `_qlinear_int16` as the fallback (or the only path: weights with zero points)."""
    op = ctx.op
    n, k = op.operands[1].type.shape
    m = op.operands[0].type.numel // k
    need = -(-m * _int16_ld(n, k) // 2)
    conv = emit_qvnni.plan(op)
    if conv is None:
        _qlinear_int16(ctx, ctx.scratch(need))
        ctx.note(f"qlinear int16 {'packed ' if n >= 4 else ''}gemm")
        return
    scratch = ctx.scratch(max(need, conv.scratch_floats()))
    x = op.operands[0]
    zx = emit_qvnni.input_zero_point(ctx)
    ctx.w.line("#if KILN_QVNNI")
    weights = _vnni_weights(ctx, conv, zx)
    emit_qvnni.emit_scratch(ctx, conv, scratch)
    emit_qvnni.emit_rows(ctx, conv, weights, _unsigned(x), zx)
    ctx.w.line("#else")
    _qlinear_int16(ctx, scratch)
    ctx.w.line("#endif")
    ctx.note("qlinear vnni gemm (int16 fallback)")


def _int16_ld(n: int, k: int) -> int:
    """The int16 GEMM's activation row stride (`Gemm.ld`)."""
    return k + k % 2 if n >= 4 else k


def _vnni_weights(ctx: KernelContext, conv: emit_qvnni.VnniConv, zx: int) -> str:
    """Declares the packed int8 weights and `rq` (with the folded bias); returns the weights'
    name."""
    op = ctx.op
    data = ctx.constant_array(op.operands[1])
    if data is None:
        raise op.error("the int8 cpu kernels need constant weights")
    bias = None
    if len(op.operands) == 3:
        bias = ctx.constant_array(op.operands[2])
        if bias is None:
            raise op.error("the int8 cpu kernels need a constant bias")
    assert isinstance(op.kind, RequantOp)
    name = _array(ctx, "int32_t", "wv", emit_qvnni.packed_weights(conv, data))
    folded = _array(ctx, "int32_t", "bias", emit_qvnni.folded_bias(conv, data, bias, zx))
    _requant(ctx, op.kind, folded, conv.groups * conv.cout)
    return name


def _qlinear_int16(ctx: KernelContext, scratch: str) -> None:
    """Shift x to int16 (scratch), one int16 GEMM with fused requantization."""
    op = ctx.op
    assert isinstance(op.kind, QLinear)
    x, y = op.operands[0], op.results[0]
    n, k = op.operands[1].type.shape
    m = x.type.numel // k
    gemm, bias = _weights(ctx, 1)
    _requant(ctx, op.kind, bias, n)
    ctx.w.line(f"int16_t* A = (int16_t*){scratch};")
    ctx.w.line(f"kiln_qshift({ctx.ref(x)}, {_unsigned(x)}, {quant(x).zero_point[0]}, "
               f"{m}L, {k}, {gemm.ld}, A);")
    ctx.w.line(gemm.call(m, "A", "0", "0", ctx.ref(y), f"{n}L", "1L"))


def emit_qconv(ctx: KernelContext) -> None:
    """The VNNI convolution (`emit_qvnni`: pack each image, direct convolution with fused
    requantization), with `_qconv_int16` as the fallback (or the only path)."""
    op = ctx.op
    spatial = op.operands[0].type.rank - 2
    title = "qconv1d" if spatial == 1 else "qconv2d"
    conv = emit_qvnni.plan(op)
    need = _qconv_int16_scratch(op)
    if conv is None:
        _qconv_int16(ctx, ctx.scratch(need))
        ctx.note(f"{title} im2col+int16 gemm")
        return
    direct = emit_qdw.plan(op, conv)  # depthwise read in place (kiln_qdw.h)
    own = conv.scratch_floats() if direct is None else emit_qdw.scratch_floats(conv.groups)
    scratch = ctx.scratch(max(need, own))
    ctx.w.line("#if KILN_QVNNI")
    _qconv_vnni(ctx, conv, scratch, direct)
    ctx.w.line("#else")
    _qconv_int16(ctx, scratch)
    ctx.w.line("#endif")
    kind = "depthwise direct" if direct else "depthwise" if conv.depthwise else "direct"
    ctx.note(f"{title} vnni {kind} (int16 fallback)")


def _qconv_vnni(ctx: KernelContext, conv: emit_qvnni.VnniConv, scratch: str,
                direct: emit_qdw.DwGeom | None = None) -> None:
    """Per call of `conv.images` images (and group): pack the padded input, convolve,
    requantize, store NCHW (`direct`: a depthwise one reading NCHW in place)."""
    op = ctx.op
    assert isinstance(op.kind, (QConv1d, QConv2d))
    x, y = op.operands[0], op.results[0]
    zx = emit_qvnni.input_zero_point(ctx)
    weights = _vnni_weights(ctx, conv, zx)
    if direct is not None:
        return emit_qdw.emit(ctx, direct, weights, _unsigned(x), zx, scratch)
    emit_qvnni.emit_scratch(ctx, conv, scratch)
    if conv.rows:
        return emit_qvnni.emit_rows(ctx, conv, weights, _unsigned(x), zx)
    geo = _conv_geometry(op.kind, x.type.rank - 2).split(", ")
    ctx.w.line(f"const {_ctype(x)}* X = (const {_ctype(x)}*){ctx.ref(x)};")
    ctx.w.line(f"{_ctype(y)}* Y = ({_ctype(y)}*){ctx.ref(y)};")
    gated = emit_qgate.prepacked(op)  # the input arrives packed by the SE gate's qmul
    if gated is not None:
        emit_qgate.emit_conv_prologue(ctx, gated)
    emit_qvnni.emit_images(ctx, conv, weights, _unsigned(x), zx, int(geo[2]), int(geo[3]),
                           None if gated is None else gated.stack_line())


def _qconv_int16_scratch(op: Op) -> int:
    """Floats of the int16 im2col scratch."""
    ys, ws = op.results[0].type.shape, op.operands[1].type.shape
    groups = getattr(op.kind, "groups", 1)
    k = ws[1] * (ws[2] if len(ws) == 3 else ws[2] * ws[3])
    pixels = ys[2] * (ys[3] if len(ys) == 4 else 1)
    return -(-pixels * _int16_ld(ws[0] // groups, k) // 2)


def _qconv_int16(ctx: KernelContext, scratch: str) -> None:
    """Per image and group: int16 im2col, then a GEMM storing requantized NCHW results."""
    op = ctx.op
    assert isinstance(op.kind, (QConv1d, QConv2d))
    x, y = op.operands[0], op.results[0]
    spatial = x.type.rank - 2
    xs, ws, ys = x.type.shape, op.operands[1].type.shape, y.type.shape
    h, w_ = (1, xs[2]) if spatial == 1 else xs[2:]
    oh, ow = (1, ys[2]) if spatial == 1 else ys[2:]
    kh, kw = (1, ws[2]) if spatial == 1 else ws[2:]
    geo = _conv_geometry(op.kind, spatial)
    groups = op.kind.groups
    cin_g, cout_g = xs[1] // groups, ws[0] // groups
    gemm, bias = _weights(ctx, groups)
    _requant(ctx, op.kind, bias, ws[0])
    ctx.w.line(f"int16_t* col = (int16_t*){scratch};")
    ctx.w.line(f"const {_ctype(x)}* X = (const {_ctype(x)}*){ctx.ref(x)};")
    ctx.w.line(f"{_ctype(y)}* Y = ({_ctype(y)}*){ctx.ref(y)};")
    with ctx.w.block(f"for (int b = 0; b < {xs[0]}; ++b)"), \
            ctx.w.block(f"for (int g = 0; g < {groups}; ++g)"):
        ctx.w.line(f"kiln_qim2col(X + ((long)b * {xs[1]} + g * {cin_g}) * {h * w_}L, "
                   f"{_unsigned(x)}, {quant(x).zero_point[0]}, {cin_g}, {h}, {w_}, {kh}, "
                   f"{kw}, {geo}, {oh}, {ow}, {gemm.ld}, col);")
        out = f"Y + ((long)b * {ys[1]} + g * {cout_g}) * {oh * ow}L"
        ctx.w.line(gemm.call(oh * ow, "col", "g", f"g * {cout_g}", out, "1L", f"{oh * ow}L"))


def _conv_geometry(kind: QConv1d | QConv2d, spatial: int) -> str:
    """`sh, sw, pt, pl, dh, dw` of a 1-D or 2-D convolution (ONNX-order padding)."""
    s, p, d = kind.stride, kind.padding, kind.dilation
    if spatial == 1:
        return f"1, {s[0]}, 0, {p[0]}, 1, {d[0]}"
    return f"{s[0]}, {s[1]}, {p[0]}, {p[1]}, {d[0]}, {d[1]}"


# -- elementwise and reductions: emit_qeltwise.py -------------------------------------------


def int8_or(float_emitter: Emitter, int8_emitter: Emitter) -> Emitter:
    """An emitter that picks the int8 kernel when the op's input is quantized."""
    def emit(ctx: KernelContext) -> None:
        chosen = int8_emitter if is_int8(ctx.op.operands[0]) else float_emitter
        chosen(ctx)
    return emit


QNN_KERNELS: dict[type, Emitter] = {
    Quantize: emit_quantize, Dequantize: emit_dequantize, QLinear: emit_qlinear,
    QConv1d: emit_qconv, QConv2d: emit_qconv, QAdd: emit_qadd, QRescale: emit_qrescale,
    QReduceMean: emit_qreduce_mean,
}
"""Kernels of the quantized ops (max pooling dispatches through `int8_or`)."""

__all__ = ["QNN_KERNELS", "int8_or", "int8_problem", "is_int8"]

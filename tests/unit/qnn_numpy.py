"""An independent, plain re-implementation of kiln's integer ops, for bit-exactness tests.

Written from the arithmetic contract in `kiln/ir/requant.py` and `kiln/ir/ops/qnn.py`, not from
their code: convolutions are explicit loops over kernel offsets with int64 `einsum`, and the
requantization and rounding divisions use Python integers (unbounded, so nothing can overflow
here that would not in the contract). `run_integer_model` evaluates a whole quantized module
with these ops and the interpreter's own references for everything else (quantize, dequantize,
shape ops, max pooling), so tests can compare every integer value bit for bit.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from kiln.ir.graph import Block, Module, Op, Value
from kiln.ir.ops import qnn, qnn_eltwise, qnn_pool
from kiln.ir.ops.core import Return, Weight, Yield
from kiln.ir.types import QuantType, TensorType


def wrap32(v: int) -> int:
    return ((v + (1 << 31)) % (1 << 32)) - (1 << 31)


def rmul(x: int, m: int, e: int) -> int:
    """round(x · m / 2^(31 - e)), ties toward +infinity, in Python integers."""
    t = 31 - e
    return (x * m + (1 << (t - 1))) >> t


def round_div(s: int, c: int) -> int:
    """s / c rounded half away from zero."""
    q, r = divmod(abs(s), c)
    q += 2 * r >= c
    return q if s >= 0 else -q


def _bounds(kind: qnn.RequantOp) -> tuple[int, int]:
    info = np.iinfo(kind.to.storage.numpy)
    low = getattr(kind, "clamp_min", None)
    high = getattr(kind, "clamp_max", None)
    return (int(info.min) if low is None else low), (int(info.max) if high is None else high)


def requantize(acc: np.ndarray, kind: qnn.RequantOp, channel_axis: int) -> np.ndarray:
    """Stored outputs of the requantization, element by element."""
    low, high = _bounds(kind)
    zp = kind.to.zero_point[0]
    out = np.empty(acc.shape, np.int64)
    for idx, a in np.ndenumerate(acc):
        c = idx[channel_axis] if len(kind.multiplier) > 1 else 0
        y = rmul(wrap32(int(a)), kind.multiplier[c], kind.shift[c]) + zp
        out[idx] = min(max(y, low), high)
    return out.astype(kind.to.storage.numpy)


def _zps(t: TensorType, rank: int) -> np.ndarray:
    q = t.dtype
    assert isinstance(q, QuantType)
    zp = np.array(q.zero_point, np.int64)
    if q.axis is None:
        return zp.reshape(())
    shape = [1] * rank
    shape[q.axis] = len(zp)
    return zp.reshape(shape)


def centered(x: np.ndarray, t: TensorType) -> np.ndarray:
    return x.astype(np.int64) - _zps(t, x.ndim)


def conv_acc(x: np.ndarray, w: np.ndarray, kind: qnn._QConv) -> np.ndarray:
    """Σ over kernel offsets of x-window · w, int64, for 1-D or 2-D convs (NC... layout)."""
    nd = w.ndim - 2
    pads = [(0, 0), (0, 0)] + [(kind.padding[i], kind.padding[nd + i]) for i in range(nd)]
    xp = np.pad(x, pads)
    if nd == 1:
        xp, w = xp[:, :, None, :], w[:, :, None, :]
        stride, dil = (1, kind.stride[0]), (1, kind.dilation[0])
    else:
        stride, dil = kind.stride, kind.dilation
    n, _, h, wd = xp.shape
    o, cg, kh, kw = w.shape
    oh = (h - dil[0] * (kh - 1) - 1) // stride[0] + 1
    ow = (wd - dil[1] * (kw - 1) - 1) // stride[1] + 1
    og = o // kind.groups
    acc = np.zeros((n, o, oh, ow), np.int64)
    for g in range(kind.groups):
        for i in range(kh):
            for j in range(kw):
                patch = xp[:, g * cg:(g + 1) * cg,
                           i * dil[0]: i * dil[0] + stride[0] * (oh - 1) + 1: stride[0],
                           j * dil[1]: j * dil[1] + stride[1] * (ow - 1) + 1: stride[1]]
                acc[:, g * og:(g + 1) * og] += np.einsum(
                    "nchw,oc->nohw", patch, w[g * og:(g + 1) * og, :, i, j])
    return acc[:, :, 0, :] if nd == 1 else acc


def qconv(op_types: Sequence[TensorType], args: Sequence[np.ndarray],
          kind: qnn._QConv) -> np.ndarray:
    acc = conv_acc(centered(args[0], op_types[0]), centered(args[1], op_types[1]), kind)
    if len(args) == 3:
        acc += args[2].astype(np.int64).reshape((1, -1) + (1,) * (acc.ndim - 2))
    return requantize(acc, kind, 1)


def qlinear(op_types: Sequence[TensorType], args: Sequence[np.ndarray],
            kind: qnn.QLinear) -> np.ndarray:
    x, w = centered(args[0], op_types[0]), centered(args[1], op_types[1])
    acc = np.einsum("...k,ok->...o", x, w)
    if len(args) == 3:
        acc = acc + args[2].astype(np.int64)
    return requantize(acc, kind, acc.ndim - 1)


def qmatmul(op_types: Sequence[TensorType], args: Sequence[np.ndarray],
            kind: qnn.QMatMul) -> np.ndarray:
    a, b = centered(args[0], op_types[0]), centered(args[1], op_types[1])
    acc = np.matmul(a, b)  # int64 matmul: exact
    return requantize(np.asarray(acc), kind, acc.ndim - 1)


def qadd(op_types: Sequence[TensorType], args: Sequence[np.ndarray],
         kind: qnn.QAdd) -> np.ndarray:
    a, b = (np.broadcast_to(centered(x, t), np.broadcast_shapes(args[0].shape, args[1].shape))
            for x, t in zip(args, op_types))
    total = np.empty(a.shape, np.int64)
    for idx in np.ndindex(a.shape):
        total[idx] = (rmul(int(a[idx]) << kind.left_shift, kind.lhs_multiplier, kind.lhs_shift)
                      + rmul(int(b[idx]) << kind.left_shift, kind.rhs_multiplier,
                             kind.rhs_shift))
    return requantize(total, kind, 0)


def qrescale(op_types: Sequence[TensorType], args: Sequence[np.ndarray],
             kind: qnn.QRescale) -> np.ndarray:
    return requantize(centered(args[0], op_types[0]), kind, 0)


def _average(total: np.ndarray, count: np.ndarray, t: TensorType) -> np.ndarray:
    q = t.dtype
    assert isinstance(q, QuantType)
    info = np.iinfo(q.storage.numpy)
    out = np.empty(total.shape, np.int64)
    counts = np.broadcast_to(count, total.shape)
    for idx, s in np.ndenumerate(total):
        y = round_div(int(s), int(counts[idx])) + q.zero_point[0]
        out[idx] = min(max(y, int(info.min)), int(info.max))
    return out.astype(q.storage.numpy)


def qreduce_mean(op_types: Sequence[TensorType], args: Sequence[np.ndarray],
                 kind: qnn_pool.QReduceMean) -> np.ndarray:
    x = centered(args[0], op_types[0])
    count = int(np.prod([x.shape[a] for a in kind.axes]))
    return _average(x.sum(axis=kind.axes, keepdims=kind.keepdims), np.array(count), op_types[0])


def qavg_pool2d(op_types: Sequence[TensorType], args: Sequence[np.ndarray],
                kind: qnn_pool.QAvgPool2d) -> np.ndarray:
    """Window by window: padded positions are real zeros (contribute nothing to the sum)."""
    x = centered(args[0], op_types[0])
    (out_type,) = kind.infer_type(list(op_types))
    oh, ow = out_type.shape[2:]
    h, w = x.shape[2:]
    totals = np.zeros((*x.shape[:2], oh, ow), np.int64)
    counts = np.zeros((oh, ow), np.int64)
    for i in range(oh):
        for j in range(ow):
            r0, c0 = i * kind.stride[0] - kind.padding[0], j * kind.stride[1] - kind.padding[1]
            rows = slice(max(r0, 0), min(r0 + kind.kernel[0], h))
            cols = slice(max(c0, 0), min(c0 + kind.kernel[1], w))
            totals[:, :, i, j] = x[:, :, rows, cols].sum(axis=(2, 3))
            counts[i, j] = (_extent(i, kind.stride[0], kind.kernel[0], kind.padding[0],
                                    kind.padding[2], h, kind.count_include_pad)
                            * _extent(j, kind.stride[1], kind.kernel[1], kind.padding[1],
                                      kind.padding[3], w, kind.count_include_pad))
    return _average(totals, counts, op_types[0])


def _extent(i: int, stride: int, kernel: int, begin: int, end: int, size: int,
            include_pad: bool) -> int:
    start, stop = i * stride - begin, min(i * stride - begin + kernel, size + end)
    if not include_pad:
        start, stop = max(start, 0), min(stop, size)
    return stop - start


def qmul(op_types: Sequence[TensorType], args: Sequence[np.ndarray],
         kind: qnn_eltwise.QMul) -> np.ndarray:
    """Broadcast product of the centered operands, element by element in Python integers."""
    a, b = np.broadcast_arrays(centered(args[0], op_types[0]), centered(args[1], op_types[1]))
    low, high = _bounds(kind)
    out = np.empty(a.shape, np.int64)
    for idx in np.ndindex(a.shape):
        y = rmul(int(a[idx]) * int(b[idx]), kind.multiplier[0], kind.shift[0])
        out[idx] = min(max(y + kind.to.zero_point[0], low), high)
    return out.astype(kind.to.storage.numpy)


def qlut(op_types: Sequence[TensorType], args: Sequence[np.ndarray],
         kind: qnn_eltwise.QLut) -> np.ndarray:
    """Entry x - storage_min of the table, for every element."""
    q = op_types[0].dtype
    assert isinstance(q, QuantType)
    first = int(np.iinfo(q.storage.numpy).min)
    flat = [kind.table[int(v) - first] for v in args[0].ravel()]
    return np.array(flat, np.int64).reshape(args[0].shape).astype(kind.to.storage.numpy)


INTEGER_OPS = {
    qnn.QConv1d: qconv, qnn.QConv2d: qconv, qnn.QLinear: qlinear, qnn.QMatMul: qmatmul,
    qnn.QAdd: qadd, qnn.QRescale: qrescale, qnn_pool.QReduceMean: qreduce_mean,
    qnn_pool.QAvgPool2d: qavg_pool2d, qnn_eltwise.QMul: qmul, qnn_eltwise.QLut: qlut,
}


def run_op(op: Op, args: Sequence[np.ndarray]) -> np.ndarray | None:
    """The independent result of an integer op, None for other ops."""
    impl = INTEGER_OPS.get(type(op.kind))
    if impl is None:
        return None
    return impl([v.type for v in op.operands], args, op.kind)  # type: ignore[operator]


def run_integer_model(module: Module, *inputs: np.ndarray) -> dict[Value, np.ndarray]:
    """Every value of the entry function: integer ops from this file, the rest from kiln."""
    func = module.main
    env: dict[Value, np.ndarray] = dict(zip(func.args, inputs))
    _run_block(module, func.body, env)
    return env


def _run_block(module: Module, block: Block, env: dict[Value, np.ndarray]) -> list[np.ndarray]:
    for op in block.ops:
        if isinstance(op.kind, (Return, Yield)):
            return [env[v] for v in op.operands]
        args = [env[v] for v in op.operands]
        if isinstance(op.kind, Weight):
            outs = [module.weights[op.kind.name]]
        elif op.region is not None:  # a fused group: its body, with the same rules
            outs = _run_block(module, op.region, {**env, **dict(zip(op.region.args, args))})
        else:
            mine = run_op(op, args)
            outs = ([mine] if mine is not None
                    else list(op.kind.reference_typed([v.type for v in op.operands], *args)))
        env.update(zip(op.results, outs))
    return []

"""Pooling kernels: max / average / adaptive-average, 1-D and 2-D, as window reductions.

One program holds BLOCK_O output elements against BLOCK_T window taps: a [BLOCK_O, BLOCK_T]
tile of input positions (`p_i = start_i + tap_i · dilation`), loaded with the taps outside the
input (padding, ceil-mode overhang, beyond an adaptive bin) masked to -inf (max) or 0 (sum),
then reduced along the taps. Windows longer than BLOCK_T (a global average pool over a large
image) loop over tap chunks. Average divisors follow PyTorch (see `kiln/ir/ops/nn_pool.py`):
with `count_include_pad` a window counts its padded positions but not what hangs past the end
padding; without it, only input positions; adaptive bins are
[floor(i·S/O), ceil((i+1)·S/O)).
"""

from __future__ import annotations

import math

from kiln.codegen.triton import blocks
from kiln.codegen.triton.group import Group
from kiln.codegen.triton.kernel import Kernel, KernelBuilder
from kiln.codegen.triton.options import TritonOptions
from kiln.codegen.triton.space import scaled, strides, total, unravel
from kiln.ir.graph import Op
from kiln.ir.ops.nn_pool import _AdaptiveAvgPool, _AvgPool, _MaxPool


def _window(op: Op) -> tuple[int, ...]:
    """Taps per spatial axis (the largest adaptive bin for adaptive pools)."""
    x, out = op.operands[0].type.shape, op.results[0].type.shape
    kind = op.kind
    if isinstance(kind, _AdaptiveAvgPool):
        return tuple(max(-(-(i + 1) * s // o) - i * s // o for i in range(o))
                     for s, o in zip(x[2:], out[2:]))
    return tuple(kind.kernel)  # type: ignore[attr-defined]


def _start(kb: KernelBuilder, op: Op, i: int) -> None:
    """Write the window start (and adaptive end) of spatial axis i, before the tap loop."""
    x, out = op.operands[0].type.shape, op.results[0].type.shape
    size, osize = x[2 + i], out[2 + i]
    kind = op.kind
    o = f"o{i}" if osize > 1 else "0"
    if isinstance(kind, _AdaptiveAvgPool) and osize == 1:
        kb.line(f"s{i} = 0")
        kb.line(f"e{i} = {size}")
        return
    if isinstance(kind, _AdaptiveAvgPool):
        kb.line(f"s{i} = ({o} * {size}) // {osize}")
        kb.line(f"e{i} = (({o} + 1) * {size} + {osize - 1}) // {osize}")
        return
    stride, before = kind.stride[i], kind.padding[i]  # type: ignore[attr-defined]
    kb.line(f"s{i} = {total([scaled(o, stride)])}" + (f" - {before}" if before else ""))


def _position(kb: KernelBuilder, op: Op, i: int, checks: list[str]) -> str:
    """Write the input position of spatial axis i inside the tap loop; add its checks."""
    size, nd = op.operands[0].type.shape[2 + i], op.operands[0].type.rank - 2
    q = f"q{i}" if _window(op)[i] > 1 else "0"
    dilation = getattr(op.kind, "dilation", (1,) * nd)[i]
    kb.line(f"p{i} = s{i} + {total([scaled(q, dilation)])}")
    if q == "0" and op.results[0].type.shape[2 + i] == 1:
        # p{i} is a Python int here: a check on it would be a bool, which Triton's
        # interpreter rejects inside a mask; decide it now (an adaptive bin is never empty)
        before = 0 if isinstance(op.kind, _AdaptiveAvgPool) else \
            op.kind.padding[i]  # type: ignore[attr-defined]
        if not 0 <= -before < size:
            checks.append("(t < 0)")
        return f"p{i}"
    if isinstance(op.kind, _AdaptiveAvgPool):
        checks.append(f"(p{i} < e{i})")
    else:
        checks.extend([f"(p{i} >= 0)", f"(p{i} < {size})"])
    return f"p{i}"


def _divisor(kb: KernelBuilder, op: Op) -> str:
    """The per-output divisor of an average pool (a local or a literal)."""
    x = op.operands[0].type.shape
    kind, nd = op.kind, len(x) - 2
    factors = []
    for i in range(nd):
        if isinstance(kind, _AdaptiveAvgPool):
            factors.append(f"(e{i} - s{i})")
            continue
        assert isinstance(kind, _AvgPool)
        k, size, after = kind.kernel[i], x[2 + i], kind.padding[nd + i]
        if kind.count_include_pad:
            factors.append(f"(tl.minimum(s{i} + {k}, {size + after}) - s{i})")
        else:
            factors.append(f"(tl.minimum(s{i} + {k}, {size}) - tl.maximum(s{i}, 0))")
    return kb.assign("count", " * ".join(factors) + " * 1.0")


def _outputs(kb: KernelBuilder, op: Op, numel: int) -> None:
    """Program prologue: output elements `o`, their (N·C) plane `c`, positions, window starts."""
    xs, os_ = op.operands[0].type.shape, op.results[0].type.shape
    kb.line("o = tl.program_id(0) * BLOCK_O + tl.arange(0, BLOCK_O)[:, None]")
    kb.line(f"mask = o < {numel}")
    rows = (xs[0] * xs[1], *os_[2:])
    kb.line(f"c = {unravel('o', rows, 0)}")
    for i in range(len(xs) - 2):
        if os_[2 + i] > 1:
            kb.line(f"o{i} = {unravel('o', rows, i + 1)}")
    for i in range(len(xs) - 2):
        _start(kb, op, i)


def _taps(kb: KernelBuilder, op: Op, init: str) -> None:
    """The loop over window taps, reducing into `acc` (max, or sum for the averages)."""
    x = op.operands[0]
    window, nd = _window(op), x.type.rank - 2
    taps = math.prod(window)
    kb.line(f"for t0 in range(0, {taps}, BLOCK_T):")
    with kb.body.indented():
        kb.line("t = t0 + tl.arange(0, BLOCK_T)[None, :]")
        for i in range(nd):
            if window[i] > 1:
                kb.line(f"q{i} = {unravel('t', window, i)}")
        checks = ["mask", f"(t < {taps})"]
        positions = [_position(kb, op, i, checks) for i in range(nd)]
        spatial = x.type.shape[2:]
        offset = total([scaled("c", math.prod(spatial)),
                        *(scaled(p, st) for p, st in zip(positions, strides(spatial)))])
        kb.line(f"v = tl.load({kb.pointer(x)} + {offset}, mask={' & '.join(checks)}, "
                f"other={init}){kb.options.widen}")
        if isinstance(op.kind, _MaxPool):
            # NaN wins, as in torch: tl.max / tl.maximum drop it (maxnum) by default
            kb.line("nan = tl.sum((v != v).to(tl.int32), axis=1, keep_dims=True) > 0")
            kb.line("m = tl.maximum(acc, tl.max(v, axis=1, keep_dims=True), "
                    "propagate_nan=tl.PropagateNan.ALL)")
            kb.line('acc = tl.where(nan, float("nan"), m)')
        else:
            kb.line("acc = acc + tl.sum(v, axis=1, keep_dims=True)")


def pool_kernel(name: str, group: Group, options: TritonOptions) -> Kernel:
    """The kernel of a max / average / adaptive-average pool (module docstring)."""
    op = group.op
    out = op.results[0]
    taps, numel = math.prod(_window(op)), out.type.numel
    block_o, block_t = blocks.window_blocks(numel, taps, options.interpreter)
    is_max = isinstance(op.kind, _MaxPool)
    kb = KernelBuilder(name, group, options, "pool")
    kb.pointer(op.operands[0])
    kb.constexpr("BLOCK_O", block_o)
    kb.constexpr("BLOCK_T", block_t)
    _outputs(kb, op, numel)
    init = 'float("-inf")' if is_max else "0.0"
    kb.line(f"acc = tl.full((BLOCK_O, 1), {init}, tl.float32)")
    _taps(kb, op, init)
    result = "acc" if is_max else f"acc / {_divisor(kb, op)}"
    kb.line(f"tl.store({kb.pointer(out)} + o, {options.narrowed(result)}, mask=mask)")
    note = f"{numel} outputs x {taps} taps (window {list(_window(op))})"
    return kb.finish((-(-numel // block_o),), [note],
                     num_warps=blocks.num_warps(block_o * block_t))

"""ONNX → kiln converters: shape and data movement, reductions, Gather with known indices.

Shape operands (`Reshape`'s shape, `Slice`'s starts, ...) must be constants by the time a node
is converted; the constant folder has usually produced them from `Shape` subgraphs. All axes
are normalized to kiln's non-negative convention and Slice bounds are clamped as ONNX does.
"""

from __future__ import annotations

import math

from kiln.frontend import onnx_params as params
from kiln.frontend.onnx_node import Converter, Node, Result
from kiln.ir.graph import Value
from kiln.ir.ops import elementwise as ew
from kiln.ir.ops.reduce import ReduceBase, ReduceMax, ReduceMean, ReduceMin, ReduceSum
from kiln.ir.ops.shape import (
    Concat,
    Expand,
    Flatten,
    Pad,
    Reshape,
    Slice,
    Split,
    Squeeze,
    Transpose,
    Unsqueeze,
)


def _reshape(node: Node) -> Result:
    x = node.value(0)
    target = node.ints(1, "shape")
    if target is None:
        raise node.error("needs a target shape")
    shape = params.reshape_target(node, x.type.shape, target)
    return x if shape == x.type.shape else node.emit(Reshape(shape=shape), x)


def _flatten(node: Node) -> Result:
    x = node.value(0)
    shape = x.type.shape
    axis = params.norm_axis(node, int(node.attr("axis", 1)), len(shape) + 1)
    if axis == 1 and len(shape) >= 2:
        return node.emit(Flatten(start_dim=1), x)
    return node.emit(Reshape(shape=(math.prod(shape[:axis]), math.prod(shape[axis:]))), x)


def _transpose(node: Node) -> Result:
    x = node.value(0)
    perm = node.ints_attr("perm", tuple(reversed(range(x.type.rank)))) or ()
    perm = params.norm_axes(node, perm, x.type.rank)
    return x if perm == tuple(range(x.type.rank)) else node.emit(Transpose(perm=perm), x)


def _concat(node: Node) -> Result:
    parts = [node.value(i) for i in range(len(node.operands)) if node.has(i)]
    parts = [p for p in parts if p.type.numel > 0] or parts[:1]
    axis = params.norm_axis(node, int(node.attr("axis", 0)), parts[0].type.rank)
    return parts[0] if len(parts) == 1 else node.emit(Concat(axis=axis), *parts)


def _split(node: Node) -> list[Result]:
    x = node.value(0)
    axis = params.norm_axis(node, int(node.attr("axis", 0)), x.type.rank)
    sizes = params.split_sizes(node, x.type.shape[axis], len(node.proto.output))
    return list(node.emit_multi(Split(axis=axis, sizes=sizes), x))


def _slice(node: Node) -> Result:
    x = node.value(0)
    bounds = params.slice_bounds(node, x.type.shape)
    if any(step < 0 for *_, step in bounds):
        raise node.unsupported("negative slice steps are not supported",
                               hint="kiln.slice takes steps >= 1")
    bounds = [(a, s, max(s, e), st) for a, s, e, st in bounds
              if (s, max(s, e), st) != (0, x.type.shape[a], 1)]
    if not bounds:
        return x
    axes, starts, ends, steps = (tuple(b[i] for b in bounds) for i in range(4))
    return node.emit(Slice(axes=axes, starts=starts, ends=ends, steps=steps), x)


def _pad(node: Node) -> Result:
    x = node.value(0)
    rank = x.type.rank
    mode = str(node.attr("mode", "constant"))
    if mode not in ("constant", "reflect", "edge"):
        raise node.unsupported(f"pad mode '{mode}' is not supported")
    if node.opset < 11:
        pads, value = node.ints_attr("pads") or (), float(node.attr("value", 0.0))
    else:
        pads = node.ints(1) or ()
        value = float(node.const(2).reshape(())) if node.has(2) else 0.0
    axes = params.axes_operand(node, 3, rank) if node.opset >= 18 else None
    if axes is not None:
        full = [0] * (2 * rank)
        for i, axis in enumerate(axes):
            full[axis], full[rank + axis] = pads[i], pads[len(axes) + i]
        pads = tuple(full)
    if len(pads) != 2 * rank:
        raise node.error(f"pads must have {2 * rank} values, got {list(pads)}")
    if any(p < 0 for p in pads):
        raise node.unsupported("negative pads (cropping) are not supported")
    if not any(pads):
        return x
    return node.emit(Pad(pads=tuple(pads), mode=mode,
                         value=value if mode == "constant" else 0.0), x)


def _squeeze(node: Node) -> Result:
    x = node.value(0)
    axes = params.squeeze_axes(node, x.type.shape)
    return node.emit(Squeeze(axes=axes), x) if axes else x


def _unsqueeze(node: Node) -> Result:
    x = node.value(0)
    return node.emit(Unsqueeze(axes=params.unsqueeze_axes(node, x.type.rank)), x)


def _expand(node: Node) -> Result:
    x = node.value(0)
    shape = params.broadcast(node, x.type.shape, node.ints(1) or ())
    return x if shape == x.type.shape else node.emit(Expand(shape=shape), x)


def _tile(node: Node) -> Result:
    """tile(x, repeats) = concat of `repeats[a]` copies along each axis a."""
    x = node.value(0)
    repeats = node.ints(1) or ()
    if len(repeats) != x.type.rank:
        raise node.error(f"repeats {list(repeats)} must have one entry per axis")
    for axis, count in enumerate(repeats):
        if count != 1:
            x = node.emit(Concat(axis=axis), *([x] * count))
    return x


def _gather(node: Node) -> Result:
    """Gather with constant indices on a computed tensor: a slice (plus squeeze for scalars)."""
    x = node.value(0)
    axis = params.norm_axis(node, int(node.attr("axis", 0)), x.type.rank)
    indices = node.const(1, "indices")
    dim = x.type.shape[axis]
    flat = [int(i) + dim if i < 0 else int(i) for i in indices.reshape(-1)]
    step = flat[1] - flat[0] if len(flat) > 1 else 1
    if indices.ndim > 1 or not flat or step < 1 or flat != list(
            range(flat[0], flat[0] + step * len(flat), step)):
        raise node.unsupported("Gather is supported only with constant, evenly spaced, "
                               "increasing indices (a slice)")
    end = flat[-1] + 1
    y = node.emit(Slice(axes=(axis,), starts=(flat[0],), ends=(end,), steps=(step,)), x)
    return node.emit(Squeeze(axes=(axis,)), y) if indices.ndim == 0 else y


_REDUCE: dict[str, type[ReduceBase]] = {
    "ReduceMean": ReduceMean, "ReduceSum": ReduceSum, "ReduceMax": ReduceMax,
    "ReduceMin": ReduceMin, "ReduceL1": ReduceSum, "ReduceL2": ReduceSum,
    "ReduceSumSquare": ReduceSum,
}


def _reduce(node: Node) -> Result:
    """Reduce*; L1 = sum |x|, L2 = sqrt(sum x²), SumSquare = sum x²."""
    x = node.value(0)
    axes = params.reduce_axes(node, 1, x.type.rank)
    if axes is None or not axes:
        return x
    keep = bool(node.attr("keepdims", 1))
    if node.op_type == "ReduceL1":
        x = node.emit(ew.Abs(), x)
    elif node.op_type in ("ReduceL2", "ReduceSumSquare"):
        x = node.emit(ew.Mul(), x, x)
    y: Value = node.emit(_REDUCE[node.op_type](axes=axes, keepdims=keep), x)
    return node.emit(ew.Sqrt(), y) if node.op_type == "ReduceL2" else y


CONVERTERS: dict[str, Converter] = {
    "Reshape": _reshape,
    "Flatten": _flatten,
    "Transpose": _transpose,
    "Concat": _concat,
    "Split": _split,
    "Slice": _slice,
    "Pad": _pad,
    "Squeeze": _squeeze,
    "Unsqueeze": _unsqueeze,
    "Expand": _expand,
    "Tile": _tile,
    "Gather": _gather,
    **{op: _reduce for op in _REDUCE},
}
"""ONNX op type → converter for the shape and reduction family."""

"""ONNX attribute and operand conventions turned into kiln's static, normalized parameters.

Shared by the converters and the constant folder so that, for example, a `Slice` evaluated at
import time and one turned into `kiln.slice` follow the same clamping rules. Every helper
normalizes negative axes (kiln's ops take non-negative axes) and resolves ONNX's "the opset
decides whether this is an attribute or an input" split.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from kiln.frontend.onnx_node import Node

INT_MAX = 2**63 - 1


def norm_axis(node: Node, axis: int, rank: int) -> int:
    """A possibly negative ONNX axis as a non-negative one (error if out of range)."""
    if not -rank <= axis < max(rank, 1):
        raise node.error(f"axis {axis} is out of range for rank {rank}")
    return axis % rank if rank else 0


def norm_axes(node: Node, axes: Sequence[int], rank: int) -> tuple[int, ...]:
    out = tuple(norm_axis(node, a, rank) for a in axes)
    if len(set(out)) != len(out):
        raise node.error(f"axes {list(axes)} repeat an axis")
    return out


def axes_operand(node: Node, index: int, rank: int, attr: str = "axes") -> tuple[int, ...] | None:
    """Axes from input `index` (newer opsets) or attribute `attr`, normalized; None if absent."""
    axes = node.ints(index, attr)
    return None if axes is None else norm_axes(node, axes, rank)


def reduce_axes(node: Node, index: int, rank: int) -> tuple[int, ...] | None:
    """Axes of a Reduce*: None means "no reduction" (noop_with_empty_axes), () means "all"."""
    axes = axes_operand(node, index, rank)
    if not axes:
        return None if node.attr("noop_with_empty_axes", 0) else tuple(range(rank))
    return tuple(sorted(axes))


def slice_bounds(node: Node, shape: Sequence[int]) -> list[tuple[int, int, int, int]]:
    """Normalized `(axis, start, end, step)` per sliced axis, ONNX clamping rules.

    With a positive step, start and end are clamped to `[0, dim]`; with a negative step to
    `[0, dim - 1]` and `[-1, dim - 1]` (end -1 meaning "through index 0").
    """
    if node.opset < 10:
        starts, ends = node.ints_attr("starts"), node.ints_attr("ends")
        axes, steps = node.ints_attr("axes"), None
    else:
        starts, ends = node.ints(1), node.ints(2)
        axes, steps = node.ints(3), node.ints(4)
    if starts is None or ends is None or len(starts) != len(ends):
        raise node.error("needs starts and ends of the same length")
    axes = norm_axes(node, axes if axes is not None else range(len(starts)), len(shape))
    steps = steps if steps is not None else (1,) * len(starts)
    out = []
    for axis, start, end, step in zip(axes, starts, ends, steps):
        if step == 0:
            raise node.error("slice step must not be 0")
        dim = shape[axis]
        start = start + dim if start < 0 else start
        end = end + dim if end < 0 else end
        if step > 0:
            start, end = min(max(start, 0), dim), min(max(end, 0), dim)
        else:
            start, end = min(max(start, 0), dim - 1), min(max(end, -1), dim - 1)
        out.append((axis, start, end, step))
    return out


def reshape_target(node: Node, shape: Sequence[int], target: Sequence[int]) -> tuple[int, ...]:
    """ONNX Reshape's output shape: 0 copies the input dim (unless allowzero), -1 is inferred."""
    allowzero = bool(node.attr("allowzero", 0))
    if any(d < -1 for d in target) or (not allowzero and any(
            d == 0 and i >= len(shape) for i, d in enumerate(target))):
        raise node.error(f"cannot reshape {list(shape)} into {list(target)}")
    out = [shape[i] if (d == 0 and not allowzero) else int(d) for i, d in enumerate(target)]
    if out.count(-1) > 1:
        raise node.error(f"shape {list(target)} has more than one -1")
    total = math.prod(shape)
    if -1 in out:
        known = math.prod(d for d in out if d != -1)
        if known == 0 or total % known:
            raise node.error(f"cannot reshape {list(shape)} into {list(target)}")
        out[out.index(-1)] = total // known
    if math.prod(out) != total:
        raise node.error(f"cannot reshape {list(shape)} ({total} elements) into {out}")
    return tuple(out)


def split_sizes(node: Node, dim: int, outputs: int) -> tuple[int, ...]:
    """Split sizes from the `split` input/attribute, `num_outputs` (opset 18), or equal parts."""
    sizes = node.ints(1, "split")
    if sizes:
        if sum(sizes) != dim:
            raise node.error(f"split sizes {list(sizes)} do not add up to {dim}")
        return sizes
    parts = int(node.attr("num_outputs", outputs))
    if parts < 1:
        raise node.error("needs at least one output")
    chunk = -(-dim // parts)
    sizes = tuple(min(chunk, dim - i * chunk) for i in range(parts))
    if any(s <= 0 for s in sizes):
        raise node.error(f"cannot split {dim} elements into {parts} parts")
    return sizes


def squeeze_axes(node: Node, shape: Sequence[int]) -> tuple[int, ...]:
    axes = axes_operand(node, 1, len(shape))
    if axes is None:
        return tuple(i for i, d in enumerate(shape) if d == 1)
    if any(shape[a] != 1 for a in axes):
        raise node.error(f"cannot squeeze axes {list(axes)} of shape {list(shape)}")
    return tuple(sorted(axes))


def unsqueeze_axes(node: Node, rank: int) -> tuple[int, ...]:
    axes = node.ints(1, "axes")
    if axes is None:
        raise node.error("needs axes")
    return tuple(sorted(norm_axes(node, axes, rank + len(axes))))


def unsqueezed(shape: Sequence[int], axes: Sequence[int]) -> tuple[int, ...]:
    out = list(shape)
    for axis in sorted(axes):
        out.insert(axis, 1)
    return tuple(out)


def broadcast(node: Node, a: Sequence[int], b: Sequence[int]) -> tuple[int, ...]:
    """NumPy (bidirectional) broadcasting of two static shapes."""
    out = []
    for i in range(1, max(len(a), len(b)) + 1):
        da = a[-i] if i <= len(a) else 1
        db = b[-i] if i <= len(b) else 1
        if da != db and 1 not in (da, db):
            raise node.error(f"shapes {list(a)} and {list(b)} do not broadcast")
        out.append(db if da == 1 else da)
    return tuple(reversed(out))


def window_pads(node: Node, spatial: Sequence[int], kernel: Sequence[int],
                strides: Sequence[int], dilations: Sequence[int]) -> tuple[int, ...]:
    """Conv/pool paddings (begins, ends) from `pads` or `auto_pad` (SAME_UPPER/LOWER, VALID)."""
    nd = len(spatial)
    auto = str(node.attr("auto_pad", "NOTSET"))
    if auto in ("NOTSET", ""):
        pads = node.ints_attr("pads", (0,) * (2 * nd))
        if pads is None or len(pads) != 2 * nd:
            raise node.error(f"pads must have {2 * nd} values, got {pads}")
        return pads
    if auto == "VALID":
        return (0,) * (2 * nd)
    if auto not in ("SAME_UPPER", "SAME_LOWER"):
        raise node.error(f"unknown auto_pad '{auto}'")
    begins, ends = [], []
    for size, k, s, d in zip(spatial, kernel, strides, dilations):
        out = -(-size // s)
        total = max(0, (out - 1) * s + (k - 1) * d + 1 - size)
        small = total // 2
        begins.append(small if auto == "SAME_UPPER" else total - small)
        ends.append(total - begins[-1])
    return (*begins, *ends)


def legacy_rhs_shape(node: Node, lhs_rank: int, rhs_shape: Sequence[int]) -> tuple[int, ...]:
    """Opset < 7 binary ops with `broadcast=1, axis=k` align the rhs at axis k, not the end."""
    shape = tuple(rhs_shape)
    axis = node.attr("axis")
    if node.opset >= 7 or not node.attr("broadcast", 0) or axis is None:
        return shape
    axis = axis + lhs_rank if axis < 0 else axis
    return shape + (1,) * max(0, lhs_rank - axis - len(shape))

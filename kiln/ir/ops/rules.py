"""Attribute checks and shape arithmetic shared by the nn and shape op families.

Axis convention: axis attributes hold normalized, non-negative axes (`0 <= axis < rank`); the
frontends normalize PyTorch's and ONNX's negative axes. The only negative value an op accepts is
the documented default `-1` ("the last dimension") of `softmax`/`log_softmax` `axis` and
`flatten` `end_dim`. Every helper raises `OpError` with a message that names the attribute and
the offending numbers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from kiln.ir.ops.base import fail
from kiln.ir.types import TensorType


def check_ints(name: str, values: tuple[int, ...], length: int | None = None,
               minimum: int | None = None) -> None:
    """`values` is a tuple of ints, of `length` entries (when given), each `>= minimum`."""
    if not isinstance(values, tuple) or not all(
            isinstance(v, int) and not isinstance(v, bool) for v in values):
        raise fail(f"{name} must be a tuple of integers, got {values!r}")
    if length is not None and len(values) != length:
        raise fail(f"{name} needs {length} values, got {len(values)}: {list(values)}")
    if minimum is not None and any(v < minimum for v in values):
        raise fail(f"{name} values must be >= {minimum}, got {list(values)}")


def check_axis(name: str, axis: int, rank: int) -> None:
    """A single normalized axis: `0 <= axis < rank`."""
    if not 0 <= axis < rank:
        hint = " (negative axes are normalized by the frontend)" if axis < 0 else ""
        raise fail(f"{name} {axis} is out of range for rank {rank}: use 0..{rank - 1}{hint}")


def check_axes(name: str, axes: tuple[int, ...], rank: int) -> None:
    """Distinct normalized axes, each `0 <= axis < rank`."""
    check_ints(name, axes)
    for axis in axes:
        check_axis(f"{name} entry", axis, rank)
    if len(set(axes)) != len(axes):
        raise fail(f"{name} {list(axes)} repeats an axis")


def last_axis(name: str, axis: int, rank: int) -> int:
    """Normalize an attribute whose documented default `-1` means the last dimension."""
    if axis == -1 and rank > 0:
        return rank - 1
    check_axis(name, axis, rank)
    return axis


def same_dtype(what: str, types: Sequence[TensorType]) -> None:
    """All `types` share one element type (`what` names them in the message)."""
    first = types[0].dtype
    for t in types[1:]:
        if t.dtype != first:
            raise fail(f"{what} element types differ: {first} and {t.dtype}")


def need_float(x: TensorType) -> None:
    if not x.dtype.is_float:
        raise fail(f"needs a floating-point input, got {x.dtype}")


def window_out(size: int, kernel: int, stride: int, pads: tuple[int, int], dilation: int = 1,
               ceil_mode: bool = False) -> int:
    """Output length of a sliding window (conv, pool), PyTorch's rule; 0 if nothing fits.

    In ceil mode the last window must start inside the input or the left padding, so a window
    that would start in the right padding only is dropped (PyTorch's `pooling_output_shape`).
    """
    span = dilation * (kernel - 1) + 1
    room = size + pads[0] + pads[1] - span
    if room < 0:
        return 0
    if not ceil_mode:
        return room // stride + 1
    out = -(-room // stride) + 1
    if (out - 1) * stride >= size + pads[0]:
        out -= 1
    return out


def numel(shape: Sequence[int]) -> int:
    return math.prod(shape)


def fill_value(dtype: np.dtype, lowest: bool) -> np.generic:
    """The padding value for `dtype`: 0, or its lowest value (-inf for floats) when `lowest`."""
    if not lowest:
        return dtype.type(0)
    if np.issubdtype(dtype, np.floating):
        return dtype.type(-np.inf)
    if dtype == np.bool_:
        return np.bool_(False)
    return dtype.type(np.iinfo(dtype).min)


def pad_or_crop(x: np.ndarray, begins: Sequence[int], ends: Sequence[int],
                value: np.generic) -> np.ndarray:
    """Pad the trailing `len(begins)` axes by `begins`/`ends` (negative amounts crop)."""
    lead = x.ndim - len(begins)
    widths = [(0, 0)] * lead + [(max(b, 0), max(e, 0)) for b, e in zip(begins, ends)]
    if any(w != (0, 0) for w in widths):
        x = np.pad(x, widths, constant_values=value)
    index = [slice(None)] * lead + [slice(-min(b, 0), x.shape[lead + i] + min(e, 0))
                                    for i, (b, e) in enumerate(zip(begins, ends))]
    return x[tuple(index)]

"""Import-time constant evaluation of ONNX nodes whose inputs are all known (NumPy).

Exporters compute shapes at run time (`Shape → Gather → Unsqueeze → Concat → Reshape`) and
preprocess weights (`Transpose` of an initializer). kiln's shapes are static, so such nodes are
evaluated here while importing and never become ops. A folder returns one array per output; the
importer calls it when every operand is a constant, and always for `Shape` and `Size`, which only
need the (static) type of their input.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from kiln.frontend import onnx_params as params
from kiln.frontend.onnx_node import Node, numpy_dtype

Folder = Callable[[Node], list[np.ndarray]]

MAX_FOLD_ELEMENTS = 2**27
"""Largest array evaluated at import time (512 MiB of float32): checked before NumPy allocates,
so a `ConstantOfShape` of a corrupt or hostile 2**40-element shape is an error, not an
out-of-memory crash."""


def check_size(node: Node, shape: tuple[int, ...] | list[int]) -> tuple[int, ...]:
    """`shape`, if an array of it may be created at import time (the node's error otherwise)."""
    dims = tuple(int(d) for d in shape)
    count = math.prod(dims)
    if any(d < 0 for d in dims) or count > MAX_FOLD_ELEMENTS:
        raise node.error(f"would create a constant of shape {list(dims)} ({count} elements) "
                         f"at import time; kiln evaluates at most {MAX_FOLD_ELEMENTS}",
                         hint="the model file is corrupt, or computes an absurd shape")
    return dims


def _constant(node: Node) -> list[np.ndarray]:
    scalars = {"value_float": np.float32, "value_floats": np.float32,
               "value_int": np.int64, "value_ints": np.int64}
    if "value" in node.attrs:
        return [np.asarray(node.attrs["value"])]
    for key, dtype in scalars.items():
        if key in node.attrs:
            return [np.asarray(node.attrs[key], dtype=dtype)]
    present = ", ".join(node.attrs) or "no value"
    raise node.unsupported(f"constant given as {present} is not supported")


def _cast(node: Node) -> list[np.ndarray]:
    return [node.const(0).astype(numpy_dtype(int(node.attr("to"))))]


def _shape(node: Node) -> list[np.ndarray]:
    shape = node.shape(0)
    start, end = node.attr("start", 0), node.attr("end")
    return [np.asarray(shape[start:end], dtype=np.int64)]


def _size(node: Node) -> list[np.ndarray]:
    return [np.asarray(math.prod(node.shape(0)), dtype=np.int64)]


def _constant_of_shape(node: Node) -> list[np.ndarray]:
    fill = node.attr("value")
    fill = np.zeros(1, np.float32) if fill is None else np.asarray(fill).reshape(-1)
    shape = check_size(node, [int(d) for d in node.const(0).reshape(-1)])
    if fill.size < 1:
        raise node.error("has an empty fill value")
    return [np.full(shape, fill[0], dtype=fill.dtype)]


def _range(node: Node) -> list[np.ndarray]:
    start, limit, delta = (node.const(i).reshape(()).item() for i in range(3))
    if delta == 0:
        raise node.error("has delta 0")
    check_size(node, [max(0, math.ceil((limit - start) / delta))])
    return [np.arange(start, limit, delta).astype(node.const(0).dtype)]


def _gather(node: Node) -> list[np.ndarray]:
    data, indices = node.const(0), node.const(1)
    axis = params.norm_axis(node, int(node.attr("axis", 0)), data.ndim)
    indices = np.where(indices < 0, indices + data.shape[axis], indices)
    return [np.take(data, indices, axis=axis)]


def _slice(node: Node) -> list[np.ndarray]:
    data = node.const(0)
    index: list[slice] = [slice(None)] * data.ndim
    for axis, start, end, step in params.slice_bounds(node, data.shape):
        index[axis] = slice(start, end if end >= 0 else None, step)
    return [data[tuple(index)]]


def _split(node: Node) -> list[np.ndarray]:
    data = node.const(0)
    axis = params.norm_axis(node, int(node.attr("axis", 0)), data.ndim)
    sizes = params.split_sizes(node, data.shape[axis], len(node.proto.output))
    return list(np.split(data, np.cumsum(sizes)[:-1], axis=axis))


def _flatten(node: Node) -> list[np.ndarray]:
    data = node.const(0)
    axis = params.norm_axis(node, int(node.attr("axis", 1)), data.ndim + 1)
    return [data.reshape(math.prod(data.shape[:axis]), -1)]


def _transpose(node: Node) -> list[np.ndarray]:
    data = node.const(0)
    perm = node.ints_attr("perm")
    return [np.transpose(data, perm)]


def _tiled(node: Node) -> tuple[int, ...]:
    """Tile's repeats, once the tiled size is known to be sane."""
    reps = node.ints(1) or ()
    shape = node.shape(0)
    if len(reps) != len(shape):
        raise node.error(f"repeats {list(reps)} do not match the rank of {list(shape)}")
    check_size(node, [d * r for d, r in zip(shape, reps)])
    return reps


def _where(node: Node) -> list[np.ndarray]:
    check_size(node, np.broadcast_shapes(*(node.shape(i) for i in range(3))))
    return [np.where(node.const(0), node.const(1), node.const(2))]


def _int_div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    if np.issubdtype(a.dtype, np.integer):
        return (np.sign(a) * np.sign(b) * (np.abs(a) // np.where(b == 0, 1, np.abs(b))))
    return np.divide(a, b)


_BINARY: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "Add": np.add, "Sub": np.subtract, "Mul": np.multiply, "Div": _int_div, "Pow": np.power,
    "Max": np.maximum, "Min": np.minimum, "Sum": np.add, "Mod": np.mod,
    "Equal": np.equal, "Less": np.less, "Greater": np.greater, "LessOrEqual": np.less_equal,
    "GreaterOrEqual": np.greater_equal, "And": np.logical_and, "Or": np.logical_or,
    "Xor": np.logical_xor,
}
_UNARY: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "Neg": np.negative, "Abs": np.abs, "Sqrt": np.sqrt, "Exp": np.exp, "Log": np.log,
    "Reciprocal": np.reciprocal, "Floor": np.floor, "Ceil": np.ceil, "Round": np.round,
    "Sign": np.sign, "Not": np.logical_not, "Relu": lambda x: np.maximum(x, 0),
    "Sigmoid": lambda x: 1 / (1 + np.exp(-x)), "Tanh": np.tanh,
    "Identity": lambda x: x,
}
_REDUCE: dict[str, Callable[..., np.ndarray]] = {
    "ReduceSum": np.sum, "ReduceMean": np.mean, "ReduceMax": np.max, "ReduceMin": np.min,
    "ReduceProd": np.prod,
}


def _binary(node: Node) -> list[np.ndarray]:
    fn = _BINARY[node.op_type]
    arrays = [node.const(i) for i in range(len(node.operands))]
    check_size(node, np.broadcast_shapes(*(a.shape for a in arrays)))
    out = arrays[0]
    for other in arrays[1:]:
        other = other.reshape(params.legacy_rhs_shape(node, out.ndim, other.shape))
        with np.errstate(all="ignore"):
            result = np.asarray(fn(out, other))
        out = result if result.dtype == np.bool_ else result.astype(out.dtype)
    return [out]


def _mean(node: Node) -> list[np.ndarray]:
    (total,) = _binary(node)
    return [(total / len(node.operands)).astype(total.dtype)]


def _unary(node: Node) -> list[np.ndarray]:
    x = node.const(0)
    with np.errstate(all="ignore"):
        out = np.asarray(_UNARY[node.op_type](x))
    return [out if out.dtype == np.bool_ else out.astype(x.dtype)]


def _reduce(node: Node) -> list[np.ndarray]:
    x = node.const(0)
    axes = params.reduce_axes(node, 1, x.ndim)
    if axes is None:
        return [x]
    keep = bool(node.attr("keepdims", 1))
    return [np.asarray(_REDUCE[node.op_type](x, axis=axes, keepdims=keep)).astype(x.dtype)]


FOLDERS: dict[str, Folder] = {
    "Constant": _constant,
    "Cast": _cast,
    "Shape": _shape,
    "Size": _size,
    "ConstantOfShape": _constant_of_shape,
    "Range": _range,
    "Gather": _gather,
    "Slice": _slice,
    "Split": _split,
    "Flatten": _flatten,
    "Transpose": _transpose,
    "Mean": _mean,
    "Dropout": lambda n: [n.const(0), np.ones(n.shape(0), np.bool_)],
    "Where": _where,
    "Unsqueeze": lambda n: [n.const(0).reshape(params.unsqueezed(
        n.shape(0), params.unsqueeze_axes(n, n.rank(0))))],
    "Squeeze": lambda n: [np.squeeze(n.const(0), params.squeeze_axes(n, n.shape(0)))],
    "Concat": lambda n: [np.concatenate(
        [n.const(i) for i in range(len(n.operands))],
        axis=params.norm_axis(n, int(n.attr("axis", 0)), n.rank(0)))],
    "Reshape": lambda n: [n.const(0).reshape(params.reshape_target(
        n, n.shape(0), n.ints(1, "shape") or ()))],
    "Expand": lambda n: [np.broadcast_to(n.const(0), check_size(n, params.broadcast(
        n, n.shape(0), n.ints(1) or ()))).copy()],
    "Tile": lambda n: [np.tile(n.const(0), _tiled(n))],
    **{op: _binary for op in _BINARY},
    **{op: _unary for op in _UNARY},
    **{op: _reduce for op in _REDUCE},
}
"""ONNX op type → NumPy evaluation, used when every operand is a constant."""

ALWAYS_FOLD = frozenset({"Constant", "Shape", "Size"})
"""Ops folded whatever their operands are: their outputs depend only on static types."""

"""Conversions of the shape, data-movement, cast and tensor-factory ATen ops.

Views take their static result shape from torch's metadata (so `-1` is already resolved);
slicing bounds are normalized and clamped the way PyTorch clamps them; aliasing ops (clone,
detach, inference dropout, ...) produce no op at all. Factories with static arguments (`full`,
`arange`, ...) never get here: `torch_fold` evaluates them.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from kiln.frontend.torch_ctx import Converted, Converter, Ctx, Unsupported, kiln_dtype
from kiln.frontend.torch_ctx import normalize_axis as norm
from kiln.ir.graph import Value
from kiln.ir.ops import shape


def _reshape(ctx: Ctx) -> Value:
    x = ctx.tensor("self")
    if x.type.shape == ctx.out_shape:
        return x
    return ctx.add(shape.Reshape(shape=ctx.out_shape), x)


def _transpose_to(ctx: Ctx, x: Value, perm: tuple[int, ...]) -> Value:
    if perm == tuple(range(len(perm))):
        return x
    return ctx.add(shape.Transpose(perm=perm), x)


def _permute(ctx: Ctx) -> Value:
    x = ctx.tensor("self")
    return _transpose_to(ctx, x, tuple(norm(d, x.type.rank) for d in ctx.args["dims"]))


def _swap(ctx: Ctx) -> Value:
    x = ctx.tensor("self")
    rank = x.type.rank
    a, b = (norm(ctx.args.get(k, d), rank) for k, d in (("dim0", 0), ("dim1", 1)))
    perm = list(range(rank))
    if rank >= 2:
        perm[a], perm[b] = perm[b], perm[a]
    return _transpose_to(ctx, x, tuple(perm))


def _expand(ctx: Ctx) -> Value:
    x = ctx.tensor("self")
    return x if x.type.shape == ctx.out_shape else ctx.add(shape.Expand(shape=ctx.out_shape), x)


def _unsqueeze(ctx: Ctx) -> Value:
    x = ctx.tensor("self")
    return ctx.add(shape.Unsqueeze(axes=(norm(ctx.args["dim"], x.type.rank + 1),)), x)


def _squeeze(ctx: Ctx) -> Value:
    """Only size-1 dims are removed (PyTorch ignores the others)."""
    x = ctx.tensor("self")
    dims = ctx.args.get("dim")
    if dims is None:
        dims = range(x.type.rank)
    elif isinstance(dims, int):
        dims = [dims]
    axes = tuple(sorted({norm(d, x.type.rank) for d in dims if x.type.shape[d] == 1}))
    return ctx.add(shape.Squeeze(axes=axes), x) if axes else x


def _cat(ctx: Ctx) -> Value:
    dtype = ctx.out_dtype
    values = [ctx.cast(ctx.value(t), dtype) for t in ctx.args["tensors"]]
    values = [v for v in values if v.type.shape != (0,)] or values[:1]
    if len(values) == 1:
        return values[0]
    return ctx.add(shape.Concat(axis=norm(ctx.args["dim"], values[0].type.rank)), *values)


def _split_sizes(ctx: Ctx, size: int) -> tuple[int, ...]:
    if "split_sizes" in ctx.args:
        return tuple(int(s) for s in ctx.args["split_sizes"])
    if "chunks" in ctx.args:
        step = -(-size // int(ctx.args["chunks"]))
    elif "split_size" in ctx.args:
        step = int(ctx.args["split_size"])
    else:
        step = 1
    return tuple(min(step, size - start) for start in range(0, size, step))


def _split(ctx: Ctx) -> Converted:
    x = ctx.tensor("self")
    axis = norm(ctx.args["dim"], x.type.rank)
    sizes = _split_sizes(ctx, x.type.shape[axis])
    parts = ctx.create(shape.Split(axis=axis, sizes=sizes), x) if len(sizes) > 1 else (x,)
    if "split_size" in ctx.args or "split_sizes" in ctx.args or "chunks" in ctx.args:
        return parts
    return tuple(ctx.add(shape.Squeeze(axes=(axis,)), p) for p in parts)


def _slice_value(ctx: Ctx, x: Value, axis: int, start: Any, end: Any, step: int) -> Value:
    """x[start:end:step] on `axis` with PyTorch's clamping of out-of-range bounds."""
    size = x.type.shape[axis]
    begin, stop = (_bound(b, size, default) for b, default in ((start, 0), (end, size)))
    stop = max(stop, begin)
    if (begin, stop, step) == (0, size, 1):
        return x
    return ctx.add(shape.Slice(axes=(axis,), starts=(begin,), ends=(stop,), steps=(step,)), x)


def _bound(value: Any, size: int, default: int) -> int:
    if value is None:
        return default
    value = int(value)
    if value < 0:
        value += size
    return min(max(value, 0), size)


def _slice(ctx: Ctx) -> Value:
    x = ctx.tensor("self")
    axis = norm(ctx.args["dim"], x.type.rank)
    return _slice_value(ctx, x, axis, ctx.args["start"], ctx.args["end"], int(ctx.args["step"]))


def _narrow(ctx: Ctx) -> Value:
    x = ctx.tensor("self")
    axis = norm(ctx.args["dim"], x.type.rank)
    start = _bound(ctx.args["start"], x.type.shape[axis], 0)
    return _slice_value(ctx, x, axis, start, start + int(ctx.args["length"]), 1)


def _select(ctx: Ctx) -> Value:
    x = ctx.tensor("self")
    axis = norm(ctx.args["dim"], x.type.rank)
    index = int(ctx.args["index"]) % x.type.shape[axis]
    part = _slice_value(ctx, x, axis, index, index + 1, 1)
    return ctx.add(shape.Squeeze(axes=(axis,)), part)


_PAD_MODES = {"constant": "constant", "reflect": "reflect", "replicate": "edge"}


def _pad_value(ctx: Ctx, x: Value, pad: list[int], mode: str, value: float) -> Value:
    """torch's pad list (last dim first, (before, after) pairs) → kiln.pad; negative crops."""
    rank = x.type.rank
    begins, ends = [0] * rank, [0] * rank
    for i in range(len(pad) // 2):
        begins[rank - 1 - i], ends[rank - 1 - i] = int(pad[2 * i]), int(pad[2 * i + 1])
    grow = tuple(max(p, 0) for p in begins + ends)
    if any(grow):
        x = ctx.add(shape.Pad(pads=grow, mode=mode, value=value if mode == "constant" else 0.0),
                    x)
    for axis, (b, e) in enumerate(zip(begins, ends)):
        if b < 0 or e < 0:
            size = x.type.shape[axis]
            x = _slice_value(ctx, x, axis, -min(b, 0), size + min(e, 0), 1)
    return x


def _pad(ctx: Ctx) -> Value:
    mode = str(ctx.args.get("mode", "constant"))
    if mode not in _PAD_MODES:
        raise Unsupported(f"padding mode '{mode}' is not supported (constant, reflect, "
                          "replicate are)")
    value = float(ctx.args.get("value") or 0.0)
    return _pad_value(ctx, ctx.tensor("self"), list(ctx.args["pad"]), _PAD_MODES[mode], value)


def _pad_mode(mode: str) -> Converter:
    return lambda ctx: _pad_value(ctx, ctx.tensor("self"), list(ctx.args["padding"]), mode, 0.0)


def _identity(ctx: Ctx) -> Value:
    if ctx.args.get("train"):
        raise Unsupported("dropout in training mode")
    name = "self" if "self" in ctx.args else "input"
    return ctx.tensor(name)


def _to_copy(ctx: Ctx) -> Value:
    dtype = ctx.args.get("dtype")
    x = ctx.tensor("self")
    return x if dtype is None else ctx.cast(x, kiln_dtype(dtype))


def _fill_like(fill: float | None) -> Converter:
    def convert(ctx: Ctx) -> Value:
        value = ctx.args["fill_value"] if fill is None else fill
        return ctx.constant(np.full(ctx.out_shape, value, ctx.out_dtype.numpy))
    return convert


SHAPE_CONVERTERS: dict[str, Converter] = {
    **{f"aten.{name}": _reshape for name in (
        "view", "_unsafe_view", "reshape", "view_copy", "unflatten", "flatten", "_reshape_alias")},
    "aten.permute": _permute,
    "aten.transpose": _swap,
    "aten.t": _swap,
    "aten.expand": _expand,
    "aten.unsqueeze": _unsqueeze,
    "aten.squeeze": _squeeze,
    "aten.cat": _cat,
    "aten.split": _split,
    "aten.split_with_sizes": _split,
    "aten.chunk": _split,
    "aten.unbind": _split,
    "aten.slice": _slice,
    "aten.narrow": _narrow,
    "aten.select": _select,
    "aten.constant_pad_nd": lambda ctx: _pad_value(ctx, ctx.tensor("self"), list(ctx.args["pad"]),
                                                   "constant", float(ctx.args["value"])),
    "aten.pad": _pad,
    **{f"aten.reflection_pad{n}d": _pad_mode("reflect") for n in (1, 2, 3)},
    **{f"aten.replication_pad{n}d": _pad_mode("edge") for n in (1, 2, 3)},
    **{f"aten.{name}": _identity for name in (
        "clone", "contiguous", "alias", "detach", "lift_fresh_copy", "dropout")},
    "aten._to_copy": _to_copy,
    "aten.full_like": _fill_like(None),
    "aten.zeros_like": _fill_like(0.0),
    "aten.ones_like": _fill_like(1.0),
}

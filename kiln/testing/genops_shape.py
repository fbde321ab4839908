"""Op generators for data movement, pools, reductions, identity/dropout and casts (see
`genops` for the contract)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from kiln.ir.graph import Value
from kiln.ir.ops.base import OpDef
from kiln.ir.ops.core import Cast
from kiln.ir.ops.nn_pool import (
    AdaptiveAvgPool1d,
    AdaptiveAvgPool2d,
    AvgPool1d,
    AvgPool2d,
    MaxPool1d,
    MaxPool2d,
)
from kiln.ir.ops.reduce import ReduceBase, ReduceMax, ReduceMean, ReduceMin, ReduceSum
from kiln.ir.ops.shape import (
    Concat,
    Dropout,
    Expand,
    Flatten,
    Identity,
    Pad,
    Reshape,
    Slice,
    Split,
    Squeeze,
    Transpose,
    Unsqueeze,
)
from kiln.ir.types import BF16, F16, F64, I8, I32, TensorType
from kiln.testing.graphgen import MAX_NUMEL, GraphGen

Generator = Callable[[GraphGen], "Value | None"]


def _ranked(g: GraphGen, low: int, high: int = 8) -> Value | None:
    return g.pick(lambda t: low <= t.rank <= high)


def _try(g: GraphGen, x: Value, make: Callable[[], OpDef], tries: int = 8) -> Value | None:
    """Emit the first of `tries` random kinds from `make` that accepts `x`."""
    for _ in range(tries):
        kind = make()
        if g.valid(kind, [x.type]):
            return g.add(kind, x)
    return None


def _subset(g: GraphGen, items: list[int]) -> tuple[int, ...]:
    """A non-empty random subset of `items`, sorted."""
    chosen = [i for i in items if g.chance(0.5)]
    return tuple(sorted(chosen or [g.choice(items)]))


def factor_shape(g: GraphGen, numel: int, rank: int) -> tuple[int, ...]:
    """A random shape of `rank` dims holding `numel` elements (its prime factors dealt out)."""
    dims, n, p = [1] * rank, numel, 2
    while n > 1 and rank:
        while n % p:
            p += 1
        dims[g.integer(0, rank - 1)] *= p
        n //= p
    return tuple(dims)


def of_rank(g: GraphGen, rank: int) -> Value | None:
    """A pooled value of `rank` dims; failing that (or now and then), another one reshaped or
    unsqueezed into that rank (so conv and pool generators rarely go hungry)."""
    found = g.pick(lambda t: t.rank == rank)
    if found is not None and g.chance(0.8):
        return found
    x = g.pick(lambda t: t.numel >= 1 and t.rank <= rank)
    if x is None:
        return found
    if x.type.rank < rank and g.chance(0.5):
        added = rank - x.type.rank
        axes = g.rng.choice(rank, size=added, replace=False)
        return g.add(Unsqueeze(axes=tuple(sorted(int(a) for a in axes))), x)
    return g.add(Reshape(shape=factor_shape(g, x.type.numel, rank)), x)


# -- pools -------------------------------------------------------------------------------------
def pool(cls: type[OpDef], nd: int, dilated: bool) -> Generator:
    def generate(g: GraphGen) -> Value | None:
        x = of_rank(g, nd + 2)
        if x is None:
            return None

        def make() -> OpDef:
            kernel = tuple(g.integer(1, 4) for _ in range(nd))
            pads = tuple(g.integer(0, (k - 1) // 2 + 1) if g.chance(0.5) else 0
                         for k in kernel * 2)
            stride = tuple(g.choice((1, 2, 2, 3)) for _ in range(nd))
            extra: dict[str, object] = {"ceil_mode": g.chance(0.5)}
            if dilated:
                extra["dilation"] = tuple(g.choice((1, 1, 2)) for _ in range(nd))
            else:
                extra["count_include_pad"] = g.chance(0.5)
            return cls(kernel=kernel, stride=stride, padding=pads, **extra)  # type: ignore[call-arg]

        return _try(g, x, make)
    return generate


def adaptive(cls: type[OpDef], nd: int) -> Generator:
    def generate(g: GraphGen) -> Value | None:
        x = of_rank(g, nd + 2)
        if x is None:
            return None
        size = tuple(g.integer(1, s + 1) if g.chance(0.8) else 1 for s in x.type.shape[2:])
        return _try(g, x, lambda: cls(output_size=size))  # type: ignore[call-arg]
    return generate


# -- reductions --------------------------------------------------------------------------------
def reduction(cls: type[ReduceBase]) -> Generator:
    def generate(g: GraphGen) -> Value | None:
        x = _ranked(g, 1)
        if x is None:
            return None
        axes = _subset(g, list(range(x.type.rank)))
        return g.add(cls(axes=axes, keepdims=g.chance(0.5)), x)
    return generate


# -- data movement -----------------------------------------------------------------------------
def reshape(g: GraphGen) -> Value | None:
    x = g.pick()
    if x is None:
        return None
    rank = g.integer(1, 4) if x.type.numel != 1 else g.integer(0, 3)
    return g.add(Reshape(shape=factor_shape(g, x.type.numel, rank)), x)


def flatten(g: GraphGen) -> Value | None:
    x = _ranked(g, 1)
    if x is None:
        return None
    start = g.integer(0, x.type.rank - 1)
    end = g.choice((-1, g.integer(start, x.type.rank - 1)))
    return g.add(Flatten(start_dim=start, end_dim=end), x)


def transpose(g: GraphGen) -> Value | None:
    x = _ranked(g, 2)
    if x is None:
        return None
    return g.add(Transpose(perm=tuple(int(p) for p in g.rng.permutation(x.type.rank))), x)


def concat(g: GraphGen) -> Value | None:
    x = _ranked(g, 1)
    if x is None:
        return None
    axis = g.integer(0, x.type.rank - 1)
    parts = [x]
    for _ in range(g.integer(1, 2) if g.chance(0.9) else 0):
        parts.append(_concat_partner(g, x, axis))
    kind = Concat(axis=axis)
    if not g.valid(kind, [p.type for p in parts]):
        return None
    return g.add(kind, *parts)


def _concat_partner(g: GraphGen, x: Value, axis: int) -> Value:
    """x itself, a pooled value that matches x off `axis`, or a parameter."""
    def matches(t: TensorType) -> bool:
        return t.rank == x.type.rank and all(
            a == b for i, (a, b) in enumerate(zip(t.shape, x.type.shape)) if i != axis)

    if g.chance(0.6):
        found = g.pick(matches)
        if found is not None:
            return found
    shape = list(x.type.shape)
    shape[axis] = g.integer(1, 3)
    return g.param(g.normal(tuple(shape)))


def split(g: GraphGen) -> Value | None:
    x = g.pick(lambda t: t.rank >= 1 and max(t.shape) >= 2)
    if x is None:
        return None
    axis = g.choice([i for i, d in enumerate(x.type.shape) if d >= 2])
    size = x.type.shape[axis]
    cuts = sorted({g.integer(1, size - 1) for _ in range(g.integer(1, 2))})
    sizes = tuple(int(b - a) for a, b in zip([0, *cuts], [*cuts, size]))
    return g.emit(Split(sizes=sizes, axis=axis), x)[g.integer(0, len(sizes) - 1)]


def slice_(g: GraphGen) -> Value | None:
    x = g.pick(lambda t: t.rank >= 1 and min(t.shape) >= 1)
    if x is None:
        return None
    axes = _subset(g, list(range(x.type.rank)))
    starts = [g.integer(0, x.type.shape[a] - 1) for a in axes]
    ends = [g.integer(s + 1, x.type.shape[a]) for s, a in zip(starts, axes)]
    steps = tuple(g.choice((1, 1, 2, 3)) for _ in axes)
    if g.chance(0.1):  # the whole tensor: a no-op canonicalization removes
        starts, ends, steps = [0] * len(axes), [x.type.shape[a] for a in axes], (1,) * len(axes)
    return g.add(Slice(axes=axes, starts=tuple(starts), ends=tuple(ends), steps=steps), x)


def pad(g: GraphGen) -> Value | None:
    x = _ranked(g, 1)
    if x is None:
        return None

    def make() -> OpDef:
        some = 0.5 if g.chance(0.9) else 0.0  # now and then no padding at all
        pads = tuple(g.integer(0, 2) if g.chance(some) else 0 for _ in range(2 * x.type.rank))
        mode = g.choice(("constant", "constant", "reflect", "edge"))
        value = g.choice((0.0, 0.0, 1.5, -2.0)) if mode == "constant" else 0.0
        return Pad(pads=pads, mode=mode, value=value)

    return _try(g, x, make)


def squeeze(g: GraphGen) -> Value | None:
    x = g.pick(lambda t: 1 in t.shape)
    if x is None:
        return None
    return g.add(Squeeze(axes=_subset(g, [i for i, d in enumerate(x.type.shape) if d == 1])), x)


def unsqueeze(g: GraphGen) -> Value | None:
    x = _ranked(g, 0, 4)
    if x is None:
        return None
    added = g.integer(1, 2)
    axes = g.rng.choice(x.type.rank + added, size=added, replace=False)
    return g.add(Unsqueeze(axes=tuple(sorted(int(a) for a in axes))), x)


def expand(g: GraphGen) -> Value | None:
    x = g.pick(lambda t: 1 in t.shape or t.rank < 3)
    if x is None:
        return None
    lead = tuple(g.integer(1, 3) for _ in range(g.integer(0, 1)))
    shape = (*lead, *(g.integer(1, 3) if d == 1 else d for d in x.type.shape))
    if int(np.prod(shape)) > MAX_NUMEL:
        return None
    return g.add(Expand(shape=shape), x)


def identity(g: GraphGen) -> Value | None:
    x = g.pick()
    return None if x is None else g.add(Identity(), x)


def dropout(g: GraphGen) -> Value | None:
    x = g.pick()
    return None if x is None else g.add(Dropout(p=g.choice((0.0, 0.1, 0.5))), x)


def cast(g: GraphGen) -> Value | None:
    """A round trip f32 → T → f32: lossy T (f16, bf16, i32, i8) only on function inputs, which
    no pass perturbs; f64 (exact) on any value."""
    if g.chance(0.1):
        x = g.pick()
        return None if x is None else g.add(Cast(to=x.type.dtype), x)  # a no-op cast
    if g.chance(0.5):
        x, to = g.choice(g.args), g.choice((F16, BF16, I32, I8, F64))
    else:
        x, to = g.pick(tame=False), F64
    if x is None:
        return None
    if to == I8:
        x = g.bounded(x, 100.0)
    return g.add(Cast(to=x.type.dtype), g.add(Cast(to=to), x))


SHAPE_GENERATORS: dict[str, Generator] = {
    "max_pool1d": pool(MaxPool1d, 1, dilated=True), "max_pool2d": pool(MaxPool2d, 2, True),
    "avg_pool1d": pool(AvgPool1d, 1, dilated=False), "avg_pool2d": pool(AvgPool2d, 2, False),
    "adaptive_avg_pool1d": adaptive(AdaptiveAvgPool1d, 1),
    "adaptive_avg_pool2d": adaptive(AdaptiveAvgPool2d, 2),
    "reduce_sum": reduction(ReduceSum), "reduce_mean": reduction(ReduceMean),
    "reduce_max": reduction(ReduceMax), "reduce_min": reduction(ReduceMin),
    "reshape": reshape, "flatten": flatten, "transpose": transpose, "concat": concat,
    "split": split, "slice": slice_, "pad": pad, "squeeze": squeeze, "unsqueeze": unsqueeze,
    "expand": expand, "identity": identity, "dropout": dropout, "cast": cast,
}

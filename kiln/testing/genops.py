"""Op generators for the random graph generator: a table from a name to a function that adds
one op (with any parameters, guards and adapters it needs) to a `GraphGen`.

A generator returns the new value, or None when the pool holds nothing it can use (the driver
then draws another). Attributes are drawn at random and kept only when the op kind accepts them
(`GraphGen.valid`), so the rules live in the ops, not here. Arithmetic, products and
normalizations are here; data movement, pools and reductions in `genops_shape`; subgraphs
that real models contain (and passes look for) in `genops_motifs`; `generators` joins them.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from kiln.ir.graph import Value
from kiln.ir.ops import elementwise as ew
from kiln.ir.ops.base import OpDef, OpError
from kiln.ir.ops.elementwise import BinaryOp, broadcast_shapes
from kiln.ir.ops.nn_conv import Conv1d, Conv2d, ConvTranspose2d, Linear, MatMul
from kiln.ir.ops.nn_norm import BatchNorm, LayerNorm, LocalResponseNorm, LogSoftmax, Softmax
from kiln.ir.ops.shape import Transpose
from kiln.ir.types import TensorType
from kiln.testing.genops_shape import of_rank
from kiln.testing.graphgen import MAX_NUMEL, GraphGen

Generator = Callable[[GraphGen], "Value | None"]
Guard = Callable[[GraphGen, Value], Value]


def rank_at_least(n: int) -> Callable[[TensorType], bool]:
    return lambda t: t.rank >= n


def divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def no_guard(g: GraphGen, x: Value) -> Value:
    return x


def exp_guard(g: GraphGen, x: Value) -> Value:
    return g.bounded(x, g.choice((3.0, 5.0)))


# -- elementwise -------------------------------------------------------------------------------
def unary(make: Callable[[GraphGen], OpDef], guard: Guard = no_guard) -> Generator:
    def generate(g: GraphGen) -> Value | None:
        x = g.pick()
        return None if x is None else g.add(make(g), guard(g, x))
    return generate


def clamp_kind(g: GraphGen) -> OpDef:
    """Bounds in [-2, 2]; either may be absent or infinite (no-op clamps on purpose)."""
    low = g.choice((None, -math.inf, round(float(g.rng.uniform(-2, 0.5)), 3)))
    high = g.choice((None, math.inf, round(float(g.rng.uniform(0.5, 2)), 3)))
    return ew.Clamp(min=low, max=high)


UNARY: dict[str, tuple[Callable[[GraphGen], OpDef], Guard]] = {
    "neg": (lambda g: ew.Neg(), no_guard), "abs": (lambda g: ew.Abs(), no_guard),
    "sqrt": (lambda g: ew.Sqrt(), GraphGen.positive),
    "rsqrt": (lambda g: ew.Rsqrt(), GraphGen.positive),
    "reciprocal": (lambda g: ew.Reciprocal(), GraphGen.positive),
    "log": (lambda g: ew.Log(), GraphGen.positive),
    "exp": (lambda g: ew.Exp(), exp_guard), "erf": (lambda g: ew.Erf(), no_guard),
    "relu": (lambda g: ew.Relu(), no_guard), "relu6": (lambda g: ew.Relu6(), no_guard),
    "sigmoid": (lambda g: ew.Sigmoid(), no_guard), "tanh": (lambda g: ew.Tanh(), no_guard),
    "silu": (lambda g: ew.Silu(), no_guard),
    "hardsigmoid": (lambda g: ew.Hardsigmoid(), no_guard),
    "hardswish": (lambda g: ew.Hardswish(), no_guard),
    "leaky_relu": (lambda g: ew.LeakyRelu(slope=g.choice((0.01, 0.2, -0.5))), no_guard),
    "gelu": (lambda g: ew.Gelu(approximate=g.choice(("none", "tanh"))), no_guard),
    "clamp": (clamp_kind, no_guard),
}

SPECIAL_SCALARS = (0.0, 1.0, -1.0, 2.0, 0.5)
"""Splat constants that canonicalization patterns look for (x + 0, x * 1, x / 1, ...)."""


def _broadcast_shape(g: GraphGen, shape: tuple[int, ...]) -> tuple[int, ...]:
    """A shape that broadcasts to `shape`: a per-channel, last-dim, scalar or random one."""
    rank = len(shape)
    mode = g.integer(0, 4)
    if mode == 0 or rank == 0:
        return (1,) * g.integer(0, min(rank, 1))
    if mode == 1 and rank >= 2:
        return (shape[1], *(1,) * (rank - 2))
    if mode == 2:
        return (shape[-1],)
    if mode == 3:
        return shape
    kept = tuple(d if g.chance(0.5) else 1 for d in shape)
    return kept[g.integer(0, rank):] if g.chance(0.3) else kept


def partner(g: GraphGen, x: Value, nonzero: bool) -> Value:
    """A second operand for `x`: a pooled value that broadcasts with it, or a parameter."""
    if g.chance(0.45):
        shapes_ok = [v for v in g.pool if _fits(v.type.shape, x.type.shape)]
        if shapes_ok:
            y = g.tame(g.choice(shapes_ok))
            return g.positive(y) if nonzero else y
    if g.chance(0.25):
        number = g.choice(SPECIAL_SCALARS[1:] if nonzero else SPECIAL_SCALARS)
        return g.scalar(number, g.integer(0, min(1, x.type.rank)))
    shape = _broadcast_shape(g, x.type.shape)
    if nonzero:
        magnitude = g.uniform(shape, 0.5, 2.0)
        return g.param(np.where(g.rng.random(shape) < 0.5, -magnitude, magnitude))
    return g.param(g.normal(shape))


def _fits(a: tuple[int, ...], target: tuple[int, ...]) -> bool:
    try:
        out = broadcast_shapes(a, target)
    except OpError:  # the shapes do not broadcast
        return False
    return math.prod(out) <= MAX_NUMEL


def binary(cls: type[BinaryOp]) -> Generator:
    def generate(g: GraphGen) -> Value | None:
        x = g.pick()
        if x is None:
            return None
        if cls is ew.Pow:
            return g.add(cls(), g.positive(x), _exponent(g, x))
        y = partner(g, x, nonzero=cls is ew.Div)
        if cls is not ew.Div and g.chance(0.3):
            x, y = y, x
        return g.add(cls(), x, y)
    return generate


def _exponent(g: GraphGen, x: Value) -> Value:
    if g.chance(0.6):
        return g.scalar(g.choice((2.0, 0.5, -1.0, 3.0, 1.0, 1.5, -0.5)))
    return g.bounded(partner(g, x, nonzero=False), 2.0)


BINARY = {"add": ew.Add, "sub": ew.Sub, "mul": ew.Mul, "div": ew.Div, "pow": ew.Pow,
          "maximum": ew.Maximum, "minimum": ew.Minimum}


# -- products ----------------------------------------------------------------------------------
def _window(g: GraphGen, size: int) -> tuple[int, int, int, int, int]:
    """(kernel, stride, dilation, pad begin, pad end) for one spatial axis."""
    pads = g.integer(0, 2) if g.chance(0.6) else 0, g.integer(0, 2) if g.chance(0.6) else 0
    dilation = g.choice((1, 1, 2))
    room = size + pads[0] + pads[1]
    kmax = max(1, min(5, (room - 1) // dilation + 1))
    return g.integer(1, kmax), g.choice((1, 1, 2, 3)), dilation, pads[0], pads[1]


def conv_on(g: GraphGen, x: Value, nd: int, *, same: bool = False) -> Value | None:
    """conv1d/2d of `x` with random attributes; `same`: stride 1 and a shape-keeping window."""
    cin = x.type.shape[1]
    for _ in range(6):
        wins = [_window(g, s) for s in x.type.shape[2:]]
        if same:
            wins = [(k, 1, 1, (k - 1) // 2, (k - 1) // 2) for k in (g.choice((1, 3)),) * nd]
        groups = g.choice([1, 1, cin, *divisors(cin)])
        cout = groups * g.choice((1, 1, 2, 3)) if groups > 1 else g.integer(1, 16)
        kind = (Conv1d if nd == 1 else Conv2d)(
            stride=tuple(w[1] for w in wins), dilation=tuple(w[2] for w in wins),
            padding=tuple(w[3] for w in wins) + tuple(w[4] for w in wins), groups=groups)
        wtype = TensorType((cin if same else cout, cin // groups, *(w[0] for w in wins)))
        if g.valid(kind, [x.type, wtype]):
            return _product(g, kind, x, wtype, wtype.shape[0])
    return None


def conv(nd: int) -> Generator:
    def generate(g: GraphGen) -> Value | None:
        x = of_rank(g, nd + 2)
        return None if x is None else conv_on(g, x, nd)
    return generate


def _product(g: GraphGen, kind: OpDef, x: Value, wtype: TensorType, bias: int) -> Value:
    """Emit `kind(x, w[, b])` with He-scaled random weights (fan-in from `wtype`)."""
    fan_in = math.prod(wtype.shape[1:]) if not isinstance(kind, ConvTranspose2d) \
        else wtype.shape[0] * math.prod(wtype.shape[2:])
    w = g.param(g.normal(wtype.shape, 1.0 / math.sqrt(max(fan_in, 1))))
    if g.chance(0.5):
        return g.add(kind, x, w, g.param(g.normal((bias,), 0.5)))
    return g.add(kind, x, w)


def conv_transpose(g: GraphGen) -> Value | None:
    x = of_rank(g, 4)
    return None if x is None else conv_transpose_on(g, x)


def conv_transpose_on(g: GraphGen, x: Value) -> Value | None:
    cin = x.type.shape[1]
    for _ in range(6):
        k = (g.integer(1, 4), g.integer(1, 4))
        stride, dil = (g.integer(1, 3), g.integer(1, 3)), (g.choice((1, 1, 2)),) * 2
        pads = tuple(g.integer(0, d * (kk - 1)) for d, kk in zip(dil * 2, k * 2))
        extra = tuple(g.integer(0, max(s, d) - 1) for s, d in zip(stride, dil))
        groups = g.choice([1, 1, *divisors(cin)])
        cout_g = g.integer(1, 3)
        kind = ConvTranspose2d(stride=stride, padding=pads, dilation=dil, groups=groups,
                               output_padding=extra)
        wtype = TensorType((cin, cout_g, *k))
        if g.valid(kind, [x.type, wtype]):
            return _product(g, kind, x, wtype, cout_g * groups)
    return None


def linear(g: GraphGen) -> Value | None:
    x = g.pick(rank_at_least(1))
    return None if x is None else linear_on(g, x)


def linear_on(g: GraphGen, x: Value, out: int | None = None) -> Value | None:
    out = out or g.choice((1, 3, 5, 8, 16))
    wtype = TensorType((out, x.type.shape[-1]))
    if not g.valid(Linear(), [x.type, wtype]):
        return None
    return _product(g, Linear(), x, wtype, out)


def matmul(g: GraphGen) -> Value | None:
    a = g.pick(rank_at_least(1))
    if a is None:
        return None
    if a.type.rank >= 2 and g.chance(0.3):
        perm = (*range(a.type.rank - 2), a.type.rank - 1, a.type.rank - 2)
        b = g.add(Transpose(perm=perm), a)
    else:
        b = _matmul_rhs(g, a.type)
    if not g.valid(MatMul(), [a.type, b.type]):
        return None
    if g.chance(0.2):
        a, b = _swap_for_vector(g, a, b)
    return g.add(MatMul(), a, b)


def _matmul_rhs(g: GraphGen, a: TensorType) -> Value:
    k = a.shape[-1]
    pooled = [v for v in g.pool if v.type.rank >= 2 and v.type.shape[-2] == k]
    if pooled and g.chance(0.4):
        return g.tame(g.choice(pooled))
    n = g.choice((1, 3, 4, 7))
    batch = a.shape[:-2] if a.rank > 2 and g.chance(0.5) else ()
    shape = (*batch, k, n) if g.chance(0.85) else (k,)
    return g.param(g.normal(shape, 1.0 / math.sqrt(k)), const=False)


def _swap_for_vector(g: GraphGen, a: Value, b: Value) -> tuple[Value, Value]:
    """vector @ matrix now and then: a 1-D lhs drops its axis."""
    if b.type.rank >= 2:
        vec = g.param(g.normal((b.type.shape[-2],)), const=False)
        return vec, b
    return a, b


# -- normalizations ----------------------------------------------------------------------------
def batch_norm(g: GraphGen) -> Value | None:
    x = g.pick(rank_at_least(2))
    return None if x is None else batch_norm_on(g, x)


def batch_norm_on(g: GraphGen, x: Value) -> Value:
    """Inference batch norm with non-trivial statistics (var in [0.5, 2], some negative scales)."""
    c = x.type.shape[1]
    scale = g.uniform((c,), 0.5, 1.5) * np.where(g.rng.random(c) < 0.2, -1, 1).astype(np.float32)
    params = [scale, g.normal((c,), 0.5), g.normal((c,), 0.5), g.uniform((c,), 0.5, 2.0)]
    eps = g.choice((1e-5, 1e-3))
    return g.add(BatchNorm(eps=eps), x, *(g.param(p) for p in params))


def layer_norm(g: GraphGen) -> Value | None:
    x = g.pick(rank_at_least(1))
    if x is None:
        return None
    ndim = g.integer(1, min(2, x.type.rank))
    inner = x.type.shape[x.type.rank - ndim:]
    affine = [g.param(g.uniform(inner, 0.5, 1.5))] if g.chance(0.7) else []
    if affine and g.chance(0.7):
        affine.append(g.param(g.normal(inner, 0.5)))
    return g.add(LayerNorm(normalized_ndim=ndim, eps=g.choice((1e-5, 1e-3))), x, *affine)


def softmax(cls: type[Softmax] | type[LogSoftmax]) -> Generator:
    def generate(g: GraphGen) -> Value | None:
        x = g.pick(rank_at_least(1))
        if x is None:
            return None
        return g.add(cls(axis=g.choice((-1, g.integer(0, x.type.rank - 1)))), x)
    return generate


def local_response_norm(g: GraphGen) -> Value | None:
    x = g.pick(rank_at_least(3))
    if x is None:
        return None
    return g.add(LocalResponseNorm(size=g.integer(1, 5), k=g.choice((1.0, 2.0))), x)


NN_GENERATORS: dict[str, Generator] = {
    **{name: unary(*spec) for name, spec in UNARY.items()},
    **{name: binary(cls) for name, cls in BINARY.items()},
    "conv1d": conv(1), "conv2d": conv(2), "conv_transpose2d": conv_transpose,
    "linear": linear, "matmul": matmul,
    "batch_norm": batch_norm, "layer_norm": layer_norm, "softmax": softmax(Softmax),
    "log_softmax": softmax(LogSoftmax), "local_response_norm": local_response_norm,
}
"""Op name without `kiln.` → generator, for arithmetic, products and normalizations."""

"""A seeded generator of random, well-typed kiln modules, for differential fuzzing of passes.

`random_module(seed)` builds a function over one to three f32 inputs of random shapes (odd
sizes 1, 3, 7, 17 included) by drawing ops from `kiln.testing.generators.GENERATORS`: chains, and
DAGs where a value feeds several ops (diamonds, residuals). Every op's attributes are drawn at
random and kept only when the op kind's own `infer_type` and `verify` accept them, so the module
verifies by construction.

Numerics are kept sane so that a 1e-5 relative comparison means something: the generator runs
every op's reference on sample inputs as it builds (`GraphGen.env`), scales any value whose
magnitude passes `TAME_LIMIT` by an exact power of two before reusing it, never reuses a value
whose terms cancel (`conditioning`: a layer norm of a nearly constant row), guards domains
structurally (`log`, `sqrt`, `rsqrt`, `reciprocal`, the base of `pow` and a divisor get
`|x| + c`; `exp` gets a clamp), and applies discontinuous ops (casts to narrow or integer types
and back) only to function inputs, which no pass can perturb.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

import numpy as np

from kiln.errors import KilnError
from kiln.ir.builder import Builder, new_function
from kiln.ir.graph import Module, Value
from kiln.ir.interpret import sample_inputs
from kiln.ir.ops.base import OpDef, OpError
from kiln.ir.ops.core import Weight
from kiln.ir.ops.elementwise import Abs, Add, Clamp, Mul
from kiln.ir.types import F32, TensorType
from kiln.testing.conditioning import CONDITION_LIMIT, condition

T = TypeVar("T")

SIZES = (1, 2, 3, 4, 5, 7, 8, 17)
"""Dimension sizes drawn for inputs: small, odd and prime ones on purpose."""
MAX_NUMEL = 4096
"""No generated value has more elements (keeps a graph's interpretation in milliseconds)."""
TAME_LIMIT = 16.0
"""A value with a larger magnitude is scaled down (by a power of two) before it is reused."""
CONST_LIMIT = 16
"""Parameters up to this many elements are sometimes inline constants instead of weights."""

Accept = Callable[[TensorType], bool]


def any_type(t: TensorType) -> bool:
    return t.dtype == F32


class GraphGen:
    """The state of one generated function: RNG, builder, the value pool and concrete values."""

    def __init__(self, rng: np.random.Generator, module: Module, builder: Builder,
                 args: Sequence[Value], arrays: Sequence[np.ndarray]) -> None:
        self.rng = rng
        self.module = module
        self.builder = builder
        self.args = list(args)
        self.pool: list[Value] = list(args)
        self.params: list[Value] = []
        self.env: dict[Value, np.ndarray] = dict(zip(args, arrays))
        self.noisy: set[Value] = set()
        """Values computed from a cancelling op: never pooled, so never reused nor returned."""

    # -- randomness ----------------------------------------------------------------------------
    def chance(self, p: float) -> bool:
        return bool(self.rng.random() < p)

    def choice(self, items: Sequence[T]) -> T:
        return items[int(self.rng.integers(len(items)))]

    def integer(self, low: int, high: int) -> int:
        """A uniform integer in [low, high] (both included)."""
        return int(self.rng.integers(low, high + 1))

    def normal(self, shape: tuple[int, ...], scale: float = 1.0) -> np.ndarray:
        return (self.rng.standard_normal(shape) * scale).astype(np.float32)

    def uniform(self, shape: tuple[int, ...], low: float, high: float) -> np.ndarray:
        return self.rng.uniform(low, high, shape).astype(np.float32)

    # -- emitting ------------------------------------------------------------------------------
    def valid(self, kind: OpDef, types: Sequence[TensorType]) -> bool:
        """Whether `kind` accepts operands of `types` and keeps results under `MAX_NUMEL`."""
        try:
            results = kind.infer_type(types)
            kind.verify(types)
        except OpError:
            return False
        return all(r.numel <= MAX_NUMEL for r in results)

    def emit(self, kind: OpDef, *operands: Value) -> list[Value]:
        """Create the op, evaluate its reference on the concrete operands, and pool its results
        unless it cancels (`conditioning`) or reads a value that did: those are never returned."""
        op = self.builder.create(kind, *operands)
        args = [self.env[v] for v in operands]
        outs = kind.reference_typed([v.type for v in operands], *args)
        sane = not any(v in self.noisy for v in operands) and (
            not outs or condition(kind, args, outs[0]) <= CONDITION_LIMIT)
        for value, out in zip(op.results, outs):
            if tuple(out.shape) != value.type.shape or out.dtype != value.type.numpy_dtype:
                raise KilnError(f"{kind.NAME}: reference gave {out.dtype}{list(out.shape)} "
                                f"for {value.type}")
            self.env[value] = out
            if not sane:
                self.noisy.add(value)
            elif value.type.dtype == F32:
                self.pool.append(value)
        return list(op.results)

    def add(self, kind: OpDef, *operands: Value) -> Value:
        return self.emit(kind, *operands)[0]

    def param(self, array: np.ndarray, *, const: bool | None = None) -> Value:
        """`array` as a weight, or (small ones, sometimes) as an inline constant."""
        if const is None:
            const = array.size <= CONST_LIMIT and self.chance(0.3)
        if const:
            value = self.builder.constant(array)
        else:
            value = self.builder.weight(f"p{len(self.params)}", array)
        self.env[value] = np.asarray(array)
        self.params.append(value)
        return value

    def weight_ref(self, symbol: str, type: TensorType) -> Value:
        """Another `kiln.weight` op naming an existing weight (two references, one array)."""
        value = self.builder.add(Weight(name=symbol, type=type))
        self.env[value] = self.module.weights[symbol]
        self.params.append(value)
        return value

    def scalar(self, number: float, rank: int = 0) -> Value:
        return self.param(np.full((1,) * rank, number, np.float32), const=True)

    # -- choosing operands ---------------------------------------------------------------------
    def pick(self, accept: Accept = any_type, *, tame: bool = True) -> Value | None:
        """A pooled value whose type `accept`s: the newest one half of the time (chains), else
        any (reuse: diamonds, residuals); now and then a parameter. Scaled down when large."""
        if self.params and self.chance(0.05):
            params = [v for v in self.params if accept(v.type) and v.type.dtype == F32]
            if params:
                return self.choice(params)
        found = [v for v in self.pool if accept(v.type)]
        if not found:
            return None
        value = found[-1] if self.chance(0.5) else self.choice(found)
        return self.tame(value) if tame else value

    def tame(self, value: Value) -> Value:
        """`value · 2^-k` when its magnitude exceeds `TAME_LIMIT` (exact: a power of two)."""
        peak = float(np.max(np.abs(self.env[value]), initial=0.0))
        if not np.isfinite(peak) or peak <= TAME_LIMIT:
            return value
        return self.add(Mul(), value, self.scalar(2.0 ** -int(np.ceil(np.log2(peak)))))

    def positive(self, value: Value) -> Value:
        """|x| + c with c in {0.5, 1}: a strictly positive operand for log, sqrt, pow, div."""
        return self.add(Add(), self.add(Abs(), value), self.scalar(self.choice((0.5, 1.0))))

    def bounded(self, value: Value, limit: float) -> Value:
        """clamp(x, -limit, limit) (for exp and exponents)."""
        return self.add(Clamp(min=-limit, max=limit), value)


def _input_types(rng: np.random.Generator, batch: int | None = None) -> list[TensorType]:
    """One to three input types; `batch` (when given) replaces the drawn first dimension
    (the random stream is consumed the same way, so other seeds keep their graphs)."""
    types = []
    for _ in range(int(rng.choice([1, 1, 2, 2, 3]))):
        rank = int(rng.choice([1, 2, 2, 3, 3, 3, 4, 4, 4, 4]))
        while True:
            shape = (int(rng.choice([1, 1, 2, 3])), *(int(rng.choice(SIZES))
                                                     for _ in range(rank - 1)))
            if np.prod(shape) <= 1024:
                break
        if batch is not None:
            shape = (batch, *shape[1:])
        types.append(TensorType(shape, F32))
    return types


def _select(ops: Sequence[str] | None) -> list[str]:
    from kiln.testing.generators import GENERATORS

    if ops is None:
        return sorted(GENERATORS)
    names = [name.removeprefix("kiln.") for name in ops]
    unknown = sorted(set(names) - set(GENERATORS))
    if unknown or not names:
        raise KilnError(f"the graph generator has no op {', '.join(unknown) or '(none given)'}",
                        hint=f"choose among {', '.join(sorted(GENERATORS))}")
    return names


def _grow(g: GraphGen, names: list[str], steps: int) -> None:
    from kiln.testing.generators import GENERATORS

    for _ in range(steps):
        for _attempt in range(8):
            if GENERATORS[g.choice(names)](g) is not None:
                break


def _outputs(g: GraphGen) -> list[Value]:
    """The newest value, sometimes plus a few others (now and then an input, or a repeat)."""
    outputs = [g.pool[-1]]
    unused = [v for v in g.pool[:-1] if not v.uses and v not in g.args]
    for _ in range(g.integer(0, 2) if g.chance(0.4) else 0):
        if unused:
            outputs.append(unused.pop(g.integer(0, len(unused) - 1)))
    if g.chance(0.04):
        outputs.append(g.choice(g.args))
    if g.chance(0.03):
        outputs.append(outputs[0])
    return outputs


def random_module(seed: int, *, max_ops: int = 12, ops: Sequence[str] | None = None,
                  batch: int | None = None, name: str | None = None) -> Module:
    """A random valid module: up to `max_ops` generated ops (plus their parameters, guards and
    adapters), drawn from `ops` (generator names such as `conv2d`; default: all); `batch`
    fixes the inputs' first dimension (1 for the HLS targets); `name` the module's name."""
    names = _select(ops)
    rng = np.random.default_rng(seed)
    module = Module(name or f"fuzz{seed}")
    types = _input_types(rng, batch)
    func, builder = new_function(module, "forward", types, [f"x{i}" for i in range(len(types))])
    arrays = [rng.standard_normal(t.shape).astype(np.float32) for t in types]
    g = GraphGen(rng, module, builder, func.args, arrays)
    _grow(g, names, g.integer(1, max(1, max_ops)))
    builder.ret(*_outputs(g))
    return module


def random_inputs(module: Module, seed: int, *, special: float = 0.0) -> list[np.ndarray]:
    """Standard-normal inputs for `module`'s entry function (never all zeros); with `special`,
    that fraction of the float elements becomes NaN, +inf or -inf (for NaN-propagation checks)."""
    inputs = sample_inputs(module.main, seed)
    if special > 0.0:
        rng = np.random.default_rng((seed, 1))
        for x in inputs:
            if np.issubdtype(x.dtype, np.floating):
                mask = rng.random(x.shape) < special
                x[mask] = rng.choice(np.array([np.nan, np.inf, -np.inf], x.dtype), mask.sum())
    return inputs


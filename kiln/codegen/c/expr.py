"""Elementwise expressions and the loop nests that evaluate them.

Fused epilogues, elementwise groups, row kernels (softmax, layer norm, reductions) and data
movement all come down to one thing: at each point of an iteration *space* (a static shape),
read some buffers at strided positions, combine the values, write some buffers. Here:

- a **node** is a `Read` (buffer[offset + Σ i_d · stride_d]), a literal `Lit`, a per-row scalar
  `Sym`, or an `Apply` of a C template (`"({0} + {1})"`) to nodes. Nodes are frozen, so equal
  reads are shared and each is loaded once.
- `TEMPLATES` maps each elementwise op class to its C template (the scalar functions of
  `kiln_math.h`), so `build_nodes` turns a chain of kiln ops into nodes. A value of a smaller
  shape is read *broadcast* (stride 0 on the broadcast dims): for elementwise ops
  `f(broadcast(a)) = broadcast(f(a))`, so every value can be evaluated at every space point.
- `LoopNest` merges consecutive space dims that every access walks contiguously (so a
  `[N, C, H, W]` add with a per-channel bias loops over `N`, `C`, `H*W`), drops size-1 dims,
  and writes the loops; `Statements` writes `const float tK = ...;` lines in dependency order.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass

from kiln.codegen.c.params import float_literal
from kiln.codegen.writer import CodeWriter
from kiln.ir.graph import Op, Value
from kiln.ir.ops import elementwise as ew
from kiln.ir.ops.base import OpDef
from kiln.ir.ops.core import Cast
from kiln.ir.ops.nn_norm import BatchNorm
from kiln.ir.ops.shape import Expand

Shape = tuple[int, ...]


# -- C integer expressions, folded where constant ---------------------------------------------
def _int(text: str) -> int | None:
    try:
        return int(text)
    except ValueError:
        return None


def c_sum(*terms: str | int) -> str:
    """`a + b + ...` with zeros dropped and integer literals added up."""
    total, rest = 0, []
    for term in (str(t).strip() for t in terms):
        value = _int(term)
        if value is None:
            rest.append(term)
        else:
            total += value
    if total or not rest:
        rest.append(str(total))
    return " + ".join(rest)


def c_diff(a: str | int, b: str | int) -> str:
    x, y = _int(str(a)), _int(str(b))
    if x is not None and y is not None:
        return str(x - y)
    return str(a) if y == 0 else f"{a} - {b}"


def c_product(a: str | int, b: str | int) -> str:
    x, y = _int(str(a)), _int(str(b))
    if x is not None and y is not None:
        return str(x * y)
    if x == 0 or y == 0:
        return "0"
    if x == 1:
        return str(b)
    return str(a) if y == 1 else f"{a} * {b}"


def c_ptr(base: str, offset: str | int) -> str:
    """`base + offset`, or `base` for a zero offset."""
    return base if str(offset) == "0" else f"{base} + {offset}"


# -- nodes -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Read:
    """buffer[offset + Σ_d i_d * strides[d]] over the space dims d."""

    buffer: str
    strides: tuple[int, ...]
    offset: str = ""


@dataclass(frozen=True)
class Lit:
    value: float


@dataclass(frozen=True)
class Sym:
    """A scalar already computed in an enclosing scope (a row's max, a block's bias)."""

    name: str


@dataclass(frozen=True)
class Apply:
    template: str
    args: tuple[Node, ...]


Node = Read | Lit | Sym | Apply


@dataclass(frozen=True)
class Leaf:
    """A buffer holding a value of `shape`, read through broadcasting views."""

    buffer: str
    shape: Shape
    offset: str = ""


Source = Node | Leaf


# -- shapes and strides ------------------------------------------------------------------------
def contiguous_strides(shape: Sequence[int]) -> tuple[int, ...]:
    strides, step = [], 1
    for d in reversed(shape):
        strides.append(step)
        step *= d
    return tuple(reversed(strides))


def right_aligned(shape: Sequence[int], rank: int) -> Shape:
    """`shape` padded with leading 1s to `rank` (numpy broadcasting)."""
    return (1,) * (rank - len(shape)) + tuple(shape)


def view_strides(view: Sequence[int], space: Sequence[int]) -> tuple[int, ...]:
    """Strides reading a contiguous tensor of shape `view` (same rank) at every point of
    `space`: 0 along the dims it is broadcast over."""
    base = contiguous_strides(view)
    return tuple(0 if v == 1 and s != 1 else st for v, s, st in zip(view, space, base))


def read_leaf(leaf: Leaf, view: Sequence[int], space: Sequence[int]) -> Read:
    return Read(leaf.buffer, view_strides(view, space), leaf.offset)


# -- templates ---------------------------------------------------------------------------------
def _f(x: float | None, default: float) -> str:
    return float_literal(default if x is None else x)


_FIXED: dict[type[OpDef], str] = {
    ew.Add: "({0} + {1})", ew.Sub: "({0} - {1})", ew.Mul: "({0} * {1})",
    ew.Div: "({0} / {1})", ew.Pow: "kiln_powf({0}, {1})", ew.Maximum: "kiln_maxf({0}, {1})",
    ew.Minimum: "kiln_minf({0}, {1})", ew.Neg: "(-{0})", ew.Abs: "fabsf({0})",
    ew.Sqrt: "sqrtf({0})", ew.Rsqrt: "kiln_rsqrtf({0})", ew.Reciprocal: "(1.0f / {0})",
    ew.Exp: "kiln_expf({0})", ew.Log: "kiln_logf({0})", ew.Erf: "kiln_erff({0})",
    ew.Relu: "kiln_relu({0})", ew.Relu6: "kiln_relu6({0})", ew.Sigmoid: "kiln_sigmoidf({0})",
    ew.Tanh: "kiln_tanhf({0})", ew.Silu: "kiln_siluf({0})",
    ew.Hardsigmoid: "kiln_hardsigmoidf({0})", ew.Hardswish: "kiln_hardswishf({0})",
    Cast: "{0}", Expand: "{0}",
}

def _leaky_relu(kind: OpDef) -> str:
    assert isinstance(kind, ew.LeakyRelu)
    return "kiln_leaky_reluf({0}, " + _f(kind.slope, 0.0) + ")"


def _clamp(kind: OpDef) -> str:
    assert isinstance(kind, ew.Clamp)
    return f"kiln_clampf({{0}}, {_f(kind.min, -math.inf)}, {_f(kind.max, math.inf)})"


def _gelu(kind: OpDef) -> str:
    assert isinstance(kind, ew.Gelu)
    return "kiln_gelu_tanhf({0})" if kind.approximate == "tanh" else "kiln_geluf({0})"


def _batch_norm(kind: OpDef) -> str:
    assert isinstance(kind, BatchNorm)
    return "kiln_batch_normf({0}, {1}, {2}, {3}, {4}, " + _f(kind.eps, 1e-5) + ")"


_PARAMETRIC: dict[type[OpDef], Callable[[OpDef], str]] = {
    ew.LeakyRelu: _leaky_relu, ew.Clamp: _clamp, ew.Gelu: _gelu, BatchNorm: _batch_norm,
}


def template(kind: OpDef) -> str | None:
    """The C template of an elementwise op kind, None when it has none."""
    fixed = _FIXED.get(type(kind))
    if fixed is not None:
        return fixed
    maker = _PARAMETRIC.get(type(kind))
    return maker(kind) if maker is not None else None


def is_pointwise(op: Op) -> bool:
    """Ops a loop can evaluate element by element (one result, a C template)."""
    return len(op.results) == 1 and op.region is None and template(op.kind) is not None


def operand_views(op: Op, rank: int) -> list[Shape]:
    """How each operand is placed in a space of `rank` dims: numpy broadcasting, except batch
    norm's per-channel parameters, which run along axis 1 of its input."""
    if op.isa(BatchNorm):
        x = op.operands[0].type.shape
        channel = tuple(x[1] if i == 1 else 1 for i in range(len(x)))
        return [right_aligned(x, rank)] + [right_aligned(channel, rank)] * 4
    return [right_aligned(v.type.shape, rank) for v in op.operands]


def build_nodes(ops: Sequence[Op], env: dict[Value, Source], space: Shape) -> None:
    """Add a node for the result of each pointwise op of `ops` (in order) to `env`."""
    for op in ops:
        args = []
        for value, view in zip(op.operands, operand_views(op, len(space))):
            source = env[value]
            args.append(read_leaf(source, view, space) if isinstance(source, Leaf) else source)
        fmt = template(op.kind)
        assert fmt is not None, op.name
        env[op.results[0]] = Apply(fmt, tuple(args)) if fmt != "{0}" else args[0]


def reads(nodes: Sequence[Node]) -> list[Read]:
    """Every distinct read under `nodes`."""
    found: dict[Read, None] = {}

    def visit(node: Node) -> None:
        if isinstance(node, Read):
            found[node] = None
        elif isinstance(node, Apply):
            for arg in node.args:
                visit(arg)
    for node in nodes:
        visit(node)
    return list(found)


# -- loops -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Loop:
    """One C loop over the flattened space dims `dims`, from `start` to `stop`."""

    var: str
    dims: tuple[int, ...]
    start: str
    stop: str


def merge_runs(shape: Shape, dims: Sequence[int], strides: Sequence[Sequence[int]]
               ) -> list[tuple[int, ...]]:
    """Split the consecutive space dims `dims` into runs every stride vector walks as one
    flat index (s[d] == s[d+1] * shape[d+1]); size-1 dims are dropped."""
    kept = [d for d in dims if shape[d] != 1]
    runs: list[list[int]] = []
    for d in kept:
        if runs and all(s[runs[-1][-1]] == s[d] * shape[d] for s in strides):
            runs[-1].append(d)
        else:
            runs.append([d])
    return [tuple(r) for r in runs]


def collapsible(shape: Shape, dims: Sequence[int], strides: Sequence[Sequence[int]]) -> bool:
    """Whether `dims` merge into one loop for every stride vector."""
    return len(merge_runs(shape, dims, strides)) <= 1


class Counter:
    """Fresh names `t0, t1, ...` (one counter per C function, so no name shadows another)."""

    def __init__(self, prefix: str = "t") -> None:
        self.prefix = prefix
        self.n = 0

    def next(self) -> str:
        self.n += 1
        return f"{self.prefix}{self.n - 1}"


class LoopNest:
    """Index arithmetic over a set of loops (outer to inner)."""

    def __init__(self, shape: Shape, loops: Sequence[Loop]) -> None:
        self.shape = shape
        self.loops = list(loops)

    def index(self, strides: Sequence[int], offset: str = "") -> str:
        terms = [offset.strip()] if offset.strip() else []
        for loop in self.loops:
            stride = strides[loop.dims[-1]]
            if stride:
                terms.append(loop.var if stride == 1 else f"{loop.var} * {stride}")
        return " + ".join(terms) if terms else "0"

    @contextmanager
    def open(self, w: CodeWriter, pragma: str | None = None) -> Iterator[None]:
        with ExitStack() as stack:
            for i, loop in enumerate(self.loops):
                if i == 0 and pragma:
                    w.line(pragma)
                stack.enter_context(w.block(
                    f"for (int {loop.var} = {loop.start}; {loop.var} < {loop.stop}; "
                    f"++{loop.var})"))
            yield


def full_loops(shape: Shape, groups: Sequence[Sequence[int]],
               strides: Sequence[Sequence[int]], names: Counter) -> list[Loop]:
    """Loops over whole groups of dims, each group merged as far as the strides allow."""
    loops = []
    for group in groups:
        for run in merge_runs(shape, group, strides):
            loops.append(Loop(names.next(), run, "0", str(math.prod(shape[d] for d in run))))
    return loops


class Statements:
    """Writes each node once as `const float tK = ...;` and returns its C expression."""

    def __init__(self, w: CodeWriter, nest: LoopNest, names: Counter) -> None:
        self.w = w
        self.nest = nest
        self.names = names
        self.temps: dict[Node, str] = {}

    def expr(self, node: Node) -> str:
        if isinstance(node, Lit):
            return float_literal(node.value)
        if isinstance(node, Sym):
            return node.name
        if node in self.temps:
            return self.temps[node]
        if isinstance(node, Read):
            text = f"{node.buffer}[{self.nest.index(node.strides, node.offset)}]"
        else:
            text = node.template.format(*(self.expr(a) for a in node.args))
        name = self.names.next()
        self.w.line(f"const float {name} = {text};")
        self.temps[node] = name
        return name

    def store_all(self, stores: Sequence[tuple[str, Sequence[int], Node]],
                  offsets: Sequence[str] = ()) -> None:
        """Compute every stored value, then write them all: a store never precedes a read of
        the same element (results may share memory with operands, see memory.py)."""
        values = [self.expr(node) for _, _, node in stores]
        for i, ((buffer, strides, _), value) in enumerate(zip(stores, values)):
            offset = offsets[i] if i < len(offsets) else ""
            self.w.line(f"{buffer}[{self.nest.index(strides, offset)}] = {value};")

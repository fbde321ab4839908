"""Building one `@triton.jit` kernel: pointer parameters, locals, loads, ops, stores.

A `KernelBuilder` is handed a `Group` and writes the kernel body line by line; the family
emitters (elementwise, gemm, rows, pool, copy) decide the space and the loop structure, and use
`read` / `compute` / `store` for everything that touches IR values. Pointer parameters are
added on first use and named after the model's values (`conv1_weight_ptr`), locals after the
values they hold (`relu1`), through `codegen/names.py`, so the text is readable and a model
name can never become code.
"""

from __future__ import annotations

import keyword
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from kiln.codegen.names import Namer, comment
from kiln.codegen.triton.exprs import channel_dims, expression, literal
from kiln.codegen.triton.group import Group
from kiln.codegen.triton.options import TritonOptions
from kiln.codegen.triton.space import Access, Space, right_aligned
from kiln.codegen.writer import CodeWriter
from kiln.errors import KilnError
from kiln.ir.graph import Op, Value

KERNEL_LOCALS = frozenset([
    "tl", "triton", "torch", "pid", "pid_m", "pid_n", "pid_b", "offs", "mask", "rm", "rn", "rk",
    "acc", "row", "col", "rmask", "cmask", "mask_m", "mask_n", "mask_k", "k0", "t0", "oh", "ow",
    "ih", "iw", "kh", "kw", "ci", "co", "th", "tw", "count", "float", "int", "range", "min",
    "max", "abs", "sum", "len", "print"]) | frozenset(keyword.kwlist)
"""Names kernels use for themselves (and Python's keywords): values never take them."""


@dataclass
class Kernel:
    """One generated kernel and how the launcher calls it."""

    name: str
    family: str
    source: str
    args: list[Value]
    """Top-level values passed as pointers, in parameter order."""
    grid: tuple[int, ...]
    meta: dict[str, int]
    """Block sizes (constexpr launch arguments)."""
    num_warps: int = 4
    comment: str = ""
    inplace: set[Value] = field(default_factory=set)
    """Operands a result may overwrite (read each element only before writing it)."""
    autotune: list[tuple[int, ...]] | None = None
    """(BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages) configs, when autotuned."""
    grid_dims: tuple[int, int, int] = (0, 0, 0)
    """(M, N, batch) of an autotuned GEMM: its grid depends on the chosen blocks."""


class KernelBuilder:
    """Accumulates one kernel (see the module docstring)."""

    def __init__(self, name: str, group: Group, options: TritonOptions, family: str) -> None:
        self.name = name
        self.group = group
        self.options = options
        self.family = family
        self.body = CodeWriter()
        self.names = Namer(reserved=KERNEL_LOCALS)
        self.pointers: dict[Value, str] = {}
        self.tiles: dict[Value, str] = {}
        self.tile_dims: dict[Value, tuple[int, ...]] = {}
        self._loads: dict[tuple[Value, Access], str] = {}
        self.meta: dict[str, int] = {}

    # -- text ------------------------------------------------------------------------------
    def line(self, text: str) -> None:
        self.body.line(text)

    def local(self, hint: str | None) -> str:
        return self.names.name(hint or "t")

    def assign(self, hint: str | None, expr: str) -> str:
        name = self.local(hint)
        self.line(f"{name} = {expr}")
        return name

    def pointer(self, outer: Value) -> str:
        if outer not in self.pointers:
            self.pointers[outer] = self.names.name(f"{outer.name or 'buf'}_ptr")
        return self.pointers[outer]

    # -- values ----------------------------------------------------------------------------
    def read(self, space: Space, inner: Value, dims: Sequence[int]) -> str:
        """The tile of `inner` laid along space `dims`: computed, inlined or loaded."""
        if inner in self.tiles:
            self._check_layout(inner, dims)
            return self.tiles[inner]
        value = self.group.literal(inner)
        if value is not None:
            return literal(value)
        outer = self.group.outer[inner]
        access = space.access(inner.type.shape, dims)
        key = (outer, access)
        if key not in self._loads:
            self._loads[key] = self.assign(inner.name, self.load_text(outer, access))
        return self._loads[key]

    def _check_layout(self, value: Value, dims: Sequence[int]) -> None:
        """A computed tile can only be reused along the dims it was computed on."""
        laid = self.tile_dims.get(value)
        shape = value.type.shape
        if laid is None:
            return
        if {d for d, s in zip(laid, shape) if s > 1} != {d for d, s in zip(dims, shape) if s > 1}:
            raise KilnError(f"GPU codegen: %{value.name} is broadcast along other axes than "
                            f"the ones its kernel computes it on",
                            hint="run the fuse pass with reductions=false for this model")

    def set_tile(self, value: Value, name: str, dims: Sequence[int]) -> None:
        self.tiles[value] = name
        self.tile_dims[value] = tuple(dims)

    def load_text(self, outer: Value, access: Access, other: str = "0.0") -> str:
        ptr, mask = self.pointer(outer), access.mask()
        address = ptr if access.offset == "0" else f"{ptr} + {access.offset}"
        if mask is None:
            return f"tl.load({address}){self.options.widen}"
        return f"tl.load({address}, mask={mask}, other={other}){self.options.widen}"

    def compute(self, op: Op, space: Space, dims: Sequence[int]) -> str:
        """Evaluate elementwise `op` whose result is laid along `dims`; returns its local."""
        args = []
        for i, operand in enumerate(op.operands):
            along = channel_dims(op, i, dims) or right_aligned(operand.type.shape, dims)
            args.append(self.read(space, operand, along))
        name = self.assign(op.results[0].name, expression(op, args))
        self.set_tile(op.results[0], name, dims)
        return name

    def store(self, space: Space, inner: Value, outer: Value, dims: Sequence[int]) -> None:
        value = self.read(space, inner, dims)
        access = space.access(outer.type.shape, dims)
        offset = access.offset
        if offset == "0" and inner in self.tiles:
            offset = f"tl.zeros_like({value}).to(tl.int32)"  # a block pointer for a 1-element tile
        elif inner in self.tiles and _scalar_offset(offset):  # e.g. only the batch index
            offset = f"{offset} + tl.zeros_like({value}).to(tl.int32)"
        address = f"{self.pointer(outer)} + {offset}" if offset != "0" else self.pointer(outer)
        mask = access.mask()
        tail = f", mask={mask})" if mask else ")"
        self.line(f"tl.store({address}, {self.options.narrowed(value)}{tail}")

    def store_outputs(self, space: Space, dims_of: Mapping[Value, Sequence[int]]) -> None:
        """Store every yielded value (laid along `dims_of[inner]`, default the identity)."""
        self.line("")
        for inner, outer in self.group.outputs:
            self.store(space, inner, outer, dims_of.get(inner, space.identity))

    # -- result ----------------------------------------------------------------------------
    def constexpr(self, name: str, value: int) -> str:
        self.meta[name] = value
        return name

    def header(self) -> list[str]:
        """Comment lines: the pattern and where each op came from in the model."""
        lines = [f"# {comment(self.group.pattern)}"]
        lines += [f"#   {comment(text)}" for text in self.group.locations()]
        return lines

    def finish(self, grid: tuple[int, ...], notes: Sequence[str] = (), *, num_warps: int = 4,
               inplace: set[Value] | None = None, decorator: str = "",
               autotune: list[tuple[int, ...]] | None = None,
               grid_dims: tuple[int, int, int] = (0, 0, 0)) -> Kernel:
        """The kernel's source (header comments, decorators, signature, body) and launch data."""
        params = [*self.pointers.values(), *(f"{m}: tl.constexpr" for m in self.meta)]
        out = CodeWriter()
        out.lines(self.header())
        out.lines(f"#   {comment(n)}" for n in notes)
        if decorator:
            out.raw(decorator)
        out.line("@triton.jit")
        out.line(f"def {self.name}({', '.join(params)}):")
        with out.indented():
            for text in self.body.text().rstrip("\n").split("\n"):
                out.line(text)
        return Kernel(self.name, self.family, out.text(), list(self.pointers), grid,
                      dict(self.meta), num_warps, comment(self.group.pattern),
                      inplace or set(), autotune, grid_dims)


def _scalar_offset(offset: str) -> bool:
    """Whether `offset` names no block (only literals, program ids and batch indices `b<k>`,
    which are scalars): a scalar pointer with a block value is an error in Triton."""
    names = re.findall(r"[A-Za-z_]\w*", offset)
    return all(n.startswith("pid_") or re.fullmatch(r"b\d+", n) for n in names)

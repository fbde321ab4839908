"""Which ops the GPU target lowers, to which kernel family, and the up-front support check.

The table is keyed by op class (DESIGN.md: target facts live in target tables, not in ops):

- **elementwise**: unary math and activations, broadcasting binary ops, float casts, `expand`,
  inference `batch_norm` — one flat kernel per op or fused chain;
- **gemm**: linear, matmul, conv1d / conv2d (implicit GEMM, grouped and depthwise included),
  conv_transpose2d — tiled GEMM kernels whose epilogue runs the fused elementwise ops;
- **rows**: softmax, log_softmax, layer_norm, reduce_* — one row per tile, with the fused
  elementwise producers and consumers;
- **pool**: max / average / adaptive-average pooling (1-D and 2-D);
- **copy**: transpose, concat, split, slice, pad — index-mapping copies;
- **alias**: reshape, flatten, squeeze, unsqueeze, identity, dropout — no kernel, a view of the
  operand's buffer; **param**: weights and constants (launcher arguments).

`check_supported` walks the whole function first and raises one `UnsupportedOpError` listing
every op without a lowering (with its source location and the fused group it sits in), so a
user sees all problems at once, before any code is generated.
"""

from __future__ import annotations

from kiln.codegen.triton.blocks import MAX_ROW
from kiln.codegen.triton.rows import group_rows, rows_of
from kiln.errors import Diagnostic, DiagnosticList, UnsupportedOpError
from kiln.ir.graph import Func, Op, Value
from kiln.ir.ops import elementwise as ew
from kiln.ir.ops.base import OpDef
from kiln.ir.ops.core import Cast, Constant, Return, Weight, Yield
from kiln.ir.ops.fused import Fused
from kiln.ir.ops.nn_conv import Conv1d, Conv2d, ConvTranspose2d, Linear, MatMul
from kiln.ir.ops.nn_norm import BatchNorm, LayerNorm, LogSoftmax, Softmax
from kiln.ir.ops.nn_pool import (
    AdaptiveAvgPool1d,
    AdaptiveAvgPool2d,
    AvgPool1d,
    AvgPool2d,
    MaxPool1d,
    MaxPool2d,
)
from kiln.ir.ops.reduce import ReduceBase
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
from kiln.ir.types import ScalarType

FAMILIES: dict[str, tuple[type[OpDef], ...]] = {
    "elementwise": (ew.UnaryOp, ew.BinaryOp, Cast, Expand, BatchNorm),
    "gemm": (Linear, MatMul, Conv1d, Conv2d, ConvTranspose2d),
    "rows": (Softmax, LogSoftmax, LayerNorm, ReduceBase),
    "pool": (MaxPool1d, MaxPool2d, AvgPool1d, AvgPool2d, AdaptiveAvgPool1d, AdaptiveAvgPool2d),
    "copy": (Transpose, Concat, Split, Slice, Pad),
    "alias": (Reshape, Flatten, Squeeze, Unsqueeze, Identity, Dropout),
    "param": (Weight, Constant),
    "return": (Return, Yield),
}
FUSIBLE = ("elementwise", "gemm", "rows")
"""Families allowed inside a `kiln.fused` region."""
FLOAT_TYPES = ("f32", "f16", "bf16")


def family(op: Op) -> str | None:
    """The kernel family of a (non-fused) op, None when the GPU target cannot lower it."""
    for name, kinds in FAMILIES.items():
        if op.isa(kinds):
            return name
    return None


def group_family(fused: Op) -> str:
    """gemm when the group holds a contraction, else rows when it holds a reduction, else
    elementwise (the fuse pass's epilogue / reduction / elementwise kinds)."""
    assert fused.region is not None
    families = {family(op) for op in fused.region.ops}
    for name in ("gemm", "rows"):
        if name in families:
            return name
    return "elementwise"


def _float_problem(values: list[Value]) -> str | None:
    for v in values:
        dtype = v.type.dtype
        if not (isinstance(dtype, ScalarType) and dtype.name in FLOAT_TYPES):
            return f"has a {dtype} value; the GPU target computes f32/f16/bf16 tensors only"
        if v.type.encoding is not None:
            return "has a sparse operand; the GPU target has no sparse kernels"
    return None


def _op_problem(op: Op) -> str | None:
    """Why `op` (top level or inside a group) cannot be lowered, or None."""
    kind = family(op)
    if kind is None:
        return "has no Triton lowering in the GPU target"
    if kind == "param":
        return None
    if op.isa(Cast) and str(getattr(op.kind, "to", "")) not in FLOAT_TYPES:
        return f"casts to {op.kind.to}; the GPU target computes float tensors only"  # type: ignore[attr-defined]
    if op.isa(MatMul) and min(v.type.rank for v in op.operands) < 2:
        return "has a 1-D operand; the GPU matmul kernel needs rank >= 2 (reshape first)"
    return _float_problem([*op.operands, *op.results])


def _group_problems(fused: Op) -> list[tuple[Op, str]]:
    assert fused.region is not None and isinstance(fused.kind, Fused)
    inner = [op for op in fused.region.ops if not op.isa(Yield)]
    problems = []
    for op in inner:
        why = _op_problem(op)
        if why is None and family(op) not in FUSIBLE:
            why = f"cannot run inside a fused kernel (family {family(op)})"
        if why is not None:
            problems.append((op, why))
    if not problems:
        problems = _shape_problems(inner, group_family(fused))
    return problems


def _shape_problems(ops: list[Op], kind: str) -> list[tuple[Op, str]]:
    """Shape rules of one kernel: one anchor, members at the shapes the kernel walks."""
    anchors = [op for op in ops if family(op) == kind]
    if kind == "gemm":
        computed = {r for op in ops for r in op.results}
        if len(anchors) > 1:
            return [(op, "shares its fused group with another matmul/conv") for op in anchors[1:]]
        if any(v in computed for v in anchors[0].operands):
            return [(anchors[0], "reads a value computed in its own fused group")]
        shape = anchors[0].results[0].type.shape
        return [(op, f"has shape {list(op.results[0].type.shape)}, not its epilogue's "
                     f"{list(shape)}") for op in ops if op.results[0].type.shape != shape]
    if kind == "rows":
        rows = group_rows(ops)
        bad = [(op, "reduces other rows than its group") for op in anchors
               if rows_of(op) != rows]
        bad += [(op, f"has shape {list(op.results[0].type.shape)}, which is no row shape of "
                     f"{list(rows.shape)}") for op in ops
                if rows.dims_of(op.results[0].type.shape) is None]
        if rows.length > MAX_ROW:
            bad.append((anchors[0], f"reduces rows of {rows.length} elements; the GPU row "
                                    f"kernel holds at most {MAX_ROW}"))
        return bad
    shape = ops[-1].results[0].type.shape
    return [(op, f"has shape {list(op.results[0].type.shape)}, not its group's {list(shape)}")
            for op in ops if op.results[0].type.shape != shape]


def check_supported(func: Func) -> None:
    """Raise one `UnsupportedOpError` naming every op the GPU target cannot lower."""
    found = DiagnosticList()
    for op in func.ops:
        if op.isa(Fused):
            where = _group_label(op)
            for inner, reason in _group_problems(op):
                found.add(Diagnostic(f"{reason} (in fused group {where})", op_name=inner.name,
                                     loc=inner.loc if inner.loc.known else op.loc))
            continue
        why = _op_problem(op)
        if why is None and family(op) == "rows":
            why = next((w for _, w in _shape_problems([op], "rows")), None)
        if why is not None:
            found.add(Diagnostic(why, op_name=op.name, loc=op.loc))
    count = len(found.items)
    found.raise_if_any(UnsupportedOpError,
                       f"gpu target: {count} op(s) cannot be lowered to Triton kernels")


def _group_label(fused: Op) -> str:
    assert isinstance(fused.kind, Fused)
    names = ", ".join(f"%{r.name}" for r in fused.results if r.name) or "<unnamed>"
    return f"{names} = {fused.kind.kind} '{fused.kind.pattern}'"

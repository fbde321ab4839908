"""What `fuse` may put together: the op roles (anchor, elementwise, reduction) and shape rules.

It lives in `kiln.ir` because it describes ops, not a transformation: the `fuse` pass groups by
these roles and the code generators emit a group's loops from the same rules.

Roles are tables keyed by op class, so a new op joins fusion by adding it to a tuple here:

- **epilogue anchors** (conv1d, conv2d, conv_transpose2d, linear, matmul): the expensive op an
  epilogue group is built around; its elementwise consumers run on the tile it just computed.
- **reductions** (softmax, log_softmax, layer_norm, reduce_*): each works on *rows* of its input
  (the reduced axes). A reduction group computes rows; every member either reduces the same rows
  of the same shape, or is elementwise at the full shape or at the per-row shape.
- **elementwise**: unary math and activations, broadcasting binary ops, cast, `expand` (an
  explicit broadcast) and inference `batch_norm` (a per-channel scale and shift). Their result
  element i depends only on element i of the (broadcast) inputs, so any chain of them can run
  in one loop over the output.

Ops outside these tables (pooling, reshapes, transposes, concat, quantization) never fuse.
"""

from __future__ import annotations

from dataclasses import dataclass

from kiln.ir.graph import Op
from kiln.ir.ops.base import OpDef
from kiln.ir.ops.core import Cast
from kiln.ir.ops.elementwise import BinaryOp, UnaryOp
from kiln.ir.ops.nn_conv import Conv1d, Conv2d, ConvTranspose2d, Linear, MatMul
from kiln.ir.ops.nn_norm import BatchNorm, LayerNorm, LogSoftmax, Softmax
from kiln.ir.ops.reduce import ReduceBase
from kiln.ir.ops.shape import Expand
from kiln.ir.types import TensorType

EPILOGUE_ANCHORS: tuple[type[OpDef], ...] = (Conv1d, Conv2d, ConvTranspose2d, Linear, MatMul)
REDUCTIONS: tuple[type[OpDef], ...] = (Softmax, LogSoftmax, LayerNorm, ReduceBase)
ELEMENTWISE: tuple[type[OpDef], ...] = (UnaryOp, BinaryOp, Cast, Expand, BatchNorm)


def short_name(op: Op) -> str:
    """`conv2d` for `kiln.conv2d`: how ops are named in patterns and in the pass options."""
    return op.name.removeprefix("kiln.")


def is_epilogue_anchor(op: Op) -> bool:
    return op.isa(EPILOGUE_ANCHORS) and len(op.results) == 1


def is_reduction(op: Op) -> bool:
    return op.isa(REDUCTIONS) and len(op.results) == 1


def is_elementwise(op: Op) -> bool:
    return op.isa(ELEMENTWISE) and len(op.results) == 1 and op.region is None


def result_shape(op: Op) -> tuple[int, ...]:
    return op.results[0].type.shape


@dataclass(frozen=True)
class Rows:
    """The rows a reduction works on: input `shape` reduced over `axes` (sorted, normalized)."""

    shape: tuple[int, ...]
    axes: tuple[int, ...]

    def member_shapes(self) -> frozenset[tuple[int, ...]]:
        """Shapes an elementwise member may have: full, per-row kept dims, per-row dropped."""
        kept = tuple(1 if i in self.axes else d for i, d in enumerate(self.shape))
        dropped = tuple(d for i, d in enumerate(self.shape) if i not in self.axes)
        return frozenset({self.shape, kept, dropped})


def rows_of(op: Op) -> Rows | None:
    """The rows `op` reduces, or None when it is not a reduction."""
    if not is_reduction(op):
        return None
    x: TensorType = op.operands[0].type
    kind = op.kind
    if isinstance(kind, ReduceBase):
        axes = tuple(sorted(a % x.rank for a in kind.axes))
    elif isinstance(kind, (Softmax, LogSoftmax)):
        axes = (kind.axis % x.rank,)
    elif isinstance(kind, LayerNorm):
        axes = tuple(range(x.rank - kind.normalized_ndim, x.rank))
    else:
        return None
    return Rows(x.shape, axes)


ANCHOR_NAMES: frozenset[str] = frozenset(
    {"conv1d", "conv2d", "conv_transpose2d", "linear", "matmul", "softmax", "log_softmax",
     "layer_norm", "reduce_sum", "reduce_mean", "reduce_max", "reduce_min"})
"""Every op name the `anchors` option of `fuse` accepts."""

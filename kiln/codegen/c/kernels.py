"""The C backend's op table: op class → kernel emitter, or a reason it has none.

Target knowledge lives here, keyed by op class (DESIGN.md), never in the ops. Every registered
op is in exactly one of: `KERNELS` (emits a kernel), `ALIASES` (a view of its operand: no code),
`STRUCTURAL` (weights, constants, returns: handled by the emitter itself) or `REJECTED` (with
the reason shown to the user). `tests/unit/test_codegen_c.py` checks that nothing is missing,
and `unsupported` lists every op of a module the backend cannot compile, with its source line,
before any C is written.
"""

from __future__ import annotations

from collections.abc import Callable

from kiln.codegen.c.context import KernelContext
from kiln.codegen.c.emit_eltwise import emit_pointwise
from kiln.codegen.c.emit_fused import emit_fused
from kiln.codegen.c.emit_gemm import emit_gemm_op
from kiln.codegen.c.emit_pool import emit_pool
from kiln.codegen.c.emit_qlut import QELTWISE_KERNELS, qeltwise_problem
from kiln.codegen.c.emit_qmatmul import QMATMUL_KERNELS, qmatmul_problem
from kiln.codegen.c.emit_qmove import QMOVE_OPS, or_qmove, qmove_problem
from kiln.codegen.c.emit_qnn import (
    QNN_KERNELS,
    emit_qmax_pool,
    int8_or,
    int8_problem,
    is_int8,
)
from kiln.codegen.c.emit_rows import emit_lrn, emit_row_op
from kiln.codegen.c.emit_shape import emit_concat, emit_pad, emit_slice, emit_split, emit_transpose
from kiln.codegen.c.expr import _FIXED, _PARAMETRIC
from kiln.errors import Diagnostic, UnsupportedOpError
from kiln.ir.graph import Module, Op
from kiln.ir.ops import fixed_norm, layout, lut
from kiln.ir.ops.base import OpDef, all_ops
from kiln.ir.ops.core import Cast, Constant, Return, Weight, Yield
from kiln.ir.ops.fused import Fused
from kiln.ir.ops.nn_conv import Conv1d, Conv2d, ConvTranspose2d, Linear, MatMul
from kiln.ir.ops.nn_norm import LayerNorm, LocalResponseNorm, LogSoftmax, Softmax
from kiln.ir.ops.nn_pool import (
    AdaptiveAvgPool1d,
    AdaptiveAvgPool2d,
    AvgPool1d,
    AvgPool2d,
    MaxPool1d,
    MaxPool2d,
)
from kiln.ir.ops.reduce import ReduceMax, ReduceMean, ReduceMin, ReduceSum
from kiln.ir.ops.shape import (
    Concat,
    Dropout,
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
from kiln.ir.types import F32, QuantType

Emitter = Callable[[KernelContext], None]

KERNELS: dict[type[OpDef], Emitter] = {
    **{cls: emit_pointwise for cls in (*_FIXED, *_PARAMETRIC) if cls is not Cast},
    Conv1d: emit_gemm_op, Conv2d: emit_gemm_op, ConvTranspose2d: emit_gemm_op,
    Linear: emit_gemm_op, MatMul: emit_gemm_op,
    Softmax: emit_row_op, LogSoftmax: emit_row_op, LayerNorm: emit_row_op,
    ReduceSum: emit_row_op, ReduceMean: emit_row_op, ReduceMax: emit_row_op,
    ReduceMin: emit_row_op, LocalResponseNorm: emit_lrn,
    MaxPool1d: int8_or(emit_pool, emit_qmax_pool), MaxPool2d: int8_or(emit_pool, emit_qmax_pool),
    AvgPool1d: emit_pool, AvgPool2d: emit_pool,
    AdaptiveAvgPool1d: emit_pool, AdaptiveAvgPool2d: emit_pool,
    Transpose: or_qmove(emit_transpose), Slice: or_qmove(emit_slice),
    Concat: or_qmove(emit_concat), Split: or_qmove(emit_split),
    Pad: emit_pad, Fused: emit_fused, **QNN_KERNELS, **QMATMUL_KERNELS, **QELTWISE_KERNELS,
}

ALIASES: tuple[type[OpDef], ...] = (Reshape, Flatten, Squeeze, Unsqueeze, Identity, Dropout,
                                    Cast)
"""Ops whose result is their operand's bytes (Cast only f32 → f32: other dtypes are refused)."""

STRUCTURAL: tuple[type[OpDef], ...] = (Weight, Constant, Return, Yield)

_NHWC = ("the cpu target computes convolutions and pools in NCHW; leave the layout pass out "
         "of the pipeline (or run layout{to=nchw})")
_INT8 = ("this int8 op has no kernel for the cpu target yet (quantize, dequantize, qconv1d/2d, "
         "qlinear, qmatmul, qadd, qmul, qlut, qrescale, qreduce_mean, int8 max pooling and int8 "
         "transpose/slice/concat/split do)")
INT8_FAMILIES = ("kiln.ir.ops.quant", "kiln.ir.ops.qnn", "kiln.ir.ops.qnn_pool",
                 "kiln.ir.ops.sparse")
"""Op families (modules) of quantized and sparse ops: refused until their kernels exist."""
REJECTED: dict[type[OpDef], str] = {
    layout.Conv2dNhwc: _NHWC, layout.MaxPool2dNhwc: _NHWC, layout.AvgPool2dNhwc: _NHWC,
    layout.AdaptiveAvgPool2dNhwc: _NHWC,
    **{cls: "a fixed-point FPGA activation (kiln.ir.ops.lut): compile for target='fpga', or "
            "leave the fixed-activations pass out" for cls in (lut.FixedActivation,
                                                               lut.LutSoftmax)},
    **{cls: "a fixed-point FPGA op (kiln.ir.ops.fixed_norm): compile for target='fpga', or "
            "leave the fixed-transformer pass out" for cls in (fixed_norm.FixedLayerNorm,
                                                               fixed_norm.FixedGelu)},
    **{cls: _INT8 for cls in all_ops().values()
       if cls.__module__ in INT8_FAMILIES and cls not in QNN_KERNELS
       and cls not in QMATMUL_KERNELS},
}
INT8_CAPABLE: tuple[type[OpDef], ...] = (*QNN_KERNELS, *QMATMUL_KERNELS, *QMOVE_OPS, MaxPool1d,
                                         MaxPool2d, *QELTWISE_KERNELS)
"""Ops with a kernel for 8-bit quantized operands (`emit_qnn.int8_problem` says which)."""
INT8_PROBLEMS: dict[type[OpDef], Callable[[Op], str | None]] = {
    **{cls: qmatmul_problem for cls in QMATMUL_KERNELS},
    **{cls: qmove_problem for cls in QMOVE_OPS},
    **{cls: qeltwise_problem for cls in QELTWISE_KERNELS}}
"""The int8 ops whose support `emit_qmatmul` / `emit_qmove` check (not `int8_problem`)."""


def kernel_for(op: Op) -> Emitter:
    return KERNELS[type(op.kind)]


def _diagnose(op: Op) -> Diagnostic | None:
    cls = type(op.kind)
    if cls in REJECTED:
        return op.diagnostic("has no C kernel", hint=REJECTED[cls])
    if cls not in KERNELS and not issubclass(cls, (*ALIASES, *STRUCTURAL)):
        return op.diagnostic("has no C kernel", hint="no emitter is registered for it in "
                             "kiln/codegen/c/kernels.py")
    if issubclass(cls, INT8_CAPABLE) and any(
            isinstance(v.type.dtype, QuantType) for v in (*op.operands, *op.results)):
        problem = INT8_PROBLEMS.get(cls, int8_problem)(op)
        return None if problem is None else op.diagnostic("has no int8 C kernel", hint=problem)
    if issubclass(cls, STRUCTURAL) and cls is not Return:
        return None
    if cls is Return and all(is_int8(v) and v.producer is not None and issubclass(
            type(v.producer.kind), INT8_CAPABLE) for v in op.operands):
        return None  # quantized outputs are diagnosed at their producer
    quant_view = issubclass(cls, (Reshape, Flatten, Squeeze, Unsqueeze, Identity, Dropout))
    for value in (*op.operands, *op.results):
        if quant_view and is_int8(value):
            continue
        # A sparse encoding is metadata over dense data: any kernel may read it densely,
        # and linear/conv pick sparse kernels by cost (emit_sparse.py).
        if value.type.dtype != F32:
            return op.diagnostic(f"works on {value.type}; the cpu target computes float32 "
                                 "tensors only", hint=_INT8)
    return None


def unsupported(module: Module) -> list[Diagnostic]:
    """One diagnostic per op of the entry function (regions included) without a C kernel."""
    found = []
    for op in module.main.walk():
        diagnostic = _diagnose(op)
        if diagnostic is not None:
            found.append(diagnostic)
    return found


def check_supported(module: Module) -> None:
    """Raise `UnsupportedOpError` naming every op the C backend cannot compile."""
    found = unsupported(module)
    if found:
        count = f"{len(found)} op{'s' if len(found) > 1 else ''}"
        raise UnsupportedOpError(diagnostics=[
            Diagnostic(f"{count} of @{module.name} cannot be compiled for the cpu target"),
            *found])

"""Post-training int8 quantization with an integer-only lowering: the `quantize` pass.

    kiln.run_passes(module, "fold-batchnorm,quantize{observer=percentile},dce",
                    calibration_data=batches)

**1. Calibration** (`calibrate.py`): the float module runs in the reference interpreter over
the calibration batches (`PassContext.calibration_data`: input tuples, or arrays for one-input
models); an observer callback records each value's range and samples, and the chosen observer
(`minmax`, `percentile`, `entropy` = TensorRT's KL calibration over 2048 bins, `mse`) picks
its clipping range. Activations become per-tensor affine types — asymmetric by default, in
int8 or uint8 (`dtype`), or symmetric (`symmetric=true`); weights are symmetric int8 per output
channel (`per-channel=true`, axis 0) or per tensor, from their min/max.

**2. Integer lowering** (`quantize_lower.py`, `quantize_layers.py`): conv1d/conv2d/linear/
matmul and the add of two activations, with a relu/relu6/clamp epilogue, become `kiln.q*` ops
(`kiln/ir/ops/qnn.py`): int8 operands, int32 accumulators and int32 bias, then the fixed-point
requantization `(acc · M + 2^(t-1)) >> t`, + zero point, clamp (`kiln/ir/requant.py` states the
arithmetic bit for bit). Shape ops and max pooling run on the integers, average pools and means
become integer averages, unary functions (hardswish, sigmoid, gelu, ...) become 256-entry
`kiln.qlut` tables and products of activations `kiln.qmul` (`quantize_eltwise.py`), and other
ops (softmax, layer_norm, ...) stay float behind a dequantize / quantize boundary. Ops named
in `keep-float` (op names such as `conv2d` or `kiln.linear`, result names, or module paths)
stay float; so does every layer whose own
relative RMS error on the first calibration batch exceeds `max-error` (when given).
The result quantizes the inputs, computes in integers, and dequantizes the outputs; the
interpreter runs it, and a C or HLS kernel can reproduce it bit for bit.

**3. Reporting**: the pass logs one line per layer (`kiln.passes` logger, INFO) with its
integer op, or why it stays float, and its SQNR / relative error; statistics count
`layers-quantized`, `layers-kept-float` and the integer ops. `quantize_module` returns the
same as a `QuantReport` for benchmarks.

Quantize before `fuse`: the ops inside `kiln.fused` regions are not lowered (a warning says
so). Recommended: `canonicalize,fold-batchnorm,fold-constants,cse,quantize,fuse,cse,dce`.

**Already quantized**: a module that already holds `kiln.q*` ops is left alone (a log line
and the statistic `already-quantized`: nothing is quantized twice). A module with
quantize/dequantize pairs but no integer ops (an imported ONNX QDQ or PyTorch fake-quant
model) is folded into integer ops by `fold-qdq` instead, without calibration.

**Bad input** raises `KilnError` naming the pass and the option: no calibration data, an empty
data set, arrays of the wrong shape, an unknown observer or dtype.
"""

from __future__ import annotations

from typing import Any, Literal

from kiln.ir.graph import Module
from kiln.ir.interpret import interpret
from kiln.ir.ops.fused import Fused
from kiln.ir.ops.qnn import QNN_OPS
from kiln.ir.ops.qnn_eltwise import QELTWISE_OPS
from kiln.ir.ops.qnn_pool import QAvgPool1d, QAvgPool2d, QReduceMean
from kiln.ir.ops.quant import Dequantize, Quantize
from kiln.ir.types import QuantType
from kiln.passes.calibrate import calibration_batches, collect_statistics
from kiln.passes.dce import dce
from kiln.passes.fold_qdq import fold_qdq_module
from kiln.passes.quantize_lower import Lowering, QuantReport, error_of
from kiln.passes.quantize_options import QuantOptions
from kiln.passes.registry import PassContext, register_pass

INTEGER_OPS = (*QNN_OPS, QAvgPool1d, QAvgPool2d, QReduceMean, *QELTWISE_OPS)


def is_quantized(module: Module) -> bool:
    """True when the module already computes with integer `kiln.q*` ops."""
    return any(isinstance(op.kind, INTEGER_OPS) for op in module.walk())


def has_qdq(module: Module) -> bool:
    """True when the module quantizes / dequantizes affine q<> tensors (a QDQ model)."""
    return any(isinstance(op.kind, (Quantize, Dequantize))
               and any(isinstance(v.type.dtype, QuantType) for v in (*op.operands, *op.results))
               for op in module.walk())


def quantize_module(module: Module, calibration_data: Any,
                    options: QuantOptions | None = None) -> QuantReport:
    """Calibrate and lower `module` in place (module docstring); returns the per-layer report."""
    options = options or QuantOptions()
    batches = calibration_batches(calibration_data, module.main)
    stats = collect_statistics(module, batches)
    lowering = Lowering(module, stats, options)
    report = lowering.run()
    dce(module, PassContext("dce"))
    outs = interpret(module, *batches[0])
    for value, out in zip(module.main.outputs, outs):
        entry = lowering.stats_of(value)
        if entry is not None and entry.first is not None and out.dtype.kind == "f":
            report.output_sqnr_db.append(error_of(out, entry.first)[0])
    return report


@register_pass("quantize")
def quantize(module: Module, ctx: PassContext, *,
             dtype: Literal["int8", "uint8"] = "int8", per_channel: bool = True,
             symmetric: bool = False,
             observer: Literal["minmax", "percentile", "entropy", "mse"] = "minmax",
             percentile: float = 99.99, keep_float: tuple[str, ...] = (),
             max_error: float | None = None) -> bool:
    """Post-training int8 quantization: calibrate, then lower to integer-only kiln.q* ops."""
    if is_quantized(module):
        ctx.logger.info("quantize: the module already has integer ops; nothing to do")
        ctx.count("already-quantized")
        return False
    if has_qdq(module):
        folded = fold_qdq_module(module)
        ctx.logger.info("quantize: folded %d quantize/dequantize pattern(s) into integer ops",
                        folded)
        ctx.count("qdq-folded", folded)
        return folded > 0
    fused = sum(isinstance(op.kind, Fused) for op in module.walk())
    if fused:
        ctx.logger.warning("quantize: %d fused group(s) stay float; run quantize before fuse",
                           fused)
    options = QuantOptions(dtype=dtype, per_channel=per_channel, symmetric=symmetric,
                           observer=observer, percentile=percentile, keep_float=keep_float,
                           max_error=max_error)
    report = quantize_module(module, ctx.calibration_data, options)
    for layer in report.layers:
        ctx.logger.info("quantize: %s", layer.describe())
    for i, sqnr in enumerate(report.output_sqnr_db):
        ctx.logger.info("quantize: output %d SQNR %.1f dB on the first calibration batch",
                        i, sqnr)
    ctx.count("layers-quantized", len(report.quantized))
    ctx.count("layers-kept-float", len(report.kept_float))
    ctx.count("integer-ops", sum(isinstance(op.kind, INTEGER_OPS) for op in module.walk()))
    return True


__all__ = ["INTEGER_OPS", "QuantOptions", "QuantReport", "has_qdq", "is_quantized",
           "quantize", "quantize_module"]

"""The report's numerics: output error vs the source model, per-layer SQNR, accuracy.

Output error compares what the *target* computes (the artifact run on the example inputs)
with the source model: PyTorch's outputs when the model came from PyTorch, else the
interpreter on the IR as the frontend made it.

Per-layer SQNR applies to quantized or fixed-point IR (an FPGA/ASIC fixed-point module, a CPU
int8 pipeline): the interpreter runs that IR and a float reference of the same graph on the
example inputs, and the values of the same name (`conv1`, `relu1`) are compared after
dequantizing. The float reference is the optimized float IR when the quantization happened
in the target's build (FPGA, ASIC), or the source IR run through the pipeline without its
quantization steps (so batch-norm folding, for instance, still matches layer for layer).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from kiln.errors import KilnError
from kiln.ir.fixed import dequantize_affine, fixed_to_float
from kiln.ir.graph import Module, Value
from kiln.ir.interpret import interpret, interpret_all, to_numpy
from kiln.ir.ops.core import Weight
from kiln.ir.types import FixedType, QuantType

if TYPE_CHECKING:
    from kiln.compiler.driver import CompiledModel

QUANT_PASSES = frozenset({"quantize", "calibrate", "fixed-point", "fold-qdq"})
"""Pipeline steps left out when the float reference of a quantized pipeline is rebuilt."""


def is_reduced(module: Module) -> bool:
    """Whether any value of `module` is fixed-point or affine-quantized."""
    return any(isinstance(r.type.dtype, (FixedType, QuantType))
               for op in module.walk() for r in op.results)


def to_real(value: np.ndarray, dtype: object) -> np.ndarray:
    """A tensor's real values: fixed-point raws and quantized integers dequantized."""
    if isinstance(dtype, FixedType):
        return fixed_to_float(value, dtype)
    if isinstance(dtype, QuantType):
        return dequantize_affine(value, dtype, np.float64)
    return np.asarray(value, dtype=np.float64)


def sqnr_db(reference: np.ndarray, got: np.ndarray) -> float | None:
    """10·log10(signal power / error power); None when the two are identical."""
    noise = float(np.sum((reference - got) ** 2))
    if noise == 0.0:
        return None
    signal = float(np.sum(reference ** 2))
    return round(10.0 * math.log10(max(signal, 1e-300) / noise), 3)


def compared_module(art: CompiledModel) -> Module:
    """The IR the target computes: the artifact's own module when it made one (fixed point)."""
    module = getattr(art.artifact, "module", None)
    return module if isinstance(module, Module) else art.ir


def float_reference(art: CompiledModel) -> Module | None:
    """The float twin of the compiled IR (module docstring); None when none can be built."""
    if not is_reduced(art.ir):
        return art.ir
    if art.source_ir is None:
        return None
    from kiln.compiler.pass_manager import run_passes
    from kiln.compiler.pipeline import parse_pipeline

    steps = [str(s) for s in parse_pipeline(art.pipeline) if s.name not in QUANT_PASSES]
    return run_passes(art.source_ir, ",".join(steps), reproducer=False)


def named_values(values: dict[Value, np.ndarray]) -> dict[str, tuple[Value, np.ndarray]]:
    return {v.name: (v, a) for v, a in values.items()
            if v.name and not (v.producer is not None and isinstance(v.producer.kind, Weight))}


def per_layer_sqnr(art: CompiledModel, inputs: Sequence[np.ndarray]) -> dict[str, float | None]:
    """Layer name → SQNR (dB) of the quantized IR vs its float reference; {} for float IR."""
    compared = compared_module(art)
    if not inputs or not is_reduced(compared):
        return {}
    reference = float_reference(art)
    if reference is None:
        return {}
    want = named_values(interpret_all(reference, *inputs))
    got = named_values(interpret_all(compared, *inputs))
    out: dict[str, float | None] = {}
    for name, (value, array) in got.items():
        if name not in want or want[name][0].type.shape != value.type.shape:
            continue
        ref_value, ref_array = want[name]
        out[name] = sqnr_db(to_real(ref_array, ref_value.type.dtype),
                            to_real(array, value.type.dtype))
    return out


def output_errors(got: Sequence[np.ndarray],
                  want: Sequence[np.ndarray]) -> tuple[float | None, float | None]:
    """max |got - want| and max |got - want| / max |want| over all outputs."""
    if not got:
        return None, None
    abs_err = rel_err = 0.0
    for g, w in zip(got, want):
        g64, w64 = np.asarray(g, np.float64), np.asarray(w, np.float64)
        if w64.size == 0:
            continue
        diff = float(np.max(np.abs(g64 - w64)))
        abs_err = max(abs_err, diff)
        rel_err = max(rel_err, diff / max(float(np.max(np.abs(w64))), 1e-12))
    return abs_err, rel_err


def source_outputs(art: CompiledModel, inputs: Sequence[np.ndarray]) -> tuple[str, list[Any]]:
    """What the outputs are compared with, and those outputs."""
    if art.source_outputs is not None:
        return "pytorch", list(art.source_outputs)
    if art.source_ir is not None and inputs:
        return "kiln interpreter on the source IR", interpret(art.source_ir, *inputs)
    return "none", []


def _pair(eval_data: Any) -> tuple[np.ndarray, np.ndarray]:
    if not (isinstance(eval_data, (tuple, list)) and len(eval_data) == 2):
        raise KilnError("eval_data must be a pair (x, y)",
                        hint="pass eval_data=(inputs [N, ...], labels [N] or targets [N, ...])")
    x, y = (to_numpy(a) for a in eval_data)
    if len(x) != len(y) or len(x) == 0:
        raise KilnError(f"eval_data has {len(x)} inputs and {len(y)} labels",
                        hint="give as many labels as inputs (at least one)")
    return x, y


def _predict(run: Any, module: Module, x: np.ndarray) -> np.ndarray:
    """Outputs for every sample, in batches of the compiled batch size (padding the last)."""
    arg = module.main.args[0].type
    batch = arg.shape[0] if arg.shape else 1
    outs = []
    for start in range(0, len(x), batch):
        chunk = x[start:start + batch].astype(arg.numpy_dtype)
        short = batch - len(chunk)
        if short:
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], short, axis=0)])
        outs.append(np.asarray(run(chunk)[0])[:batch - short])
    return np.concatenate(outs)


def _score(pred: np.ndarray, y: np.ndarray) -> dict[str, float]:
    if y.ndim == 1 and np.issubdtype(y.dtype, np.integer):
        return {"top1": float(np.mean(np.argmax(pred.reshape(len(y), -1), axis=-1) == y))}
    diff = pred.astype(np.float64).reshape(y.shape) - y.astype(np.float64)
    return {"mse": float(np.mean(diff ** 2)), "max_abs_error": float(np.max(np.abs(diff)))}


def accuracy(art: CompiledModel, eval_data: Any) -> dict[str, Any]:
    """Top-1 accuracy (integer labels) or MSE (float targets) of the compiled model, and of
    the source IR on the interpreter for comparison."""
    x, y = _pair(eval_data)
    result: dict[str, Any] = {"samples": len(y),
                              **_score(_predict(art.artifact.run, art.ir, x), y)}
    if art.source_ir is not None:
        source = art.source_ir
        ref = _score(_predict(lambda c: interpret(source, c), source, x), y)
        result.update({f"source_{k}": v for k, v in ref.items()})
    return result

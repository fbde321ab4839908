"""fp16 range check: warn, naming the tensor, when a value would not fit in float16.

A model compiled with `dtype="fp16"` stores every weight and every tensor between kernels in
float16, whose largest finite value is 65504. Values inside a kernel stay fp32 (a conv's output
before its fused ReLU never touches memory), so what must fit is exactly: parameters, inputs
and every top-level value of the optimized IR. Parameters are checked directly; activations by
running the reference interpreter on the example inputs (or, without any, on random normal
inputs). Each offending tensor gets one `warnings.warn` with category `PrecisionWarning`, so
callers can filter it or turn it into an error; compilation goes on (the values overflow to
inf at run time).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np

from kiln.ir.graph import Module, Value
from kiln.ir.interpret import interpret_all, sample_inputs, to_numpy
from kiln.ir.ops.core import Constant, Weight

FP16_MAX = 65504.0


class PrecisionWarning(UserWarning):
    """A tensor's values do not fit the requested storage dtype."""


def _peak(array: np.ndarray) -> float:
    arr = np.asarray(array)
    if arr.size == 0 or arr.dtype.kind != "f":
        return 0.0
    return float(np.max(np.abs(arr.astype(np.float64))))


def _label(value: Value, what: str) -> str:
    producer = value.producer
    where = producer.loc.describe() if producer is not None else ""
    return f"{what} %{value.name or '?'}" + (f" ({where})" if where else "")


def fp16_problems(module: Module, samples: Sequence[Sequence[object]]) -> dict[str, float]:
    """Tensor description → largest magnitude, for every tensor beyond the fp16 range."""
    func = module.main
    peaks: dict[str, float] = {}
    for op in func.ops:
        if isinstance(op.kind, Weight) and op.kind.name in module.weights:
            peaks[f"weight @{op.kind.name}"] = _peak(module.weights[op.kind.name])
        elif isinstance(op.kind, Constant):
            peaks[_label(op.results[0], "constant")] = _peak(op.kind.value.array)
    runs: list[Sequence[object]] = [list(s) for s in samples] or [sample_inputs(func, seed=0)]
    for inputs in runs:
        arrays = [to_numpy(x) for x in inputs]
        for arg, array in zip(func.args, arrays):
            key = f"input %{arg.name or '?'}"
            peaks[key] = max(peaks.get(key, 0.0), _peak(array))
        for value, array in interpret_all(module, *arrays).items():
            producer = value.producer
            if producer is None or producer.isa((Weight, Constant)):
                continue
            key = _label(value, "value")
            peaks[key] = max(peaks.get(key, 0.0), _peak(array))
    return {k: v for k, v in peaks.items() if v > FP16_MAX}


def warn_fp16_range(module: Module, samples: Sequence[Sequence[object]]) -> None:
    """One `PrecisionWarning` per tensor beyond ±65504 (see the module docstring)."""
    for what, peak in fp16_problems(module, samples).items():
        warnings.warn(f"dtype='fp16': {what} reaches {peak:.6g}, beyond the float16 range "
                      f"(±{FP16_MAX:g}); it will overflow to inf", PrecisionWarning,
                      stacklevel=4)

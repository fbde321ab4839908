"""Per-tensor report of a fixed-point module: range, bits, overflow rate and SQNR.

`fixed_point_report(module, calibration_data)` runs the module that `fixed-point` produced on
the calibration batches and looks at every precision decision it holds:

- each `kiln.quantize` (the inputs, and the outputs of ops that stayed float) and each
  `kiln.requantize` (a layer's exact result narrowed to its chosen type) gives one row of kind
  `input` / `activation`: the exact values entering the conversion (floats, or the exact raws
  of the wider type) against what comes out;
- each fixed-point weight gives one row of kind `weight`; its float original is known only when
  the float module is passed as `reference` (matched by name: `<name>.fixed` ↔ `<name>`).

Row fields: `name` (the value or weight name), `kind`, `type` (text), `width`, `integer`,
`frac` (bits), `source` (the exact type converted from, for activations), `min`, `max` (of the
exact values), `overflow_rate` (fraction of the exact values outside the type's range: those
that saturate or wrap), `sqnr_db` (10·log10(Σx² / Σ(x − q(x))²) of this one conversion; inf
when exact, None when unknown) and `count` (values seen).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from kiln.ir import fixed
from kiln.ir.graph import Module, Op, Value
from kiln.ir.interpret import interpret
from kiln.ir.ops.core import Weight
from kiln.ir.ops.quant import Quantize, Requantize
from kiln.ir.types import FixedType
from kiln.passes.calibrate import calibration_batches

Row = dict[str, Any]


def _exact(value: Value, array: np.ndarray) -> np.ndarray:
    """Real values (float64) of an array of `value`'s type."""
    dtype = value.type.dtype
    if isinstance(dtype, FixedType):
        return fixed.fixed_to_float(array, dtype, np.float64)
    return np.asarray(array, np.float64)


def sqnr_db(signal: np.ndarray, quantized: np.ndarray) -> float:
    """10·log10(Σx² / Σ(x − q)²): inf when exact, -inf for a zero signal with noise."""
    noise = float(np.sum((signal - quantized) ** 2))
    power = float(np.sum(signal ** 2))
    if noise == 0.0:
        return math.inf
    return 10.0 * math.log10(power / noise) if power > 0 else -math.inf


def _row(name: str, kind: str, t: FixedType, exact: np.ndarray, out: np.ndarray,
         source: str | None) -> Row:
    lo, hi = t.value_range
    flat = exact.reshape(-1)
    return {
        "name": name, "kind": kind, "type": str(t), "width": t.width, "integer": t.integer,
        "frac": t.frac_bits, "source": source,
        "min": float(flat.min()) if flat.size else 0.0,
        "max": float(flat.max()) if flat.size else 0.0,
        "overflow_rate": float(np.mean((flat < lo) | (flat > hi))) if flat.size else 0.0,
        "sqnr_db": sqnr_db(flat, out.reshape(-1)), "count": int(flat.size),
    }


def _conversions(module: Module) -> list[Op]:
    return [op for op in module.main.ops if op.isa((Quantize, Requantize))
            and isinstance(op.result.type.dtype, FixedType)]


def _activation_rows(module: Module, batches: Sequence[tuple[np.ndarray, ...]]) -> list[Row]:
    ops = _conversions(module)
    wanted = {op.operands[0] for op in ops} | {op.result for op in ops}
    seen: dict[Value, list[np.ndarray]] = {v: [] for v in wanted}

    def keep(op: Op, outs: Sequence[np.ndarray]) -> None:
        for value, out in zip(op.results, outs):
            if value in seen:
                seen[value].append(out)

    for batch in batches:
        for arg, x in zip(module.main.args, batch):
            if arg in seen:
                seen[arg].append(np.asarray(x))
        interpret(module, *batch, observer=keep)
    rows = []
    for op in ops:
        src, dst = op.operands[0], op.result
        assert isinstance(dst.type.dtype, FixedType)
        exact = np.concatenate([_exact(src, a).reshape(-1) for a in seen[src]])
        out = np.concatenate([_exact(dst, a).reshape(-1) for a in seen[dst]])
        kind = "input" if src.owner is module.main.body else "activation"
        rows.append(_row(dst.name or op.name, kind, dst.type.dtype, exact, out,
                         str(src.type.dtype)))
    return rows


def _weight_rows(module: Module, reference: Module | None) -> list[Row]:
    rows = []
    for op in module.main.ops:
        t = op.result.type.dtype if op.results else None
        if not (isinstance(op.kind, Weight) and isinstance(t, FixedType)):
            continue
        name = op.kind.name
        raw = module.weights.get(name)
        if raw is None:
            continue
        out = fixed.fixed_to_float(raw, t, np.float64)
        original = None if reference is None else reference.weights.get(
            name.removesuffix(".fixed"))
        row = _row(name, "weight", t, out if original is None else
                   np.asarray(original, np.float64), out, None)
        if original is None:
            row["overflow_rate"], row["sqnr_db"] = None, None
        rows.append(row)
    return rows


def fixed_point_report(module: Module, calibration_data: Any, *,
                       reference: Module | None = None) -> list[Row]:
    """One row per activation conversion and per fixed-point weight (module docstring)."""
    batches = calibration_batches(calibration_data, module.main, "fixed_point_report")
    return _activation_rows(module, batches) + _weight_rows(module, reference)


def format_report(rows: Sequence[Row]) -> str:
    """The rows as an aligned text table (for logs and benchmarks)."""
    lines = [f"{'name':<28} {'kind':<10} {'type':<30} {'range':>23} {'overflow':>9} "
             f"{'SQNR dB':>8}"]
    for r in rows:
        span = f"[{r['min']:.4g}, {r['max']:.4g}]"
        over = "-" if r["overflow_rate"] is None else f"{r['overflow_rate']:.2%}"
        sqnr = "-" if r["sqnr_db"] is None else f"{r['sqnr_db']:.1f}"
        lines.append(f"{r['name']:<28} {r['kind']:<10} {r['type']:<30} {span:>23} "
                     f"{over:>9} {sqnr:>8}")
    return "\n".join(lines)


__all__ = ["fixed_point_report", "format_report", "sqnr_db"]

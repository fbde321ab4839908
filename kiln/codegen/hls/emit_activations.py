"""HLS C++ of the activation layers (`kiln.ir.ops.lut`): tables, per-raw expressions, softmax.

The tables are the op reference's own arrays (`activation_table`, `exp_table`,
`inverse_table`), written as `static const` ROMs next to the weights with the max |error|
against float math that `kiln.ir.ops.lut` computes over the input type's range; the same
figures go into the fpga report (`HlsLayer.table_error`). `activation_expr` is one raw's
result as a C expression, shared by the io_parallel layer function and the io_stream
epilogue (`emit_stream`).
"""

from __future__ import annotations

import math
from typing import Any

from kiln.codegen.writer import CodeWriter
from kiln.ir.ops.lut import (
    TABLED,
    activation_table,
    exp_table,
    index_shift,
    inverse_table,
)
from kiln.ir.types import FixedType

ROUNDING = {"trn": "KILN_TRN", "trn_zero": "KILN_TRN_ZERO", "rnd": "KILN_RND",
            "rnd_zero": "KILN_RND_ZERO", "rnd_min_inf": "KILN_RND_MIN_INF",
            "rnd_inf": "KILN_RND_INF", "rnd_conv": "KILN_RND_CONV"}
SATURATION = {"wrap": "KILN_WRAP", "sat": "KILN_SAT", "sat_zero": "KILN_SAT_ZERO",
              "sat_sym": "KILN_SAT_SYM"}


def _table_type(values: Any) -> str:
    big = max(abs(int(v)) for v in values) if len(values) else 0
    return next(f"int{b}_t" for b in (8, 16, 32, 64) if big < 1 << (b - 1))


def _array(w: CodeWriter, name: str, values: Any, per_line: int = 16) -> None:
    flat = [str(int(v)) for v in values]
    w.line(f"static const {_table_type(values)} {name}[{len(flat)}] = {{")
    for i in range(0, len(flat), per_line):
        w.line("    " + ", ".join(flat[i:i + per_line]) + ",")
    w.line("};")


def _result_args(to: FixedType) -> str:
    return (f"{to.width}, {to.frac_bits}, {str(to.signed).lower()}, "
            f"kiln::{ROUNDING[to.rounding]}, kiln::{SATURATION[to.saturation]}")


def error_text(errors: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.3g} (2^{math.log2(v):.1f})" if v > 0 else f"{k} 0"
                     for k, v in errors.items())


def emit_tables(w: CodeWriter, name: str, kind: Any, t: FixedType,
                errors: dict[str, float]) -> None:
    """The layer's ROMs with their stated error (nothing for the exact hard functions)."""
    w.line(f"// {name}: {getattr(kind, 'function', 'softmax')} {t} -> {kind.to}; max |error| "
           f"vs float over the input range: {error_text(errors)}")
    if getattr(kind, "function", None) in TABLED:
        _array(w, f"{name}_table",
               activation_table(kind.function, kind.table_size, kind.range, kind.to))
    elif not hasattr(kind, "function"):
        _array(w, f"{name}_exp", exp_table(kind.table_size, kind.range, kind.table_bits))
        _array(w, f"{name}_inv", inverse_table(kind.inv_table_size, kind.table_bits))
    w.blank()


def activation_expr(name: str, kind: Any, t: FixedType, var: str) -> str:
    """One raw `var` of `t` through the activation, as a C expression of the result's raw."""
    if kind.function in TABLED:
        shift = index_shift(t, kind.table_size, kind.range)
        return f"(int64_t){name}_table[kiln::lut_index<{kind.table_size}, {shift}>({var})]"
    return f"kiln::{kind.function}_raw<{t.frac_bits}, {_result_args(kind.to)}>({var})"


def softmax_args(name: str, kind: Any, t: FixedType, rows: int, row: int) -> str:
    """Template arguments and operands of `kiln::lut_softmax` (without the arrays in/out)."""
    shift = int(math.log2(kind.table_size)) - int(math.log2(kind.range)) - t.frac_bits
    mbits = int(math.log2(kind.inv_table_size))
    return (f"{rows}, {row}, {kind.table_size}, {shift}, {mbits}, {kind.table_bits}, "
            f"{_result_args(kind.to)}, "
            f"{_table_type(exp_table(kind.table_size, kind.range, kind.table_bits))}, "
            f"{_table_type(inverse_table(kind.inv_table_size, kind.table_bits))}")


__all__ = ["activation_expr", "emit_tables", "error_text", "softmax_args"]

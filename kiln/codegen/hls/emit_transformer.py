"""HLS C++ of the transformer layers (`transformer_kinds`): template calls and tables.

`transformer_call(layer)` is the layer function's body, a call of a `kiln_transformer.h`
template (io_parallel); its arrays' element types are deduced by the C++ compiler, so the
call reads the same whichever raw types the emitter declares. `emit_transformer_tables` writes
the layer norm's 1/sqrt table and the GELU's Φ table (the op references' own arrays,
`kiln.ir.ops.fixed_norm`) next to the weights, with their stated error.
`transformer_headers(lowered)` names the header to ship and include when a model has such
layers (other models' files stay byte-identical).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from kiln.codegen.hls.emit_activations import ROUNDING, SATURATION
from kiln.codegen.hls.layers import HlsLayer, Lowered
from kiln.codegen.hls.transformer_kinds import TRANSFORMER_KINDS
from kiln.codegen.writer import CodeWriter
from kiln.ir.ops.fixed_norm import (
    GELU_TABLE_FRAC,
    NORM_FRAC,
    accumulator_frac,
    center_shift,
    eps_term,
    gelu_error,
    gelu_table,
    rsqrt_error,
    rsqrt_table,
)
from kiln.ir.ops.lut import index_shift
from kiln.ir.types import FixedType

HEADER = "kiln_transformer.h"


def transformer_headers(lowered: Lowered) -> tuple[str, ...]:
    """(`kiln_transformer.h`,) when a layer needs it, else ()."""
    return (HEADER,) if any(la.kind in TRANSFORMER_KINDS for la in lowered.layers) else ()


def _result_args(to: FixedType) -> str:
    return (f"{to.width}, {to.frac_bits}, {str(to.signed).lower()}, "
            f"kiln::{ROUNDING[to.rounding]}, kiln::{SATURATION[to.saturation]}")


def _int_type(values: np.ndarray) -> str:
    big = int(np.max(np.abs(values))) if values.size else 0
    return next(f"int{b}_t" for b in (8, 16, 32, 64) if big < 1 << (b - 1))


def _array(w: CodeWriter, name: str, values: np.ndarray, per_line: int = 16) -> None:
    flat = [str(int(v)) for v in values.reshape(-1)]
    w.line(f"static const {_int_type(values)} {name}[{len(flat)}] = {{")
    for i in range(0, len(flat), per_line):
        w.line("    " + ", ".join(flat[i:i + per_line]) + ",")
    w.line("};")


def _row(layer: HlsLayer) -> int:
    kind: Any = layer.op.kind
    shape = layer.output.shape
    return int(np.prod(shape[len(shape) - kind.normalized_ndim:], dtype=np.int64))


def emit_transformer_tables(w: CodeWriter, layer: HlsLayer) -> None:
    """The layer's lookup table (layer norm: 1/sqrt, GELU: Φ), with its error; else nothing."""
    kind: Any = layer.op.kind
    if layer.kind == "layer_norm":
        w.line(f"// {layer.name}: sqrt({_row(layer)}/m) over m in [1, 4), {NORM_FRAC} fraction "
               f"bits; max relative error of 1/sqrt {rsqrt_error(kind.table_size):.3g}")
        _array(w, f"{layer.name}_rsqrt", rsqrt_table(kind.table_size, _row(layer)))
    elif layer.kind == "gelu":
        error = gelu_error(layer.inputs[0].dtype, kind)
        w.line(f"// {layer.name}: Phi over [-{kind.range:g}, {kind.range:g}), "
               f"{GELU_TABLE_FRAC} fraction bits; max |gelu error| over the input type "
               f"(where the result is in range) {error:.3g}")
        _array(w, f"{layer.name}_phi", gelu_table(kind.table_size, kind.range,
                                                  kind.approximate))
    else:
        return
    w.blank()


def _bias(layer: HlsLayer) -> tuple[str, str]:
    if layer.bias is None:
        return "false", "(const int8_t*)0"
    return "true", f"{layer.name}_b"


def _dense_rows(layer: HlsLayer) -> str:
    assert layer.weight is not None and layer.weight_type is not None
    n_out, n_in = layer.weight.shape
    rows = layer.output.size // n_out
    shift = (layer.output.dtype.frac_bits - layer.inputs[0].dtype.frac_bits
             - layer.weight_type.frac_bits)
    bshift = (layer.output.dtype.frac_bits - layer.bias_type.frac_bits
              if layer.bias_type is not None else 0)
    has_bias, bias = _bias(layer)
    return (f"kiln::dense_rows<{rows}, {n_in}, {n_out}, {shift}, {bshift}, {has_bias}>"
            f"(in0, out, {layer.name}_w, {bias})")


def _matmul(layer: HlsLayer) -> str:
    a, b = layer.inputs
    m, k, n = a.shape[-2], a.shape[-1], b.shape[-1]
    batch = layer.output.size // (m * n)
    shift = layer.output.dtype.frac_bits - a.dtype.frac_bits - b.dtype.frac_bits
    return f"kiln::matmul<{batch}, {m}, {k}, {n}, {shift}>(in0, in1, out)"


def _transpose(layer: HlsLayer) -> str:
    kind: Any = layer.op.kind
    perm = [p - 1 for p in kind.perm[1:]]
    shape = layer.inputs[0].shape
    strides = [int(np.prod(shape[i + 1:], dtype=np.int64)) for i in range(len(shape))]
    pad = 4 - len(perm)
    dims = [1] * pad + [shape[p] for p in perm]
    reads = [0] * pad + [strides[p] for p in perm]
    return f"kiln::transpose<{', '.join(map(str, dims + reads))}>(in0, out)"


def _layer_norm(layer: HlsLayer) -> str:
    kind: Any = layer.op.kind
    assert layer.weight_type is not None and layer.bias_type is not None
    x, g, b = layer.inputs[0].dtype, layer.weight_type, layer.bias_type
    row = _row(layer)
    frac = accumulator_frac(g, b)
    log2n = kind.table_size.bit_length() - 1
    cut = center_shift(x, row)
    args = (f"{layer.output.size // row}, {row}, {cut}, {log2n}, "
            f"{frac - NORM_FRAC - g.frac_bits}, {frac - b.frac_bits}, {frac}, "
            f"{_result_args(kind.to)}")
    eps = eps_term(kind.eps, row, x.frac_bits - cut)
    return (f"kiln::layer_norm<{args}>(in0, out, {layer.name}_w, {layer.name}_b, "
            f"{layer.name}_rsqrt, (int64_t){eps}LL)")


def template_parts(call: str) -> tuple[str, str]:
    """(template arguments, call operands after `in0, out, `) of a template call string:
    the io_stream stages call the same template per beat with the same constants."""
    head, operands = call.split(">(in0, out", 1)
    return head[head.index("<") + 1:], operands[2:-1] if operands.startswith(", ") else ""


def _gelu(layer: HlsLayer) -> str:
    kind: Any = layer.op.kind
    t = layer.inputs[0].dtype
    shift = index_shift(t, kind.table_size, kind.range)
    args = (f"{layer.output.size}, {kind.table_size}, {shift}, "
            f"{t.frac_bits + GELU_TABLE_FRAC}, {_result_args(kind.to)}")
    return f"kiln::gelu<{args}>(in0, out, {layer.name}_phi)"


CALLS = {"dense_rows": _dense_rows, "matmul": _matmul, "transpose": _transpose,
         "scale": lambda la: f"kiln::scale<{la.output.size}>(in0, out, {la.name}_w)",
         "layer_norm": _layer_norm, "gelu": _gelu}


def transformer_call(layer: HlsLayer) -> str:
    """The template call implementing `layer` (module docstring)."""
    return CALLS[layer.kind](layer)


__all__ = ["HEADER", "emit_transformer_tables", "template_parts",
           "transformer_call", "transformer_headers"]

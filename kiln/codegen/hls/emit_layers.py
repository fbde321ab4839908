"""One C++ function per HLS layer: the `kiln_layers.h` template call plus its pragmas.

Each layer function is `static void <name>(const v_a_t in0[N0], ..., v_y_t out[M])`, every
array of its tensor's raw type (`hls_types`: `kiln::raw_t<W, S>`, ap_int under Vitis); a dot
layer accumulates in its output type (kiln's exact accumulator type) with products in a
`<layer>_p_t` typedef written before the function, an average pool sums in `<layer>_sum_t`.
The reuse factor R decides the pragmas as in hls4ml: `PIPELINE II=R` on the layer, weights and
activations partitioned `complete` for R = 1, `cyclic factor=ceil(N/R)` otherwise, so each
multiplier is reused R times; the lookup tables a layer reads get `BIND_STORAGE` pragmas sized
for R (`rom_pragmas`). Weights are emitted by `emit_weights` as const arrays of raw
integers of the weight type's width (`<layer>_w_t`, `<layer>_b_t` typedefs). With
`flavor="asic"` the same function is written without any pragma (see `emitter`).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from kiln.codegen.hls.emit_activations import (
    activation_expr,
    emit_tables,
    error_text,
    softmax_args,
)
from kiln.codegen.hls.emit_transformer import emit_transformer_tables, transformer_call
from kiln.codegen.hls.hls_types import (
    layer_typedefs,
    type_name,
    weight_typedefs,
)
from kiln.codegen.hls.layers import HlsLayer, HlsTensor
from kiln.codegen.hls.rom_pragmas import emit_rom_pragmas
from kiln.codegen.hls.transformer_kinds import TRANSFORMER_KINDS
from kiln.codegen.names import comment
from kiln.codegen.writer import CodeWriter
from kiln.ir import fixed_arith

ROUNDING = {"trn": "KILN_TRN", "trn_zero": "KILN_TRN_ZERO", "rnd": "KILN_RND",
            "rnd_zero": "KILN_RND_ZERO", "rnd_min_inf": "KILN_RND_MIN_INF",
            "rnd_inf": "KILN_RND_INF", "rnd_conv": "KILN_RND_CONV"}
SATURATION = {"wrap": "KILN_WRAP", "sat": "KILN_SAT", "sat_zero": "KILN_SAT_ZERO",
              "sat_sym": "KILN_SAT_SYM"}
BINARY = {"add": "KILN_ADD", "sub": "KILN_SUB", "maximum": "KILN_MAX", "minimum": "KILN_MIN"}


def _array_lines(ctype: str, name: str, values: np.ndarray, per_line: int = 16) -> list[str]:
    flat = [str(int(v)) for v in np.asarray(values).reshape(-1)] or ["0"]
    rows = [", ".join(flat[i:i + per_line]) for i in range(0, len(flat), per_line)]
    return [f"static const {ctype} {name}[{len(flat)}] = {{",
            *(f"    {row}," for row in rows), "};"]


def emit_weights(w: CodeWriter, layer: HlsLayer) -> None:
    """The layer's weights: CSR over the non-zero weights for dense layers, dense otherwise;
    an activation layer's tables with their stated error."""
    emit_transformer_tables(w, layer)
    error = layer.table_error
    if error is not None:
        emit_tables(w, layer.name, layer.op.kind, layer.inputs[0].dtype, error)
        return
    if layer.weight is None or layer.weight_type is None:
        return
    wtype = f"{layer.name}_w_t"
    w.line(f"// {layer.name}: weight {list(layer.weight.shape)} {layer.weight_type}, "
           f"{layer.nonzero_weights} non-zero")
    weight_typedefs(w, layer)
    if layer.kind == "dense":
        rows = layer.weight.reshape(layer.weight.shape[0], -1)
        nz = [np.flatnonzero(r) for r in rows]
        ptr = np.cumsum([0, *(len(i) for i in nz)])
        cols = np.concatenate(nz) if nz else np.zeros(0, np.int64)
        vals = np.concatenate([r[i] for r, i in zip(rows, nz)]) if nz else cols
        w.lines(_array_lines("int", f"{layer.name}_row_ptr", ptr))
        w.lines(_array_lines("int", f"{layer.name}_col", cols))
        w.lines(_array_lines(wtype, f"{layer.name}_w", vals))
    else:
        w.lines(_array_lines(wtype, f"{layer.name}_w", layer.weight))
    if layer.bias is not None and layer.bias_type is not None:
        w.lines(_array_lines(f"{layer.name}_b_t", f"{layer.name}_b", layer.bias))
    w.blank()


def _partition(w: CodeWriter, name: str, size: int, rf: int) -> None:
    if rf <= 1:
        w.raw(f"#pragma HLS ARRAY_PARTITION variable={name} complete")
    else:
        w.raw(f"#pragma HLS ARRAY_PARTITION variable={name} cyclic "
              f"factor={max(1, math.ceil(size / rf))}")


def signature(layer: HlsLayer) -> str:
    params = [f"const {type_name(t)} in{i}[{t.size}]" for i, t in enumerate(layer.inputs)]
    out = f"{type_name(layer.output)} out[{layer.output.size}]"
    return f"static void {layer.name}({', '.join(params)}, {out})"


def emit_layer(w: CodeWriter, layer: HlsLayer, flavor: str = "fpga") -> None:
    """The layer's function (module docstring)."""
    w.line(f"// {layer.kind} {layer.output.dtype} <- {comment(layer.source)}"
           + (f" (reuse factor {layer.reuse_factor})" if layer.weight is not None else ""))
    if layer.table_error:
        w.line(f"// max |error| vs float over the input range: {error_text(layer.table_error)}")
    layer_typedefs(w, layer)
    with w.block(signature(layer)):
        if flavor == "fpga":
            w.raw("#pragma HLS INLINE off")
            w.raw(f"#pragma HLS PIPELINE II={_ii(layer)}")
        if layer.weight is not None and flavor == "fpga":
            _partition(w, f"{layer.name}_w", layer.weight.size, layer.reuse_factor)
        if flavor == "fpga" and layer.io == "parallel":
            emit_rom_pragmas(w, layer, _ii(layer))
        w.line(_call(layer) + ";")
    w.blank()


def _ii(layer: HlsLayer) -> int:
    """The layer's pipeline II: its reuse factor, capped at the element count for a table
    layer (more cycles than reads share nothing; the estimator caps it the same way)."""
    if layer.table_error is not None and layer.weight is None:
        return min(layer.reuse_factor, max(layer.output.size, 1))
    return layer.reuse_factor


def _call(layer: HlsLayer) -> str:
    if layer.kind == "dense":
        return _dense(layer)
    if layer.kind in ("conv1d", "conv2d"):
        return _conv(layer)
    if layer.kind.startswith(("max_pool", "avg_pool")):
        return _pool(layer)
    if layer.kind == "requantize":
        src, dst = layer.inputs[0].dtype, layer.output.dtype
        args = (f"{layer.output.size}, {src.frac_bits}, {dst.width}, {dst.frac_bits}, "
                f"{str(dst.signed).lower()}, kiln::{ROUNDING[dst.rounding]}, "
                f"kiln::{SATURATION[dst.saturation]}")
        return f"kiln::requantize_array<{args}>(in0, out)"
    if layer.kind in ("relu", "clamp"):
        lo, hi = _clamp_bounds(layer)
        return f"kiln::clamp<{layer.output.size}>(in0, out, {lo}, {hi})"
    if layer.kind == "mul":
        n, nb = layer.output.size, layer.inputs[1].size
        return f"kiln::multiply<{n}, {nb}, {n // nb}>(in0, in1, out)"  # out: the exact product
    if layer.kind == "activation":
        expr = activation_expr(layer.name, layer.op.kind, layer.inputs[0].dtype, "in0[i]")
        return f"for (int i = 0; i < {layer.output.size}; i++) out[i] = {expr}"
    if layer.kind == "softmax":
        row = layer.output.shape[-1] if layer.output.shape else 1
        args = softmax_args(layer.name, layer.op.kind, layer.inputs[0].dtype,
                            layer.output.size // row, row)
        return f"kiln::lut_softmax<{args}>(in0, out, {layer.name}_exp, {layer.name}_inv)"
    if layer.kind in BINARY:
        a, b = (t.dtype for t in layer.inputs)
        r = layer.output.dtype
        return (f"kiln::binary<{layer.output.size}, {r.frac_bits - a.frac_bits}, "
                f"{r.frac_bits - b.frac_bits}, kiln::{BINARY[layer.kind]}>(in0, in1, out)")
    if layer.kind in TRANSFORMER_KINDS:
        return transformer_call(layer)
    raise AssertionError(f"no emitter for {layer.kind}")


def _clamp_bounds(layer: HlsLayer) -> tuple[str, str]:
    """Raw bounds within the type's range (an absent bound is the range's end: a no-op)."""
    t = layer.output.dtype
    if layer.kind == "relu":
        return _raw_literal(0), _raw_literal(t.raw_range[1])
    kind: Any = layer.op.kind  # Clamp attributes (relu6: fixed bounds)
    lo, hi = (0.0, 6.0) if layer.op.name == "kiln.relu6" else (kind.min, kind.max)
    ends = np.array(t.raw_range, dtype=np.int64)
    lo_raw, hi_raw = fixed_arith.clamp_raw(ends, t, lo, hi)
    return _raw_literal(int(lo_raw)), _raw_literal(int(hi_raw))


def _raw_literal(v: int) -> str:
    """An int64 literal (INT64_MIN has no literal of its own)."""
    return "INT64_MIN" if v == -(1 << 63) else f"{v}LL"


def _dot_shifts(layer: HlsLayer) -> tuple[int, int]:
    assert layer.weight_type is not None
    acc = layer.output.dtype
    shift = acc.frac_bits - layer.inputs[0].dtype.frac_bits - layer.weight_type.frac_bits
    bshift = acc.frac_bits - layer.bias_type.frac_bits if layer.bias_type is not None else 0
    return shift, bshift


def _bias_args(layer: HlsLayer) -> tuple[str, str]:
    """HAS_BIAS and the bias array (the element type is deduced)."""
    if layer.bias is None or layer.bias_type is None:
        return "false", "(const int8_t*)0"
    return "true", f"{layer.name}_b"


def _dense(layer: HlsLayer) -> str:
    assert layer.weight is not None and layer.weight_type is not None
    shift, bshift = _dot_shifts(layer)
    has_bias, bias = _bias_args(layer)
    n_in, n_out = layer.inputs[0].size, layer.output.size
    return (f"kiln::dense<{n_in}, {n_out}, {layer.nonzero_weights}, {shift}, {bshift}, "
            f"{has_bias}, {layer.name}_p_t>(in0, out, "
            f"{layer.name}_row_ptr, {layer.name}_col, {layer.name}_w, {bias})")


def _spatial(t: HlsTensor) -> tuple[int, int, int]:
    """(C, H, W) of a channels-first tensor; 1-D tensors get H = 1."""
    return (t.shape[0], 1, t.shape[1]) if len(t.shape) == 2 else t.shape  # type: ignore


def _pair(values: tuple[int, ...], one_d: bool, default: int) -> tuple[int, int]:
    return (default, values[0]) if one_d else (values[0], values[1])


def conv_dims(layer: HlsLayer) -> tuple[tuple[int, int, int], tuple[int, ...]]:
    """A conv layer's template geometry: (c, h, w) of its input, then (o, kh, kw, sh, sw, pt,
    pl, dh, dw, groups, oh, ow, shift, bias shift) — conv1d as a 1×W conv2d. Shared by the
    parallel and stream templates (the stream one puts its line-buffer rows in between)."""
    assert layer.weight is not None
    kind: Any = layer.op.kind  # ConvBase attributes
    one_d = layer.kind == "conv1d"
    o, oh, ow = _spatial(layer.output)
    kh, kw = _pair(layer.weight.shape[2:], one_d, 1)
    sh, sw = _pair(kind.stride, one_d, 1)
    pt, pl = _pair(kind.padding, one_d, 0)
    dh, dw = _pair(kind.dilation, one_d, 1)
    shift, bshift = _dot_shifts(layer)
    return _spatial(layer.inputs[0]), (o, kh, kw, sh, sw, pt, pl, dh, dw, kind.groups, oh, ow,
                                       shift, bshift)


def _conv(layer: HlsLayer) -> str:
    assert layer.weight is not None and layer.weight_type is not None
    geometry, rest = conv_dims(layer)
    has_bias, bias = _bias_args(layer)
    dims = (*geometry, *rest)
    return (f"kiln::conv2d<{', '.join(map(str, dims))}, {has_bias}, {layer.name}_p_t>"
            f"(in0, out, {layer.name}_w, {bias})")


def pool_pads(layer: HlsLayer) -> tuple[int, int, int, int]:
    """(top, left, bottom, right) padding of a windowed pool (the IR's begins, then ends;
    1-D pools pad W only); zeros for adaptive pools."""
    kind: Any = layer.op.kind
    padding = tuple(getattr(kind, "padding", ()) or ())
    if not padding:
        return 0, 0, 0, 0
    one_d = layer.kind.endswith("1d")
    nd = len(padding) // 2
    return (*_pair(padding[:nd], one_d, 0), *_pair(padding[nd:], one_d, 0))


def include_pad(layer: HlsLayer) -> str:
    """An average pool's count_include_pad as a C++ bool literal."""
    return str(bool(getattr(layer.op.kind, "count_include_pad", True))).lower()


def _pool(layer: HlsLayer) -> str:
    kind: Any = layer.op.kind  # pool attributes
    one_d = layer.kind.endswith("1d")
    c, h, w = _spatial(layer.inputs[0])
    _, oh, ow = _spatial(layer.output)
    adaptive = "adaptive" in layer.op.name
    kh, kw = (1, 1) if adaptive else _pair(kind.kernel, one_d, 1)
    sh, sw = (1, 1) if adaptive else _pair(kind.stride, one_d, 1)
    pt, pl, pb, pr = pool_pads(layer)
    if layer.kind.startswith("max_pool"):
        dh, dw = _pair(kind.dilation, one_d, 1)
        dims = (c, h, w, kh, kw, sh, sw, pt, pl, dh, dw, oh, ow)
        return f"kiln::max_pool2d<{', '.join(map(str, dims))}>(in0, out)"
    rounding = ROUNDING[layer.output.dtype.rounding]
    avg_dims = (c, h, w, oh, ow, kh, kw, sh, sw, pt, pl, pb, pr)
    return (f"kiln::avg_pool2d<{', '.join(map(str, avg_dims))}, {str(adaptive).lower()}, "
            f"{include_pad(layer)}, kiln::{rounding}, {layer.name}_sum_t>(in0, out)")


__all__ = ["emit_layer", "emit_weights", "include_pad", "pool_pads", "signature"]

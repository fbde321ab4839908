"""HLS C++ for the io_stream architecture (hls4ml's io_stream, FINN's dataflow).

The top function takes one `hls::stream<kiln::pixel<T, C>>` per input and output (AXI-stream
ports, one pixel per beat: `emit_stream_plan` describes the packing; T is the tensor's raw type,
`hls_types`) and runs every stage of
the `StreamPlan` under `#pragma HLS DATAFLOW`, each stage a function over the
`kiln_stream_layers.h` templates, connected by `hls::stream` FIFOs with `#pragma HLS STREAM
depth=` from the plan. Convolutions and pools read pixel by pixel through line buffers; dense
layers gather their input stream; requantize / relu / clamp run fused into the stage before
them (an `_epi` struct per stage, each step into its own tensor's raw type, so a FIFO
carries raws of the layer's precision) or as a pass-through stage; a residual add joins two
streams after a `duplicate` fork. The reuse factor sets each dot layer's `PIPELINE II` and
the weights' `ARRAY_PARTITION` as in io_parallel.

C-simulation (g++) runs the stages one after the other, as Vitis's csim does; `kiln_stream.h`
provides `hls::stream` without Vitis and maps to the vendor `hls_stream.h` under
`__SYNTHESIS__` or `KILN_USE_AP_TYPES`. The `KILN_DATAFLOW_BEGIN` / `KILN_STREAM_DEPTH` /
`KILN_STAGE` markers in the top function are plain calls there; built with
`-DKILN_DATAFLOW_THREADS -pthread` they run every stage in its own thread with FIFOs bounded
at their depths (`kiln_dataflow.h`), which checks that the sized depths cannot deadlock.
The testbench packs the host's channels-first raws into pixels and unpacks the results
(`stream_call`), so `art(x)` and the testbench protocol are those of io_parallel, and the
bits are the same.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from kiln.codegen.hls.emit_activations import activation_expr, softmax_args
from kiln.codegen.hls.emit_layers import (
    BINARY,
    ROUNDING,
    SATURATION,
    _bias_args,
    _clamp_bounds,
    _dot_shifts,
    _pair,
    _partition,
    _spatial,
    conv_dims,
    emit_weights,
    include_pad,
    pool_pads,
)
from kiln.codegen.hls.emit_stream_plan import Edge, Stage, StreamPlan, plan_stream
from kiln.codegen.hls.emit_stream_rows import flat_index, row_call, row_headers
from kiln.codegen.hls.hls_types import layer_typedefs, tensor_typedefs, type_name
from kiln.codegen.hls.layers import HlsLayer, HlsTensor, Lowered
from kiln.codegen.hls.project import TestbenchCall, project_files, reuse_text
from kiln.codegen.names import comment
from kiln.codegen.writer import CodeWriter

if TYPE_CHECKING:
    from kiln.codegen.hls.emitter import HlsOptions

STREAM_HEADERS = ("kiln_fixed.h", "kiln_layers.h", "kiln_stream.h", "kiln_dataflow.h",
                  "kiln_stream_layers.h")


def pixel_type(edge: Edge) -> str:
    assert edge.tensor is not None
    return f"kiln::pixel<{type_name(edge.tensor)}, {edge.layout.lanes}>"


def pixel(edge: Edge) -> str:
    return f"hls::stream<{pixel_type(edge)} >"


def top_signature(name: str, plan: StreamPlan) -> str:
    ports = [f"{pixel(e)}& {e.name}" for e in plan.inputs + plan.outputs]
    return f"void {name}({', '.join(ports)})"


def _epilogue(w: CodeWriter, stage: Stage) -> str:
    """The stage's per-raw epilogue struct (or `kiln::Identity`)."""
    ops = stage.ops()
    if not ops:
        return "kiln::Identity"
    head = ops[0].inputs[0] if stage.kind == "map" else stage.layer
    source: HlsTensor = head if isinstance(head, HlsTensor) else head.output  # type: ignore
    signature = f"static {type_name(ops[-1].output)} apply(const {type_name(source)}& v0)"
    with w.block(f"struct {stage.name}_epi", ";"), w.block(signature):
        for k, layer in enumerate(ops, 1):
            w.line(f"const {type_name(layer.output)} v{k} = {_elementwise(layer, f'v{k - 1}')};"
                   f"  // {layer.kind} {comment(layer.source)}")
        w.line(f"return v{len(ops)};")
    return f"{stage.name}_epi"


def _elementwise(layer: HlsLayer, var: str) -> str:
    """One raw `var` through an elementwise layer, as a C expression."""
    if layer.kind == "activation":
        return activation_expr(layer.name, layer.op.kind, layer.inputs[0].dtype, var)
    if layer.kind == "requantize":
        src, dst = layer.inputs[0].dtype, layer.output.dtype
        return (f"kiln::requantize<{src.frac_bits}, {dst.width}, {dst.frac_bits}, "
                f"{str(dst.signed).lower()}, kiln::{ROUNDING[dst.rounding]}, "
                f"kiln::{SATURATION[dst.saturation]}>({var})")
    lo, hi = _clamp_bounds(layer)
    wide = f"kiln::wide({var})"
    return (f"({type_name(layer.output)})({wide} < {lo} ? {lo} : ({wide} > {hi} ? {hi} : "
            f"{wide}))")


def _conv(stage: Stage, layer: HlsLayer, epi: str, rows: int) -> str:
    assert layer.weight is not None and layer.weight_type is not None
    geometry, rest = conv_dims(layer)
    has_bias, bias = _bias_args(layer)
    dims = (*geometry, rows, *rest)
    return (f"kiln::conv2d_stream<{', '.join(map(str, dims))}, {has_bias}, "
            f"{type_name(layer.output)}, {layer.name}_p_t, {epi}, {layer.reuse_factor}>"
            f"(in0, out, {layer.name}_w, {bias})")


def pool_geometry(layer: HlsLayer) -> tuple[int, ...]:
    """(C, H, W, OH, OW, KH, KW, SH, SW, DH, DW, adaptive) of a pooling layer."""
    kind: Any = layer.op.kind  # pool attributes
    one_d = layer.kind.endswith("1d")
    c, h, w = _spatial(layer.inputs[0])
    _, oh, ow = _spatial(layer.output)
    adaptive = "adaptive" in layer.op.name
    kh, kw = (1, 1) if adaptive else _pair(kind.kernel, one_d, 1)
    sh, sw = (1, 1) if adaptive else _pair(kind.stride, one_d, 1)
    dh, dw = _pair(kind.dilation, one_d, 1) \
        if layer.kind.startswith("max") else (1, 1)
    return c, h, w, oh, ow, kh, kw, sh, sw, dh, dw, int(adaptive)


def is_global_pool(layer: HlsLayer) -> bool:
    """An average pool whose single output pixel covers the whole input (no line buffer)."""
    _, h, w, oh, ow, kh, kw, *_, adaptive = pool_geometry(layer)
    return layer.kind.startswith("avg") and oh == ow == 1 and (bool(adaptive) or (
        (kh, kw) == (h, w) and not any(pool_pads(layer))))


def _pool(layer: HlsLayer, epi: str, rows: int) -> str:
    c, h, w, oh, ow, kh, kw, sh, sw, dh, dw, adaptive = pool_geometry(layer)
    pt, pl, pb, pr = pool_pads(layer)
    if layer.kind.startswith("max"):
        dims = ", ".join(map(str, (c, h, w, rows, kh, kw, sh, sw, pt, pl, dh, dw, oh, ow)))
        return f"kiln::max_pool2d_stream<{dims}, {epi}>(in0, out)"
    rounding = ROUNDING[layer.output.dtype.rounding]
    if is_global_pool(layer):
        return (f"kiln::global_avg_pool_stream<{c}, {h * w}, kiln::{rounding}, "
                f"{layer.name}_sum_t, {epi}>(in0, out)")
    dims = ", ".join(map(str, (c, h, w, rows, oh, ow, kh, kw, sh, sw, pt, pl, pb, pr)))
    return (f"kiln::avg_pool2d_stream<{dims}, {str(bool(adaptive)).lower()}, "
            f"{include_pad(layer)}, kiln::{rounding}, {layer.name}_sum_t, {epi}>(in0, out)")


def window_rows(layer: HlsLayer) -> int:
    """R: the input rows one window spans (the line buffer's height), at most H."""
    if layer.kind.startswith("conv"):
        assert layer.weight is not None
        kind: Any = layer.op.kind
        kh, _ = _pair(layer.weight.shape[2:], layer.kind == "conv1d", 1)
        dh, _ = _pair(kind.dilation, layer.kind == "conv1d", 1)
        return min(_spatial(layer.inputs[0])[1], (kh - 1) * dh + 1)
    _, h, _, oh, _, kh, _, _, _, dh, _, adaptive = pool_geometry(layer)
    if adaptive:
        span = max(-(-(o + 1) * h // oh) - o * h // oh for o in range(oh))
        return min(h, span)
    return min(h, (kh - 1) * dh + 1)


def _call(stage: Stage, epi: str) -> str:
    layer = stage.layer
    row = row_call(stage, epi)
    if row is not None:
        return row
    if stage.kind == "fork":
        return f"kiln::duplicate<{stage.out_layout.beats}>(in0, out0, out1)"
    if stage.kind in ("map", "copy"):
        return f"kiln::map_stream<{stage.out_layout.beats}, {stage.out_layout.lanes}, " \
               f"{epi}>(in0, out)"
    assert layer is not None
    if layer.kind == "dense":
        assert layer.weight_type is not None
        shift, bshift = _dot_shifts(layer)
        has_bias, bias = _bias_args(layer)
        src = stage.in_layouts[0]
        dims = (src.beats, src.lanes, layer.output.size, layer.nonzero_weights, shift, bshift)
        return (f"kiln::dense_stream<{', '.join(map(str, dims))}, {has_bias}, "
                f"{type_name(layer.output)}, {layer.name}_p_t, {epi}, {layer.reuse_factor}>"
                f"(in0, out, {layer.name}_row_ptr, {layer.name}_col, {layer.name}_w, {bias})")
    if layer.kind == "mul":
        per_beat = str(stage.in_layouts[1] == stage.in_layouts[0]).lower()
        return (f"kiln::multiply_stream<{stage.out_layout.beats}, {stage.out_layout.lanes}, "
                f"{per_beat}, {type_name(layer.output)}, {epi}>(in0, in1, out)")
    if layer.kind == "softmax":
        args = softmax_args(layer.name, layer.op.kind, layer.inputs[0].dtype, 1,
                            layer.output.size)
        return (f"kiln::softmax_stream<{args}, {type_name(layer.output)}, {epi}>(in0, out, "
                f"{layer.name}_exp, {layer.name}_inv)")
    if layer.kind.startswith("conv"):
        return _conv(stage, layer, epi, window_rows(layer))
    if "pool" in layer.kind:
        return _pool(layer, epi, window_rows(layer))
    a, b = (t.dtype for t in layer.inputs)
    r = layer.output.dtype
    return (f"kiln::binary_stream<{stage.out_layout.beats}, {stage.out_layout.lanes}, "
            f"{r.frac_bits - a.frac_bits}, {r.frac_bits - b.frac_bits}, "
            f"kiln::{BINARY[layer.kind]}, {type_name(layer.output)}, {epi}>(in0, in1, out)")


def _stage_signature(stage: Stage) -> str:
    params = [f"{pixel(e)}& in{i}" for i, e in enumerate(stage.inputs)]
    outs = stage.outputs
    params += [f"{pixel(e)}& out{i if len(outs) > 1 else ''}"
               for i, e in enumerate(outs)]
    return f"static void {stage.name}({', '.join(params)})"


def emit_stage(w: CodeWriter, stage: Stage) -> None:
    """One dataflow stage: epilogue struct, then the function over its template."""
    if stage.layer is not None:
        layer_typedefs(w, stage.layer)
    epi = _epilogue(w, stage)
    layer = stage.layer
    fused = ", ".join(f"{la.kind} {comment(la.source)}" for la in stage.epilogue)
    what = f"{layer.kind} <- {comment(layer.source)}" if layer is not None else stage.kind
    w.line(f"// {what}" + (f" + {fused}" if fused else "")
           + (f" (reuse factor {layer.reuse_factor})" if layer and layer.weight is not None
              else ""))
    with w.block(_stage_signature(stage)):
        w.raw("#pragma HLS INLINE off")
        if layer is not None and layer.weight is not None:
            _partition(w, f"{layer.name}_w", layer.weight.size, layer.reuse_factor)
        w.line(_call(stage, epi) + ";")
    w.blank()


def _declare(w: CodeWriter, edge: Edge) -> None:
    w.line(f"{pixel(edge)} {edge.name}(\"{edge.name}\");  // {edge.dtype}, "
           f"{edge.layout.beats} beats x {edge.layout.lanes} lanes")
    w.raw(f"#pragma HLS STREAM variable={edge.name} depth={edge.depth}")
    w.line(f"KILN_STREAM_DEPTH({edge.name}, {edge.depth});")


def _top(w: CodeWriter, name: str, plan: StreamPlan) -> None:
    with w.block(top_signature(name, plan)):
        for edge in plan.inputs + plan.outputs:
            w.raw(f"#pragma HLS INTERFACE mode=axis port={edge.name}")
        w.raw("#pragma HLS INTERFACE mode=ap_ctrl_chain port=return")
        w.raw("#pragma HLS DATAFLOW")
        w.line(f"KILN_DATAFLOW_BEGIN({len(plan.stages)});")
        for edge in plan.edges:
            if not edge.port:
                _declare(w, edge)
        for stage in plan.stages:
            args = [e.name for e in stage.inputs + stage.outputs]
            w.line(f"KILN_STAGE({stage.name}({', '.join(args)}));")
        w.line("KILN_DATAFLOW_END();")


def _source(name: str, lowered: Lowered, plan: StreamPlan) -> str:
    w = CodeWriter()
    w.lines([f"// {name}: kiln-generated HLS C++ (io_stream, DATAFLOW), reuse factor "
             f"{reuse_text(lowered)}.", f'#include "{name}.h"', f'#include "{name}_weights.h"',
             ""])
    for stage in plan.stages:
        emit_stage(w, stage)
    _top(w, name, plan)
    return w.text()


def _header(name: str, lowered: Lowered, plan: StreamPlan) -> str:
    w = CodeWriter()
    guard = name.upper() + "_H"
    w.lines([f"// {name}: kiln-generated HLS top function (io_stream: one pixel per beat,",
             "// channels packed; element (c, p) of a channels-first tensor is beat p, lane c).",
             f"#ifndef {guard}", f"#define {guard}", "", "#include <stdint.h>",
             *(f'#include "{h}"' for h in row_headers(lowered)[1:]),
             '#include "kiln_stream_layers.h"', "",
             "// Every tensor's raws: kiln::raw_t<W, S> (native for g++, ap_int<W> under",
             "// Vitis or -DKILN_USE_AP_TYPES: kiln_fixed.h)."])
    tensor_typedefs(w, [e.tensor for e in plan.edges if e.tensor is not None]
                    + [t for layer in lowered.layers for t in (*layer.inputs, layer.output)])
    w.blank()
    for kind, edges in (("IN", plan.inputs), ("OUT", plan.outputs)):
        for i, e in enumerate(edges):
            w.line(f"#define {name.upper()}_{kind}{i}_BEATS {e.layout.beats}  // {e.dtype}")
            w.line(f"#define {name.upper()}_{kind}{i}_LANES {e.layout.lanes}")
    w.blank()
    w.line(top_signature(name, plan) + ";")
    w.blank()
    w.line(f"#endif  // {guard}")
    return w.text()


def stream_call(plan: StreamPlan) -> TestbenchCall:
    """The testbench's call (`project.testbench`): pack arrays into pixels, unpack results."""

    def call(w: CodeWriter, name: str, lowered: Lowered) -> None:
        offset = 0
        for i, (t, e) in enumerate(zip(lowered.inputs, plan.inputs)):
            beats, lanes = e.layout.beats, e.layout.lanes
            w.line(f"{pixel(e)} in{i};")
            with w.block(f"for (int p = 0; p < {beats}; p++)"):
                w.line(f"{pixel_type(e)} b;")
                w.line(f"for (int c = 0; c < {lanes}; c++) b.v[c] = x[{offset} + "
                       f"{flat_index(e.layout, t.shape)}];")
                w.line(f"in{i}.write(b);")
            offset += t.size
        for i, e in enumerate(plan.outputs):
            w.line(f"{pixel(e)} out{i}_s;")
        ports = [f"in{i}" for i in range(len(plan.inputs))]
        ports += [f"out{i}_s" for i in range(len(plan.outputs))]
        w.line(f"{name}({', '.join(ports)});")
        for i, e in enumerate(plan.outputs):
            beats, lanes = e.layout.beats, e.layout.lanes
            w.line(f"int64_t out{i}[{beats * lanes}];")
            with w.block(f"for (int p = 0; p < {beats}; p++)"):
                w.line(f"const {pixel_type(e)} b = out{i}_s.read();")
                index = flat_index(e.layout, lowered.outputs[i].shape)
                w.line(f"for (int c = 0; c < {lanes}; c++) out{i}[{index}] = "
                       "kiln::wide(b.v[c]);")

    return call


def emit_stream(name: str, lowered: Lowered, options: HlsOptions,
                headers: dict[str, str]) -> dict[str, str]:
    """The io_stream project's files (`headers`: runtime header name → text)."""
    plan = plan_stream(lowered, options.fifo_depths)
    w = CodeWriter()
    guard = name.upper() + "_WEIGHTS_H"
    w.lines([f"// {name}: weights as raw integers of their fixed types (exact).",
             f"#ifndef {guard}", f"#define {guard}", "", "#include <stdint.h>",
             '#include "kiln_fixed.h"', ""])
    for layer in lowered.layers:
        emit_weights(w, layer)
    w.line(f"#endif  // {guard}")
    files = {f"firmware/{name}.h": _header(name, lowered, plan),
             f"firmware/{name}.cpp": _source(name, lowered, plan),
             f"firmware/{name}_weights.h": w.text()}
    files.update({f"firmware/{h}": headers[h] for h in STREAM_HEADERS + row_headers(lowered)})
    files.update(project_files(name, lowered, options, call=stream_call(plan)))
    return files


__all__ = ["STREAM_HEADERS", "emit_stream", "is_global_pool", "pool_geometry", "stream_call",
           "top_signature", "window_rows"]

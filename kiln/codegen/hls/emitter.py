"""HLS C++ for fixed-point IR: `emit(module, options) -> {file name: text}`, pure.

Files (paths relative to the project folder):
- `firmware/<model>.h`: one raw-type typedef per tensor (`hls_types`), the top function's
  prototype and sizes;
- `firmware/<model>.cpp`: one function per layer (`emit_layers`) and the top function
  `void <model>(const v_x_t in0[N], ..., v_y_t out0[M], ...)` with `INTERFACE` pragmas;
- `firmware/<model>_weights.h`: weights as const arrays of raw integers of their types;
- `firmware/kiln_fixed.h`, `kiln_layers.h`, `kiln_stream.h`: kiln's runtime headers;
- the testbench, Makefile, Vitis scripts and README (`kiln.codegen.hls.project`).

Arrays hold raw fixed-point integers of their real widths (`kiln_fixed.h`: native integers for
g++, `ap_int<W>` under Vitis or `-DKILN_USE_AP_TYPES`); the top function's ports are the
quantized inputs and the raws of the values the model dequantizes. Converting floats to raws
(and back, plus any float tail such as a final softmax) is the host's job: the testbench reads
raws, `art(x)` converts on the host with kiln's exact `quantize_fixed`/`fixed_to_float`.

`io="stream"` writes the dataflow architecture instead (`emit_stream`: `hls::stream` FIFOs
between layer functions under `DATAFLOW`, line buffers for windows, `kiln_stream_layers.h`);
the testbench protocol, Makefile and Vitis scripts are the same.

`flavor="asic"` writes the same C++ for ASIC HLS flows (Catapult, Stratus, ...): no Vitis
pragmas at all (no `INTERFACE`/`ap_ctrl_hs`, `ARRAY_PARTITION`/`RESHAPE`, `PIPELINE`,
`DATAFLOW`, no `hls::stream` header), since they name FPGA primitives or a Vitis port
protocol that has no ASIC meaning; the tool's own directives set the micro-architecture.
Weights stay `static const` arrays, i.e. ROMs, each with a comment on how to map it (logic
ROM, or a ROM/SRAM macro from the memory compiler), and no Vitis scripts are written.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources

from kiln.codegen.hls.emit_layers import emit_layer, emit_weights
from kiln.codegen.hls.emit_stream import STREAM_HEADERS, emit_stream
from kiln.codegen.hls.emit_stream_rows import row_headers
from kiln.codegen.hls.emit_transformer import transformer_headers
from kiln.codegen.hls.hls_types import tensor_typedefs, type_name
from kiln.codegen.hls.layers import HlsTensor, Lowered, ReuseFactor, lower
from kiln.codegen.hls.project import project_files, reuse_text
from kiln.codegen.names import c_prefix, comment
from kiln.codegen.writer import CodeWriter
from kiln.errors import KilnError
from kiln.ir.graph import Module

RUNTIME_HEADERS = ("kiln_fixed.h", "kiln_layers.h", "kiln_stream.h")
ASIC_HEADERS = ("kiln_fixed.h", "kiln_layers.h")
FLAVORS = ("fpga", "asic")
IO_MODES = ("parallel", "stream")


@dataclass(frozen=True)
class HlsOptions:
    """Code generation options (the fpga target's `reuse_factor` — one int, or layer name →
    int — `io`, `part`, `clock_mhz`; `flavor` "fpga" (Vitis) or "asic" (module docstring));
    `fifo_depths`: io="stream" FIFO name → depth (default: each FIFO holds its whole tensor;
    the fpga target passes the stream estimator's sizing)."""

    reuse_factor: ReuseFactor = 1
    io: str = "parallel"
    part: str = "xczu9eg-ffvb1156-2-e"
    clock_mhz: float = 200.0
    flavor: str = "fpga"
    fifo_depths: Mapping[str, int] | None = None

    def check(self) -> None:
        rfs = self.reuse_factor.values() if isinstance(self.reuse_factor, Mapping) \
            else [self.reuse_factor]
        if any(int(rf) < 1 for rf in rfs):
            raise KilnError(f"option reuse_factor={self.reuse_factor} must be >= 1")
        if self.flavor not in FLAVORS:
            raise KilnError(f"HLS flavor '{self.flavor}' is not one of {', '.join(FLAVORS)}")
        if self.io not in IO_MODES:
            raise KilnError(f"fpga option io='{self.io}' is not one of {', '.join(IO_MODES)}")
        if self.io == "stream" and self.flavor != "fpga":
            raise KilnError(f"io='stream' is an FPGA architecture (hls::stream, DATAFLOW); "
                            f"flavor '{self.flavor}' writes io='parallel' only")


def runtime_header(name: str) -> str:
    return resources.files("kiln.codegen.hls").joinpath("include", name).read_text()


def model_name(module: Module) -> str:
    return c_prefix(module.name)


def top_signature(name: str, lowered: Lowered) -> str:
    ins = [f"const {type_name(t)} in{i}[{t.size}]" for i, t in enumerate(lowered.inputs)]
    outs = [f"{type_name(t)} out{i}[{t.size}]" for i, t in enumerate(lowered.outputs)]
    return f"void {name}({', '.join(ins + outs)})"


def _header(name: str, lowered: Lowered) -> str:
    w = CodeWriter()
    guard = name.upper() + "_H"
    w.lines([f"// {name}: kiln-generated HLS top function (raw fixed-point ports).",
             f"#ifndef {guard}", f"#define {guard}", "", "#include <stdint.h>",
             '#include "kiln_fixed.h"', "",
             "// Every tensor's raws: kiln::raw_t<W, S> (native for g++, ap_int<W> under",
             "// Vitis or -DKILN_USE_AP_TYPES: kiln_fixed.h)."])
    tensor_typedefs(w, all_tensors(lowered))
    w.blank()
    for i, t in enumerate(lowered.inputs):
        w.line(f"#define {name.upper()}_IN{i}_SIZE {t.size}  // {t.dtype}")
    for i, t in enumerate(lowered.outputs):
        w.line(f"#define {name.upper()}_OUT{i}_SIZE {t.size}  // {t.dtype}")
    w.blank()
    w.line(top_signature(name, lowered) + ";")
    w.blank()
    w.line(f"#endif  // {guard}")
    return w.text()


ROM_NOTE = ["// Memory mapping (ASIC): every array below is a read-only table (ROM). Small ones",
            "// synthesize to logic; map large ones to a ROM or SRAM macro of your memory",
            "// compiler with the HLS tool's memory directives (word = one weight, depth = size)."]


def _weights(name: str, lowered: Lowered, flavor: str) -> str:
    w = CodeWriter()
    guard = name.upper() + "_WEIGHTS_H"
    w.lines([f"// {name}: weights as raw integers of their fixed types (exact).",
             *(ROM_NOTE if flavor == "asic" else []),
             f"#ifndef {guard}", f"#define {guard}", "", "#include <stdint.h>",
             '#include "kiln_fixed.h"', ""])
    for layer in lowered.layers:
        emit_weights(w, layer)
    w.line(f"#endif  // {guard}")
    return w.text()


def all_tensors(lowered: Lowered) -> list[HlsTensor]:
    """Every tensor of the body in program order: ports, then each layer's operands/result."""
    tensors = [*lowered.inputs, *lowered.outputs]
    for layer in lowered.layers:
        tensors += [*layer.inputs, layer.output]
    return tensors


def _ports(w: CodeWriter, lowered: Lowered, rf: int) -> None:
    """Vitis port protocol; one PIPELINE when every layer is fully parallel, else DATAFLOW."""
    ports = [f"in{i}" for i in range(len(lowered.inputs))]
    ports += [f"out{i}" for i in range(len(lowered.outputs))]
    for port in ports:
        w.raw(f"#pragma HLS ARRAY_RESHAPE variable={port} complete dim=0")
        w.raw(f"#pragma HLS INTERFACE mode=ap_vld port={port}")
    w.raw("#pragma HLS INTERFACE mode=ap_ctrl_hs port=return")
    w.raw("#pragma HLS PIPELINE" if rf == 1 else "#pragma HLS DATAFLOW")


def _arrays(lowered: Lowered) -> dict[HlsTensor, str]:
    """C expression of every tensor: ports, then locals (a flatten aliases its input)."""
    where = {t: f"in{i}" for i, t in enumerate(lowered.inputs)}
    for i, t in enumerate(lowered.outputs):  # an input (or a repeat) returned: copied at the end
        where.setdefault(t, f"out{i}")
    return where


def _body(w: CodeWriter, lowered: Lowered, flavor: str) -> None:
    where = _arrays(lowered)
    for layer in lowered.layers:
        out = layer.output
        src = where[layer.inputs[0]]
        if layer.kind == "flatten":
            if out in where:  # an output port that is a reshape of a local: copy it
                w.line(f"for (int i = 0; i < {out.size}; i++) {where[out]}[i] = {src}[i];")
            else:
                w.line(f"const {type_name(out)}* {out.name} = {src};  "
                       f"// {comment(layer.source)}: free")
                where[out] = out.name
            continue
        if out not in where:
            w.line(f"{type_name(out)} {out.name}[{out.size}];  // {out.dtype}")
            rf = layer.reuse_factor
            if flavor == "fpga":
                w.raw(f"#pragma HLS ARRAY_PARTITION variable={out.name} " +
                      ("complete" if rf == 1 else f"cyclic factor={-(-out.size // rf)}"))
            where[out] = out.name
        args = ", ".join(where[t] for t in layer.inputs)
        w.line(f"{layer.name}({args}, {where[out]});")
    for j, t in enumerate(lowered.outputs):  # an input, or an output returned twice: copy
        if where.get(t) != f"out{j}":
            w.line(f"for (int i = 0; i < {t.size}; i++) out{j}[i] = {where[t]}[i];")


def _source(name: str, lowered: Lowered, options: HlsOptions) -> str:
    w = CodeWriter()
    what = ("HLS C++ for ASIC flows (no FPGA pragmas)" if options.flavor == "asic"
            else "HLS C++ (io_parallel")
    w.lines([f"// {name}: kiln-generated {what}, reuse factor {reuse_text(lowered)}"
             + (")." if options.flavor == "fpga" else "."), f'#include "{name}.h"',
             f'#include "{name}_weights.h"', '#include "kiln_layers.h"',
             *(f'#include "{h}"' for h in transformer_headers(lowered)), ""])
    for layer in lowered.layers:
        if layer.kind != "flatten":
            emit_layer(w, layer, options.flavor)
    with w.block(top_signature(name, lowered)):
        if options.flavor == "fpga":
            _ports(w, lowered, max((la.reuse_factor for la in lowered.layers), default=1))
        _body(w, lowered, options.flavor)
    return w.text()


def emit_lowered(module: Module, lowered: Lowered, options: HlsOptions) -> dict[str, str]:
    """The project's files for an already lowered module."""
    name = model_name(module)
    if options.io == "stream":
        return emit_stream(name, lowered, options, {h: runtime_header(h) for h in
                                                     STREAM_HEADERS + row_headers(lowered)})
    files = {f"firmware/{name}.h": _header(name, lowered),
             f"firmware/{name}.cpp": _source(name, lowered, options),
             f"firmware/{name}_weights.h": _weights(name, lowered, options.flavor)}
    headers = ASIC_HEADERS if options.flavor == "asic" else RUNTIME_HEADERS
    files.update({f"firmware/{h}": runtime_header(h) for h in headers})
    files.update({f"firmware/{h}": runtime_header(h) for h in transformer_headers(lowered)})
    files.update(project_files(name, lowered, options))
    return files


def emit(module: Module, options: HlsOptions) -> dict[str, str]:
    """Lower and emit (module docstring); raises a `KilnError` for unsupported layers."""
    options.check()
    return emit_lowered(module, lower(module, options.reuse_factor, options.io), options)


__all__ = ["FLAVORS", "HlsOptions", "emit", "emit_lowered", "model_name", "top_signature"]

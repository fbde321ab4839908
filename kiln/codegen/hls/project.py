"""The project around the firmware: C-simulation testbench, Makefile, Vitis scripts, README.

Testbench protocol (`tb_<model>.cpp`): `./csim INPUT OUTPUT [GOLDEN]`. INPUT has one sample per
line: the raw integers of every input port, concatenated, space separated. OUTPUT gets the raw
integers of every output port per sample. With GOLDEN (same format as OUTPUT), every raw is
compared and the program exits 1 on any difference (bit-exact check). The `tb_data/` files of
an exported project were written from kiln's interpreter (`tb_input_features.dat`,
`tb_output_predictions.dat`), so `make csim` checks the C++ against kiln.

Raw types (`hls_types`): every array is a `kiln::raw_t<W, S>`; `make csim` builds with native
integers, `make csim-ap AP_TYPES=<dir with ap_int.h>` with the vendor's `ap_int<W>` (the
types Vitis synthesizes) — both must give the same bits; the Makefile, `run_hls.tcl`,
`hls_config.cfg` and README say so.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from kiln.codegen.hls.hls_types import AP_TYPES_NOTE, type_name
from kiln.codegen.hls.layers import Lowered
from kiln.codegen.names import comment
from kiln.codegen.writer import CodeWriter

if TYPE_CHECKING:
    from kiln.codegen.hls.emitter import HlsOptions

TestbenchCall = Callable[[CodeWriter, str, Lowered], None]
"""Writes the testbench's top-function call (io_stream packs arrays into streams)."""
CXXFLAGS = "-O2 -std=c++14 -Wall -Wno-unused-label -Wno-unknown-pragmas"
AP_FLAG = "-DKILN_USE_AP_TYPES"
"""Builds the C-simulation against the vendor's ap_int.h / hls_stream.h (`kiln_fixed.h`)."""


def reuse_text(lowered: Lowered) -> str:
    """The reuse factors in a comment: one number, or label=RF for the layers above 1."""
    rfs = {layer.label: layer.reuse_factor for layer in lowered.layers}
    if len(set(rfs.values())) <= 1:
        return str(next(iter(rfs.values()), 1))
    return ", ".join(f"{k}={v}" for k, v in rfs.items() if v != 1)


def testbench(name: str, lowered: Lowered, call: TestbenchCall | None = None) -> str:
    w = CodeWriter()
    w.lines([f"// C-simulation testbench for {name} (protocol: kiln/codegen/hls/project.py).",
             "#include <cstdio>", "#include <cstdlib>", "#include <fstream>", "#include <sstream>",
             "#include <string>", "#include <vector>", f'#include "{name}.h"', ""])
    n_in = sum(t.size for t in lowered.inputs)
    n_out = sum(t.size for t in lowered.outputs)
    with w.block("static bool read_line(std::ifstream& f, std::vector<long long>& v, size_t n)"):
        w.lines(["std::string line;", "if (!std::getline(f, line)) return false;",
                 "std::istringstream s(line);", "v.assign(n, 0);",
                 "for (size_t i = 0; i < n; i++) if (!(s >> v[i])) return false;",
                 "return true;"])
    with w.block("int main(int argc, char** argv)"):
        w.lines(['if (argc < 3) { std::fprintf(stderr, "usage: %s IN OUT [GOLDEN]\\n", argv[0]);'
                 " return 2; }",
                 "std::ifstream fin(argv[1]);", "std::ofstream fout(argv[2]);",
                 "std::ifstream fgold;", "if (argc > 3) fgold.open(argv[3]);",
                 "std::vector<long long> x, gold;", "long samples = 0, mismatches = 0;"])
        with w.block(f"while (read_line(fin, x, {n_in}))"):
            (call or _call)(w, name, lowered)
            w.line(f"long long y[{max(n_out, 1)}];")
            w.line("size_t k = 0;")
            for i, t in enumerate(lowered.outputs):
                w.line(f"for (int i = 0; i < {t.size}; i++) y[k++] = kiln::wide(out{i}[i]);")
            w.line(f"for (int i = 0; i < {n_out}; i++) fout << y[i] << "
                   f"(i + 1 < {n_out} ? ' ' : '\\n');")
            with w.block(f"if (argc > 3 && read_line(fgold, gold, {n_out}))"):
                w.line(f"for (int i = 0; i < {n_out}; i++) mismatches += y[i] != gold[i];")
            w.line("samples++;")
        w.line('std::printf("%ld samples, %ld mismatching raws\\n", samples, mismatches);')
        w.line("return mismatches ? 1 : 0;")
    return w.text()


def _call(w: CodeWriter, name: str, lowered: Lowered) -> None:
    offset = 0
    for i, t in enumerate(lowered.inputs):
        w.line(f"{type_name(t)} in{i}[{t.size}];")
        w.line(f"for (int i = 0; i < {t.size}; i++) in{i}[i] = x[{offset} + i];")
        offset += t.size
    for i, t in enumerate(lowered.outputs):
        w.line(f"{type_name(t)} out{i}[{t.size}];")
    ports = [f"in{i}" for i in range(len(lowered.inputs))]
    ports += [f"out{i}" for i in range(len(lowered.outputs))]
    w.line(f"{name}({', '.join(ports)});")


def makefile(name: str) -> str:
    run = "tb_data/tb_input_features.dat tb_data/csim_results.dat " \
          "tb_data/tb_output_predictions.dat"
    return "\n".join([
        f"# C-simulation of {name} with plain g++ (no Vitis needed).",
        f"# Arrays hold {AP_TYPES_NOTE}.",
        "# `make csim` uses native integers; `make csim-ap AP_TYPES=<dir with ap_int.h>` (e.g.",
        "# Vitis's include/ or hls4ml's templates/vivado/ap_types) builds the same code with the",
        "# ap_int<W> types Vitis synthesizes: both must match tb_data/ bit for bit.",
        "CXX ?= g++", f"CXXFLAGS ?= {CXXFLAGS}", "AP_TYPES ?= $(XILINX_HLS)/include", "",
        ".PHONY: csim csim-ap clean", "",
        f"csim: csim_{name}", f"\t./csim_{name} {run}", "",
        f"csim-ap: csim_ap_{name}", f"\t./csim_ap_{name} {run}", "",
        f"csim_{name}: tb_{name}.cpp firmware/{name}.cpp firmware/*.h",
        f"\t$(CXX) $(CXXFLAGS) -Ifirmware -o $@ tb_{name}.cpp firmware/{name}.cpp", "",
        f"csim_ap_{name}: tb_{name}.cpp firmware/{name}.cpp firmware/*.h",
        f"\t$(CXX) $(CXXFLAGS) {AP_FLAG} -isystem $(AP_TYPES) -Ifirmware -o $@ "
        f"tb_{name}.cpp firmware/{name}.cpp", "",
        "clean:", f"\trm -f csim_{name} csim_ap_{name} tb_data/csim_results.dat", ""])


def run_hls_tcl(name: str, options: HlsOptions) -> str:
    period = 1000.0 / options.clock_mhz
    return "\n".join([
        f"# Vitis HLS script for {name}: vitis_hls -f run_hls.tcl",
        f"# Arrays hold {AP_TYPES_NOTE}: Vitis defines __SYNTHESIS__ (csynth) and kiln adds",
        f"# {AP_FLAG} to csim/cosim, so every run uses ap_int<W>.",
        f"open_project -reset {name}_prj", f"set_top {name}",
        f"add_files firmware/{name}.cpp -cflags \"-std=c++14 {AP_FLAG} -Ifirmware\"",
        f"add_files -tb tb_{name}.cpp -cflags \"-std=c++14 {AP_FLAG} -Ifirmware\"",
        "add_files -tb tb_data", "open_solution -reset solution1 -flow_target vivado",
        f"set_part {{{options.part}}}", f"create_clock -period {period:.3f} -name default",
        "csim_design -argv {tb_data/tb_input_features.dat tb_data/csim_results.dat "
        "tb_data/tb_output_predictions.dat}",
        "csynth_design", "cosim_design -argv {tb_data/tb_input_features.dat "
        "tb_data/cosim_results.dat tb_data/tb_output_predictions.dat}",
        "export_design -format ip_catalog", "exit", ""])


def hls_config(name: str, options: HlsOptions) -> str:
    return "\n".join([
        f"# v++ -c --mode hls --config hls_config.cfg  (Vitis 2023.2+ unified flow) for {name}",
        f"# Arrays hold {AP_TYPES_NOTE}.",
        f"part={options.part}", "", "[hls]", "flow_target=vivado",
        "package.output.format=ip_catalog",
        f"clock={1000.0 / options.clock_mhz:.3f}ns", f"syn.top={name}",
        f"syn.file=firmware/{name}.cpp", f"syn.cflags=-std=c++14 {AP_FLAG} -Ifirmware",
        f"tb.file=tb_{name}.cpp", "tb.file=tb_data",
        f"tb.cflags=-std=c++14 {AP_FLAG} -Ifirmware",
        "csim.argv=tb_data/tb_input_features.dat tb_data/csim_results.dat "
        "tb_data/tb_output_predictions.dat", ""])


def readme(name: str, lowered: Lowered, options: HlsOptions) -> str:
    rows = [f"| {layer.name} | {layer.kind} | {list(layer.output.shape)} | "
            f"`{layer.output.dtype}` | {layer.nonzero_weights} | {comment(layer.source)} |"
            for layer in lowered.layers]
    tail = ", ".join(op.name for op in lowered.tail) or "none"
    return "\n".join([
        f"# {name}: HLS project generated by kiln", "",
        *_flow_lines(lowered, options),
        "- `make csim` builds the C-simulation with g++ and checks it bit for bit against the",
        "  golden vectors kiln's interpreter wrote to `tb_data/` (exit status 1 on a mismatch);",
        "  `make csim-ap AP_TYPES=<dir with ap_int.h>` does the same with the vendor's types.",
        *_tool_lines(options), "",
        "Ports carry raw fixed-point integers (value = raw * 2^-F, F = W - I of the port's type",
        f"in `firmware/{name}.h`). Types: every array, stream and accumulator holds "
        f"{AP_TYPES_NOTE}; `firmware/{name}.h` has one typedef per tensor (its width is the",
        "`type` column below), each layer's products and window sums have their own",
        "exact-width typedef.",
        "Host-side steps kiln does around the IP: quantize the inputs,",
        f"dequantize the outputs, and the float tail ({tail}).", "",
        "| function | kind | output shape | type | non-zero weights | source |",
        "|---|---|---|---|---|---|", *rows, ""])


def _flow_lines(lowered: Lowered, options: HlsOptions) -> list[str]:
    if options.flavor == "asic":
        return [f"ASIC flavor (no FPGA pragmas), reuse factor {reuse_text(lowered)}, clock "
                f"{options.clock_mhz} MHz.", ""]
    return [f"Architecture io_{options.io}, reuse factor {reuse_text(lowered)}, part "
            f"{options.part}, clock {options.clock_mhz} MHz.", ""]


def _tool_lines(options: HlsOptions) -> list[str]:
    if options.flavor == "asic":
        return ["- For an ASIC HLS flow (Catapult, Stratus, ...): set the top function, the",
                "  clock and the tool's own loop/memory directives; the weight arrays in",
                "  `firmware/*_weights.h` are ROMs (see the note there on memory mapping).",
                "  Under `__SYNTHESIS__` the raws are `ap_int<W>`; a tool without `ap_int.h`",
                "  builds with `-DKILN_NATIVE_TYPES` (the narrowest native integers)."]
    return ["- `vitis_hls -f run_hls.tcl` runs csim, csynth, cosim and exports the IP;",
            "  `v++ -c --mode hls --config hls_config.cfg` is the unified-flow equivalent."]


def project_files(name: str, lowered: Lowered, options: HlsOptions,
                  call: TestbenchCall | None = None) -> dict[str, str]:
    files = {f"tb_{name}.cpp": testbench(name, lowered, call), "Makefile": makefile(name),
             "README.md": readme(name, lowered, options)}
    if options.flavor == "fpga":
        files.update({"run_hls.tcl": run_hls_tcl(name, options),
                      "hls_config.cfg": hls_config(name, options)})
    return files


__all__ = ["AP_FLAG", "CXXFLAGS", "project_files", "reuse_text", "testbench"]

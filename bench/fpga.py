"""FPGA benchmark: kiln's analytic estimates and a bit-level comparison with hls4ml.

For the jet-tagging MLP, the digits CNN and LeNet-5 (bundled weights), lowered to fixed point
(`fixed-point{width=16}`, calibrated on the example input): kiln's estimated latency, II and
resources (xczu9eg at 200 MHz) at reuse factors 1, 4, 16, 64 in both architectures:
io_parallel by `kiln.targets.cost.estimate` (per IR layer), io_stream by
`kiln.targets.cost.fpga_stream.estimate_stream` (the dataflow design `io="stream"` emits:
a beat-level pipeline schedule for latency and II, line buffers and every FIFO at the depth
the schedule sizes; the FIFO BRAM18K / LUTRAM columns are part of the BRAM / LUT totals).

`transformer_layer` (one pre-norm encoder block: fixed-point layer norm, attention matmuls,
GELU) has its own table: `target="fpga"` compiled at each reuse factor in both architectures
(calibrated on fresh random batches), each one's estimate (io_stream: one token row per beat,
the attention matmuls buffering keys / values, FIFOs sized by the schedule), and its
C-simulation (g++) checked bit for bit against `kiln.interpret` on the lowered IR for
`--samples-csim` fresh inputs per row. A refused architecture's rows report the refusal.

hls4ml comparison (`--hls4ml`): each model is also converted by hls4ml (PyTorch frontend,
Vitis backend, io_parallel, the same RF) with every type `ap_fixed<16,6>` (trn, wrap) and a
wide exact accumulator, and its C-simulation (g++) runs on random inputs. kiln builds the same
precision (`fixed-point{policy=uniform,width=16,integer=6,rounding=trn,saturation=wrap}`,
exact accumulators) and runs it in the interpreter, which kiln's `fpga` C-simulation matches
bit for bit; the outputs are compared before the final softmax, where hls4ml uses lookup
tables and kiln's target keeps the float reference (so those are reported, not bit-compared).
hls4ml is not a kiln dependency: point `--hls4ml-path` at a folder holding it (pip install
--target DIR hls4ml pyyaml h5py quantizers pydigitalwavetools==1.1).

Run: `python bench/fpga.py [--hls4ml] [--write]` (`--write` replaces the "FPGA estimates"
section of BENCHMARKS.md). One thread.
"""

from __future__ import annotations

import argparse
import datetime
import logging
import platform
import re
import sys
from pathlib import Path

import numpy as np

import kiln
from kiln.errors import KilnError
from kiln.ir.interpret import interpret
from kiln.models import example_inputs, get_model
from kiln.targets.cost import estimate
from kiln.targets.cost.fpga_format import format_rows
from kiln.targets.cost.fpga_stream import estimate_stream

MODELS = ("jet_mlp", "digits_cnn", "lenet5")
REUSE = (1, 4, 16, 64)
PART, CLOCK = "xczu9eg", 200
ROOT = Path(__file__).resolve().parent.parent


def lowered(name: str) -> kiln.Module:
    """The model in calibrated fixed<16,I> (what `target="fpga"` builds)."""
    x = example_inputs(name)
    module = kiln.trace(get_model(name).eval(), x)
    batches = [tuple(np.asarray(t) for t in x)]
    return kiln.run_passes(module, "canonicalize,fold-batchnorm,fixed-point{width=16}",
                           calibration_data=batches)


def estimate_rows(name: str) -> list[list[object]]:
    module = lowered(name)
    rows: list[list[object]] = []
    for io in ("parallel", "stream"):
        for rf in REUSE:
            r = (estimate_stream(module, part=PART, clock_mhz=CLOCK, reuse_factor=rf)
                 if io == "stream" else
                 estimate(module, part=PART, clock_mhz=CLOCK, io=io, reuse_factor=rf)).report()
            rows.append([name, io, rf, r["latency_cycles"], f"{r['latency_ns']:.0f}", r["ii"],
                         r["dsp"], r["lut"], r["ff"], r["bram"], r["fifo_bram"],
                         r.get("fifo_lut", 0), "yes" if r["fits"] else "no"])
    return rows


def estimates_table() -> str:
    headers = ("model", "io", "RF", "latency (cyc)", "latency (ns)", "II", "DSP", "LUT", "FF",
               "BRAM18K", "FIFO BRAM", "FIFO LUT", f"fits {PART}")
    rows = [row for name in MODELS for row in estimate_rows(name)]
    return format_rows(headers, rows)


def transformer_rows(samples: int) -> tuple[list[list[object]], str]:
    """Estimates and the C-simulation check of `transformer_layer` (module docstring), and
    what io="stream" answers."""
    name = "transformer_layer"
    model = get_model(name).eval()
    (x,) = example_inputs(name)
    rng = np.random.default_rng()
    shape = tuple(x.shape)
    calib = [(rng.standard_normal(shape).astype(np.float32),) for _ in range(4)]
    rows: list[list[object]] = []
    message = ""
    for io in ("parallel", "stream"):
        for rf in REUSE:
            try:
                art = kiln.compile(model, (x,), target="fpga", part=PART, clock_mhz=CLOCK,
                                   reuse_factor=rf, calibration_data=calib, fit="off", io=io)
            except KilnError as err:  # an architecture without templates for a layer
                message = f"io='{io}' refused: " + str(err).splitlines()[0]
                rows.append([name, io, rf, "refused", *["-"] * 8])
                continue
            module = art.artifact.module  # type: ignore[attr-defined]
            exact = 0
            for _ in range(samples):
                xs = calib[int(rng.integers(len(calib)))][0]  # inside the calibrated range
                got, want = np.asarray(art(xs)), interpret(module, xs)[0]
                exact += bool(np.array_equal(got.reshape(want.shape), want))
            r = estimate(module, part=PART, clock_mhz=CLOCK, io="parallel",
                         reuse_factor=rf).report() if io == "parallel" else art.report()
            rows.append([name, io, rf, r["latency_cycles"], f"{r['latency_ns']:.0f}",
                         r["ii"], r["dsp"], r["lut"], r["ff"], r["bram"],
                         "yes" if r["fits"] else "no", f"{exact}/{samples}"])
    return rows, message


def transformer_table(samples: int) -> str:
    headers = ("model", "io", "RF", "latency (cyc)", "latency (ns)", "II", "DSP", "LUT", "FF",
               "BRAM18K", f"fits {PART}", "C-sim == interp")
    rows, message = transformer_rows(samples)
    return format_rows(headers, rows) + "\n" + message


def section(body: str, hls4ml_text: str) -> str:
    today = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d")
    return (f"## FPGA estimates (`bench/fpga.py`)\n\n"
            f"Machine: {platform.machine()} {platform.system()}, Python "
            f"{platform.python_version()}, {today}. kiln's analytic estimates "
            f"(`kiln.targets.cost`), {PART} at {CLOCK} MHz, calibrated fixed<16,I> "
            "(16-bit weights and activations, exact accumulators); no vendor synthesis was "
            "run, so these are model figures: DSPs follow hls4ml's rule n_in·n_out/RF for "
            "16-bit dense layers (at RF 1 an upper bound: Vivado HLS builds narrow constant "
            "products in LUTs); LUT/FF/latency coefficients are fitted to published "
            "hls4ml synthesis reports where those exist (`kiln/targets/cost/"
            "fpga_reference.py`, error bands in tests/unit/test_fpga_reference.py) and "
            "documented guesses elsewhere. II and latency are in cycles; RF values that "
            "do not divide a layer's n_in·n_out snap to the nearest divisor. The "
            "hls4ml rows compare outputs only (hls4ml gives no resource figures without "
            "Vivado/Vitis); kiln's side is its interpreter on the fixed-point IR, which "
            "the fpga target's C-simulation is specified and tested to match bit for "
            "bit (the C-simulation is run here only for transformer_layer, last "
            "column).\n\n"
            f"```\n{body}\n```\n\n{hls4ml_text}\n")


def write_section(text: str) -> None:
    path = ROOT / "BENCHMARKS.md"
    old = path.read_text()
    pattern = re.compile(r"## FPGA estimates.*?(?=\n## |\Z)", re.S)
    new = pattern.sub(lambda _: text.rstrip() + "\n", old) if pattern.search(old) else (
        old.rstrip() + "\n\n" + text)
    path.write_text(new)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true")
    parser.add_argument("--hls4ml", action="store_true", help="also compare with hls4ml")
    parser.add_argument("--hls4ml-path", default=None, help="folder that holds hls4ml")
    parser.add_argument("--samples", type=int, default=100)
    parser.add_argument("--samples-csim", type=int, default=3,
                        help="fresh inputs per transformer_layer C-simulation check")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    table = estimates_table() + "\n\n" + transformer_table(args.samples_csim)
    print(table)
    hls_text = ("hls4ml comparison: not run (pass --hls4ml).")
    if args.hls4ml:
        if args.hls4ml_path:
            sys.path.insert(0, args.hls4ml_path)
        from fpga_hls4ml import compare_all  # beside this script (bench/ is on sys.path)
        hls_text = compare_all(MODELS, REUSE, args.samples)
    print(hls_text)
    if args.write:
        write_section(section(table, hls_text))


if __name__ == "__main__":
    main()

"""Analytic FPGA latency and resource estimates, per layer and total, before any vendor tool.

    est = estimate(module, part="xczu9eg", clock_mhz=200, io="parallel", reuse_factor=4)
    est.report()["dsp"], est.fits, print(est.table())

The architecture costed is hls4ml's (latency strategy, `io_parallel` / `io_stream`):

- **dot layers** (dense, matmul, conv): `mults` non-zero products per output position are
  shared by `reuse_factor` (RF), so ceil(mults / RF) multipliers are instantiated, each with
  an accumulator adder of the exact accumulator width (in the DSP's 48-bit post-adder and
  pipeline registers when the product is on a DSP, else LUTs and FFs in the fabric); RF must
  divide the dense product count n_in * n_out (hls4ml's valid RFs), other values snap to the
  nearest divisor. Latency per
  position = RF + ceil(log2 n_in) + `MULT_PIPELINE` (multiplier and adder-tree stages); a conv
  visits its output positions one after the other, so its II is positions * RF. With RF = 1
  the weights are constants folded into the multipliers; with RF > 1 they are a ROM of RF
  words of (multipliers * weight bits), in LUTRAM, BRAM or URAM (`fpga_resources`), and the
  inputs go through an RF:1 multiplexer per multiplier.
- **elementwise / pools**: fully unrolled over the tensor in parallel mode (one lane per
  element), over the channels in stream mode (one pixel per cycle); one comparator/adder of
  the element width per window element.
- **lookup-table ops** (softmax, sigmoid, ...): hls4ml's 1024-entry tables, one BRAM18K per
  two lanes (dual-ported ROM) in parallel mode, one in stream mode; softmax normalises with
  one multiplier per lane.
- **io="stream"**: a FIFO between layers, `positions` deep and one pixel (n_out * bits) wide,
  and (k-1) line buffers per k x k convolution. **io="parallel"**: every activation sits in
  registers (FFs).
- model II = the slowest layer's II (layers are pipelined / dataflow); model latency = the sum
  of layer latencies (an upper bound in stream mode, where layers overlap).

The rule of thumb hls4ml documents holds by construction: a 16-bit dense layer takes
n_in * n_out / RF DSPs. The architecture is the one the hls4ml paper describes (Duarte et
al., JINST 13 P07027, 2018; jet-tagging MLP 16-64-32-32-5 at ap_fixed<16,6>: one multiplier
per product at RF = 1, RF-fold sharing otherwise). The coefficients (LUT per bit-product, one
LUT per adder bit, the pipeline depth) are documented engineering rules, not fitted against
synthesis reports (no vendor tools on this machine, and no published per-layer LUT/FF tables
were at hand): treat the LUT/FF figures as rough.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Literal

from kiln.errors import KilnError
from kiln.ir.graph import Module
from kiln.targets.cost.fpga_layers import LayerShape, layer_shapes
from kiln.targets.cost.fpga_parts import Part, get_part
from kiln.targets.cost.fpga_resources import (
    Memory,
    adder_luts,
    memory_cost,
    multiplier_cost,
    mux_luts,
)

IoMode = Literal["parallel", "stream"]
MULT_PIPELINE = 3
DSP_ACC_BITS = 48
TABLE_SIZE = 1024
RESOURCES = ("dsp", "lut", "ff", "bram", "uram")


@dataclass
class LayerCost:
    """Estimated cost of one layer at its reuse factor."""

    name: str
    op: str
    reuse_factor: int
    latency_cycles: int
    ii: int
    mults: int
    precision: str
    dsp: int = 0
    lut: int = 0
    ff: int = 0
    bram: int = 0
    uram: int = 0


def valid_reuse_factors(layer: LayerShape) -> list[int]:
    """hls4ml's valid RFs for a dot layer: the divisors of n_in * n_out (others: [1])."""
    n = layer.dense_mults
    if n <= 0:
        return [1]
    small = [d for d in range(1, math.isqrt(n) + 1) if n % d == 0]
    return sorted(set(small + [n // d for d in small]))


def snap_reuse(layer: LayerShape, rf: int) -> int:
    """The valid RF nearest to `rf` (ties: the smaller)."""
    return min(valid_reuse_factors(layer), key=lambda v: (abs(v - rf), v))


def with_bits(layer: LayerShape, bits: int | None) -> LayerShape:
    """The layer with input and weight widths `bits` (accumulator re-derived exactly)."""
    if bits is None or layer.kind in ("elementwise", "pool", "table"):
        return layer
    acc = 2 * bits + max(layer.n_in - 1, 0).bit_length() + 1
    return LayerShape(**{**asdict(layer), "in_bits": bits, "w_bits": bits, "acc_bits": acc,
                         "out_bits": bits, "weight_bits": layer.mults * bits})


def memory_luts(mem: Memory) -> int:
    return mem.lutram


def dot_cost(layer: LayerShape, rf: int, io: IoMode, part: Part) -> LayerCost:
    """Cost of a dense / conv layer (module docstring)."""
    inst = math.ceil(layer.mults / rf)
    dsp_each, lut_each = multiplier_cost(layer.in_bits, layer.w_bits, part.dsp_kind)
    depth = rf + max(layer.n_in - 1, 0).bit_length() + MULT_PIPELINE
    cost = LayerCost(layer.name, layer.kind, rf, (layer.positions - 1) * rf + depth,
                     layer.positions * rf, layer.mults * layer.positions, layer.precision)
    mem = memory_cost(rf, inst * layer.w_bits, part) if rf > 1 else Memory()
    if io == "stream":
        mem = mem + Memory(bram=math.ceil(layer.line_buffer_bits / 18432))
    cost.dsp = inst * dsp_each
    fabric = 0 if dsp_each and layer.acc_bits <= DSP_ACC_BITS else inst
    cost.lut = (inst * (lut_each + mux_luts(layer.in_bits, rf)) + mem.lutram
                + fabric * adder_luts(layer.acc_bits) + layer.n_out * adder_luts(layer.out_bits))
    cost.ff = fabric * (layer.in_bits + layer.w_bits + layer.acc_bits) + output_ff(layer, io)
    cost.bram, cost.uram = mem.bram, mem.uram
    if layer.rom_bits:  # a lookup-table ROM: copies for the reads one cycle needs
        copies = math.ceil(math.ceil(layer.rom_reads / rf) / 2)
        cost.bram += max(copies, 1) * math.ceil(layer.rom_bits / 18432)
    return cost


def output_ff(layer: LayerShape, io: IoMode) -> int:
    """Output registers: the whole tensor in parallel mode, one pixel in stream mode."""
    return (layer.out_numel if io == "parallel" else layer.n_out) * layer.out_bits


def simple_cost(layer: LayerShape, io: IoMode) -> LayerCost:
    """Cost of an activation, pool, elementwise or lookup-table layer (module docstring)."""
    lanes = layer.out_numel if io == "parallel" else layer.n_out
    serial = 1 if io == "parallel" else layer.positions
    depth = 1 + max(layer.window - 1, 0).bit_length()
    cost = LayerCost(layer.name, layer.kind, 1, serial + depth, serial, 0, layer.precision)
    cost.lut = lanes * max(layer.window - 1, 1) * adder_luts(layer.out_bits)
    cost.ff = output_ff(layer, io)
    if layer.kind == "table":
        tables = math.ceil(TABLE_SIZE * layer.out_bits / 18432)
        cost.bram = tables * (math.ceil(lanes / 2) if io == "parallel" else 1)
        cost.latency_cycles += 3 + max(layer.n_out - 1, 0).bit_length()
        if "softmax" in layer.op:
            cost.dsp = lanes
    return cost


def fifo_cost(layer: LayerShape, part: Part) -> Memory:
    """The stream FIFO after `layer`: `positions` deep, one pixel wide."""
    return memory_cost(layer.positions, layer.n_out * layer.out_bits, part)


@dataclass
class FpgaEstimate:
    """Per-layer costs, totals and the verdict against `part`."""

    part: Part
    clock_mhz: float
    io: IoMode
    layers: list[LayerCost]
    fifo: Memory = field(default_factory=Memory)

    def total(self, key: str) -> int:
        own = sum(getattr(layer, key) for layer in self.layers)
        extra = {"bram": self.fifo.bram, "uram": self.fifo.uram, "lut": self.fifo.lutram}
        return own + extra.get(key, 0)

    @property
    def latency_cycles(self) -> int:
        return sum(layer.latency_cycles for layer in self.layers)

    @property
    def ii(self) -> int:
        return max((layer.ii for layer in self.layers), default=1)

    def available(self) -> dict[str, int]:
        p = self.part
        return {"dsp": p.dsp, "lut": p.lut, "ff": p.ff, "bram": p.bram18k, "uram": p.uram}

    def over(self) -> dict[str, tuple[int, int]]:
        """Resources the design needs more of than the part has: name -> (needed, available)."""
        return {k: (self.total(k), v) for k, v in self.available().items() if self.total(k) > v}

    @property
    def fits(self) -> bool:
        return not self.over()

    def require_fit(self) -> None:
        """A `KilnError` naming every exceeded resource, the biggest layer, and a larger RF."""
        over = self.over()
        if not over:
            return
        text = ", ".join(f"{k} {need} > {have}" for k, (need, have) in over.items())
        key = next(iter(over))
        worst = max(self.layers, key=lambda layer: getattr(layer, key, 0))
        raise KilnError(f"the design does not fit {self.part.name}: {text} (largest: layer "
                        f"'{worst.name}' with {getattr(worst, key)} {key})",
                        hint="raise reuse_factor (or pass budget=... to search one), narrow "
                             "the precision, prune, or pick a larger part")

    def report(self) -> dict[str, object]:
        """Totals, utilisation, the verdict and the per-layer list, as plain data."""
        totals = {k: self.total(k) for k in RESOURCES}
        util = {k: round(100.0 * v / a, 1) if a else None
                for k, v in totals.items() for a in [self.available()[k]]}
        return {"part": self.part.name, "clock_mhz": self.clock_mhz, "io": self.io,
                "latency_cycles": self.latency_cycles,
                "latency_ns": self.latency_cycles * 1000.0 / self.clock_mhz, "ii": self.ii,
                **totals, "fifo_bram": self.fifo.bram, "utilization_pct": util,
                "fits": self.fits, "layers": [asdict(layer) for layer in self.layers]}

    def table(self) -> str:
        from kiln.targets.cost.fpga_format import format_table
        return format_table(self.report())


def reuse_for(layers: list[LayerShape], reuse_factor: int | Mapping[str, int]) -> list[int]:
    """Each layer's RF (snapped to a valid one); unknown names in a dict are a KilnError."""
    if isinstance(reuse_factor, Mapping):
        names = {layer.name for layer in layers}
        unknown = sorted(set(reuse_factor) - names)
        if unknown:
            raise KilnError(f"reuse_factor names unknown layers {unknown}; layers: "
                            f"{', '.join(layer.name for layer in layers)}")
        return [snap_reuse(lay, reuse_factor.get(lay.name, 1)) for lay in layers]
    if reuse_factor < 1:
        raise KilnError(f"reuse_factor={reuse_factor} must be >= 1")
    return [snap_reuse(layer, reuse_factor) for layer in layers]


def estimate(module: Module, *, part: str = "xczu9eg", clock_mhz: float = 200,
             io: IoMode = "parallel", reuse_factor: int | Mapping[str, int] = 1,
             bits: Mapping[str, int] | None = None) -> FpgaEstimate:
    """Estimate `module` on `part` (module docstring); `bits` overrides dot-layer widths."""
    return estimate_layers(layer_shapes(module), part=part, clock_mhz=clock_mhz, io=io,
                           reuse_factor=reuse_factor, bits=bits)


def estimate_layers(shapes: list[LayerShape], *, part: str = "xczu9eg",
                    clock_mhz: float = 200, io: IoMode = "parallel",
                    reuse_factor: int | Mapping[str, int] = 1,
                    bits: Mapping[str, int] | None = None) -> FpgaEstimate:
    """`estimate` on already extracted layers (the budget search calls this in its loop)."""
    if io not in ("parallel", "stream"):
        raise KilnError(f"io={io!r} is not 'parallel' or 'stream'")
    if clock_mhz <= 0:
        raise KilnError(f"clock_mhz={clock_mhz} must be positive")
    device = get_part(part)
    shapes = [with_bits(s, (bits or {}).get(s.name)) for s in shapes]
    costs = [dot_cost(s, rf, io, device) if s.dense_mults else simple_cost(s, io)
             for s, rf in zip(shapes, reuse_for(shapes, reuse_factor), strict=True)]
    fifo = Memory()
    if io == "stream":
        for s in shapes[:-1]:
            fifo = fifo + fifo_cost(s, device)
    return FpgaEstimate(device, clock_mhz, io, costs, fifo)


__all__ = ["FpgaEstimate", "LayerCost", "estimate", "estimate_layers", "snap_reuse",
           "valid_reuse_factors"]

"""Analytic FPGA latency and resource estimates, per layer and total, before any vendor tool.

    est = estimate(module, part="xczu9eg", clock_mhz=200, io="parallel", reuse_factor=4)
    est.report()["dsp"], est.fits, print(est.table())

The architecture costed is hls4ml's (latency strategy, `io_parallel` / `io_stream`):

- **dot layers** (dense, matmul, conv): `mults` non-zero products per output position are
  shared by `reuse_factor` (RF), so ceil(mults / RF) multipliers are instantiated; RF must
  divide the dense product count n_in * n_out (hls4ml's valid RFs), other values snap to the
  nearest divisor. With RF = 1 the layer is one unrolled product + adder tree: every product
  gets a fabric adder of the accumulator width (the tree is not a DSP cascade) and
  `FF_PER_PRODUCT` pipeline registers, and the whole tree is chained into as few clock
  periods as its delay allows (`chain_cycles`). With RF > 1 each multiplier accumulates RF
  terms (in the DSP's 48-bit post-adder when the product is on a DSP, else LUTs and FFs),
  latency per position = RF + the tree's chained cycles; the weights are then a ROM of RF
  words of (multipliers * weight bits) in LUTRAM, BRAM or URAM (`fpga_resources`), and the
  inputs go through an RF:1 multiplexer per multiplier. A conv visits its output positions
  one after the other, so its II is positions * RF.
- **elementwise / pools**: fully unrolled over the tensor in parallel mode (one lane per
  element), over the channels in stream mode (one pixel per cycle). An elementwise op
  (ReLU, clamp, add) is `ELEMENTWISE_LUT_PER_BIT` LUTs per output bit and, in parallel mode,
  combinational (0 cycles, no registers: the consumer registers it); a pool is one
  comparator/adder of the element width per window element.
- **lookup-table ops** (softmax, sigmoid, ...): hls4ml's 1024-entry tables. In parallel
  mode the layer is pipelined at II = RF (any RF up to its element count), so its reads are
  shared over RF cycles: ceil(ceil(reads / RF) / 2) dual-port copies of each table (the
  `BIND_STORAGE` pragmas `codegen/hls/rom_pragmas` emits; one BRAM18K per copy of a 16-bit
  table), softmax's 1/sum table (one read per row) besides, and ceil(lanes / RF) softmax
  multipliers; latency RF - 1 plus a cycle per table read (softmax: exp, 1/sum, then the
  product: 3). Stream mode: one copy per table.
- **io="stream"**: a FIFO between layers, `positions` deep and one pixel (n_out * bits) wide,
  and (k-1) line buffers per k x k convolution. **io="parallel"**: every activation sits in
  registers (FFs).
- model II = the slowest layer's II (layers are pipelined / dataflow); model latency = the sum
  of layer latencies (an upper bound in stream mode, where layers overlap).

**Grounding** (`fpga_reference`: published hls4ml C-synthesis reports; the test
`tests/unit/test_fpga_reference.py` holds the estimator to stated bands around them). Fitted
from those reports: `ELEMENTWISE_LUT_PER_BIT` (hls4ml ReLU rows), `FF_PER_PRODUCT` and the
fabric adder per product at RF = 1 (the jet MLP's dense rows), the one-cycle chained tree
and the table latencies (the per-layer latencies at 200 MHz), softmax's extra ROM (its 4
BRAM18K), and the LUT multiplier's `LUT_PER_BIT_PRODUCT` (`fpga_resources`). Still
engineering guesses, not fitted: the per-level delay `CHAIN_NS_PER_LEVEL` beyond the one
clock the data constrains, everything at RF > 1 (ROM, muxes, DSP accumulation), stream-mode
latencies, pools, and the DSP count at RF = 1, which is an upper bound: Vivado HLS narrows
constant weights and builds many of them as shift-add logic (the trained jet MLP used 2118
DSPs where kiln counts 4261 non-zero products), a choice that depends on the weight values.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Literal

from kiln.codegen.hls.rom_pragmas import rom_copies
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
MULT_LEVELS = 2
"""A multiplier's delay counted in adder levels (an 16x16 DSP product ~ two carry chains)."""
CHAIN_NS_PER_LEVEL = 0.55
"""Delay of one chained level (adder + routing). Constrained by the reference data only as far
as 64-input dot products (6 adder levels + a product) fitting one 5 ns clock (Vivado HLS
2019.2 estimated 4.29 ns for the whole jet MLP), so it stays a guess within that bound."""
FF_PER_PRODUCT = 1.6
"""Pipeline registers per product of an RF = 1 dot layer (fitted: the jet MLP's four dense
rows, 9030 FF for 4256 products less their output registers)."""
ELEMENTWISE_LUT_PER_BIT = 1.75
"""LUTs per output bit of an elementwise op (fitted: hls4ml's ReLU rows, 28 LUTs per 16-bit
element, exactly, at 64 and 32 elements)."""
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
    """hls4ml's valid RFs for a dot layer: the divisors of n_in * n_out; a lookup-table
    layer's: 1 .. its element count (the emitted function is pipelined at II = RF, any RF,
    its table reads shared over RF cycles); others: [1]."""
    if layer.kind == "table":
        return list(range(1, max(layer.out_numel, 1) + 1))
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


def chain_cycles(levels: int, clock_mhz: float) -> int:
    """Clock periods a combinational chain of `levels` adder levels takes (at least one)."""
    period_ns = 1000.0 / clock_mhz
    return max(math.ceil(levels * CHAIN_NS_PER_LEVEL / period_ns - 1e-9), 1)


def dot_cost(layer: LayerShape, rf: int, io: IoMode, part: Part,
             clock_mhz: float = 200) -> LayerCost:
    """Cost of a dense / conv layer (module docstring)."""
    inst = math.ceil(layer.mults / rf)
    dsp_each, lut_each = multiplier_cost(layer.in_bits, layer.w_bits, part.dsp_kind)
    tree = max(layer.n_in - 1, 0).bit_length() + MULT_LEVELS
    depth = rf - 1 + chain_cycles(tree, clock_mhz)
    cost = LayerCost(layer.name, layer.kind, rf, (layer.positions - 1) * rf + depth,
                     layer.positions * rf, layer.mults * layer.positions, layer.precision)
    mem = memory_cost(rf, inst * layer.w_bits, part) if rf > 1 else Memory()
    if io == "stream":
        mem = mem + Memory(bram=math.ceil(layer.line_buffer_bits / 18432))
    cost.dsp = inst * dsp_each
    cost.lut = (inst * (lut_each + mux_luts(layer.in_bits, rf)) + mem.lutram
                + layer.n_out * adder_luts(layer.out_bits))
    cost.ff = output_ff(layer, io)
    if rf == 1:  # an unrolled adder tree in the fabric, lightly pipelined (module docstring)
        cost.lut += inst * adder_luts(layer.acc_bits)
        cost.ff += math.ceil(inst * FF_PER_PRODUCT)
    else:
        fabric = 0 if dsp_each and layer.acc_bits <= DSP_ACC_BITS else inst
        cost.lut += fabric * adder_luts(layer.acc_bits)
        cost.ff += fabric * (layer.in_bits + layer.w_bits + layer.acc_bits)
    cost.bram, cost.uram = mem.bram, mem.uram
    if layer.rom_bits:  # a lookup-table ROM: copies for the reads one cycle needs
        cost.bram += rom_copies(layer.rom_reads, rf) * math.ceil(layer.rom_bits / 18432)
    return cost


def output_ff(layer: LayerShape, io: IoMode) -> int:
    """Output registers: the whole tensor in parallel mode, one pixel in stream mode."""
    return (layer.out_numel if io == "parallel" else layer.n_out) * layer.out_bits


def simple_cost(layer: LayerShape, io: IoMode, rf: int = 1) -> LayerCost:
    """Cost of an activation, pool, elementwise or lookup-table layer (module docstring)."""
    lanes = layer.out_numel if io == "parallel" else layer.n_out
    serial = 1 if io == "parallel" else layer.positions
    depth = 1 + max(layer.window - 1, 0).bit_length()
    cost = LayerCost(layer.name, layer.kind, 1, serial + depth, serial, 0, layer.precision)
    cost.lut = lanes * max(layer.window - 1, 1) * adder_luts(layer.out_bits)
    cost.ff = output_ff(layer, io)
    softmax = "softmax" in layer.op
    if layer.kind == "elementwise":
        cost.lut = math.ceil(lanes * layer.out_bits * ELEMENTWISE_LUT_PER_BIT)
        if io == "parallel":  # combinational: the consumer's registers hold it
            cost.latency_cycles, cost.ff = 0, 0
    if layer.kind == "table":
        tables = math.ceil(TABLE_SIZE * layer.out_bits / 18432)
        cost.bram = tables
        if io == "parallel":  # the copies `rom_pragmas` states: two reads a cycle each
            cost.bram = tables * rom_copies(lanes, rf)
            if softmax:  # the 1/sum ROM, one read per row
                cost.bram += tables * rom_copies(max(lanes // max(layer.row, 1), 1), rf)
            cost.latency_cycles = rf - 1 + (3 if softmax else 1)  # a cycle per ROM read
            cost.ii, cost.reuse_factor = rf, rf
        else:
            cost.latency_cycles += 3 + max(layer.n_out - 1, 0).bit_length()
        if softmax:
            cost.dsp = math.ceil(lanes / rf) if io == "parallel" else lanes
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
    costs = [dot_cost(s, rf, io, device, clock_mhz) if s.dense_mults else simple_cost(s, io, rf)
             for s, rf in zip(shapes, reuse_for(shapes, reuse_factor), strict=True)]
    fifo = Memory()
    if io == "stream":
        for s in shapes[:-1]:
            fifo = fifo + fifo_cost(s, device)
    return FpgaEstimate(device, clock_mhz, io, costs, fifo)


__all__ = ["FpgaEstimate", "LayerCost", "chain_cycles", "estimate", "estimate_layers",
           "snap_reuse", "valid_reuse_factors"]

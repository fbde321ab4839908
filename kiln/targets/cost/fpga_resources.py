"""Per-primitive FPGA cost rules: multipliers, memories and adders.

**Multipliers** (hls4ml / FINN practice, Vivado's inference rules): a product whose operand
widths sum to at most `LUT_PRODUCT_BITS` (10: e.g. 5x5, 4x6, 2x8), or with a 1- or 2-bit
operand, is built from LUTs at `LUT_PER_BIT_PRODUCT` LUT6 per partial-product bit (a*b bits).
That coefficient is fitted (`fpga_reference.LUT_MULTIPLIERS`): an 18x18 LUT multiplier takes
365 / 401 LUTs as Vivado's IP core and ~411 when Vivado HLS is forced to build hls4ml's
multipliers in LUTs (hls4ml issue #99), mean 392 / 324 bit-products = 1.2. Wider products
go to DSP slices: a DSP48E2 multiplies 27x18 signed (DSP48E1 25x18, DSP58 27x24), so a
product takes ceil(wide/port_a) * ceil(narrow/port_b) slices (16x16 -> 1, 24x24 -> 2 on a
DSP48E2, 32x32 -> 4).

**Memories** (UltraScale BRAM18K aspect ratios 16Kx1 ... 512x36; a LUT6 as 64x1 LUTRAM/ROM;
URAM 4Kx72): a memory of `depth` words of `width` bits takes LUTRAM when depth <= 64 (what
Vivado does for shallow ROMs and SRL FIFOs), URAM when the part has it and depth > 2048, else
the BRAM18K aspect ratio needing the fewest blocks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from kiln.codegen.hls.rom_pragmas import LUTRAM_DEPTH
from kiln.targets.cost.fpga_parts import DspKind, Part

LUT_PRODUCT_BITS = 10
LUT_PER_BIT_PRODUCT = 1.2
BRAM18K_SHAPES = ((16384, 1), (8192, 2), (4096, 4), (2048, 9), (1024, 18), (512, 36))
URAM_SHAPE = (4096, 72)


def multiplier_cost(a_bits: int, b_bits: int, dsp: DspKind) -> tuple[int, int]:
    """(DSP slices, LUTs) for one a x b multiplier (module docstring)."""
    if a_bits + b_bits <= LUT_PRODUCT_BITS or min(a_bits, b_bits) <= 2:
        return 0, math.ceil(a_bits * b_bits * LUT_PER_BIT_PRODUCT)
    wide, narrow = max(a_bits, b_bits), min(a_bits, b_bits)
    tiles = min(math.ceil(wide / dsp.a_bits) * math.ceil(narrow / dsp.b_bits),
                math.ceil(wide / dsp.b_bits) * math.ceil(narrow / dsp.a_bits))
    return tiles, 0


@dataclass(frozen=True)
class Memory:
    """Blocks a memory takes: BRAM18K, URAM, and LUTs used as LUTRAM."""

    bram: int = 0
    uram: int = 0
    lutram: int = 0

    def __add__(self, other: Memory) -> Memory:
        return Memory(self.bram + other.bram, self.uram + other.uram, self.lutram + other.lutram)


def memory_cost(depth: int, width: int, part: Part) -> Memory:
    """Blocks for a `depth` x `width`-bit memory (module docstring)."""
    if depth <= 0 or width <= 0:
        return Memory()
    if depth <= LUTRAM_DEPTH:
        return Memory(lutram=width)
    if part.uram and depth > 2048:
        d, w = URAM_SHAPE
        return Memory(uram=math.ceil(depth / d) * math.ceil(width / w))
    blocks = min(math.ceil(depth / d) * math.ceil(width / w) for d, w in BRAM18K_SHAPES)
    return Memory(bram=blocks)


def adder_luts(bits: int) -> int:
    """A ripple-carry adder on the carry chain: one LUT per bit."""
    return bits


def mux_luts(bits: int, ways: int) -> int:
    """A `ways`:1 multiplexer of `bits` bits: a LUT6 is a 4:1 mux, so ceil((ways-1)/3) each."""
    return bits * math.ceil(max(ways - 1, 0) / 3)


__all__ = ["Memory", "adder_luts", "memory_cost", "multiplier_cost", "mux_luts"]

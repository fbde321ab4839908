"""FPGA part database: the resource totals the estimator checks a design against.

Figures are the device totals from AMD/Xilinx's public product tables and data sheets:

- xc7z020: Zynq-7000 SoC product table (DS190): 53,200 LUTs, 106,400 FFs, 140 BRAM36
  (= 280 BRAM18K), 220 DSP48E1 (25x18 multipliers), no UltraRAM.
- xczu9eg: Zynq UltraScale+ MPSoC product table (DS891): 274,080 LUTs, 548,160 FFs, 912 BRAM36
  (= 1,824 BRAM18K), 2,520 DSP48E2 (27x18), no UltraRAM.
- xcvu9p: Virtex UltraScale+ product table (DS923): 1,182,240 LUTs, 2,364,480 FFs, 2,160 BRAM36
  (= 4,320 BRAM18K), 960 UltraRAM, 6,840 DSP48E2.
- xcu250: Alveo U250 data sheet (DS962; XCU250 = VU13P-class): 1,728,000 LUTs, 3,456,000 FFs,
  2,688 BRAM36 (= 5,376 BRAM18K), 1,280 UltraRAM, 12,288 DSP48E2.
- xcvc1902: Versal AI Core product table (DS950): 899,840 LUTs, 1,799,680 FFs, 967 BRAM36
  (= 1,934 BRAM18K), 463 UltraRAM, 1,968 DSP58 (27x24).
"""

from __future__ import annotations

from dataclasses import dataclass

from kiln.errors import KilnError


@dataclass(frozen=True)
class DspKind:
    """A DSP slice's multiplier: signed ports of `a_bits` x `b_bits` (sign bit included)."""

    name: str
    a_bits: int
    b_bits: int


DSP48E1 = DspKind("DSP48E1", 25, 18)
DSP48E2 = DspKind("DSP48E2", 27, 18)
DSP58 = DspKind("DSP58", 27, 24)


@dataclass(frozen=True)
class Part:
    """One device: totals of each resource the estimator counts."""

    name: str
    family: str
    lut: int
    ff: int
    bram18k: int
    uram: int
    dsp: int
    dsp_kind: DspKind


PARTS: dict[str, Part] = {
    p.name: p for p in (
        Part("xc7z020", "Zynq-7000", 53_200, 106_400, 280, 0, 220, DSP48E1),
        Part("xczu9eg", "Zynq UltraScale+", 274_080, 548_160, 1_824, 0, 2_520, DSP48E2),
        Part("xcvu9p", "Virtex UltraScale+", 1_182_240, 2_364_480, 4_320, 960, 6_840, DSP48E2),
        Part("xcu250", "Alveo U250", 1_728_000, 3_456_000, 5_376, 1_280, 12_288, DSP48E2),
        Part("xcvc1902", "Versal AI Core", 899_840, 1_799_680, 1_934, 463, 1_968, DSP58),
    )
}
"""Known parts by short name (a full ordering code such as `xczu9eg-ffvb1156-2-e` resolves
to its device prefix)."""


def get_part(name: str) -> Part:
    """The part named `name` (case-insensitive; package/speed suffixes are ignored)."""
    key = name.lower().split("-")[0]
    if key not in PARTS:
        raise KilnError(f"unknown FPGA part '{name}'; known parts: {', '.join(sorted(PARTS))}",
                        hint="pass part= one of the known names (package suffixes are fine)")
    return PARTS[key]


__all__ = ["DSP48E1", "DSP48E2", "DSP58", "PARTS", "DspKind", "Part", "get_part"]

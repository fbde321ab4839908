"""Storage pragmas for the lookup-table ROMs a parallel-io layer reads (activation tables,
softmax's exp and 1/sum tables, layer norm's 1/sqrt, GELU's Φ).

A layer function is pipelined at `II = reuse factor` (R), so a table read `reads` times per
call must serve ceil(reads / R) reads per cycle. Each ROM gets
`#pragma HLS BIND_STORAGE variable=<table> type=rom_2p impl=<lutram|bram>`: a dual-port ROM
(two reads a cycle per copy), in LUTRAM when it is at most `LUTRAM_DEPTH` words deep (the
estimator's rule, `kiln.targets.cost.fpga_resources.memory_cost`) and in block RAM otherwise;
the tool replicates a read-only array to serve the reads one pipeline stage issues, so the
design holds ceil(ceil(reads / R) / 2) copies, which is what the estimator counts
(`fpga_estimate.simple_cost`, `fpga_estimate.dot_cost` via `LayerShape.rom_reads`). The
comment above the pragma states that count. Stream io and the ASIC flavor emit none.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from kiln.codegen.hls.layers import HlsLayer
from kiln.codegen.writer import CodeWriter
from kiln.ir.ops.lut import TABLED

LUTRAM_DEPTH = 64
"""Memories at most this many words deep go to LUTRAM, deeper ones to block RAM (hls4ml's and
Vivado's usual split). Defined here, below the estimator, which imports it
(`kiln.targets.cost.fpga_resources.memory_cost`), so pragma and estimate cannot disagree."""


def rom_copies(reads: int, reuse_factor: int) -> int:
    """Dual-port ROM copies serving `reads` reads per call pipelined at II = reuse factor (the
    estimator counts the same: `kiln.targets.cost.fpga_estimate`)."""
    return max(math.ceil(math.ceil(reads / max(reuse_factor, 1)) / 2), 1)


@dataclass(frozen=True)
class Rom:
    """One table a layer reads: its array name, depth (words) and reads per call."""

    name: str
    depth: int
    reads: int

    def copies(self, reuse_factor: int) -> int:
        """Dual-port copies serving ceil(reads / R) reads per cycle."""
        return rom_copies(self.reads, reuse_factor)

    @property
    def impl(self) -> str:
        return "lutram" if self.depth <= LUTRAM_DEPTH else "bram"


def layer_roms(layer: HlsLayer) -> list[Rom]:
    """The tables `layer` reads (their names as `emit_tables` / `emit_transformer_tables`
    write them), [] for a layer without one."""
    kind: Any = layer.op.kind
    n = layer.output.size
    if layer.kind == "layer_norm":
        from kiln.ir.ops.fixed_norm import rsqrt_table

        shape = layer.output.shape
        row = math.prod(shape[len(shape) - kind.normalized_ndim:])
        depth = len(rsqrt_table(kind.table_size, row))
        return [Rom(f"{layer.name}_rsqrt", depth, max(n // max(row, 1), 1))]
    if layer.kind == "gelu":
        return [Rom(f"{layer.name}_phi", kind.table_size, n)]
    if layer.table_error is None:
        return []
    if getattr(kind, "function", None) in TABLED:
        return [Rom(f"{layer.name}_table", kind.table_size, n)]
    if not hasattr(kind, "function"):  # softmax: exp per element, 1/sum per row
        rows = max(n // max(layer.output.shape[-1], 1), 1)
        return [Rom(f"{layer.name}_exp", kind.table_size, n),
                Rom(f"{layer.name}_inv", kind.inv_table_size, rows)]
    return []


def emit_rom_pragmas(w: CodeWriter, layer: HlsLayer, ii: int) -> None:
    """The BIND_STORAGE pragma of every table `layer` (pipelined at `ii`) reads (module
    docstring)."""
    for rom in layer_roms(layer):
        copies = rom.copies(ii)
        w.line(f"// {rom.name}: {rom.reads} reads per call at II={ii}: {copies} dual-port "
               f"{rom.impl} cop{'y' if copies == 1 else 'ies'}")
        w.raw(f"#pragma HLS BIND_STORAGE variable={rom.name} type=rom_2p impl={rom.impl}")


__all__ = ["Rom", "emit_rom_pragmas", "layer_roms"]

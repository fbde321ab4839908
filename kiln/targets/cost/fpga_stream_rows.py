"""Stream-estimator rows of the row-streamed transformer stages (`emit_stream_rows`).

`fpga_stream` asks `row_stage_cost(stage, part)` first (None: not a row stage). The rules are
io_parallel's (`fpga_transformer`, `dot_cost`) applied to one beat, the beat being one token
row:

- `dense_rows`: a dense layer over each row a beat packs: NI terms per output, NR x NO
  outputs per beat, the non-zero weights' multipliers shared by the reuse factor.
- `layer_norm`: `fpga_transformer`'s row (3·D multipliers, the 1/sqrt ROM) for one row.
- `gelu`: one multiplier (x·Φ) and one Φ read per lane.
- `scale`: shifts and adds, an elementwise lane per raw (no DSP).
- `matmul`: K terms per output, B x N outputs per row of the first operand, and the buffer
  of the whole second operand (every beat of keys or values: BK x lanes x bits, LUTRAM /
  BRAM18K by `memory_cost`). Its schedule reads that operand completely before the first
  row of the other (`buffered_inputs`), which is what sizes the FIFO on the bypassing path.

`row_timing` gives (cycles between beats, pipeline depth) as `fpga_stream._timing` does for
dot layers: RF, then an adder tree of log2(terms) levels; a layer norm runs two such trees
(the mean, then the variance) and a ROM read.
"""

from __future__ import annotations

from dataclasses import replace

from kiln.codegen.hls.emit_stream_plan import Stage
from kiln.ir.ops.fixed_norm import FixedGelu, FixedLayerNorm
from kiln.targets.cost.fpga_estimate import (
    MULT_LEVELS,
    LayerCost,
    chain_cycles,
    dot_cost,
    output_ff,
    simple_cost,
    snap_reuse,
)
from kiln.targets.cost.fpga_layers import LayerShape
from kiln.targets.cost.fpga_parts import Part
from kiln.targets.cost.fpga_resources import memory_cost
from kiln.targets.cost.fpga_transformer import op_shape

DOT_ROWS = ("dense_rows", "layer_norm", "gelu", "matmul")


def buffered_inputs(stage: Stage) -> int:
    """Inputs (the last ones) a stage reads completely before its first: a matmul's second
    operand."""
    return 1 if stage.layer is not None and stage.layer.kind == "matmul" else 0


def _shape(stage: Stage) -> LayerShape | None:
    layer = stage.layer
    assert layer is not None
    src, out = stage.in_layouts[0], stage.out_layout
    out_bits = stage.output_tensor.dtype.width
    if layer.kind == "dense_rows":
        assert layer.weight is not None and layer.weight_type is not None
        n_out, n_in = layer.weight.shape
        rows = src.lanes // n_in
        return LayerShape(stage.label, layer.op.name, "dense", n_in, rows * n_out, src.beats,
                          rows * layer.nonzero_weights, rows * layer.weight.size,
                          layer.inputs[0].dtype.width, layer.weight_type.width,
                          layer.output.dtype.width, out_bits,
                          layer.nonzero_weights * layer.weight_type.width, layer.output.size)
    if layer.kind == "matmul":
        a, b = layer.inputs
        k = a.shape[-1]
        return LayerShape(stage.label, layer.op.name, "matmul", k, out.lanes, out.beats,
                          out.lanes * k, out.lanes * k, a.dtype.width, b.dtype.width,
                          layer.output.dtype.width, out_bits, 0, layer.output.size)
    if isinstance(layer.op.kind, (FixedLayerNorm, FixedGelu)):
        row = op_shape(layer.op)
        assert row is not None
        if layer.kind == "gelu":  # one lane per raw of a beat
            return replace(row, name=stage.label, n_out=src.lanes, positions=src.beats,
                           mults=src.lanes, dense_mults=src.lanes, rom_reads=src.lanes,
                           out_bits=out_bits)
        return replace(row, name=stage.label, out_bits=out_bits)
    return None


def row_stage_cost(stage: Stage, part: Part) -> LayerCost | None:
    """Resources of a row stage (module docstring); None for other stages."""
    layer = stage.layer
    if layer is None or layer.kind not in (*DOT_ROWS, "scale"):
        return None
    if layer.kind == "scale":
        out = stage.out_layout
        bits = stage.output_tensor.dtype.width
        return simple_cost(LayerShape(stage.label, layer.op.name, "elementwise", 1, out.lanes,
                                      out.beats, 0, 0, bits, 0, bits, bits, 0,
                                      out.beats * out.lanes), "stream")
    shape = _shape(stage)
    assert shape is not None
    cost = dot_cost(shape, snap_reuse(shape, layer.reuse_factor), "parallel", part)
    cost.ff += output_ff(shape, "stream") - output_ff(shape, "parallel")
    if layer.kind == "matmul":  # the whole second operand, buffered
        held = stage.in_layouts[1]
        mem = memory_cost(held.beats, held.lanes * layer.inputs[1].dtype.width, part)
        cost.bram, cost.uram = cost.bram + mem.bram, cost.uram + mem.uram
        cost.lut += mem.lutram
    return cost


def row_timing(stage: Stage, cost: LayerCost, clock_mhz: float) -> tuple[int, int] | None:
    """(cycles between output beats, pipeline depth) of a row stage; None for others."""
    layer = stage.layer
    if layer is None or layer.kind not in DOT_ROWS:
        return None
    shape = _shape(stage)
    assert shape is not None
    rf = cost.reuse_factor
    tree = chain_cycles(max(shape.n_in - 1, 0).bit_length() + MULT_LEVELS, clock_mhz)
    epilogue = sum(la.kind != "requantize" for la in stage.epilogue)
    extra = tree + 1 if layer.kind == "layer_norm" else 0  # the second sum and the ROM
    return rf, rf - 1 + tree + extra + epilogue


__all__ = ["buffered_inputs", "row_stage_cost", "row_timing"]

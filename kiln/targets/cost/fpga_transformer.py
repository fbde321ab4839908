"""Estimator rows of the transformer layers (`kiln.ir.ops.fixed_norm`, transposes).

`layer_shapes` (fpga_layers) asks `transformer_shapes(module, op)` first; None means "not
mine". The rows reuse the dot-layer cost model (`fpga_estimate.dot_cost`: multipliers shared
by the reuse factor, an adder tree, output registers):

- `kiln.transpose`: wiring in io_parallel (the emitted loop only renames array elements), so
  no row at all, like reshape.
- `kiln.fixed_layer_norm` over rows of D: 3·D multipliers per row (the squares c_i², c_i·R
  and n_i·γ_i), n_in = D (the adder tree of the mean and variance sums), one row per
  position; the 1/sqrt ROM (3/4·table_size words of ~20 bits, one read per row, every row
  read in the one pipelined call, as `codegen/hls/rom_pragmas` states) counted as BRAM18K
  (`LayerShape.rom_bits`); the leading-one encoder is not counted (a few LUTs).
- `kiln.fixed_gelu`: one multiplier per element (x·Φ) and the Φ ROM (table_size x 17 bits):
  one dual-port copy per two reads a cycle needs (elements / reuse factor).
- `kiln.mul` by a scalar weight (attention's 1/sqrt(d_head), the HLS `scale` layer): a
  product by a constant is shifts and adds in the fabric (none at all for a power of two
  such as 1/4), so no DSP: costed as an elementwise layer, one adder of the output width
  per element (an upper bound).

These are engineering rules of the same kind as the rest of the estimator, not fitted to
synthesis reports.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from kiln.ir.analysis import layer_output as output_of
from kiln.ir.graph import Module, Op
from kiln.ir.ops.fixed_norm import (
    GELU_TABLE_FRAC,
    FixedGelu,
    FixedLayerNorm,
    layer_norm_bits,
    rsqrt_table,
)
from kiln.ir.types import FixedType
from kiln.targets.cost.fpga_layers import LayerShape, bits_of

FREE = ("kiln.transpose",)
LAYER_NORM_MULTS = 3
"""Multipliers per element of a layer norm: c², c·R, n·γ."""
PHI_WORD_BITS = GELU_TABLE_FRAC + 1
"""Width of a Φ table word (GELU: Φ in [0, 1] with 16 fraction bits)."""


def _rom_bits(table: np.ndarray) -> int:
    """Bits of a ROM holding `table` (non-negative words of the widest entry's width)."""
    return table.size * int(table.max(initial=0)).bit_length()


def _layer_norm(op: Op) -> LayerShape:
    kind: Any = op.kind
    name, out = output_of(op)
    x, gamma, beta = (v.type for v in op.operands)
    row = max(gamma.numel, 1)
    rows = max(out.type.numel // row, 1)
    mults = LAYER_NORM_MULTS * row
    acc = bits_of(x) * 2
    if all(isinstance(t.dtype, FixedType) for t in (x, gamma, beta)):
        acc = layer_norm_bits(x.dtype, row, gamma.dtype, beta.dtype,  # type: ignore[arg-type]
                              kind.table_size, kind.eps)
    w_bits = bits_of(gamma)
    return LayerShape(name, op.name, "layer_norm", row, row, rows, mults, mults, bits_of(x),
                      w_bits, acc, bits_of(out.type), 2 * row * w_bits, out.type.numel,
                      rom_bits=_rom_bits(rsqrt_table(kind.table_size, row)), rom_reads=rows)


def _gelu(op: Op) -> LayerShape:
    name, out = output_of(op)
    n = out.type.numel
    x_bits = bits_of(op.operands[0].type)
    table_size = op.kind.table_size  # type: ignore[attr-defined]
    return LayerShape(name, op.name, "gelu", 1, n, 1, n, n, x_bits, PHI_WORD_BITS,
                      x_bits + PHI_WORD_BITS, bits_of(out.type), 0, n,
                      rom_bits=table_size * PHI_WORD_BITS, rom_reads=n)


def _scale(op: Op) -> LayerShape:
    name, out = output_of(op)
    n, bits = out.type.numel, bits_of(out.type)
    return LayerShape(name, op.name, "elementwise", 1, n, 1, 0, 0, bits_of(op.operands[0].type),
                      bits_of(op.operands[1].type), bits, bits, 0, n)


def _is_scale(op: Op) -> bool:
    """A fixed-point mul whose second operand is a one-element weight."""
    if op.name != "kiln.mul" or not all(isinstance(v.type.dtype, FixedType)
                                         for v in op.operands):
        return False
    producer = op.operands[1].producer
    return producer is not None and producer.name == "kiln.weight" and \
        op.operands[1].type.numel == 1


def op_shape(op: Op) -> LayerShape | None:
    """The row of a layer norm or GELU op (the stream estimator costs one beat of it)."""
    if isinstance(op.kind, FixedLayerNorm):
        return _layer_norm(op)
    if isinstance(op.kind, FixedGelu):
        return _gelu(op)
    return None


def transformer_shapes(module: Module, op: Op) -> list[LayerShape] | None:
    """The rows of `op` (module docstring); [] for wiring; None for other ops."""
    if op.name in FREE:
        return []
    if _is_scale(op):
        return [_scale(op)]
    shape = op_shape(op)
    return None if shape is None else [shape]


__all__ = ["op_shape", "transformer_shapes"]

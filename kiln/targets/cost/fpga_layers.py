"""The estimator's view of a module: one `LayerShape` per hardware layer of the lowered IR.

Works on kiln IR directly (ideally after `fixed-point`: weights typed `fixed<W,I>` holding raw
int64 data, exact accumulator types, one `kiln.requantize` per layer), so the estimates do not
depend on the HLS emitter. A `kiln.requantize` belongs to the layer that feeds it (it is that
layer's output conversion) and the layer takes the requantized value's name (`fc1`, not
`fc1.acc`). Interface conversions (`quantize`, `dequantize`) and pure shape ops (reshape,
flatten, squeeze, ...) cost nothing: they are wiring. Ops inside `kiln.fused` regions are
visited one by one. A value that is still float is costed at `DEFAULT_BITS` bits, the width
the FPGA target gives an uncalibrated tensor.

**Multiplier counts skip zero weights** (pruned weights get no multiplier at generation time):
a dot layer's `mults` is the number of non-zero weights (times the batch rows for a matmul
with two activations). An `nm<n,m>` encoding caps it at n/m of the dense count; a `block<r,c>`
encoding counts whole non-zero blocks (a kept block stores all its entries).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kiln.ir.analysis import layer_output as output_of
from kiln.ir.graph import Module, Op, Value
from kiln.ir.types import FixedType, TensorType

DEFAULT_BITS = 16
"""Width assumed for a float tensor (the FPGA target's default `fixed<16,I>`)."""
DOT_OPS = {"kiln.linear": "dense", "kiln.matmul": "matmul", "kiln.conv1d": "conv1d",
           "kiln.conv2d": "conv2d", "kiln.conv2d_nhwc": "conv2d"}
FREE_OPS = {"kiln.weight", "kiln.constant", "kiln.return", "kiln.yield", "kiln.fused",
            "kiln.quantize", "kiln.dequantize", "kiln.requantize", "kiln.reshape",
            "kiln.flatten", "kiln.squeeze", "kiln.unsqueeze", "kiln.identity", "kiln.dropout",
            "kiln.cast", "kiln.slice", "kiln.split", "kiln.expand"}
TABLE_OPS = {"kiln.softmax", "kiln.log_softmax", "kiln.sigmoid", "kiln.tanh", "kiln.exp",
             "kiln.gelu", "kiln.layer_norm", "kiln.batch_norm", "kiln.silu", "kiln.log",
             "kiln.lut_softmax"}
TABLED_FUNCTIONS = ("sigmoid", "tanh")
"""`kiln.fixed_activation` functions read a table (hardsigmoid/hardswish are arithmetic)."""


@dataclass(frozen=True)
class LayerShape:
    """What the cost model needs to know about one layer (per batch row / output position)."""

    name: str
    op: str
    kind: str
    n_in: int
    n_out: int
    positions: int
    mults: int
    dense_mults: int
    in_bits: int
    w_bits: int
    acc_bits: int
    out_bits: int
    weight_bits: int
    out_numel: int
    window: int = 1
    line_buffer_bits: int = 0
    rom_bits: int = 0
    """Bits of the lookup table the layer reads (one copy; layer norm's 1/sqrt, GELU's Φ)."""
    rom_reads: int = 0
    """Table reads per output position: each dual-port BRAM copy serves two per cycle."""
    row: int = 1
    """Elements per row of a row-wise table op (softmax: one 1/sum read per row)."""

    @property
    def precision(self) -> str:
        return f"in {self.in_bits}b, w {self.w_bits}b, acc {self.acc_bits}b, out {self.out_bits}b"


def bits_of(ttype: TensorType) -> int:
    """Element width in bits (float: `DEFAULT_BITS`)."""
    dtype = ttype.dtype
    if isinstance(dtype, FixedType) or dtype.is_integer:
        return dtype.bits
    return DEFAULT_BITS


def weight_array(module: Module, value: Value) -> np.ndarray | None:
    """The data of a `kiln.weight` operand (None for activations)."""
    producer = value.producer
    if producer is None or producer.name != "kiln.weight":
        return None
    return module.weights.get(getattr(producer.kind, "name", ""))


def nonzero_mults(w: np.ndarray | None, wtype: TensorType, dense: int) -> int:
    """Multipliers per output position once zero weights are skipped (module docstring)."""
    if w is None:
        return dense
    enc = wtype.encoding
    if enc is not None and enc.format == "block":
        r, c = enc.params
        mat = w.reshape(w.shape[0], -1)
        rows, cols = -(-mat.shape[0] // r), -(-mat.shape[1] // c)
        padded = np.zeros((rows * r, cols * c), bool)
        padded[:mat.shape[0], :mat.shape[1]] = mat != 0
        kept = padded.reshape(rows, r, cols, c).any(axis=(1, 3)).sum()
        return int(kept) * r * c
    count = int(np.count_nonzero(w))
    if enc is not None and enc.format == "nm":
        n, m = enc.params
        count = min(count, -(-dense * n // m))
    return count


def dot_layer(module: Module, op: Op) -> LayerShape:
    """A dense / matmul / conv layer: K terms per output, n_out outputs per position."""
    x, w = op.operands[0], op.operands[1]
    name, out = output_of(op)
    out_t = out.type
    kind = DOT_OPS[op.name]
    if kind in ("dense", "matmul"):
        n_out, k = out_t.shape[-1], x.type.shape[-1]
    else:
        n_out = w.type.shape[0]
        k = w.type.numel // n_out
    positions = max(out_t.numel // n_out, 1)
    dense = k * n_out
    data = weight_array(module, w)
    mults = nonzero_mults(data, w.type, dense)
    w_bits = bits_of(w.type)
    line = 0
    if kind.startswith("conv") and len(x.type.shape) >= 3:
        kernel = w.type.shape[2]
        line = max(kernel - 1, 0) * int(np.prod(x.type.shape[1:-1])) * bits_of(x.type)
    return LayerShape(name, op.name, kind, k, n_out, positions, mults, dense, bits_of(x.type),
                      w_bits, bits_of(op.results[0].type), bits_of(out_t),
                      mults * w_bits if data is not None else 0, out_t.numel,
                      line_buffer_bits=line)


def simple_layer(op: Op) -> LayerShape:
    """Activations, pools, elementwise arithmetic and lookup-table ops."""
    name, out = output_of(op)
    x = op.operands[0].type if op.operands else out.type
    tabled = getattr(op.kind, "function", None) in TABLED_FUNCTIONS
    kind = "table" if op.name in TABLE_OPS or tabled else "elementwise"
    window = 1
    if "pool" in op.name or op.name.startswith("kiln.reduce"):
        kind = "pool"
        window = max(x.numel // max(out.type.numel, 1), 1)
    lanes = out.type.shape[1] if len(out.type.shape) > 2 else out.type.numel
    positions = max(out.type.numel // max(lanes, 1), 1)
    bits = bits_of(out.type)
    row = out.type.shape[-1] if out.type.shape else 1
    return LayerShape(name, op.name, kind, window, lanes, positions, 0, 0, bits_of(x), 0, bits,
                      bits, 0, out.type.numel, window=window, row=row)


def product_layer(op: Op) -> LayerShape:
    """A fixed-point `kiln.mul` of two activations (a squeeze-excitation scale): one
    multiplier per output element, no weights (costed as a 1-input dense layer whose
    multipliers a reuse factor can share)."""
    name, out = output_of(op)
    a, b = (bits_of(v.type) for v in op.operands)
    n = out.type.numel
    return LayerShape(name, op.name, "dense", 1, n, 1, n, n, max(a, b), min(a, b),
                      bits_of(op.results[0].type), bits_of(out.type), 0, n)


def _is_product(op: Op) -> bool:
    return op.name == "kiln.mul" and all(isinstance(v.type.dtype, FixedType)
                                         for v in op.operands)


def layer_shapes(module: Module) -> list[LayerShape]:
    """Every costed layer of `module.main`, in program order."""
    from kiln.targets.cost.fpga_transformer import transformer_shapes  # (imports this module)

    layers: list[LayerShape] = []
    for op in module.main.walk():
        special = transformer_shapes(module, op)
        if special is not None:
            layers.extend(special)
        elif op.name in DOT_OPS:
            layers.append(dot_layer(module, op))
        elif _is_product(op):
            layers.append(product_layer(op))
        elif op.name not in FREE_OPS and op.results:
            layers.append(simple_layer(op))
    return layers


__all__ = ["DEFAULT_BITS", "LayerShape", "bits_of", "layer_shapes"]

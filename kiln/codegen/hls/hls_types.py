"""C++ raw types of the generated HLS code: one typedef per tensor, weight and product.

Every array, stream and accumulator of the generated C++ is declared with a type of its real
width, `kiln::raw_t<W, S>` (`include/kiln_fixed.h`): the narrowest native integer under plain
g++ C-simulation, `ap_int<W>` / `ap_uint<W>` under Vitis (`__SYNTHESIS__`) or
`-DKILN_USE_AP_TYPES`, so the synthesized datapath has the widths the cost estimators
(`kiln.targets.cost`) assume instead of 64-bit registers and multipliers. The widths come
from kiln's type rules (`kiln.ir.fixed_arith`): a tensor's `FixedType`; a dot layer's product
`mul_type(x, w)` (its output type is already the exact accumulator: the K-term sum plus the
bias); an average pool's window sum `sum_type(x, window)`.

Names: tensor `v_conv1` → `v_conv1_t`; layer `layer2_conv1` → `layer2_conv1_w_t` (weights),
`_b_t` (bias), `_p_t` (products), `_sum_t` (window sums); layer names are unique and tensor
names are unique among themselves (`kiln.codegen.hls.layers`).
"""

from __future__ import annotations

import math
from typing import Any

from kiln.codegen.hls.layers import HlsLayer, HlsTensor
from kiln.codegen.writer import CodeWriter
from kiln.ir import fixed_arith
from kiln.ir.types import FixedType

AP_TYPES_NOTE = ("raw fixed-point integers of their real widths: kiln::raw_t<W, S> is the "
                 "narrowest native integer for a g++ C-simulation and ap_int<W> / ap_uint<W> "
                 "under Vitis (__SYNTHESIS__) or -DKILN_USE_AP_TYPES (kiln_fixed.h)")
"""One sentence on the raw types, for the project's README, Makefile and scripts."""


def raw_type(t: FixedType, rom: bool = False) -> str:
    """`kiln::raw_t<W, S>` of a fixed type (`kiln::rom_t<W, S>` for a weight ROM)."""
    return f"kiln::{'rom' if rom else 'raw'}_t<{t.width}, {str(t.signed).lower()}>"


def type_name(t: HlsTensor) -> str:
    return f"{t.name}_t"


def typedef(w: CodeWriter, name: str, t: FixedType, note: str = "", rom: bool = False) -> None:
    w.line(f"typedef {raw_type(t, rom)} {name};  // {t}" + (f" {note}" if note else ""))


def tensor_typedefs(w: CodeWriter, tensors: list[HlsTensor]) -> None:
    """One typedef per tensor (first occurrence wins; aliases share their tensor's type)."""
    seen: set[str] = set()
    for t in tensors:
        if t.name not in seen:
            seen.add(t.name)
            typedef(w, type_name(t), t.dtype)


def product_type(layer: HlsLayer) -> FixedType:
    """A dot layer's exact product type x · w (ap_fixed's `mult` rule)."""
    assert layer.weight_type is not None
    return fixed_arith.mul_type(layer.inputs[0].dtype, layer.weight_type)


def pool_window(layer: HlsLayer) -> int:
    """The most input raws one average-pool output sums (an adaptive bin or the kernel)."""
    kind: Any = layer.op.kind
    if "adaptive" not in layer.op.name:
        return math.prod(kind.kernel)
    spans = []
    for size, out in zip(layer.inputs[0].shape[1:], layer.output.shape[1:]):
        spans.append(max(-(-(o + 1) * size // out) - o * size // out for o in range(out)))
    return math.prod(spans)


def sum_type(layer: HlsLayer) -> FixedType:
    """An average pool's exact window-sum type."""
    return fixed_arith.sum_type(layer.inputs[0].dtype, pool_window(layer))


def layer_typedefs(w: CodeWriter, layer: HlsLayer) -> None:
    """The product (dot layers) or window-sum (average pools) type a layer computes in."""
    if layer.kind in ("dense", "conv1d", "conv2d") and layer.weight_type is not None:
        typedef(w, f"{layer.name}_p_t", product_type(layer), "exact product x * w")
    elif layer.kind.startswith("avg_pool"):
        typedef(w, f"{layer.name}_sum_t", sum_type(layer),
                f"exact sum of {pool_window(layer)} raws")


def weight_typedefs(w: CodeWriter, layer: HlsLayer) -> None:
    """ROM element types (`kiln::rom_t`: ap_int<W> in synthesis, see kiln_fixed.h)."""
    if layer.weight_type is not None:
        typedef(w, f"{layer.name}_w_t", layer.weight_type, rom=True)
    if layer.bias_type is not None:
        typedef(w, f"{layer.name}_b_t", layer.bias_type, rom=True)


__all__ = ["AP_TYPES_NOTE", "layer_typedefs", "product_type", "raw_type", "sum_type",
           "tensor_typedefs", "type_name", "typedef", "weight_typedefs"]

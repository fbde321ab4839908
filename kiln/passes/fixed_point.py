"""FPGA-style fixed point (hls4ml's precision model): every tensor gets a `fixed<W,I>` type.

    kiln.run_passes(module, "fold-batchnorm,fixed-point{width=16}", calibration_data=batches)

**Precision.** `policy=calibrated` (default): the float module runs on the calibration batches
(`kiln.passes.calibrate`), and each activation gets `fixed<width, I>` with I the bits its
largest |value| needs plus the sign: I = floor(log2 max|x|) + 2 (so max|x| < 2^(I-1)), at
least 1 - width/2 (tiny or all-zero tensors). Weights and biases get `fixed<weight-width, I>`
from their own max |w| (per tensor). `policy=uniform` gives every tensor
`fixed<width, integer>` (weights `fixed<weight-width, integer>`) and needs no data.
Conversions into a chosen type use `rounding` (default `rnd`, ties up) and `saturation`
(default `sat`), so those modes are part of the chosen types
(`fixed<16,3,signed,rnd,sat>`); ap_fixed's own defaults are `trn` and `wrap`.

**Representation** (`kiln.passes.fixed_point_rewrite`):
- the inputs are converted by `kiln.quantize {to = fixed<...>}`, the outputs go back to
  their float type by `kiln.dequantize`, so the function signature does not change;
- weights become new `kiln.weight`s named `<name>.fixed` whose type is
  `tensor<...xfixed<W,I>>` (a sparse encoding is kept) and whose data are the raw integers in
  int64; the float weights that nothing reads any more are removed;
- conv / linear / matmul / add / sub / mul / maximum / minimum / reduce_sum compute on the raw
  integers with an **exact** result type (`kiln.ir.fixed_arith`: ap_fixed's rules, with
  ceil(log2 K) guard bits for a sum of K products, so accumulators never overflow), then a
  `kiln.requantize {to = fixed<width, I, signed, rounding, saturation>}` brings the result to
  the layer's chosen precision (its result keeps the layer's value name, the exact value is
  `<name>.acc`); relu, relu6, clamp, leaky_relu, pools, means and shape ops keep their input's
  type (no requantize);
- softmax, layer_norm, batch_norm (run `fold-batchnorm` first), gelu, exp and every other op
  without fixed-point semantics stay float: `kiln.dequantize` before, `kiln.quantize` to the
  calibrated type after (an FPGA target will replace them by lookup tables).

`accum=auto` (the only mode) keeps every accumulator exact; narrower accumulators would need
their own requantize and are left to a later option value.

The interpreter runs the result bit-exactly on int64 raws. An exact result wider than 64 bits
(62-63 for unsigned) cannot be represented: the pass stops with a `KilnError` naming the op and
the option `width` instead of risking an overflow (2·width + log2(fan-in) + 2 bits must fit).

**Statistics**: `activations` (chosen activation types), `weights`, `requantize`, `float-ops`,
`max-accumulator-bits`, and `clipped-tensors` (activations whose calibrated range exceeds their
type: only possible with `policy=uniform`). `fixed_point_report` (in
`kiln.passes.fixed_point_report`) gives range, bits, overflow rate and SQNR per tensor.

**Bad input**: `policy=calibrated` without calibration data, with an empty data set or with
arrays of the wrong shape; `policy=uniform` without `integer`; widths outside 2..64: a
`KilnError` naming the option and the pass. A module that already holds fixed-point (or `q<>`)
values is left alone (info log, statistic `already-quantized`): nothing is converted twice.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

from kiln.errors import KilnError
from kiln.ir.graph import Module, Value
from kiln.ir.types import FixedType, QuantType
from kiln.passes.calibrate import TensorStats, calibration_batches, collect_statistics
from kiln.passes.registry import PassContext, register_pass

WHERE = "pass 'fixed-point'"
Rounding = Literal["rnd", "rnd_zero", "rnd_min_inf", "rnd_inf", "rnd_conv", "trn", "trn_zero"]
Saturation = Literal["sat", "wrap", "sat_zero", "sat_sym", "wrap_sm"]


def integer_bits(amax: float, width: int) -> int:
    """I such that a signed fixed<width, I> holds ±amax: floor(log2 amax) + 2, at least
    1 - width // 2 (also for 0, inf or NaN ranges)."""
    floor = 1 - width // 2
    if not (amax > 0 and math.isfinite(amax)):
        return max(1, floor)
    return max(math.frexp(amax)[1] + 1, floor)


@dataclass(frozen=True)
class Precision:
    """The options that decide types, and the calibrated statistics of the float values."""

    width: int
    weight_width: int
    integer: int | None
    rounding: str
    saturation: str
    stats: dict[Value, TensorStats]

    def make(self, width: int, amax: float) -> FixedType:
        integer = self.integer if self.integer is not None else integer_bits(amax, width)
        return FixedType(width, integer, True, self.rounding, self.saturation)

    def activation(self, value: Value) -> FixedType:
        """The chosen type of a float activation (its calibrated max |x|)."""
        stats = self.stats.get(value)
        lo, hi = stats.range if stats is not None else (0.0, 0.0)
        return self.make(self.width, max(abs(lo), abs(hi)))

    def weight(self, array: np.ndarray) -> FixedType:
        amax = float(np.max(np.abs(array))) if array.size else 0.0
        return self.make(self.weight_width, amax)


def _check_width(value: int, option: str) -> None:
    if not 2 <= value <= 64:
        raise KilnError(f"{WHERE}: option {option}={value} is outside 2..64",
                        hint="ap_fixed widths used on FPGAs are typically 8..18 bits")


def precision_of(module: Module, ctx: PassContext, width: int, integer: int | None,
                 policy: str, rounding: str, saturation: str,
                 weight_width: int | None) -> Precision:
    """Validate the options; calibrate when the policy needs it."""
    _check_width(width, "width")
    _check_width(weight_width or width, "weight-width")
    stats: dict[Value, TensorStats] = {}
    if policy == "uniform":
        if integer is None:
            raise KilnError(f"{WHERE}: policy=uniform needs the option integer (integer bits)",
                            hint="e.g. fixed-point{policy=uniform,width=16,integer=6}")
    else:
        if integer is not None:
            raise KilnError(f"{WHERE}: option integer={integer} applies to policy=uniform "
                            "only; policy=calibrated picks integer bits per tensor")
        batches = calibration_batches(ctx.calibration_data, module.main, WHERE)
        stats = collect_statistics(module, batches)
    FixedType(width, 0, True, rounding, saturation)  # unknown modes raise here
    return Precision(width, weight_width or width, integer, rounding, saturation, stats)


def quantized_already(module: Module) -> str | None:
    """The first fixed-point or q<> type found in the module, as text (None: all float)."""
    func = module.main
    values = [*func.args, *(r for op in func.walk() for r in op.results)]
    for value in values:
        if isinstance(value.type.dtype, (FixedType, QuantType)):
            return str(value.type.dtype)
    return None


@register_pass("fixed-point")
def fixed_point(module: Module, ctx: PassContext, *, width: int = 16,
                integer: int | None = None,
                policy: Literal["calibrated", "uniform"] = "calibrated",
                rounding: Rounding = "rnd", saturation: Saturation = "sat",
                weight_width: int | None = None, accum: Literal["auto"] = "auto") -> bool:
    """Convert to FPGA fixed point: fixed<W,I> per tensor, exact accumulators, requantize."""
    found = quantized_already(module)
    if found is not None:
        ctx.logger.info("fixed-point: @%s already holds %s values; not converting it again",
                        module.name, found)
        ctx.count("already-quantized")
        return False
    from kiln.passes.fixed_point_rewrite import convert
    precision = precision_of(module, ctx, width, integer, policy, rounding, saturation,
                             weight_width)
    return convert(module, precision, ctx)


__all__ = ["Precision", "fixed_point", "integer_bits", "precision_of", "quantized_already"]

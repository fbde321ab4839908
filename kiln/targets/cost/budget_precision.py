"""Per-layer precision for the budget search: realized in the fixed-point IR, checked on data.

The estimator alone can price a narrower layer (`estimate_layers(bits=...)`), but only the IR
can say what it costs in accuracy. `PrecisionGuard.module(fixed, bits)` narrows each named
layer of a fixed-point module to `bits[name]` total bits, keeping its integer bits (so the
calibrated range still fits and only fraction bits are dropped), as the estimator's `bits`
do: the dot layer's weights are requantized to `fixed<w, I_w>` (rounding and saturation of
their type), and the requantize (or input quantize) that types its input, and the one after
it, convert to `fixed<w, I>` (a tensor two layers ask for gets the narrower width); every
later type is re-derived by type inference (exact accumulators stay exact). A width that
leaves no fraction bits is not a candidate.

`PrecisionGuard.sqnr_db(bits)` runs kiln's interpreter on the calibration samples (at most
`max_samples`) and compares the outputs with the float module's:
SQNR = 10·log10(Σ ref² / Σ (out − ref)²) dB over every output value. A configuration is
accepted when its SQNR is at least `min_sqnr_db` (default 30 dB: the error's energy at most
a thousandth of the signal's). Realized modules and SQNRs are cached per configuration.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from kiln.ir import fixed
from kiln.ir.analysis import layer_output
from kiln.ir.graph import Module, Op, Value
from kiln.ir.interpret import interpret
from kiln.ir.ops.core import Weight
from kiln.ir.ops.quant import Quantize, Requantize
from kiln.ir.types import FixedType, TensorType
from kiln.targets.cost.fpga_layers import DOT_OPS

Bits = Mapping[str, int]


def _narrower(t: Any, width: int) -> FixedType | None:
    """`t` with `width` total bits and the same integer bits (None: no fraction bits left)."""
    if not isinstance(t, FixedType) or width >= t.width:
        return t if isinstance(t, FixedType) else None
    if width - t.integer < 0:
        return None
    return FixedType(width, t.integer, t.signed, t.rounding, t.saturation)


def _narrow_weight(module: Module, op: Op, width: int) -> bool:
    """Requantize the weight `op` reads to `width` bits under a new symbol."""
    producer = op.operands[1].producer
    if producer is None or not isinstance(producer.kind, Weight):
        return True
    kind = producer.kind
    old = kind.type.dtype
    new = _narrower(old, width)
    if new is None or not isinstance(old, FixedType):
        return False
    if new == old:
        return True
    symbol = f"{kind.name}.w{width}"
    module.weights[symbol] = fixed.requantize_fixed(np.asarray(module.weights[kind.name]),
                                                    old, new)
    producer.replace_attrs(name=symbol, type=TensorType(kind.type.shape, new,
                                                        kind.type.encoding))
    return True


def _retype(module: Module) -> None:
    """Re-derive every result type in program order (after operand types changed)."""
    for op in module.main.ops:
        if not op.results:
            continue
        types = op.kind.infer_type([v.type for v in op.operands])
        for value, t in zip(op.results, types):
            value.type = t


def _conversion(value: Value) -> Op | None:
    """The requantize / quantize that sets `value`'s type, through type-keeping ops (relu,
    clamp, reshape, max pool, ...); None when something else decides it."""
    producer = value.producer
    while producer is not None and not producer.isa((Requantize, Quantize)):
        if not producer.operands or producer.operands[0].type.dtype != value.type.dtype:
            return None
        producer = producer.operands[0].producer
    return producer


def _plan(module: Module, bits: Bits) -> tuple[dict[Op, int], dict[Op, int]]:
    """Width per conversion op (a layer's input and output, the narrowest request wins)
    and per dot op (its weights)."""
    conversions: dict[Op, int] = {}
    weights: dict[Op, int] = {}
    for op in module.main.ops:
        if op.name not in DOT_OPS:
            continue
        name, result = layer_output(op)
        width = bits.get(name)
        if width is None:
            continue
        weights[op] = width
        for value in (op.operands[0], result):
            conv = _conversion(value)
            if conv is not None:
                conversions[conv] = min(width, conversions.get(conv, width))
    return conversions, weights


def narrow(module: Module, bits: Bits) -> Module | None:
    """A copy of the fixed-point `module` with the named layers' inputs, weights and outputs
    narrowed (module docstring); None when a width leaves some type no fraction bits."""
    if any(op.region is not None for op in module.main.ops):
        return None  # fused groups: their types come from their regions, not re-derived here
    out = module.clone()
    conversions, weights = _plan(out, bits)
    for op, width in weights.items():
        if not _narrow_weight(out, op, width):
            return None
    for op, width in conversions.items():
        to = _narrower(op.kind.to, width)  # type: ignore[attr-defined]
        if to is None:
            return None
        op.replace_attrs(to=to)
    _retype(out)
    return out


def sqnr_db(outputs: Sequence[np.ndarray], reference: Sequence[np.ndarray]) -> float:
    """10·log10(signal / noise) over all values; inf when equal."""
    ref = np.concatenate([np.asarray(r, np.float64).reshape(-1) for r in reference])
    out = np.concatenate([np.asarray(o, np.float64).reshape(-1) for o in outputs])
    noise = float(np.sum((out - ref) ** 2))
    signal = float(np.sum(ref ** 2))
    if noise == 0.0:
        return math.inf
    return 10.0 * math.log10(max(signal, 1e-300) / noise)


def samples_of(batches: Any, limit: int) -> list[tuple[np.ndarray, ...]]:
    """Single-sample input tuples (batch 1, what the fixed-point module takes)."""
    out: list[tuple[np.ndarray, ...]] = []
    for batch in batches:
        arrays = [np.asarray(a) for a in (batch if isinstance(batch, (tuple, list))
                                          else (batch,))]
        for i in range(len(arrays[0])):
            out.append(tuple(a[i:i + 1] for a in arrays))
            if len(out) >= limit:
                return out
    return out


def _key(bits: Bits) -> tuple[tuple[str, int], ...]:
    return tuple(sorted(bits.items()))


@dataclass
class PrecisionGuard:
    """Realizes per-layer widths and checks them on calibration samples (module docstring)."""

    reference: Module
    samples: list[tuple[np.ndarray, ...]]
    min_sqnr_db: float = 30.0
    max_samples: int = 32
    base: Module | None = None
    _modules: dict[tuple[tuple[str, int], ...], Module | None] = field(default_factory=dict)
    _sqnr: dict[tuple[tuple[str, int], ...], float] = field(default_factory=dict)
    _want: list[list[np.ndarray]] = field(default_factory=list)

    def module(self, fixed_module: Module, bits: Bits) -> Module | None:
        """The realized module of `bits` (None: a width leaves no fraction bits)."""
        self.base = self.base or fixed_module
        key = _key(bits)
        if key not in self._modules:
            self._modules[key] = narrow(fixed_module, bits) if bits else fixed_module
        return self._modules[key]

    def sqnr_db(self, bits: Bits) -> float:
        """SQNR of the configuration's outputs against the float module (cached)."""
        key = _key(bits)
        if key not in self._sqnr:
            assert self.base is not None, "module() first"
            candidate = self.module(self.base, bits)
            if candidate is None:
                return -math.inf
            samples = self.samples[:self.max_samples]
            if not self._want:
                self._want = [list(interpret(self.reference, *x)) for x in samples]
            got = [list(interpret(candidate, *x)) for x in samples]
            self._sqnr[key] = sqnr_db([o for row in got for o in row],
                                      [r for row in self._want for r in row])
        return self._sqnr[key]

    def accepts(self, bits: Bits) -> bool:
        return self.sqnr_db(bits) >= self.min_sqnr_db


__all__ = ["PrecisionGuard", "narrow", "samples_of", "sqnr_db"]

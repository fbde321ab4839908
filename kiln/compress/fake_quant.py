"""Fake quantization in PyTorch with a straight-through estimator: kiln's numerics, trainable.

**Affine int8** uses torch's own `fake_quantize_per_tensor_affine` / `_per_channel_affine`
(forward `(clamp(rint(x · (1/s)) + zp, qmin, qmax) − zp) · s`; backward passes the gradient
where x was not clipped). That is kiln's `kiln.quantize {scheme = "mul"}` then
`kiln.dequantize` bit for bit, and the torch frontend imports these ops as exactly that pair
(`kiln/frontend/torch_ops_quant.py`), so a fake-quantized model traces into a QDQ module that
`fold-qdq` turns into integer ops. Weights are symmetric int8 in [-127, 127] per output channel
(axis 0), their scales max|w[c]| / 127 rounded to float32 as kiln's `weight_type` chooses them.

**Fixed point** `fixed<W,I>` (`fake_quantize_fixed`, a custom autograd function): the value is
scaled by 2^F (F = W − I), rounded by the type's rounding mode and brought into range by its
saturation mode, then scaled back — what `kiln.ir.fixed.quantize_fixed` followed by
`fixed_to_float` computes, bit for bit for float32 inputs (the arithmetic runs in float64, where
x · 2^F and the ± 0.5 of the rounding modes are exact for |x · 2^F| < 2^52). Backward: the
straight-through estimator, the gradient passed where the rounded value was in range and zeroed
where it saturated or wrapped. `wrap_sm` is not supported here (a `KilnError`).

`WeightQuant` is the weight half of a quantization-aware layer: by default it recomputes the
scale (int8) or the integer bits (fixed, from max|w| as `fixed-point` picks them) from the
current weight at every call; `freeze()` stores them in buffers so that a trace sees constant
quantization parameters.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from kiln.errors import KilnError
from kiln.ir.types import FixedType, QuantType

WEIGHT_MAX = 127
"""Symmetric int8 weights use [-127, 127] (zero point 0), as kiln's quantize pass does."""


# -- affine ----------------------------------------------------------------------------------------
def fake_quantize_affine(x: torch.Tensor, q: QuantType) -> torch.Tensor:
    """x rounded to q's grid and saturated to its storage range, per tensor or per channel."""
    info = torch.iinfo(getattr(torch, q.storage.numpy.name))
    low, high = int(info.min), int(info.max)
    if q.axis is None:
        return torch.fake_quantize_per_tensor_affine(x, float(q.scale[0]), int(q.zero_point[0]),
                                                     low, high)
    scale = torch.tensor(q.scale, dtype=torch.float32)
    zero = torch.tensor(q.zero_point, dtype=torch.int32)
    return torch.fake_quantize_per_channel_affine(x, scale, zero, q.axis, low, high)


def weight_scales(w: torch.Tensor) -> torch.Tensor:
    """float32 per-output-channel scales max|w[c]| / 127 (1.0 for an all-zero channel)."""
    mags = w.detach().abs().reshape(w.shape[0], -1).amax(dim=1).double() / WEIGHT_MAX
    scales = mags.float()
    return torch.where(scales > 0, scales, torch.ones_like(scales))


# -- fixed point -----------------------------------------------------------------------------------
def _half_up(y: torch.Tensor) -> torch.Tensor:
    return torch.floor(y + 0.5)


def _half_down(y: torch.Tensor) -> torch.Tensor:
    return torch.ceil(y - 0.5)


ROUNDING: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "trn": torch.floor,
    "trn_zero": torch.trunc,
    "rnd": _half_up,
    "rnd_min_inf": _half_down,
    "rnd_zero": lambda y: torch.sign(y) * _half_down(y.abs()),
    "rnd_inf": lambda y: torch.sign(y) * _half_up(y.abs()),
    "rnd_conv": torch.round,
}
"""Rounding of y = x · 2^F to an integer, per ap_fixed mode (kiln.ir.fixed docstring)."""


def _saturate(r: torch.Tensor, t: FixedType) -> tuple[torch.Tensor, torch.Tensor]:
    """(the raw integer brought into range by t's saturation mode, mask of in-range values)."""
    low, high = t.raw_range
    inside = (r >= low) & (r <= high)
    mode = t.saturation
    if mode == "sat":
        return r.clamp(low, high), inside
    if mode == "sat_sym":
        return r.clamp(-high if t.signed else low, high), inside
    if mode == "sat_zero":
        return torch.where(inside, r, torch.zeros_like(r)), inside
    if mode == "wrap":
        span = float(high - low + 1)
        return torch.remainder(r - low, span) + low, inside
    raise KilnError(f"fake quantization does not support saturation mode '{mode}'",
                    hint="use sat, sat_sym, sat_zero or wrap")


class _FixedFakeQuant(torch.autograd.Function):
    """Forward: kiln's float → fixed<W,I> → float; backward: straight-through in range."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, t: FixedType) -> torch.Tensor:
        step = math.ldexp(1.0, t.frac_bits)
        raw = ROUNDING[t.rounding](x.double() * step)
        raw, inside = _saturate(raw, t)
        ctx.save_for_backward(inside)
        return (raw / step).to(x.dtype)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        (inside,) = ctx.saved_tensors
        return grad * inside.to(grad.dtype), None


def fake_quantize_fixed(x: torch.Tensor, t: FixedType) -> torch.Tensor:
    """x converted to fixed<W,I> and back (module docstring)."""
    if t.rounding not in ROUNDING:
        raise KilnError(f"fake quantization does not support rounding mode '{t.rounding}'")
    if t.saturation == "wrap_sm":
        raise KilnError("fake quantization does not support saturation mode 'wrap_sm'",
                        hint="use sat, sat_sym, sat_zero or wrap")
    out = _FixedFakeQuant.apply(x, t)
    assert isinstance(out, torch.Tensor)
    return out


def integer_bits(amax: float, width: int) -> int:
    """The integer bits `fixed-point{policy=calibrated}` gives a tensor of max |x| = amax."""
    from kiln.passes.fixed_point import integer_bits as kiln_integer_bits
    return kiln_integer_bits(amax, width)


def fixed_type(amax: float, width: int, rounding: str = "rnd",
               saturation: str = "sat") -> FixedType:
    """The calibrated signed fixed<width, I> for max |x| = amax."""
    return FixedType(width, integer_bits(amax, width), True, rounding, saturation)


# -- weights ---------------------------------------------------------------------------------------
class WeightQuant(nn.Module):
    """Fake quantization of one weight: int8 per channel, or fixed point per tensor."""

    def __init__(self, scheme: str, width: int = 8, rounding: str = "rnd",
                 saturation: str = "sat") -> None:
        super().__init__()
        if scheme not in ("int8", "fixed"):
            raise KilnError(f"unknown fake quantization scheme {scheme!r}",
                            hint="use int8 or fixed")
        self.scheme, self.width = scheme, width
        self.rounding, self.saturation = rounding, saturation
        self.frozen = False
        self.register_buffer("scale", None)
        self.register_buffer("zero_point", None)
        self.frozen_type: FixedType | None = None

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        if self.scheme == "fixed":
            return fake_quantize_fixed(w, self.frozen_type or self.type_for(w))
        scale = self.scale if self.frozen else weight_scales(w)
        zero = self.zero_point if self.frozen else torch.zeros(len(scale), dtype=torch.int32)
        return torch.fake_quantize_per_channel_affine(w, scale, zero, 0, -WEIGHT_MAX, WEIGHT_MAX)

    def type_for(self, w: torch.Tensor) -> FixedType:
        amax = float(w.detach().abs().max()) if w.numel() else 0.0
        return fixed_type(amax, self.width, self.rounding, self.saturation)

    def freeze(self, w: torch.Tensor) -> None:
        """Store the quantization parameters of `w` (constants for tracing)."""
        if self.scheme == "fixed":
            self.frozen_type = self.type_for(w)
        else:
            self.scale = weight_scales(w)
            self.zero_point = torch.zeros(len(self.scale), dtype=torch.int32)
        self.frozen = True

    def extra_repr(self) -> str:
        return f"scheme={self.scheme}, width={self.width}, frozen={self.frozen}"


__all__ = ["ROUNDING", "WeightQuant", "fake_quantize_affine", "fake_quantize_fixed",
           "fixed_type", "integer_bits", "weight_scales"]

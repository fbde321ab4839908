"""The modules a quantization-aware model is made of: fake-quantized layers and activations.

`QuantConv1d`, `QuantConv2d` and `QuantLinear` subclass their torch layers (so
`torch.nn.utils.prune` masks, optimizers and state dicts treat them as usual: `conv1.weight`
keeps its name) and pass the weight — and, for fixed point, the bias — through a `WeightQuant`
before computing. `ActQuant` fake-quantizes an activation to one fixed type: a per-tensor
affine `q<i8, s, zp>` or a `fixed<W,I>`, chosen by calibration. The float layers come back with
`to_float` (the trained weights, no fake quantization), which is what a fixed-point export
traces before kiln's `fixed-point` pass quantizes it again with the same rules.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from kiln.compress.fake_quant import WeightQuant, fake_quantize_affine, fake_quantize_fixed
from kiln.errors import KilnError
from kiln.ir.types import FixedType, QuantType


class ActQuant(nn.Module):
    """Fake quantization of an activation to one calibrated type (straight-through)."""

    def __init__(self, qtype: QuantType | FixedType) -> None:
        super().__init__()
        self.qtype = qtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if isinstance(self.qtype, FixedType):
            return fake_quantize_fixed(x, self.qtype)
        return fake_quantize_affine(x, self.qtype)

    def extra_repr(self) -> str:
        return str(self.qtype)


class _QuantLayer:
    """Shared by the quantized layers: the fake-quantized weight and bias."""

    weight: torch.Tensor
    weight_quant: WeightQuant
    bias_quant: WeightQuant | None

    def quantized_weight(self) -> torch.Tensor:
        return self.weight_quant(self.weight)

    def quantized_bias(self) -> torch.Tensor | None:
        bias: torch.Tensor | None = getattr(self, "bias", None)
        if bias is None or self.bias_quant is None:
            return bias
        return self.bias_quant(bias)

    def freeze(self) -> None:
        """Store the current quantization parameters (constants for a trace)."""
        self.weight_quant.freeze(self.weight)
        bias: torch.Tensor | None = getattr(self, "bias", None)
        if bias is not None and self.bias_quant is not None:
            self.bias_quant.freeze(bias)


class QuantConv1d(_QuantLayer, nn.Conv1d):
    """`nn.Conv1d` computing with its fake-quantized weight (and bias, for fixed point)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, self.quantized_weight(), self.quantized_bias())


class QuantConv2d(_QuantLayer, nn.Conv2d):
    """`nn.Conv2d` computing with its fake-quantized weight (and bias, for fixed point)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, self.quantized_weight(), self.quantized_bias())


class QuantLinear(_QuantLayer, nn.Linear):
    """`nn.Linear` computing with its fake-quantized weight (and bias, for fixed point)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.quantized_weight(), self.quantized_bias())


QUANT_OF: dict[type[nn.Module], type[nn.Module]] = {
    nn.Conv1d: QuantConv1d, nn.Conv2d: QuantConv2d, nn.Linear: QuantLinear,
}
FLOAT_OF = {q: f for f, q in QUANT_OF.items()}


def _empty(cls: type[nn.Module], layer: nn.Module) -> nn.Module:
    """A new layer of class `cls` with `layer`'s hyperparameters (weights set afterwards)."""
    if isinstance(layer, nn.Linear):
        return cls(layer.in_features, layer.out_features, bias=layer.bias is not None)
    if isinstance(layer, (nn.Conv1d, nn.Conv2d)):
        return cls(layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride,
                   layer.padding, layer.dilation, layer.groups, layer.bias is not None,
                   layer.padding_mode)
    raise KilnError(f"cannot fake-quantize a {type(layer).__name__} layer")


def _move_parameters(source: nn.Module, target: nn.Module) -> nn.Module:
    target.weight = source.weight
    target.bias = source.bias
    return target.train(source.training)


def to_quant(layer: nn.Module, scheme: str, width: int, **modes: Any) -> nn.Module:
    """A quantization-aware twin of a float conv/linear sharing its parameters."""
    quant: Any = _move_parameters(layer, _empty(QUANT_OF[type(layer)], layer))
    quant.weight_quant = WeightQuant(scheme, width, **modes)
    has_bias = scheme == "fixed" and layer.bias is not None
    quant.bias_quant = WeightQuant(scheme, width, **modes) if has_bias else None
    return quant


def to_float(layer: nn.Module) -> nn.Module:
    """The plain float layer of a quantization-aware one, sharing its parameters."""
    return _move_parameters(layer, _empty(FLOAT_OF[type(layer)], layer))


__all__ = ["FLOAT_OF", "QUANT_OF", "ActQuant", "QuantConv1d", "QuantConv2d", "QuantLinear",
           "to_float", "to_quant"]

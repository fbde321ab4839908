"""Channel-last (NHWC) twins of the 2-D spatial ops, for targets that want channels innermost.

kiln's canonical activation layout is NCHW (PyTorch's). The `layout{to=nhwc}` pass rewrites
`conv2d` and the 2-D pools into the ops below, with explicit `kiln.transpose`s only where the
layouts meet. Each twin has exactly the attributes of its NCHW op and is *defined* by it:

    op_nhwc(x)  =  transpose(op_nchw(transpose(x, NCHW_FROM_NHWC)), NHWC_FROM_NCHW)

(a convolution's weight is HWIO — (kH, kW, Cin/groups, Cout), the im2col-friendly order — and
converts with `OIHW_FROM_HWIO`). Separate op kinds rather than a `layout` attribute on the NCHW
ops, so a pass or target that knows only NCHW never misreads a channel-last op: it simply does
not match it. `nchw()` returns the twin, `from_nchw()` builds one from it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from kiln.ir.ops.base import OpDef, fail, register_op
from kiln.ir.ops.nn_conv import Conv2d
from kiln.ir.ops.nn_pool import AdaptiveAvgPool2d, AvgPool2d, MaxPool2d
from kiln.ir.types import TensorType

NHWC_FROM_NCHW = (0, 2, 3, 1)
"""`transpose` perm turning an NCHW tensor into NHWC."""
NCHW_FROM_NHWC = (0, 3, 1, 2)
"""`transpose` perm turning an NHWC tensor into NCHW."""
HWIO_FROM_OIHW = (2, 3, 1, 0)
"""`transpose` perm turning an OIHW conv weight into HWIO."""
OIHW_FROM_HWIO = (3, 2, 0, 1)
"""`transpose` perm turning an HWIO conv weight into OIHW."""


def permute_type(t: TensorType, perm: Sequence[int]) -> TensorType:
    """The type of `transpose(value of type t, perm)`."""
    return TensorType(tuple(t.shape[p] for p in perm), t.dtype)


@dataclass(frozen=True)
class ChannelsLast(OpDef):
    """Base of the NHWC twins: semantics borrowed from `NCHW` through transposes."""

    NCHW: ClassVar[type[OpDef]]
    """The canonical-layout op this one mirrors (same attribute fields)."""
    HAS_WEIGHT: ClassVar[bool] = False
    """Operand 1 is an HWIO convolution weight."""

    def nchw(self) -> OpDef:
        """The equivalent op on NCHW tensors (and OIHW weights)."""
        return self.NCHW(**{f.name: getattr(self, f.name) for f in dataclasses.fields(self)})

    @classmethod
    def from_nchw(cls, kind: OpDef) -> ChannelsLast:
        """The NHWC twin of `kind` (an instance of `NCHW`)."""
        if not isinstance(kind, cls.NCHW):
            raise TypeError(f"{cls.NAME} mirrors {cls.NCHW.NAME}, not {kind.NAME}")
        return cls(**{f.name: getattr(kind, f.name) for f in dataclasses.fields(kind)})

    def _nchw_types(self, operands: Sequence[TensorType]) -> list[TensorType]:
        x = operands[0]
        if x.rank != 4:
            raise fail(f"input must have rank 4 (N, H, W, C), got {x}")
        types = [permute_type(x, NCHW_FROM_NHWC), *operands[1:]]
        if self.HAS_WEIGHT and len(operands) > 1:
            if operands[1].rank != 4:
                raise fail(f"weight must have rank 4 (kH, kW, Cin/groups, Cout), "
                           f"got {operands[1]}")
            types[1] = permute_type(operands[1], OIHW_FROM_HWIO)
        return types

    def verify(self, operands: Sequence[TensorType]) -> None:
        self.nchw().verify(self._nchw_types(operands))

    def infer_type(self, operands: Sequence[TensorType]) -> tuple[TensorType, ...]:
        results = self.nchw().infer_type(self._nchw_types(operands))
        return tuple(permute_type(t, NHWC_FROM_NCHW) for t in results)

    def reference(self, *args: np.ndarray) -> tuple[np.ndarray, ...]:
        """The NCHW reference on contiguous NCHW copies, so that results are bit-identical to
        the NCHW op's (NumPy's summation order depends on the memory layout)."""
        converted = [np.ascontiguousarray(args[0].transpose(NCHW_FROM_NHWC)), *args[1:]]
        if self.HAS_WEIGHT and len(args) > 1:
            converted[1] = np.ascontiguousarray(args[1].transpose(OIHW_FROM_HWIO))
        results = self.nchw().reference(*converted)
        return tuple(np.ascontiguousarray(y.transpose(NHWC_FROM_NCHW)) for y in results)


@register_op
@dataclass(frozen=True)
class Conv2dNhwc(ChannelsLast):
    """2-D convolution, NHWC input × HWIO weight (kH, kW, Cin/groups, Cout) (+ bias)."""

    NAME = "kiln.conv2d_nhwc"
    OPERANDS = ("input", "weight", "bias?")
    NCHW = Conv2d
    HAS_WEIGHT = True
    stride: tuple[int, ...] = (1, 1)
    padding: tuple[int, ...] = (0, 0, 0, 0)
    dilation: tuple[int, ...] = (1, 1)
    groups: int = 1


@register_op
@dataclass(frozen=True)
class MaxPool2dNhwc(ChannelsLast):
    """2-D max pooling over NHWC (pads with -inf), PyTorch's ceil_mode rule."""

    NAME = "kiln.max_pool2d_nhwc"
    OPERANDS = ("input",)
    NCHW = MaxPool2d
    kernel: tuple[int, ...]
    stride: tuple[int, ...]
    padding: tuple[int, ...] = (0, 0, 0, 0)
    dilation: tuple[int, ...] = (1, 1)
    ceil_mode: bool = False


@register_op
@dataclass(frozen=True)
class AvgPool2dNhwc(ChannelsLast):
    """2-D average pooling over NHWC, PyTorch's ceil_mode and count_include_pad rules."""

    NAME = "kiln.avg_pool2d_nhwc"
    OPERANDS = ("input",)
    NCHW = AvgPool2d
    kernel: tuple[int, ...]
    stride: tuple[int, ...]
    padding: tuple[int, ...] = (0, 0, 0, 0)
    ceil_mode: bool = False
    count_include_pad: bool = True


@register_op
@dataclass(frozen=True)
class AdaptiveAvgPool2dNhwc(ChannelsLast):
    """2-D average pooling of NHWC to a fixed output size; (1, 1) is global average pooling."""

    NAME = "kiln.adaptive_avg_pool2d_nhwc"
    OPERANDS = ("input",)
    NCHW = AdaptiveAvgPool2d
    output_size: tuple[int, ...] = (1, 1)


CHANNELS_LAST: dict[type[OpDef], type[ChannelsLast]] = {
    cls.NCHW: cls for cls in (Conv2dNhwc, MaxPool2dNhwc, AvgPool2dNhwc, AdaptiveAvgPool2dNhwc)
}
"""NCHW op class → its NHWC twin."""

"""kiln's immutable types: scalar dtypes, FPGA fixed point, affine quantized, sparse tensors.

Every value in the IR has a `TensorType`. Types are frozen dataclasses, so they hash, compare by
value and can be shared. Their text form is part of the IR format (see `printer.py`); the parser
rebuilds an equal object from it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

from kiln.errors import KilnError

ROUNDING_MODES = ("rnd", "rnd_zero", "rnd_min_inf", "rnd_inf", "rnd_conv", "trn", "trn_zero")
"""Rounding modes of `fixed<>`, named after ap_fixed's AP_RND, AP_RND_ZERO, ... AP_TRN_ZERO."""
SATURATION_MODES = ("wrap", "sat", "sat_zero", "sat_sym", "wrap_sm")
"""Overflow modes of `fixed<>`, named after ap_fixed's AP_WRAP, AP_SAT, ... AP_WRAP_SM."""


class DType:
    """Base of every element type."""

    @property
    def numpy(self) -> np.dtype:
        """The NumPy dtype the interpreter stores this element type in."""
        raise NotImplementedError

    @property
    def bits(self) -> int:
        raise NotImplementedError

    @property
    def is_float(self) -> bool:
        return False

    @property
    def is_integer(self) -> bool:
        return False


_SCALARS: dict[str, tuple[str, int]] = {
    "f32": ("float32", 32), "f16": ("float16", 16), "bf16": ("float32", 16),
    "f64": ("float64", 64),
    "i8": ("int8", 8), "u8": ("uint8", 8), "i16": ("int16", 16), "i32": ("int32", 32),
    "i64": ("int64", 64), "bool": ("bool", 1),
}


@dataclass(frozen=True)
class ScalarType(DType):
    """A plain machine element type: f32, f16, bf16, f64, i8, u8, i16, i32, i64 or bool.

    bf16 is stored in float32 by the interpreter and rounded to bf16 precision by `cast`.
    """

    name: str

    def __post_init__(self) -> None:
        if self.name not in _SCALARS:
            raise KilnError(f"unknown element type '{self.name}'",
                            hint=f"use one of {', '.join(_SCALARS)}")

    @property
    def numpy(self) -> np.dtype:
        return np.dtype(_SCALARS[self.name][0])

    @property
    def bits(self) -> int:
        return _SCALARS[self.name][1]

    @property
    def is_float(self) -> bool:
        return self.name in ("f32", "f16", "bf16", "f64")

    @property
    def is_integer(self) -> bool:
        return self.name in ("i8", "u8", "i16", "i32", "i64")

    @property
    def is_signed(self) -> bool:
        return self.name != "u8" and self.name != "bool"

    def __str__(self) -> str:
        return self.name


F32, F16, BF16, F64 = ScalarType("f32"), ScalarType("f16"), ScalarType("bf16"), ScalarType("f64")
I8, U8, I16, I32, I64 = (ScalarType(n) for n in ("i8", "u8", "i16", "i32", "i64"))
BOOL = ScalarType("bool")


@dataclass(frozen=True)
class FixedType(DType):
    """FPGA fixed point `fixed<W,I>`: W total bits, I integer bits (sign included when signed).

    Semantics mirror Xilinx `ap_fixed<W,I,Q,O>` / `ap_ufixed`: a value is an integer `raw` scaled
    by 2^-(W-I). The interpreter stores `raw` in int64, so arithmetic is bit-exact.
    """

    width: int
    integer: int
    signed: bool = True
    rounding: str = "trn"
    saturation: str = "wrap"

    def __post_init__(self) -> None:
        if not 1 <= self.width <= 64:
            raise KilnError(f"fixed<{self.width},{self.integer}>: width must be in 1..64")
        if self.rounding not in ROUNDING_MODES:
            raise KilnError(f"unknown rounding mode '{self.rounding}'",
                            hint=f"use one of {', '.join(ROUNDING_MODES)}")
        if self.saturation not in SATURATION_MODES:
            raise KilnError(f"unknown saturation mode '{self.saturation}'",
                            hint=f"use one of {', '.join(SATURATION_MODES)}")

    @property
    def numpy(self) -> np.dtype:
        return np.dtype("int64")

    @property
    def bits(self) -> int:
        return self.width

    @property
    def frac_bits(self) -> int:
        return self.width - self.integer

    @property
    def raw_range(self) -> tuple[int, int]:
        """Smallest and largest raw integer representable."""
        if self.signed:
            return -(1 << (self.width - 1)), (1 << (self.width - 1)) - 1
        return 0, (1 << self.width) - 1

    @property
    def value_range(self) -> tuple[float, float]:
        lo, hi = self.raw_range
        return math.ldexp(lo, -self.frac_bits), math.ldexp(hi, -self.frac_bits)

    def __str__(self) -> str:
        if (self.signed, self.rounding, self.saturation) == (True, "trn", "wrap"):
            return f"fixed<{self.width},{self.integer}>"
        sign = "signed" if self.signed else "unsigned"
        return f"fixed<{self.width},{self.integer},{sign},{self.rounding},{self.saturation}>"


@dataclass(frozen=True)
class QuantType(DType):
    """Affine quantized integers `q<storage, scale, zero_point[, axis=k]>`.

    real = scale * (stored - zero_point); per tensor when `axis` is None, else one scale and
    zero point per index along `axis`. The interpreter stores the integers in `storage`.
    """

    storage: ScalarType
    scale: tuple[float, ...]
    zero_point: tuple[int, ...]
    axis: int | None = None

    def __post_init__(self) -> None:
        if not self.storage.is_integer:
            raise KilnError(f"quantized storage must be an integer type, not {self.storage}")
        if len(self.scale) != len(self.zero_point) or not self.scale:
            raise KilnError("quantized type needs as many zero points as scales (at least one)")
        if self.axis is None and len(self.scale) != 1:
            raise KilnError("a per-tensor quantized type has one scale; give `axis` for more")
        if any(not (s > 0 and math.isfinite(s)) for s in self.scale):
            raise KilnError(f"quantization scales must be positive and finite: {self.scale}")
        info = np.iinfo(self.storage.numpy)
        if any(not info.min <= z <= info.max for z in self.zero_point):
            raise KilnError(f"zero point out of range of {self.storage}: {self.zero_point}")

    @property
    def numpy(self) -> np.dtype:
        return self.storage.numpy

    @property
    def bits(self) -> int:
        return self.storage.bits

    @property
    def is_integer(self) -> bool:
        return True

    def __str__(self) -> str:
        if self.axis is None:
            return f"q<{self.storage}, {self.scale[0]!r}, {self.zero_point[0]}>"
        scales = ", ".join(repr(s) for s in self.scale)
        zps = ", ".join(str(z) for z in self.zero_point)
        return f"q<{self.storage}, [{scales}], [{zps}], axis={self.axis}>"


SparseFormat = Literal["csr", "nm", "block"]


@dataclass(frozen=True)
class SparseEncoding:
    """How a sparse weight is stored: `csr`, `nm<n,m>` (n non-zeros in every m) or `block<r,c>`."""

    format: SparseFormat
    params: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        expected = {"csr": 0, "nm": 2, "block": 2}
        if self.format not in expected:
            raise KilnError(f"unknown sparse format '{self.format}'", hint="use csr, nm or block")
        if len(self.params) != expected[self.format] or any(p <= 0 for p in self.params):
            raise KilnError(f"sparse format '{self.format}' takes {expected[self.format]} "
                            "positive parameters")

    def __str__(self) -> str:
        if not self.params:
            return self.format
        return f"{self.format}<{','.join(str(p) for p in self.params)}>"


@dataclass(frozen=True)
class TensorType:
    """A ranked tensor with static shape, an element type and an optional sparse encoding."""

    shape: tuple[int, ...]
    dtype: DType = F32
    encoding: SparseEncoding | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "shape", tuple(int(d) for d in self.shape))
        if any(d < 0 for d in self.shape):
            raise KilnError(f"negative dimension in shape {self.shape}")

    @property
    def rank(self) -> int:
        return len(self.shape)

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def numpy_dtype(self) -> np.dtype:
        return self.dtype.numpy

    def with_shape(self, shape: tuple[int, ...] | list[int]) -> TensorType:
        return TensorType(tuple(shape), self.dtype)

    def with_dtype(self, dtype: DType) -> TensorType:
        return TensorType(self.shape, dtype, self.encoding)

    def __str__(self) -> str:
        dims = "".join(f"{d}x" for d in self.shape)
        enc = f", {self.encoding}" if self.encoding is not None else ""
        return f"tensor<{dims}{self.dtype}{enc}>"


def scalar_type(name: str) -> ScalarType:
    """The scalar dtype called `name` (`f32`, `i8`, ...); a `KilnError` for anything else."""
    return ScalarType(name)


def dtype_from_numpy(dtype: np.dtype) -> ScalarType:
    """kiln's scalar type for a NumPy dtype."""
    for name, (np_name, _) in _SCALARS.items():
        if name != "bf16" and np.dtype(np_name) == dtype:
            return ScalarType(name)
    raise KilnError(f"NumPy dtype {dtype} has no kiln equivalent")

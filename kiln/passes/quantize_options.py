"""The options of the quantize pass, checked once, shared by calibration and lowering."""

from __future__ import annotations

from dataclasses import dataclass

from kiln.errors import KilnError
from kiln.ir.types import I8, U8, ScalarType
from kiln.passes.calibrate import OBSERVERS

DTYPES = {"int8": I8, "uint8": U8}
"""Activation storage types the `dtype` option names (weights are always symmetric int8)."""


@dataclass(frozen=True)
class QuantOptions:
    """`quantize{dtype, per-channel, symmetric, observer, percentile, keep-float, max-error}`."""

    dtype: str = "int8"
    per_channel: bool = True
    symmetric: bool = False
    observer: str = "minmax"
    percentile: float = 99.99
    keep_float: tuple[str, ...] = ()
    max_error: float | None = None

    def __post_init__(self) -> None:
        where = "pass 'quantize': option"
        if self.dtype not in DTYPES:
            raise KilnError(f"{where} dtype='{self.dtype}' is not supported",
                            hint=f"use one of {', '.join(DTYPES)}")
        if self.observer not in OBSERVERS:
            raise KilnError(f"{where} observer='{self.observer}' is unknown",
                            hint=f"use one of {', '.join(OBSERVERS)}")
        if not 50.0 < self.percentile <= 100.0:
            raise KilnError(f"{where} percentile={self.percentile} must be in (50, 100]")
        if self.max_error is not None and not self.max_error > 0:
            raise KilnError(f"{where} max-error={self.max_error} must be positive",
                            hint="a relative RMS error, e.g. max-error=0.05 for 5 %")

    @property
    def storage(self) -> ScalarType:
        """The activation storage type."""
        return DTYPES[self.dtype]

"""Shared inputs of the kiln_fixed.h tests (test_hls_fixed.py, test_hls_ap_fixed.py)."""

from __future__ import annotations

import numpy as np

from kiln.ir.types import FixedType


def edge_raws(src: FixedType, dst: FixedType, rng: np.random.Generator,
              count: int) -> np.ndarray:
    """Random raws of `src`, a third of them exact ties (and ties ± 1) of the conversion to
    `dst` (uniform raws almost never hit a tie), plus the range ends."""
    lo, hi = src.raw_range
    raw = rng.integers(lo, hi, count, endpoint=True, dtype=np.int64)
    d = src.frac_bits - dst.frac_bits
    if d > 0:
        third = count // 3
        ties = (raw[:third] >> d << d) + (1 << (d - 1)) + rng.integers(-1, 2, third)
        raw[:third] = np.clip(ties, lo, hi)
    raw[-6:] = [lo, hi, 0, -1 if src.signed else 2, 1, lo + 1]
    return raw

"""Attribute value types that are not plain Python scalars or tuples."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kiln.ir.types import TensorType, dtype_from_numpy


@dataclass(frozen=True)
class Dense:
    """An immutable, hashable tensor literal (`dense<[1.0, 2.0]> : tensor<2xf32>` in text).

    Stored as bytes so that ops holding it stay frozen, hashable and comparable bit for bit.
    """

    data: bytes
    dtype: str
    shape: tuple[int, ...]

    @staticmethod
    def of(array: np.ndarray | float | int) -> Dense:
        arr = np.asarray(array)
        arr = np.ascontiguousarray(arr).reshape(arr.shape)  # ascontiguousarray makes 0-d 1-d
        return Dense(arr.tobytes(), arr.dtype.str, tuple(arr.shape))

    @property
    def array(self) -> np.ndarray:
        arr = np.frombuffer(self.data, dtype=np.dtype(self.dtype)).reshape(self.shape)
        arr.flags.writeable = False
        return arr

    @property
    def type(self) -> TensorType:
        return TensorType(self.shape, dtype_from_numpy(np.dtype(self.dtype)))

    @property
    def numel(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

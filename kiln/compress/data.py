"""Training and calibration data for the torch side: checked once, iterated deterministically.

`train_data` is a torch `DataLoader` yielding `(inputs, labels)` batches, or a pair `(X, y)` of
tensors or arrays (N samples of inputs, N integer class labels). A pair is shuffled each epoch
by a private `torch.Generator` seeded by the caller, so training is reproducible and the global
RNG is untouched; a DataLoader is iterated as it is (its own sampler decides the order).

`calibration_data` (for fake quantization) is a tensor or array of inputs (the whole set, split
into batches here), or an iterable of batches, each a tensor or an `(inputs, labels)` pair whose
labels are ignored — a training DataLoader works as is. Only single-input models are handled.

Bad input — an empty data set, X and y of different lengths, labels that are not integer class
indices — raises a `KilnError` naming the argument.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from kiln.errors import KilnError

Batch = tuple[torch.Tensor, torch.Tensor]
CALIBRATION_BATCH = 256


def as_tensor(value: Any, what: str) -> torch.Tensor:
    """A tensor from a tensor or an array-like (no copy for tensors)."""
    if isinstance(value, torch.Tensor):
        return value.detach()
    try:
        return torch.as_tensor(np.asarray(value))
    except (TypeError, ValueError) as exc:
        raise KilnError(f"{what} must be a tensor or an array, got {type(value).__name__}"
                        ) from exc


@dataclass(frozen=True)
class TrainData:
    """The checked training data: either a DataLoader or in-memory tensors `x`, `y`."""

    loader: DataLoader | None = None
    x: torch.Tensor | None = None
    y: torch.Tensor | None = None

    def batches_per_epoch(self, batch_size: int) -> int | None:
        if self.x is not None:
            return -(-len(self.x) // batch_size)
        try:
            return len(self.loader)  # type: ignore[arg-type]
        except TypeError:  # an iterable-style dataset has no length
            return None

    def epoch(self, batch_size: int, generator: torch.Generator) -> Iterator[Batch]:
        """One pass over the data; a pair is shuffled by `generator`."""
        if self.x is not None and self.y is not None:
            order = torch.randperm(len(self.x), generator=generator)
            for idx in order.split(batch_size):
                yield self.x[idx], self.y[idx]
            return
        assert self.loader is not None
        for item in self.loader:
            yield _pair(item)


def _pair(item: Any) -> Batch:
    if not isinstance(item, (tuple, list)) or len(item) != 2:
        raise KilnError("train_data: a DataLoader must yield (inputs, labels) batches, got "
                        f"{type(item).__name__}")
    return check_labels(as_tensor(item[0], "train_data inputs"),
                        as_tensor(item[1], "train_data labels"))


def check_labels(x: torch.Tensor, y: torch.Tensor) -> Batch:
    """Float inputs, integer class labels of shape (N,) matching N inputs."""
    if y.dtype.is_floating_point or y.dtype == torch.bool or y.ndim != 1:
        raise KilnError(f"train_data labels must be integer class indices of shape (N,), got "
                        f"{str(y.dtype).removeprefix('torch.')} {list(y.shape)}",
                        hint="cross-entropy training takes one class index per sample")
    if x.ndim == 0 or len(x) != len(y):
        raise KilnError(f"train_data has {len(x) if x.ndim else 0} inputs but {len(y)} labels",
                        hint="pass (X, y) with X of shape (N, ...) and y of shape (N,)")
    return (x if x.dtype.is_floating_point else x.float()), y.long()


def training_data(train_data: Any) -> TrainData:
    """Check what the user passed as `train_data` (module docstring)."""
    if isinstance(train_data, DataLoader):
        if train_data.batch_size is not None and _loader_empty(train_data):
            raise KilnError("train_data is empty: the DataLoader yields no batch")
        return TrainData(loader=train_data)
    if not isinstance(train_data, (tuple, list)) or len(train_data) != 2:
        raise KilnError("train_data must be a torch DataLoader or a pair (X, y), got "
                        f"{type(train_data).__name__}")
    x, y = check_labels(as_tensor(train_data[0], "train_data X"),
                        as_tensor(train_data[1], "train_data y"))
    if len(x) == 0:
        raise KilnError("train_data is empty: X holds no sample",
                        hint="pass at least one (input, label) pair")
    return TrainData(x=x, y=y)


def _loader_empty(loader: DataLoader) -> bool:
    try:
        return len(loader) == 0
    except TypeError:
        return False


def input_batches(calibration_data: Any, what: str = "calibration_data") -> list[torch.Tensor]:
    """The inputs of `calibration_data` as a list of float tensors (module docstring)."""
    if calibration_data is None:
        raise KilnError(f"{what} is required: fake quantization calibrates activation ranges",
                        hint="pass the training inputs (a tensor) or the training DataLoader")
    if isinstance(calibration_data, (torch.Tensor, np.ndarray)):
        x = as_tensor(calibration_data, what)
        batches = list(x.split(CALIBRATION_BATCH)) if x.ndim else []
    elif isinstance(calibration_data, Iterable):
        batches = [_inputs(item, what) for item in calibration_data]
    else:
        raise KilnError(f"{what} must be a tensor, an array or an iterable of batches, got "
                        f"{type(calibration_data).__name__}")
    batches = [b.float() for b in batches if b.ndim and len(b)]
    if not batches:
        raise KilnError(f"{what} is empty", hint="pass at least one batch of inputs")
    return batches


def _inputs(item: Any, what: str) -> torch.Tensor:
    if isinstance(item, (tuple, list)):
        if not item:
            raise KilnError(f"{what}: a batch is an empty tuple")
        item = item[0]
    return as_tensor(item, what)


__all__ = ["TrainData", "as_tensor", "check_labels", "input_batches", "training_data"]

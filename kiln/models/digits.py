"""scikit-learn's 8×8 digits and the shipped trained weights of the digits models.

The data set ships inside scikit-learn (`sklearn.datasets.load_digits`, no download). The split
is fixed — `train_test_split(test_size=0.25, random_state=0, stratify=y)` — so the training
script, the tests and later accuracy checks all agree on which 450 images are held out.
Weights are stored as a `state_dict` in an `.npz` written byte-for-byte reproducibly.
"""

from __future__ import annotations

import io
import zipfile
from importlib import resources
from pathlib import Path

import numpy as np
import torch
from torch import nn

from kiln.errors import KilnError

SPLITS = ("train", "test", "all")
_FIXED_ZIP_TIME = (1980, 1, 1, 0, 0, 0)


def load_digits_data(split: str = "test") -> tuple[np.ndarray, np.ndarray]:
    """Return (X float32 (N, 1, 8, 8) in [0, 1], y int64 (N,)) for "train", "test" or "all"."""
    if split not in SPLITS:
        raise KilnError(f"unknown digits split {split!r}; valid splits: {', '.join(SPLITS)}")
    try:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split
    except ModuleNotFoundError as exc:
        raise KilnError("the digits data set needs scikit-learn",
                        hint="pip install scikit-learn (or kiln[dev])") from exc
    data = load_digits()
    x = (data.images.astype(np.float32) / 16.0).reshape(-1, 1, 8, 8)
    y = data.target.astype(np.int64)
    if split == "all":
        return x, y
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=0.25, random_state=0, stratify=y)
    return (x_train, y_train) if split == "train" else (x_test, y_test)


def save_state_dict(model: nn.Module, path: Path) -> None:
    """Write `model.state_dict()` as an .npz whose bytes depend only on the tensors."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for key, tensor in sorted(model.state_dict().items()):
            buffer = io.BytesIO()
            np.lib.format.write_array(buffer, tensor.detach().cpu().numpy(), allow_pickle=False)
            info = zipfile.ZipInfo(f"{key}.npy", date_time=_FIXED_ZIP_TIME)
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, buffer.getvalue())


def load_shipped_weights(model: nn.Module, filename: str) -> nn.Module:
    """Load kiln/models/weights/`filename` into `model` (strict) and return it in eval mode."""
    resource = resources.files("kiln.models").joinpath("weights").joinpath(filename)
    if not resource.is_file():
        raise KilnError(f"shipped weights {filename} are missing from kiln.models",
                        hint="run `python -m kiln.models.train_digits` to recreate them")
    with resource.open("rb") as handle, np.load(handle, allow_pickle=False) as arrays:
        state = {key: torch.from_numpy(arrays[key].copy()) for key in arrays.files}
    model.load_state_dict(state, strict=True)
    return model.eval()

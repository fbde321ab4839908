"""Modules on disk: `model.kir` (the text) beside `model.npz` (the weights).

The `.npz` is a plain NumPy archive (`np.load` reads it, keys are the weight names) written
deterministically: fixed zip timestamps and sorted keys, so saving the same module twice gives the
same bytes. A weight name that would not survive as a zip member name (`/`, odd characters) is
stored under a generated key and listed in a `__kiln_names__` table of (key, name) rows. Both
files are written atomically (temporary file, then rename).
"""

from __future__ import annotations

import os
import re
import tempfile
import warnings
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO

import numpy as np

from kiln.errors import KilnError, KilnWarning
from kiln.ir.graph import Module
from kiln.ir.parser import parse

NAMES_KEY = "__kiln_names__"
_SAFE_KEY = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]*")
_EPOCH = (1980, 1, 1, 0, 0, 0)


def weights_path(path: str | os.PathLike[str]) -> Path:
    """Where the weights of the module saved at `path` live (`model.kir` → `model.npz`)."""
    return Path(path).with_suffix(".npz")


def save_module(module: Module, path: str | os.PathLike[str]) -> None:
    """Write `path` (the text) and its `.npz` (all of `module.weights`, possibly none).

    A path without a suffix gets `.kir` (`save("out/net")` writes `net.kir` and `net.npz`).
    """
    target = Path(path)
    if target.suffix == ".npz":
        raise KilnError(f"save the module to a .kir path, not {target}: the .npz holds weights")
    if target.suffix == "":
        target = target.with_suffix(".kir")
    text = module.to_text()
    _atomic_write(target, lambda f: f.write(text.encode("utf-8")))
    _atomic_write(weights_path(target), lambda f: _write_npz(f, module.weights))


def load_module(path: str | os.PathLike[str]) -> Module:
    """Read a module saved by `save_module`; the `.npz` is optional (weights elided)."""
    source = Path(path)
    try:
        text = source.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise KilnError(f"cannot read IR file {source}: {exc}") from None
    npz = weights_path(source)
    weights = read_weights(npz) if npz.exists() else None
    module = parse(text, weights, filename=str(source))
    if weights:
        warn_nonfinite(module.weights, f"weights file {npz}")
    return module


def warn_nonfinite(weights: Mapping[str, np.ndarray], source: str,
                   what: str = "weight") -> list[str]:
    """One `KilnWarning` per floating-point weight holding NaN or Inf; the names it warned of.

    Such a weight is almost always a broken checkpoint or export, and it turns every output it
    reaches into NaN; kiln still compiles it (the user may know better), but never silently.
    """
    flagged = []
    for name in sorted(weights):
        array = np.asarray(weights[name])
        if array.dtype.kind not in "fc" or array.size == 0:
            continue
        nan = int(np.count_nonzero(np.isnan(array)))
        inf = int(np.count_nonzero(np.isinf(array)))
        if nan or inf:
            flagged.append(name)
            mask = "" if nan else " (an attention mask of -inf? then ignore this warning)"
            warnings.warn(f"{what} '{name}' (from {source}) holds {nan} NaN and {inf} Inf "
                          f"value(s) out of {array.size}: every output it reaches may be "
                          f"NaN/Inf; check the checkpoint or the export that produced it{mask}",
                          KilnWarning, stacklevel=3)
    return flagged


def read_weights(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """The arrays of a weights archive, by weight name."""
    try:
        archive = np.load(path, allow_pickle=False)
    except Exception as exc:  # zip/npy decoding fails in many exception types
        raise KilnError(f"cannot read weights {path}: {exc}") from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise KilnError(f"weights file {path} is not an .npz archive")
    try:
        with archive:
            arrays = {key: np.asarray(archive[key]) for key in archive.files}
    except Exception as exc:  # as above, for a corrupt member
        raise KilnError(f"cannot read weights {path}: {exc}") from None
    return _rename(arrays, path)


def _rename(arrays: dict[str, np.ndarray], path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    table = arrays.pop(NAMES_KEY, None)
    if table is None:
        return arrays
    if table.ndim != 2 or table.shape[1:] != (2,) or table.dtype.kind != "U":
        raise KilnError(f"weights file {path}: malformed {NAMES_KEY} table")
    renamed = dict(arrays)
    for key, name in table.tolist():
        if key not in renamed:
            raise KilnError(f"weights file {path}: {NAMES_KEY} names a missing key '{key}'")
        renamed[name] = renamed.pop(key)
    return renamed


def _write_npz(file: IO[bytes], weights: Mapping[str, np.ndarray]) -> None:
    keys: dict[str, str] = {}
    table: list[tuple[str, str]] = []
    for i, name in enumerate(sorted(weights)):
        if _SAFE_KEY.fullmatch(name) and not name.startswith("__kiln"):
            keys[name] = name
        else:
            keys[name] = f"__kiln_weight_{i}"
            table.append((keys[name], name))
    members: list[tuple[str, np.ndarray]] = [(keys[n], np.asarray(weights[n])) for n in keys]
    if table:
        members.append((NAMES_KEY, np.array(table, dtype=str)))
    with zipfile.ZipFile(file, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
        for key, array in members:
            info = zipfile.ZipInfo(f"{key}.npy", date_time=_EPOCH)
            with archive.open(info, "w", force_zip64=True) as member:
                try:
                    np.lib.format.write_array(member, array, allow_pickle=False)
                except ValueError as exc:
                    raise KilnError(f"cannot save weight '{key}': {exc}") from None


def _atomic_write(path: Path, write: Callable[[IO[bytes]], object]) -> None:
    """Write through a temporary file in the same folder, then rename over `path`."""
    try:
        fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise KilnError(f"cannot write {path}: {exc}") from None
    try:
        with os.fdopen(fd, "wb") as file:
            write(file)
        os.replace(temp, path)
    except OSError as exc:
        raise KilnError(f"cannot write {path}: {exc}") from None
    finally:
        if os.path.exists(temp):
            os.unlink(temp)

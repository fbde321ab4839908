"""The thin call path of a cpu artifact (`CpuArtifact._fast_run`) on NumPy arrays.

The fast path checks contiguity by NumPy's flag (not by comparing stride tuples) and takes the
lock in try/finally: this pins what it must still do. A non-contiguous array of the right
shape and dtype, a wrong dtype, a wrong shape and a wrong count are each a `KilnError`; an
array that is C-contiguous but has unusual strides on its size-1 axes (NumPy allows any there)
runs and gives the same answer as a plain copy; after the rejected calls a valid one still
runs (no lock left held); outputs are fresh arrays, not the staging buffer.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import kiln
from kiln.errors import KilnError
from kiln.models import example_inputs, get_model
from kiln.targets.toolchains import gcc

pytestmark = pytest.mark.skipif(gcc.shutil.which("gcc") is None, reason="needs gcc")


@pytest.fixture(scope="module")
def lenet() -> kiln.CompiledModel:
    model = get_model("lenet5").eval()
    return kiln.compile(model, example_inputs("lenet5"), target="cpu", threads=1)


def fresh_input() -> np.ndarray:
    rng = np.random.default_rng()
    return rng.standard_normal((1, 1, 28, 28), dtype=np.float32)


def test_fast_path_matches_torch_and_returns_fresh_arrays(lenet: kiln.CompiledModel) -> None:
    run = lenet.artifact.run
    x = fresh_input()
    with torch.no_grad():
        want = get_model("lenet5").eval()(torch.from_numpy(x)).numpy()
    first = run(x)[0]
    assert np.abs(first - want).max() <= 1e-4 * np.abs(want).max()
    second = run(fresh_input())[0]
    assert first is not second and not np.shares_memory(first, second)
    assert np.abs(run(x)[0] - first).max() == 0.0


def test_fast_path_rejects_what_the_general_path_rejects(lenet: kiln.CompiledModel) -> None:
    run = lenet.artifact.run
    x = fresh_input()
    wide = np.zeros((1, 1, 28, 56), np.float32)
    wide[..., ::2] = x
    with pytest.raises(KilnError, match=r"not contiguous"):
        run(wide[..., ::2])
    with pytest.raises(KilnError, match=r"not contiguous"):
        run(np.asfortranarray(x[0, 0])[None, None])
    with pytest.raises(KilnError, match=r"dtype float64"):
        run(x.astype(np.float64))
    with pytest.raises(KilnError, match=r"shape \[1, 1, 28, 27\]"):
        run(np.ascontiguousarray(x[..., :27]))
    with pytest.raises(KilnError, match=r"takes 1 input"):
        run(x, x)
    # the lock was released by every path above: a valid call still runs
    assert run(x)[0].shape == (1, 10)


def test_contiguous_with_odd_strides_on_unit_axes(lenet: kiln.CompiledModel) -> None:
    run = lenet.artifact.run
    x = fresh_input()
    odd = np.lib.stride_tricks.as_strided(x, x.shape, (7, 9, 28 * 4, 4))
    assert odd.flags.c_contiguous and odd.strides != x.strides
    assert np.abs(run(odd)[0] - run(x)[0]).max() == 0.0

"""Shared test fixtures: fresh random generators and a numerics comparison."""

from __future__ import annotations

import os
import tempfile
import zlib
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")


def rel_error(got: np.ndarray, want: np.ndarray) -> float:
    """max |got - want| / max |want|: the relative error every numeric test states."""
    want64 = np.asarray(want, dtype=np.float64)
    got64 = np.asarray(got, dtype=np.float64)
    assert got64.shape == want64.shape, f"shape {got64.shape} != {want64.shape}"
    if want64.size == 0:
        return 0.0
    return float(np.max(np.abs(got64 - want64)) / max(float(np.max(np.abs(want64))), 1e-12))


@pytest.fixture
def rng(request: pytest.FixtureRequest) -> np.random.Generator:
    """A generator seeded from the test's name: fresh per test, reproducible across runs
    (crc32, not hash(): str hashes change with every process)."""
    seed = zlib.crc32(request.node.nodeid.encode())
    return np.random.default_rng(seed)


@pytest.fixture(autouse=True)
def _private_tempdir(tmp_path_factory: pytest.TempPathFactory,
                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Reproducers and other temp files land in pytest's folder, not in the machine's /tmp
    (kiln-opt subprocesses inherit TMPDIR)."""
    folder = tmp_path_factory.mktemp("tmp")
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    monkeypatch.setenv("TMPDIR", str(folder))
    assert Path(folder).is_dir()

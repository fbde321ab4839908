"""kiln.qreduce_mean's row sums by `kiln_qrow_sums` (`runtime/kiln_qops.c`: vpsadbw byte sums,
4 rows a vector for 16-byte rows), bit for bit against `kiln.interpret`: rows of 16 bytes in
counts that are and are not multiples of 4, rows shorter than, equal to and longer than one
64-byte vector (masked tails), int8 and uint8 storage covering the whole range, the portable
build (-march=x86-64) and once under -fsanitize=address,undefined.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import kiln
from kiln.ir.builder import new_function
from kiln.ir.graph import Module
from kiln.ir.interpret import interpret
from kiln.ir.ops.qnn_pool import QReduceMean
from kiln.ir.ops.quant import Dequantize, Quantize
from kiln.ir.types import F32, I8, U8, QuantType, TensorType
from kiln.targets.toolchains import gcc

pytestmark = pytest.mark.skipif(gcc.shutil.which("gcc") is None, reason="needs gcc")


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.getbasetemp() / "kiln-cpu-cache"


def _module(q: QuantType, shape: tuple[int, ...], axes: tuple[int, ...]) -> Module:
    m = Module("qreduce")
    func, b = new_function(m, "forward", [TensorType(shape, F32)], ["x"])
    xq = b.add(Quantize(to=q), func.args[0], name="xq")
    mean = b.add(QReduceMean(axes=axes), xq, name="mean")
    b.ret(b.add(Dequantize(), mean, name="y"))
    return m


def _covering(rng: np.random.Generator, q: QuantType, shape: tuple[int, ...]) -> np.ndarray:
    info = np.iinfo(q.storage.numpy)
    stored = rng.integers(int(info.min) - 3, int(info.max) + 4, shape)
    return ((stored - q.zero_point[0] + rng.uniform(-0.3, 0.3, shape)) *
            q.scale[0]).astype(np.float32)


CASES = [((5, 7, 4, 4), (2, 3)), ((2, 3, 4, 4), (2, 3)), ((64, 8, 2, 8), (2, 3)),
         ((3, 5, 8, 8), (2, 3)), ((2, 4, 10, 10), (2, 3)), ((6, 1), (1,)), ((4, 9), (1,))]
"""16-byte rows: 35 (4-row vectors and 3 left) and 6 of them, 128 rows; 64 bytes (one
vector), 100 (a masked tail), 1 and 9."""


@pytest.mark.parametrize("march", ["native", "x86-64"])
@pytest.mark.parametrize(("shape", "axes"), CASES)
@pytest.mark.parametrize("storage", ["i8", "u8"])
def test_qreduce_mean_row_sums_are_bit_exact(shape: tuple[int, ...], axes: tuple[int, ...],
                                             storage: str, march: str, cache: Path) -> None:
    rng = np.random.default_rng([*shape, len(storage), len(march)])
    zp = int(rng.integers(-60, 60)) + (128 if storage == "u8" else 0)
    q = QuantType(U8 if storage == "u8" else I8, (float(rng.uniform(0.01, 0.05)),), (zp,))
    art = kiln.compile(_module(q, shape, axes), [np.zeros(shape, np.float32)], target="cpu",
                       pipeline="dce", cache_dir=cache, march=march)
    log = (art.artifact.entry / "build.log").read_text()  # type: ignore[attr-defined]
    assert "warning" not in log, log
    assert "kiln_qrow_sums(" in art.files["model.c"]
    for _ in range(2):
        x = _covering(rng, q, shape)
        np.testing.assert_array_equal(art(x), interpret(art.ir, x)[0])


def test_row_sums_are_clean_under_sanitizers(cache: Path) -> None:
    rng = np.random.default_rng(16)
    for storage, (shape, axes) in (("i8", CASES[0]), ("u8", CASES[4])):
        zp = int(rng.integers(-60, 60)) + (128 if storage == "u8" else 0)
        q = QuantType(U8 if storage == "u8" else I8, (0.02,), (zp,))
        art = kiln.compile(_module(q, shape, axes), [np.zeros(shape, np.float32)],
                           target="cpu", pipeline="dce", cache_dir=cache, sanitize=True)
        x = _covering(rng, q, shape)
        np.testing.assert_array_equal(art(x), interpret(art.ir, x)[0])

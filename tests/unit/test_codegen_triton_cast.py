"""The gpu target's float32 → bf16 cast against kiln's interpreter, bit for bit.

Triton's interpreter truncates in `x.to(tl.bfloat16)`; kiln emits round-to-nearest-even on the
bits instead (`kiln.codegen.triton.exprs.round_bf16`), which must equal `kiln.interpret`
(NumPy, `_round_bf16`) on every float32: ties to even, overflow to inf near the max,
subnormals (which bf16 keeps, as float32 does), ±0, ±inf and NaN (kept, never inf).
"""

from __future__ import annotations

import numpy as np
import pytest

import kiln.targets.gpu  # noqa: F401  (before anything imports triton: interpreter mode on CPU)
from kiln import compile as kiln_compile
from kiln.ir.builder import new_function
from kiln.ir.graph import Module
from kiln.ir.interpret import interpret
from kiln.ir.ops import elementwise as ew
from kiln.ir.ops.core import Cast
from kiln.ir.types import BF16, F32, TensorType

# (float32 bits, bf16-rounded bits): what the interpreter must give, spelled out
EDGES = {
    0x3F808000: 0x3F800000,  # 1 + 2^-8: a tie, even lsb -> down
    0x3F818000: 0x3F820000,  # a tie, odd lsb -> up
    0xBF818000: 0xBF820000,  # the same, negative
    0x3F807FFF: 0x3F800000,  # just under a tie
    0x3F808001: 0x3F810000,  # just over a tie
    0x3FFFFFFF: 0x40000000,  # carries into the exponent
    0x7F7F0000: 0x7F7F0000,  # bf16's max, exact
    0x7F7F7FFF: 0x7F7F0000,  # under the tie past bf16's max
    0x7F7F8000: 0x7F800000,  # the tie past bf16's max (odd lsb) -> inf
    0x7F7FFFFF: 0x7F800000,  # float32's max -> inf
    0xFF7FFFFF: 0xFF800000,  # -max -> -inf
    0x00000001: 0x00000000,  # smallest subnormal -> +0
    0x80000001: 0x80000000,  # -> -0
    0x00008000: 0x00000000,  # subnormal tie, even -> 0
    0x00018000: 0x00020000,  # subnormal tie, odd -> up
    0x0000C000: 0x00010000,  # over a subnormal tie
    0x007FFFFF: 0x00800000,  # largest subnormal -> smallest normal
    0x00000000: 0x00000000,
    0x80000000: 0x80000000,
    0x7F800000: 0x7F800000,  # inf
    0xFF800000: 0xFF800000,  # -inf
}
NANS = [0x7FC00000, 0xFFC00000, 0x7F800001, 0x7F807FFF, 0x7FFFFFFF, 0xFFFFFFFF]


def _cast_module(n: int, *, then_add: bool) -> Module:
    """x → bf16 (→ + x, a fused fp32 consumer, when `then_add`)."""
    module = Module("cast")
    func, b = new_function(module, "forward", [TensorType((n,))], ["x"])
    y = b.add(Cast(to=BF16), func.args[0])
    if then_add:
        y = b.add(ew.Add(), b.add(Cast(to=F32), y), func.args[0])
    b.ret(y)
    return module


def _bits(values: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(values, dtype=np.float32).view(np.uint32)


def test_interpreter_rounds_the_edges_as_specified() -> None:
    x = np.array(list(EDGES) + NANS, dtype=np.uint32).view(np.float32)
    got = interpret(_cast_module(x.size, then_add=False), x)[0]
    np.testing.assert_array_equal(_bits(got)[:len(EDGES)], np.array(list(EDGES.values()),
                                                                      dtype=np.uint32))
    assert np.isnan(got[len(EDGES):]).all()


@pytest.mark.parametrize("then_add", [False, True])
def test_gpu_bf16_cast_matches_interpreter_bit_for_bit(rng: np.random.Generator,
                                                       then_add: bool) -> None:
    """Edges plus random bit patterns (every exponent, NaNs included) and random normals with
    a low half forced to a tie."""
    random_bits = rng.integers(0, 2**32, size=300, dtype=np.uint32)
    ties = (_bits(rng.standard_normal(100).astype(np.float32)) & np.uint32(0xFFFF0000)) | 0x8000
    x = np.concatenate([np.array(list(EDGES) + NANS, dtype=np.uint32), random_bits,
                        ties.astype(np.uint32)]).view(np.float32)
    module = _cast_module(x.size, then_add=then_add)
    art = kiln_compile(module, target="gpu", pipeline="dce")
    want = interpret(art.ir, x)[0]
    got = np.asarray(art(x))
    assert got.shape == want.shape
    nan = np.isnan(want)
    np.testing.assert_array_equal(np.isnan(got), nan)
    np.testing.assert_array_equal(_bits(got)[~nan], _bits(want)[~nan])
    if not then_add:  # NaN passes through unchanged (payload and sign), as in the interpreter
        np.testing.assert_array_equal(_bits(got)[nan], _bits(want)[nan])


def test_bf16_storage_rounds_stores_to_nearest_even(rng: np.random.Generator) -> None:
    """With `dtype="bf16"` storage every kernel stores through the explicit rounding: x·x of
    bf16 inputs is exact in fp32 (8-bit × 8-bit significands), so the stored bits must be
    torch's round-to-nearest-even of it (Triton's interpreter truncated in `.to`)."""
    import torch

    module = Module("square")
    func, b = new_function(module, "forward", [TensorType((512,))], ["x"])
    b.ret(b.add(ew.Mul(), func.args[0], func.args[0]))
    x = rng.standard_normal(512).astype(np.float32)
    art = kiln_compile(module, target="gpu", pipeline="dce", dtype="bf16")
    xb = torch.from_numpy(x).to(torch.bfloat16).float()
    want = (xb * xb).to(torch.bfloat16).float().numpy()
    got = np.asarray(art(x), dtype=np.float32)
    np.testing.assert_array_equal(_bits(got), _bits(want))

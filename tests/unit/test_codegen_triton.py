"""The Triton emitter as a pure function: files, determinism, readability, names, heuristics.

No kernel runs here (see test_codegen_triton_kernels.py and tests/e2e/test_gpu_*.py).
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from kiln.codegen.triton import TritonOptions, blocks, emit, generate
from kiln.compiler.pass_manager import run_passes
from kiln.errors import UnsupportedOpError
from kiln.ir.builder import new_function
from kiln.ir.graph import Module, Value
from kiln.ir.location import Location
from kiln.ir.ops import elementwise as ew
from kiln.ir.ops.nn_conv import Conv2d, Linear
from kiln.ir.ops.nn_norm import LocalResponseNorm, Softmax
from kiln.ir.ops.reduce import ReduceSum
from kiln.ir.types import TensorType

CONV = Conv2d(stride=(1, 1), padding=(1, 1, 1, 1), dilation=(1, 1), groups=1)


def small_net(weight_name: str = "conv.weight") -> Module:
    """conv → relu → (+ residual) → softmax over channels, with source locations."""
    module = Module("Net")
    func, b = new_function(module, "forward", [TensorType((1, 3, 8, 8))], ["image"])
    x = func.args[0]
    rng = np.random.default_rng(0)
    with b.at_loc(Location("net.py", 10, "conv")):
        y = b.add(CONV, x, b.weight(weight_name, rng.standard_normal((3, 3, 3, 3),
                                                                    ).astype(np.float32)),
                  name="conv")
    with b.at_loc(Location("net.py", 11, "act")):
        r = b.add(ew.Relu(), b.add(ew.Add(), y, x, name="residual"), name="act")
    with b.at_loc(Location("net.py", 12, "probs")):
        b.ret(b.add(Softmax(axis=1), r, name="probs"))
    return run_passes(module, "gpu")


def test_files_are_python_and_name_the_model() -> None:
    files = emit(small_net(), TritonOptions())
    assert set(files) == {"kernels.py", "launcher.py"}
    for name, text in files.items():
        compile(text, name, "exec")
    kernels = files["kernels.py"]
    assert "def k_act(" in kernels and "def k_probs(" in kernels
    assert "# fused epilogue conv2d+add+relu" in kernels
    assert "conv2d conv at net.py:10" in kernels
    assert "conv_weight_ptr" in kernels
    assert "k.k_act[" in files["launcher.py"]


def test_output_is_deterministic() -> None:
    assert emit(small_net(), TritonOptions()) == emit(small_net(), TritonOptions())


def test_storage_dtype_changes_loads_and_stores_not_the_math() -> None:
    fp16 = emit(small_net(), TritonOptions(dtype="fp16"))
    assert ".to(tl.float32)" in fp16["kernels.py"] and ".to(tl.float16)" in fp16["kernels.py"]
    assert "DTYPE = torch.float16" in fp16["launcher.py"]
    assert ".to(tl.float" not in emit(small_net(), TritonOptions())["kernels.py"]


def test_hostile_weight_name_stays_a_string() -> None:
    """A model name can never become code: identifiers are sanitized, keys are repr()'d."""
    files = emit(small_net('w"]); import os; os.system("x'), TritonOptions())
    compile(files["launcher.py"], "launcher.py", "exec")
    assert "import os" not in files["kernels.py"]


def test_autotune_only_wraps_dot_kernels() -> None:
    module = Module("m")
    func, b = new_function(module, "forward", [TensorType((32, 64))], ["x"])
    rng = np.random.default_rng(1)
    b.ret(b.add(Linear(), func.args[0], b.weight("w", rng.standard_normal((32, 64)).astype(
        np.float32))))
    files = emit(module, TritonOptions(autotune=True))
    assert "@triton.autotune(configs=[" in files["kernels.py"]
    assert 'lambda meta: (triton.cdiv(32, meta["BLOCK_M"])' in files["launcher.py"]
    assert "@triton.autotune" not in emit(module, TritonOptions())["kernels.py"]


def test_memory_plan_reuses_and_works_in_place() -> None:
    module = Module("chain")
    func, b = new_function(module, "forward", [TensorType((4, 256))], ["x"])
    value: Value = func.args[0]
    for kind in (ew.Exp(), ew.Neg(), ew.Tanh(), ew.Relu()):
        value = b.add(ReduceSum(axes=(0,), keepdims=True), b.add(kind, value))
        value = b.add(ew.Add(), value, func.args[0])
    b.ret(value)
    generated = generate(module, TritonOptions())
    assert generated.plan.arena_bytes < generated.plan.naive_bytes()


def test_unsupported_ops_listed_before_generation() -> None:
    module = Module("m")
    func, b = new_function(module, "forward", [TensorType((1, 4, 3, 3))], ["x"])
    with b.at_loc(Location("m.py", 3, "a")):
        y = b.add(LocalResponseNorm(size=3), func.args[0])
    with b.at_loc(Location("m.py", 4, "b")):
        b.ret(b.add(LocalResponseNorm(size=2), y))
    with pytest.raises(UnsupportedOpError) as info:
        emit(module)
    assert str(info.value).count("has no Triton lowering") == 2
    assert "m.py:3 (a)" in str(info.value) and "m.py:4 (b)" in str(info.value)


@pytest.mark.parametrize("interpreter", [False, True])
def test_block_heuristic(interpreter: bool) -> None:
    budget = blocks.budget(interpreter)
    for m, n, k in [(1, 10, 64), (1024, 16, 27), (17, 33, 17), (256, 1, 9), (7, 3, 1)]:
        bm, bn, bk = blocks.gemm_blocks(m, n, k, interpreter)
        assert all(s & (s - 1) == 0 for s in (bm, bn, bk))
        if blocks.uses_dot(m, n, k):
            assert min(bm, bn, bk) >= 16
            assert bm <= budget.dot[0] and bn <= budget.dot[1] and bk <= budget.dot[2]
        else:
            assert bm * bn * bk <= max(budget.product, bn * bk)
        assert bm <= max(16, blocks.pow2(m))
    for rows, length in [(1, 5), (64, 16), (3, 16384)]:
        br, bl = blocks.row_blocks(rows, length, interpreter)
        assert bl >= length and (br * bl <= budget.tile or br == 1)
    assert blocks.flat_block(3, interpreter) == 4
    assert blocks.flat_block(10**6, interpreter) == budget.flat


def test_emitter_does_not_import_triton_or_torch() -> None:
    code = ("import sys; from kiln.codegen.triton import emit; "
            "print('triton' in sys.modules, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.split() == ["False", "False"]

"""Every C kernel of the cpu target against kiln's reference interpreter.

One module holds (nearly) every op the C backend emits, with awkward shapes and attributes
(asymmetric padding, ceil mode, dilation, groups, broadcasting, non-trailing reductions), so a
single gcc build covers them; it is compiled as is (one kernel per op) and after `fuse` (fused
epilogues, elementwise groups, row kernels and their fallbacks). fp32, relative error ≤ 1e-4
(max |got - want| / max |want|) per output, on fresh random inputs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import kiln
from kiln.codegen.c.emit_qlut import QELTWISE_KERNELS
from kiln.codegen.c.emit_qmatmul import QMATMUL_KERNELS
from kiln.codegen.c.emit_qnn import QNN_KERNELS
from kiln.codegen.c.kernels import ALIASES, KERNELS, REJECTED, STRUCTURAL
from kiln.ir.builder import Builder, new_function
from kiln.ir.graph import Module, Value
from kiln.ir.interpret import interpret
from kiln.ir.ops import elementwise as ew
from kiln.ir.ops.base import builtin_ops
from kiln.ir.ops.core import Cast
from kiln.ir.ops.nn_conv import Conv1d, Conv2d, ConvTranspose2d, Linear, MatMul
from kiln.ir.ops.nn_norm import BatchNorm, LayerNorm, LocalResponseNorm, LogSoftmax, Softmax
from kiln.ir.ops.nn_pool import (
    AdaptiveAvgPool1d,
    AdaptiveAvgPool2d,
    AvgPool1d,
    AvgPool2d,
    MaxPool1d,
    MaxPool2d,
)
from kiln.ir.ops.reduce import ReduceMax, ReduceMean, ReduceMin, ReduceSum
from kiln.ir.ops.shape import (
    Concat,
    Dropout,
    Expand,
    Flatten,
    Identity,
    Pad,
    Reshape,
    Slice,
    Split,
    Squeeze,
    Transpose,
    Unsqueeze,
)
from kiln.ir.rewriter import Rewriter
from kiln.ir.types import F32, TensorType
from kiln.passes.outline import outline
from kiln.targets.toolchains import gcc
from kiln.testing.opnet import OpNet

pytestmark = pytest.mark.skipif(gcc.shutil.which("gcc") is None, reason="needs gcc")
TOL = 1e-4


def cache_dir(factory: pytest.TempPathFactory) -> Path:
    """One build cache for the whole session (the runtime builds once)."""
    return factory.getbasetemp() / "kiln-cpu-cache"




def conv_branch(n: OpNet, x: Value) -> None:
    c1 = n.add(Conv2d(stride=(2, 2), padding=(1, 0, 1, 2)), x, n.w(6, 3, 3, 3), n.w(6))
    r1 = n.add(ew.Relu(), c1)
    c2 = n.add(Conv2d(), x, n.w(4, 3, 1, 1), n.w(4))
    dw = n.add(Conv2d(padding=(1, 1, 1, 1), groups=6), r1, n.w(6, 1, 3, 3), n.w(6))
    gr = n.add(Conv2d(padding=(2, 2, 2, 2), dilation=(2, 2), groups=3), c1, n.w(6, 2, 3, 3))
    ct = n.add(ConvTranspose2d(stride=(2, 2), padding=(1, 1, 1, 1), output_padding=(1, 1)),
               c1, n.w(6, 2, 3, 3), n.w(2))
    bn = n.add(BatchNorm(eps=1e-3), c2, n.w(4), n.w(4), n.w(4), n.w(4, positive=True))
    res = n.add(ew.Add(), n.add(Conv2d(padding=(1, 1, 1, 1)), c2, n.w(4, 4, 3, 3)), bn)
    scaled = n.add(ew.Mul(), n.add(Conv2d(padding=(1, 1, 1, 1)), x, n.w(5, 3, 3, 3)),
                   n.w(1, 1, 8, 1))
    clamped = n.add(ew.Relu6(), n.add(Conv2d(stride=(1, 2)), x, n.w(8, 3, 2, 2), n.w(8)))
    grouped = n.add(Conv2d(padding=(2, 2, 2, 2), groups=2), c1, n.w(4, 3, 5, 5), n.w(4))
    strided_dw = n.add(Conv2d(stride=(2, 2), padding=(1, 1, 1, 1), groups=6), r1,
                       n.w(6, 1, 3, 3))
    wide = n.add(Conv2d(), x, n.w(40, 3, 1, 1), n.w(40))  # 1x1, 40 outputs: kiln_pwconv
    n.out(c1, r1, dw, gr, ct, n.add(ew.Hardswish(), res), scaled, clamped, grouped, strided_dw,
          wide)


def pool_branch(n: OpNet, x: Value, v: Value) -> None:
    n.out(n.add(MaxPool2d(kernel=(3, 3), stride=(2, 2), padding=(1, 1, 1, 1), dilation=(1, 1),
                          ceil_mode=True), x),
          n.add(MaxPool2d(kernel=(2, 2), stride=(1, 2), dilation=(2, 1)), x),
          n.add(AvgPool2d(kernel=(3, 3), stride=(2, 2), padding=(1, 0, 1, 0), ceil_mode=True,
                          count_include_pad=False), x),
          n.add(AvgPool2d(kernel=(2, 3), stride=(2, 2), padding=(1, 1, 0, 1)), x),
          n.add(AdaptiveAvgPool2d(output_size=(3, 4)), x),
          n.add(MaxPool1d(kernel=(3,), stride=(2,), padding=(1, 1)), v),
          n.add(AvgPool1d(kernel=(4,), stride=(3,), ceil_mode=True), v),
          n.add(AdaptiveAvgPool1d(output_size=(5,)), v),
          n.add(LocalResponseNorm(size=3, alpha=1e-2), x),
          n.add(Conv1d(stride=(2,), padding=(2, 1), dilation=(2,)), v, n.w(4, 5, 3), n.w(4)))


def shape_branch(n: OpNet, x: Value, v: Value) -> None:
    parts = n.b.create(Split(sizes=(4, 5), axis=3), x).results
    n.out(*parts,
          n.add(Transpose(perm=(0, 2, 3, 1)), x),
          n.add(Slice(axes=(1, 3), starts=(1, 0), ends=(3, 9), steps=(1, 3)), x),
          n.add(Concat(axis=1), x, n.add(ew.Neg(), x), x),
          n.add(Pad(pads=(0, 1, 2, 0, 0, 0, 1, 3)), x),
          n.add(Pad(pads=(0, 0, 2, 1, 0, 0, 1, 2), mode="reflect"), x),
          n.add(Pad(pads=(0, 0, 1, 0, 0, 0, 0, 2), mode="edge"), x),
          n.add(Expand(shape=(2, 2, 5, 16)), n.add(Unsqueeze(axes=(1,)), v)),
          n.add(Flatten(start_dim=1), n.add(Identity(), n.add(Dropout(p=0.2), x))),
          n.add(Squeeze(axes=(0,)), n.add(Cast(to=F32), n.add(Reshape(shape=(1, 160)), v))),
          x)


def matrix_branch(n: OpNet, v: Value) -> None:
    vt = n.add(Transpose(perm=(0, 2, 1)), v)
    n.out(n.add(Linear(), v, n.w(7, 16), n.w(7)),
          n.add(Linear(), n.add(Reshape(shape=(10, 16)), v), n.w(33, 16)),
          n.add(MatMul(), v, vt),
          n.add(MatMul(), v, n.w(16, 3)),
          n.add(MatMul(), n.w(3, 1, 4, 5), v),
          n.add(MatMul(), v, n.w(16)),
          n.add(ew.Add(), n.add(Linear(), v, n.w(7, 16)), n.w(2, 1, 7)))


def row_branch(n: OpNet, v: Value) -> None:
    peak = n.add(ReduceMax(axes=(2,), keepdims=True), v)
    e = n.add(ew.Exp(), n.add(ew.Sub(), v, peak))
    manual = n.add(ew.Div(), e, n.add(ReduceSum(axes=(2,), keepdims=True), e))
    n.out(n.add(Softmax(axis=-1), v), n.add(Softmax(axis=1), v), n.add(LogSoftmax(axis=2), v),
          n.add(LayerNorm(normalized_ndim=1), v, n.w(16), n.w(16)),
          n.add(LayerNorm(normalized_ndim=2, eps=1e-3), v),
          n.add(ReduceSum(axes=(2,), keepdims=True), v),
          n.add(ReduceMean(axes=(1, 2)), v),
          n.add(ReduceMax(axes=(0,)), v),
          n.add(ReduceMin(axes=(1,)), v),
          manual)


def pointwise_branch(n: OpNet, v: Value) -> None:
    pos = n.add(ew.Add(), n.add(ew.Abs(), v), n.b.constant(np.array(0.5, np.float32)))
    unary = [ew.Neg(), ew.Exp(), ew.Erf(), ew.Relu(), ew.Relu6(), ew.Sigmoid(), ew.Tanh(),
             ew.Silu(), ew.Hardsigmoid(), ew.Hardswish(), ew.LeakyRelu(slope=0.2),
             ew.Gelu(), ew.Gelu(approximate="tanh"), ew.Clamp(min=-0.5, max=1.0),
             ew.Clamp(min=0.1), ew.Reciprocal()]
    n.out(*(n.add(k, v) for k in unary))
    n.out(*(n.add(k, pos) for k in (ew.Log(), ew.Sqrt(), ew.Rsqrt())))
    row, col = n.w(16), n.w(5, 1)
    n.out(n.add(ew.Sub(), v, row), n.add(ew.Mul(), col, v), n.add(ew.Div(), v, pos),
          n.add(ew.Pow(), pos, n.w(16)), n.add(ew.Maximum(), v, row),
          n.add(ew.Minimum(), col, v),
          n.add(ew.Tanh(), n.add(ew.Mul(), n.add(ew.Add(), v, row), col)))


def build_module(seed: int = 0) -> Module:
    n = OpNet("all_ops", seed)
    x, v = n.func.args
    conv_branch(n, x)
    pool_branch(n, x, v)
    shape_branch(n, x, v)
    matrix_branch(n, v)
    row_branch(n, v)
    pointwise_branch(n, v)
    Builder(n.func.body, module=n.module).ret(*n.outs)
    return n.module


def inputs(seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((2, 3, 8, 9)).astype(np.float32),
            rng.standard_normal((2, 5, 16)).astype(np.float32)]


def check(art: kiln.CompiledModel, module: Module, seed: int) -> None:
    xs = inputs(seed)
    got = art(*xs)
    want = interpret(module, *xs)
    assert len(got) == len(want)
    for i, (g, w) in enumerate(zip(got, want)):
        assert g.shape == w.shape, i
        err = np.abs(g.astype(np.float64) - w).max() / max(np.abs(w).max(), 1e-12)
        assert err <= TOL, f"output {i} ({module.main.outputs[i].name}): rel error {err:.3g}"


@pytest.fixture(scope="module")
def plain(tmp_path_factory: pytest.TempPathFactory) -> tuple[kiln.CompiledModel, Module]:
    module = build_module()
    art = kiln.compile(module, target="cpu", pipeline="canonicalize",
                       cache_dir=cache_dir(tmp_path_factory))
    return art, module


@pytest.fixture(scope="module")
def fused(tmp_path_factory: pytest.TempPathFactory) -> tuple[kiln.CompiledModel, Module]:
    module = build_module()
    art = kiln.compile(module, target="cpu", pipeline="canonicalize,fuse,dce",
                       cache_dir=cache_dir(tmp_path_factory))
    return art, module


def test_every_registered_op_is_emitted_or_rejected() -> None:
    for name, cls in builtin_ops().items():
        homes = [cls in KERNELS, cls in REJECTED, issubclass(cls, (*ALIASES, *STRUCTURAL))]
        assert sum(homes) == 1, f"{name}: emitted={homes[0]} rejected={homes[1]} other={homes[2]}"


def test_the_module_uses_every_kernel() -> None:
    used = {type(op.kind) for op in build_module().main.walk()}
    missing = {cls.NAME for cls in KERNELS if cls not in used} - {"kiln.fused"}
    missing -= {cls.NAME for cls in QNN_KERNELS}  # int8 kernels: tests/e2e/test_cpu_int8.py
    missing -= {cls.NAME for cls in QMATMUL_KERNELS}  # tests/unit/test_cpu_qmatmul.py
    missing -= {cls.NAME for cls in QELTWISE_KERNELS}  # tests/unit/test_cpu_qlut.py
    assert not missing


def test_every_op_matches_the_interpreter(plain: tuple[kiln.CompiledModel, Module]) -> None:
    art, module = plain
    kernels = " ".join(k["kernel"] for k in art.report()["kernels"])
    for scheme in ("conv implicit gemm", "conv 1x1 pointwise",
                   "grouped conv implicit gemm",
                   "depthwise conv direct", "conv direct", "conv_transpose2d",
                   "softmax rows (vectorized)", "rows softmax", "linear gemm", "matmul gemm"):
        assert scheme in kernels, scheme
    for seed in (1, 2):
        check(art, module, seed)
    log = (art.artifact.entry / "build.log").read_text()  # type: ignore[attr-defined]
    assert "-Wall -Wextra" in log and "warning" not in log


def test_fused_groups_match_the_interpreter(fused: tuple[kiln.CompiledModel, Module]) -> None:
    art, module = fused
    assert art.ir.op_counts().get("kiln.fused", 0) >= 5
    kernels = " ".join(k["kernel"] for k in art.report()["kernels"])
    for scheme in ("epilogue add+hardswish", "rows reduce_max", "elementwise abs",
                   "clamp relu6"):
        assert scheme in kernels, scheme
    check(art, module, 3)
    log = (art.artifact.entry / "build.log").read_text()  # type: ignore[attr-defined]
    assert "warning" not in log


def test_groups_no_scheme_fits_run_member_by_member(
        tmp_path_factory: pytest.TempPathFactory) -> None:
    """A fused region of a pool, a reshape and an activation (fuse never builds one) still
    becomes one kernel: its members in sequence, values between them in scratch."""
    module = Module("odd_group")
    func, b = new_function(module, "forward", [TensorType((2, 3, 8, 8))], ["x"])
    x = func.args[0]
    pool = b.create(MaxPool2d(kernel=(2, 2), stride=(2, 2), padding=(0, 0, 0, 0),
                              dilation=(1, 1)), x)
    flat = b.create(Reshape(shape=(2, 48)), pool.result)
    act = b.create(ew.Sigmoid(), flat.result)
    b.ret(act.result, pool.result)
    outline(Rewriter(module), [pool, flat, act], "elementwise")
    art = kiln.compile(module, target="cpu", pipeline="canonicalize",
                       cache_dir=cache_dir(tmp_path_factory))
    assert "sequence" in art.report()["kernels"][0]["kernel"]
    xs = [np.random.default_rng(4).standard_normal((2, 3, 8, 8)).astype(np.float32)]
    for g, w in zip(art(*xs), interpret(module, *xs)):
        assert np.abs(g - w).max() <= TOL * np.abs(w).max()


def test_the_arena_is_reused(plain: tuple[kiln.CompiledModel, Module]) -> None:
    art, _ = plain
    program = art.artifact.program  # type: ignore[attr-defined]
    assert program.plan is not None
    assert program.arena_bytes < program.plan.naive_bytes()



# (kernel, stride, padding, dilation, ceil_mode): windows that overhang into the padding or lie
# wholly in it in ceil mode, with dilation (the cross-target fuzzer's cpu_graph59121 shape)
CEIL_POOLS = [((4, 3), (3, 1), (2, 1), (1, 1), True), ((2, 1), (3, 1), (1, 0), (2, 2), True),
              ((3, 3), (2, 2), (1, 1), (2, 1), True), ((2, 2), (3, 2), (1, 0), (1, 2), False)]


def _torch_pools(x: np.ndarray) -> list[np.ndarray]:
    """Per CEIL_POOLS row: max, average counting padding, average not counting it."""
    import torch
    import torch.nn.functional as F

    t, out = torch.from_numpy(x), []
    for kernel, stride, pad, dil, ceil in CEIL_POOLS:
        out.append(F.max_pool2d(t, kernel, stride, pad, dil, ceil_mode=ceil).numpy())
        out += [F.avg_pool2d(t, kernel, stride, pad, ceil_mode=ceil,
                             count_include_pad=include).numpy() for include in (True, False)]
    return out


def test_pools_match_torch(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Max pools (NaN wins, bit-exact) and average pools (both divisor rules, 1e-6) in C
    against torch, on windows that overhang the padding in ceil mode."""
    module = Module("ceil_pools")
    func, b = new_function(module, "forward", [TensorType((2, 3, 5, 11))], ["x"])
    outs: list[Value] = []
    for kernel, stride, (ph, pw), dil, ceil in CEIL_POOLS:
        pad = (ph, pw, ph, pw)
        outs.append(b.add(MaxPool2d(kernel=kernel, stride=stride, padding=pad, dilation=dil,
                                    ceil_mode=ceil), func.args[0]))
        outs += [b.add(AvgPool2d(kernel=kernel, stride=stride, padding=pad, ceil_mode=ceil,
                                 count_include_pad=include), func.args[0])
                 for include in (True, False)]
    b.ret(*outs)
    art = kiln.compile(module, target="cpu", pipeline="canonicalize",
                       cache_dir=cache_dir(tmp_path_factory))
    rng = np.random.default_rng(59121)
    x = rng.standard_normal((2, 3, 5, 11)).astype(np.float32)
    for got, want in zip(art(x), _torch_pools(x)):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    x[rng.random(x.shape) < 0.05] = np.nan
    for got, want in list(zip(art(x), _torch_pools(x)))[::3]:
        np.testing.assert_array_equal(got, want)


def test_row_group_with_two_results_keeps_its_operand(
        tmp_path_factory: pytest.TempPathFactory) -> None:
    """cpu_graph59121: a fused sigmoid + reduce_max (over an axis of 1) yielding both was
    planned in place over its operand; the reduction's store came before the sigmoid result
    re-read the operand, so that output was sigmoid(sigmoid(x))."""
    module = Module("two_results")
    func, b = new_function(module, "forward", [TensorType((1, 2, 3, 6))], ["x"])
    pooled = b.add(AvgPool2d(kernel=(1, 2), stride=(1, 1), padding=(0, 0, 0, 1)), func.args[0])
    sig = b.add(ew.Sigmoid(), pooled)
    top = b.add(ReduceMax(axes=(0,), keepdims=True), sig)
    b.ret(b.add(ReduceSum(axes=(0, 2)), top), sig)
    art = kiln.compile(module, target="cpu", pipeline="canonicalize,fuse,dce",
                       cache_dir=cache_dir(tmp_path_factory))
    x = np.random.default_rng(7).standard_normal((1, 2, 3, 6)).astype(np.float32)
    for got, want in zip(art(x), interpret(module, x)):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)

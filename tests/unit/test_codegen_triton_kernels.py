"""Each Triton kernel family against kiln's reference interpreter, on odd sizes (1, 3, 7, 17).

Every test builds a small IR module, compiles it for the gpu target (Triton's interpreter on CPU
tensors when there is no CUDA device, natively otherwise), runs it on fresh random inputs and
compares with `kiln.interpret` of the same module. fp32 kernels compute and accumulate in fp32:
tolerance 1e-5 relative (max|a-b| / max|b|); fp16 / bf16 storage: 1e-2.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import pytest

import kiln.targets.gpu  # noqa: F401  (before anything imports triton: interpreter mode on CPU)
from kiln import compile as kiln_compile
from kiln.ir.builder import Builder, new_function
from kiln.ir.graph import Module, Value
from kiln.ir.interpret import interpret
from kiln.ir.ops import elementwise as ew
from kiln.ir.ops.core import Cast
from kiln.ir.ops.nn_conv import Conv1d, Conv2d, ConvTranspose2d, Linear, MatMul
from kiln.ir.ops.nn_norm import BatchNorm, LayerNorm, LogSoftmax, Softmax
from kiln.ir.ops.nn_pool import (
    AdaptiveAvgPool1d,
    AdaptiveAvgPool2d,
    AvgPool1d,
    AvgPool2d,
    MaxPool1d,
    MaxPool2d,
)
from kiln.ir.ops.reduce import ReduceMax, ReduceMean, ReduceMin, ReduceSum
from kiln.ir.ops.shape import Concat, Expand, Pad, Reshape, Slice, Split, Transpose
from kiln.ir.types import F16, F32, TensorType
from tests.conftest import rel_error

Body = Callable[[Builder, list[Value]], list[Value]]


def build(body: Body, *shapes: tuple[int, ...]) -> Module:
    module = Module("t")
    func, b = new_function(module, "forward", [TensorType(s) for s in shapes],
                           [f"in{i}" for i in range(len(shapes))])
    b.ret(*body(b, func.args))
    return module


def check(module: Module, rng: np.random.Generator, *, pipeline: str = "dce",
          dtype: str = "fp32", family: str | None = None, positive: bool = False) -> None:
    """Compile for gpu, run on fresh inputs, compare with the interpreter."""
    art = kiln_compile(module, target="gpu", pipeline=pipeline, dtype=dtype)
    tol = 1e-5 if dtype == "fp32" else 1e-2
    for _ in range(2):
        inputs = [rng.standard_normal(a.type.shape).astype(np.float32)
                  for a in module.main.args]
        if positive:
            inputs = [(np.abs(x) + 0.5).astype(np.float32) for x in inputs]
        want = interpret(art.ir, *inputs)
        got = art(*inputs)
        got = list(got) if isinstance(got, tuple) else [got]
        for g, w in zip(got, want):
            assert g.shape == w.shape
            assert rel_error(g, w) <= tol, f"rel error {rel_error(g, w):.3g} > {tol}"
    if family is not None:
        assert family in art.report()["kernel_families"], art.report()["kernel_families"]


def weight(b: Builder, rng: np.random.Generator, shape: Sequence[int], name: str = "w") -> Value:
    return b.weight(name, rng.standard_normal(tuple(shape)).astype(np.float32))


# -- elementwise -----------------------------------------------------------------------------
UNARY = [ew.Neg(), ew.Abs(), ew.Exp(), ew.Erf(), ew.Relu(), ew.Relu6(), ew.Sigmoid(), ew.Tanh(),
         ew.Silu(), ew.Hardsigmoid(), ew.Hardswish(), ew.LeakyRelu(slope=0.2), ew.Gelu(),
         ew.Gelu(approximate="tanh"), ew.Clamp(min=-0.5, max=0.7), ew.Clamp(max=0.1)]


def test_unary_ops(rng: np.random.Generator) -> None:
    check(build(lambda b, a: [b.add(kind, a[0]) for kind in UNARY], (3, 7, 17)), rng,
          family="elementwise")


def test_unary_ops_positive_domain(rng: np.random.Generator) -> None:
    kinds = [ew.Sqrt(), ew.Rsqrt(), ew.Log(), ew.Reciprocal()]
    check(build(lambda b, a: [b.add(k, a[0]) for k in kinds], (1, 17)), rng, positive=True)


@pytest.mark.parametrize("shapes", [((3, 7, 17), (7, 1)), ((1, 7, 1), (3, 1, 17)), ((17,), ())])
def test_binary_broadcast(rng: np.random.Generator,
                          shapes: tuple[tuple[int, ...], tuple[int, ...]]) -> None:
    kinds = [ew.Add(), ew.Sub(), ew.Mul(), ew.Div(), ew.Maximum(), ew.Minimum()]
    check(build(lambda b, a: [b.add(k, a[0], a[1]) for k in kinds], *shapes), rng)


def test_pow_exponents(rng: np.random.Generator) -> None:
    def body(b: Builder, a: list[Value]) -> list[Value]:
        exponents = [b.constant(np.array(e, np.float32)) for e in (2.0, 3.0, 0.5, 1.7)]
        return [b.add(ew.Pow(), a[0], e) for e in exponents]
    check(build(body, (3, 7)), rng, positive=True)


def test_fused_chain_with_scalar_constant_and_expand(rng: np.random.Generator) -> None:
    def body(b: Builder, a: list[Value]) -> list[Value]:
        s = b.add(ew.Mul(), a[0], b.constant(np.array(0.25, np.float32)))
        t = b.add(ew.Add(), s, b.add(Expand(shape=(3, 7, 17)), a[1]))
        return [b.add(ew.Sigmoid(), b.add(ew.Tanh(), t)), s]
    module = build(body, (3, 7, 17), (7, 1))
    check(module, rng, pipeline="fuse", family="elementwise")


def test_batch_norm_and_cast(rng: np.random.Generator) -> None:
    def body(b: Builder, a: list[Value]) -> list[Value]:
        params = [weight(b, rng, (7,), n) for n in ("scale", "bias", "mean")]
        var = b.weight("var", np.abs(rng.standard_normal(7)).astype(np.float32) + 0.1)
        y = b.add(BatchNorm(eps=1e-3), a[0], *params, var)
        return [b.add(Cast(to=F32), b.add(Cast(to=F16), y))]
    check(build(body, (3, 7, 1, 17)), rng, pipeline="fuse")


# -- GEMM family -----------------------------------------------------------------------------
@pytest.mark.parametrize("m,k,n", [(1, 7, 17), (3, 17, 1), (17, 33, 17), (7, 1, 3)])
def test_linear_epilogue(rng: np.random.Generator, m: int, k: int, n: int) -> None:
    def body(b: Builder, a: list[Value]) -> list[Value]:
        y = b.add(Linear(), a[0], weight(b, rng, (n, k)), weight(b, rng, (n,), "bias"))
        return [b.add(ew.Relu(), b.add(ew.Add(), y, a[1]))]
    check(build(body, (m, k), (m, n)), rng, pipeline="fuse", family="gemm")


def test_linear_3d_input(rng: np.random.Generator) -> None:
    check(build(lambda b, a: [b.add(Linear(), a[0], weight(b, rng, (17, 7)))], (3, 7, 7)), rng)


@pytest.mark.parametrize("lhs,rhs", [((3, 1, 7, 17), (2, 17, 5)), ((2, 17, 33), (33, 17)),
                                     ((1, 3), (3, 1))])
def test_matmul_batched_broadcast(rng: np.random.Generator, lhs: tuple[int, ...],
                                  rhs: tuple[int, ...]) -> None:
    def body(b: Builder, a: list[Value]) -> list[Value]:
        y = b.add(MatMul(), a[0], a[1])
        return [b.add(ew.Mul(), y, b.constant(np.array(0.5, np.float32)))]
    check(build(body, lhs, rhs), rng, pipeline="fuse", family="gemm")


CONVS = [
    ((1, 3, 7, 17), (5, 3, 3, 3), Conv2d(stride=(1, 1), padding=(1, 1, 1, 1),
                                         dilation=(1, 1), groups=1)),
    ((3, 4, 7, 9), (17, 4, 3, 2), Conv2d(stride=(2, 1), padding=(0, 1, 2, 0),
                                         dilation=(1, 2), groups=1)),
    ((1, 17, 7, 7), (17, 1, 3, 3), Conv2d(stride=(2, 2), padding=(1, 1, 1, 1),
                                          dilation=(1, 1), groups=17)),
    ((1, 6, 5, 5), (4, 3, 1, 1), Conv2d(stride=(1, 1), padding=(0, 0, 0, 0),
                                        dilation=(1, 1), groups=2)),
    ((2, 16, 9, 9), (32, 16, 3, 3), Conv2d(stride=(1, 1), padding=(1, 1, 1, 1),
                                           dilation=(1, 1), groups=1)),
    ((3, 4, 17), (7, 4, 5), Conv1d(stride=(2,), padding=(2, 1), dilation=(1,), groups=1)),
    ((1, 4, 5, 3), (4, 3, 3, 3), ConvTranspose2d(stride=(2, 2), padding=(1, 0, 1, 0),
                                                 dilation=(1, 1), groups=1,
                                                 output_padding=(1, 0))),
    ((1, 4, 3, 3), (4, 1, 2, 2), ConvTranspose2d(stride=(1, 2), padding=(0, 0, 0, 0),
                                                 dilation=(2, 1), groups=2)),
]


@pytest.mark.parametrize("x,w,kind", CONVS)
def test_convolutions(rng: np.random.Generator, x: tuple[int, ...], w: tuple[int, ...],
                      kind: Conv2d) -> None:
    out_channels = w[1] * kind.groups if isinstance(kind, ConvTranspose2d) else w[0]

    def body(b: Builder, a: list[Value]) -> list[Value]:
        y = b.add(kind, a[0], weight(b, rng, w), weight(b, rng, (out_channels,), "bias"))
        return [b.add(ew.Hardswish(), y)]
    check(build(body, x), rng, pipeline="fuse", family="gemm")


def test_conv_fp16_and_bf16(rng: np.random.Generator) -> None:
    x, w, kind = CONVS[4]
    for dtype in ("fp16", "bf16"):
        check(build(lambda b, a: [b.add(kind, a[0], weight(b, rng, w))], x), rng, dtype=dtype)


# -- rows ------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", [Softmax(axis=1), Softmax(axis=-1), LogSoftmax(axis=0),
                                  ReduceMean(axes=(0, 2)), ReduceSum(axes=(1,), keepdims=True),
                                  ReduceMax(axes=(2,)), ReduceMin(axes=(0, 1, 2))])
def test_row_reductions(rng: np.random.Generator, kind: object) -> None:
    check(build(lambda b, a: [b.add(kind, a[0])], (3, 7, 17)), rng,  # type: ignore[arg-type]
          family="rows")


def test_layer_norm(rng: np.random.Generator) -> None:
    def body(b: Builder, a: list[Value]) -> list[Value]:
        return [b.add(LayerNorm(normalized_ndim=2), a[0], weight(b, rng, (7, 17)),
                      weight(b, rng, (7, 17), "bias")),
                b.add(LayerNorm(), a[0])]
    check(build(body, (3, 7, 17)), rng)


def test_fused_reduction_group(rng: np.random.Generator) -> None:
    """A decomposed softmax with a scale before it and a row statistic yielded."""
    def body(b: Builder, a: list[Value]) -> list[Value]:
        s = b.add(ew.Mul(), a[0], b.constant(np.array(0.5, np.float32)))
        m = b.add(ReduceMax(axes=(1,), keepdims=True), s)
        e = b.add(ew.Exp(), b.add(ew.Sub(), s, m))
        total = b.add(ReduceSum(axes=(1,), keepdims=True), e)
        return [b.add(ew.Div(), e, total), b.add(ReduceMean(axes=(1,)), s)]
    check(build(body, (7, 17, 3)), rng, pipeline="fuse", family="rows")


# -- pooling ---------------------------------------------------------------------------------
POOLS = [
    MaxPool2d(kernel=(3, 3), stride=(2, 2), padding=(1, 1, 1, 1), dilation=(1, 1),
              ceil_mode=True),
    MaxPool2d(kernel=(2, 3), stride=(1, 2), padding=(0, 1, 0, 1), dilation=(2, 1)),
    AvgPool2d(kernel=(3, 3), stride=(2, 2), padding=(1, 1, 1, 1), ceil_mode=True),
    AvgPool2d(kernel=(3, 2), stride=(2, 3), padding=(1, 0, 1, 1), count_include_pad=False),
    AdaptiveAvgPool2d(output_size=(3, 2)),
    AdaptiveAvgPool2d(output_size=(1, 1)),
]


@pytest.mark.parametrize("kind", POOLS)
def test_pool2d(rng: np.random.Generator, kind: object) -> None:
    check(build(lambda b, a: [b.add(kind, a[0])], (3, 2, 7, 17)), rng,  # type: ignore[arg-type]
          family="pool")


def test_pool1d(rng: np.random.Generator) -> None:
    kinds = [MaxPool1d(kernel=(3,), stride=(2,), padding=(1, 1), dilation=(1,), ceil_mode=True),
             AvgPool1d(kernel=(2,), stride=(2,), padding=(1, 0), count_include_pad=False),
             AdaptiveAvgPool1d(output_size=(3,))]
    check(build(lambda b, a: [b.add(k, a[0]) for k in kinds], (1, 3, 17)), rng)


# (kernel, stride, padding, dilation, ceil_mode): windows that overhang into the padding or
# lie wholly in it (-inf) in ceil mode, with dilation
CEIL_POOLS = [((2, 1), (3, 1), (1, 0), (2, 2), True), ((3, 3), (2, 2), (1, 1), (2, 1), True),
              ((4, 3), (3, 1), (2, 1), (1, 1), True), ((2, 2), (3, 2), (1, 0), (1, 2), False)]


@pytest.mark.parametrize("geometry", CEIL_POOLS)
def test_pools_match_torch_with_nan(rng: np.random.Generator,
                                    geometry: tuple[tuple[int, int], ...]) -> None:
    """Max pools propagate NaN as torch does (tl.maximum / tl.max drop it by default), and a
    relu after them keeps it; average pools divide by torch's count; bit-exact NaN places."""
    import torch
    import torch.nn.functional as F

    (kh, kw), stride, (ph, pw), dilation, ceil = geometry
    pad = (ph, pw, ph, pw)
    x = rng.standard_normal((2, 3, 5, 11)).astype(np.float32)
    x[rng.random(x.shape) < 0.05] = np.nan

    def body(b: Builder, a: list[Value]) -> list[Value]:
        mp = b.add(MaxPool2d(kernel=(kh, kw), stride=stride, padding=pad, dilation=dilation,
                             ceil_mode=ceil), a[0])
        ap = b.add(AvgPool2d(kernel=(kh, kw), stride=stride, padding=pad, ceil_mode=ceil), a[0])
        return [mp, b.add(ew.Relu(), mp), ap]
    art = kiln_compile(build(body, x.shape), target="gpu", pipeline="dce")
    t = torch.from_numpy(x)
    tmax = F.max_pool2d(t, (kh, kw), stride, (ph, pw), dilation, ceil_mode=ceil)
    want = [tmax, torch.relu(tmax), F.avg_pool2d(t, (kh, kw), stride, (ph, pw), ceil_mode=ceil)]
    for got, w in zip(art(x), want):
        np.testing.assert_allclose(got, w.numpy(), rtol=1e-5, atol=1e-6, equal_nan=True)


def test_relu_maximum_minimum_keep_nan(rng: np.random.Generator) -> None:
    x = rng.standard_normal((3, 17)).astype(np.float32)
    y = rng.standard_normal((3, 17)).astype(np.float32)
    x[0, ::3], y[1, ::4] = np.nan, np.nan
    module = build(lambda b, a: [b.add(ew.Relu(), a[0]), b.add(ew.Maximum(), a[0], a[1]),
                                 b.add(ew.Minimum(), a[0], a[1])], x.shape, y.shape)
    got = kiln_compile(module, target="gpu", pipeline="dce")(x, y)
    for g, w in zip(got, [np.maximum(x, 0), np.maximum(x, y), np.minimum(x, y)]):
        np.testing.assert_array_equal(g, w)


# -- copies and aliases ----------------------------------------------------------------------
def test_copies(rng: np.random.Generator) -> None:
    def body(b: Builder, a: list[Value]) -> list[Value]:
        t = b.add(Transpose(perm=(2, 0, 1)), a[0])
        s = b.add(Slice(axes=(0, 2), starts=(1, 0), ends=(17, 7), steps=(3, 2)), t)
        pads = [b.add(Pad(pads=(0, 2, 1, 1, 0, 2), mode=m), a[0])
                for m in ("constant", "reflect", "edge")]
        c = b.add(Concat(axis=1), a[0], a[0], b.add(Slice(axes=(1,), starts=(2,), ends=(5,),
                                                          steps=(1,)), a[0]))
        parts = b.create(Split(axis=2, sizes=(5, 12)), a[0]).results
        return [t, s, *pads, c, *parts]
    check(build(body, (3, 7, 17)), rng, family="copy")


def test_aliases_and_returned_input(rng: np.random.Generator) -> None:
    def body(b: Builder, a: list[Value]) -> list[Value]:
        flat = b.add(Reshape(shape=(3, 119)), a[0])
        y = b.add(ew.Relu(), flat)
        return [b.add(Reshape(shape=(3, 7, 17)), y), a[0], flat]
    check(build(body, (3, 7, 17)), rng)

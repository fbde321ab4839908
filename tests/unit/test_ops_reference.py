"""Every op's NumPy reference and type inference against PyTorch.

Each case builds an op, random inputs (a fresh seed per case, derived from its id), and the
PyTorch expression that defines the op's semantics. The test checks that `infer_type` predicts
PyTorch's output shape, that the reference returns that shape in the inferred dtype, and that
the values agree: `assert_close` measures max|got - want| / max(max|want|, 1e-6), a relative
error over the whole tensor, and requires it to be at most `rtol` (1e-4 unless a case says
otherwise; exact ops use 0). NaNs must appear in the same places.

PyTorch has no integer convolution, pooling or matmul on CPU, so integer cases run PyTorch in
float64 (exact for the small values used) and truncate toward zero, the IR's integer rule.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from kiln.ir.ops import core, nn_conv, nn_norm, nn_pool, reduce, shape
from kiln.ir.ops import elementwise as ew
from kiln.ir.ops.base import OpDef, builtin_ops
from kiln.ir.types import BF16, BOOL, F16, F32, I8, I32, TensorType, dtype_from_numpy

Maker = Callable[[np.random.Generator], np.ndarray]


def assert_close(got: np.ndarray, want: np.ndarray, rtol: float) -> None:
    """max|got - want| / max(max|want|, 1e-6) <= rtol, with NaNs in the same places."""
    assert got.shape == want.shape, (got.shape, want.shape)
    g, w = got.astype(np.float64), want.astype(np.float64)
    nan = np.isnan(w)
    assert np.array_equal(np.isnan(g), nan), "NaNs differ"
    g, w = np.where(nan, 0.0, g), np.where(nan, 0.0, w)
    if w.size == 0:
        return
    inf = np.isinf(w)
    assert np.array_equal(g[inf], w[inf]), "infinities differ"
    err = float(np.abs(g[~inf] - w[~inf]).max(initial=0.0))
    scale = max(float(np.abs(w[~inf]).max(initial=0.0)), 1e-6)
    assert err / scale <= rtol, f"relative error {err / scale:.3g} > {rtol:g}"


# -- input makers ----------------------------------------------------------------------------
def randn(*dims: int, scale: float = 1.0, dtype: Any = np.float32) -> Maker:
    return lambda rng: (rng.standard_normal(dims) * scale).astype(dtype)


def positive(*dims: int, lo: float = 0.1, hi: float = 3.0) -> Maker:
    return lambda rng: rng.uniform(lo, hi, dims).astype(np.float32)


def ints(*dims: int, lo: int = -5, hi: int = 6, dtype: Any = np.int32,
         nonzero: bool = False) -> Maker:
    def make(rng: np.random.Generator) -> np.ndarray:
        x = rng.integers(lo, hi, dims)
        if nonzero:
            x = np.where(x == 0, 1, x)
        return x.astype(dtype)
    return make


def in_float64(fn: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    """Run `fn` in float64 on integer tensors; truncate the result back to their dtype."""
    def run(*xs: torch.Tensor) -> torch.Tensor:
        return torch.trunc(fn(*(x.double() for x in xs))).to(xs[0].dtype)
    return run


@dataclass(frozen=True)
class Case:
    id: str
    op: OpDef
    torch_fn: Callable[..., Any]
    inputs: tuple[Maker, ...]
    rtol: float = 1e-4


def case(id: str, op: OpDef, torch_fn: Callable[..., Any], *inputs: Maker,
         rtol: float = 1e-4) -> Case:
    return Case(id, op, torch_fn, inputs, rtol)


# -- elementwise and cast --------------------------------------------------------------------
BINARY = [
    case("add", ew.Add(), torch.add, randn(3, 1, 7), randn(5, 7)),
    case("add-i32", ew.Add(), torch.add, ints(4, 1), ints(17), rtol=0),
    case("sub", ew.Sub(), torch.sub, randn(17), randn(3, 1), rtol=0),
    case("mul", ew.Mul(), torch.mul, randn(2, 3, 7), randn(1, 3, 1)),
    case("div", ew.Div(), torch.div, randn(7, 3), positive(3)),
    case("div-i32-trunc", ew.Div(), lambda a, b: torch.div(a, b, rounding_mode="trunc"),
         ints(3, 17, lo=-50, hi=50), ints(17, nonzero=True), rtol=0),
    case("pow", ew.Pow(), torch.pow, positive(3, 7), randn(7)),
    case("maximum", ew.Maximum(), torch.maximum, randn(1, 7), randn(3, 1), rtol=0),
    case("minimum", ew.Minimum(), torch.minimum, randn(17), randn(17), rtol=0),
]

UNARY = [
    case("neg", ew.Neg(), torch.neg, randn(3, 7), rtol=0),
    case("abs", ew.Abs(), torch.abs, randn(17), rtol=0),
    case("abs-i8", ew.Abs(), torch.abs, ints(17, dtype=np.int8), rtol=0),
    case("sqrt", ew.Sqrt(), torch.sqrt, positive(3, 7)),
    case("rsqrt", ew.Rsqrt(), torch.rsqrt, positive(17)),
    case("reciprocal", ew.Reciprocal(), torch.reciprocal, positive(1, 17, lo=-3.0)),
    case("exp", ew.Exp(), torch.exp, randn(3, 7, scale=3.0)),
    case("log", ew.Log(), torch.log, positive(17, lo=1e-3, hi=100.0)),
    case("erf", ew.Erf(), torch.erf, randn(3, 17, scale=2.0)),
    case("relu", ew.Relu(), torch.relu, randn(7, 3), rtol=0),
    case("relu-i32", ew.Relu(), torch.relu, ints(17), rtol=0),
    case("relu6", ew.Relu6(), F.relu6, randn(3, 17, scale=5.0), rtol=0),
    case("sigmoid", ew.Sigmoid(), torch.sigmoid, randn(3, 17, scale=6.0)),
    case("tanh", ew.Tanh(), torch.tanh, randn(17, scale=3.0)),
    case("silu", ew.Silu(), F.silu, randn(3, 17, scale=6.0)),
    case("hardsigmoid", ew.Hardsigmoid(), F.hardsigmoid, randn(3, 17, scale=5.0)),
    case("hardswish", ew.Hardswish(), F.hardswish, randn(3, 17, scale=5.0)),
    case("leaky_relu", ew.LeakyRelu(slope=0.2), lambda x: F.leaky_relu(x, 0.2),
         randn(3, 7)),
    case("leaky_relu-default", ew.LeakyRelu(), F.leaky_relu, randn(17)),
    case("gelu", ew.Gelu(), F.gelu, randn(3, 17, scale=3.0)),
    case("gelu-tanh", ew.Gelu(approximate="tanh"), lambda x: F.gelu(x, approximate="tanh"),
         randn(3, 17, scale=3.0)),
    case("clamp", ew.Clamp(min=-0.5, max=1.0), lambda x: torch.clamp(x, -0.5, 1.0),
         randn(7, 3), rtol=0),
    case("clamp-min", ew.Clamp(min=0.25), lambda x: torch.clamp(x, min=0.25), randn(17),
         rtol=0),
    case("clamp-max-i32", ew.Clamp(max=2.0), lambda x: torch.clamp(x, max=2), ints(17),
         rtol=0),
    case("cast-f32-i32", core.Cast(to=I32), lambda x: x.to(torch.int32),
         randn(3, 17, scale=50.0), rtol=0),
    case("cast-f32-i8", core.Cast(to=I8), lambda x: x.to(torch.int8),
         randn(17, scale=30.0), rtol=0),
    case("cast-i32-f32", core.Cast(to=F32), lambda x: x.to(torch.float32), ints(17), rtol=0),
    case("cast-f32-f16", core.Cast(to=F16), lambda x: x.to(torch.float16),
         randn(3, 7, scale=100.0), rtol=0),
    case("cast-f32-bf16", core.Cast(to=BF16), lambda x: x.to(torch.bfloat16).float(),
         randn(3, 17, scale=100.0), rtol=0),
    case("cast-f32-bool", core.Cast(to=BOOL), lambda x: x.to(torch.bool),
         ints(17, lo=-1, hi=2, dtype=np.float32), rtol=0),
]


# -- convolutions and products ---------------------------------------------------------------
def conv2d_asym(pads: tuple[int, int, int, int], **kw: Any) -> Callable[..., torch.Tensor]:
    """conv2d with ONNX-order pads (top, left, bottom, right) via an explicit F.pad."""
    top, left, bottom, right = pads
    return lambda x, w, *b: F.conv2d(F.pad(x, (left, right, top, bottom)), w, *b, **kw)


def convt_asym(pads: tuple[int, int, int, int], **kw: Any) -> Callable[..., torch.Tensor]:
    """conv_transpose2d with ONNX-order pads: the unpadded result, cropped."""
    top, left, bottom, right = pads

    def run(x: torch.Tensor, w: torch.Tensor, *b: torch.Tensor) -> torch.Tensor:
        y = F.conv_transpose2d(x, w, b[0] if b else None, **kw)
        return y[:, :, top:y.shape[2] - bottom, left:y.shape[3] - right]
    return run


Conv2d, Conv1d, ConvT = nn_conv.Conv2d, nn_conv.Conv1d, nn_conv.ConvTranspose2d

CONV = [
    case("conv2d-bias-pad1", Conv2d(padding=(1, 1, 1, 1)), lambda x, w, b: F.conv2d(
        x, w, b, padding=1), randn(2, 3, 7, 7), randn(4, 3, 3, 3), randn(4)),
    case("conv2d-grouped-dilated-strided", Conv2d(stride=(2, 2), padding=(2, 2, 2, 2),
         dilation=(2, 2), groups=2), lambda x, w: F.conv2d(
        x, w, stride=2, padding=2, dilation=2, groups=2), randn(1, 4, 17, 17),
         randn(6, 2, 3, 3)),
    case("conv2d-depthwise", Conv2d(stride=(2, 2), padding=(1, 1, 1, 1), groups=8),
         lambda x, w, b: F.conv2d(x, w, b, stride=2, padding=1, groups=8),
         randn(2, 8, 9, 9), randn(8, 1, 3, 3), randn(8)),
    case("conv2d-depthwise-multiplier", Conv2d(groups=3), lambda x, w: F.conv2d(
        x, w, groups=3), randn(1, 3, 7, 7), randn(6, 1, 5, 5)),
    case("conv2d-asym-pad", Conv2d(padding=(0, 1, 2, 3), stride=(1, 2)),
         conv2d_asym((0, 1, 2, 3), stride=(1, 2)), randn(2, 3, 7, 17), randn(5, 3, 3, 2)),
    case("conv2d-1x1-on-1x1", Conv2d(), F.conv2d, randn(3, 5, 1, 1), randn(7, 5, 1, 1)),
    case("conv2d-rect-kernel", Conv2d(stride=(3, 1), dilation=(1, 3)), lambda x, w: F.conv2d(
        x, w, stride=(3, 1), dilation=(1, 3)), randn(1, 2, 17, 17), randn(3, 2, 1, 5)),
    case("conv2d-i32", Conv2d(padding=(1, 1, 1, 1)), in_float64(lambda x, w: F.conv2d(
        x, w, padding=1)), ints(2, 3, 7, 7), ints(4, 3, 3, 3), rtol=0),
    case("conv2d-i8", Conv2d(), in_float64(F.conv2d), ints(1, 2, 3, 3, lo=-2, hi=3,
         dtype=np.int8), ints(1, 2, 3, 3, lo=-2, hi=3, dtype=np.int8), rtol=0),
    case("conv1d-bias-strided", Conv1d(stride=(2,), padding=(1, 1)), lambda x, w, b: F.conv1d(
        x, w, b, stride=2, padding=1), randn(2, 3, 17), randn(5, 3, 3), randn(5)),
    case("conv1d-grouped-dilated", Conv1d(dilation=(3,), groups=3, padding=(3, 3)),
         lambda x, w: F.conv1d(x, w, dilation=3, groups=3, padding=3), randn(1, 3, 7),
         randn(6, 1, 3)),
    case("conv1d-asym-pad", Conv1d(padding=(2, 0)), lambda x, w: F.conv1d(
        F.pad(x, (2, 0)), w), randn(3, 4, 7), randn(2, 4, 3)),
    case("conv1d-i32", Conv1d(), in_float64(F.conv1d), ints(1, 2, 17), ints(3, 2, 3), rtol=0),
    case("convt-stride2-outpad", ConvT(stride=(2, 2), padding=(1, 1, 1, 1),
         output_padding=(1, 1)), lambda x, w, b: F.conv_transpose2d(
        x, w, b, stride=2, padding=1, output_padding=1), randn(2, 4, 5, 5), randn(4, 3, 3, 3),
         randn(3)),
    case("convt-grouped", ConvT(stride=(2, 1), groups=2), lambda x, w: F.conv_transpose2d(
        x, w, stride=(2, 1), groups=2), randn(1, 4, 3, 7), randn(4, 3, 3, 2)),
    case("convt-dilated", ConvT(dilation=(2, 3), padding=(1, 2, 1, 2)),
         lambda x, w: F.conv_transpose2d(x, w, dilation=(2, 3), padding=(1, 2)),
         randn(2, 3, 7, 3), randn(3, 2, 3, 3)),
    case("convt-k4s2p1", ConvT(stride=(2, 2), padding=(1, 1, 1, 1)),
         lambda x, w: F.conv_transpose2d(x, w, stride=2, padding=1), randn(1, 8, 7, 7),
         randn(8, 4, 4, 4)),
    case("convt-asym-pad", ConvT(stride=(3, 2), padding=(0, 2, 1, 0), output_padding=(2, 1)),
         convt_asym((0, 2, 1, 0), stride=(3, 2), output_padding=(2, 1)), randn(1, 2, 3, 5),
         randn(2, 3, 3, 3)),
    case("convt-depthwise-i32", ConvT(stride=(2, 2), groups=3), in_float64(
        lambda x, w: F.conv_transpose2d(x, w, stride=2, groups=3)), ints(1, 3, 3, 3),
         ints(3, 1, 2, 2), rtol=0),
    case("linear", nn_conv.Linear(), F.linear, randn(5, 7), randn(3, 7), randn(3)),
    case("linear-3d-nobias", nn_conv.Linear(), F.linear, randn(2, 3, 17), randn(7, 17)),
    case("linear-1d", nn_conv.Linear(), F.linear, randn(7), randn(1, 7), randn(1)),
    case("linear-i32", nn_conv.Linear(), F.linear, ints(3, 7), ints(5, 7), ints(5), rtol=0),
    case("matmul-2d", nn_conv.MatMul(), torch.matmul, randn(3, 7), randn(7, 17)),
    case("matmul-vec-vec", nn_conv.MatMul(), torch.matmul, randn(17), randn(17)),
    case("matmul-mat-vec", nn_conv.MatMul(), torch.matmul, randn(2, 3, 7), randn(7)),
    case("matmul-vec-mat", nn_conv.MatMul(), torch.matmul, randn(7), randn(4, 7, 3)),
    case("matmul-broadcast", nn_conv.MatMul(), torch.matmul, randn(5, 1, 2, 3),
         randn(4, 3, 7)),
    case("matmul-attention", nn_conv.MatMul(), torch.matmul, randn(2, 4, 17, 8),
         randn(2, 4, 8, 17)),
    case("matmul-i32", nn_conv.MatMul(), torch.matmul, ints(2, 3, 7), ints(7, 1), rtol=0),
]


# -- normalization ---------------------------------------------------------------------------
def batch_norm(eps: float = 1e-5) -> Callable[..., torch.Tensor]:
    return lambda x, s, b, m, v: F.batch_norm(x, m, v, s, b, training=False, eps=eps)


BN = nn_norm.BatchNorm
NORM = [
    case("batch_norm-4d", BN(), batch_norm(), randn(2, 3, 7, 7), randn(3), randn(3), randn(3),
         positive(3)),
    case("batch_norm-2d-eps", BN(eps=1e-3), batch_norm(1e-3), randn(17, 3), randn(3),
         randn(3), randn(3), positive(3)),
    case("batch_norm-3d", BN(), batch_norm(), randn(2, 1, 17), randn(1), randn(1), randn(1),
         positive(1, lo=1e-3)),
    case("layer_norm", nn_norm.LayerNorm(), lambda x, w, b: F.layer_norm(x, (17,), w, b),
         randn(2, 5, 17, scale=3.0), randn(17), randn(17)),
    case("layer_norm-2d-noaffine", nn_norm.LayerNorm(normalized_ndim=2, eps=1e-3),
         lambda x: F.layer_norm(x, (3, 7), eps=1e-3), randn(2, 3, 7)),
    case("layer_norm-weight-only", nn_norm.LayerNorm(), lambda x, w: F.layer_norm(
        x, (1,), w), randn(7, 1), randn(1)),
    case("layer_norm-offset", nn_norm.LayerNorm(), lambda x: F.layer_norm(x, (17,)),
         positive(3, 17, lo=100.0, hi=101.0)),
    case("softmax", nn_norm.Softmax(), lambda x: torch.softmax(x, -1),
         randn(3, 17, scale=10.0)),
    case("softmax-axis0", nn_norm.Softmax(axis=0), lambda x: torch.softmax(x, 0),
         randn(7, 3)),
    case("softmax-axis1-large", nn_norm.Softmax(axis=1), lambda x: torch.softmax(x, 1),
         randn(2, 17, 3, scale=100.0)),
    case("softmax-1", nn_norm.Softmax(), lambda x: torch.softmax(x, -1), randn(3, 1)),
    case("log_softmax", nn_norm.LogSoftmax(), lambda x: torch.log_softmax(x, -1),
         randn(3, 17, scale=10.0)),
    case("log_softmax-axis1", nn_norm.LogSoftmax(axis=1), lambda x: torch.log_softmax(x, 1),
         randn(2, 7, 3, scale=50.0)),
    case("lrn-size5", nn_norm.LocalResponseNorm(size=5), lambda x: F.local_response_norm(
        x, 5), randn(2, 7, 5, 5, scale=10.0)),
    case("lrn-size4-even", nn_norm.LocalResponseNorm(size=4, alpha=0.1, beta=0.5, k=2.0),
         lambda x: F.local_response_norm(x, 4, alpha=0.1, beta=0.5, k=2.0),
         randn(1, 7, 3, 3)),
    case("lrn-size1-rank3", nn_norm.LocalResponseNorm(size=1, alpha=0.5), lambda x:
         F.local_response_norm(x, 1, alpha=0.5), randn(2, 3, 17)),
    case("lrn-size-gt-channels", nn_norm.LocalResponseNorm(size=9, alpha=1e-2),
         lambda x: F.local_response_norm(x, 9, alpha=1e-2), randn(1, 3, 7, 2, scale=3.0)),
]


# -- pooling ---------------------------------------------------------------------------------
def maxpool2d_asym(pads: tuple[int, int, int, int], **kw: Any) -> Callable[..., torch.Tensor]:
    top, left, bottom, right = pads
    return lambda x: F.max_pool2d(F.pad(x, (left, right, top, bottom), value=-math.inf), **kw)


MP1, MP2 = nn_pool.MaxPool1d, nn_pool.MaxPool2d
AP1, AP2 = nn_pool.AvgPool1d, nn_pool.AvgPool2d
POOL = [
    case("max_pool2d-k3s2p1", MP2(kernel=(3, 3), stride=(2, 2), padding=(1, 1, 1, 1)),
         lambda x: F.max_pool2d(x, 3, 2, 1), randn(2, 3, 17, 17), rtol=0),
    case("max_pool2d-ceil", MP2(kernel=(3, 3), stride=(2, 2), ceil_mode=True),
         lambda x: F.max_pool2d(x, 3, 2, ceil_mode=True), randn(1, 2, 8, 7), rtol=0),
    case("max_pool2d-ceil-pad", MP2(kernel=(2, 3), stride=(2, 2), padding=(1, 1, 1, 1),
         ceil_mode=True), lambda x: F.max_pool2d(x, (2, 3), 2, 1, ceil_mode=True),
         randn(1, 2, 7, 8), rtol=0),
    case("max_pool2d-dilated", MP2(kernel=(3, 2), stride=(1, 2), dilation=(2, 3),
         padding=(1, 1, 1, 1)), lambda x: F.max_pool2d(x, (3, 2), (1, 2), 1,
         dilation=(2, 3)), randn(2, 3, 7, 17), rtol=0),
    case("max_pool2d-asym", MP2(kernel=(2, 2), stride=(2, 2), padding=(0, 0, 1, 1)),
         maxpool2d_asym((0, 0, 1, 1), kernel_size=2, stride=2), randn(1, 3, 7, 7), rtol=0),
    case("max_pool2d-i32", MP2(kernel=(2, 2), stride=(2, 2), padding=(1, 1, 1, 1)),
         in_float64(lambda x: F.max_pool2d(x, 2, 2, 1)), ints(2, 3, 7, 7), rtol=0),
    case("max_pool2d-1x1", MP2(kernel=(1, 1), stride=(1, 1)), lambda x: F.max_pool2d(x, 1),
         randn(1, 3, 1, 1), rtol=0),
    case("max_pool1d", MP1(kernel=(3,), stride=(2,), padding=(1, 1), ceil_mode=True),
         lambda x: F.max_pool1d(x, 3, 2, 1, ceil_mode=True), randn(2, 3, 17), rtol=0),
    case("max_pool1d-ceil-drops-last", MP1(kernel=(2,), stride=(2,), padding=(1, 1),
         ceil_mode=True), lambda x: F.max_pool1d(x, 2, 2, 1, ceil_mode=True), randn(1, 3, 5),
         rtol=0),
    case("max_pool1d-dilated", MP1(kernel=(2,), stride=(3,), dilation=(2,)),
         lambda x: F.max_pool1d(x, 2, 3, dilation=2), randn(1, 2, 7), rtol=0),
    case("avg_pool2d-k3s2p1", AP2(kernel=(3, 3), stride=(2, 2), padding=(1, 1, 1, 1)),
         lambda x: F.avg_pool2d(x, 3, 2, 1), randn(2, 3, 17, 17)),
    case("avg_pool2d-ceil-include", AP2(kernel=(3, 3), stride=(2, 2), padding=(1, 1, 1, 1),
         ceil_mode=True), lambda x: F.avg_pool2d(x, 3, 2, 1, ceil_mode=True),
         randn(1, 2, 8, 8)),
    case("avg_pool2d-ceil-exclude", AP2(kernel=(3, 2), stride=(2, 2), padding=(1, 1, 1, 1),
         ceil_mode=True, count_include_pad=False), lambda x: F.avg_pool2d(
        x, (3, 2), 2, 1, ceil_mode=True, count_include_pad=False), randn(1, 2, 8, 7)),
    case("avg_pool2d-exclude", AP2(kernel=(3, 3), stride=(1, 1), padding=(1, 1, 1, 1),
         count_include_pad=False), lambda x: F.avg_pool2d(x, 3, 1, 1, count_include_pad=False),
         randn(1, 3, 7, 7)),
    case("avg_pool2d-ceil-nopad", AP2(kernel=(2, 2), stride=(2, 2), ceil_mode=True),
         lambda x: F.avg_pool2d(x, 2, 2, ceil_mode=True), randn(2, 3, 17, 3)),
    case("avg_pool2d-asym-include", AP2(kernel=(2, 2), stride=(2, 2), padding=(1, 0, 0, 1)),
         lambda x: F.avg_pool2d(F.pad(x, (0, 1, 1, 0)), 2, 2), randn(1, 3, 7, 7)),
    case("avg_pool2d-i32", AP2(kernel=(2, 2), stride=(2, 2)),
         in_float64(lambda x: F.avg_pool2d(x, 2, 2)), ints(1, 3, 7, 7, lo=-50, hi=50), rtol=0),
    case("avg_pool1d", AP1(kernel=(3,), stride=(2,), padding=(1, 1), ceil_mode=True,
         count_include_pad=False), lambda x: F.avg_pool1d(x, 3, 2, 1, ceil_mode=True,
         count_include_pad=False), randn(2, 3, 17)),
    case("avg_pool1d-ceil-drops-last", AP1(kernel=(2,), stride=(2,), padding=(1, 1),
         ceil_mode=True), lambda x: F.avg_pool1d(x, 2, 2, 1, ceil_mode=True), randn(1, 3, 5)),
    case("avg_pool1d-include", AP1(kernel=(4,), stride=(3,), padding=(2, 2), ceil_mode=True),
         lambda x: F.avg_pool1d(x, 4, 3, 2, ceil_mode=True), randn(1, 2, 7)),
    case("adaptive_avg_pool2d-global", nn_pool.AdaptiveAvgPool2d(),
         lambda x: F.adaptive_avg_pool2d(x, 1), randn(2, 3, 7, 7)),
    case("adaptive_avg_pool2d-uneven", nn_pool.AdaptiveAvgPool2d(output_size=(3, 5)),
         lambda x: F.adaptive_avg_pool2d(x, (3, 5)), randn(2, 3, 7, 17)),
    case("adaptive_avg_pool2d-upsample", nn_pool.AdaptiveAvgPool2d(output_size=(7, 1)),
         lambda x: F.adaptive_avg_pool2d(x, (7, 1)), randn(1, 2, 3, 3)),
    case("adaptive_avg_pool2d-i32", nn_pool.AdaptiveAvgPool2d(output_size=(2, 2)),
         in_float64(lambda x: F.adaptive_avg_pool2d(x, 2)), ints(1, 2, 7, 3, lo=-50, hi=50),
         rtol=0),
    case("adaptive_avg_pool1d", nn_pool.AdaptiveAvgPool1d(output_size=(5,)),
         lambda x: F.adaptive_avg_pool1d(x, 5), randn(2, 3, 17)),
    case("adaptive_avg_pool1d-global", nn_pool.AdaptiveAvgPool1d(),
         lambda x: F.adaptive_avg_pool1d(x, 1), randn(2, 3, 1)),
]


# -- shape and reductions --------------------------------------------------------------------
def unsqueeze_all(axes: tuple[int, ...]) -> Callable[[torch.Tensor], torch.Tensor]:
    def run(x: torch.Tensor) -> torch.Tensor:
        for axis in sorted(axes):
            x = x.unsqueeze(axis)
        return x
    return run


SHAPE = [
    case("identity", shape.Identity(), lambda x: x, randn(3, 7), rtol=0),
    case("dropout", shape.Dropout(p=0.3), lambda x: F.dropout(x, 0.3, training=False),
         randn(17), rtol=0),
    case("reshape", shape.Reshape(shape=(7, 3, 1)), lambda x: x.reshape(7, 3, 1),
         randn(3, 7), rtol=0),
    case("reshape-scalar-i8", shape.Reshape(shape=()), lambda x: x.reshape(()),
         ints(1, 1, dtype=np.int8), rtol=0),
    case("flatten", shape.Flatten(), lambda x: torch.flatten(x, 1), randn(2, 3, 7, 1), rtol=0),
    case("flatten-0-1", shape.Flatten(start_dim=0, end_dim=1), lambda x: torch.flatten(
        x, 0, 1), randn(2, 3, 7), rtol=0),
    case("flatten-explicit-end", shape.Flatten(start_dim=1, end_dim=2),
         lambda x: torch.flatten(x, 1, 2), ints(2, 3, 7, 5), rtol=0),
    case("transpose", shape.Transpose(perm=(0, 2, 3, 1)), lambda x: x.permute(0, 2, 3, 1),
         randn(2, 3, 7, 1), rtol=0),
    case("concat", shape.Concat(axis=1), lambda *xs: torch.cat(xs, 1), randn(2, 3, 7),
         randn(2, 1, 7), randn(2, 17, 7), rtol=0),
    case("concat-single-i32", shape.Concat(), lambda x: torch.cat([x], 0), ints(3), rtol=0),
    case("split", shape.Split(axis=2, sizes=(1, 3, 3)), lambda x: torch.split(
        x, [1, 3, 3], 2), randn(2, 3, 7), rtol=0),
    case("split-one", shape.Split(sizes=(17,)), lambda x: torch.split(x, [17], 0),
         ints(17), rtol=0),
    case("slice", shape.Slice(axes=(1, 2), starts=(1, 0), ends=(3, 17), steps=(1, 3)),
         lambda x: x[:, 1:3, 0:17:3], randn(2, 3, 17), rtol=0),
    case("slice-step-odd", shape.Slice(axes=(0,), starts=(2,), ends=(7,), steps=(2,)),
         lambda x: x[2:7:2], ints(7, 3), rtol=0),
    case("pad-constant", shape.Pad(pads=(0, 1, 2, 1, 0, 3), value=1.5), lambda x: F.pad(
        x, (2, 3, 1, 0, 0, 1), value=1.5), randn(2, 3, 7), rtol=0),
    case("pad-reflect", shape.Pad(pads=(0, 0, 2, 1, 0, 0, 1, 2), mode="reflect"),
         lambda x: F.pad(x, (1, 2, 2, 1), mode="reflect"), randn(1, 2, 3, 7), rtol=0),
    case("pad-edge", shape.Pad(pads=(0, 0, 0, 3, 0, 0, 0, 1), mode="edge"),
         lambda x: F.pad(x, (3, 1, 0, 0), mode="replicate"), randn(2, 3, 1, 7), rtol=0),
    case("pad-i32", shape.Pad(pads=(1, 2), value=-3.0), lambda x: F.pad(x, (1, 2), value=-3),
         ints(17), rtol=0),
    case("squeeze", shape.Squeeze(axes=(0, 2)), lambda x: x.squeeze((0, 2)),
         randn(1, 3, 1, 7), rtol=0),
    case("unsqueeze", shape.Unsqueeze(axes=(3, 0)), unsqueeze_all((3, 0)), randn(3, 7),
         rtol=0),
    case("expand", shape.Expand(shape=(2, 3, 4, 7)), lambda x: x.expand(2, 3, 4, 7),
         randn(3, 1, 7), rtol=0),
    case("expand-i8", shape.Expand(shape=(3, 17)), lambda x: x.expand(3, 17),
         ints(1, dtype=np.int8), rtol=0),
    case("reduce_mean", reduce.ReduceMean(axes=(2, 3), keepdims=True), lambda x: x.mean(
        (2, 3), keepdim=True), randn(2, 3, 7, 7)),
    case("reduce_mean-1", reduce.ReduceMean(axes=(0,)), lambda x: x.mean(0), randn(17, 3)),
    case("reduce_mean-i32", reduce.ReduceMean(axes=(1,)), in_float64(lambda x: x.mean(1)),
         ints(3, 7, lo=-50, hi=50), rtol=0),
    case("reduce_sum", reduce.ReduceSum(axes=(0, 2)), lambda x: x.sum((0, 2)),
         randn(3, 7, 17)),
    case("reduce_sum-i32-keep", reduce.ReduceSum(axes=(1,), keepdims=True),
         lambda x: x.sum(1, keepdim=True, dtype=torch.int32), ints(3, 17), rtol=0),
    case("reduce_max", reduce.ReduceMax(axes=(1,)), lambda x: x.amax(1), randn(3, 17, 2),
         rtol=0),
    case("reduce_max-i8-all", reduce.ReduceMax(axes=(0, 1), keepdims=True), lambda x: x.amax(
        (0, 1), keepdim=True), ints(7, 3, dtype=np.int8), rtol=0),
    case("reduce_min", reduce.ReduceMin(axes=(2, 0)), lambda x: x.amin((0, 2)),
         randn(3, 7, 17), rtol=0),
]

CASES = BINARY + UNARY + CONV + NORM + POOL + SHAPE

EXCLUDED = {
    "kiln.weight": "no computation: the interpreter reads the module's weights",
    "kiln.constant": "no computation: returns its literal (tested with the IR)",
    "kiln.return": "control flow, no reference",
    "kiln.yield": "control flow, no reference",
    "kiln.quantize": "quantized semantics are tested against their own bit-exact rules",
    "kiln.dequantize": "quantized semantics are tested against their own bit-exact rules",
    "kiln.requantize": "quantized semantics are tested against their own bit-exact rules",
    "kiln.fixed_activation": "fixed-point tables: bit-exact vs the HLS C++, error vs float "
                             "in tests/unit/test_hls_lut.py",
    "kiln.lut_softmax": "fixed-point tables: bit-exact vs the HLS C++, error vs float in "
                        "tests/unit/test_hls_lut.py",
    **{f"kiln.{name}": "fixed-point layer norm / GELU: bit-exact vs the HLS C++, error vs "
                       "float in tests/unit/test_hls_transformer.py"
       for name in ("fixed_layer_norm", "fixed_gelu")},
    "kiln.fused": "runs its region: tested by the fuse pass tests (bit-exact vs its body)",
    "kiln.conv2d_nhwc": "NHWC twin defined by conv2d: tested in test_layout.py against torch",
    "kiln.max_pool2d_nhwc": "NHWC twin defined by max_pool2d: tested in test_layout.py",
    "kiln.avg_pool2d_nhwc": "NHWC twin defined by avg_pool2d: tested in test_layout.py",
    "kiln.adaptive_avg_pool2d_nhwc": "NHWC twin of adaptive_avg_pool2d: tested in test_layout.py",
    **{f"kiln.{name}": "integer op: bit-exact against tests/unit/qnn_numpy.py in test_qnn_ops.py"
       for name in ("qconv1d", "qconv2d", "qlinear", "qmatmul", "qadd", "qrescale",
                    "qavg_pool1d", "qavg_pool2d", "qreduce_mean")},
    **{f"kiln.{name}": "integer op: bit-exact against NumPy in tests/unit/test_cpu_qlut.py"
       for name in ("qlut", "qmul")},
}


def _seed(case_id: str) -> int:
    return zlib.crc32(case_id.encode())


def test_case_ids_are_unique() -> None:
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids))


@pytest.mark.parametrize("c", CASES, ids=lambda c: c.id)
def test_reference_matches_torch(c: Case) -> None:
    rng = np.random.default_rng(_seed(c.id))
    arrays = [make(rng) for make in c.inputs]
    types = [TensorType(a.shape, dtype_from_numpy(a.dtype)) for a in arrays]
    c.op.verify(types)
    inferred = c.op.infer_type(types)
    originals = [a.copy() for a in arrays]
    got = c.op.reference(*arrays)
    for a, before in zip(arrays, originals):
        assert np.array_equal(a, before, equal_nan=True), "reference wrote to an operand"
    with torch.no_grad():
        want = c.torch_fn(*(torch.from_numpy(a.copy()) for a in arrays))
    wants = tuple(want) if isinstance(want, (tuple, list)) else (want,)
    assert len(inferred) == len(got) == len(wants)
    for t, g, w in zip(inferred, got, wants):
        w_np = w.numpy()
        assert t.shape == w_np.shape, f"inferred {t.shape}, torch gives {w_np.shape}"
        assert g.dtype == t.numpy_dtype, f"reference returns {g.dtype}, inferred {t}"
        assert_close(g, w_np, c.rtol)


def test_every_op_has_a_reference_test() -> None:
    tested = {c.op.NAME for c in CASES}
    registered = set(builtin_ops())
    missing = registered - tested - set(EXCLUDED)
    assert not missing, f"ops without a reference test: {sorted(missing)}"
    assert not tested - registered, "tests name unregistered ops"

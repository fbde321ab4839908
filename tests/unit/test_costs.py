"""Per-op costs: hand-counted FLOPs and bytes, the rule table's coverage, and conv / linear /
matmul FLOPs against torch's own counter (`torch.utils.flop_counter.FlopCounterMode`), op by op
and on every bundled model."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

import kiln
from kiln.errors import KilnError
from kiln.ir.builder import Builder, new_function
from kiln.ir.costs import (
    FLOP_RULES,
    FREE_OPS,
    check_rules,
    func_costs,
    module_flops,
    module_summary,
    op_bytes,
    op_flops,
)
from kiln.ir.graph import Module, Op, Value
from kiln.ir.ops.base import OpDef, builtin_ops, register_op
from kiln.ir.ops.core import Cast
from kiln.ir.ops.elementwise import Add, Clamp, Exp, Gelu, Relu, Sigmoid
from kiln.ir.ops.nn_conv import Conv1d, Conv2d, ConvBase, ConvTranspose2d, Linear, MatMul
from kiln.ir.ops.nn_norm import BatchNorm, LayerNorm, Softmax
from kiln.ir.ops.nn_pool import AdaptiveAvgPool1d, AdaptiveAvgPool2d, AvgPool2d, MaxPool2d
from kiln.ir.ops.reduce import ReduceMean, ReduceSum
from kiln.ir.ops.shape import Concat, Reshape, Transpose
from kiln.ir.parser import parse
from kiln.ir.types import F16, F32, TensorType
from kiln.models import example_inputs, get_model, list_models

Body = Callable[[Builder, list[Value]], Value]


def one_op(body: Body, *shapes: tuple[int, ...]) -> Op:
    """The op producing `body`'s result in a fresh function over f32 inputs of `shapes`."""
    m = Module("t")
    func, b = new_function(m, "forward", [TensorType(s, F32) for s in shapes])
    out = body(b, func.args)
    b.ret(out)
    assert out.producer is not None
    return out.producer


def ones(b: Builder, *shape: int) -> Value:
    return b.weight("w", np.ones(shape, np.float32))


def apply(kind: OpDef, b: Builder, xs: list[Value]) -> Value:
    return b.add(kind, xs[0])


def torch_flops(fn: Callable[[], object]) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


# -- the table covers every op -----------------------------------------------------------------
def test_every_registered_op_has_a_cost_rule() -> None:
    kiln_ops = list(builtin_ops().values())
    assert check_rules(kiln_ops) == []  # test files register test-only ops of their own
    assert set(FLOP_RULES) >= FREE_OPS


def test_an_op_without_a_rule_is_an_error() -> None:
    from dataclasses import dataclass

    from kiln.ir.ops import base

    @dataclass(frozen=True)
    class Mystery(OpDef):
        """A test-only op no cost rule knows."""

        NAME = "kiln.test_costs_mystery"
        OPERANDS = ("input",)

        def infer_type(self, operands: object) -> tuple[TensorType, ...]:
            return (operands[0],)  # type: ignore[index]

    register_op(Mystery)
    try:
        op = one_op(lambda b, xs: b.add(Mystery(), xs[0]), (2,))
        with pytest.raises(KilnError, match="no cost rule"):
            op_flops(op)
        with pytest.raises(KilnError, match="FLOP_RULES"):
            op_bytes(op)
    finally:
        base._REGISTRY.pop(Mystery.NAME)


# -- hand counts -------------------------------------------------------------------------------
def test_conv2d_flops_by_hand() -> None:
    # N=2, Cin=4, Cout=6, groups=2, 3x3 kernel, 8x8 input, stride 2, pad 1 → 4x4 output.
    op = one_op(lambda b, xs: b.add(Conv2d(stride=(2, 2), padding=(1, 1, 1, 1), groups=2),
                                    xs[0], ones(b, 6, 2, 3, 3)), (2, 4, 8, 8))
    assert op.result.type.shape == (2, 6, 4, 4)
    assert op_flops(op) == 2 * (2 * 6 * 16) * 2 * 9
    assert op_bytes(op) == 4 * (2 * 4 * 64 + 6 * 2 * 9 + 2 * 6 * 16)


def test_conv1d_and_depthwise_flops_by_hand() -> None:
    op = one_op(lambda b, xs: b.add(Conv1d(groups=3), xs[0], ones(b, 6, 1, 5),
                                    b.weight("b", np.zeros(6, np.float32))), (1, 3, 17))
    assert op_flops(op) == 2 * (6 * 13) * 1 * 5  # the bias is free (it seeds the accumulator)


def test_conv_transpose_flops_by_hand() -> None:
    # Each of the 1·4·3·3 input elements meets Cout/groups=3 · 2·2 weights.
    op = one_op(lambda b, xs: b.add(ConvTranspose2d(stride=(2, 2)), xs[0],
                                    ones(b, 4, 3, 2, 2)), (1, 4, 3, 3))
    assert op.result.type.shape == (1, 3, 6, 6)
    assert op_flops(op) == 2 * 36 * 3 * 4


def test_linear_and_batched_matmul_flops_by_hand() -> None:
    lin = one_op(lambda b, xs: b.add(Linear(), xs[0], ones(b, 5, 7)), (2, 3, 7))
    assert op_flops(lin) == 2 * 2 * 3 * 5 * 7
    mm = one_op(lambda b, xs: b.add(MatMul(), xs[0], xs[1]), (4, 1, 3, 8), (5, 8, 2))
    assert mm.result.type.shape == (4, 5, 3, 2)
    assert op_flops(mm) == 2 * 4 * 5 * 3 * 2 * 8
    vec = one_op(lambda b, xs: b.add(MatMul(), xs[0], xs[1]), (8,), (3, 8, 2))
    assert op_flops(vec) == 2 * 3 * 2 * 8


def test_pool_flops_by_hand() -> None:
    mx = one_op(lambda b, xs: b.add(MaxPool2d(kernel=(3, 3), stride=(2, 2),
                                              padding=(1, 1, 1, 1), dilation=(1, 1),
                                              ceil_mode=True), xs[0]), (1, 2, 7, 7))
    assert op_flops(mx) == 9 * mx.result.type.numel
    avg = one_op(lambda b, xs: b.add(AvgPool2d(kernel=(2, 3), stride=(1, 1),
                                               padding=(0, 0, 0, 0)), xs[0]), (1, 1, 4, 4))
    assert op_flops(avg) == 6 * (3 * 2)
    gap = one_op(lambda b, xs: b.add(AdaptiveAvgPool2d((1, 1)), xs[0]), (2, 3, 5, 5))
    assert op_flops(gap) == 2 * 3 * 25
    # 7 → 3 bins [0,3) [2,5) [4,7): lengths 3+3+3 = 9 (overlapping bins count twice).
    bins = one_op(lambda b, xs: b.add(AdaptiveAvgPool1d((3,)), xs[0]), (1, 2, 7))
    assert op_flops(bins) == 2 * 9


def test_elementwise_reduction_and_norm_conventions() -> None:
    shape = (2, 3, 4)
    n = 24
    cases: list[tuple[OpDef, int]] = [
        (Relu(), n), (Exp(), n), (Sigmoid(), 4 * n), (Gelu(), 5 * n),
        (Gelu(approximate="tanh"), 9 * n), (Clamp(min=0.0), n), (Clamp(min=0.0, max=1.0), 2 * n),
        (Softmax(axis=2), 5 * n), (LayerNorm(), 5 * n),
        (ReduceSum(axes=(1, 2)), n), (ReduceMean(axes=(2,)), n + 6),
    ]
    for kind, want in cases:
        op = one_op(partial(apply, kind), shape)
        assert op_flops(op) == want, kind
    add = one_op(lambda b, xs: b.add(Add(), xs[0], b.constant(np.ones((), np.float32))), shape)
    assert op_flops(add) == n
    assert op_bytes(add) == 4 * (n + 1 + n)


def test_batch_norm_counts_the_folded_form() -> None:
    def body(b: Builder, xs: list[Value]) -> Value:
        p = [b.weight(f"p{i}", np.ones(3, np.float32)) for i in range(4)]
        return b.add(BatchNorm(), xs[0], *p)

    op = one_op(body, (2, 3, 5))
    assert op_flops(op) == 2 * 30


def test_shape_ops_move_bytes_but_views_are_free() -> None:
    tr = one_op(lambda b, xs: b.add(Transpose(perm=(1, 0)), xs[0]), (3, 5))
    assert (op_flops(tr), op_bytes(tr)) == (0, 2 * 4 * 15)
    cat = one_op(lambda b, xs: b.add(Concat(axis=0), xs[0], xs[1]), (3, 5), (2, 5))
    assert (op_flops(cat), op_bytes(cat)) == (0, 4 * (15 + 10 + 25))
    view = one_op(lambda b, xs: b.add(Reshape(shape=(15,)), xs[0]), (3, 5))
    assert (op_flops(view), op_bytes(view)) == (0, 0)
    half = one_op(lambda b, xs: b.add(Cast(to=F16), xs[0]), (3, 5))
    assert (op_flops(half), op_bytes(half)) == (0, 15 * 4 + 15 * 2)


def test_quantized_and_fixed_types_count_bytes_by_width() -> None:
    text = """
kiln.module @q {
  kiln.func @forward(%x: tensor<10xf32>) -> tensor<10xf32> {
    %q = kiln.quantize(%x) {to = q<i8, 0.5, 0>} : tensor<10xq<i8, 0.5, 0>>
    %f = kiln.dequantize(%q) : tensor<10xf32>
    %p = kiln.quantize(%f) {to = fixed<12,4>} : tensor<10xfixed<12,4>>
    %r = kiln.dequantize(%p) : tensor<10xf32>
    kiln.return %r
  }
}
"""
    quant, deq, fixed, _ = parse(text).main.ops[:4]
    assert (op_flops(quant), op_bytes(quant)) == (40, 40 + 10)
    assert (op_flops(deq), op_bytes(deq)) == (20, 10 + 40)
    assert op_bytes(fixed) == 40 + 20  # 12 bits round up to 2 bytes


def test_fused_flops_sum_the_region_and_bytes_stay_at_the_boundary() -> None:
    text = """
kiln.module @f {
  kiln.func @forward(%x: tensor<8xf32>, %y: tensor<8xf32>) -> tensor<8xf32> {
    %r = kiln.fused(%x, %y) {kind = "elementwise", pattern = "add+relu+exp"} ({
    ^bb0(%a: tensor<8xf32>, %b: tensor<8xf32>):
      %s = kiln.add(%a, %b) : tensor<8xf32>
      %t = kiln.relu(%s) : tensor<8xf32>
      %u = kiln.exp(%t) : tensor<8xf32>
      kiln.yield %u
    }) : tensor<8xf32>
    kiln.return %r
  }
}
"""
    m = parse(text)
    fused = m.main.ops[0]
    assert op_flops(fused) == 3 * 8
    assert op_bytes(fused) == 3 * 8 * 4
    summary = module_summary(m)
    assert summary["flops_by_op"] == {"kiln.add": 8, "kiln.exp": 8, "kiln.relu": 8}
    assert summary["flops"] == 24 and summary["bytes"] == 96


def test_func_costs_and_summary() -> None:
    m = Module("t")
    func, b = new_function(m, "forward", [TensorType((1, 3), F32)])
    w = b.weight("fc.weight", np.ones((4, 3), np.float32))
    bias = b.weight("fc.bias", np.ones(4, np.float32))
    b.ret(b.add(Relu(), b.add(Linear(), func.args[0], w, bias)))
    costs = func_costs(func)
    assert [c.op.name for c in costs] == ["kiln.weight", "kiln.weight", "kiln.linear",
                                          "kiln.relu", "kiln.return"]
    assert [c.flops for c in costs] == [0, 0, 24, 4, 0]
    assert module_flops(m) == 28
    summary = module_summary(m)
    assert summary["params"] == 16 and summary["param_bytes"] == 64
    assert summary["flops_by_op"] == {"kiln.linear": 24, "kiln.relu": 4}


# -- against torch's counter -------------------------------------------------------------------
CONV_CASES = [
    # (input shape, weight shape, stride, padding, dilation, groups)
    ((2, 4, 9, 7), (6, 2, 3, 2), (2, 1), (1, 0), (1, 2), 2),
    ((1, 8, 17, 17), (8, 1, 3, 3), (1, 1), (1, 1), (1, 1), 8),
    ((1, 3, 5, 5), (16, 3, 1, 1), (1, 1), (0, 0), (1, 1), 1),
]


@pytest.mark.parametrize("case", CONV_CASES)
def test_conv2d_matches_torch_flop_counter(case: tuple) -> None:
    xs, ws, stride, pad, dil, groups = case
    kind = Conv2d(stride=stride, padding=(*pad, *pad), dilation=dil, groups=groups)
    op = one_op(lambda b, args: b.add(kind, args[0], ones(b, *ws)), xs)
    x, w = torch.randn(xs), torch.randn(ws)
    want = torch_flops(lambda: F.conv2d(x, w, stride=stride, padding=pad, dilation=dil,
                                        groups=groups))
    assert op_flops(op) == want


def test_conv_transpose_matches_torch_flop_counter() -> None:
    kind = ConvTranspose2d(stride=(2, 3), padding=(1, 0, 1, 0), groups=2)
    op = one_op(lambda b, args: b.add(kind, args[0], ones(b, 4, 3, 3, 2)), (2, 4, 5, 3))
    x, w = torch.randn(2, 4, 5, 3), torch.randn(4, 3, 3, 2)
    want = torch_flops(lambda: F.conv_transpose2d(x, w, stride=(2, 3), padding=(1, 0),
                                                  groups=2))
    assert op_flops(op) == want


PRODUCTS = (ConvBase, Linear, MatMul)


@pytest.mark.parametrize("name", list_models())
def test_bundled_model_product_flops_match_torch(name: str) -> None:
    model, inputs = get_model(name), example_inputs(name)
    want = torch_flops(lambda: model(*inputs))
    module = kiln.trace(model, inputs)
    got = sum(op_flops(op) for op in module.walk() if isinstance(op.kind, PRODUCTS))
    assert got == want
    summary = module_summary(module)
    assert int(summary["flops"]) >= got  # type: ignore[call-overload]
    params = sum(p.numel() for p in model.parameters())
    assert int(summary["params"]) >= params  # type: ignore[call-overload]  # BN stats count too


@pytest.mark.parametrize("pipeline", ["layout{to=nhwc}", "fuse", "layout{to=nhwc},fuse"])
def test_layout_and_fusion_keep_the_flop_count(pipeline: str) -> None:
    """NHWC twins cost what their NCHW ops cost; fused groups the sum of their regions."""
    model, inputs = get_model("resnet8"), example_inputs("resnet8")
    module = kiln.trace(model, inputs)
    before = module_summary(module)
    after = module_summary(kiln.run_passes(module, pipeline))
    assert after["flops"] == before["flops"]
    assert after["params"] == before["params"]

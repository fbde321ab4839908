"""The NHWC ops against PyTorch, and the layout pass: numerics (bit-identical to the NCHW module,
≤ 1e-6 relative where a linear absorbed a transpose), transposes left on the bundled conv nets,
the round trip back to NCHW, and bad options."""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import rel_error

from kiln.compiler.pass_manager import PassManager, run_passes
from kiln.errors import KilnError
from kiln.ir.builder import Builder, new_function
from kiln.ir.graph import Module, Value
from kiln.ir.interpret import interpret, sample_inputs
from kiln.ir.ops.base import OpError
from kiln.ir.ops.elementwise import Add, Hardsigmoid, Mul, Relu
from kiln.ir.ops.layout import (
    CHANNELS_LAST,
    AdaptiveAvgPool2dNhwc,
    AvgPool2dNhwc,
    Conv2dNhwc,
    MaxPool2dNhwc,
)
from kiln.ir.ops.nn_conv import Conv2d, ConvTranspose2d, Linear
from kiln.ir.ops.nn_norm import BatchNorm
from kiln.ir.ops.nn_pool import AdaptiveAvgPool2d, MaxPool2d
from kiln.ir.ops.reduce import ReduceMean
from kiln.ir.ops.shape import Concat, Flatten, Pad, Slice
from kiln.ir.parser import parse
from kiln.ir.types import TensorType


def nchw(t: torch.Tensor) -> torch.Tensor:
    return t.permute(0, 3, 1, 2)


def nhwc(t: torch.Tensor) -> torch.Tensor:
    return t.permute(0, 2, 3, 1).contiguous()


# -- the NHWC ops ----------------------------------------------------------------------------------
NHWC_CASES = [
    ("conv", Conv2dNhwc(stride=(2, 1), padding=(1, 0, 2, 1), dilation=(1, 2), groups=2),
     (2, 9, 8, 4), (3, 2, 2, 6), lambda x, w, b: F.conv2d(
         F.pad(nchw(x), (0, 1, 1, 2)), w.permute(3, 2, 0, 1), b, stride=(2, 1),
         dilation=(1, 2), groups=2)),
    ("conv-depthwise", Conv2dNhwc(padding=(1, 1, 1, 1), groups=5), (1, 6, 6, 5), (3, 3, 1, 5),
     lambda x, w, b: F.conv2d(nchw(x), w.permute(3, 2, 0, 1), b, padding=1, groups=5)),
    ("max_pool", MaxPool2dNhwc(kernel=(3, 3), stride=(2, 2), padding=(1, 1, 1, 1),
                               ceil_mode=True), (2, 8, 7, 3), None,
     lambda x: F.max_pool2d(nchw(x), 3, 2, 1, ceil_mode=True)),
    ("avg_pool", AvgPool2dNhwc(kernel=(2, 3), stride=(2, 2), padding=(1, 1, 1, 1),
                               count_include_pad=False), (1, 6, 7, 4), None,
     lambda x: F.avg_pool2d(nchw(x), (2, 3), 2, 1, count_include_pad=False)),
    ("adaptive_avg_pool", AdaptiveAvgPool2dNhwc(output_size=(2, 3)), (2, 5, 7, 3), None,
     lambda x: F.adaptive_avg_pool2d(nchw(x), (2, 3))),
]


@pytest.mark.parametrize(("op", "x_shape", "w_shape", "torch_fn"),
                         [c[1:] for c in NHWC_CASES], ids=[c[0] for c in NHWC_CASES])
def test_nhwc_ops_match_torch(op: Conv2dNhwc, x_shape: tuple[int, ...],
                              w_shape: tuple[int, ...] | None,
                              torch_fn: Callable[..., torch.Tensor],
                              rng: np.random.Generator) -> None:
    arrays = [rng.standard_normal(x_shape).astype(np.float32)]
    if w_shape is not None:
        arrays += [rng.standard_normal(w_shape).astype(np.float32),
                   rng.standard_normal(w_shape[-1]).astype(np.float32)]
    types = [TensorType(a.shape) for a in arrays]
    op.verify(types)
    (result_type,) = op.infer_type(types)
    (got,) = op.reference(*arrays)
    with torch.no_grad():
        want = nhwc(torch_fn(*(torch.from_numpy(a) for a in arrays))).numpy()
    assert result_type.shape == want.shape == got.shape and got.dtype == np.float32
    assert got.flags.c_contiguous
    assert rel_error(got, want) <= 1e-5


def test_nhwc_ops_mirror_their_nchw_op_field_for_field() -> None:
    for nchw_cls, twin in CHANNELS_LAST.items():
        fields = [(f.name, f.default) for f in dataclasses.fields(nchw_cls)]
        assert [(f.name, f.default) for f in dataclasses.fields(twin)] == fields
    pool = MaxPool2d(kernel=(2, 2), stride=(1, 1), ceil_mode=True)
    assert MaxPool2dNhwc.from_nchw(pool).nchw() == pool
    with pytest.raises(TypeError):
        Conv2dNhwc.from_nchw(pool)


def test_nhwc_ops_reject_bad_ranks_in_nhwc_terms() -> None:
    with pytest.raises(OpError, match=r"input must have rank 4 \(N, H, W, C\)"):
        MaxPool2dNhwc(kernel=(2, 2), stride=(2, 2)).infer_type([TensorType((1, 4, 4))])
    with pytest.raises(OpError, match=r"weight must have rank 4 \(kH, kW, Cin/groups, Cout\)"):
        Conv2dNhwc().infer_type([TensorType((1, 4, 4, 2)), TensorType((3, 2, 4))])
    with pytest.raises(OpError, match="input channels"):
        Conv2dNhwc().infer_type([TensorType((1, 4, 4, 2)), TensorType((1, 1, 3, 4))])


# -- the pass on small graphs ----------------------------------------------------------------------
Body = Callable[[Builder, Value, np.random.Generator], list[Value]]


def build(body: Body, shape: tuple[int, ...], rng: np.random.Generator) -> Module:
    module = Module("t")
    func, b = new_function(module, "forward", [TensorType(shape)], ["x"])
    b.ret(*body(b, func.args[0], rng))
    return module


def randn(rng: np.random.Generator, *shape: int) -> np.ndarray:
    return rng.standard_normal(shape).astype(np.float32)


def run_checked(module: Module, pipeline: str, tolerance: float = 0.0) -> Module:
    """Run `pipeline`; outputs stay within `tolerance` (0: bit-identical) on fresh inputs."""
    out = run_passes(module, pipeline)
    for seed in (11, 12):
        inputs = sample_inputs(module.main, seed)
        for got, want in zip(interpret(out, *inputs), interpret(module, *inputs)):
            assert rel_error(got, want) <= tolerance
    return out


def transposes(module: Module) -> int:
    return module.op_counts().get("kiln.transpose", 0)


def test_conv_chain_keeps_transposes_at_the_boundary_only(rng: np.random.Generator) -> None:
    def body(b: Builder, x: Value, rng: np.random.Generator) -> list[Value]:
        y = b.add(Conv2d(padding=(1, 1, 1, 1)), x, b.weight("w1", randn(rng, 4, 3, 3, 3)))
        y = b.add(MaxPool2d(kernel=(2, 2), stride=(2, 2)), b.add(Relu(), y))
        y = b.add(Conv2d(groups=4), y, b.weight("w2", randn(rng, 4, 1, 1, 1)),
                  b.weight("b2", randn(rng, 4)))
        return [b.add(Concat(axis=1), y, b.add(Relu(), y))]

    out = run_checked(build(body, (2, 3, 8, 8), rng), "layout")
    assert out.op_counts() == {"kiln.concat": 1, "kiln.conv2d_nhwc": 2, "kiln.max_pool2d_nhwc": 1,
                               "kiln.relu": 2, "kiln.return": 1, "kiln.transpose": 2,
                               "kiln.weight": 3}
    assert sorted(out.weights) == ["b2", "w1.hwio", "w2.hwio"]
    assert out.weights["w1.hwio"].shape == (3, 3, 3, 4)


def test_an_input_shared_by_two_convs_is_transposed_once(rng: np.random.Generator) -> None:
    def body(b: Builder, x: Value, rng: np.random.Generator) -> list[Value]:
        left = b.add(Conv2d(), x, b.weight("a", randn(rng, 2, 3, 1, 1)))
        right = b.add(Conv2d(), x, b.weight("b", randn(rng, 2, 3, 3, 3)))
        return [b.add(Add(), b.add(MaxPool2d(kernel=(3, 3), stride=(1, 1)), left), right)]

    out = run_checked(build(body, (1, 3, 6, 6), rng), "layout")
    assert transposes(out) == 2


def test_axis_ops_and_constants_follow_the_layout(rng: np.random.Generator) -> None:
    def body(b: Builder, x: Value, rng: np.random.Generator) -> list[Value]:
        y = b.add(Conv2d(), x, b.weight("w", randn(rng, 3, 3, 1, 1)))
        y = b.add(Add(), y, b.weight("shift", randn(rng, 3, 1, 1)))
        y = b.add(Mul(), y, b.constant(np.float32(0.5)))
        y = b.add(Pad(pads=(0, 1, 2, 0, 0, 0, 1, 3)), y)
        y = b.add(Slice(axes=(1, 3), starts=(1, 0), ends=(3, 6), steps=(1, 2)), y)
        return [b.add(ReduceMean(axes=(1, 2)), y), b.add(ReduceMean(axes=(2,), keepdims=True), y)]

    out = run_checked(build(body, (2, 3, 5, 4), rng), "layout")
    assert transposes(out) == 2  # the input, and the keepdims mean back to NCHW
    assert out.weights["shift.permuted"].shape == (1, 1, 1, 3)


def test_se_gate_and_global_pool_need_no_transpose(rng: np.random.Generator) -> None:
    """x * hardsigmoid(conv(gap(x))): the (N, 1, 1, C) gate broadcasts in NHWC as it did."""
    def body(b: Builder, x: Value, rng: np.random.Generator) -> list[Value]:
        y = b.add(Conv2d(), x, b.weight("w", randn(rng, 4, 4, 1, 1)))
        gate = b.add(Conv2d(), b.add(AdaptiveAvgPool2d(), y), b.weight("g", randn(rng, 4, 4, 1, 1)))
        gated = b.add(Mul(), y, b.add(Hardsigmoid(), gate))
        return [b.add(Flatten(), b.add(AdaptiveAvgPool2d(), gated))]

    out = run_checked(build(body, (1, 4, 6, 6), rng), "layout,canonicalize")
    assert transposes(out) == 1


def test_flatten_then_linear_absorbs_the_transpose(rng: np.random.Generator) -> None:
    def body(b: Builder, x: Value, rng: np.random.Generator) -> list[Value]:
        y = b.add(Conv2d(), x, b.weight("w", randn(rng, 4, 3, 1, 1)))
        flat = b.add(Flatten(), b.add(MaxPool2d(kernel=(2, 2), stride=(2, 2)), y))
        return [b.add(Linear(), flat, b.weight("fc", randn(rng, 5, 16)))]

    module = build(body, (2, 3, 4, 4), rng)
    out = run_checked(module, "layout", tolerance=1e-6)
    assert transposes(out) == 1 and "fc.permuted" in out.weights
    kept = run_checked(module, "canonicalize,layout{absorb-flatten=false}")
    assert transposes(kept) == 2 and "fc" in kept.weights


def test_a_rank_3_linear_input_is_not_absorbed(rng: np.random.Generator) -> None:
    def body(b: Builder, x: Value, rng: np.random.Generator) -> list[Value]:
        y = b.add(Conv2d(), x, b.weight("w", randn(rng, 4, 3, 1, 1)))
        flat = b.add(Flatten(start_dim=2), y)
        return [b.add(Linear(), flat, b.weight("fc", randn(rng, 5, 16)))]

    out = run_checked(build(body, (2, 3, 4, 4), rng), "layout")
    assert transposes(out) == 2 and "fc" in out.weights


def test_unconverted_ops_keep_nchw_between_transposes(rng: np.random.Generator) -> None:
    def body(b: Builder, x: Value, rng: np.random.Generator) -> list[Value]:
        y = b.add(Conv2d(), x, b.weight("w", randn(rng, 3, 3, 1, 1)))
        params = [b.weight(f"p{i}", rng.uniform(0.5, 1.5, 3).astype(np.float32))
                  for i in range(4)]
        y = b.add(BatchNorm(), y, *params)
        y = b.add(ConvTranspose2d(), y, b.weight("t", randn(rng, 3, 2, 2, 2)))
        return [b.add(Conv2d(), y, b.weight("w2", randn(rng, 2, 2, 1, 1)))]

    out = run_checked(build(body, (1, 3, 4, 4), rng), "layout")
    assert out.op_counts()["kiln.batch_norm"] == 1 and transposes(out) == 4


def test_elided_weights_get_transpose_ops(rng: np.random.Generator) -> None:
    def body(b: Builder, x: Value, rng: np.random.Generator) -> list[Value]:
        return [b.add(Conv2d(), x, b.weight("w", randn(rng, 3, 3, 1, 1)))]

    elided = parse(build(body, (1, 3, 4, 4), rng).to_text())
    out = run_passes(elided, "layout")
    assert transposes(out) == 3 and not out.weights


def test_nothing_to_convert_changes_nothing(rng: np.random.Generator) -> None:
    def body(b: Builder, x: Value, rng: np.random.Generator) -> list[Value]:
        return [b.add(Relu(), x)]

    module = build(body, (1, 3, 4, 4), rng)
    result = PassManager("layout{to=nchw},layout").run(module)
    assert [r.changed for r in result.records] == [False, False]


@pytest.mark.parametrize("pipeline", ["layout{to=nhwcc}", "layout{to=nchwc8}",
                                      "layout{absorb-flatten=maybe}"])
def test_bad_options_are_pipeline_errors(pipeline: str) -> None:
    with pytest.raises(KilnError, match="option"):
        PassManager(pipeline)


# -- the bundled conv nets -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def folded() -> Callable[[str], Module]:
    import kiln
    from kiln.models import example_inputs, get_model

    cache: dict[str, Module] = {}

    def get(name: str) -> Module:
        if name not in cache:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                traced = kiln.trace(get_model(name), example_inputs(name))
            cache[name] = run_passes(traced, "fold-batchnorm")
        return cache[name]

    return get


# name: transposes left by layout + canonicalize, and by layout{absorb-flatten=false}
MINIMAL = {"resnet8": (1, 1), "mobilenet_v2ish": (1, 1), "digits_cnn": (0, 1), "lenet5": (0, 1)}


@pytest.mark.parametrize("name", sorted(MINIMAL))
def test_bundled_conv_nets_keep_a_minimal_number_of_transposes(
        name: str, folded: Callable[[str], Module]) -> None:
    module = folded(name)
    out = run_checked(module, "layout,canonicalize", tolerance=1e-6)
    assert not {"kiln.conv2d", "kiln.max_pool2d", "kiln.adaptive_avg_pool2d"} & set(
        out.op_counts())
    with_absorb, without = MINIMAL[name]
    assert transposes(out) == with_absorb
    assert transposes(run_passes(module, "layout{absorb-flatten=false},canonicalize")) == without
    back = run_checked(out, "layout{to=nchw},canonicalize", tolerance=1e-6)
    assert transposes(back) == 0 and not any(n.endswith("_nhwc") for n in back.op_counts())

"""ONNX export: kiln → ONNX → onnxruntime, compared with kiln's interpreter (rel_error ≤ 1e-4),
for one-op modules built with the Builder (every float op of docs/ops.md) and for models that
came in through ONNX import; plus the errors for ops and weights that cannot be exported.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import rel_error

import kiln
from kiln.errors import KilnError
from kiln.frontend.onnx_export import export_onnx, to_onnx
from kiln.frontend.onnx_export_ops import RULES
from kiln.frontend.onnx_import import import_onnx
from kiln.ir.builder import Builder, new_function
from kiln.ir.graph import Module, Value, make_op
from kiln.ir.interpret import interpret, sample_inputs
from kiln.ir.location import Location
from kiln.ir.ops import core, nn_conv, nn_norm, nn_pool, reduce, shape
from kiln.ir.ops import elementwise as ew
from kiln.ir.ops.base import OpDef, all_ops
from kiln.ir.types import F32, I32, TensorType

ort = pytest.importorskip("onnxruntime")


def run_ort(model: onnx.ModelProto, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    feeds = {i.name: x for i, x in zip(sess.get_inputs(), inputs)}
    return list(sess.run(None, feeds))


def check_round_trip(module: Module, inputs: Sequence[np.ndarray] | None = None) -> None:
    inputs = list(inputs) if inputs is not None else sample_inputs(module.main, seed=0)
    want = interpret(module, *inputs)
    got = run_ort(to_onnx(module), inputs)
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.shape == w.shape and g.dtype == w.dtype
        assert rel_error(g, w) <= 1e-4


Body = Callable[[Builder, list[Value]], list[Value]]


@dataclass
class Case:
    id: str
    inputs: Sequence[tuple[int, ...]]
    body: Body
    positive: bool = False


def build(inputs: Sequence[tuple[int, ...]], body: Body) -> Module:
    module = Module("t")
    func, b = new_function(module, "forward", [TensorType(s, F32) for s in inputs],
                           [f"x{i}" for i in range(len(inputs))])
    b.ret(*body(b, list(func.args)))
    return module


R = np.random.default_rng(0)


def w(b: Builder, name: str, *shape: int, positive: bool = False) -> Value:
    array = R.standard_normal(shape).astype(np.float32)
    return b.weight(name, np.abs(array) + 0.5 if positive else array)


def one(kind: OpDef) -> Body:
    return lambda b, xs: [b.add(kind, *xs)]


X4 = [(2, 3, 8, 8)]
X2 = [(4, 6)]
UNARY = ["Neg", "Abs", "Sqrt", "Rsqrt", "Reciprocal", "Exp", "Log", "Erf", "Relu", "Relu6",
         "Sigmoid", "Tanh", "Silu", "Hardsigmoid", "Hardswish"]
CASES = [
    *[Case(name.lower(), [(3, 4), (4,)], one(getattr(ew, name)()))
      for name in ("Add", "Sub", "Mul", "Maximum", "Minimum")],
    Case("div", [(3, 4)], lambda b, xs: [b.add(ew.Div(), xs[0], w(b, "d", 4, positive=True))]),
    Case("pow", [(3, 4)], lambda b, xs: [b.add(ew.Pow(), xs[0],
                                               b.constant(np.asarray(2, np.float32)))],
         positive=True),
    *[Case(name.lower(), X2, one(getattr(ew, name)()),
           positive=name in ("Sqrt", "Rsqrt", "Log")) for name in UNARY],
    Case("leaky_relu", X2, one(ew.LeakyRelu(slope=0.2))),
    Case("gelu", X2, one(ew.Gelu())),
    Case("gelu_tanh", X2, one(ew.Gelu(approximate="tanh"))),
    Case("clamp", X2, one(ew.Clamp(min=-0.5, max=0.25))),
    Case("clamp_min", X2, one(ew.Clamp(min=0.1))),
    Case("clamp_max", X2, one(ew.Clamp(max=0.1))),
    Case("cast_round_trip", X2, lambda b, xs: [b.add(core.Cast(to=F32),
                                                     b.add(core.Cast(to=I32), xs[0]))]),
    Case("identity_dropout", X2, lambda b, xs: [b.add(shape.Dropout(p=0.1),
                                                      b.add(shape.Identity(), xs[0]))]),
    Case("conv2d", X4, lambda b, xs: [b.add(nn_conv.Conv2d(stride=(2, 1), padding=(1, 0, 2, 1),
                                                           dilation=(1, 2)),
                                            xs[0], w(b, "w", 4, 3, 3, 3), w(b, "b", 4))]),
    Case("conv2d_depthwise", X4, lambda b, xs: [b.add(nn_conv.Conv2d(groups=3, padding=(1,) * 4),
                                                      xs[0], w(b, "w", 3, 1, 3, 3))]),
    Case("conv1d", [(2, 3, 10)], lambda b, xs: [b.add(nn_conv.Conv1d(padding=(1, 1)), xs[0],
                                                      w(b, "w", 5, 3, 3), w(b, "b", 5))]),
    Case("conv_transpose2d", X4, lambda b, xs: [b.add(
        nn_conv.ConvTranspose2d(stride=(2, 2), padding=(1, 0, 1, 1), output_padding=(1, 0)),
        xs[0], w(b, "w", 3, 2, 3, 3), w(b, "b", 2))]),
    Case("linear_2d", X2, lambda b, xs: [b.add(nn_conv.Linear(), xs[0], w(b, "w", 5, 6),
                                               w(b, "b", 5))]),
    Case("linear_3d", [(2, 4, 6)], lambda b, xs: [b.add(nn_conv.Linear(), xs[0],
                                                        w(b, "w", 5, 6), w(b, "b", 5))]),
    Case("linear_3d_no_bias", [(2, 4, 6)], lambda b, xs: [b.add(nn_conv.Linear(), xs[0],
                                                                w(b, "w", 5, 6))]),
    Case("matmul", [(2, 3, 4), (4, 5)], one(nn_conv.MatMul())),
    Case("batch_norm", X4, lambda b, xs: [b.add(nn_norm.BatchNorm(eps=1e-3), xs[0],
                                                w(b, "s", 3), w(b, "b", 3), w(b, "m", 3),
                                                w(b, "v", 3, positive=True))]),
    Case("layer_norm", [(2, 5, 6)], lambda b, xs: [b.add(nn_norm.LayerNorm(normalized_ndim=2),
                                                         xs[0], w(b, "g", 5, 6),
                                                         w(b, "b", 5, 6))]),
    Case("layer_norm_plain", [(2, 5, 6)], one(nn_norm.LayerNorm())),
    Case("softmax", [(2, 3, 4)], one(nn_norm.Softmax(axis=1))),
    Case("log_softmax", [(2, 3, 4)], one(nn_norm.LogSoftmax())),
    Case("lrn", [(2, 6, 4, 4)], one(nn_norm.LocalResponseNorm(size=3, alpha=1e-2, k=2.0))),
    Case("max_pool2d", [(2, 3, 9, 9)], one(nn_pool.MaxPool2d(
        kernel=(3, 3), stride=(2, 2), padding=(1, 1, 1, 1), dilation=(1, 1)))),
    Case("max_pool2d_ceil", [(2, 3, 8, 8)], one(nn_pool.MaxPool2d(
        kernel=(3, 3), stride=(2, 2), padding=(0, 0, 0, 0), dilation=(1, 1), ceil_mode=True))),
    Case("max_pool1d", [(2, 3, 9)], one(nn_pool.MaxPool1d(
        kernel=(2,), stride=(2,), padding=(0, 0), dilation=(2,)))),
    Case("avg_pool2d", X4, one(nn_pool.AvgPool2d(kernel=(3, 3), stride=(1, 1),
                                                 padding=(1, 1, 1, 1)))),
    Case("avg_pool2d_no_pad", X4, one(nn_pool.AvgPool2d(
        kernel=(3, 3), stride=(2, 2), padding=(1, 1, 1, 1), count_include_pad=False))),
    Case("avg_pool1d", [(2, 3, 8)], one(nn_pool.AvgPool1d(kernel=(2,), stride=(2,),
                                                          padding=(0, 0)))),
    Case("adaptive_avg_pool2d_global", X4, one(nn_pool.AdaptiveAvgPool2d())),
    Case("adaptive_avg_pool2d_even", X4, one(nn_pool.AdaptiveAvgPool2d(output_size=(2, 4)))),
    Case("adaptive_avg_pool1d", [(2, 3, 8)], one(nn_pool.AdaptiveAvgPool1d())),
    Case("reshape", X4, one(shape.Reshape(shape=(6, 64)))),
    Case("flatten", X4, one(shape.Flatten(start_dim=1, end_dim=2))),
    Case("transpose", X4, one(shape.Transpose(perm=(0, 2, 3, 1)))),
    Case("concat", [(2, 3), (2, 5)], one(shape.Concat(axis=1))),
    Case("split", X2, lambda b, xs: list(b.create(shape.Split(axis=1, sizes=(2, 4)),
                                                  xs[0]).results)),
    Case("slice", X4, one(shape.Slice(axes=(1, 3), starts=(1, 0), ends=(3, 7), steps=(1, 3)))),
    Case("pad_constant", X4, one(shape.Pad(pads=(0, 0, 1, 2, 0, 1, 0, 3), value=1.5))),
    Case("pad_reflect", X4, one(shape.Pad(pads=(0, 0, 1, 2, 0, 0, 3, 1), mode="reflect"))),
    Case("pad_edge", X4, one(shape.Pad(pads=(0, 0, 1, 2, 0, 0, 3, 1), mode="edge"))),
    Case("squeeze", [(1, 3, 1)], one(shape.Squeeze(axes=(0, 2)))),
    Case("unsqueeze", X2, one(shape.Unsqueeze(axes=(0, 3)))),
    Case("expand", [(3, 1)], one(shape.Expand(shape=(2, 3, 4)))),
    *[Case(f"{cls.__name__.lower()}", X4, one(cls(axes=(1, 3), keepdims=keep)))
      for cls, keep in ((reduce.ReduceMean, True), (reduce.ReduceSum, False),
                        (reduce.ReduceMax, True), (reduce.ReduceMin, False))],
    Case("returns_input_twice", X2, lambda b, xs: [xs[0], xs[0]]),
    Case("returns_weight", X2, lambda b, xs: [b.add(ew.Add(), xs[0], w(b, "c", 6)),
                                              w(b, "c2", 6)]),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_builder_module_round_trips(case: Case) -> None:
    module = build(case.inputs, case.body)
    inputs = sample_inputs(module.main, seed=1)
    if case.positive:
        inputs = [np.abs(x) + 0.1 for x in inputs]
    check_round_trip(module, inputs)


def test_every_float_op_has_an_export_rule() -> None:
    """Each op of docs/ops.md's float families is exported (weight/constant/return by the
    driver; yield only lives in fused regions, which are not exported)."""
    families = {m.__name__ for m in (core, ew, nn_conv, nn_norm, nn_pool, reduce, shape)}
    driver = {"kiln.weight", "kiln.constant", "kiln.return", "kiln.yield"}
    float_ops = {name for name, cls in all_ops().items() if cls.__module__ in families}
    missing = float_ops - driver - {cls.NAME for cls in RULES}
    assert not missing, f"no ONNX export rule for {sorted(missing)}"


def test_imported_torch_model_round_trips(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    nn = torch.nn
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU6(),
                          nn.AvgPool2d(2), nn.Flatten(), nn.Linear(64, 10), nn.Softmax(1)).eval()
    path = tmp_path / "m.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(model, (torch.randn(1, 3, 8, 8),), str(path), dynamo=False)
    module = import_onnx(path)
    check_round_trip(module)
    out = tmp_path / "again.onnx"
    export_onnx(module, out)
    again = onnx.load(str(out))
    onnx.checker.check_model(again)
    assert {t.name for t in again.graph.initializer} >= set(module.weights)
    check_round_trip(import_onnx(out))


def test_backend_models_round_trip() -> None:
    data = Path(onnx.__file__).parent / "backend" / "test" / "data" / "pytorch-converted"
    for name in ("test_Conv2d_groups", "test_ConvTranspose2d", "test_PixelShuffle",
                 "test_GLU_dim", "test_MaxPool2d", "test_LogSoftmax", "test_PReLU_2d"):
        check_round_trip(import_onnx(data / name / "model.onnx"))


@dataclass(frozen=True)
class Mystery(OpDef):
    """An op kind no exporter knows (deliberately not registered)."""

    NAME = "kiln.mystery"
    OPERANDS = ("input",)

    def infer_type(self, operands: Sequence[TensorType]) -> tuple[TensorType, ...]:
        return (operands[0],)


def test_op_without_onnx_mapping_is_named_with_its_location() -> None:
    module = Module("m")
    func, b = new_function(module, "forward", [TensorType((2,), F32)], ["x"])
    op = b.insert(make_op(Mystery(), func.args, Location("net.py", 21, "block.mystery")))
    b.ret(op.result)
    with pytest.raises(KilnError) as info:
        to_onnx(module)
    text = str(info.value)
    assert "kiln.mystery" in text and "no ONNX mapping" in text
    assert "net.py:21 (block.mystery)" in text


def test_elided_weight_cannot_be_exported() -> None:
    module = build(X2, lambda b, xs: [b.add(ew.Add(), xs[0], w(b, "bias", 6))])
    module.weights.clear()
    with pytest.raises(KilnError, match="weight @bias has no data"):
        to_onnx(module)


def test_public_wrapper_writes_a_checked_file(tmp_path: Path) -> None:
    module = build(X2, one(ew.Relu()))
    kiln.export_onnx(module, tmp_path / "relu.onnx")
    model = onnx.load(str(tmp_path / "relu.onnx"))
    onnx.checker.check_model(model)
    assert model.opset_import[0].version == 17
    assert [n.op_type for n in model.graph.node] == ["Relu"]

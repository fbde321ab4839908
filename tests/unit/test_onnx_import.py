"""ONNX import: per-op-family graphs checked against onnxruntime, a torch-exported model checked
against torch, shape-subgraph folding, and every user-facing error.

Numerics: kiln's interpreter vs onnxruntime on random inputs, rel_error (max |Δ| / max |ref|)
≤ 1e-4.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from conftest import rel_error
from onnx import TensorProto, helper, numpy_helper

import kiln
from kiln.errors import ImportError_, KilnError, UnsupportedOpError
from kiln.frontend.onnx_import import import_onnx
from kiln.ir.graph import Module
from kiln.ir.interpret import interpret
from kiln.ir.ops.core import Weight
from kiln.ir.ops.nn_conv import Conv2d

ort = pytest.importorskip("onnxruntime")

F = TensorProto.FLOAT


def make_model(nodes: list[onnx.NodeProto], inputs: dict[str, np.ndarray],
               outputs: list[str], inits: Mapping[str, np.ndarray | np.generic] | None = None,
               opset: int = 17, shapes: dict[str, list[int | str]] | None = None
               ) -> onnx.ModelProto:
    """A model with typed inputs (shapes from the arrays unless given) and untyped outputs."""
    shapes = shapes or {}
    graph = helper.make_graph(
        nodes, "test",
        [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(a.dtype),
                                       shapes.get(n, list(a.shape)))
         for n, a in inputs.items()],
        [helper.make_empty_tensor_value_info(o) for o in outputs],
        initializer=[numpy_helper.from_array(np.asarray(a), n) for n, a in (inits or {}).items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 10
    return model


def run_ort(model: onnx.ModelProto, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return list(sess.run(None, inputs))


def check_against_ort(model: onnx.ModelProto, inputs: dict[str, np.ndarray]) -> Module:
    """Import, interpret, compare with onnxruntime."""
    module = import_onnx(model)
    got = interpret(module, *inputs.values())
    want = run_ort(model, inputs)
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.shape == w.shape and g.dtype == w.dtype
        assert rel_error(g, w) <= 1e-4
    return module


@dataclass
class Case:
    id: str
    nodes: list[onnx.NodeProto]
    inputs: Mapping[str, tuple[int, ...]]
    inits: Mapping[str, np.ndarray | np.generic] = field(default_factory=dict)
    opset: int = 17
    outputs: list[str] = field(default_factory=lambda: ["y"])
    positive: bool = False


def node(op: str, ins: list[str], outs: list[str] | None = None, **attrs: Any
         ) -> onnx.NodeProto:
    """A node named `<op>_node`, or `<op>_node<k>` when the name was already used."""
    name = f"{op.lower()}_node"
    if name in _USED:
        name += str(len(_USED))
    _USED.add(name)
    return helper.make_node(op, ins, outs or ["y"], name=name, **attrs)


_USED: set[str] = set()


R = np.random.default_rng(0)


def w(*shape: int) -> np.ndarray:
    return R.standard_normal(shape).astype(np.float32)


def i64(*values: int) -> np.ndarray:
    return np.asarray(values, dtype=np.int64)


X4 = {"x": (2, 3, 8, 8)}
X2 = {"x": (4, 6)}
ELEMENTWISE = [
    Case("add_broadcast", [node("Add", ["x", "b"])], {"x": (2, 3, 4), "b": (3, 1)}),
    Case("sub_const", [node("Sub", ["x", "c"])], X2, {"c": w(6)}),
    Case("mul", [node("Mul", ["x", "b"])], {"x": (2, 3), "b": (2, 3)}),
    Case("div", [node("Div", ["x", "c"])], X2, {"c": w(4, 1) + 3}),
    Case("pow_int_exponent", [node("Pow", ["x", "e"])], X2, {"e": np.asarray(2, np.int64)}),
    Case("max3", [node("Max", ["x", "b", "c"])], {"x": (3, 4), "b": (4,), "c": (3, 1)}),
    Case("min2", [node("Min", ["x", "b"])], {"x": (3, 4), "b": (3, 4)}),
    Case("sum3", [node("Sum", ["x", "b", "c"])], {"x": (3, 4), "b": (4,), "c": (3, 4)}),
    Case("mean3", [node("Mean", ["x", "b", "c"])], {"x": (3, 4), "b": (4,), "c": (3, 4)}),
    *[Case(op.lower(), [node(op, ["x"])], X2, positive=op in ("Sqrt", "Log"))
      for op in ("Neg", "Abs", "Sqrt", "Exp", "Log", "Erf", "Reciprocal", "Relu", "Sigmoid",
                 "Tanh", "HardSwish", "Softplus", "Softsign", "Elu", "Selu", "Celu")],
    Case("leaky_relu", [node("LeakyRelu", ["x"], alpha=0.2)], X2),
    Case("elu_alpha", [node("Elu", ["x"], alpha=0.5)], X2),
    Case("celu_alpha", [node("Celu", ["x"], alpha=2.0)], X2),
    Case("hardsigmoid_onnx", [node("HardSigmoid", ["x"])], X2),
    Case("hardsigmoid_torch", [node("HardSigmoid", ["x"], alpha=1 / 6, beta=0.5)], X2),
    Case("gelu", [node("Gelu", ["x"])], X2, opset=20),
    Case("gelu_tanh", [node("Gelu", ["x"], approximate="tanh")], X2, opset=20),
    Case("prelu", [node("PRelu", ["x", "s"])], X4, {"s": w(3, 1, 1)}),
    Case("clip_attr", [node("Clip", ["x"], min=-0.5, max=0.5)], X2, opset=9),
    Case("clip_inputs", [node("Clip", ["x", "lo", "hi"])], X2,
         {"lo": np.float32(-0.3), "hi": np.float32(0.7)}),
    Case("clip_max_only", [node("Clip", ["x", "", "hi"])], X2, {"hi": np.float32(0.1)}),
    Case("clip_runtime_bound", [node("Clip", ["x", "lo"])], {"x": (3, 4), "lo": ()}),
    Case("cast_int", [node("Cast", ["x"], ["c"], to=TensorProto.INT32),
                      node("Cast", ["c"], to=TensorProto.FLOAT)], X2),
    Case("identity_dropout", [node("Identity", ["x"], ["i"]),
                              node("Dropout", ["i", "r"], ["y", "mask"])], X2,
         {"r": np.float32(0.3)}, opset=13),
    Case("softmax_11_coerce", [node("Softmax", ["x"], axis=1)], {"x": (2, 3, 4)}, opset=11),
    Case("softmax_11_default", [node("Softmax", ["x"])], {"x": (2, 3, 4)}, opset=11),
    Case("logsoftmax_11_axis0", [node("LogSoftmax", ["x"], axis=0)], {"x": (2, 3)}, opset=11),
    Case("softmax_13", [node("Softmax", ["x"], axis=1)], {"x": (2, 3, 4)}),
    Case("logsoftmax_13", [node("LogSoftmax", ["x"])], {"x": (2, 3, 4)}),
]
LINEAR = [
    Case("gemm_linear", [node("Gemm", ["x", "w", "b"], transB=1)], X2,
         {"w": w(5, 6), "b": w(5)}),
    Case("gemm_full", [node("Gemm", ["a", "w", "c"], transA=1, alpha=0.5, beta=2.0)],
         {"a": (6, 4)}, {"w": w(6, 5), "c": w(4, 5)}),
    Case("gemm_beta_row", [node("Gemm", ["x", "w", "c"], beta=0.5)], X2,
         {"w": w(6, 5), "c": w(1, 5)}),
    Case("gemm_no_c", [node("Gemm", ["x", "w"])], X2, {"w": w(6, 3)}),
    Case("gemm_runtime_b", [node("Gemm", ["x", "b"], alpha=2.0)], {"x": (3, 4), "b": (4, 2)}),
    Case("matmul_batched", [node("MatMul", ["x", "b"])], {"x": (2, 3, 4), "b": (4, 5)}),
]
CONV = [
    Case("conv_pads_bias", [node("Conv", ["x", "w", "b"], pads=[1, 0, 1, 2])], X4,
         {"w": w(4, 3, 3, 3), "b": w(4)}),
    Case("conv_group_dilation_stride", [node("Conv", ["x", "w"], group=3, dilations=[2, 1],
                                             strides=[1, 2])], {"x": (1, 6, 9, 9)},
         {"w": w(6, 2, 3, 3)}),
    Case("conv_same_upper", [node("Conv", ["x", "w"], auto_pad="SAME_UPPER", strides=[2, 2])],
         X4, {"w": w(2, 3, 4, 4)}),
    Case("conv_same_lower", [node("Conv", ["x", "w"], auto_pad="SAME_LOWER")], X4,
         {"w": w(2, 3, 2, 2)}),
    Case("conv_valid", [node("Conv", ["x", "w"], auto_pad="VALID")], X4, {"w": w(2, 3, 3, 3)}),
    Case("conv1d", [node("Conv", ["x", "w", "b"], pads=[2, 1], strides=[2])], {"x": (2, 3, 11)},
         {"w": w(4, 3, 3), "b": w(4)}),
    Case("convtranspose", [node("ConvTranspose", ["x", "w", "b"], strides=[2, 2],
                                pads=[1, 1, 0, 1], output_padding=[1, 0])], X4,
         {"w": w(3, 2, 3, 3), "b": w(2)}),
    Case("convtranspose_group", [node("ConvTranspose", ["x", "w"], group=2, dilations=[2, 1])],
         {"x": (1, 4, 5, 5)}, {"w": w(4, 3, 2, 3)}),
    Case("convtranspose_1d", [node("ConvTranspose", ["x", "w"], strides=[3], pads=[1, 0])],
         {"x": (2, 3, 7)}, {"w": w(3, 2, 4)}),
    Case("convtranspose_output_shape", [node("ConvTranspose", ["x", "w"], strides=[2, 2],
                                             output_shape=[15, 16])], X4, {"w": w(3, 2, 3, 3)}),
    Case("convtranspose_same_upper", [node("ConvTranspose", ["x", "w"], strides=[2, 2],
                                           auto_pad="SAME_UPPER")], X4, {"w": w(3, 2, 4, 4)}),
]
POOL = [
    Case("maxpool_pads_ceil", [node("MaxPool", ["x"], kernel_shape=[3, 3], strides=[2, 2],
                                    pads=[1, 0, 1, 1], ceil_mode=1)], {"x": (2, 3, 10, 9)}),
    Case("maxpool_dilation", [node("MaxPool", ["x"], kernel_shape=[2, 2], dilations=[2, 2])],
         X4),
    Case("maxpool_same", [node("MaxPool", ["x"], kernel_shape=[3, 3], strides=[2, 2],
                               auto_pad="SAME_UPPER")], {"x": (1, 2, 7, 7)}),
    Case("maxpool1d", [node("MaxPool", ["x"], kernel_shape=[3], strides=[2])], {"x": (2, 3, 9)}),
    Case("avgpool_exclude_pad", [node("AveragePool", ["x"], kernel_shape=[3, 3],
                                      pads=[1, 1, 1, 1])], X4),
    Case("avgpool_include_pad", [node("AveragePool", ["x"], kernel_shape=[3, 3],
                                      pads=[1, 1, 1, 1], count_include_pad=1)], X4),
    Case("avgpool_ceil", [node("AveragePool", ["x"], kernel_shape=[2, 2], strides=[2, 2],
                               ceil_mode=1)], {"x": (1, 2, 7, 7)}),
    Case("avgpool1d", [node("AveragePool", ["x"], kernel_shape=[2], strides=[2])],
         {"x": (2, 3, 8)}),
    Case("global_avg", [node("GlobalAveragePool", ["x"])], X4),
    Case("global_max", [node("GlobalMaxPool", ["x"])], X4),
]
NORM = [
    Case("batchnorm", [node("BatchNormalization", ["x", "s", "b", "m", "v"], epsilon=1e-3)],
         X4, {"s": w(3), "b": w(3), "m": w(3), "v": np.abs(w(3)) + 0.5}, opset=15),
    Case("layernorm", [node("LayerNormalization", ["x", "s", "b"])], {"x": (2, 5, 6)},
         {"s": w(6), "b": w(6)}),
    Case("layernorm_axis", [node("LayerNormalization", ["x", "s"], axis=-2, epsilon=1e-3)],
         {"x": (2, 5, 6)}, {"s": w(5, 6)}),
    Case("instancenorm", [node("InstanceNormalization", ["x", "s", "b"])], X4,
         {"s": w(3), "b": w(3)}),
    Case("lrn_odd", [node("LRN", ["x"], size=3, alpha=1e-2, beta=0.6, bias=2.0)],
         {"x": (2, 6, 4, 4)}),
]
SHAPE = [
    Case("reshape_zero_minus1", [node("Reshape", ["x", "s"])], X4, {"s": i64(0, -1, 4)}),
    Case("flatten_axis2", [node("Flatten", ["x"], axis=2)], X4),
    Case("flatten_axis0", [node("Flatten", ["x"], axis=0)], X4),
    Case("flatten_default", [node("Flatten", ["x"])], X4),
    Case("transpose", [node("Transpose", ["x"], perm=[0, 2, 3, 1])], X4),
    Case("transpose_default", [node("Transpose", ["x"])], {"x": (2, 3, 4)}),
    Case("concat_neg_axis", [node("Concat", ["x", "b", "c"], axis=-1)],
         {"x": (2, 3), "b": (2, 4)}, {"c": w(2, 2)}),
    Case("split_attr", [node("Split", ["x"], ["y", "z"], axis=1, split=[2, 4])], X2, opset=11,
         outputs=["y", "z"]),
    Case("split_input", [node("Split", ["x", "s"], ["y", "z"], axis=-1)], X2, {"s": i64(1, 5)},
         outputs=["y", "z"]),
    Case("split_equal", [node("Split", ["x"], ["y", "z", "u"], axis=1)], X2,
         outputs=["y", "z", "u"]),
    Case("split_num_outputs", [node("Split", ["x"], ["y", "z"], axis=0, num_outputs=2)],
         {"x": (5, 2)}, opset=18, outputs=["y", "z"]),
    Case("slice_attr", [node("Slice", ["x"], starts=[1, -3], ends=[100, -1], axes=[1, 3])],
         X4, opset=9),
    Case("slice_input", [node("Slice", ["x", "s", "e", "a", "t"])], X4,
         {"s": i64(-100, 1), "e": i64(2**62, -2), "a": i64(-1, 1), "t": i64(2, 1)}),
    Case("slice_no_axes", [node("Slice", ["x", "s", "e"])], {"x": (5, 6)},
         {"s": i64(1, 2), "e": i64(4, 6)}),
    Case("pad_constant", [node("Pad", ["x", "p", "v"])], X4,
         {"p": i64(0, 0, 1, 2, 0, 1, 0, 3), "v": np.float32(1.5)}),
    Case("pad_reflect", [node("Pad", ["x", "p"], mode="reflect")], X4,
         {"p": i64(0, 0, 2, 1, 0, 0, 1, 2)}),
    Case("pad_edge", [node("Pad", ["x", "p"], mode="edge")], X4,
         {"p": i64(0, 0, 2, 1, 0, 0, 1, 2)}),
    Case("pad_attr", [node("Pad", ["x"], pads=[0, 1, 0, 2], value=-1.0)], X2, opset=9),
    Case("pad_axes", [node("Pad", ["x", "p", "", "a"])], X4, {"p": i64(1, 2, 3, 0),
                                                             "a": i64(-1, 2)}, opset=18),
    Case("squeeze_attr", [node("Squeeze", ["x"], axes=[0, -1])], {"x": (1, 3, 1)}, opset=11),
    Case("squeeze_all", [node("Squeeze", ["x"])], {"x": (1, 3, 1, 2)}),
    Case("unsqueeze_input", [node("Unsqueeze", ["x", "a"])], X2, {"a": i64(0, -1)}),
    Case("unsqueeze_attr", [node("Unsqueeze", ["x"], axes=[1])], X2, opset=11),
    Case("expand", [node("Expand", ["x", "s"])], {"x": (3, 1)}, {"s": i64(2, 1, 4)}),
    Case("tile", [node("Tile", ["x", "r"])], {"x": (2, 3)}, {"r": i64(2, 3)}),
    Case("gather_scalar_index", [node("Gather", ["x", "i"], axis=1)], X4,
         {"i": np.asarray(-1, np.int64)}),
    Case("gather_range", [node("Gather", ["x", "i"])], X2, {"i": i64(1, 2, 3)}),
]
REDUCE = [
    Case("reduce_mean_attr", [node("ReduceMean", ["x"], axes=[1, -1])], X4, opset=13),
    Case("reduce_mean_input", [node("ReduceMean", ["x", "a"], keepdims=0)], X4,
         {"a": i64(2)}, opset=18),
    Case("reduce_sum_13", [node("ReduceSum", ["x", "a"])], X4, {"a": i64(0, 2)}, opset=13),
    Case("reduce_sum_all", [node("ReduceSum", ["x"], keepdims=0)], X4, opset=13),
    Case("reduce_noop", [node("ReduceSum", ["x"], noop_with_empty_axes=1)], X2, opset=13),
    Case("reduce_max", [node("ReduceMax", ["x"], axes=[3], keepdims=0)], X4, opset=13),
    Case("reduce_min", [node("ReduceMin", ["x", "a"])], X4, {"a": i64(1)}, opset=18),
    Case("reduce_l2", [node("ReduceL2", ["x"], axes=[1])], X4, opset=13),
    Case("reduce_l1", [node("ReduceL1", ["x"], axes=[1])], X4, opset=13),
    Case("reduce_sumsquare", [node("ReduceSumSquare", ["x"], axes=[1])], X4, opset=13),
]
CONSTANTS = [
    Case("constant_value", [node("Constant", [], ["c"], value=numpy_helper.from_array(w(6))),
                            node("Add", ["x", "c"])], X2),
    Case("constant_value_float", [node("Constant", [], ["c"], value_float=2.5),
                                  node("Mul", ["x", "c"])], X2),
    Case("constant_value_floats", [node("Constant", [], ["c"], value_floats=[1.0, 2.0]),
                                   node("Mul", ["x", "c"])], {"x": (3, 2)}),
    Case("constant_value_ints", [node("Constant", [], ["s"], value_ints=[3, -1]),
                                 node("Reshape", ["x", "s"])], X2),
    Case("constant_of_shape", [node("Shape", ["x"], ["s"]),
                               node("ConstantOfShape", ["s"], ["c"],
                                    value=numpy_helper.from_array(np.ones(1, np.float32))),
                               node("Add", ["x", "c"])], X2),
]


def _random_inputs(case: Case) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    out = {}
    for name, shape in case.inputs.items():
        x = rng.standard_normal(shape).astype(np.float32)
        out[name] = np.abs(x) + 0.1 if case.positive else x
    return out


@pytest.mark.parametrize("case", ELEMENTWISE + LINEAR + CONV + POOL + NORM + SHAPE + REDUCE
                         + CONSTANTS, ids=lambda c: c.id)
def test_op_matches_onnxruntime(case: Case) -> None:
    inputs = _random_inputs(case)
    model = make_model(case.nodes, inputs, case.outputs, case.inits, case.opset)
    check_against_ort(model, inputs)


def test_lrn_even_size_follows_the_onnx_spec() -> None:
    """onnxruntime rejects even LRN sizes (and onnx.reference loops over the batch instead of
    the channels), so compare with the spec's formula: channels [c - 1, c + 2] for size 4."""
    x = np.random.default_rng(4).standard_normal((2, 6, 3, 3)).astype(np.float32)
    model = make_model([node("LRN", ["x"], size=4, alpha=1e-2, beta=0.7, bias=1.5)], {"x": x},
                       ["y"])
    (got,) = interpret(import_onnx(model), x)
    square = np.zeros_like(x, dtype=np.float64)
    for c in range(6):
        square[:, c] = np.sum(x[:, max(0, c - 1):c + 3].astype(np.float64) ** 2, axis=1)
    want = x / (1.5 + 1e-2 / 4 * square) ** 0.7
    assert rel_error(got, want) <= 1e-5


def test_shape_subgraph_is_folded_at_import() -> None:
    """Shape → Gather → Unsqueeze → Concat → Reshape: only the reshape survives."""
    x = np.random.default_rng(2).standard_normal((2, 3, 4, 5)).astype(np.float32)
    nodes = [node("Shape", ["x"], ["s"]), node("Gather", ["s", "zero"], ["n"], axis=0),
             node("Unsqueeze", ["n", "ax"], ["n1"]), node("Concat", ["n1", "m1"], ["t"], axis=0),
             node("Reshape", ["x", "t"], ["r"]),
             node("Shape", ["r"], ["rs"]), node("Slice", ["rs", "one", "two"], ["last"]),
             node("Equal", ["last", "sixty"], ["eq"]),
             node("Where", ["eq", "t", "m1m1"], ["t2"]),
             node("Cast", ["t2"], ["t3"], to=TensorProto.INT64),
             node("Reshape", ["r", "t3"], ["y"])]
    inits = {"zero": np.asarray(0, np.int64), "ax": i64(0), "m1": i64(-1), "one": i64(1),
             "two": i64(2), "sixty": i64(60), "m1m1": i64(-1, 1)}
    model = make_model(nodes, {"x": x}, ["y"], inits)
    module = check_against_ort(model, {"x": x})
    assert set(module.op_counts()) == {"kiln.reshape", "kiln.return"}
    assert module.main.outputs[0].type.shape == (2, 60)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_torch_model_exported_by_torch(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    nn = torch.nn
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 8, 3, groups=2, padding=1), nn.Hardswish(), nn.AdaptiveAvgPool2d(1),
        nn.Flatten(), nn.Linear(8, 16), nn.LayerNorm(16), nn.GELU(), nn.Linear(16, 4),
        nn.LogSoftmax(dim=1)).eval()
    with torch.no_grad():
        model[1].running_mean.uniform_(-1, 1)
        model[1].running_var.uniform_(0.5, 2)
    x = torch.randn(2, 3, 16, 16)
    path = tmp_path / "net.onnx"
    torch.onnx.export(model, (x,), str(path), dynamo=False, opset_version=17,
                      input_names=["image"], output_names=["logits"])
    module = kiln.import_onnx(path)
    with torch.no_grad():
        want = model(x).numpy()
    (got,) = interpret(module, x.numpy())
    assert rel_error(got, want) <= 1e-4
    assert module.main.args[0].name == "image"
    conv = module.ops_of(Conv2d)[0]
    assert conv.loc.file == "net.onnx" and conv.loc.line is None
    assert conv.loc.scope  # the ONNX node name


@pytest.mark.filterwarnings("ignore")
def test_attention_block_exported_by_dynamo(tmp_path: Path) -> None:
    """torch's default (torch.export + onnxscript) exporter: LayerNorm, Split, MatMul, Gelu."""
    import torch
    from torch import nn

    pytest.importorskip("onnxscript")

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.norm, self.qkv, self.out = nn.LayerNorm(16), nn.Linear(16, 48), nn.Linear(16, 16)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            q, k, v = self.qkv(self.norm(x)).chunk(3, dim=-1)
            attn = torch.softmax(q @ k.transpose(-1, -2) / 4.0, dim=-1)
            return x + self.out(nn.functional.gelu(attn @ v))

    torch.manual_seed(0)
    model, x = Block().eval(), torch.randn(2, 5, 16)
    path = tmp_path / "block.onnx"
    torch.onnx.export(model, (x,), str(path), dynamo=True)
    (got,) = interpret(kiln.import_onnx(path), x.numpy())
    with torch.no_grad():
        assert rel_error(got, model(x).numpy()) <= 1e-4


def test_initializer_listed_as_graph_input_is_a_weight() -> None:
    """Old exporters list initializers among the graph inputs: they stay weights."""
    x = np.ones((2, 6), np.float32)
    model = make_model([node("Gemm", ["x", "fc.weight"], transB=1)],
                       {"x": x, "fc.weight": w(3, 6)}, ["y"], {"fc.weight": w(3, 6)})
    module = import_onnx(model)
    assert len(module.main.args) == 1
    assert "fc.weight" in module.weights
    assert module.op_counts()["kiln.weight"] == 1


def test_names_constants_and_locations(tmp_path: Path) -> None:
    x = np.ones((2, 6), np.float32)
    model = make_model([helper.make_node("Add", ["x", "big"], ["sum"], name="add_node"),
                        helper.make_node("Constant", [], ["small"], value_floats=[2.0]),
                        helper.make_node("Mul", ["sum", "small"], ["y"])],
                       {"x": x}, ["y"], {"big": w(6)})
    path = tmp_path / "tiny.onnx"
    onnx.save(model, str(path))
    module = import_onnx(path)
    ops = {op.name: op for op in module.main.ops}
    assert isinstance(ops["kiln.weight"].kind, Weight) and ops["kiln.weight"].kind.name == "big"
    assert ops["kiln.constant"].result.type.shape == (1,)
    assert ops["kiln.add"].result.name == "sum"
    assert ops["kiln.add"].loc.scope == "add_node" and ops["kiln.add"].loc.file == "tiny.onnx"
    assert ops["kiln.mul"].loc.scope == "Mul"  # unnamed node: its op type


def test_symbolic_batch_needs_input_shapes() -> None:
    x = np.ones((2, 6), np.float32)
    model = make_model([node("Relu", ["x"])], {"x": x}, ["y"], shapes={"x": ["batch", 6]})
    with pytest.raises(KilnError, match="input_shapes") as info:
        import_onnx(model)
    assert "batch" in str(info.value)
    module = import_onnx(model, input_shapes={"x": (5, 6)})
    assert module.main.args[0].type.shape == (5, 6)
    with pytest.raises(KilnError, match="not inputs"):
        import_onnx(model, input_shapes={"nope": (1,)})


def test_two_unsupported_ops_are_listed_together() -> None:
    x = np.ones((4,), np.float32)
    model = make_model([node("TopK", ["x", "k"], ["v", "i"]),
                        helper.make_node("Relu", ["v"], ["r"]),
                        helper.make_node("Frobnicate", ["r"], ["y"], name="frob",
                                         domain="com.example")],
                       {"x": x}, ["y"], {"k": i64(2)})
    with pytest.raises(UnsupportedOpError) as info:
        import_onnx(model)
    text = str(info.value)
    assert "TopK (node 'topk_node', domain 'ai.onnx')" in text
    assert "Frobnicate (node 'frob', domain 'com.example')" in text
    assert "2 node(s)" in text and "hint:" in text


def test_unsupported_form_of_a_supported_op() -> None:
    model = make_model([node("Slice", ["x", "s", "e", "a", "t"])], {"x": np.ones((5,), "f4")},
                       ["y"], {"s": i64(4), "e": i64(0), "a": i64(0), "t": i64(-1)})
    with pytest.raises(UnsupportedOpError, match="negative slice steps"):
        import_onnx(model)


def _good_bytes() -> bytes:
    model = make_model([node("Relu", ["x"])], {"x": np.ones((2, 6), np.float32)}, ["y"],
                       {"unused": w(64)})
    return model.SerializeToString()


@pytest.mark.parametrize("data,reason", [
    (b"", "empty"),
    (b"\x00\xffthis is not an onnx model\xff" * 7, "not a valid ONNX model"),
    (b"hello world", "not a valid ONNX model"),
    (_good_bytes()[:-200], "not a valid ONNX model"),
], ids=["empty", "garbage", "text", "truncated"])
def test_bad_files_raise_import_error(tmp_path: Path, data: bytes, reason: str) -> None:
    path = tmp_path / "bad.onnx"
    path.write_bytes(data)
    for source in (path, str(path), data):
        with pytest.raises(ImportError_, match=reason) as info:
            import_onnx(source)
        assert "Traceback" not in str(info.value)


def test_missing_file() -> None:
    with pytest.raises(KilnError, match="does not exist"):
        import_onnx("/nonexistent/model.onnx")
    with pytest.raises(KilnError, match="takes a path"):
        import_onnx(42)  # type: ignore[arg-type]


def test_undefined_input_name() -> None:
    model = make_model([node("Add", ["x", "ghost"])], {"x": np.ones(3, np.float32)}, ["y"])
    with pytest.raises(ImportError_, match="uses 'ghost'"):
        import_onnx(model)


def test_cycle() -> None:
    model = make_model([node("Add", ["x", "b"], ["a"]), node("Relu", ["a"], ["b"]),
                        node("Relu", ["a"])], {"x": np.ones(3, np.float32)}, ["y"])
    with pytest.raises(ImportError_, match="cycle"):
        import_onnx(model)


def test_nodes_out_of_order_are_sorted() -> None:
    x = np.random.default_rng(3).standard_normal((3,)).astype(np.float32)
    model = make_model([node("Relu", ["a"]), node("Neg", ["x"], ["a"])], {"x": x}, ["y"])
    (got,) = interpret(import_onnx(model), x)
    np.testing.assert_array_equal(got, np.maximum(-x, 0))

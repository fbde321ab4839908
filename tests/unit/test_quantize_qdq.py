"""QDQ interop: onnxruntime QDQ models in, kiln's quantized modules out, PyTorch fake-quant in.

Tolerances: onnxruntime requantizes in float (round half to even) where kiln uses a fixed-point
multiplier (ties toward +inf), so each integer op agrees with onnxruntime to within 1 LSB of its
output scale; a 1-LSB difference inside a model can grow by the next layers, so whole models
are checked to 2 LSB of the output scale with identical predictions. Kiln-internal paths (import
and fold, export and re-import) are bit-exact.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import qnn_numpy

import kiln
import kiln.passes.quantize
from kiln.ir import fixed, requant
from kiln.ir.builder import new_function
from kiln.ir.graph import Module
from kiln.ir.interpret import interpret
from kiln.ir.ops import qnn, qnn_pool
from kiln.ir.ops.base import OpDef
from kiln.ir.ops.core import Weight
from kiln.ir.ops.quant import Dequantize, Quantize
from kiln.ir.types import I8, I32, U8, QuantType, TensorType
from kiln.passes.quantize import INTEGER_OPS

ort = pytest.importorskip("onnxruntime")
torch = pytest.importorskip("torch")
quantization = pytest.importorskip("onnxruntime.quantization")
from kiln.models import get_model, load_digits_data  # noqa: E402

BATCH = 50
LEVELS = ("ORT_DISABLE_ALL", "ORT_ENABLE_ALL")


def session(path: Path, level: str) -> object:
    options = ort.SessionOptions()
    options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def output_scale(module: Module) -> float:
    dq = module.main.outputs[0].producer
    assert dq is not None and isinstance(dq.kind, Dequantize)
    q = dq.operands[0].type.dtype
    assert isinstance(q, QuantType)
    return q.scale[0]


@pytest.fixture(scope="module")
def digits() -> dict[str, np.ndarray]:
    x_train, _ = load_digits_data("train")
    x_test, y_test = load_digits_data("test")
    return {"calib": x_train[:200], "x": x_test, "y": y_test}


@pytest.fixture(scope="module")
def float_cnn(digits: dict[str, np.ndarray]) -> Module:
    module = kiln.trace(get_model("digits_cnn"), (torch.from_numpy(digits["x"][:BATCH]),))
    return kiln.run_passes(module, "fold-batchnorm,dce")


@pytest.fixture(scope="module")
def ort_qdq_model(float_cnn: Module, digits: dict[str, np.ndarray],
                  tmp_path_factory: pytest.TempPathFactory) -> Path:
    """digits_cnn quantized by onnxruntime's quantize_static (QDQ, per channel, uint8)."""
    folder = tmp_path_factory.mktemp("ort_qdq")
    kiln.export_onnx(float_cnn, folder / "float.onnx")
    batches = iter([{"x": digits["calib"][i:i + BATCH]} for i in range(0, 200, BATCH)])

    class Reader(quantization.CalibrationDataReader):
        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(batches, None)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quantization.quantize_static(
            str(folder / "float.onnx"), str(folder / "qdq.onnx"), Reader(),
            quant_format=quantization.QuantFormat.QDQ, per_channel=True,
            activation_type=quantization.QuantType.QUInt8,
            weight_type=quantization.QuantType.QInt8)
    return folder / "qdq.onnx"


# -- onnxruntime QDQ → kiln --------------------------------------------------------------------
def test_ort_qdq_model_imports_as_typed_quantized_tensors(ort_qdq_model: Path,
                                                          digits: dict[str, np.ndarray]) -> None:
    imported = kiln.import_onnx(ort_qdq_model)
    counts = imported.op_counts()
    assert counts["kiln.quantize"] >= 5 and counts["kiln.dequantize"] >= 5
    weights = [op for op in imported.ops_of(Weight) if isinstance(op.kind.type.dtype, QuantType)]
    assert {op.kind.type.dtype.storage for op in weights} == {I8, I32}  # type: ignore[union-attr]
    x = digits["x"][:BATCH]
    want = session(ort_qdq_model, "ORT_DISABLE_ALL").run(None, {"x": x})[0]
    np.testing.assert_allclose(interpret(imported, x)[0], want, rtol=0, atol=1e-6)


@pytest.mark.parametrize("level", LEVELS)
def test_ort_qdq_model_folds_into_integer_ops(ort_qdq_model: Path, level: str,
                                              digits: dict[str, np.ndarray]) -> None:
    folded = kiln.run_passes(kiln.import_onnx(ort_qdq_model), "quantize")  # no data needed
    counts = folded.op_counts()
    assert counts["kiln.qconv2d"] == 2 and counts["kiln.qlinear"] == 1
    assert not {"kiln.conv2d", "kiln.linear"} & set(counts)
    sess, scale = session(ort_qdq_model, level), output_scale(folded)
    for i in range(0, len(digits["x"]), BATCH):
        x = digits["x"][i:i + BATCH]
        got, want = interpret(folded, x)[0], sess.run(None, {"x": x})[0]
        assert np.abs(got - want).max() <= 2 * scale + 1e-6
        assert (got.argmax(1) == want.argmax(1)).all()
    assert qnn_numpy_checked(folded, digits["x"][:BATCH]) == 3


def qnn_numpy_checked(module: Module, *inputs: np.ndarray) -> int:
    mine = qnn_numpy.run_integer_model(module, *inputs)
    mine_outs = [mine[v] for v in module.main.outputs]
    for got, want in zip(interpret(module, *inputs), mine_outs):
        np.testing.assert_array_equal(got, want)
    return sum(isinstance(op.kind, INTEGER_OPS) for op in module.main.ops)


# -- kiln → ONNX QDQ ---------------------------------------------------------------------------
def single_op(kind: OpDef, specs: list[tuple[TensorType, np.ndarray | None]]) -> Module:
    """float inputs → quantize → one integer op → dequantize; constants become q weights.
    The op's multipliers must agree with the types: the ONNX form recomputes them from scales."""
    module = Module("single")
    floats = [TensorType(t.shape) for t, a in specs if a is None]
    func, b = new_function(module, "forward", floats, [f"x{i}" for i in range(len(floats))])
    args = iter(func.args)
    operands = []
    for i, (t, array) in enumerate(specs):
        if array is None:
            operands.append(b.add(Quantize(to=t.dtype), next(args)))
        else:
            name = module.add_weight(f"c{i}", array)
            operands.append(b.add(Weight(name=name, type=t)))
    b.ret(b.add(Dequantize(), b.add(kind, *operands)))
    return module


def _q(scale: float, zp: int, storage: object = U8) -> QuantType:
    return QuantType(storage, (scale,), (zp,))  # type: ignore[arg-type]


def single_op_cases(rng: np.random.Generator) -> list[Module]:
    qx, qo = _q(0.02, 120), _q(0.05, 3)
    w = QuantType(I8, (0.01, 0.02, 0.015), (0, 0, 0), 0)
    wconv = rng.integers(-127, 128, (3, 2, 3, 3)).astype(np.int8)
    wlin = rng.integers(-127, 128, (3, 6)).astype(np.int8)
    bias = rng.integers(-300, 300, 3).astype(np.int32)
    mult, shift = requant.quantize_multipliers([0.02 * s / 0.05 for s in w.scale])
    req = {"to": qo, "multiplier": mult, "shift": shift}
    (ma, mb, mo), (ea, eb, eo) = requant.quantize_multipliers([0.4, 0.5, 0.05 / (2**20 * 0.05)])
    (mm,), (sm,) = requant.quantize_multipliers([0.02 * 0.03 / 0.05])
    return [
        single_op(qnn.QConv2d(padding=(1, 1, 1, 1), clamp_min=3, **req),  # type: ignore[arg-type]
                  [(TensorType((2, 2, 5, 5), qx), None), (TensorType((3, 2, 3, 3), w), wconv),
                   (TensorType((3,), I32), bias)]),
        single_op(qnn.QLinear(**req),  # type: ignore[arg-type]
                  [(TensorType((4, 6), qx), None), (TensorType((3, 6), w), wlin),
                   (TensorType((3,), I32), bias)]),
        single_op(qnn.QMatMul(to=qo, multiplier=(mm,), shift=(sm,)),
                  [(TensorType((2, 4, 6), qx), None), (TensorType((2, 6, 3), _q(0.03, 2, I8)),
                                                       None)]),
        single_op(qnn.QAdd(to=qo, multiplier=(mo,), shift=(eo,), lhs_multiplier=ma,
                           lhs_shift=ea, rhs_multiplier=mb, rhs_shift=eb, clamp_max=200),
                  [(TensorType((3, 5), qx), None), (TensorType((3, 5), _q(0.025, 9)), None)]),
        single_op(qnn_pool.QAvgPool2d(kernel=(3, 3), stride=(2, 2), padding=(1, 1, 1, 1)),
                  [(TensorType((1, 2, 6, 6), qx), None)]),
        single_op(qnn_pool.QReduceMean(axes=(2, 3), keepdims=True),
                  [(TensorType((2, 3, 4, 4), qx), None)]),
    ]


@pytest.mark.parametrize("level", LEVELS)
def test_each_integer_op_matches_onnxruntime_within_one_lsb(level: str, tmp_path: Path,
                                                            rng: np.random.Generator) -> None:
    for i, module in enumerate(single_op_cases(rng)):
        path = tmp_path / f"op{i}.onnx"
        kiln.export_onnx(module, path)
        sess = session(path, level)
        inputs = [rng.uniform(-2.0, 3.0, a.type.shape).astype(np.float32)
                  for a in module.main.args]
        got = interpret(module, *inputs)[0]
        want = sess.run(None, {f"x{k}": x for k, x in enumerate(inputs)})[0]
        lsb = output_scale(module)
        assert np.abs(got - want).max() <= lsb * 1.0001, module.main.ops[-3].name


@pytest.mark.parametrize("level", LEVELS)
def test_quantized_model_exports_to_qdq(float_cnn: Module, digits: dict[str, np.ndarray],
                                        level: str, tmp_path: Path) -> None:
    quantized = kiln.run_passes(float_cnn, "quantize", calibration_data=digits["calib"])
    kiln.export_onnx(quantized, tmp_path / "kiln_qdq.onnx")
    sess, scale = session(tmp_path / "kiln_qdq.onnx", level), output_scale(quantized)
    for i in range(0, len(digits["x"]), BATCH):
        x = digits["x"][i:i + BATCH]
        got, want = interpret(quantized, x)[0], sess.run(None, {"x": x})[0]
        assert np.abs(got - want).max() <= 2 * scale + 1e-6
        assert (got.argmax(1) == want.argmax(1)).all()


def test_export_then_import_and_fold_is_bit_exact(float_cnn: Module, tmp_path: Path,
                                                  digits: dict[str, np.ndarray]) -> None:
    quantized = kiln.run_passes(float_cnn, "quantize{observer=percentile}",
                                calibration_data=digits["calib"])
    kiln.export_onnx(quantized, tmp_path / "m.onnx")
    again = kiln.run_passes(kiln.import_onnx(tmp_path / "m.onnx"), "fold-qdq")
    assert again.op_counts()["kiln.qconv2d"] == 2
    x = digits["x"][:BATCH]
    np.testing.assert_array_equal(interpret(again, x)[0], interpret(quantized, x)[0])


# -- PyTorch fake quantization -----------------------------------------------------------------
def test_torch_fake_quant_scheme_is_bit_exact(rng: np.random.Generator) -> None:
    x = np.concatenate([rng.standard_normal(5000) * 3, (np.arange(-300, 300) + 0.5) * 0.1])
    x = x.astype(np.float32)
    for zp, low, high in ((3, 0, 255), (-5, -128, 127), (1, 0, 15)):
        want = torch.fake_quantize_per_tensor_affine(torch.from_numpy(x), 0.1, zp, low, high)
        q = QuantType(I32, (float(np.float32(0.1)),), (zp,))
        stored = np.clip(fixed.quantize_affine(x, q, scheme="mul"), low, high)
        np.testing.assert_array_equal(fixed.dequantize_affine(stored, q), want.numpy())


class FakeQuantNet(torch.nn.Module):
    """A QAT-style block: fake-quantized input, per-channel weights, relu, output."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(2, 4, 3, padding=1)
        self.register_buffer("w_scale", self.conv.weight.detach().abs().amax((1, 2, 3)) / 127)
        self.register_buffer("w_zero", torch.zeros(4, dtype=torch.int32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.fake_quantize_per_tensor_affine(x, 0.02, 128, 0, 255)
        w = torch.fake_quantize_per_channel_affine(self.conv.weight, self.w_scale,
                                                   self.w_zero, 0, -127, 127)
        y = torch.relu(torch.nn.functional.conv2d(x, w, self.conv.bias, padding=1))
        return torch.fake_quantize_per_tensor_affine(y, 0.01, 0, 0, 255)


def test_torch_fake_quant_imports_and_folds(rng: np.random.Generator) -> None:
    torch.manual_seed(0)
    model = FakeQuantNet().eval()
    x = torch.from_numpy(rng.standard_normal((2, 2, 6, 6)).astype(np.float32))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module = kiln.trace(model, (x,))
    assert module.op_counts()["kiln.quantize"] == 3
    want = model(x).detach().numpy()
    np.testing.assert_array_equal(interpret(module, x)[0], want)  # fake quant: bit-exact
    folded = kiln.run_passes(module, "fold-qdq")
    assert folded.op_counts().get("kiln.qconv2d") == 1 and "kiln.conv2d" not in folded.op_counts()
    assert np.abs(interpret(folded, x)[0] - want).max() <= 0.01 * 1.0001  # float vs integer
    assert qnn_numpy_checked(folded, x.numpy()) == 1


def _qdq_graph(dq_scale: np.ndarray, dq_zero: np.ndarray) -> bytes:
    """x (2, 3, 4) → QuantizeLinear per channel (axis 1) → DequantizeLinear(dq_scale, dq_zero)."""
    from onnx import TensorProto, helper, numpy_helper
    inits = [numpy_helper.from_array(a, n) for a, n in (
        (np.array([0.1, 0.02, 0.5], np.float32), "s"), (np.array([3, -7, 0], np.int8), "z"),
        (dq_scale, "s2"), (dq_zero, "z2"))]
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"], axis=1),
             helper.make_node("DequantizeLinear", ["q", "s2", "z2"], ["y"], axis=1)]
    graph = helper.make_graph(nodes, "qdq", [helper.make_tensor_value_info(
        "x", TensorProto.FLOAT, [2, 3, 4])], [helper.make_tensor_value_info(
            "y", TensorProto.FLOAT, [2, 3, 4])], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def test_per_axis_qdq_imports_and_mismatched_parameters_are_refused(
        rng: np.random.Generator) -> None:
    model = _qdq_graph(np.array([0.1, 0.02, 0.5], np.float32), np.array([3, -7, 0], np.int8))
    module = kiln.import_onnx(model)
    q = module.main.ops[0].result.type.dtype
    assert isinstance(q, QuantType) and q.axis == 1 and q.zero_point == (3, -7, 0)
    x = (rng.standard_normal((2, 3, 4)) * 4).astype(np.float32)
    sess = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    np.testing.assert_array_equal(interpret(module, x)[0], sess.run(None, {"x": x})[0])
    bad = _qdq_graph(np.array([0.1, 0.03, 0.5], np.float32), np.array([3, -7, 0], np.int8))
    with pytest.raises(kiln.KilnError, match="parameters of its QuantizeLinear"):
        kiln.import_onnx(bad)

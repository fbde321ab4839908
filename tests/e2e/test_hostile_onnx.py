"""Broken and hostile ONNX files: every one ends in a clear `KilnError`, never another exception,
a hang or an attempt to allocate what a corrupt header declares.

Covered: truncation at many offsets, random bytes, cycles, 2**40-element shapes (graph inputs,
initializers, import-time constants), initializer data that disagrees with the declared shape,
missing and undefined inputs/outputs, duplicate names, opsets and domains that do not exist, and
NaN/Inf initializers (a `KilnWarning`, the model still imports and runs).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import kiln
from kiln.errors import ImportError_, KilnError, KilnWarning
from tests.conftest import rel_error


def small_model(rng: np.random.Generator, opset: int = 17) -> onnx.ModelProto:
    """x[1,4] → Gemm(W[3,4], b[3]) → h → Relu → s → Add(s, h) → y[1,3]."""
    inits = [numpy_helper.from_array(rng.standard_normal((3, 4)).astype(np.float32), "W"),
             numpy_helper.from_array(rng.standard_normal(3).astype(np.float32), "b")]
    nodes = [helper.make_node("Gemm", ["x", "W", "b"], ["h"], name="fc", transB=1),
             helper.make_node("Relu", ["h"], ["s"], name="act"),
             helper.make_node("Add", ["s", "h"], ["y"], name="skip")]
    graph = helper.make_graph(
        nodes, "small", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def import_error(source: object, match: str, cls: type[KilnError] = KilnError) -> str:
    """Import `source`; it must fail with `cls` matching `match`. Returns the message."""
    with pytest.raises(cls, match=match) as info:
        kiln.import_onnx(source)
    return str(info.value)


# -- bytes that are not (whole) ONNX models -------------------------------------------------
def test_truncated_at_every_offset_is_a_clear_error(rng: np.random.Generator) -> None:
    data = small_model(rng).SerializeToString()
    for cut in range(len(data)):  # every proper prefix, the empty one included
        with pytest.raises(ImportError_) as info:
            kiln.import_onnx(data[:cut])
        assert "ONNX" in str(info.value), cut  # says what is wrong with which file


def test_random_bytes_are_a_clear_error(rng: np.random.Generator) -> None:
    for _ in range(300):
        data = rng.bytes(int(rng.integers(1, 400)))
        with pytest.raises(KilnError):
            kiln.import_onnx(data)


def test_bit_flips_never_escape_as_other_exceptions(rng: np.random.Generator) -> None:
    """Flipped bytes often still decode: then the model imports (and interprets) or fails
    with a KilnError, nothing else."""
    data = bytearray(small_model(rng).SerializeToString())
    x = rng.standard_normal((1, 4)).astype(np.float32)
    for _ in range(1000):
        mutated = bytearray(data)
        for i in rng.integers(0, len(data), size=int(rng.integers(1, 4))):
            mutated[i] = int(rng.integers(0, 256))
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", KilnWarning)
                module = kiln.import_onnx(bytes(mutated))
                kiln.interpret(module, x)
        except KilnError:
            pass


def test_missing_and_empty_files(tmp_path: object) -> None:
    from pathlib import Path
    folder = Path(str(tmp_path))
    import_error(folder / "none.onnx", "does not exist")
    (folder / "empty.onnx").write_bytes(b"")
    import_error(folder / "empty.onnx", "it is empty", ImportError_)
    (folder / "text.onnx").write_text("this is not protobuf at all\n" * 5)
    import_error(folder / "text.onnx", "not a valid ONNX model", ImportError_)


# -- inconsistent graphs -------------------------------------------------------------------------
def test_cycle(rng: np.random.Generator) -> None:
    model = small_model(rng)
    model.graph.node[0].input[0] = "y"  # Gemm reads the Add that depends on it
    text = import_error(model, "cycle", ImportError_)
    assert "Gemm 'fc'" in text


def test_self_loop(rng: np.random.Generator) -> None:
    model = small_model(rng)
    model.graph.node[1].input[0] = "s"
    import_error(model, "cycle", ImportError_)


Mutation = Callable[[onnx.ModelProto], None]


def _no_inputs(m: onnx.ModelProto) -> None:
    del m.graph.input[:]


def _no_outputs(m: onnx.ModelProto) -> None:
    del m.graph.output[:]


def _undefined_output(m: onnx.ModelProto) -> None:
    m.graph.output[0].name = "nowhere"


def _output_defined_twice(m: onnx.ModelProto) -> None:
    m.graph.node[1].output[0] = "h"


def _initializer_twice(m: onnx.ModelProto) -> None:
    m.graph.initializer[1].name = "W"


def _input_twice(m: onnx.ModelProto) -> None:
    m.graph.input.append(m.graph.input[0])


def _input_and_node_output(m: onnx.ModelProto) -> None:
    m.graph.node[1].output[0] = "x"


@pytest.mark.parametrize("mutate, match", [
    (_no_inputs, "uses 'x', which no node, graph input or initializer defines"),
    (_no_outputs, "has no outputs"),
    (_undefined_output, "graph output 'nowhere' is not produced"),
    (_output_defined_twice, "'h' is defined twice"),
    (_initializer_twice, "initializer 'W' is defined twice"),
    (_input_twice, "graph input 'x' is defined twice"),
    (_input_and_node_output, "'x' is defined twice"),
], ids=lambda v: getattr(v, "__name__", "")[1:] or None)
def test_inconsistent_graph(mutate: Mutation, match: str, rng: np.random.Generator) -> None:
    model = small_model(rng)
    mutate(model)
    import_error(model, match)


def test_duplicate_node_names_are_only_labels(rng: np.random.Generator) -> None:
    """kiln uses node names only as location labels, so two nodes may share one (onnxruntime
    refuses such a model; kiln imports it, computing what the uniquely named one computes)."""
    original = small_model(rng)
    model = onnx.ModelProto()
    model.CopyFrom(original)
    for node in model.graph.node:
        node.name = "same"
    module = kiln.import_onnx(model)
    x = rng.standard_normal((1, 4)).astype(np.float32)
    session = ort.InferenceSession(original.SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    assert rel_error(kiln.interpret(module, x)[0], session.run(None, {"x": x})[0]) < 1e-6
    assert module.to_text().count('loc("same")') == 3


# -- declared sizes ------------------------------------------------------------------------------
def test_huge_input_shape_is_refused(rng: np.random.Generator) -> None:
    model = small_model(rng)
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 2**40
    import_error(model, r"graph input 'x' declares the shape \[1099511627776, 4\]")
    with pytest.raises(KilnError, match="more than kiln imports"):
        kiln.import_onnx(small_model(rng), input_shapes={"x": (2**20, 2**20)})


def test_negative_input_shape_is_refused(rng: np.random.Generator) -> None:
    with pytest.raises(KilnError, match=r"input 'x' has the shape \[-3, 4\]"):
        kiln.import_onnx(small_model(rng), input_shapes={"x": (-3, 4)})


def test_huge_initializer_is_refused_before_reading(rng: np.random.Generator) -> None:
    model = small_model(rng)
    model.graph.initializer[0].dims[:] = [2**20, 2**20]
    import_error(model, r"initializer 'W' declares the shape \[1048576, 1048576\] "
                        r"\(1099511627776 elements\)", ImportError_)


@pytest.mark.parametrize("cut", [1, 4, 47])
def test_raw_data_shorter_than_shape(cut: int, rng: np.random.Generator) -> None:
    model = small_model(rng)
    raw = model.graph.initializer[0].raw_data
    model.graph.initializer[0].raw_data = raw[:len(raw) - cut]
    import_error(model, rf"'W' declares the shape \[3, 4\] \(48 bytes of FLOAT\), but holds "
                        rf"{48 - cut} bytes", ImportError_)


def test_shape_larger_than_raw_data(rng: np.random.Generator) -> None:
    model = small_model(rng)
    model.graph.initializer[0].dims[:] = [3, 5]
    import_error(model, r"declares the shape \[3, 5\] \(60 bytes of FLOAT\), but holds 48",
                 ImportError_)


def test_typed_data_count_disagrees(rng: np.random.Generator) -> None:
    model = small_model(rng)
    bias = helper.make_tensor("b", TensorProto.FLOAT, [2], [1.0, 2.0])
    bias.dims[:] = [3]  # 2 values for 3 (onnx's helper refuses to write this)
    model.graph.initializer[1].CopyFrom(bias)
    import_error(model, r"'b' declares the shape \[3\] \(3 values of FLOAT\), but holds 2",
                 ImportError_)


def _with_constant_of_shape(rng: np.random.Generator, shape: list[int]) -> onnx.ModelProto:
    """Adds `big = ConstantOfShape(shape)` and `y2 = Add(x, ReduceSum(big))`-free output."""
    model = small_model(rng)
    model.graph.initializer.append(numpy_helper.from_array(np.array(shape, np.int64), "shp"))
    model.graph.node.insert(0, helper.make_node(
        "ConstantOfShape", ["shp"], ["big"], name="filler",
        value=helper.make_tensor("v", TensorProto.FLOAT, [1], [1.0])))
    model.graph.output.append(helper.make_tensor_value_info("big", TensorProto.FLOAT, None))
    return model


def test_import_time_constant_of_huge_shape_is_refused(rng: np.random.Generator) -> None:
    text = import_error(_with_constant_of_shape(rng, [2**20, 2**20]),
                        r"ConstantOfShape 'filler'.*would create a constant of shape "
                        r"\[1048576, 1048576\]", ImportError_)
    assert "filler" in text


def test_expand_of_input_to_huge_shape_is_refused(rng: np.random.Generator) -> None:
    model = small_model(rng)
    model.graph.initializer.append(numpy_helper.from_array(
        np.array([2**16, 2**16, 4], np.int64), "shape"))
    model.graph.node.append(helper.make_node("Expand", ["x", "shape"], ["wide"], name="blowup"))
    model.graph.output.append(helper.make_tensor_value_info("wide", TensorProto.FLOAT, None))
    import_error(model, r"Expand 'blowup'.*more than 2147483647 elements", ImportError_)


def test_range_with_zero_delta(rng: np.random.Generator) -> None:
    model = small_model(rng)
    for name, value in (("r0", 0.0), ("r1", 5.0), ("rd", 0.0)):
        model.graph.initializer.append(numpy_helper.from_array(np.array(value, np.float32),
                                                               name))
    model.graph.node.append(helper.make_node("Range", ["r0", "r1", "rd"], ["ramp"], name="r"))
    model.graph.output.append(helper.make_tensor_value_info("ramp", TensorProto.FLOAT, None))
    import_error(model, "Range 'r'.*delta 0", ImportError_)


# -- opsets and domains ----------------------------------------------------------------------------
def test_opset_that_does_not_exist(rng: np.random.Generator) -> None:
    import_error(small_model(rng, opset=999), r"opset \[999\], which does not exist",
                 ImportError_)
    import_error(small_model(rng, opset=0), r"opset \[0\], which does not exist", ImportError_)


def test_opset_newer_than_kiln_knows_warns(rng: np.random.Generator) -> None:
    from kiln.frontend.onnx_import import MAX_OPSET
    if onnx.defs.onnx_opset_version() <= MAX_OPSET:
        pytest.skip("the installed onnx knows no opset newer than kiln's")
    with pytest.warns(KilnWarning, match=f"opset {MAX_OPSET + 1} is newer than kiln knows"):
        kiln.import_onnx(small_model(rng, opset=MAX_OPSET + 1))


def test_no_opset_or_only_foreign_domains(rng: np.random.Generator) -> None:
    model = small_model(rng)
    del model.opset_import[:]
    import_error(model, "declares no opset", ImportError_)
    model.opset_import.append(helper.make_opsetid("com.example", 1))
    import_error(model, r"imports only the opset domains \['com.example'\]", ImportError_)


def test_nodes_of_unknown_domains_are_all_listed(rng: np.random.Generator) -> None:
    model = small_model(rng)
    model.opset_import.append(helper.make_opsetid("com.example", 1))
    model.graph.node[1].domain = "com.example"
    model.graph.node[2].domain = "com.example"
    text = import_error(model, "2 node", kiln.errors.UnsupportedOpError)
    assert "node 'act', domain 'com.example'" in text and "node 'skip'" in text


# -- NaN / Inf -----------------------------------------------------------------------------------
def test_nonfinite_initializer_warns_and_still_imports(rng: np.random.Generator) -> None:
    model = small_model(rng)
    weight = numpy_helper.to_array(model.graph.initializer[0]).copy()
    weight[0, 1], weight[2, 3] = np.nan, np.inf
    model.graph.initializer[0].CopyFrom(numpy_helper.from_array(weight, "W"))
    with pytest.warns(KilnWarning, match=r"initializer 'W' .*1 NaN and 1 Inf value\(s\) out of 12"):
        module = kiln.import_onnx(model)
    x = rng.standard_normal((1, 4)).astype(np.float32)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    want = session.run(None, {"x": x})[0]
    got = kiln.interpret(module, x)[0]
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    finite = np.isfinite(want)
    assert rel_error(got[finite], want[finite]) < 1e-6


def test_finite_model_imports_without_warnings(rng: np.random.Generator) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error", KilnWarning)
        kiln.import_onnx(small_model(rng))


# -- names and paths inside the file -------------------------------------------------------------
def test_names_that_are_not_utf8(rng: np.random.Generator) -> None:
    model = small_model(rng)
    model.graph.node[1].name = "QQQQQQ"
    data = model.SerializeToString().replace(b"QQQQQQ", b"\xff\xfe\xfd\xc3\x28\x80")
    import_error(data, r"a name of node 1 is not UTF-8 text", ImportError_)


@pytest.mark.parametrize("location", ["../../../../etc/hostname", "/etc/hostname",
                                      "sub/../../escape.bin", "absent.bin"])
def test_external_data_cannot_leave_the_model_folder(location: str, rng: np.random.Generator,
                                                     tmp_path: object) -> None:
    from pathlib import Path
    folder = Path(str(tmp_path))
    model = small_model(rng)
    tensor = model.graph.initializer[0]
    tensor.ClearField("raw_data")
    tensor.data_location = TensorProto.EXTERNAL
    entry = tensor.external_data.add()
    entry.key, entry.value = "location", location
    (folder / "m.onnx").write_bytes(model.SerializeToString())
    text = import_error(folder / "m.onnx", "refers to external tensor data that could not be "
                                           "read", ImportError_)
    assert "hint:" in text
    import_error(model.SerializeToString(), "refers to external tensor data", ImportError_)


def test_tensor_attribute_that_disagrees_with_its_shape(rng: np.random.Generator) -> None:
    model = small_model(rng)
    value = helper.make_tensor("v", TensorProto.FLOAT, [2], [1.0, 2.0])
    value.dims[:] = [2**20, 2**20]
    model.graph.node.append(helper.make_node("Constant", [], ["k"], name="const", value=value))
    model.graph.output.append(helper.make_tensor_value_info("k", TensorProto.FLOAT, None))
    import_error(model, r"attribute 'value' of ONNX node Constant 'const' declares the shape",
                 ImportError_)


@pytest.mark.parametrize("node, inputs", [(2, ["s"]), (0, ["x", "W", "b", "b"]),
                                          (1, ["h", "h"])])
def test_input_count_outside_the_schema(node: int, inputs: list[str],
                                        rng: np.random.Generator) -> None:
    model = small_model(rng)
    del model.graph.node[node].input[:]
    model.graph.node[node].input.extend(inputs)
    op = model.graph.node[node].op_type
    import_error(model, rf"ONNX {op} '.*' has {len(inputs)} input\(s\) .*opset 17 defines",
                 ImportError_)


# -- structured mutations: valid protobuf, nonsense graph ------------------------------------------
def conv_model(rng: np.random.Generator) -> onnx.ModelProto:
    """x[1,2,6,6] → Conv → Relu → MaxPool → Reshape → Gemm → Softmax: many attributes."""
    def init(name: str, array: np.ndarray) -> onnx.TensorProto:
        return numpy_helper.from_array(array, name)
    inits = [init("cw", rng.standard_normal((3, 2, 3, 3)).astype(np.float32)),
             init("cb", rng.standard_normal(3).astype(np.float32)),
             init("shape", np.array([1, -1], np.int64)),
             init("fw", rng.standard_normal((4, 27)).astype(np.float32)),
             init("fb", rng.standard_normal(4).astype(np.float32))]
    nodes = [
        helper.make_node("Conv", ["x", "cw", "cb"], ["c"], name="conv", kernel_shape=[3, 3],
                         pads=[1, 1, 1, 1], strides=[1, 1], dilations=[1, 1], group=1),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("MaxPool", ["r"], ["p"], name="pool", kernel_shape=[2, 2],
                         strides=[2, 2]),
        helper.make_node("Reshape", ["p", "shape"], ["f"], name="flat"),
        helper.make_node("Gemm", ["f", "fw", "fb"], ["g"], name="fc", transB=1, alpha=1.0),
        helper.make_node("Softmax", ["g"], ["y"], name="softmax", axis=-1),
    ]
    graph = helper.make_graph(
        nodes, "convnet", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 6, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


INTS = [0, -1, 1, 2, 3, 5, -2**31, 2**31 - 1, 2**40]


def _mutate_graph(model: onnx.ModelProto, rng: np.random.Generator) -> None:
    graph = model.graph
    node = graph.node[int(rng.integers(len(graph.node)))]
    kind = int(rng.integers(5))
    if kind == 0 and node.attribute:
        attr = node.attribute[int(rng.integers(len(node.attribute)))]
        if attr.type == onnx.AttributeProto.INT:
            attr.i = int(rng.choice(INTS))
        elif attr.type == onnx.AttributeProto.INTS:
            attr.ints[int(rng.integers(len(attr.ints)))] = int(rng.choice(INTS))
            if rng.random() < 0.3:
                attr.ints.append(int(rng.choice(INTS)))
        elif attr.type == onnx.AttributeProto.FLOAT:
            attr.f = float(rng.choice([np.nan, np.inf, 0.0, -1.0]))
    elif kind == 1:
        tensor = graph.initializer[int(rng.integers(len(graph.initializer)))]
        tensor.dims[int(rng.integers(len(tensor.dims)))] = int(rng.choice(INTS))
    elif kind == 2:
        node.op_type = graph.node[int(rng.integers(len(graph.node)))].op_type
    elif kind == 3:
        names = [o for n in graph.node for o in n.output] + ["cw", "fw", "shape", ""]
        node.input[int(rng.integers(len(node.input)))] = str(rng.choice(names))
    elif node.attribute:
        del node.attribute[int(rng.integers(len(node.attribute)))]


def test_structured_mutations_import_or_raise_kiln_error(rng: np.random.Generator) -> None:
    base = conv_model(rng)
    x = rng.standard_normal((1, 2, 6, 6)).astype(np.float32)
    accepted = 0
    for _ in range(300):
        model = onnx.ModelProto()
        model.CopyFrom(base)
        for _ in range(int(rng.integers(1, 3))):
            _mutate_graph(model, rng)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", KilnWarning)
                module = kiln.import_onnx(model)
                if module.main.args[0].type.shape == x.shape:
                    kiln.interpret(module, x)
            accepted += 1
        except KilnError as exc:
            assert str(exc)
    assert 0 < accepted < 300  # both paths were exercised

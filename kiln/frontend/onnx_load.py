"""Reading and validating an ONNX model before conversion.

Everything a user can get wrong about the file itself is caught here and reported as a
`KilnError`, never as a protobuf traceback: a missing, empty, truncated or non-ONNX file, a graph
that uses a name nothing defines, a cycle, inputs with symbolic dimensions.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import onnx
from google.protobuf.message import DecodeError

from kiln.errors import Diagnostic, ImportError_, KilnError, UnsupportedOpError
from kiln.frontend.onnx_node import ONNX_DTYPES, onnx_dtype_name
from kiln.ir.types import TensorType

InputShapes = Mapping[str, Sequence[int]]


def read_model(source: Any) -> tuple[onnx.ModelProto, str | None]:
    """The model and, when read from a path, the file's basename (for locations)."""
    if isinstance(source, onnx.ModelProto):
        return _validated(source, "the ModelProto"), None
    if isinstance(source, (bytes, bytearray, memoryview)):
        return _validated(_parse(bytes(source), "the given data"), "the given data"), None
    if not isinstance(source, (str, Path)):
        raise KilnError(f"import_onnx takes a path, bytes or an onnx.ModelProto, "
                        f"not {type(source).__name__}")
    path = Path(source)
    if not path.is_file():
        raise KilnError(f"ONNX model file '{path}' does not exist",
                        hint="check the path (relative paths start at the current directory)")
    data = path.read_bytes()
    model = _parse(data, f"'{path}'")
    if _uses_external_data(model):
        try:
            onnx.external_data_helper.load_external_data_for_model(model, str(path.parent))
        except (OSError, ValueError) as exc:
            raise ImportError_(f"'{path}' refers to external tensor data that could not be "
                               f"read: {exc}") from None
    return _validated(model, f"'{path}'"), path.name


def _parse(data: bytes, what: str) -> onnx.ModelProto:
    if not data:
        raise ImportError_(f"{what} is not a valid ONNX model: it is empty")
    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except (DecodeError, RuntimeError, ValueError) as exc:
        raise ImportError_(f"{what} is not a valid ONNX model: the protobuf data cannot be "
                           f"decoded ({exc or 'truncated or corrupt'})",
                           hint="the file may be truncated or not an ONNX model") from None
    return model


def _validated(model: onnx.ModelProto, what: str) -> onnx.ModelProto:
    """Protobuf parses many byte strings; an ONNX model has a version, an opset and a graph."""
    if model.ir_version <= 0 or not model.HasField("graph"):
        missing = "an IR version" if model.ir_version <= 0 else "a graph"
        raise ImportError_(f"{what} is not a valid ONNX model: it has no {missing}",
                           hint="the file may be truncated or not an ONNX model")
    if not model.graph.output:
        raise ImportError_(f"{what} is not a valid ONNX model: its graph has no outputs")
    return model


def _uses_external_data(model: onnx.ModelProto) -> bool:
    return any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer)


def default_opset(model: onnx.ModelProto) -> int:
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return int(entry.version)
    if model.opset_import:
        return 1
    raise ImportError_("the ONNX model declares no opset (opset_import is empty)")


def input_types(graph: onnx.GraphProto, initializers: set[str],
                pinned: InputShapes | None) -> dict[str, TensorType]:
    """Static types of the real graph inputs (initializers excluded); all problems at once."""
    pinned = dict(pinned or {})
    names = [i.name for i in graph.input if i.name not in initializers]
    unknown = sorted(set(pinned) - set(names))
    if unknown:
        raise KilnError(f"input_shapes names {unknown}, which are not inputs of the model",
                        hint=f"the model's inputs are {names}")
    out: dict[str, TensorType] = {}
    problems: list[Diagnostic] = []
    for value in graph.input:
        if value.name in initializers:
            continue
        ttype, problem = _input_type(value, pinned.get(value.name))
        if ttype is None:
            problems.append(Diagnostic(problem or f"input '{value.name}' has no type"))
        else:
            out[value.name] = ttype
    if problems:
        example = ", ".join(f"'{name}': (...)" for name in names if name not in out)
        raise KilnError(diagnostics=[Diagnostic(
            "kiln needs static input shapes", hint="pin them with kiln.import_onnx(path, "
            f"input_shapes={{{example}}}) giving the real sizes"), *problems])
    return out


def _input_type(value: onnx.ValueInfoProto,
                pinned: Sequence[int] | None) -> tuple[TensorType | None, str | None]:
    if value.type.WhichOneof("value") != "tensor_type":
        raise UnsupportedOpError(f"graph input '{value.name}' is a "
                                 f"{value.type.WhichOneof('value')}, kiln imports tensors only")
    tensor = value.type.tensor_type
    if tensor.elem_type not in ONNX_DTYPES:
        raise UnsupportedOpError(f"graph input '{value.name}' has element type "
                                 f"{onnx_dtype_name(tensor.elem_type)}, which kiln does not "
                                 "support")
    dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?")
            for d in tensor.shape.dim]
    if pinned is not None:
        shape = tuple(int(d) for d in pinned)
        if tensor.HasField("shape") and len(shape) != len(dims):
            return None, (f"input '{value.name}': input_shapes gives {list(shape)}, but the "
                          f"model declares rank {len(dims)} ({dims})")
        return TensorType(shape, ONNX_DTYPES[tensor.elem_type]), None
    if not tensor.HasField("shape"):
        return None, f"input '{value.name}' has no declared shape"
    if not all(isinstance(d, int) for d in dims):
        return None, f"input '{value.name}' has symbolic or unknown dimensions {dims}"
    return TensorType(tuple(int(d) for d in dims), ONNX_DTYPES[tensor.elem_type]), None


def topo_order(graph: onnx.GraphProto, defined: set[str]) -> list[onnx.NodeProto]:
    """The nodes in dependency order; undefined names, double definitions, cycles → errors."""
    producer: dict[str, int] = {}
    for i, node in enumerate(graph.node):
        for name in node.output:
            if name and (name in producer or name in defined):
                raise ImportError_(f"ONNX value '{name}' is defined twice (by node "
                                   f"{_label(node)})", hint="the graph is not valid SSA")
            if name:
                producer[name] = i
    waiting = [0] * len(graph.node)
    users: dict[int, list[int]] = {}
    for i, node in enumerate(graph.node):
        for name in {n for n in node.input if n}:
            if name in producer:
                waiting[i] += 1
                users.setdefault(producer[name], []).append(i)
            elif name not in defined:
                raise ImportError_(f"ONNX node {_label(node)} uses '{name}', which no node, "
                                   "graph input or initializer defines")
    ready = [i for i, n in enumerate(waiting) if n == 0]
    order: list[int] = []
    while ready:
        i = ready.pop(0)
        order.append(i)
        for j in users.get(i, []):
            waiting[j] -= 1
            if waiting[j] == 0:
                ready.append(j)
    if len(order) != len(graph.node):
        stuck = [_label(graph.node[i]) for i in range(len(graph.node)) if waiting[i]]
        raise ImportError_(f"the ONNX graph has a cycle; these nodes wait on it: "
                           f"{', '.join(stuck[:8])}")
    return [graph.node[i] for i in order]


def _label(node: onnx.NodeProto) -> str:
    return f"{node.op_type} '{node.name}'" if node.name else node.op_type


def inferred_shapes(model: onnx.ModelProto,
                    inputs: Mapping[str, TensorType]) -> dict[str, tuple[int, ...]]:
    """Static shapes ONNX's own shape inference finds (inputs pinned), to cross-check kiln's."""
    pinned = onnx.ModelProto()
    pinned.CopyFrom(model)
    for value in pinned.graph.input:
        if value.name in inputs:
            dims = value.type.tensor_type.shape
            dims.ClearField("dim")
            for d in inputs[value.name].shape:
                dims.dim.add().dim_value = d
    try:
        inferred = onnx.shape_inference.infer_shapes(pinned, strict_mode=False)
    except Exception:  # ONNX's inference is only advisory here
        return {}
    out: dict[str, tuple[int, ...]] = {}
    for value in [*inferred.graph.value_info, *inferred.graph.output]:
        tensor = value.type.tensor_type
        if tensor.HasField("shape") and all(d.HasField("dim_value") for d in tensor.shape.dim):
            out[value.name] = tuple(d.dim_value for d in tensor.shape.dim)
    return out

"""Reading and validating an ONNX model before conversion.

Everything a user can get wrong about the file itself is caught here and reported as a
`KilnError`, never as a protobuf traceback: a missing, empty, truncated or non-ONNX file, a graph
that uses a name nothing defines, a cycle, inputs with symbolic dimensions, duplicate names, an
opset that does not exist, and declared sizes that are absurd or disagree with the data
(checked before anything is allocated: a 2**40-element initializer is refused, not attempted).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from google.protobuf.message import DecodeError

from kiln.errors import Diagnostic, ImportError_, KilnError, UnsupportedOpError
from kiln.frontend.onnx_node import ONNX_DTYPES, onnx_dtype_name
from kiln.ir.lexer import MAX_ELEMENTS, MAX_RANK
from kiln.ir.types import TensorType

InputShapes = Mapping[str, Sequence[int]]


def read_model(source: Any) -> tuple[onnx.ModelProto, str | None]:
    """The model and, when read from a path, the file's basename (for locations)."""
    if isinstance(source, onnx.ModelProto):
        return _no_external(_validated(source, "the ModelProto"), "the ModelProto"), None
    if isinstance(source, (bytes, bytearray, memoryview)):
        model = _validated(_parse(bytes(source), "the given data"), "the given data")
        return _no_external(model, "the given data"), None
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
        try:  # onnx refuses locations outside the model's folder (../, absolute paths)
            onnx.external_data_helper.load_external_data_for_model(model, str(path.parent))
        except Exception as exc:  # OSError, ValueError, onnx's ValidationError, ...
            raise ImportError_(f"'{path}' refers to external tensor data that could not be "
                               f"read: {exc}", hint="external data must be a file in the "
                               "model's folder; check the .onnx file and its data files") from None
    return _validated(model, f"'{path}'"), path.name


def _no_external(model: onnx.ModelProto, what: str) -> onnx.ModelProto:
    """Without a file there is no folder to resolve external data in: kiln will not read
    paths named by the model relative to the current directory."""
    if _uses_external_data(model):
        raise ImportError_(f"{what} refers to external tensor data (a file beside the model)",
                           hint="import the model from its .onnx path, or load it with "
                                "onnx.load(path) (which reads the external data) first")
    return model


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
        missing = "IR version" if model.ir_version <= 0 else "graph"
        raise ImportError_(f"{what} is not a valid ONNX model: it has no {missing}",
                           hint="the file may be truncated or not an ONNX model")
    if not model.graph.output:
        raise ImportError_(f"{what} is not a valid ONNX model: its graph has no outputs")
    _check_text(model, what)
    return model


def _check_text(model: onnx.ModelProto, what: str) -> None:
    """Every name is text: protobuf hands back `bytes` for a string field that is not UTF-8."""
    graph = model.graph
    fields: list[tuple[str, object]] = [("the graph name", graph.name)]
    fields += [(f"opset domain {i}", e.domain) for i, e in enumerate(model.opset_import)]
    for i, node in enumerate(graph.node):
        fields += [(f"node {i}", text) for text in (node.name, node.op_type, node.domain)]
        fields += [(f"node {i}", text) for text in (*node.input, *node.output)]
        fields += [(f"node {i}", attr.name) for attr in node.attribute]
    for kind, values in (("graph input", graph.input), ("graph output", graph.output),
                         ("initializer", graph.initializer), ("value_info", graph.value_info)):
        fields += [(f"{kind} {i}", v.name) for i, v in enumerate(values)]
    for where, text in fields:
        if not isinstance(text, str):
            raise ImportError_(f"{what} is not a valid ONNX model: a name of {where} is not "
                               f"UTF-8 text ({text!r:.60})", hint="the file is corrupt")


def _uses_external_data(model: onnx.ModelProto) -> bool:
    return any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer)


def default_opset(model: onnx.ModelProto) -> int:
    """The version of the default domain; an opset that does not exist is an error."""
    versions = [int(e.version) for e in model.opset_import if e.domain in ("", "ai.onnx")]
    if not model.opset_import:
        raise ImportError_("the ONNX model declares no opset (opset_import is empty)",
                           hint="re-export the model; every ONNX model names its opset")
    if not versions:
        if any(node.domain in ("", "ai.onnx") for node in model.graph.node):
            domains = sorted(e.domain for e in model.opset_import)
            raise ImportError_(f"the ONNX model imports only the opset domains {domains}, but "
                               "its nodes use the default domain",
                               hint="re-export the model; it is not valid ONNX")
        return 1
    newest = onnx.defs.onnx_opset_version()
    if len(set(versions)) > 1 or not 1 <= versions[0] <= newest:
        raise ImportError_(f"the ONNX model declares default-domain opset {versions}, which "
                           f"does not exist (ONNX opsets run from 1 to {newest})",
                           hint="the file is corrupt or was written by a broken exporter")
    return versions[0]


def check_names(graph: onnx.GraphProto) -> None:
    """Graph inputs and initializers are each named once (a second definition would silently
    shadow the first)."""
    for what, names in (("graph input", [i.name for i in graph.input]),
                        ("initializer", [t.name for t in graph.initializer])):
        seen: set[str] = set()
        for name in names:
            if name in seen:
                raise ImportError_(f"ONNX {what} '{name}' is defined twice",
                                   hint="names in an ONNX graph must be unique")
            seen.add(name)


def check_initializer(tensor: onnx.TensorProto, where: str | None = None) -> None:
    """Refuse an initializer (or a tensor attribute) whose declared shape is absurd or disagrees
    with its data, before NumPy allocates or reshapes anything."""
    dims = [int(d) for d in tensor.dims]
    where = where or f"ONNX initializer '{tensor.name}'"
    if len(dims) > MAX_RANK or any(d < 0 for d in dims):
        raise ImportError_(f"{where} declares the shape {dims}",
                           hint="the file is corrupt or was written by a broken exporter")
    count = _checked_count(dims, where)
    if tensor.data_type not in ONNX_DTYPES:
        raise UnsupportedOpError(f"{where} has element type "
                                 f"{onnx_dtype_name(tensor.data_type)}, which kiln does not "
                                 "support")
    if tensor.data_location == onnx.TensorProto.EXTERNAL:
        return  # loaded by onnx's helper, which checked the file's size
    itemsize = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type)).itemsize
    if tensor.HasField("raw_data"):
        have, want = len(tensor.raw_data), count * itemsize
        unit = "bytes"
    else:
        field = onnx.helper.tensor_dtype_to_field(tensor.data_type)
        have, want, unit = len(getattr(tensor, field)), count, "values"
    if have != want:
        raise ImportError_(f"{where} declares the shape {dims} ({want} {unit} of "
                           f"{onnx_dtype_name(tensor.data_type)}), but holds {have} {unit}",
                           hint="the file is truncated or corrupt; re-export the model")


def _checked_count(dims: Sequence[int], where: str) -> int:
    count = 1
    for d in dims:
        count *= d
    if count > MAX_ELEMENTS:
        raise ImportError_(f"{where} declares the shape {list(dims)} ({count} elements), more "
                           f"than kiln imports ({MAX_ELEMENTS})",
                           hint="the file is corrupt, or the model is far too large to compile")
    return count


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
        return _sized(value.name, shape, tensor.elem_type)
    if not tensor.HasField("shape"):
        return None, f"input '{value.name}' has no declared shape"
    if not all(isinstance(d, int) for d in dims):
        return None, f"input '{value.name}' has symbolic or unknown dimensions {dims}"
    return _sized(value.name, tuple(int(d) for d in dims), tensor.elem_type)


def _sized(name: str, shape: tuple[int, ...], elem_type: int) -> tuple[TensorType | None,
                                                                       str | None]:
    if len(shape) > MAX_RANK or any(d < 0 for d in shape):
        return None, f"input '{name}' has the shape {list(shape)}"
    _checked_count(shape, f"ONNX graph input '{name}'")
    return TensorType(shape, ONNX_DTYPES[elem_type]), None


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

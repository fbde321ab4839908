"""ONNX → kiln IR: `import_onnx(path_or_model, input_shapes=None) -> Module`.

The importer walks the graph in dependency order. Each node is either *folded* (every operand
is a constant, or it is `Shape`/`Size`: NumPy evaluates it now, `onnx_fold.py`) or *converted*
(a rule from the `onnx_ops_*` tables emits kiln ops). Initializers become `kiln.weight` ops
named after the initializer, other constants `kiln.constant` (≤ 16 elements) or weights, each
created where it is first used. Every op carries `Location(file=<model file>, scope=<node name
or op type>)`. Before converting anything, every op kiln cannot import is listed in one
`UnsupportedOpError`. Supported: opsets 9–21 of the default domain (older opsets as far as the
ONNX backend test models need them).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from kiln.errors import Diagnostic, ImportError_, KilnWarning, UnsupportedOpError
from kiln.frontend import onnx_ops_math, onnx_ops_nn, onnx_ops_quant, onnx_ops_shape
from kiln.frontend.onnx_fold import ALWAYS_FOLD, FOLDERS
from kiln.frontend.onnx_load import (
    MAX_ELEMENTS,
    InputShapes,
    check_initializer,
    check_names,
    default_opset,
    inferred_shapes,
    input_types,
    read_model,
    topo_order,
)
from kiln.frontend.onnx_node import Converter, Node, Operand, Result
from kiln.ir.builder import Builder, new_function
from kiln.ir.graph import Module, Value, clean_name
from kiln.ir.location import Location
from kiln.ir.serialize import warn_nonfinite

log = logging.getLogger("kiln.frontend.onnx")

CONVERTERS: dict[str, Converter] = {
    **onnx_ops_math.CONVERTERS, **onnx_ops_nn.CONVERTERS, **onnx_ops_shape.CONVERTERS,
    **onnx_ops_quant.CONVERTERS}
"""Every ONNX op type kiln converts into ops (FOLDERS lists those it can evaluate)."""

_DOMAINS = ("", "ai.onnx")
MAX_OPSET = 21
SMALL_CONSTANT = 16
"""Non-initializer constants up to this many elements become inline `kiln.constant`s."""


def import_onnx(path_or_model: str | Path | bytes | onnx.ModelProto, *,
                input_shapes: Mapping[str, Sequence[int]] | None = None) -> Module:
    """Import an ONNX model (a path, its bytes or a ModelProto) into a kiln Module.

    `input_shapes` pins graph inputs whose dimensions are symbolic (`{"x": (1, 3, 224, 224)}`);
    kiln's shapes are static.
    """
    model, file = read_model(path_or_model)
    return _Importer(model, file).run(input_shapes)


def supported_ops() -> list[str]:
    """ONNX op types kiln imports (some only when their operands are constants)."""
    return sorted(set(CONVERTERS) | set(FOLDERS))


class _Importer:
    def __init__(self, model: onnx.ModelProto, file: str | None) -> None:
        self.model = model
        self.graph = model.graph
        self.file = file
        self.opset = default_opset(model)
        if self.opset > MAX_OPSET:
            warnings.warn(f"ONNX opset {self.opset} is newer than kiln knows ({MAX_OPSET}); "
                          "ops whose semantics changed after it may be misread",
                          KilnWarning, stacklevel=3)
        name = clean_name(self.graph.name) or clean_name(Path(file).stem if file else None)
        self.module = Module(name or "model")
        self.initializers = {t.name: t for t in self.graph.initializer}
        self.cache: dict[str, Value] = {}
        self.builder: Builder | None = None

    def run(self, pinned: InputShapes | None) -> Module:
        check_names(self.graph)
        for tensor in self.graph.initializer:
            check_initializer(tensor)
        self._check_supported()
        inputs = input_types(self.graph, set(self.initializers), pinned)
        func, self.builder = new_function(self.module, "forward", list(inputs.values()),
                                          [clean_name(n) for n in inputs])
        env: dict[str, Operand] = {name: self._initializer(name) for name in self.initializers}
        env.update(zip(inputs, func.args))
        warn_nonfinite({n: a for n, a in env.items() if isinstance(a, np.ndarray)},
                       f"'{self.file}'" if self.file else "the ONNX model",
                       what="ONNX initializer")
        order = topo_order(self.graph, set(env))
        expected = inferred_shapes(self.model, inputs)
        used = {n for node in order for n in node.input} | {o.name for o in self.graph.output}
        for proto in order:
            self._convert(proto, env, expected, used)
        self.builder.ret(*(self._output(o.name, env) for o in self.graph.output))
        return self.module

    # -- checks --------------------------------------------------------------------------------
    def _check_supported(self) -> None:
        bad = [node for node in self.graph.node if node.domain not in _DOMAINS
               or (node.op_type not in CONVERTERS and node.op_type not in FOLDERS)]
        problems = [self._unsupported(node) for node in bad]
        kinds = sorted({node.op_type for node in bad})
        if self.graph.sparse_initializer:
            problems.append(Diagnostic("sparse initializers are not supported"))
            kinds.append("sparse initializers")
        if problems:
            raise UnsupportedOpError(diagnostics=[Diagnostic(
                f"the ONNX model uses {len(problems)} node(s) kiln cannot import "
                f"({', '.join(kinds)})",
                hint="kiln imports the op families of docs/ops.md; re-export the model "
                     "without these ops or decompose them"), *problems])

    def _unsupported(self, node: onnx.NodeProto) -> Diagnostic:
        domain = node.domain or "ai.onnx"
        return Diagnostic(f"{node.op_type} (node '{node.name}', domain '{domain}') is not "
                          "supported", loc=self._loc(node))

    def _loc(self, node: onnx.NodeProto) -> Location:
        return Location(file=self.file, scope=node.name or node.op_type)

    # -- values --------------------------------------------------------------------------------
    def _initializer(self, name: str) -> np.ndarray:
        try:
            return numpy_helper.to_array(self.initializers[name])
        except (ValueError, TypeError, KeyError, OSError) as exc:
            raise ImportError_(f"initializer '{name}' cannot be read: {exc}") from None

    def _materialize(self, name: str, array: np.ndarray) -> Value:
        """A constant as an op, created once per name where it is first needed."""
        if name and name in self.cache:
            return self.cache[name]
        assert self.builder is not None
        loc = Location(file=self.file, scope=name or None)
        symbol = clean_name(name)
        if name in self.initializers or array.size > SMALL_CONSTANT:
            value = self.builder.weight(symbol or "constant", array, loc=loc)
        else:
            value = self.builder.constant(array, name=symbol, loc=loc)
        if name:
            self.cache[name] = value
        return value

    def _output(self, name: str, env: dict[str, Operand]) -> Value:
        operand = env.get(name)
        if operand is None:
            raise ImportError_(f"graph output '{name}' is not produced by any node, input or "
                               "initializer")
        if isinstance(operand, np.ndarray):
            return self._materialize(name, operand)
        return operand

    # -- nodes ---------------------------------------------------------------------------------
    def _convert(self, proto: onnx.NodeProto, env: dict[str, Operand],
                 expected: dict[str, tuple[int, ...]], used: set[str]) -> None:
        assert self.builder is not None
        operands = [env[name] if name else None for name in proto.input]
        self._check_arity(proto)
        for attr in proto.attribute:
            if attr.type == onnx.AttributeProto.TENSOR:
                check_initializer(attr.t, f"attribute '{attr.name}' of ONNX node "
                                          f"{proto.op_type} '{proto.name}'")
        node = Node(proto, self.opset, operands, self.builder, self._materialize,
                    self._loc(proto))
        outputs = self._results(node, operands)
        for k, name in enumerate(proto.output):
            if not name:
                continue
            if k >= len(outputs):
                if name in used:
                    raise node.unsupported(f"output {k} ('{name}') is not supported")
                continue
            out = outputs[k]
            if isinstance(out, Value) and out.name is None:
                out.name = clean_name(name)
            self._check_shape(node, name, out, expected)
            if isinstance(out, Value) and out.type.numel > MAX_ELEMENTS:
                raise node.error(f"output '{name}' would have the shape {list(out.type.shape)}, "
                                 f"more than {MAX_ELEMENTS} elements",
                                 hint="the model file is corrupt, or far too large to compile")
            env[name] = out

    def _check_arity(self, proto: onnx.NodeProto) -> None:
        """Input and output counts within the op's ONNX schema: an `Add` with one input must
        not import as an identity, a `Gemm` with a fifth input must not drop it."""
        try:
            schema = onnx.defs.get_schema(proto.op_type, self.opset, "")
        except onnx.defs.SchemaError:
            return
        inputs, outputs = len(proto.input), len(proto.output)
        if not schema.min_input <= inputs <= schema.max_input or not (
                schema.min_output <= outputs <= schema.max_output):
            def span(low: int, high: int) -> str:
                return str(low) if low == high else f"{low} to {min(high, 99)}"
            raise ImportError_(diagnostics=[Diagnostic(
                f"ONNX {proto.op_type} '{proto.name}' has {inputs} input(s) and {outputs} "
                f"output(s); opset {self.opset} defines {span(schema.min_input, schema.max_input)}"
                f" input(s) and {span(schema.min_output, schema.max_output)} output(s)",
                loc=self._loc(proto), hint="the model is not valid ONNX; re-export it")])

    def _results(self, node: Node, operands: list[Operand]) -> list[Result]:
        op_type = node.op_type
        constant = all(o is None or isinstance(o, np.ndarray) for o in operands)
        if op_type in FOLDERS and (constant or op_type in ALWAYS_FOLD):
            try:
                return [np.asarray(a) for a in FOLDERS[op_type](node)]
            except (ValueError, IndexError, TypeError, ArithmeticError) as exc:
                raise node.error(f"cannot be evaluated at import time: {exc}") from None
        if op_type not in CONVERTERS:
            raise node.unsupported("is supported only when its inputs are constants (shape "
                                   "arithmetic evaluated at import time)")
        try:
            result: Any = CONVERTERS[op_type](node)
        except (ValueError, IndexError, TypeError, KeyError, ArithmeticError) as exc:
            raise node.error(f"cannot be imported ({type(exc).__name__}: {exc})",
                             hint="its attributes or inputs are malformed; if onnxruntime runs "
                                  "the model, please report this as a kiln bug") from None
        return [result] if isinstance(result, (Value, np.ndarray)) else list(result)

    def _check_shape(self, node: Node, name: str, out: Result,
                     expected: dict[str, tuple[int, ...]]) -> None:
        """kiln's inferred shape must agree with ONNX's own shape inference (when it knows)."""
        shape = out.type.shape if isinstance(out, Value) else tuple(out.shape)
        want = expected.get(name)
        if want is not None and want != shape:
            raise ImportError_(diagnostics=[Diagnostic(
                f"ONNX {node.label}: kiln computes shape {list(shape)} for '{name}', the model "
                f"(ONNX shape inference) says {list(want)}", loc=node.loc,
                hint="if the model's declared shapes are right, this is a bug in kiln's ONNX "
                     "importer: please report it with the model")])
        log.debug("%s -> %s %s", node.label, name, shape)

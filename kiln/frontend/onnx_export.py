"""kiln IR → ONNX: `export_onnx(module, path)` and `to_onnx(module) -> onnx.ModelProto`.

The entry function becomes the ONNX graph at **opset 17** (the newest opset with broad runtime
support that has LayerNormalization; kiln.gelu is decomposed because Gelu arrived in 20).
Weights become initializers under their kiln symbol, constants unnamed initializers, and each
op is translated by a rule of `onnx_export_ops.RULES`, keyed by op class. The model is checked
with `onnx.checker.check_model` before it is written. Quantized modules export as ONNX QDQ
(`onnx_export_quant.py`). An op with no ONNX form (fixed-point ops, fused regions) is a
`KilnError` naming the op and its location.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from kiln.errors import KilnError
from kiln.frontend.onnx_node import ONNX_DTYPES
from kiln.ir.graph import Func, Module, Op, Value
from kiln.ir.ops.core import Constant, Return, Weight
from kiln.ir.types import QuantType, ScalarType, TensorType

OPSET = 17
_ELEM_TYPES = {dtype: code for code, dtype in ONNX_DTYPES.items()}


def onnx_elem_type(ttype: TensorType, where: str) -> int:
    """ONNX element type of a kiln tensor type: q<> types export as their stored integers
    (QDQ, `onnx_export_quant`); KilnError for fixed point and bf16."""
    dtype = ttype.dtype.storage if isinstance(ttype.dtype, QuantType) else ttype.dtype
    if isinstance(dtype, ScalarType) and dtype in _ELEM_TYPES:
        return _ELEM_TYPES[dtype]
    raise KilnError(f"{where} has element type {dtype}, which kiln does not export to ONNX",
                    hint="export the float model (before quantize/fixed-point passes)")


class Emitter:
    """Collects ONNX nodes and initializers; gives every kiln Value one unique ONNX name."""

    def __init__(self, module: Module) -> None:
        self.module = module
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: dict[str, onnx.TensorProto] = {}
        self.names: dict[Value, str] = {}
        self.weight_names: dict[str, str] = {}
        self.taken: set[str] = set()
        self.counter = itertools.count()
        self.scope = "node"

    def fresh(self, hint: str | None = None) -> str:
        base = hint or "t"
        name = base
        while name in self.taken:
            name = f"{base}_{next(self.counter)}"
        self.taken.add(name)
        return name

    def name(self, value: Value) -> str:
        if value not in self.names:
            self.names[value] = self.fresh(value.name or "v")
        return self.names[value]

    def const(self, array: np.ndarray | list[int] | float, hint: str = "const",
              dtype: Any = None) -> str:
        """A new initializer holding `array`; returns its name."""
        data = np.asarray(array, dtype=dtype)
        name = self.fresh(hint)
        contiguous = np.ascontiguousarray(data).reshape(data.shape)  # keeps 0-d scalars 0-d
        self.initializers[name] = numpy_helper.from_array(contiguous, name)
        return name

    def ints(self, values: tuple[int, ...] | list[int], hint: str) -> str:
        return self.const(np.asarray(values, dtype=np.int64), hint)

    def node(self, op_type: str, inputs: list[str], outputs: list[str] | None = None,
             **attrs: Any) -> list[str]:
        """Append a node (fresh output names unless given); returns its output names."""
        outs = outputs if outputs is not None else [self.fresh(f"{self.scope}_{op_type}")]
        node_name = self.fresh(f"{self.scope}/{op_type}")
        self.nodes.append(helper.make_node(op_type, inputs, outs, name=node_name, **attrs))
        return outs


def to_onnx(module: Module) -> onnx.ModelProto:
    """The module's entry function as a checked ONNX model (opset 17)."""
    from kiln.frontend.onnx_export_ops import RULES
    from kiln.frontend.onnx_export_quant import QUANT_RULES

    func = module.main
    em = Emitter(module)
    inputs = [_value_info(em.name(arg), arg.type, f"input {arg.name or i}")
              for i, arg in enumerate(func.args)]
    for op in func.ops:
        if isinstance(op.kind, Return):
            break
        _export_op(em, op, {**RULES, **QUANT_RULES})
    outputs = _outputs(em, func)
    graph = helper.make_graph(em.nodes, _graph_name(module), inputs, outputs,
                              initializer=list(em.initializers.values()))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="kiln")
    model.ir_version = min(model.ir_version, 9)
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as exc:
        raise KilnError(f"the exported ONNX model does not pass onnx.checker: {exc}",
                        hint="this is a bug in kiln's ONNX exporter") from None
    return model


def export_onnx(module: Module, path: str | Path) -> None:
    """Write `module` as an ONNX model file (opset 17) runnable by onnxruntime."""
    model = to_onnx(module)
    Path(path).write_bytes(model.SerializeToString())


def _export_op(em: Emitter, op: Op, rules: dict[type, Any]) -> None:
    if isinstance(op.kind, Weight):
        em.names[op.result] = _weight(em, op)
        return
    if isinstance(op.kind, Constant):
        em.names[op.result] = em.const(op.kind.value.array, op.result.name or "const")
        return
    rule = rules.get(type(op.kind))
    if rule is None or op.region is not None:
        raise op.error("has no ONNX mapping",
                       hint="export the model before fusing or quantizing passes")
    for value in (*op.operands, *op.results):
        onnx_elem_type(value.type, f"a value of '{op.name}' at {op.loc.describe() or '?'}")
    em.scope = op.loc.scope or op.name.removeprefix("kiln.")
    rule(em, op, [em.name(v) for v in op.operands], [em.name(r) for r in op.results])


def _weight(em: Emitter, op: Op) -> str:
    """The initializer of a weight symbol (added once, under the symbol when it is free)."""
    assert isinstance(op.kind, Weight)
    symbol = op.kind.name
    if symbol in em.weight_names:
        return em.weight_names[symbol]
    if symbol not in em.module.weights:
        raise op.error(f"weight @{symbol} has no data (weights were elided)",
                       hint="load the module with its .npz before exporting")
    onnx_elem_type(op.result.type, f"weight @{symbol}")
    name = em.fresh(symbol)
    em.weight_names[symbol] = name
    em.initializers[name] = numpy_helper.from_array(
        np.ascontiguousarray(em.module.weights[symbol]), name)
    return name


def _outputs(em: Emitter, func: Func) -> list[onnx.ValueInfoProto]:
    """Graph outputs; a value returned twice, or an input returned as is, gets an Identity."""
    args = {em.names[a] for a in func.args}
    seen: set[str] = set()
    out = []
    for i, value in enumerate(func.outputs):
        name = em.name(value)
        if name in seen or name in args or name in em.initializers:
            name = em.node("Identity", [name], [em.fresh(f"output_{i}")])[0]
        seen.add(name)
        out.append(_value_info(name, value.type, f"output {i}"))
    return out


def _value_info(name: str, ttype: TensorType, where: str) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, onnx_elem_type(ttype, where), list(ttype.shape))


def _graph_name(module: Module) -> str:
    return module.name or "kiln"

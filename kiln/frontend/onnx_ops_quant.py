"""ONNX → kiln converters for QDQ models: QuantizeLinear and DequantizeLinear.

Quantized tensors become typed values: `QuantizeLinear(x, s, zp)` is `kiln.quantize` to
`q<storage, s, zp[, axis]>` (storage from the zero point's type, uint8 without one; ONNX's
`rint(x / s) + zp`, kiln's default `div` scheme), and `DequantizeLinear` is `kiln.dequantize`.
A DequantizeLinear of an initializer (onnxruntime stores quantized weights and int32 biases
this way) turns the initializer into a `kiln.weight` of q<> type holding the stored integers,
so weights stay integers in kiln too. The float ops between the pairs are imported as usual;
`fold-qdq` (or `quantize`, which calls it on such modules) turns the patterns into integer ops.
Blocked quantization (opset 21 `block_size`) and float8 types are not supported.
"""

from __future__ import annotations

import numpy as np

from kiln.frontend.onnx_node import Converter, Node, Result
from kiln.ir.graph import Value, clean_name
from kiln.ir.ops.core import Weight
from kiln.ir.ops.quant import Dequantize, Quantize
from kiln.ir.types import F16, F32, QuantType, TensorType, dtype_from_numpy


def _qtype(node: Node, rank: int) -> QuantType:
    """The q<> type of a node's (scale, zero point, axis); per tensor when the scale is 0-d."""
    if node.attr("block_size", 0):
        raise node.unsupported("blocked quantization (block_size) is not supported")
    scale = np.asarray(node.const(1, "scale"), np.float64)
    if node.has(2):
        zero = np.asarray(node.const(2, "zero point"))
    else:
        zero = np.zeros(scale.shape, _default_storage(node))
    storage = dtype_from_numpy(zero.dtype)
    if not storage.is_integer:
        raise node.unsupported(f"zero point of type {zero.dtype} is not supported "
                               "(kiln quantizes to integers)")
    scales = tuple(float(s) for s in scale.reshape(-1))
    zeros = tuple(int(z) for z in np.broadcast_to(zero, scale.shape).reshape(-1))
    if scale.size == 1:  # a 0-d scale, or a 1-element one (the same numbers on every axis)
        return QuantType(storage, scales, zeros)
    axis = int(node.attr("axis", 1))
    return QuantType(storage, scales, zeros, axis + rank if axis < 0 else axis)


def _default_storage(node: Node) -> np.dtype:
    """QuantizeLinear without a zero point produces uint8 (or its opset-21 output_dtype)."""
    from kiln.frontend.onnx_node import numpy_dtype
    out = int(node.attr("output_dtype", 0))
    return numpy_dtype(out) if out else np.dtype(np.uint8)


def _quantize(node: Node) -> Result:
    x = node.value(0)
    return node.emit(Quantize(to=_qtype(node, x.type.rank)), x)


def _float_type(node: Node) -> object:
    return F16 if np.asarray(node.const(1, "scale")).dtype == np.float16 else F32


def _dequantize(node: Node) -> Result:
    operand = node.operand(0)
    q = _qtype(node, len(operand.shape) if isinstance(operand, np.ndarray)
               else operand.type.rank)
    if isinstance(operand, np.ndarray):
        value = _typed_weight(node, operand, q)
    else:
        value = operand
        if value.type.dtype != q:
            raise node.unsupported(
                f"dequantizes a tensor of type {value.type.dtype} with parameters {q}; "
                "kiln supports DequantizeLinear with the parameters of its QuantizeLinear",
                hint="give the DequantizeLinear the scale and zero point of its input")
    return node.emit(Dequantize(to=_float_type(node)), value)  # type: ignore[arg-type]


def _typed_weight(node: Node, array: np.ndarray, q: QuantType) -> Value:
    """An initializer of stored integers as a `kiln.weight` of type q<>."""
    if array.dtype != q.storage.numpy:
        raise node.error(f"input of type {array.dtype} does not match its zero point's "
                         f"type {q.storage}")
    module = node.builder.module
    assert module is not None
    symbol = module.add_weight(clean_name(node.input_name(0)) or "qweight", array)
    return node.builder.add(Weight(name=symbol, type=TensorType(array.shape, q)), name=symbol,
                            loc=node.loc)


CONVERTERS: dict[str, Converter] = {
    "QuantizeLinear": _quantize,
    "DequantizeLinear": _dequantize,
}

"""QDQ folding: dequantize → float op → quantize patterns become integer `kiln.q*` ops.

ONNX QDQ models (onnxruntime's `quantize_static`) and PyTorch fake-quant graphs import as float
ops between `kiln.dequantize` and `kiln.quantize` (with `kiln.weight`s of q<> type for stored
weights and int32 biases). Each pattern is anchored at a `kiln.quantize` whose type `to` is
per-tensor 8-bit and replaces that quantize's result; the float ops stay for other readers and
are otherwise removed by dce:

    quantize(act?(conv(dq(x), dq(w), dq(b)?)))         →  qconv1d/qconv2d(x, w, b32)
    quantize(act?(add?(linear(dq(x), dq(w), ·?), b)))  →  qlinear(x, w, b32)   (Gemm imports)
    quantize(act?(matmul(dq(a), dq(b))))               →  qmatmul(a, b)
    quantize(act?(add(dq(a), dq(b))))                  →  qadd(a, b)
    quantize(f(dq(a))), f a max pool or shape op       →  qrescale?(f(a))
    quantize(act(dq(a))), act relu/relu6/clamp         →  qrescale?(clamp(a))
    quantize(avg(dq(a))), avg an average pool or mean  →  qrescale?(qavg(a))
    quantize(dq(a))                                    →  a, or qrescale(a)

`act` becomes the integer op's output clamp. `b32 = rint(b / (s_x · s_w[c]))` recovers a stored
int32 bias exactly when its scale is s_x · s_w (as onnxruntime writes it) and quantizes a float
bias otherwise; `qrescale?` is present only when the types differ. Multipliers come from the
scales as in the quantize pass, so a folded model computes what `quantize` would emit for the
same types (and may differ from onnxruntime's float requantization by one unit on ties).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from kiln.errors import KilnError
from kiln.ir import fixed, requant
from kiln.ir.graph import Module, Op, Value
from kiln.ir.ops import elementwise as ew
from kiln.ir.ops import nn_conv, shape
from kiln.ir.ops.core import Weight
from kiln.ir.ops.quant import Dequantize, Quantize
from kiln.ir.rewriter import Rewriter, apply_patterns
from kiln.ir.types import I32, QuantType, TensorType
from kiln.passes.dce import dce
from kiln.passes.fold_constants import known_value
from kiln.passes.quantize_layers import (
    ACTIVATIONS,
    Group,
    clamp_range,
    output_attrs,
    plan_add,
    product_kind,
    rescale_kind,
)
from kiln.passes.quantize_lower import PASSTHROUGH, integer_average
from kiln.passes.registry import PassContext, register_pass

CONV_LIKE = (nn_conv.Conv1d, nn_conv.Conv2d, nn_conv.Linear)
"""Products whose bias is an operand."""
PRODUCTS = (*CONV_LIKE, nn_conv.MatMul)


# -- reading QDQ values ----------------------------------------------------------------------------
def dq_source(value: Value) -> Value | None:
    """x when `value` = dequantize(x) with x of a q<> type."""
    op = value.producer
    if op is None or not isinstance(op.kind, Dequantize):
        return None
    x = op.operands[0]
    return x if isinstance(x.type.dtype, QuantType) else None


def eight_bit(value: Value | None) -> QuantType | None:
    """The per-tensor 8-bit q<> type of `value`, or None."""
    q = None if value is None else value.type.dtype
    if isinstance(q, QuantType) and q.storage.bits <= 8 and q.axis is None:
        return q
    return None


def constant_array(value: Value, module: Module, depth: int = 4) -> np.ndarray | None:
    """The array a value always holds: a constant or weight, or a short pure chain over them
    (quantize(w), clamp(quantize(w)) of fake-quantized weights) evaluated by its references."""
    known = known_value(value, module)
    op = value.producer
    if known is not None or depth == 0 or op is None or op.region is not None:
        return known
    if not op.operands or len(op.results) != 1:
        return None
    found = [constant_array(v, module, depth - 1) for v in op.operands]
    args = [a for a in found if a is not None]
    if len(args) != len(found):
        return None
    try:
        (out,) = op.kind.reference_typed([v.type for v in op.operands], *args)
    except (KilnError, NotImplementedError, ValueError, TypeError):
        return None
    return np.asarray(out)


def const_ints(value: Value, module: Module) -> tuple[np.ndarray, QuantType] | None:
    """Stored integers and type of a constant q<> value (a typed weight, quantize(const))."""
    q = value.type.dtype
    if not isinstance(q, QuantType):
        return None
    stored = constant_array(value, module)
    return None if stored is None else (stored, q)


def real_constant(value: Value, module: Module) -> np.ndarray | None:
    """A constant as float64: dequantized stored integers, or a float constant."""
    source = dq_source(value)
    if source is not None:
        found = const_ints(source, module)
        return None if found is None else fixed.dequantize_affine(found[0], found[1], np.float64)
    array = known_value(value, module)
    return None if array is None or not value.type.dtype.is_float else np.asarray(array, float)


# -- matching --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Chain:
    """What feeds a quantize: an anchor op, an optional bias add, an optional activation."""

    anchor: Op
    bias: Value | None
    act: Op | None


def match_chain(quantize: Op, module: Module) -> Chain | None:
    """act?(anchor) or act?(add(linear|matmul, constant bias)) feeding `quantize`."""
    op = quantize.operands[0].producer
    act = None
    if op is not None and isinstance(op.kind, ACTIVATIONS) and dq_source(op.operands[0]) is None:
        act, op = op, op.operands[0].producer
    if op is None:
        return None
    bias = op.operands[2] if isinstance(op.kind, CONV_LIKE) and len(op.operands) == 3 else None
    inner = op.operands[0].producer if isinstance(op.kind, ew.Add) else None
    if (inner is not None and isinstance(inner.kind, (nn_conv.Linear, nn_conv.MatMul))
            and len(inner.operands) == 2 and real_constant(op.operands[1], module) is not None):
        return Chain(inner, op.operands[1], act)
    return Chain(op, bias, act)



def _bias_ints(bias: Value, module: Module, s_x: float, w: QuantType,
               channels: int) -> np.ndarray | None:
    real = real_constant(bias, module)
    if real is None or real.size != channels:
        return None
    scales = s_x * np.broadcast_to(np.asarray(w.scale, np.float64), (channels,))
    return np.clip(np.rint(real.reshape(-1) / scales), requant.INT32_MIN,
                   requant.INT32_MAX).astype(np.int32)


# -- rewriting -------------------------------------------------------------------------------------
def _finish(quantize: Op, rw: Rewriter, value: Value) -> bool:
    """Bring `value` (q<>) to the quantize's type with a qrescale if needed; replace it."""
    to = quantize.result.type.dtype
    assert isinstance(to, QuantType)
    src = value.type.dtype
    if src != to:
        assert isinstance(src, QuantType)
        try:
            kind = rescale_kind(src, to)
        except KilnError:
            return False
        value = rw.builder_before(quantize).add(kind, value, name=quantize.result.name)
    rw.replace_uses(quantize.result, value)
    rw.erase_op(quantize)
    return True


def _new_weight(rw: Rewriter, before: Op, name: str, array: np.ndarray,
                ttype: TensorType) -> Value:
    symbol = rw.module.add_weight(name, array)
    return rw.builder_before(before).add(Weight(name=symbol, type=ttype), name=symbol)


@dataclass(frozen=True)
class Rhs:
    """The second operand of an integer product: an existing q<> value, or new stored ints."""

    type: QuantType
    value: Value | None = None
    array: np.ndarray | None = None

    def materialize(self, rw: Rewriter, before: Op, name: str) -> Value:
        if self.value is not None:
            return self.value
        assert self.array is not None
        return _new_weight(rw, before, name, self.array, TensorType(self.array.shape, self.type))


def _rhs(anchor: Op, module: Module) -> Rhs | None:
    """A matmul's activation rhs, or the dequantized constant weight of a product (8-bit,
    per tensor or along the output-channel axis)."""
    is_matmul = isinstance(anchor.kind, nn_conv.MatMul)
    source = dq_source(anchor.operands[1])
    if source is None:
        return None
    if is_matmul and eight_bit(source) is not None:
        return Rhs(source.type.dtype, value=source)  # type: ignore[arg-type]
    found = const_ints(source, module)
    axis = anchor.operands[1].type.rank - 1 if is_matmul else 0
    if found is None or found[1].storage.bits > 8 or found[1].axis not in (None, axis):
        return None
    producer = source.producer
    reuse = producer is not None and isinstance(producer.kind, Weight)
    return Rhs(found[1], value=source if reuse else None, array=found[0])


def _product_operands(chain: Chain, module: Module) -> tuple[Value, Rhs, np.ndarray | None] | None:
    """(x, rhs, int32 bias or None) of a product chain, or None when it cannot fold."""
    anchor = chain.anchor
    x = dq_source(anchor.operands[0])
    qx = eight_bit(x)
    rhs = _rhs(anchor, module)
    if x is None or qx is None or rhs is None:
        return None
    if chain.bias is None:
        return x, rhs, None
    if isinstance(anchor.kind, nn_conv.MatMul):
        return None
    channels = anchor.operands[1].type.shape[0]
    bias = _bias_ints(chain.bias, module, qx.scale[0], rhs.type, channels)
    return None if bias is None else (x, rhs, bias)


def fold_product(op: Op, rw: Rewriter) -> bool:
    """quantize(act?(conv|linear|matmul(dq(x), dq(w), b?))) → kiln.q* (module docstring)."""
    to = eight_bit(op.result) if isinstance(op.kind, Quantize) else None
    chain = match_chain(op, rw.module) if to is not None else None
    if to is None or chain is None or not isinstance(chain.anchor.kind, PRODUCTS):
        return False
    found = _product_operands(chain, rw.module)
    if found is None:
        return False
    x, rhs, bias = found
    qx = eight_bit(x)
    assert qx is not None  # checked by _product_operands
    s_x = qx.scale[0]
    try:
        attrs = output_attrs(s_x, rhs.type.scale, chain.act, to)
    except KilnError:
        return False
    base = chain.anchor.result.name or op.result.name or "layer"
    operands = [x, rhs.materialize(rw, op, f"{base}.qweight")]
    if bias is not None:
        operands.append(_new_weight(rw, op, f"{base}.qbias", bias, TensorType(bias.shape, I32)))
    kind = product_kind(chain.anchor.kind, attrs)
    new = rw.builder_before(op).add(kind, *operands, name=op.result.name)
    return _finish(op, rw, new)


def fold_add(op: Op, rw: Rewriter) -> bool:
    """quantize(act?(add(dq(a), dq(b)))) → kiln.qadd(a, b)."""
    to = eight_bit(op.result) if isinstance(op.kind, Quantize) else None
    chain = match_chain(op, rw.module) if to is not None else None
    if chain is None or chain.bias is not None or not isinstance(chain.anchor.kind, ew.Add):
        return False
    sources = [dq_source(v) for v in chain.anchor.operands]
    if any(eight_bit(s) is None for s in sources):
        return False
    group = Group(chain.anchor, chain.act)
    types = {**{v: eight_bit(s) for v, s in zip(chain.anchor.operands, sources)},
             group.out: to}
    try:
        plan = plan_add(group, types.get)
    except KilnError:
        return False
    new = rw.builder_before(op).add(plan.kind, *sources,  # type: ignore[arg-type]
                                    name=op.result.name)
    return _finish(op, rw, new)


def fold_unary(op: Op, rw: Rewriter) -> bool:
    """quantize(f(dq(a))) for shape ops, max pools, activations and averages; quantize(dq(a))."""
    if not isinstance(op.kind, Quantize) or eight_bit(op.result) is None:
        return False
    y = op.operands[0]
    direct = dq_source(y)
    if eight_bit(direct) is not None:
        assert direct is not None
        return _finish(op, rw, direct)
    f = y.producer
    if f is None or len(f.results) != 1 or not f.operands:
        return False
    a = dq_source(f.operands[0])
    qa = eight_bit(a)
    if a is None or qa is None or len(f.operands) != 1:
        return False
    kind = _unary_kind(f, qa)
    if kind is None:
        return False
    new = rw.builder_before(op).add(kind, a, name=op.result.name)  # type: ignore[arg-type]
    return _finish(op, rw, new)


def _unary_kind(f: Op, qa: QuantType) -> object | None:
    kind = f.kind
    if isinstance(kind, ACTIVATIONS):
        low, high = clamp_range(f, qa)
        return ew.Clamp(min=None if low is None else float(low),
                        max=None if high is None else float(high))
    if isinstance(kind, shape.Split):
        return None
    if isinstance(kind, shape.Pad):
        if kind.mode == "constant" and kind.value != 0.0:
            return None
        return dataclasses.replace(kind, value=float(qa.zero_point[0]))
    if isinstance(kind, PASSTHROUGH):
        return kind
    return integer_average(f)


PATTERNS = (fold_product, fold_add, fold_unary)


def fold_qdq_module(module: Module) -> int:
    """Apply the patterns to a fixed point, then drop what died; returns the patterns fired."""
    changes = apply_patterns(module, PATTERNS)
    if changes:
        dce(module, PassContext("dce"))
    return changes


@register_pass("fold-qdq")
def fold_qdq(module: Module, ctx: PassContext) -> bool:
    """Fold dequantize → float op → quantize patterns (QDQ models) into integer kiln.q* ops."""
    changes = fold_qdq_module(module)
    ctx.count("patterns-folded", changes)
    return changes > 0

"""Per-op cost analysis: floating-point operations and bytes moved, from static types alone.

Targets build latency, energy and area models on top of these counts, and reports show them, so
the rules are a table keyed by op class (`FLOP_RULES`): adding an op without adding a rule makes
`op_flops` raise, and a test walks every registered op. Conventions:

- **Products** (conv1d/2d, conv_transpose2d, linear, matmul): 2 flops per multiply-accumulate.
  A forward conv has N·Cout·spatial_out·(Cin/groups)·kernel MACs; a transposed conv
  N·Cin·spatial_in·(Cout/groups)·kernel; linear and matmul output·K. The bias seeds the
  accumulator and costs nothing: the same convention as `torch.utils.flop_counter`, fvcore and
  ptflops, so the counts compare exactly.
- **Elementwise**: per output element, the number of primitive operations in the op's formula
  (`ELEMENTWISE_FLOPS`); a transcendental function (exp, log, sqrt, rsqrt, reciprocal, erf,
  tanh) counts as one operation, so `exp` is 1, `sigmoid = 1/(1+e^-x)` is 4, exact `gelu` 5.
- **Reductions**: one per input element (each is combined once); a mean adds one division per
  output element. **Pools**: the window size per output element (max: comparisons; average:
  additions plus the divide); adaptive pools the bin area per output element.
- **Normalizations** (small constants per element, formulas in their rules): inference
  batch_norm 2 (`x·s + t` once folded), layer_norm 5 (+1 per affine operand), softmax and
  log_softmax 5, local_response_norm `size + 5`.
- **Quantization**: quantize 4 per element (divide, round, add zero point, clamp), dequantize 2,
  requantize 4; integer products (`kiln.qconv2d`, ...) their MACs plus 4 per output for the
  requantization, `qadd` 9 (two input rescales, the add, the output requantization),
  `qrescale` 4, integer average pools and means as their float twins. **Data movement**
  (transpose, concat, split, slice, pad, expand, cast): 0 flops, but they copy, so they move
  bytes. **Free** (`FREE_OPS`): weights, constants, terminators and views that need no copy
  (reshape, flatten, squeeze, unsqueeze, identity, dropout): 0 flops, 0 bytes.
- **Fused** groups: flops are the sum over their region; bytes are only what crosses the group's
  boundary (its operands and results), because keeping intermediates out of memory is the point.
- **Channel-last twins** (`conv2d_nhwc`, ...) cost exactly what their NCHW op costs.

Bytes are operands read plus results written, each element `ceil(bits / 8)` bytes of its element
type (fixed<W,I> and q<> by their width; bool one byte). Sparse encodings are counted dense.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from kiln.errors import KilnError
from kiln.ir.graph import Block, Func, Module, Op
from kiln.ir.ops import (
    core,
    elementwise,
    fixed_norm,
    fused,
    lut,
    nn_conv,
    nn_norm,
    nn_pool,
    qnn,
    qnn_eltwise,
    qnn_pool,
    quant,
    reduce,
    shape,
)
from kiln.ir.ops.base import OpDef
from kiln.ir.ops.layout import (
    CHANNELS_LAST,
    NCHW_FROM_NHWC,
    OIHW_FROM_HWIO,
    ChannelsLast,
    permute_type,
)
from kiln.ir.types import TensorType


@dataclass(frozen=True)
class OpCost:
    """What one op costs: floating-point (or integer arithmetic) operations and bytes moved."""

    op: Op
    flops: int
    bytes: int


@dataclass(frozen=True)
class Site:
    """What a cost rule sees: the op kind, operand and result types, and its region if any.

    Rules take this rather than an `Op` so that one rule can price an equivalent op that is
    not in any graph (an NHWC twin is priced as its NCHW op on permuted types)."""

    kind: OpDef
    operands: tuple[TensorType, ...]
    results: tuple[TensorType, ...]
    region: Block | None = None

    @staticmethod
    def of(op: Op) -> Site:
        return Site(op.kind, tuple(v.type for v in op.operands),
                    tuple(r.type for r in op.results), op.region)

    @property
    def out(self) -> int:
        """Elements of the results, together."""
        return sum(t.numel for t in self.results)


FlopRule = Callable[[Site], int]


def type_bytes(t: TensorType) -> int:
    """Storage of a tensor: elements times `ceil(bits / 8)` of its element type."""
    return t.numel * max(1, -(-t.dtype.bits // 8))


# -- products ----------------------------------------------------------------------------------
def conv_flops(site: Site) -> int:
    """2·MACs; a forward conv's MACs = output elements · (Cin/groups) · kernel elements."""
    w = site.operands[1]
    return 2 * site.out * w.shape[1] * math.prod(w.shape[2:])


def conv_transpose_flops(site: Site) -> int:
    """2·MACs; each input element meets (Cout/groups) · kernel weights (weight: Cin, Cout/g, k)."""
    w = site.operands[1]
    return 2 * site.operands[0].numel * w.shape[1] * math.prod(w.shape[2:])


def contraction_flops(site: Site) -> int:
    """linear and matmul: 2 · output elements · contracted length (the lhs's last dim)."""
    return 2 * site.out * site.operands[0].shape[-1]


# -- elementwise -------------------------------------------------------------------------------
ELEMENTWISE_FLOPS: dict[type[OpDef], int] = {
    elementwise.Add: 1, elementwise.Sub: 1, elementwise.Mul: 1, elementwise.Div: 1,
    elementwise.Pow: 1, elementwise.Maximum: 1, elementwise.Minimum: 1,
    elementwise.Neg: 1, elementwise.Abs: 1, elementwise.Relu: 1,
    elementwise.Sqrt: 1, elementwise.Rsqrt: 1, elementwise.Reciprocal: 1,
    elementwise.Exp: 1, elementwise.Log: 1, elementwise.Erf: 1, elementwise.Tanh: 1,
    elementwise.Relu6: 2,          # max, min
    elementwise.LeakyRelu: 2,      # compare-select, multiply
    elementwise.Sigmoid: 4,        # neg, exp, add, reciprocal
    elementwise.Silu: 5,           # sigmoid, multiply
    elementwise.Hardsigmoid: 4,    # multiply by 1/6, add 1/2, max, min
    elementwise.Hardswish: 5,      # add 3, max, min, multiply by 1/6, multiply by x
}
"""Operations per output element of each elementwise op (gelu and clamp have rules below)."""


def per_element(count: int) -> FlopRule:
    """A rule charging `count` operations per output element."""
    return lambda site: count * site.out


def gelu_flops(site: Site) -> int:
    """Exact 0.5·x·(1 + erf(x/√2)): 5; tanh form: x³ (2), ·c, +x, ·√(2/π), tanh, +1, ·x, ·½: 9."""
    tanh = getattr(site.kind, "approximate", "none") == "tanh"
    return (9 if tanh else 5) * site.out


def clamp_flops(site: Site) -> int:
    """One max or min per present bound."""
    bounds = sum(getattr(site.kind, b, None) is not None for b in ("min", "max"))
    return bounds * site.out


# -- reductions, pools, normalizations ---------------------------------------------------------
def reduce_flops(site: Site) -> int:
    """Each input element is combined once."""
    return site.operands[0].numel


def reduce_mean_flops(site: Site) -> int:
    """The sum, then one division per output element."""
    return site.operands[0].numel + site.out


def window_pool_flops(site: Site) -> int:
    """Kernel elements per output element (comparisons; or additions plus the divide)."""
    kernel: tuple[int, ...] = getattr(site.kind, "kernel", ())
    return math.prod(kernel) * site.out


def adaptive_pool_flops(site: Site) -> int:
    """Each output element sums its bin and divides once: N·C · Π over axes of Σ bin lengths."""
    x, y = site.operands[0], site.results[0]
    total = math.prod(x.shape[:2])
    for size, out in zip(x.shape[2:], y.shape[2:]):
        total *= sum(-(-(i + 1) * size // out) - i * size // out for i in range(out))
    return total


def layer_norm_flops(site: Site) -> int:
    """mean, subtract, square, variance sum, scale by rsqrt: 5; +1 each for weight and bias."""
    return (5 + len(site.operands) - 1) * site.out


def lrn_flops(site: Site) -> int:
    """square, `size` window additions, ·alpha/size, +k, pow, divide: size + 5 per element."""
    return (getattr(site.kind, "size", 1) + 5) * site.out


def fused_flops(site: Site) -> int:
    """The sum over the region's ops."""
    return sum(op_flops(inner) for inner in site.region.ops) if site.region else 0


def channels_last_flops(site: Site) -> int:
    """An NHWC twin costs what its NCHW op costs on the same data (types permuted back)."""
    kind = site.kind
    if not isinstance(kind, ChannelsLast):
        raise KilnError(f"{kind.NAME} is not a channel-last op")
    operands = [permute_type(site.operands[0], NCHW_FROM_NHWC), *site.operands[1:]]
    if kind.HAS_WEIGHT and len(operands) > 1:
        operands[1] = permute_type(operands[1], OIHW_FROM_HWIO)
    results = tuple(permute_type(t, NCHW_FROM_NHWC) for t in site.results)
    twin = kind.nchw()
    return FLOP_RULES[type(twin)](Site(twin, tuple(operands), results))


def requant_flops(products: FlopRule) -> FlopRule:
    """An integer product op (`kiln.qconv2d`, ...): its MACs plus the output requantization
    (multiply, shift, add zero point, clamp: 4 per output element)."""
    return lambda site: products(site) + 4 * site.out


REQUANT_FLOPS = 4
"""Integer operations to requantize one accumulator: multiply, rounding shift, add the zero
point, clamp."""


def plus_per_element(rule: FlopRule, count: int) -> FlopRule:
    """`rule`, plus `count` operations per output element."""
    return lambda site: rule(site) + count * site.out


def _zero(site: Site) -> int:
    return 0


FREE_OPS: frozenset[type[OpDef]] = frozenset({
    core.Weight, core.Constant, core.Return, core.Yield, shape.Reshape, shape.Flatten,
    shape.Squeeze, shape.Unsqueeze, shape.Identity, shape.Dropout,
})
"""Ops that cost nothing: no arithmetic, and no copy (weights and literals are read by their
users; views only relabel a buffer)."""

DATA_MOVEMENT_OPS: frozenset[type[OpDef]] = frozenset({
    shape.Transpose, shape.Concat, shape.Split, shape.Slice, shape.Pad, shape.Expand, core.Cast,
})
"""Ops with no arithmetic that still copy their elements."""

FLOP_RULES: dict[type[OpDef], FlopRule] = {
    **{cls: _zero for cls in FREE_OPS | DATA_MOVEMENT_OPS},
    **{cls: per_element(n) for cls, n in ELEMENTWISE_FLOPS.items()},
    elementwise.Gelu: gelu_flops,
    elementwise.Clamp: clamp_flops,
    nn_conv.Conv1d: conv_flops,
    nn_conv.Conv2d: conv_flops,
    nn_conv.ConvTranspose2d: conv_transpose_flops,
    nn_conv.Linear: contraction_flops,
    nn_conv.MatMul: contraction_flops,
    nn_norm.BatchNorm: per_element(2),
    nn_norm.LayerNorm: layer_norm_flops,
    nn_norm.Softmax: per_element(5),        # max, subtract, exp, sum, divide
    nn_norm.LogSoftmax: per_element(5),     # max, subtract, exp, sum, subtract the log-sum
    nn_norm.LocalResponseNorm: lrn_flops,
    **{cls: window_pool_flops for cls in (nn_pool.MaxPool1d, nn_pool.MaxPool2d,
                                          nn_pool.AvgPool1d, nn_pool.AvgPool2d)},
    nn_pool.AdaptiveAvgPool1d: adaptive_pool_flops,
    nn_pool.AdaptiveAvgPool2d: adaptive_pool_flops,
    **{cls: channels_last_flops for cls in CHANNELS_LAST.values()},
    reduce.ReduceSum: reduce_flops,
    reduce.ReduceMax: reduce_flops,
    reduce.ReduceMin: reduce_flops,
    reduce.ReduceMean: reduce_mean_flops,
    quant.Quantize: per_element(4),
    quant.Dequantize: per_element(2),
    quant.Requantize: per_element(4),
    lut.FixedActivation: per_element(4),  # index shift, clamp, table read (hard ones: ÷6)
    lut.LutSoftmax: per_element(5),        # max, subtract, exp read, sum, multiply
    fixed_norm.FixedLayerNorm: per_element(8),  # sum, D·x - S, square, add, c·R, round,
                                                # ·gamma + beta (1/sqrt: one read per row)
    fixed_norm.FixedGelu: per_element(4),  # index shift, clamp, table read, x·Φ
    qnn.QConv1d: plus_per_element(conv_flops, REQUANT_FLOPS),
    qnn.QConv2d: plus_per_element(conv_flops, REQUANT_FLOPS),
    qnn.QLinear: plus_per_element(contraction_flops, REQUANT_FLOPS),
    qnn.QMatMul: plus_per_element(contraction_flops, REQUANT_FLOPS),
    qnn.QAdd: per_element(2 * 2 + 1 + REQUANT_FLOPS),  # rescale both sides, add, requantize
    qnn.QRescale: per_element(REQUANT_FLOPS),
    qnn_pool.QAvgPool1d: plus_per_element(window_pool_flops, 1),  # + the zero point
    qnn_pool.QAvgPool2d: plus_per_element(window_pool_flops, 1),
    qnn_pool.QReduceMean: plus_per_element(reduce_mean_flops, 1),
    **{cls: requant_flops(rule) for cls, rule in ((qnn.QConv1d, conv_flops),
                                                  (qnn.QConv2d, conv_flops),
                                                  (qnn.QLinear, contraction_flops),
                                                  (qnn.QMatMul, contraction_flops))},
    qnn.QAdd: per_element(9),
    qnn_eltwise.QMul: per_element(7),  # subtract both zero points, multiply, requantize
    qnn_eltwise.QLut: per_element(1),  # one table read
    qnn.QRescale: per_element(4),
    qnn_pool.QAvgPool1d: window_pool_flops,
    qnn_pool.QAvgPool2d: window_pool_flops,
    qnn_pool.QReduceMean: reduce_mean_flops,
    fused.Fused: fused_flops,
}
"""Op class → flop rule. Every registered op has an entry (a test checks it)."""


def _rule(op: Op) -> FlopRule:
    rule = FLOP_RULES.get(type(op.kind))
    if rule is None:
        raise op.error("has no cost rule",
                       hint="add its op class to kiln.ir.costs.FLOP_RULES (or FREE_OPS)")
    return rule


def op_flops(op: Op) -> int:
    """Arithmetic operations `op` performs (see the module docstring for the conventions)."""
    return _rule(op)(Site.of(op))


def op_bytes(op: Op) -> int:
    """Bytes `op` reads (its operands) plus writes (its results); 0 for free ops."""
    _rule(op)
    if type(op.kind) in FREE_OPS:
        return 0
    values = [*op.operands, *op.results]
    return sum(type_bytes(v.type) for v in values)


def func_costs(func: Func) -> list[OpCost]:
    """One `OpCost` per top-level op of `func`, in order (a fused op stands for its region)."""
    return [OpCost(op, op_flops(op), op_bytes(op)) for op in func.ops]


def module_flops(module: Module) -> int:
    """Total flops over every function of `module`."""
    return sum(c.flops for f in module.funcs.values() for c in func_costs(f))


def _leaf_ops(ops: Iterable[Op]) -> Iterable[Op]:
    """Ops that are not fused groups, region contents included."""
    for op in ops:
        if op.region is not None:
            yield from _leaf_ops(op.region.ops)
        else:
            yield op


def module_summary(module: Module) -> dict[str, object]:
    """Totals (`flops`, `bytes`, `params`: parameter elements, `param_bytes`) and
    `flops_by_op` (op name → flops, ops inside fused groups under their own names)."""
    costs = [c for f in module.funcs.values() for c in func_costs(f)]
    by_op: Counter[str] = Counter()
    for func in module.funcs.values():
        for op in _leaf_ops(func.ops):
            by_op[op.name] += op_flops(op)
    weights = {op.kind.name: op.kind.type for op in module.walk()
               if isinstance(op.kind, core.Weight)}
    return {
        "flops": sum(c.flops for c in costs),
        "bytes": sum(c.bytes for c in costs),
        "params": sum(t.numel for t in weights.values()),
        "param_bytes": sum(type_bytes(t) for t in weights.values()),
        "flops_by_op": {name: n for name, n in sorted(by_op.items()) if n},
    }


def check_rules(op_classes: Iterable[type[OpDef]]) -> list[str]:
    """Names of the op classes among `op_classes` that have no cost rule (for tests)."""
    return sorted(cls.NAME for cls in op_classes if cls not in FLOP_RULES)


__all__ = ["DATA_MOVEMENT_OPS", "ELEMENTWISE_FLOPS", "FLOP_RULES", "FREE_OPS", "OpCost",
           "check_rules", "func_costs", "module_flops", "module_summary", "op_bytes",
           "op_flops", "type_bytes"]

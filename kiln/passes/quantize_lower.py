"""The integer lowering of the quantize pass: float ops → `kiln.q*` ops, mixed precision.

Every float value that gets an integer form has a *twin*: a q<>-typed value holding the same
numbers. The lowering walks the entry function once, in order:

- **anchors** (conv1d/conv2d/linear/matmul, and add of two activations) with the relu / relu6 /
  clamp that alone reads their result become one integer op (`quantize_layers`); its operands
  are the twins of its float inputs — a `kiln.quantize` is inserted for a float input that has
  none (the model's inputs, the output of a layer kept in float);
- **shape ops and max pooling** on a value with a twin run on the twin (they are dtype-generic
  and keep the q<> type); constant padding pads with the zero point; relu/relu6/clamp there
  become `kiln.clamp` on stored integers; concat first brings every input to the output's
  calibrated type with `kiln.qrescale`; average pools and means become `kiln.qavg_pool*` /
  `kiln.qreduce_mean` (same type);
- **unary functions and products** of twins (hardswish, sigmoid, gelu, ..., the
  squeeze-excitation gate's mul) become `kiln.qlut` tables and `kiln.qmul` (`quantize_eltwise`);
- **everything else** (softmax, layer_norm, ...) stays in float.

Each lowered op's float result is replaced by `kiln.dequantize(twin)`, so float consumers keep
working (that is the mixed-precision boundary) and integer consumers find the twin through the
dequantize. Dequantizes nobody reads, and the float weights, are removed afterwards (dce).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from kiln.errors import KilnError
from kiln.ir.graph import Module, Op, Value
from kiln.ir.ops import elementwise as ew
from kiln.ir.ops import nn_conv, nn_pool, qnn_pool, reduce, shape
from kiln.ir.ops.core import Weight
from kiln.ir.ops.quant import Dequantize, Quantize
from kiln.ir.rewriter import Rewriter
from kiln.ir.types import QuantType
from kiln.passes.calibrate import TensorStats, activation_type, observe_range
from kiln.passes.fold_constants import known_value
from kiln.passes.quantize_eltwise import plan_mul, table_kind, table_ops
from kiln.passes.quantize_layers import (
    LayerPlan,
    clamp_range,
    find_group,
    plan_add,
    plan_product,
    rescale_kind,
)
from kiln.passes.quantize_options import QuantOptions

PASSTHROUGH = (nn_pool.MaxPool1d, nn_pool.MaxPool2d, shape.Reshape, shape.Flatten,
               shape.Transpose, shape.Squeeze, shape.Unsqueeze, shape.Slice, shape.Split,
               shape.Expand, shape.Identity, shape.Dropout, shape.Pad)
"""Ops that run unchanged on stored integers (order-preserving or pure data movement)."""
PRODUCTS = (nn_conv.Conv1d, nn_conv.Conv2d, nn_conv.Linear, nn_conv.MatMul)


@dataclass
class LayerReport:
    """What happened to one layer: its integer op, or why it stayed float; its error."""

    name: str
    op: str
    lowered_to: str | None
    sqnr_db: float | None = None
    rel_error: float | None = None
    reason: str = ""

    def describe(self) -> str:
        error = ("" if self.sqnr_db is None
                 else f": SQNR {self.sqnr_db:.1f} dB, rel. error {self.rel_error:.2%}")
        where = f"{self.name} ({self.op}"
        if self.lowered_to is None:
            return f"{where}) stays float: {self.reason}"
        return f"{where} -> {self.lowered_to}){error}"


@dataclass
class QuantReport:
    """Per-layer results of one quantize run and the whole model's output SQNR."""

    layers: list[LayerReport] = field(default_factory=list)
    output_sqnr_db: list[float] = field(default_factory=list)

    @property
    def quantized(self) -> list[LayerReport]:
        return [r for r in self.layers if r.lowered_to is not None]

    @property
    def kept_float(self) -> list[LayerReport]:
        return [r for r in self.layers if r.lowered_to is None]


def error_of(got: np.ndarray, ref: np.ndarray) -> tuple[float, float]:
    """(SQNR in dB, relative RMS error ||got - ref|| / ||ref||) of `got` against `ref`."""
    ref64, err = ref.astype(np.float64), got.astype(np.float64) - ref.astype(np.float64)
    signal, noise = float(np.sum(ref64 ** 2)), float(np.sum(err ** 2))
    rel = math.sqrt(noise / signal) if signal > 0 else (0.0 if noise == 0 else math.inf)
    sqnr = math.inf if noise == 0 else (10 * math.log10(signal / noise) if signal > 0
                                        else -math.inf)
    return sqnr, rel


class Lowering:
    """One walk over the entry function (module docstring)."""

    def __init__(self, module: Module, stats: dict[Value, TensorStats],
                 options: QuantOptions) -> None:
        self.module = module
        self.stats = stats
        self.options = options
        self.rewriter = Rewriter(module)
        self.twins: dict[Value, Value] = {}
        self.origin: dict[Value, Value] = {}
        self.calibrated_types: dict[Value, QuantType] = {}
        self.report = QuantReport()
        self.rules: dict[type, Callable[[Op], None]] = {
            **{cls: self.lower_product for cls in PRODUCTS}, ew.Add: self.lower_add,
            **{cls: self.lower_passthrough for cls in PASSTHROUGH},
            **{cls: self.lower_activation for cls in (ew.Relu, ew.Relu6, ew.Clamp)},
            ew.Mul: self.lower_mul, **{cls: self.lower_table for cls in table_ops()},
            shape.Concat: self.lower_concat,
            **{cls: self.lower_average for cls in (nn_pool.AvgPool1d, nn_pool.AvgPool2d,
                                                   nn_pool.AdaptiveAvgPool1d,
                                                   nn_pool.AdaptiveAvgPool2d,
                                                   reduce.ReduceMean)},
        }

    # -- types and twins ---------------------------------------------------------------------
    def stats_of(self, value: Value) -> TensorStats | None:
        return self.stats.get(self.origin.get(value, value))

    def qtype(self, value: Value) -> QuantType | None:
        """The twin's type, else the calibrated type, else None (no statistics)."""
        if value in self.twins:
            dtype = self.twins[value].type.dtype
            return dtype if isinstance(dtype, QuantType) else None
        key = self.origin.get(value, value)
        if key not in self.calibrated_types:
            stats = self.stats.get(key)
            if stats is None:
                return None
            o = self.options
            lo, hi = observe_range(stats, o.observer, storage=o.storage, symmetric=o.symmetric,
                                   percentile=o.percentile)
            self.calibrated_types[key] = activation_type(lo, hi, o.storage, o.symmetric)
        return self.calibrated_types[key]

    def as_q(self, value: Value, before: Op) -> Value:
        """The twin of `value`, quantizing it (before `before`) when it has none yet."""
        if value not in self.twins:
            q = self.qtype(value)
            if q is None:
                raise KilnError(f"value %{value.name} has no calibration statistics")
            builder = self.rewriter.builder_before(before)
            self.twins[value] = builder.add(Quantize(to=q), value, name=f"{value.name}.q")
        return self.twins[value]

    def publish(self, old: Value, twin: Value, before: Op) -> None:
        """Route float uses of `old` to dequantize(`twin`), remembering both directions."""
        builder = self.rewriter.builder_before(before)
        dq = builder.add(Dequantize(), twin, name=f"{old.name}.dq")
        self.rewriter.replace_uses(old, dq)
        self.twins[dq] = twin
        self.origin[dq] = self.origin.get(old, old)

    def is_kept_float(self, op: Op) -> bool:
        names = {op.name, op.name.removeprefix("kiln."), op.loc.scope,
                 *(r.name for r in op.results)}
        return any(entry in names for entry in self.options.keep_float)

    # -- driver ------------------------------------------------------------------------------
    def run(self) -> QuantReport:
        for op in list(self.module.main.ops):
            if op in self.rewriter.erased or op.block is None:
                continue
            rule = self.rules.get(type(op.kind))
            if rule is None:
                continue
            if self.is_kept_float(op):
                self._keep(op, "listed in keep-float")
                continue
            rule(op)
        return self.report

    def _keep(self, op: Op, reason: str) -> None:
        if isinstance(op.kind, (*PRODUCTS, ew.Add)):
            name = op.loc.scope or op.result.name or op.name
            self.report.layers.append(LayerReport(name, op.name, None, reason=reason))

    def _erase(self, ops: list[Op]) -> None:
        for op in reversed(ops):
            self.rewriter.erase_op(op)

    # -- anchors -----------------------------------------------------------------------------
    def lower_product(self, op: Op) -> None:
        group = find_group(op)
        try:
            plan = plan_product(group, self.module, self.qtype, self.options.per_channel)
        except KilnError as exc:
            self._keep(op, exc.diagnostics[0].message if exc.diagnostics else str(exc))
            return
        self.commit(plan)

    def lower_add(self, op: Op) -> None:
        if any(known_value(v, self.module) is not None for v in op.operands):
            return
        if any(self.qtype(v) is None for v in op.operands):
            return
        group = find_group(op)
        try:
            plan = plan_add(group, self.qtype)
        except KilnError as exc:
            self._keep(op, exc.diagnostics[0].message if exc.diagnostics else str(exc))
            return
        self.commit(plan)

    def lower_mul(self, op: Op) -> None:
        if any(known_value(v, self.module) is not None or v not in self.twins
               for v in op.operands):
            return
        try:
            plan = plan_mul(find_group(op), self.qtype)
        except KilnError as exc:
            self._keep(op, exc.diagnostics[0].message if exc.diagnostics else str(exc))
            return
        self.commit(plan)

    def commit(self, plan: LayerPlan) -> None:
        """Measure the plan's error; materialize it unless it exceeds `max-error`."""
        group = plan.group
        entry = LayerReport(group.label, group.anchor.name, plan.kind.NAME)
        measured = self.measure(plan)
        if measured is not None:
            entry.sqnr_db, entry.rel_error = measured
        limit = self.options.max_error
        if limit is not None and measured is not None and measured[1] > limit:
            entry.lowered_to = None
            entry.reason = f"rel. error {measured[1]:.2%} exceeds max-error {limit:g}"
            self.report.layers.append(entry)
            return
        self.report.layers.append(entry)
        self.materialize(plan)

    def measure(self, plan: LayerPlan) -> tuple[float, float] | None:
        """The layer's own error on the first calibration batch (float inputs quantized)."""
        sources = [o.source for o in plan.operands if o.source is not None]
        firsts = [self._first(v) for v in sources]
        ref = self._first(plan.group.out)
        if ref is None or any(f is None for f in firsts):
            return None
        got = plan.simulate([f for f in firsts if f is not None])
        return error_of(got, ref)

    def _first(self, value: Value) -> np.ndarray | None:
        stats = self.stats_of(value)
        return None if stats is None else stats.first

    def materialize(self, plan: LayerPlan) -> None:
        anchor = plan.group.anchor
        builder = self.rewriter.builder_before(anchor)
        operands = []
        for o in plan.operands:
            if o.source is not None:
                operands.append(self.as_q(o.source, anchor))
                continue
            assert o.array is not None
            symbol = self.module.add_weight(o.name, o.array)
            operands.append(builder.add(Weight(name=symbol, type=o.type), name=symbol))
        out = plan.group.out
        twin = builder.add(plan.kind, *operands, name=out.name)
        self.publish(out, twin, anchor)
        self._erase(plan.group.ops)

    # -- ops on twins ------------------------------------------------------------------------
    def replace_on_twins(self, op: Op, kind: object, operands: list[Value]) -> None:
        builder = self.rewriter.builder_before(op)
        new = builder.create(kind, *operands,  # type: ignore[arg-type]
                             names=[r.name for r in op.results])
        for old, twin in zip(op.results, new.results):
            self.publish(old, twin, op)
        self._erase([op])

    def lower_passthrough(self, op: Op) -> None:
        x = op.operands[0]
        if x not in self.twins:
            return
        kind = op.kind
        if isinstance(kind, shape.Pad) and kind.mode == "constant":
            if kind.value != 0.0:
                return
            q = self.qtype(x)
            assert q is not None
            kind = dataclasses.replace(kind, value=float(q.zero_point[0]))
        self.replace_on_twins(op, kind, [self.twins[x]])

    def lower_activation(self, op: Op) -> None:
        x = op.operands[0]
        q = self.qtype(x) if x in self.twins else None
        if q is None:
            return
        low, high = clamp_range(op, q)
        kind = ew.Clamp(min=None if low is None else float(low),
                        max=None if high is None else float(high))
        self.replace_on_twins(op, kind, [self.twins[x]])

    def lower_table(self, op: Op) -> None:
        """A unary float function of a twin becomes a `kiln.qlut` (`quantize_eltwise`)."""
        if op.operands[0] not in self.twins:
            return
        kind = table_kind(op, self.qtype, tuple(self.rules))
        if kind is not None:
            self.replace_on_twins(op, kind, [self.twins[op.operands[0]]])

    def lower_concat(self, op: Op) -> None:
        """Every input brought to the output's calibrated type (qrescale), then concat."""
        q_out = self.qtype(op.result)
        sources = [self.qtype(v) for v in op.operands]
        if q_out is None or any(q is None for q in sources):
            return
        try:  # decide everything before the first edit
            rescales = [None if q == q_out else rescale_kind(q, q_out)  # type: ignore[arg-type]
                        for q in sources]
        except KilnError:
            return
        operands = []
        for value, rescale in zip(op.operands, rescales):
            twin = self.as_q(value, op)
            if rescale is not None:
                builder = self.rewriter.builder_before(op)
                twin = builder.add(rescale, twin, name=f"{value.name}.rs")
            operands.append(twin)
        self.replace_on_twins(op, op.kind, operands)

    def lower_average(self, op: Op) -> None:
        x = op.operands[0]
        if x not in self.twins:
            return
        kind = integer_average(op)
        if kind is not None:
            self.replace_on_twins(op, kind, [self.twins[x]])


def integer_average(op: Op) -> object | None:
    """The integer twin of an average pool or mean (adaptive pools only when global)."""
    kind = op.kind
    if isinstance(kind, (nn_pool.AvgPool1d, nn_pool.AvgPool2d)):
        cls = qnn_pool.QAvgPool2d if isinstance(kind, nn_pool.AvgPool2d) else qnn_pool.QAvgPool1d
        fields = {f.name: getattr(kind, f.name) for f in dataclasses.fields(kind)}
        return cls(**fields)
    if isinstance(kind, (nn_pool.AdaptiveAvgPool1d, nn_pool.AdaptiveAvgPool2d)):
        if any(s != 1 for s in kind.output_size):
            return None
        rank = op.operands[0].type.rank
        return qnn_pool.QReduceMean(axes=tuple(range(2, rank)), keepdims=True)
    if isinstance(kind, reduce.ReduceMean):
        return qnn_pool.QReduceMean(axes=kind.axes, keepdims=kind.keepdims)
    return None

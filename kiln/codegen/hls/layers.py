"""Lowering of fixed-point IR to HLS layers: the plain list the emitter and the estimators read.

`lower(module, reuse_factor, io)` (one RF for every layer, or a dict layer name → RF where
unnamed layers get 1) splits `@main` into three parts:
- the host prologue: `kiln.quantize` of each function argument (the C top function takes the
  quantized raws, so the testbench and `art(x)` convert floats on the host, bit-exactly);
- the HLS body: every op on fixed-point values, one `HlsLayer` each (weights become const
  arrays, `reshape`/`flatten` alias their input and cost nothing);
- the host epilogue: the `kiln.dequantize` ops that read HLS results and the float ops after
  them (e.g. a final softmax), run by kiln's reference op semantics on the host.

Anything else (a float op between fixed-point layers, an op with no HLS template, batch > 1)
is collected for every op at once and raised as one `KilnError` naming each op and its source
line, before any C++ is written or compiled.

`HlsLayer` is the contract with the resource/latency estimators (`kiln.targets.cost`): op kind,
input/output shapes (batch dropped), fixed types, weight shape and non-zero count, reuse factor,
io mode and the layer name the user knows (`label`: the estimator's layer name, e.g. `fc1` for
the dense op and the requantize after it, so a per-layer reuse factor dict speaks the same
names to the emitter and to `kiln.targets.cost`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np

from kiln.codegen.hls.transformer_kinds import (
    TRANSFORMER_KINDS,
    TRANSFORMER_OPS,
    WEIGHTED_KINDS,
    transformer_kind,
    transformer_problem,
)
from kiln.errors import Diagnostic, KilnError
from kiln.ir.analysis import layer_output as output_of
from kiln.ir.graph import Module, Op, Value
from kiln.ir.ops.core import Weight
from kiln.ir.ops.lut import LutSoftmax, softmax_errors, table_error
from kiln.ir.types import FixedType

ReuseFactor = int | Mapping[str, int]
"""One reuse factor for every layer, or layer name → reuse factor (unnamed layers: 1)."""

DOT_OPS = {"kiln.linear": "dense", "kiln.conv1d": "conv1d", "kiln.conv2d": "conv2d"}
POOL_OPS = {"kiln.max_pool1d": "max_pool1d", "kiln.max_pool2d": "max_pool2d",
            "kiln.avg_pool1d": "avg_pool1d", "kiln.avg_pool2d": "avg_pool2d",
            "kiln.adaptive_avg_pool1d": "avg_pool1d", "kiln.adaptive_avg_pool2d": "avg_pool2d"}
SIMPLE_OPS = {"kiln.requantize": "requantize", "kiln.relu": "relu", "kiln.relu6": "clamp",
              "kiln.clamp": "clamp", "kiln.add": "add", "kiln.sub": "sub",
              "kiln.maximum": "maximum", "kiln.minimum": "minimum", "kiln.mul": "mul",
              "kiln.reshape": "flatten", "kiln.flatten": "flatten"}
ACTIVATION_OPS = {"kiln.fixed_activation": "activation", "kiln.lut_softmax": "softmax"}
"""Lookup-table and hard activations (`kiln.ir.ops.lut`, made by the `fixed-activations` pass)."""
KINDS = {**DOT_OPS, **POOL_OPS, **SIMPLE_OPS, **ACTIVATION_OPS, **TRANSFORMER_OPS}
"""IR op name → HLS layer kind (the templates in `include/kiln_layers.h`)."""
SUPPORTED_ROUNDING = ("trn", "trn_zero", "rnd", "rnd_zero", "rnd_min_inf", "rnd_inf", "rnd_conv")
SUPPORTED_SATURATION = ("wrap", "sat", "sat_zero", "sat_sym")


@dataclass(frozen=True)
class HlsTensor:
    """One array of the HLS body: C name, shape without the batch dimension, fixed type."""

    name: str
    shape: tuple[int, ...]
    dtype: FixedType

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))


@dataclass(frozen=True)
class HlsLayer:
    """One layer of the HLS body (module docstring); `op` is the IR op it implements."""

    name: str
    kind: str
    op: Op
    inputs: tuple[HlsTensor, ...]
    output: HlsTensor
    source: str
    reuse_factor: int = 1
    io: str = "parallel"
    weight: np.ndarray | None = None
    weight_type: FixedType | None = None
    bias: np.ndarray | None = None
    bias_type: FixedType | None = None
    label: str = ""

    @property
    def nonzero_weights(self) -> int:
        """Multipliers a fully unrolled layer needs per output position (zeros are skipped)."""
        return 0 if self.weight is None else int(np.count_nonzero(self.weight))

    @property
    def multiplies(self) -> int:
        """Multiplications per inference: non-zero weights times output positions."""
        if self.weight is None:
            return 0
        per_channel = self.output.size // max(self.output.shape[0], 1)
        if self.kind == "dense_rows":  # one pass over the weights per row
            per_channel = self.output.size // max(self.output.shape[-1], 1)
        return self.nonzero_weights * (1 if self.kind == "dense" else per_channel)

    @property
    def table_error(self) -> dict[str, float] | None:
        """An activation layer's max |error| vs float math over its input type's range
        (`kiln.ir.ops.lut`); None for other layers."""
        if self.kind not in ACTIVATION_OPS.values():
            return None
        return dict(_errors(self.op.kind, self.inputs[0].dtype))


@lru_cache(maxsize=256)
def _errors(kind: Any, t: FixedType) -> tuple[tuple[str, float], ...]:
    if isinstance(kind, LutSoftmax):
        return tuple(softmax_errors(t, kind).items())
    error = table_error(kind.function, t, kind.to, kind.table_size, kind.range)
    return (("max_abs_error", error),)


@dataclass
class Lowered:
    """The three parts of `@main` (module docstring)."""

    inputs: list[HlsTensor]
    input_ops: list[Op]
    outputs: list[HlsTensor]
    layers: list[HlsLayer]
    tail: list[Op] = field(default_factory=list)
    input_values: list[Value] = field(default_factory=list)
    output_values: list[Value] = field(default_factory=list)


def _source(op: Op) -> str:
    return op.loc.describe() if op.loc is not None else f"%{op.results[0].name}"


def _fixed(value: Value) -> FixedType | None:
    dtype = value.type.dtype
    return dtype if isinstance(dtype, FixedType) else None


class _Lowering:
    def __init__(self, module: Module, reuse_factor: ReuseFactor, io: str) -> None:
        self.module, self.rf, self.io = module, reuse_factor, io
        self.labels: list[str] = []
        self.tensors: dict[Value, HlsTensor] = {}
        self.problems: list[Diagnostic] = []
        self.names: set[str] = set()

    def tensor(self, value: Value) -> HlsTensor:
        if value not in self.tensors:
            dtype = _fixed(value)
            assert dtype is not None
            shape = value.type.shape
            base = "v_" + "".join(c if c.isalnum() else "_" for c in value.name or "t")
            name, n = base, 2
            while name in self.names:
                name, n = f"{base}_{n}", n + 1
            self.names.add(name)
            self.tensors[value] = HlsTensor(name, tuple(shape[1:]), dtype)
        return self.tensors[value]

    def problem(self, op: Op, message: str, hint: str | None = None) -> None:
        self.problems.append(op.diagnostic(message, hint))

    def check_type(self, op: Op, value: Value) -> None:
        dtype = _fixed(value)
        if dtype is None:
            return
        if value.type.rank == 0 or value.type.shape[0] != 1:
            self.problem(op, f"result shape {list(value.type.shape)}: the HLS top function "
                         "processes one sample (batch 1)", "trace the model with batch 1")
        if dtype.rounding not in SUPPORTED_ROUNDING or dtype.saturation not in \
                SUPPORTED_SATURATION:
            self.problem(op, f"{dtype}: rounding/saturation mode has no HLS implementation",
                         f"use saturation in {', '.join(SUPPORTED_SATURATION)}")

    def downstream_of_problem(self, value: Value) -> bool:
        """`value` was computed by an op that got no HLS tensor (one already reported, or
        fed by one) rather than being a constant or weight."""
        producer = value.producer
        return (value not in self.tensors and producer is not None
                and producer.name not in ("kiln.constant", "kiln.weight")
                and bool(producer.operands))

    def layer_shapes(self, op: Op, kind: str, operands: tuple[Value, ...] | list[Value]) -> bool:
        """The templates' operand rules: every layer reads computed tensors (a model input or
        a layer's output, not a constant); `dense` reads a flat [1, NI] input; elementwise
        layers read operands of the result's shape (no broadcasting)."""
        if self.problems and any(self.downstream_of_problem(v) for v in operands):
            return False  # fed by an op already reported: one diagnostic per cause
        if kind not in ("add", "sub", "maximum", "minimum") and any(
                v not in self.tensors for v in operands):
            self.problem(op, "a layer whose input is a constant tensor has no HLS "
                         "implementation (layers read the model's inputs or other layers)",
                         "fold the constant computation away, or feed it as an input")
            return False
        if kind == "dense" and op.operands[0].type.rank != 2:
            self.problem(op, f"a dense layer on a rank-{op.operands[0].type.rank} input has no "
                         "HLS implementation (the template reads one flat vector)",
                         "flatten the input to [1, features] before the linear layer")
            return False
        if kind == "mul":
            return self.mul_shapes(op, operands)
        if kind in ("add", "sub", "maximum", "minimum") and any(
                v.type.shape != op.results[0].type.shape or v not in self.tensors
                for v in operands):
            self.problem(op, "an elementwise layer with a constant or broadcast operand has no "
                         "HLS implementation (both operands must be computed tensors of the "
                         "result's shape)", "broadcast the operand in the model")
            return False
        return True

    def mul_shapes(self, op: Op, operands: tuple[Value, ...] | list[Value]) -> bool:
        """mul: computed operands, the second of the result's shape or a channel vector
        [1, C, 1, ...] (a squeeze-excitation scale; `lower` puts the full operand first)."""
        shape = op.results[0].type.shape
        full, other = operands
        scale = (1, shape[1], *([1] * (len(shape) - 2))) if len(shape) >= 2 else shape
        if full.type.shape != shape or other.type.shape not in (shape, scale) or \
                any(v not in self.tensors for v in operands):
            self.problem(op, "a mul layer needs computed operands of the result's shape, or "
                         "one of them a per-channel [1, C, 1, ...] scale",
                         "broadcast the operand in the model")
            return False
        return True

    def check_pool(self, op: Op) -> None:
        """Pools: every padding, ceil_mode and count_include_pad the IR allows has a template
        (`kiln_layers.h`, `kiln_stream_layers.h`); nothing to refuse."""

    def weight_of(self, value: Value) -> np.ndarray | None:
        producer = value.producer
        if producer is None or not isinstance(producer.kind, Weight):
            return None
        return np.asarray(self.module.weights[producer.kind.name], dtype=np.int64)

    def layer(self, op: Op) -> HlsLayer | None:
        kind = transformer_kind(op) or KINDS.get(op.name)
        if kind is None:
            self.problem(op, "has no HLS implementation (fixed-point layers supported: "
                         f"{', '.join(sorted(KINDS))})",
                         "replace the op, or keep it in the float tail after the last layer")
            return None
        for value in op.results:
            self.check_type(op, value)
        data_operands = op.operands[:1] if kind in DOT_OPS.values() or \
            kind in WEIGHTED_KINDS else op.operands
        if kind == "mul" and data_operands[0].type.shape != op.results[0].type.shape:
            data_operands = data_operands[::-1]  # the full-size operand first
        if not self.layer_shapes(op, kind, data_operands):
            return None
        problem = transformer_problem(op, kind) if kind in TRANSFORMER_KINDS else None
        if problem is not None:
            self.problem(op, *problem)
            return None
        inputs = tuple(self.tensor(v) for v in data_operands)
        out = self.tensor(op.results[0])
        self.check_pool(op)
        extra: dict[str, object] = {}
        if op.name in DOT_OPS or kind in WEIGHTED_KINDS:
            w, b = op.operands[1], (op.operands[2] if len(op.operands) > 2 else None)
            weight = self.weight_of(w)
            if weight is None or (b is not None and self.weight_of(b) is None):
                self.problem(op, "weights must be constant kiln.weight tensors for HLS")
                return None
            extra = {"weight": weight, "weight_type": _fixed(w),
                     "bias": None if b is None else self.weight_of(b),
                     "bias_type": None if b is None else _fixed(b)}
        name = f"layer{len(self.names)}_{out.name[2:]}"
        label = output_of(op)[0]
        if kind != "flatten":  # wiring, no hardware: not a layer a reuse factor can name
            self.labels.append(label)
        rf = self.rf.get(label, 1) if isinstance(self.rf, Mapping) else self.rf
        return HlsLayer(name, kind, op, inputs, out, _source(op), rf, self.io,
                        **extra, label=label)  # type: ignore[arg-type]

    def check_names(self) -> None:
        """Every layer a reuse-factor dict names must exist (the error lists the valid ones)."""
        if not isinstance(self.rf, Mapping):
            return
        unknown = sorted(set(self.rf) - set(self.labels))
        if unknown:
            valid = ", ".join(dict.fromkeys(self.labels))
            raise KilnError(f"reuse_factor names unknown layers {unknown}; layers: {valid}")


def _is_host_input(op: Op) -> bool:
    return op.name == "kiln.quantize" and all(v.producer is None for v in op.operands)


def _float_islands(lowering: _Lowering, ops: list[Op]) -> None:
    """Float ops followed by more fixed-point layers: each is an op without HLS code."""
    for op in ops:
        if op.name != "kiln.dequantize":
            lowering.problem(op, "has no HLS implementation (a float op between fixed-point "
                             "layers; only a float tail after the last layer runs on the host)",
                             "replace it by a supported layer or move it to the model's end")


def lower(module: Module, reuse_factor: ReuseFactor = 1, io: str = "parallel") -> Lowered:
    """Split `@main` and lower its fixed-point body (module docstring)."""
    lowering = _Lowering(module, reuse_factor, io)
    func = module.main
    result = Lowered([], [], [], [])
    for op in func.ops:
        if op.name in ("kiln.return", "kiln.weight") or (
                op.name == "kiln.constant" and _fixed(op.results[0]) is None):
            continue  # the host tail reads float weights and constants where it needs them
        if _is_host_input(op) and _fixed(op.results[0]) is not None:
            lowering.check_type(op, op.results[0])
            result.input_ops.append(op)
            result.inputs.append(lowering.tensor(op.results[0]))
            result.input_values.append(op.results[0])
        elif all(_fixed(v) is None for v in op.results):
            result.tail.append(op)
            if op.name == "kiln.dequantize" and op.operands[0] in lowering.tensors:
                # (a dequantized weight or constant is computed on the host, not an HLS port)
                result.outputs.append(lowering.tensor(op.operands[0]))
                result.output_values.append(op.operands[0])
        elif any(_fixed(v) is None for v in op.operands):  # fed by float ops: an island
            # (a layer after an early output's dequantize reads fixed values: lowered below)
            _float_islands(lowering, result.tail)
            result.tail.clear()
        else:
            layer = lowering.layer(op)
            if layer is not None:
                result.layers.append(layer)
    if not result.inputs and not lowering.problems:
        lowering.problems.append(Diagnostic(
            f"@{func.name} has no fixed-point input: the fpga target lowers fixed-point IR",
            hint="run the 'fixed-point' pass first (the fpga pipeline does)"))
    if lowering.problems:
        raise KilnError(diagnostics=lowering.problems)
    lowering.check_names()
    return result


__all__ = ["KINDS", "HlsLayer", "HlsTensor", "Lowered", "ReuseFactor", "lower"]

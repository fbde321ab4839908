"""The io_stream architecture as data: dataflow stages and the FIFOs between them.

`plan_stream(lowered)` turns the lowered HLS layers into what `emit_stream` writes and what
the stream estimator (`kiln.targets.cost.fpga_stream`) costs:

- **streams**: every tensor is a stream of `beats` pixels of `lanes` channels (one spatial
  position per beat, all channels packed: `kiln::pixel<C>` in `kiln_stream_layers.h`). A
  (C, H, W) tensor is H*W beats of C lanes, (C, L) is L beats of C, a vector of N is one beat
  of N. Transformer tensors stream one token row per beat instead (`Layout.axis`,
  `emit_stream_rows`): a reshape that keeps the token axis first and a transpose that keeps
  the packed axes in order relabel the same stream (no stage). A flatten to a vector keeps
  its input's stream (a no-op: the dense layer reading it
  indexes c * beats + p); any other reshape that changes the pixel layout is refused.
- **stages**: one per layer, in program order. A requantize / relu / clamp whose input has
  no other consumer is fused into the stage producing it as its epilogue (hls4ml writes the
  layer's result type directly), so FIFOs carry layer-precision pixels, not accumulators.
- **forks**: a tensor with k consumers (a residual's shortcut, an output port that is also
  read further on) goes through k - 1 `duplicate` stages, one beat to each branch.
- **edges**: one FIFO per (producer, consumer) pair; ports are the top function's streams.
  `depth` defaults to the full tensor (`beats`, hls4ml's default, deadlock-free in any
  graph); the fpga target replaces it with the estimator's sizing (`fifo_depths` option).

Errors (a `KilnError` naming the layer): a reshape that changes the pixel layout, a dense
layer on a tensor of rank > 1 (a linear over the last axis), binary operands with different
pixel layouts, and windowed layers whose input is not a (C, H, W) / (C, L) stream.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from kiln.codegen.hls.emit_stream_rows import (
    input_layout,
    reshape_layout,
    row_check,
    transpose_layout,
)
from kiln.codegen.hls.layers import HlsLayer, HlsTensor, Lowered
from kiln.errors import KilnError
from kiln.ir.types import FixedType

PORT = re.compile(r"(in|out)[0-9]+")
ELEMENTWISE = ("requantize", "relu", "clamp", "activation")
BINARY_KINDS = ("add", "sub", "maximum", "minimum")
WINDOWED = ("conv1d", "conv2d", "max_pool1d", "max_pool2d", "avg_pool1d", "avg_pool2d")


@dataclass(frozen=True)
class Layout:
    """A tensor as a stream: `beats` pixels of `lanes` raws; `axis` >= 0: a row stream, one
    beat per index of that axis (`emit_stream_rows`); -1: channels packed."""

    beats: int
    lanes: int
    axis: int = -1


def natural_layout(t: HlsTensor) -> Layout:
    """Channels-first tensors: one beat per spatial position, channels packed."""
    if len(t.shape) <= 1:
        return Layout(1, t.size)
    return Layout(t.size // t.shape[0], t.shape[0])


@dataclass
class Edge:
    """A FIFO (or a top-level port) from `producer` to `consumer` (stage names or ports)."""

    name: str
    layout: Layout
    dtype: FixedType
    producer: str
    consumer: str
    depth: int
    port: bool = False
    tensor: HlsTensor | None = None
    """The tensor the FIFO carries (its raw type names the pixel's element type)."""

    @property
    def width_bits(self) -> int:
        return self.layout.lanes * self.dtype.width


@dataclass
class Stage:
    """One dataflow function: `layer` (None for a fork) plus its fused `epilogue`."""

    name: str
    kind: str
    layer: HlsLayer | None
    in_layouts: list[Layout]
    out_layout: Layout
    epilogue: list[HlsLayer] = field(default_factory=list)
    inputs: list[Edge] = field(default_factory=list)
    outputs: list[Edge] = field(default_factory=list)

    @property
    def label(self) -> str:
        return self.layer.label if self.layer is not None else self.name

    @property
    def output_tensor(self) -> HlsTensor:
        last = self.epilogue[-1] if self.epilogue else self.layer
        assert last is not None
        return last.output

    @property
    def reuse_factor(self) -> int:
        return self.layer.reuse_factor if self.layer is not None else 1

    def ops(self) -> list[HlsLayer]:
        """The elementwise ops the stage applies to each output raw, in order."""
        head = [self.layer] if self.kind == "map" and self.layer is not None else []
        return head + self.epilogue


@dataclass
class StreamPlan:
    """Stages in a valid sequential (C-simulation) order and every edge."""

    stages: list[Stage]
    edges: list[Edge]
    inputs: list[Edge]
    outputs: list[Edge]


def _error(layer: HlsLayer, message: str, hint: str | None = None) -> KilnError:
    return KilnError(diagnostics=[layer.op.diagnostic(
        f"io='stream': {message}", hint or "use io='parallel' for this model")])


class _Planner:
    def __init__(self, lowered: Lowered) -> None:
        self.lowered = lowered
        self.alias: dict[HlsTensor, HlsTensor] = {}
        self.layout: dict[HlsTensor, Layout] = {
            t: input_layout(lowered, t) or natural_layout(t) for t in lowered.inputs}
        self.stages: list[Stage] = []
        self.producer: dict[HlsTensor, Stage] = {}

    def canon(self, t: HlsTensor) -> HlsTensor:
        while t in self.alias:
            t = self.alias[t]
        return t

    def consumers(self, t: HlsTensor) -> int:
        uses = sum(self.canon(i) == t for layer in self.lowered.layers
                   if layer.kind not in ("flatten", "transpose") for i in layer.inputs)
        return uses + sum(self.canon(o) == t for o in self.lowered.outputs)

    def add(self, layer: HlsLayer) -> None:
        inputs = [self.canon(t) for t in layer.inputs]
        layouts = [self.layout.get(t) or self.layout[c] for t, c in zip(layer.inputs, inputs)]
        if layer.kind == "flatten":
            self.flatten(layer, inputs[0], layouts[0])
            return
        if layer.kind == "transpose":
            self.transpose(layer, inputs[0], layouts[0])
            return
        source = self.producer.get(inputs[0])
        if layer.kind in ELEMENTWISE and source is not None and \
                self.consumers(inputs[0]) == 1 and inputs[0] not in self.lowered.outputs:
            source.epilogue.append(layer)
            self.producer[layer.output] = source
            self.layout[layer.output] = layouts[0]
            del self.producer[inputs[0]]
            return
        out = self.check(layer, inputs, layouts)
        kind = "map" if layer.kind in ELEMENTWISE else layer.kind
        stage = Stage(layer.name, kind, layer, layouts, out)
        self.stages.append(stage)
        self.producer[layer.output] = stage
        self.layout[layer.output] = out

    def transpose(self, layer: HlsLayer, src: HlsTensor, layout: Layout) -> None:
        """A transpose that keeps the packed axes in order: the same row stream, relabelled."""
        out = transpose_layout(layer, layout)
        if out is None or layer.output in self.lowered.outputs:
            raise _error(layer, f"transpose of a {list(layer.inputs[0].shape)} stream "
                         f"({layout.beats} beats x {layout.lanes} lanes) reorders the packed "
                         "axes of its beats (or is a model output)")
        self.alias[layer.output] = src
        self.layout[layer.output] = out

    def flatten(self, layer: HlsLayer, src: HlsTensor, layout: Layout) -> None:
        if layout.axis >= 0:
            out = reshape_layout(layout, layer.inputs[0].shape, layer.output.shape)
            if out is None:
                raise _error(layer, f"reshape {list(layer.inputs[0].shape)} -> "
                             f"{list(layer.output.shape)} changes the rows of the stream",
                             "keep the token axis first, or use io='parallel'")
            self.alias[layer.output] = src
            self.layout[layer.output] = out
            return
        if len(layer.output.shape) > 1 and natural_layout(layer.output) != layout:
            raise _error(layer, f"reshape {list(src.shape)} -> {list(layer.output.shape)} "
                         "changes the pixel layout of the stream",
                         "flatten to a vector, or use io='parallel'")
        self.alias[layer.output] = src

    def check(self, layer: HlsLayer, inputs: list[HlsTensor], layouts: list[Layout]) -> Layout:
        """The output layout; a `KilnError` for what the stream templates cannot do."""
        row, why = row_check(layer, layouts)
        if why is not None:
            raise _error(layer, why)
        if row is not None:
            return row
        if layer.kind == "dense":
            if len(layer.output.shape) != 1:
                raise _error(layer, f"dense layer on a rank-{len(inputs[0].shape)} tensor "
                             "(a linear over the last axis) has no stream template")
            return natural_layout(layer.output)
        if layer.kind in WINDOWED:
            if layouts[0] != natural_layout(inputs[0]) or len(inputs[0].shape) < 2:
                raise _error(layer, f"{layer.kind} needs a (C, H, W) or (C, L) stream input")
            return natural_layout(layer.output)
        if layer.kind == "softmax":  # a vector, one beat (rank > 1: `row_check`)
            return layouts[0]
        if layer.kind == "mul":  # a per-channel scale streams as one beat of C lanes
            if layouts[1] not in (layouts[0], Layout(1, layouts[0].lanes)):
                raise _error(layer, f"mul operands stream as {layouts[0]} and {layouts[1]}")
            return layouts[0]
        if layer.kind in BINARY_KINDS and layouts[0] != layouts[1]:
            raise _error(layer, f"operands stream as {layouts[0]} and {layouts[1]}: the "
                         "pixel layouts differ", "reshape both operands the same way")
        if layer.kind not in ELEMENTWISE + BINARY_KINDS:
            raise _error(layer, f"layer kind '{layer.kind}' has no stream template")
        return layouts[0]


class _Wiring:
    """Edges and forks, once the stages are known."""

    def __init__(self, planner: _Planner, depths: Mapping[str, int] | None) -> None:
        self.p, self.depths = planner, dict(depths or {})
        self.edges: list[Edge] = []
        self.order: list[Stage] = []
        self.slots: dict[HlsTensor, list[tuple[Stage | None, int]]] = {}
        self.names: set[str] = set()

    def name(self, base: str) -> str:
        name, n = base, 2
        while name in self.names:
            name, n = f"{base}_{n}", n + 1
        self.names.add(name)
        return name

    def edge(self, src: str, dst: str, tensor: HlsTensor, name: str) -> Edge:
        layout = self.p.layout[tensor]
        port = PORT.fullmatch(name) is not None
        edge = Edge(name, layout, tensor.dtype, src, dst,
                    int(self.depths.get(name, layout.beats)), port, tensor)
        self.edges.append(edge)
        return edge

    def connect(self, tensor: HlsTensor, producer: Stage | None, port: str | None) -> None:
        """Edges from the producer (a stage, or input `port`) to every consumer slot, through
        a chain of k - 1 forks when there are k slots."""
        slots = self.slots.get(tensor, [])
        src = producer.name if producer is not None else str(port)
        if not slots:  # never read (dead code): the stream still exists, nobody drains it
            dead = self.edge(src, "", tensor, port or self.name(f"s_{tensor.name[2:]}"))
            if producer is not None:
                producer.outputs.append(dead)
            return
        if len(slots) == 1:
            current = self.edge(src, self.dst(slots[0]), tensor,
                                port or self.slot_name(tensor, slots[0], False))
            self.attach(slots[0], current)
        else:
            current = self.edge(src, "", tensor, port or self.name(f"s_{tensor.name[2:]}"))
        if producer is not None:
            producer.outputs.append(current)
        for i in range(len(slots) - 1):
            fork = Stage(self.name(f"fork_{tensor.name[2:]}"), "fork", None,
                         [self.p.layout[tensor]], self.p.layout[tensor], inputs=[current])
            current.consumer = fork.name
            self.order.append(fork)
            branch = self.edge(fork.name, self.dst(slots[i]), tensor,
                               self.slot_name(tensor, slots[i], True))
            self.attach(slots[i], branch)
            last = slots[i + 1] if i == len(slots) - 2 else None
            current = self.edge(fork.name, self.dst(last) if last else "", tensor,
                                self.slot_name(tensor, last, True) if last
                                else self.name(f"s_{tensor.name[2:]}_rest"))
            fork.outputs = [branch, current]
            if last:
                self.attach(last, current)

    def slot_name(self, tensor: HlsTensor, slot: tuple[Stage | None, int], fork: bool) -> str:
        stage, index = slot
        if stage is None:
            return f"out{index}"
        return self.name(f"s_{tensor.name[2:]}" + (f"_to_{stage.name}" if fork else ""))

    @staticmethod
    def dst(slot: tuple[Stage | None, int]) -> str:
        stage, index = slot
        return stage.name if stage is not None else f"out{index}"

    @staticmethod
    def attach(slot: tuple[Stage | None, int], edge: Edge) -> None:
        stage, index = slot
        if stage is not None:
            stage.inputs[index] = edge


def _slots(p: _Planner) -> dict[HlsTensor, list[tuple[Stage | None, int]]]:
    slots: dict[HlsTensor, list[tuple[Stage | None, int]]] = {}
    for stage in p.stages:
        assert stage.layer is not None
        stage.inputs = [None] * len(stage.layer.inputs)  # type: ignore[list-item]
        for i, t in enumerate(stage.layer.inputs):
            slots.setdefault(p.canon(t), []).append((stage, i))
    for j, t in enumerate(p.lowered.outputs):
        slots.setdefault(p.canon(t), []).append((None, j))
    return slots


def plan_stream(lowered: Lowered, depths: Mapping[str, int] | None = None) -> StreamPlan:
    """Stages and edges of `lowered` (module docstring); `depths`: FIFO name → depth."""
    p = _Planner(lowered)
    for layer in lowered.layers:
        p.add(layer)
    wiring = _Wiring(p, depths)
    wiring.names.update(s.name for s in p.stages)
    wiring.slots = _slots(p)
    for i, t in enumerate(lowered.inputs):
        _input(wiring, t, f"in{i}")
    for stage in p.stages:
        wiring.order.append(stage)
        wiring.connect(stage.output_tensor, stage, None)
    ins = sorted((e for e in wiring.edges if e.port and e.name.startswith("in")),
                 key=lambda e: int(e.name[2:]))
    outs = sorted((e for e in wiring.edges if e.port and e.name.startswith("out")),
                  key=lambda e: int(e.name[3:]))
    return StreamPlan(wiring.order, wiring.edges, ins, outs)


def _input(wiring: _Wiring, tensor: HlsTensor, port: str) -> None:
    """An input port's stream; one read only by an output port gets a copy stage."""
    slots = wiring.slots.get(tensor, [])
    if len(slots) == 1 and slots[0][0] is None:
        layout = wiring.p.layout[tensor]
        copy = Stage(wiring.name(f"copy_{port}"), "copy", None, [layout], layout)
        copy.inputs = [wiring.edge(port, copy.name, tensor, port)]
        wiring.order.append(copy)
        wiring.connect(tensor, copy, None)
        return
    wiring.connect(tensor, None, port)


__all__ = ["Edge", "Layout", "Stage", "StreamPlan", "natural_layout", "plan_stream"]

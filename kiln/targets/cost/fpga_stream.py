"""The io_stream estimator: a dataflow pipeline of the stages kiln emits, FIFO depths included.

    est = estimate_stream(fixed_module, part="xczu9eg", clock_mhz=200, reuse_factor=4)
    est.report()["latency_cycles"], est.report()["fifos"], fifo_depths(lowered)

It costs the `StreamPlan` the emitter writes (`kiln.codegen.hls.emit_stream_plan`), not the IR,
so each row is one dataflow stage (a layer with its fused requantize / relu epilogue, a fork,
a pass-through), named by the layer name the user knows.

**Timing** is a beat-level schedule of the whole pipeline, every stage working at once: a
stage reads one input beat per cycle when the producer has written it; a windowed stage
(conv, pool) issues output pixel j once the last input pixel its window needs has arrived
(the line buffer's trigger), a dense layer after its whole input vector, an elementwise /
fork / join stage beat by beat; one output pixel occupies a dot layer for RF cycles (its
ceil(mults / RF) multipliers, as in io_parallel) and is written `depth` cycles after issue
(RF + adder-tree + multiplier pipeline, `fpga_estimate.dot_cost`'s rule). Latency = the cycle
the last output beat leaves (fill of every stage included); II = the busiest stage's cycles
per inference (max(input beats, output beats x RF)): the slowest layer dominates. A stage
row's `latency_cycles` runs from its first input beat read to its last output beat written
in that schedule (waits on slower neighbours included); its `ii` is its own busy cycles.

**FIFO depths**: FIFOs between a fork and the join it reconverges at (a residual's two
branches) get the most beats the unstalled schedule ever holds in them, so neither branch can
stall the fork and the join cannot deadlock; every other FIFO gets depth 2 (a stalled chain
only slows its producer). Each FIFO is a depth x (lanes x bits) memory: shift-register LUTRAM
up to 64 deep, else BRAM18K (`fpga_resources.memory_cost`).

**Resources** per stage: dot layers as in io_parallel (`dot_cost`: multipliers, RF:1 muxes,
the weight ROM) with one output pixel of registers instead of the whole tensor, plus the line
buffer ((R - 1) rows of W pixels: R = the rows a window spans) and the window registers; a
dense layer adds its gathered input vector; pools / elementwise / joins one lane per channel
(`simple_cost`); forks and copies only registers. Transformer stages (one token row per beat)
are costed by `fpga_stream_rows`; a matmul reads its whole second operand (keys / values)
before the first row of the other, so the schedule holds the queries' and the residual's
rows meanwhile, and those FIFOs get depths to match.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import networkx as nx

from kiln.codegen.hls.emit_stream import is_global_pool, pool_geometry, window_rows
from kiln.codegen.hls.emit_stream_plan import Edge, Stage, StreamPlan, plan_stream
from kiln.codegen.hls.layers import HlsLayer, Lowered, ReuseFactor, lower
from kiln.ir.graph import Module
from kiln.targets.cost.fpga_estimate import (
    MULT_LEVELS,
    FpgaEstimate,
    LayerCost,
    chain_cycles,
    dot_cost,
    output_ff,
    simple_cost,
    snap_reuse,
)
from kiln.targets.cost.fpga_layers import LayerShape
from kiln.targets.cost.fpga_parts import Part, get_part
from kiln.targets.cost.fpga_resources import Memory, adder_luts, memory_cost
from kiln.targets.cost.fpga_stream_rows import buffered_inputs, row_stage_cost, row_timing

MIN_DEPTH = 2


@dataclass
class StreamEstimate(FpgaEstimate):
    """`FpgaEstimate` of a dataflow pipeline: scheduled latency and II, FIFOs per edge."""

    latency: int = 0
    interval: int = 1
    fifos: list[dict[str, Any]] = field(default_factory=list)

    @property
    def latency_cycles(self) -> int:
        return self.latency

    @property
    def ii(self) -> int:
        return self.interval

    def report(self) -> dict[str, object]:
        return {**super().report(), "fifo_lut": self.fifo.lutram, "fifos": self.fifos}


def _span(layer: HlsLayer) -> tuple[int, int, int]:
    """(C, H, W) of the layer's input (conv1d / pool1d: H = 1)."""
    shape = layer.inputs[0].shape
    return (shape[0], 1, shape[1]) if len(shape) == 2 else (shape[0], shape[1], shape[2])


def _dot_shape(stage: Stage, layer: HlsLayer) -> LayerShape:
    assert layer.weight is not None and layer.weight_type is not None
    n_out = stage.out_layout.lanes
    return LayerShape(stage.label, layer.op.name, layer.kind, layer.weight.size // n_out, n_out,
                      stage.out_layout.beats, layer.nonzero_weights, layer.weight.size,
                      layer.inputs[0].dtype.width, layer.weight_type.width,
                      layer.output.dtype.width, stage.output_tensor.dtype.width,
                      layer.nonzero_weights * layer.weight_type.width, layer.output.size)


def _simple_shape(stage: Stage, window: int = 1) -> LayerShape:
    bits = stage.output_tensor.dtype.width if stage.layer or stage.epilogue else \
        stage.outputs[0].dtype.width
    out = stage.out_layout
    op = stage.layer.op.name if stage.layer is not None else f"kiln.{stage.kind}"
    table = stage.layer is not None and stage.layer.kind == "softmax"  # exp + 1/x ROMs
    return LayerShape(stage.label, op, "pool" if window > 1 else "table" if table else
                      "elementwise", window,
                      out.lanes, out.beats, 0, 0, bits, 0, bits, bits, 0,
                      out.beats * out.lanes, window=window)


def _line_buffer(layer: HlsLayer, part: Part) -> tuple[Memory, int]:
    """(R - 1) rows of W input pixels, and the window's registers in bits."""
    c, _, w = _span(layer)
    rows, bits = window_rows(layer), layer.inputs[0].dtype.width
    mem = Memory()
    for _ in range(rows - 1):
        mem = mem + memory_cost(w, c * bits, part)
    if layer.kind.startswith("conv"):
        assert layer.weight is not None
        kw = layer.weight.shape[-1]
    else:
        kw = pool_geometry(layer)[6]
    return mem, rows * kw * c * bits


def _window(layer: HlsLayer) -> int:
    """Inputs one pool output reduces at once (a global pool: one running sum per lane)."""
    if is_global_pool(layer):
        return 1
    _, _, w, _, ow, kh, kw, *_, adaptive = pool_geometry(layer)
    if adaptive:
        return window_rows(layer) * max(-(-(o + 1) * w // ow) - o * w // ow for o in range(ow))
    return kh * kw


def stage_cost(stage: Stage, part: Part) -> LayerCost:
    """Resources of one stage (module docstring); timing is filled in by the schedule."""
    cost = row_stage_cost(stage, part) or _stage_cost(stage, part)
    cost.op = stage.layer.kind if stage.layer is not None and stage.kind != "map" else \
        stage.kind if stage.layer is None else "+".join(la.kind for la in stage.ops())
    return cost


def _stage_cost(stage: Stage, part: Part) -> LayerCost:
    layer = stage.layer
    extra = sum(la.kind != "requantize" for la in stage.epilogue)
    if layer is not None and layer.weight is not None:
        shape = _dot_shape(stage, layer)
        cost = dot_cost(shape, snap_reuse(shape, layer.reuse_factor), "parallel", part)
        cost.ff += output_ff(shape, "stream") - output_ff(shape, "parallel")
        if layer.kind == "dense":
            cost.ff += layer.inputs[0].size * shape.in_bits  # the gathered input vector
    elif layer is not None and "pool" in layer.kind:
        cost = simple_cost(_simple_shape(stage, _window(layer)), "stream")
    elif stage.kind in ("fork", "copy"):
        cost = LayerCost(stage.label, f"kiln.{stage.kind}", 1, 1, stage.out_layout.beats, 0,
                         "")
        cost.ff = stage.out_layout.lanes * stage.outputs[0].dtype.width
        return cost
    else:
        cost = simple_cost(_simple_shape(stage), "stream")
        extra = max(extra - (stage.kind == "map" and layer is not None and
                             layer.kind != "requantize"), 0)
    cost.lut += extra * stage.out_layout.lanes * adder_luts(stage.output_tensor.dtype.width)
    if layer is not None and (layer.kind.startswith("conv") or
                              ("pool" in layer.kind and not is_global_pool(layer))):
        mem, window_bits = _line_buffer(layer, part)
        cost.bram, cost.uram = cost.bram + mem.bram, cost.uram + mem.uram
        cost.lut += mem.lutram
        cost.ff += window_bits
    return cost


def _need(stage: Stage) -> list[int]:
    """Input beats needed before each output beat (the line buffer's trigger)."""
    layer, beats_out = stage.layer, stage.out_layout.beats
    beats_in = stage.in_layouts[0].beats
    if layer is None or (layer.kind not in ("conv1d", "conv2d") and "pool" not in layer.kind):
        return [beats_in] if layer is not None and layer.kind == "dense" else \
            list(range(1, beats_out + 1))
    if "pool" in layer.kind and is_global_pool(layer):
        return [beats_in]
    _, h, w = _span(layer)
    _, oh, ow = (layer.output.shape[0], 1, layer.output.shape[1]) \
        if len(layer.output.shape) == 2 else layer.output.shape
    rows = [_last(i, h, oh, layer, 0) for i in range(oh)]
    cols = [_last(j, w, ow, layer, 1) for j in range(ow)]
    return [r * w + c + 1 for r in rows for c in cols]


def _last(o: int, size: int, outs: int, layer: HlsLayer, axis: int) -> int:
    """The last input row (axis 0) / column (axis 1) output `o`'s window needs."""
    one_d = len(layer.inputs[0].shape) == 2
    if layer.kind.startswith("conv"):
        assert layer.weight is not None
        kind: Any = layer.op.kind
        idx = 0 if one_d else axis
        if one_d and axis == 0:
            return 0
        k = layer.weight.shape[2 + idx]
        hi = o * kind.stride[idx] - kind.padding[idx] + (k - 1) * kind.dilation[idx]
    else:
        geo = pool_geometry(layer)
        if geo[-1]:
            hi = -(-(o + 1) * size // outs) - 1
        else:
            k, s, d = geo[5 + axis], geo[7 + axis], geo[9 + axis]
            hi = o * s + (k - 1) * d
    return min(max(hi, 0), size - 1)


def _timing(stage: Stage, cost: LayerCost, clock_mhz: float) -> tuple[int, int]:
    """(cycles between issues, pipeline depth) of one output beat."""
    row = row_timing(stage, cost, clock_mhz)
    if row is not None:
        return row
    layer = stage.layer
    epilogue = sum(la.kind != "requantize" for la in stage.epilogue)  # a cycle per clamp
    if layer is not None and layer.weight is not None:
        n_in = layer.weight.size // stage.out_layout.lanes
        rf = cost.reuse_factor
        tree = max(n_in - 1, 0).bit_length() + MULT_LEVELS  # dot_cost's chained tree
        return rf, rf - 1 + chain_cycles(tree, clock_mhz) + epilogue
    window = _window(layer) if layer is not None and "pool" in layer.kind else 1
    return 1, 1 + max(window - 1, 0).bit_length() + epilogue


class _Schedule:
    """Write times of every edge's beats and read times at its consumer (module docstring)."""

    def __init__(self, plan: StreamPlan, costs: dict[str, LayerCost],
                 clock_mhz: float) -> None:
        self.clock_mhz = clock_mhz
        self.written: dict[str, list[int]] = {e.name: list(range(e.layout.beats))
                                              for e in plan.inputs}
        self.read: dict[str, list[int]] = {}
        self.busy: dict[str, int] = {}
        self.latency: dict[str, int] = {}
        for stage in plan.stages:
            self.run(stage, costs[stage.name])

    def run(self, stage: Stage, cost: LayerCost) -> None:
        ii, depth = _timing(stage, cost, self.clock_mhz)
        need = _need(stage)
        free, issue, j = 0, -ii, 0
        held = stage.inputs[len(stage.inputs) - buffered_inputs(stage):]
        streamed = stage.inputs[:len(stage.inputs) - len(held)]
        for e in held:  # read completely before the first streamed beat (a matmul's B)
            self.read[e.name] = []
            for w in self.written[e.name]:
                free = max(free, w + 1) + 1
                self.read[e.name].append(free - 1)
        ins = [self.written[e.name] for e in streamed]
        reads: list[int] = []
        times: list[int] = []
        for k in range(stage.in_layouts[0].beats):
            t = max([free] + [w[min(k, len(w) - 1)] + 1 for w in ins])  # a 1-beat scale
            reads.append(t)
            free = t + 1
            while j < len(need) and need[j] <= k + 1:  # a pipelined issue overlaps the read
                issue = max(t, issue + ii)
                times.append(issue + depth)
                free = issue + ii
                j += 1
        for e in streamed:
            self.read[e.name] = reads
        for e in stage.outputs:
            self.written[e.name] = times
        first = [self.read[e.name][0] for e in held if self.read[e.name]]
        start = min(first + reads[:1]) if first or reads else 0
        self.latency[stage.name] = (times[-1] if times else start) - start + 1
        self.busy[stage.name] = max(len(reads), len(times) * ii) + \
            sum(len(self.read[e.name]) for e in held)


def _occupancy(written: list[int], read: list[int]) -> int:
    """The most beats a FIFO holds when nothing stalls."""
    best, r = 0, 0
    for k, t in enumerate(written):
        while r < len(read) and read[r] <= t:
            r += 1
        best = max(best, k + 1 - r)
    return best


def _reconvergent(plan: StreamPlan) -> set[str]:
    """Edges on a path from a fork to a stage that joins two streams."""
    graph = nx.DiGraph()
    graph.add_edges_from((e.producer, e.consumer, {"name": e.name}) for e in plan.edges)
    forks = {s.name for s in plan.stages if s.kind == "fork"}
    names: set[str] = set()
    for join in (s.name for s in plan.stages if len(s.inputs) > 1):
        up = nx.ancestors(graph, join) | {join}
        for fork in forks & up:
            region = (nx.descendants(graph, fork) | {fork}) & up
            names.update(d["name"] for a, b, d in graph.edges(data=True)
                         if a in region and b in region)
    return names


def _edge_row(edge: Edge, part: Part) -> tuple[dict[str, Any], Memory]:
    mem = memory_cost(edge.depth, edge.width_bits, part)
    return ({"name": edge.name, "from": edge.producer, "to": edge.consumer,
             "beats": edge.layout.beats, "lanes": edge.layout.lanes,
             "width_bits": edge.width_bits, "depth": edge.depth, "bram": mem.bram,
             "uram": mem.uram, "lutram": mem.lutram}, mem)


def estimate_plan(plan: StreamPlan, *, part: str = "xczu9eg",
                  clock_mhz: float = 200) -> StreamEstimate:
    """Cost, schedule and size the FIFOs of `plan` (its edges get their depths)."""
    device = get_part(part)
    costs = {s.name: stage_cost(s, device) for s in plan.stages}
    sched = _Schedule(plan, costs, clock_mhz)
    joined = _reconvergent(plan)
    fifo, rows = Memory(), []
    for edge in plan.edges:
        if edge.port:
            continue
        held = _occupancy(sched.written[edge.name], sched.read.get(edge.name, []))
        if edge.consumer:  # an undrained (dead) stream keeps room for its whole tensor
            edge.depth = max(MIN_DEPTH, held) if edge.name in joined else MIN_DEPTH
        row, mem = _edge_row(edge, device)
        rows.append(row)
        fifo = fifo + mem
    for stage in plan.stages:
        cost = costs[stage.name]
        cost.latency_cycles, cost.ii = sched.latency[stage.name], sched.busy[stage.name]
    ends = [sched.written[e.name][-1] + 1 for e in plan.outputs if sched.written[e.name]]
    return StreamEstimate(device, clock_mhz, "stream", list(costs.values()), fifo,
                          latency=max(ends, default=0),
                          interval=max(sched.busy.values(), default=1), fifos=rows)


def estimate_lowered(lowered: Lowered, *, part: str = "xczu9eg",
                     clock_mhz: float = 200) -> tuple[StreamEstimate, StreamPlan]:
    plan = plan_stream(lowered)
    return estimate_plan(plan, part=part, clock_mhz=clock_mhz), plan


def fifo_depths(lowered: Lowered) -> dict[str, int]:
    """FIFO name → depth sized by the schedule (the fpga target's `fifo_depths`; depths do
    not depend on the part)."""
    _, plan = estimate_lowered(lowered)
    return {e.name: e.depth for e in plan.edges if not e.port}


def estimate_stream(module: Module, *, part: str = "xczu9eg", clock_mhz: float = 200,
                    reuse_factor: ReuseFactor = 1) -> StreamEstimate:
    """The io_stream estimate of a fixed-point module (module docstring)."""
    lowered = lower(module, reuse_factor, "stream")
    return estimate_lowered(lowered, part=part, clock_mhz=clock_mhz)[0]


__all__ = ["StreamEstimate", "estimate_lowered", "estimate_plan", "estimate_stream",
           "fifo_depths", "stage_cost"]

"""Row streams for io_stream transformer layers: one token row per beat.

A convolutional tensor streams one pixel per beat, channels packed (`natural_layout`). A
transformer tensor streams one **row** per beat instead: `row_layout(shape, axis)` is one beat
per index of `axis` (the token axis), every other axis packed row-major into the lanes, so a
[S, D] activation is S beats of D raws and the head split [S, H, Dh] -> [H, S, Dh] (a
transpose that keeps the packed axes in order) is the same stream read as beat axis 1: no
stage at all, like a flatten. A transpose that reorders the packed axes is refused.

Row-wise layers (`dense_rows`, `layer_norm`, `softmax` over the last axis, `gelu`, `scale`)
are per-beat stages over the io_parallel templates (`kiln_stream_transformer.h`), so the bits
are io_parallel's. `matmul` buffers its whole second operand (keys or values: streamed along
K or N) and then streams the first operand's rows (along M): `matmul_stream`.

`input_layout` picks the row layout for a model input that a row-wise layer reads;
`row_check` returns a row layer's output layout (None: not a row layer); `row_call` is its
template call; `row_headers` the headers a project with such layers ships.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from kiln.codegen.hls.emit_activations import softmax_args
from kiln.codegen.hls.emit_transformer import template_parts, transformer_call
from kiln.codegen.hls.hls_types import type_name
from kiln.codegen.hls.layers import HlsLayer, HlsTensor, Lowered
from kiln.codegen.hls.transformer_kinds import TRANSFORMER_KINDS

if TYPE_CHECKING:
    from kiln.codegen.hls.emit_stream_plan import Layout, Stage

ROW_KINDS = ("dense_rows", "layer_norm", "matmul", "transpose")
"""Kinds that read their input row by row (a model input they read streams in rows)."""
PER_BEAT = ("dense_rows", "layer_norm", "gelu", "scale")
HEADERS = ("kiln_transformer.h", "kiln_stream_transformer.h")


def row_headers(lowered: Lowered) -> tuple[str, ...]:
    """The transformer headers when a layer needs them, else () (other projects unchanged)."""
    return HEADERS if any(la.kind in TRANSFORMER_KINDS for la in lowered.layers) else ()


def row_layout(shape: tuple[int, ...], axis: int) -> Layout:
    """One beat per index of `axis`, the other axes packed row-major (a vector: one beat)."""
    from kiln.codegen.hls.emit_stream_plan import Layout

    size = 1
    for d in shape:
        size *= d
    if len(shape) <= 1:
        return Layout(1, size)
    return Layout(shape[axis], size // shape[axis], axis)


def input_layout(lowered: Lowered, t: HlsTensor) -> Layout | None:
    """The row layout of a model input some row-wise layer reads; None: the natural one."""
    if len(t.shape) < 2 or not any(la.kind in ROW_KINDS and t in la.inputs
                                   for la in lowered.layers):
        return None
    return row_layout(t.shape, 0)


def flat_index(layout: Layout, shape: tuple[int, ...]) -> str:
    """C expression of the flat (row-major) index of lane `c` of beat `p` (the testbench)."""
    if layout.axis < 0:
        return f"c * {layout.beats} + p"
    inner = 1
    for d in shape[layout.axis + 1:]:
        inner *= d
    if layout.axis == 0:
        return f"p * {layout.lanes} + c"
    return f"(c / {inner} * {layout.beats} + p) * {inner} + c % {inner}"


def reshape_layout(src: Layout, src_shape: tuple[int, ...],
                   out_shape: tuple[int, ...]) -> Layout | None:
    """The row layout of a reshape of a row stream, when the stream is unchanged (the beat
    axis stays the leading axis with the same length); None otherwise."""
    if src.axis == 0 and len(out_shape) > 1 and out_shape[0] == src_shape[0]:
        return row_layout(out_shape, 0)
    return None


def transpose_layout(layer: HlsLayer, src: Layout) -> Layout | None:
    """The row layout a transpose gives its row-stream input, when the packed axes keep their
    order (a relabelling of the same stream); None otherwise."""
    kind: Any = layer.op.kind
    perm = [p - 1 for p in kind.perm[1:]]
    if src.axis < 0 or src.axis not in perm:
        return None
    out_axis = perm.index(src.axis)
    packed = [p for p in perm if p != src.axis]
    if packed != sorted(packed):
        return None
    return row_layout(layer.output.shape, out_axis)


def _last_axis_packed(layout: Layout, rank: int, axes: int = 1) -> bool:
    return 0 <= layout.axis < rank - axes


def row_check(layer: HlsLayer, layouts: list[Layout]) -> tuple[Layout | None, str | None]:
    """(output layout, None) of a row layer; (None, why) when it cannot stream; (None, None)
    when `layer` is not a row layer."""
    rank = len(layer.inputs[0].shape)
    src = layouts[0]
    if layer.kind in ("gelu", "scale"):
        return src, None
    if layer.kind == "softmax" and rank > 1:
        if not _last_axis_packed(src, rank):
            return None, "softmax over an axis that is not packed in the row stream"
        return src, None
    if layer.kind == "dense_rows":
        if not _last_axis_packed(src, rank):
            return None, "a linear over the last axis needs its rows streamed (one per beat)"
        n_out, n_in = layer.weight.shape if layer.weight is not None else (0, 1)
        return type(src)(src.beats, src.lanes // n_in * n_out, src.axis), None
    if layer.kind == "layer_norm":
        kind: Any = layer.op.kind
        if not _last_axis_packed(src, rank, kind.normalized_ndim):
            return None, "layer norm needs its rows streamed (one per beat)"
        return src, None
    if layer.kind == "matmul":
        b_rank = len(layer.inputs[1].shape)
        if src.axis != rank - 2 or layouts[1].axis not in (b_rank - 2, b_rank - 1):
            return None, ("matmul needs its first operand streamed by rows and its second by "
                          "rows or columns")
        return row_layout(layer.output.shape, rank - 2), None
    return None, None


def _per_beat(stage: Stage, epi: str, rt: str) -> str:
    layer = stage.layer
    assert layer is not None
    args, operands = template_parts(transformer_call(layer))
    src = stage.in_layouts[0]
    rest = args.split(", ", 1)[1] if ", " in args else ""
    if layer.kind in ("dense_rows", "layer_norm"):
        n_in = layer.weight.shape[-1] if layer.kind == "dense_rows" and \
            layer.weight is not None else int(rest.split(", ", 1)[0])
        head = f"{src.beats}, {src.lanes // n_in}, {rest}"
    else:
        head = f"{src.beats}, {src.lanes}" + (f", {rest}" if layer.kind == "gelu" else "")
    if layer.kind == "dense_rows":
        return (f"kiln::dense_rows_stream<{head}, {rt}, {epi}, {layer.reuse_factor}>"
                f"(in0, out, {operands})")
    return f"kiln::{layer.kind}_stream<{head}, {rt}, {epi}>(in0, out, {operands})"


def row_call(stage: Stage, epi: str) -> str | None:
    """The stage's template call when it is a row layer, else None."""
    layer = stage.layer
    if layer is None:
        return None
    rt = type_name(layer.output)
    if layer.kind in PER_BEAT:
        return _per_beat(stage, epi, rt)
    if layer.kind == "softmax" and len(layer.inputs[0].shape) > 1:
        row = layer.output.shape[-1]
        args = softmax_args(layer.name, layer.op.kind, layer.inputs[0].dtype,
                            stage.in_layouts[0].lanes // row, row)
        return (f"kiln::softmax_rows_stream<{stage.in_layouts[0].beats}, {args}, {rt}, "
                f"{epi}>(in0, out, {layer.name}_exp, {layer.name}_inv)")
    if layer.kind == "matmul":
        a, b = layer.inputs
        m, k, n = a.shape[-2], a.shape[-1], b.shape[-1]
        batch = layer.output.size // (m * n)
        shift = layer.output.dtype.frac_bits - a.dtype.frac_bits - b.dtype.frac_bits
        along_k = str(stage.in_layouts[1].axis == len(b.shape) - 2).lower()
        return (f"kiln::matmul_stream<{batch}, {m}, {k}, {n}, {shift}, {along_k}, {rt}, "
                f"{epi}>(in0, in1, out)")
    return None


__all__ = ["ROW_KINDS", "flat_index", "input_layout", "reshape_layout", "row_call",
           "row_check", "row_headers", "row_layout", "transpose_layout"]

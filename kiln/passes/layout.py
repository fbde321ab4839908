"""Layout conversion: 2-D convs and pools to channel-last (NHWC) or back, transposes sunk away.

First every layout-sensitive op is rewritten into its twin in the requested layout, wrapped in
transposes so the function still computes the same thing:

    conv2d(x, w)  →  transpose(conv2d_nhwc(transpose(x, 0231), w_hwio), 0312)

(`to=nchw` does the reverse with the NHWC twins of `kiln.ir.ops.layout`). Weights with data are
permuted here (new weights `<name>.hwio`); elided ones get a `kiln.transpose` op.

Then the transposes back to the source layout sink towards the outputs through every op that
does not care about the layout (elementwise ops and casts as they are; softmax, reductions, pad,
slice and concat with their axes renumbered) until they meet their inverse and cancel. A
transpose that only moves size-1 dims becomes a reshape, and `linear(flatten(transpose(x)), w)`
absorbs the transpose into a permutation of `w`'s columns. On a conv net the transposes left
are the one at the input and those where the canonical layout is needed again (an op with no
twin, a reshape, a function output). Transposes the pass did not create are left alone.

The function signature never changes: inputs and outputs keep the NCHW layout. Batch norms
should be folded first (`fold-batchnorm`): one that remains stays NCHW between transposes, like
`conv_transpose2d`. Results are bit-identical to the NCHW module except where a linear absorbed
a transpose (its sums run in another order: ≤ 1e-6 relative).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from functools import partial
from typing import Literal

import numpy as np

from kiln.ir.builder import Builder
from kiln.ir.graph import Module, Op, Value
from kiln.ir.ops.base import OpDef
from kiln.ir.ops.core import Cast
from kiln.ir.ops.elementwise import BinaryOp, UnaryOp
from kiln.ir.ops.layout import (
    CHANNELS_LAST,
    HWIO_FROM_OIHW,
    NCHW_FROM_NHWC,
    NHWC_FROM_NCHW,
    OIHW_FROM_HWIO,
    ChannelsLast,
)
from kiln.ir.ops.nn_conv import Linear
from kiln.ir.ops.nn_norm import LogSoftmax, Softmax
from kiln.ir.ops.reduce import ReduceBase
from kiln.ir.ops.rules import last_axis
from kiln.ir.ops.shape import Concat, Flatten, Pad, Reshape, Slice, Transpose
from kiln.ir.rewriter import Pattern, Rewriter, apply_patterns
from kiln.passes.fold_batchnorm import (
    drop_weight_data,
    erase_unused_parameters,
    new_parameter,
    symbol_of,
)
from kiln.passes.fold_constants import known_value
from kiln.passes.registry import PassContext, register_pass

Perm = tuple[int, ...]


def inverse(perm: Sequence[int]) -> Perm:
    """q with transpose(transpose(x, p), q) = x: q[p[i]] = i."""
    out = [0] * len(perm)
    for i, p in enumerate(perm):
        out[p] = i
    return tuple(out)


def permuted(value: Value, perm: Perm, builder: Builder, suffix: str) -> Value:
    """transpose(value, perm): a new parameter when `value` has data, else a transpose op."""
    array = known_value(value, builder.module) if builder.module is not None else None
    if array is None:
        return builder.add(Transpose(perm=perm), value)
    return new_parameter(builder, value, np.transpose(array, perm), f"{symbol_of(value)}.{suffix}")


def untransposed(value: Value, perm: Perm) -> Value | None:
    """x when `value` is `transpose(x, perm)`, else None."""
    producer = value.producer
    if producer is None or not isinstance(producer.kind, Transpose) or producer.kind.perm != perm:
        return None
    return producer.operands[0]


# -- conversion ------------------------------------------------------------------------------------
def convert(op: Op, to_channels_last: bool, rewriter: Rewriter) -> None:
    """op(x, w, ...) → transpose(twin(transpose(x), permuted w, ...)) back to op's layout."""
    kind = op.kind
    if to_channels_last:
        twin: OpDef = CHANNELS_LAST[type(kind)].from_nchw(kind)
        into, back, weight_perm, suffix = NHWC_FROM_NCHW, NCHW_FROM_NHWC, HWIO_FROM_OIHW, "hwio"
    else:
        assert isinstance(kind, ChannelsLast)
        twin = kind.nchw()
        into, back, weight_perm, suffix = NCHW_FROM_NHWC, NHWC_FROM_NCHW, OIHW_FROM_HWIO, "oihw"
    channels_last = twin if to_channels_last else kind
    builder = rewriter.builder_before(op)
    x = op.operands[0]
    x_into = _existing_transpose(x, into, op) or builder.add(Transpose(perm=into), x)
    operands = [x_into, *op.operands[1:]]
    if isinstance(channels_last, ChannelsLast) and channels_last.HAS_WEIGHT:
        operands[1] = permuted(op.operands[1], weight_perm, builder, suffix)
    converted = builder.add(twin, *operands, name=op.result.name)
    rewriter.replace_op(op, [builder.add(Transpose(perm=back), converted)])


# -- sinking: axis renumbering of single-operand ops -----------------------------------------------
Remap = Callable[[OpDef, Perm, int], OpDef]
"""(op kind, perm p of its operand transpose(x, p), rank) → the kind that acts on x."""


def _same(kind: OpDef, perm: Perm, rank: int) -> OpDef:
    return kind


def _softmax(kind: OpDef, perm: Perm, rank: int) -> OpDef:
    assert isinstance(kind, (Softmax, LogSoftmax))
    return dataclasses.replace(kind, axis=perm[last_axis("axis", kind.axis, rank)])


def _pad(kind: OpDef, perm: Perm, rank: int) -> OpDef:
    assert isinstance(kind, Pad)
    inv = inverse(perm)
    begins, ends = kind.pads[:rank], kind.pads[rank:]
    return dataclasses.replace(kind, pads=tuple(begins[inv[d]] for d in range(rank))
                               + tuple(ends[inv[d]] for d in range(rank)))


def _slice(kind: OpDef, perm: Perm, rank: int) -> OpDef:
    assert isinstance(kind, Slice)
    return dataclasses.replace(kind, axes=tuple(perm[a] for a in kind.axes))


def _reduce(kind: OpDef, perm: Perm, rank: int) -> OpDef:
    assert isinstance(kind, ReduceBase)
    return dataclasses.replace(kind, axes=tuple(sorted(perm[a] for a in kind.axes)))


REMAP: tuple[tuple[type[OpDef] | tuple[type[OpDef], ...], Remap], ...] = (
    ((UnaryOp, Cast), _same),
    ((Softmax, LogSoftmax), _softmax),
    (Pad, _pad),
    (Slice, _slice),
    (ReduceBase, _reduce),
)
"""Single-operand ops a transpose sinks through, and how their axis attributes renumber."""


def _remapped(kind: OpDef, perm: Perm, rank: int) -> OpDef | None:
    for kinds, remap in REMAP:
        if isinstance(kind, kinds):
            return remap(kind, perm, rank)
    return None


def _finish(op: Op, inner: Value, perm: Perm, rewriter: Rewriter) -> bool:
    """Replace `op` by transpose(inner, perm), or by `inner` when perm is the identity."""
    if perm != tuple(range(len(perm))):
        inner = rewriter.builder_before(op).add(Transpose(perm=perm), inner)
    rewriter.replace_op(op, [inner])
    return True


# -- sinking patterns (bound to the perm `back` they move) -----------------------------------------
def sink_through_unary(op: Op, rewriter: Rewriter, back: Perm) -> bool:
    """f(transpose(x, p)) → transpose(f'(x), p), f' = f with its axes renumbered through p.

    A reduction that drops axes keeps the others in x's order; the transpose after it then
    restores the order the original result had (often the identity, which disappears).
    """
    if len(op.operands) != 1 or len(op.results) != 1:
        return False
    x = untransposed(op.operands[0], back)
    kind = _remapped(op.kind, back, len(back)) if x is not None else None
    if x is None or kind is None:
        return False
    perm = back
    inner = rewriter.builder_before(op).add(kind, x, name=op.result.name)
    if isinstance(op.kind, ReduceBase) and not op.kind.keepdims:
        kept = [back[i] for i in range(len(back)) if i not in op.kind.axes]
        perm = tuple(sorted(kept).index(d) for d in kept)
    return _finish(op, inner, perm, rewriter)


def _existing_transpose(value: Value, perm: Perm, before: Op) -> Value | None:
    """transpose(value, perm) when one is already computed ahead of `before`, else None."""
    block = before.block
    if block is None:
        return None
    position = block.ops.index(before)
    for user in value.users:
        if isinstance(user.kind, Transpose) and user.kind.perm == perm and user.block is block \
                and block.ops.index(user) < position:
            return user.result
    return None


def _other_operand(value: Value, perm: Perm, op: Op, module: Module,
                   builder: Builder | None) -> Value | None:
    """What stands in for a binary op's operand that is not transpose(·, p) once the op moves
    below the transpose; None when nothing cheap does. A size-1 tensor stays; an operand whose
    transpose by p⁻¹ is already computed uses it; a parameter with data is reshaped to full
    rank and permuted by p⁻¹. With `builder` None this only checks (creates nothing)."""
    if value.type.numel == 1:
        return value
    existing = _existing_transpose(value, inverse(perm), op)
    if existing is not None:
        return existing
    array = known_value(value, module)
    if array is None or value.type.rank > len(perm):
        return None
    if builder is None:
        return value
    full = np.reshape(array, (1,) * (len(perm) - array.ndim) + array.shape)
    return new_parameter(builder, value, np.transpose(full, inverse(perm)),
                         f"{symbol_of(value)}.permuted")


def sink_through_binary(op: Op, rewriter: Rewriter, back: Perm) -> bool:
    """f(transpose(a, p), transpose(b, p)) → transpose(f(a, b), p); an operand that is not such
    a transpose must be size-1, already transposed by p⁻¹, or a parameter with data."""
    if not isinstance(op.kind, BinaryOp) or op.result.type.rank != len(back):
        return False
    plan = [untransposed(v, back) for v in op.operands]
    if all(x is None for x in plan):
        return False
    module = rewriter.module
    if any(x is None and _other_operand(v, back, op, module, None) is None
           for x, v in zip(plan, op.operands)):
        return False
    builder = rewriter.builder_before(op)
    operands = [x if x is not None else _other_operand(v, back, op, module, builder)
                for x, v in zip(plan, op.operands)]
    inner = builder.add(op.kind, *[v for v in operands if v is not None], name=op.result.name)
    return _finish(op, inner, back, rewriter)


def sink_through_concat(op: Op, rewriter: Rewriter, back: Perm) -> bool:
    """concat(transpose(a, p), transpose(b, p), axis=k) → transpose(concat(a, b, axis=p[k]), p)."""
    if not isinstance(op.kind, Concat):
        return False
    inputs = [untransposed(v, back) for v in op.operands]
    if any(x is None for x in inputs):
        return False
    inner = rewriter.builder_before(op).add(Concat(axis=back[op.kind.axis]),
                                            *[x for x in inputs if x is not None],
                                            name=op.result.name)
    return _finish(op, inner, back, rewriter)


def cancel_inverse_pair(op: Op, rewriter: Rewriter) -> bool:
    """transpose(transpose(x, p), p⁻¹) → x."""
    if not isinstance(op.kind, Transpose):
        return False
    x = untransposed(op.operands[0], inverse(op.kind.perm))
    if x is None:
        return False
    rewriter.replace_op(op, [x])
    return True


def erase_dead_transpose(op: Op, rewriter: Rewriter) -> bool:
    """transpose(x) with no users → (nothing)."""
    if not isinstance(op.kind, Transpose) or op.result.uses:
        return False
    rewriter.erase_op(op)
    return True


# -- clean-up once nothing moves -------------------------------------------------------------------
def unit_transpose_to_reshape(op: Op, rewriter: Rewriter, perms: frozenset[Perm]) -> bool:
    """transpose(x, p) → reshape(x) when p (one of `perms`) moves only size-1 dims."""
    if not isinstance(op.kind, Transpose) or op.kind.perm not in perms:
        return False
    shape = op.operands[0].type.shape
    moved = [p for p in op.kind.perm if shape[p] != 1]
    if moved != sorted(moved):
        return False
    reshaped = rewriter.builder_before(op).add(Reshape(shape=op.result.type.shape),
                                               op.operands[0])
    rewriter.replace_op(op, [reshaped])
    return True


def absorb_flatten_transpose(op: Op, rewriter: Rewriter, back: Perm) -> bool:
    """linear(flatten(transpose(x, p)), w) → linear(flatten(x), w'), w's columns permuted.

    With y = transpose(x, p) of shape (N, d1, ..., dk) and w viewed as (O, d1, ..., dk),
    w' = transpose(w, (0, p⁻¹[1], ..., p⁻¹[k])) flattened back: the same products, summed in
    x's element order. Needs p[0] = 0 (the batch stays first) and w's data.
    """
    flat = op.operands[0].producer if op.isa(Linear) else None
    if flat is None or not flat.isa((Reshape, Flatten)) or len(flat.result.uses) != 1 \
            or flat.result.type.rank != 2 or back[0] != 0:
        return False
    x = untransposed(flat.operands[0], back)
    w = known_value(op.operands[1], rewriter.module)
    y_shape = flat.operands[0].type.shape
    if x is None or w is None or flat.result.type.shape[0] != y_shape[0]:
        return False
    columns = np.reshape(w, (w.shape[0], *y_shape[1:]))
    new_w = np.transpose(columns, (0, *inverse(back)[1:])).reshape(w.shape)
    builder = rewriter.builder_before(op)
    weight = new_parameter(builder, op.operands[1], new_w, f"{symbol_of(op.operands[1])}.permuted")
    flat_x = builder.add(Reshape(shape=flat.result.type.shape), x, name=flat.result.name,
                         loc=flat.loc)
    rewriter.replace_op(op, [builder.add(op.kind, flat_x, weight, *op.operands[2:],
                                         name=op.result.name)])
    transpose = flat.operands[0].producer
    rewriter.erase_op(flat)
    if transpose is not None and not transpose.result.uses:
        rewriter.erase_op(transpose)
    return True


def patterns(back: Perm, into: Perm, absorb: bool) -> tuple[list[Pattern], list[Pattern]]:
    """(sinking patterns, clean-up patterns) for transposes `back` to the source layout."""
    sink: list[Pattern] = [erase_dead_transpose, cancel_inverse_pair,
                           partial(sink_through_unary, back=back),
                           partial(sink_through_binary, back=back),
                           partial(sink_through_concat, back=back)]
    cleanup: list[Pattern] = [erase_dead_transpose,
                              partial(unit_transpose_to_reshape, perms=frozenset({back, into}))]
    if absorb:
        cleanup.append(partial(absorb_flatten_transpose, back=back))
    return sink, cleanup


def _parameters_in_use(module: Module) -> list[Value]:
    """Results of operand-less ops (weights, constants) that have users now."""
    return [op.result for func in module.funcs.values() for op in func.ops
            if not op.operands and len(op.results) == 1 and op.result.uses]


@register_pass("layout")
def layout(module: Module, ctx: PassContext, *, to: Literal["nhwc", "nchw"] = "nhwc",
           absorb_flatten: bool = True) -> bool:
    """Convert 2-D convs and pools to the `to` layout, with transposes only where layouts meet."""
    nhwc = to == "nhwc"
    rewriter = Rewriter(module)
    parameters = _parameters_in_use(module)
    converted = 0
    for func in module.funcs.values():
        for op in list(func.ops):
            if (type(op.kind) in CHANNELS_LAST) if nhwc else isinstance(op.kind, ChannelsLast):
                convert(op, nhwc, rewriter)
                converted += 1
    if not converted:
        return False
    back, into = (NCHW_FROM_NHWC, NHWC_FROM_NCHW) if nhwc else (NHWC_FROM_NCHW, NCHW_FROM_NHWC)
    sink, cleanup = patterns(back, into, absorb_flatten)
    apply_patterns(module, sink)
    apply_patterns(module, cleanup)
    drop_weight_data(module, erase_unused_parameters(parameters, rewriter))
    ctx.count("ops-converted", converted)
    ctx.count("transposes-left", sum(1 for op in module.walk() if op.isa(Transpose)))
    return True

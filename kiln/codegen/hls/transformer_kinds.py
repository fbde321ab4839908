"""Which transformer ops become HLS layers (`kiln_transformer.h`), and what each refuses.

`layers.lower` asks `transformer_kind(op)` before its own table: a linear over the last axis
of a rank > 2 tensor is `dense_rows`, a matmul of two computed tensors `matmul`, a transpose
`transpose`, a mul by a scalar weight `scale`, and the fixed-point ops of
`kiln.ir.ops.fixed_norm` `layer_norm` and `gelu`. `transformer_problem(op, kind)` names what a
template cannot do (broadcast batch dims, permuting the batch axis, more than four axes), so
the lowering reports it with the op's source line before any C++ is written.
"""

from __future__ import annotations

from kiln.ir.graph import Op

TRANSFORMER_KINDS = ("dense_rows", "matmul", "transpose", "scale", "layer_norm", "gelu")
WEIGHTED_KINDS = ("dense_rows", "scale", "layer_norm")
"""Kinds whose operands after the first are constant weights (kiln.weight)."""
MAX_AXES = 4
TRANSFORMER_OPS = {"kiln.matmul": "matmul", "kiln.transpose": "transpose",
                   "kiln.fixed_layer_norm": "layer_norm", "kiln.fixed_gelu": "gelu"}
"""IR ops only these templates implement (for `layers.KINDS`, the list of supported ops; a
rank > 2 linear and a scalar mul take kinds of their own through `transformer_kind`)."""


def _is_scalar_weight(op: Op, index: int) -> bool:
    value = op.operands[index]
    producer = value.producer
    return producer is not None and producer.name == "kiln.weight" and value.type.numel == 1


def transformer_kind(op: Op) -> str | None:
    """The HLS layer kind of `op` when a transformer template implements it."""
    if op.name == "kiln.linear" and op.operands[0].type.rank > 2:
        return "dense_rows"
    if op.name == "kiln.mul" and _is_scalar_weight(op, 1) and not _is_scalar_weight(op, 0):
        return "scale"
    return TRANSFORMER_OPS.get(op.name)


def transformer_problem(op: Op, kind: str) -> tuple[str, str] | None:
    """(message, hint) when the template cannot implement `op`; None when it can."""
    if kind == "matmul":
        a, b = (v.type.shape for v in op.operands)
        if len(a) < 3 or len(a) != len(b) or a[:-2] != b[:-2] or a[-1] != b[-2]:
            return (f"a matmul of shapes {list(a)} x {list(b)} has no HLS implementation (the "
                    "template multiplies [1, ..., M, K] by [1, ..., K, N] with equal batch "
                    "dims)", "broadcast the batch dims in the model")
    if kind == "transpose":
        perm = tuple(getattr(op.kind, "perm", ()))
        if not perm or perm[0] != 0 or len(perm) - 1 > MAX_AXES:
            return (f"a transpose with perm {list(perm)} has no HLS implementation (the "
                    f"template keeps the batch axis first and permutes up to {MAX_AXES} "
                    "others)", "keep the batch axis in place")
    return None


__all__ = ["TRANSFORMER_KINDS", "TRANSFORMER_OPS", "WEIGHTED_KINDS", "transformer_kind",
           "transformer_problem"]

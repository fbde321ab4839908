"""How much an op's result can amplify rounding noise: the generator's check that a value is
worth comparing at 1e-5.

A legitimate rewrite changes rounding (a folded weight is rounded once more, a decomposition
computes in float32, a sum runs in another order), so it may perturb a result by a few ulps of
the *terms* that made it. Compared against the result's own peak, that noise is negligible
unless the terms cancel: `x - mean(x)` over a nearly constant row, the mean of a layer norm's
output, a sum of opposite terms. `condition` estimates, per op, max(noise scale) / max|result|
(1 for ops that cannot cancel); the generator does not reuse (nor return) a value whose
condition exceeds `CONDITION_LIMIT`, so every compared output is well conditioned.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from kiln.ir.ops import elementwise as ew
from kiln.ir.ops import nn_conv, nn_norm, nn_pool, reduce
from kiln.ir.ops.base import OpDef

CONDITION_LIMIT = 20.0
"""Largest accepted noise-to-peak ratio: 20 · a few float32 ulps stays far below 1e-5."""

Rule = Callable[[OpDef, Sequence[np.ndarray]], np.ndarray]
"""Op kind and operand arrays → the scale of rounding noise in each result element."""


def absolute_terms(kind: OpDef, args: Sequence[np.ndarray]) -> np.ndarray:
    """For sums of products (conv, linear, matmul, sums, means, average pools): the same op on
    absolute values gives Σ|terms| for each result element."""
    wide = [np.abs(a.astype(np.float64)) for a in args]
    return kind.reference(*wide)[0]


def add_terms(kind: OpDef, args: Sequence[np.ndarray]) -> np.ndarray:
    """a ± b: |a| + |b|."""
    a, b = (np.abs(x.astype(np.float64)) for x in args)
    return a + b


def batch_norm_terms(kind: OpDef, args: Sequence[np.ndarray]) -> np.ndarray:
    """x·s + (bias − mean·s): |x·s| + |bias| + |mean·s|, s = scale / √(var + eps)."""
    x, scale, bias, mean, var = (a.astype(np.float64) for a in args)
    s = scale / np.sqrt(var + getattr(kind, "eps", 1e-5))
    shape = (1, -1) + (1,) * (x.ndim - 2)
    return np.abs(x * s.reshape(shape)) + (np.abs(bias) + np.abs(mean * s)).reshape(shape)


def layer_norm_terms(kind: OpDef, args: Sequence[np.ndarray]) -> np.ndarray:
    """(x − mean) / √(var + eps): noise of x's own scale, amplified by 1 / √(var + eps)."""
    x = args[0].astype(np.float64)
    axes = tuple(range(x.ndim - getattr(kind, "normalized_ndim", 1), x.ndim))
    var = x.var(axis=axes, keepdims=True)
    peak = np.abs(x).max(axis=axes, keepdims=True)
    terms = np.broadcast_to(peak / np.sqrt(var + getattr(kind, "eps", 1e-5)), x.shape)
    return terms * np.abs(args[1]) if len(args) > 1 else terms


def log_terms(kind: OpDef, args: Sequence[np.ndarray]) -> np.ndarray:
    """log x: a relative error δ of x becomes an absolute error δ, whatever the result."""
    return np.ones_like(args[0], dtype=np.float64)


RULES: dict[type[OpDef], Rule] = {
    ew.Add: add_terms, ew.Sub: add_terms, ew.Log: log_terms,
    nn_norm.BatchNorm: batch_norm_terms, nn_norm.LayerNorm: layer_norm_terms,
    **{cls: absolute_terms for cls in (
        nn_conv.Conv1d, nn_conv.Conv2d, nn_conv.ConvTranspose2d, nn_conv.Linear, nn_conv.MatMul,
        reduce.ReduceSum, reduce.ReduceMean, nn_pool.AvgPool1d, nn_pool.AvgPool2d,
        nn_pool.AdaptiveAvgPool1d, nn_pool.AdaptiveAvgPool2d)},
}
"""Op class → noise-scale rule; ops not listed cannot cancel (condition 1)."""


def condition(kind: OpDef, args: Sequence[np.ndarray], result: np.ndarray) -> float:
    """max(noise scale) / max|result| for `kind` applied to `args` (inf for an all-zero result
    of terms that are not all zero)."""
    rule = RULES.get(type(kind))
    if rule is None or result.size == 0:
        return 1.0
    with np.errstate(all="ignore"):
        noise = float(np.max(rule(kind, args)))
    peak = float(np.max(np.abs(result.astype(np.float64))))
    if not np.isfinite(noise) or noise == 0.0:
        return 1.0
    return noise / peak if peak > 0.0 else float("inf")

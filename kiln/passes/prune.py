"""Pruning: zero the smallest weights (`magnitude`) or remove whole output channels (`l1-channel`).

`prune{method=magnitude, sparsity=0.5, scope=layer|global, skip=a|b}` zeroes the
round(sparsity · size) weights of smallest |w| of every conv / linear / matmul weight
(`scope=layer`), or of all of them ranked together (`scope=global`, one threshold for the whole
model, as `torch.nn.utils.prune.global_unstructured`). Existing zeros count towards the target.
Shapes and types do not change: the zeros are written into `module.weights` under the **same
weight names**, which are the PyTorch parameter names (`conv1.weight`), so `pruning_masks`
hands the torch side one mask per torch parameter. After `fold-batchnorm` the folded weights are
named `conv1.weight.bnfold`; `torch_name` strips that suffix, and the mask is still right for the
torch conv weight because folding scales whole output channels by non-zero factors (a batch-norm
scale of exactly 0 would zero a channel of the folded weight: its mask then marks zeros the torch
weight does not have, which fine-tuning with the mask simply keeps at zero).

`method=l1-channel` is structured pruning (`kiln.passes.prune_channels`): output channels of
smallest L1 norm are removed and the shapes physically shrink.

`skip` names layers to leave alone (with `l1-channel`: a skipped layer keeps its output
channels, while its input side still follows the layers before it); nothing is skipped by
default. A name matches a layer's
result value (`%conv1`), its module path (`conv1`), its weight (`conv1.weight`,
`conv1.weight.bnfold`) or the weight's torch name without `.weight` (`conv1`). The usual choice
is to skip the first conv and the last linear, which hold few weights and matter most:
`skip=conv1|fc`. A name that matches no layer is an error (a typo would silently prune
everything).

A sparsity outside [0, 1) is a `KilnError` naming the option.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

import numpy as np

from kiln.errors import KilnError
from kiln.ir import sparse
from kiln.ir.graph import Module, Op
from kiln.ir.ops.core import Weight
from kiln.ir.ops.nn_conv import Conv1d, Conv2d, Linear, MatMul
from kiln.passes.registry import PassContext, register_pass

LAYERS = (Conv1d, Conv2d, Linear, MatMul)
"""Ops whose weight operands prune and sparsify consider."""
DERIVED_SUFFIXES = (".bnfold",)
"""Suffixes passes add to weight names that still stand for the same torch parameter."""


@dataclass(frozen=True)
class WeightUse:
    """A layer reading a stored weight: operand `index` of `op` is the result of `weight`."""

    op: Op
    index: int
    weight: Op

    @property
    def symbol(self) -> str:
        assert isinstance(self.weight.kind, Weight)
        return self.weight.kind.name

    @property
    def transposed(self) -> bool:
        """True for a matmul rhs (K, N): its matrix view (outputs, reduction) is the transpose."""
        return self.op.isa(MatMul) and self.index == 1

    def names(self) -> set[str]:
        """Every name `skip` may use for this layer (module docstring)."""
        base = torch_name(self.symbol)
        names = {self.symbol, base, base.removesuffix(".weight")}
        if self.op.results and self.op.results[0].name:
            names.add(self.op.results[0].name)
        if self.op.loc.scope:
            names.add(self.op.loc.scope)
        return names


def torch_name(symbol: str) -> str:
    """The torch parameter a weight stands for: `conv1.weight.bnfold` → `conv1.weight`."""
    changed = True
    while changed:
        changed = False
        for suffix in DERIVED_SUFFIXES:
            if symbol.endswith(suffix):
                symbol, changed = symbol[: -len(suffix)], True
    return symbol


def weight_uses(module: Module) -> list[WeightUse]:
    """Every (layer, weight operand) pair among top-level ops, in function order.

    The weight operand is operand 1 of conv/linear and either operand of a matmul, when it is
    the result of a `kiln.weight` op.
    """
    uses = []
    for func in module.funcs.values():
        for op in func.ops:
            if not op.isa(LAYERS):
                continue
            indices = (0, 1) if op.isa(MatMul) else (1,)
            for i in indices:
                producer = op.operands[i].producer if i < len(op.operands) else None
                if producer is not None and producer.isa(Weight):
                    uses.append(WeightUse(op, i, producer))
    return uses


def check_sparsity(value: float, option: str, where: str) -> None:
    """A sparsity must lie in [0, 1) (1 would remove everything)."""
    if not 0.0 <= value < 1.0:
        raise KilnError(f"{where}: option {option}={value} is outside [0, 1)",
                        hint=f"{option} is the fraction of weights to remove, e.g. {option}=0.5")


def check_skip(skip: Iterable[str], uses: Iterable[WeightUse], where: str) -> None:
    """Every name in `skip` matches some layer (module docstring)."""
    known = set().union(*(u.names() for u in uses))
    unknown = sorted(set(skip) - known)
    if unknown:
        raise KilnError(f"{where}: option skip names {', '.join(unknown)}, which match no "
                        "conv, linear or matmul weight",
                        hint="use a layer's value name, module path or weight name "
                             f"(known: {', '.join(sorted(known)[:12])})")


def is_skipped(use: WeightUse, skip: Iterable[str]) -> bool:
    return not use.names().isdisjoint(skip)


def prunable_weights(module: Module, skip: tuple[str, ...], ctx: PassContext) -> list[str]:
    """Symbols of the float weights (with data) of layers not skipped, each once."""
    symbols: dict[str, None] = {}
    for use in weight_uses(module):
        data = module.weights.get(use.symbol)
        if is_skipped(use, skip):
            ctx.logger.debug("prune: skipping %s (option skip)", use.symbol)
        elif data is None:
            ctx.logger.debug("prune: %s has no data (weights elided?)", use.symbol)
        elif not np.issubdtype(data.dtype, np.floating):
            ctx.logger.debug("prune: %s is not a float weight (%s)", use.symbol, data.dtype)
        else:
            symbols[use.symbol] = None
    return list(symbols)


def global_magnitude(arrays: list[np.ndarray], sparsity: float) -> list[np.ndarray]:
    """The arrays with the round(sparsity · total) smallest |w| over all of them zeroed."""
    flat = np.concatenate([np.abs(a.astype(np.float64)).reshape(-1) for a in arrays])
    drop = sparse.smallest(flat, sparse.prune_count(flat.size, sparsity))
    out, start = [], 0
    for a in arrays:
        mask = drop[start:start + a.size].reshape(a.shape)
        out.append(np.where(mask, a.dtype.type(0), a))
        start += a.size
    return out


def magnitude_prune(module: Module, ctx: PassContext, sparsity: float, scope: str,
                    skip: tuple[str, ...]) -> bool:
    """Zero the smallest weights in place of the old arrays, keeping their names."""
    symbols = prunable_weights(module, skip, ctx)
    old = [module.weights[s] for s in symbols]
    if scope == "global" and old:
        new = global_magnitude(old, sparsity)
    else:
        new = [sparse.enforce_magnitude(a, sparsity) for a in old]
    changed = False
    for symbol, before, after in zip(symbols, old, new):
        zeroed = int(np.count_nonzero(before)) - int(np.count_nonzero(after))
        module.weights[symbol] = np.ascontiguousarray(after, dtype=before.dtype)
        ctx.count("weights")
        ctx.count("params", int(after.size))
        ctx.count("zeros", int(after.size - np.count_nonzero(after)))
        ctx.count("zeroed", zeroed)
        changed = changed or zeroed > 0
    return changed


def pruning_masks(module: Module) -> dict[str, np.ndarray]:
    """torch parameter name → boolean mask (True: kept) of every conv/linear/matmul weight.

    For `kiln.compress`: apply the masks to the torch model and keep them during fine-tuning.
    """
    masks: dict[str, np.ndarray] = {}
    for use in weight_uses(module):
        data = module.weights.get(use.symbol)
        if data is not None:
            masks[torch_name(use.symbol)] = np.asarray(data) != 0
    return masks


@register_pass("prune")
def prune(module: Module, ctx: PassContext, *,
          method: Literal["magnitude", "l1-channel"] = "magnitude", sparsity: float = 0.5,
          scope: Literal["layer", "global"] = "layer", skip: tuple[str, ...] = ()) -> bool:
    """Prune conv/linear/matmul weights: zero the smallest, or remove whole output channels."""
    where = "pass 'prune'"
    check_sparsity(sparsity, "sparsity", where)
    check_skip(skip, weight_uses(module), where)
    if method == "l1-channel":
        from kiln.passes.prune_channels import prune_channels
        return prune_channels(module, ctx, sparsity=sparsity, scope=scope, skip=skip)
    return magnitude_prune(module, ctx, sparsity, scope, skip)


__all__ = ["LAYERS", "WeightUse", "check_skip", "check_sparsity", "is_skipped",
           "magnitude_prune", "prune", "pruning_masks", "torch_name", "weight_uses"]

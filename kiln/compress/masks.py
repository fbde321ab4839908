"""Kiln's pruning masks on a PyTorch model, kept in force while it trains.

    pruned = kiln.run_passes(kiln.trace(model, x), "fold-batchnorm,prune{sparsity=0.7}")
    apply_masks(model, pruned)          # or a dict: torch parameter name → boolean mask
    finetune(model, (x_train, y_train), epochs=10)
    remove_masks(model)                 # the zeros stay; plain parameters again
    module = kiln.trace(model, x)       # re-trace and compile as usual

The masks come from `kiln.passes.prune.pruning_masks`: kiln weight names are the torch
parameter names (`conv1.weight`; `conv1.weight.bnfold` after batch-norm folding stands for the
same parameter, because folding scales whole output channels by non-zero factors, so the zero
pattern is the torch weight's).

Each mask is installed with `torch.nn.utils.prune.custom_from_mask`: the module's `weight`
becomes `weight_orig * weight_mask`, recomputed by a forward pre-hook before every call. The
gradient reaching `weight_orig` is multiplied by the mask, and whatever the optimizer (momentum,
weight decay) does to the masked entries of `weight_orig`, the weight the layer uses stays
exactly zero there: pruned weights never revive. `remove_masks` makes the zeros permanent and
restores plain parameters (and the original state-dict names), which `kiln.trace` needs to keep
the weight names. Masks that keep everything (layers `prune` skipped) are not installed.

A mask naming no parameter of the model, or of another shape (a channel-pruned module: use
`kiln.compress.shrink_channels` instead), is a `KilnError` naming it.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.utils import prune

from kiln.errors import KilnError

logger = logging.getLogger("kiln.compress")


def _as_masks(source: Any) -> dict[str, np.ndarray]:
    """A kiln Module (its `pruning_masks`) or a mapping name → mask."""
    from kiln.ir.graph import Module
    if isinstance(source, Module):
        from kiln.passes.prune import pruning_masks
        return pruning_masks(source)
    if isinstance(source, Mapping):
        return {str(k): np.asarray(v.detach().cpu() if isinstance(v, torch.Tensor) else v)
                for k, v in source.items()}
    raise KilnError(f"masks must be a kiln Module pruned by `prune` or a dict of masks, got "
                    f"{type(source).__name__}")


def _owner(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    """The module holding parameter `name` and the attribute it is stored under."""
    path, _, attr = name.rpartition(".")
    try:
        module = model.get_submodule(path) if path else model
    except AttributeError:
        module = None
    if module is None or not isinstance(getattr(module, attr, None), torch.Tensor):
        known = [n for n, _ in model.named_parameters()]
        raise KilnError(f"mask {name!r} names no parameter of {type(model).__name__}",
                        hint=f"the model's parameters: {', '.join(known[:10])}"
                             + (", ..." if len(known) > 10 else ""))
    return module, attr


def _check_shape(name: str, mask: np.ndarray, weight: torch.Tensor) -> None:
    if tuple(mask.shape) != tuple(weight.shape):
        raise KilnError(f"mask {name!r} has shape {list(mask.shape)}, the parameter has "
                        f"{list(weight.shape)}",
                        hint="a channel-pruned module (prune{method=l1-channel}) changes shapes: "
                             "use kiln.compress.shrink_channels for it")


def apply_masks(model: nn.Module, masks: Any) -> dict[str, float]:
    """Install kiln's pruning masks on `model` in place (module docstring).

    `masks` is a kiln Module pruned by `prune{...}` (or `sparsify{...,enforce=true}`) or a
    mapping torch parameter name → boolean mask (True: kept). Returns the sparsity of each
    parameter that got a mask.
    """
    found = _as_masks(masks)
    owners = {name: _owner(model, name) for name in found}  # check every name before editing
    for name, mask in found.items():
        module, attr = owners[name]
        _check_shape(name, mask, getattr(module, attr))
    applied: dict[str, float] = {}
    for name, mask in found.items():
        keep = np.asarray(mask, dtype=bool)
        if keep.all():
            logger.debug("apply_masks: %s keeps every weight; no mask installed", name)
            continue
        module, attr = owners[name]
        weight = getattr(module, attr)
        prune.custom_from_mask(module, attr, torch.from_numpy(keep).to(weight.device))
        applied[name] = 1.0 - float(keep.mean())
        logger.info("apply_masks: %s masked, sparsity %.1f %%", name, 100 * applied[name])
    return applied


def masked_parameters(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every masked parameter of `model`: its name (as in the unmasked model) → boolean mask
    (True: kept)."""
    paths = {id(module): path for path, module in model.named_modules()}
    masks = {}
    for module, attr in _pruning_hooks(model):
        path = paths[id(module)]
        masks[f"{path}.{attr}" if path else attr] = getattr(module, f"{attr}_mask").detach() != 0
    return masks


def _pruning_hooks(model: nn.Module) -> list[tuple[nn.Module, str]]:
    return [(module, hook._tensor_name) for module in model.modules()
            for hook in module._forward_pre_hooks.values()
            if isinstance(hook, prune.BasePruningMethod)]


def copy_model(model: nn.Module) -> nn.Module:
    """`copy.deepcopy(model)`, also for a masked model: the masked weight is a computed
    (non-leaf) tensor that deepcopy refuses, so it is detached first (the pruning hook computes
    it again at the next call)."""
    for module, attr in _pruning_hooks(model):
        setattr(module, attr, getattr(module, attr).detach())
    return copy.deepcopy(model)


def remove_masks(model: nn.Module) -> list[str]:
    """Make the masks permanent (the zeros stay) and restore plain parameters; returns the
    names of the parameters that were masked."""
    names = list(masked_parameters(model))
    for module, attr in _pruning_hooks(model):
        prune.remove(module, attr)
    return names


def sparsity(model: nn.Module) -> dict[str, float]:
    """Fraction of exact zeros of each conv / linear weight (the effective, masked weight)."""
    out = {}
    for path, module in model.named_modules():
        if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Linear)):
            weight = module.weight.detach()
            out[f"{path}.weight"] = float((weight == 0).float().mean())
    return out


__all__ = ["apply_masks", "copy_model", "masked_parameters", "remove_masks", "sparsity"]

"""Channel pruning on the torch side: a physically smaller PyTorch model, kiln's plan.

    module = kiln.run_passes(kiln.trace(model, x), "fold-batchnorm")
    kept = channel_plan(module, sparsity=0.5)        # what prune{method=l1-channel} keeps
    small = shrink_channels(model, x, kept)          # a new nn.Module, fewer channels
    finetune(small, (x_train, y_train), epochs=10)

`channel_plan` runs the analysis of `prune{method=l1-channel}` (`kiln.passes.prune_channels`)
on a kiln module and returns, per pruned layer, its torch weight name and the output channels
it keeps: the same deterministic choice the pass makes on that module (with or without
batch-norm folding: the L1 scores differ, so plan on the module you would prune).

`shrink_channels` applies such a choice to a copy of the torch model. Which torch tensors are
sliced, and along which axis, is not guessed from module order: the **unfolded** trace of the
model is analysed by the same channel-space walk, every parameter and buffer that walk slices
is a `kiln.weight` named by its torch name, and the chosen kept channels replace the walk's own
choice. A conv's weight and bias lose output channels, the next conv's weight input channels,
batch norm its four tensors, a linear after a flatten the matching blocks of input features;
residual adds, concats and depthwise convs follow the analysis. The modules holding sliced
tensors must be `Conv1d`, `Conv2d` (groups 1, or depthwise), `BatchNorm1d/2d` or `Linear`
(their size attributes are updated); anything else is refused with a `KilnError` naming the
module. The shrunk model is run on the example inputs before it is returned: a forward with
hard-coded sizes (`x.view(n, 64)`) fails there with a clear error instead of later.

Numerics: the shrunk model computes what kiln's channel-pruned module computes (the kept
channels are computed exactly as before).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from kiln.compress.masks import copy_model, masked_parameters
from kiln.errors import KilnError
from kiln.ir.graph import Module
from kiln.ir.ops.core import Weight
from kiln.passes.prune import check_skip, check_sparsity, weight_uses
from kiln.passes.prune_channels import ChannelPlan, kept_channels, plan_channels
from kiln.passes.registry import PassContext

logger = logging.getLogger("kiln.compress")
WHERE = "shrink_channels"
RESIZABLE = (nn.Conv1d, nn.Conv2d, nn.BatchNorm1d, nn.BatchNorm2d, nn.Linear)


def channel_plan(module: Module, *, sparsity: float, scope: str = "layer",
                 skip: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
    """torch weight name → kept output channels (sorted), as `prune{method=l1-channel,
    sparsity, scope, skip}` would choose on `module` (which is not changed)."""
    where = "channel_plan"
    check_sparsity(sparsity, "sparsity", where)
    check_skip(skip, weight_uses(module), where)
    if scope not in ("layer", "global"):
        raise KilnError(f"{where}: option scope={scope!r} is unknown", hint="layer or global")
    plan = plan_channels(module, sparsity, scope, tuple(skip), PassContext("prune"))
    return {name: kept.copy() for name, kept in kept_channels(plan, module).items()}


def _refusal(plan: ChannelPlan, traced: Module, name: str) -> str:
    """Why the layer reading weight `name` cannot be pruned in `traced` ('' if unknown)."""
    for use in weight_uses(traced):
        if use.symbol == name:
            label = use.op.result.name or use.op.name
            return plan.refused.get(label, "")
    return ""


def _override(plan: ChannelPlan, traced: Module, kept: Mapping[str, np.ndarray]) -> None:
    """Replace the plan's choice by `kept` (keyed by the source layers' weight names)."""
    used: set[str] = set()
    for root in list(plan.kept):
        names = [op.operands[1].producer.kind.name  # type: ignore[union-attr]
                 for op in plan.spaces[root].sources]
        chosen = [n for n in names if n in kept]
        if not chosen:
            continue
        indices = np.asarray(kept[chosen[0]], dtype=np.int64)
        for name in chosen[1:]:
            if not np.array_equal(np.asarray(kept[name]), indices):
                raise KilnError(f"{WHERE}: {chosen[0]} and {name} feed the same channels "
                                "(a residual add) but keep different ones")
        size = plan.spaces[root].size
        if indices.size == 0 or indices.min() < 0 or indices.max() >= size:
            raise KilnError(f"{WHERE}: kept channels of {chosen[0]} must be in [0, {size})")
        plan.kept[root] = np.unique(indices)
        used.update(chosen)
    for name in sorted(set(kept) - used):
        reason = _refusal(plan, traced, name)
        if reason:
            raise KilnError(f"{WHERE}: the output channels of {name} cannot be pruned: {reason}")
        raise KilnError(f"{WHERE}: kept channels name {name}, which is not a prunable "
                        "conv/linear weight of the traced model",
                        hint="compute them with channel_plan on a trace of this model")


def _cuts(plan: ChannelPlan, traced: Module) -> dict[str, list[tuple[int, np.ndarray]]]:
    """torch tensor name → (axis, kept indices) for every sliced parameter or buffer."""
    cuts: dict[str, list[tuple[int, np.ndarray]]] = {}
    for op, entries in plan.slices.items():
        for index, axis, space in entries:
            indices = plan.indices(space)
            if len(indices) == plan.space(space).size:
                continue
            producer = op.operands[index].producer
            if producer is None or not isinstance(producer.kind, Weight):
                raise op.error(f"{WHERE}: operand {index} is not a parameter of the torch model",
                               cls=KilnError)
            cuts.setdefault(producer.kind.name, []).append((axis, indices))
    return cuts


def _tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    return {**dict(model.named_parameters()), **dict(model.named_buffers())}


def _resize(module: nn.Module, path: str) -> None:
    """Update a resized module's size attributes from its (sliced) tensors."""
    if isinstance(module, (nn.Conv1d, nn.Conv2d)):
        out, per_group = module.weight.shape[:2]
        if module.groups != 1:
            module.groups = out
        module.out_channels, module.in_channels = out, per_group * module.groups
    elif isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
        module.num_features = len(module.running_mean if module.running_mean is not None
                                  else module.weight)
    elif isinstance(module, nn.Linear):
        module.out_features, module.in_features = module.weight.shape
    else:
        raise KilnError(f"{WHERE}: cannot resize {path or 'the model'} "
                        f"({type(module).__name__}); supported: "
                        f"{', '.join(c.__name__ for c in RESIZABLE)}")


def _apply_cuts(model: nn.Module, cuts: Mapping[str, list[tuple[int, np.ndarray]]]) -> None:
    tensors = _tensors(model)
    owners: dict[str, nn.Module] = {}
    for name in cuts:
        if name not in tensors:
            raise KilnError(f"{WHERE}: the trace names {name!r}, which is no parameter or "
                            "buffer of the model")
        path = name.rpartition(".")[0]
        owners[path] = model.get_submodule(path) if path else model
        if not isinstance(owners[path], RESIZABLE):
            _resize(owners[path], path)  # raises with the module's name
    for name, entries in cuts.items():
        path, _, attr = name.rpartition(".")
        owner = owners[path]
        value = getattr(owner, attr).detach()
        for axis, indices in entries:
            value = value.index_select(axis, torch.from_numpy(indices).to(value.device))
        value = value.clone()
        if isinstance(getattr(owner, attr), nn.Parameter):
            setattr(owner, attr, nn.Parameter(value, requires_grad=True))
        else:
            setattr(owner, attr, value)
    for path, owner in owners.items():
        _resize(owner, path)


def shrink_channels(model: nn.Module, example_inputs: Any,
                    kept: Mapping[str, np.ndarray]) -> nn.Module:
    """A copy of `model` whose pruned layers keep only the channels `kept` names (module
    docstring). `model` itself is not changed; the copy is in eval mode."""
    from kiln.frontend.torch_trace import trace
    if masked_parameters(model):
        raise KilnError(f"{WHERE}: the model holds pruning masks; call remove_masks first",
                        hint="masks are for unstructured pruning; channel pruning changes "
                             "shapes instead")
    inputs = example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)
    traced = trace(model.eval(), inputs)
    plan = plan_channels(traced, 0.0, "layer", (), PassContext("prune"))
    _override(plan, traced, kept)
    small = copy_model(model).eval()
    _apply_cuts(small, _cuts(plan, traced))
    try:
        with torch.no_grad():
            small(*inputs)
    except RuntimeError as exc:
        raise KilnError(f"{WHERE}: the shrunk {type(model).__name__} fails on the example "
                        f"inputs: {str(exc).splitlines()[0]}",
                        hint="a forward with hard-coded sizes (view/reshape to fixed "
                             "numbers) cannot follow the new channel counts") from exc
    before = sum(p.numel() for p in model.parameters())
    after = sum(p.numel() for p in small.parameters())
    logger.info("shrink_channels: %d → %d parameters (%.1f %% fewer)", before, after,
                100.0 * (before - after) / max(before, 1))
    return small


__all__ = ["channel_plan", "shrink_channels"]

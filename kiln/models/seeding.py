"""Deterministic construction of the bundled models.

Every model is built inside `seeded(seed)`, so its PyTorch default initialization draws from a
private copy of the RNG: the same seed gives bit-identical weights, and building a model never
disturbs the caller's random state (no global mutable state leaks out of kiln).

Normalization layers fresh from PyTorch are the identity at inference (mean 0, var 1, weight 1,
bias 0), which would let a wrong batch-norm fold or layer-norm lowering pass every test.
`randomize_norms` gives them non-trivial, seeded statistics instead.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

import torch
from torch import nn

ModuleT = TypeVar("ModuleT", bound=nn.Module)

_BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d)


@contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Run the body with `torch.manual_seed(seed)` and restore the caller's CPU RNG afterwards."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def build(factory: Callable[[], ModuleT], seed: int, *, random_norms: bool = False) -> ModuleT:
    """Construct `factory()` deterministically from `seed` and return it in eval mode."""
    with seeded(seed):
        model = factory()
        if random_norms:
            randomize_norms(model)
    return model.eval()


@torch.no_grad()
def randomize_norms(model: nn.Module) -> None:
    """Give every BatchNorm/LayerNorm non-trivial parameters from the current RNG.

    weight ~ U(0.5, 1.5), bias ~ N(0, 0.1); batch norms also get running_mean ~ N(0, 0.1) and
    running_var ~ U(0.5, 1.5).
    """
    for module in model.modules():
        if isinstance(module, (*_BATCH_NORMS, nn.LayerNorm)):
            if module.weight is not None:
                module.weight.uniform_(0.5, 1.5)
            if module.bias is not None:
                module.bias.normal_(0.0, 0.1)
        if isinstance(module, _BATCH_NORMS) and module.running_mean is not None:
            module.running_mean.normal_(0.0, 0.1)
        if isinstance(module, _BATCH_NORMS) and module.running_var is not None:
            module.running_var.uniform_(0.5, 1.5)

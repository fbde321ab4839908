"""Small lowered models for the FPGA/ASIC cost-model tests (traced torch, fixed point)."""

from __future__ import annotations

import numpy as np
import torch

import kiln
from kiln.ir.graph import Module

UNIFORM = "canonicalize,fixed-point{policy=uniform,width=%d,integer=%d}"


def lower(model: torch.nn.Module, shape: tuple[int, ...], width: int = 16,
          before: str = "") -> Module:
    """Trace `model` on a random input; convert it to fixed<width, 4> (narrow: 1) everywhere."""
    torch.manual_seed(0)
    x = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
    module = kiln.trace(model.eval(), (x,))
    pipeline = (before + "," if before else "") + UNIFORM % (width, 4 if width > 8 else 1)
    return kiln.run_passes(module, pipeline)


def dense(n_in: int, n_out: int, width: int = 16, zero_fraction: float = 0.0,
          before: str = "") -> Module:
    """One linear layer (+ relu); `zero_fraction` of the weights set to zero (pruned)."""
    torch.manual_seed(0)
    lin = torch.nn.Linear(n_in, n_out)
    with torch.no_grad():
        flat = lin.weight.view(-1)
        flat.copy_(torch.where(flat < 0, flat - 0.1, flat + 0.1))  # none rounds to zero
        flat[: round(zero_fraction * flat.numel())] = 0.0
    return lower(torch.nn.Sequential(lin, torch.nn.ReLU()), (1, n_in), width, before)


def convnet(channels: int = 4, size: int = 16) -> Module:
    """conv3x3 -> relu -> maxpool -> flatten -> linear."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(1, channels, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Flatten(), torch.nn.Linear(channels * (size // 2) ** 2, 10))
    return lower(net, (1, 1, size, size))

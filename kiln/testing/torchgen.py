"""Random PyTorch models for the cross-target fuzzer: `nn.Module` chains traced by `kiln.trace`.

`random_torch_model(seed)` grows a chain layer by layer from a random input (a feature vector,
a 1-D signal or a 2-D image; sizes such as 1, 3, 7, 17 and 127 on purpose): convolutions with
random strides, paddings, dilations and groups, batch norms with random statistics, pools,
activations, linear layers, layer norms and softmaxes, and residual blocks (`x + f(x)`) whose
body keeps the shape. Each layer is tried on a sample tensor before it is kept, so the chain is
valid by construction; values are kept under `MAX_NUMEL` elements. `torch_case(seed)` traces it
and records PyTorch's outputs on the case's inputs, computed in float64 (the truth the float32
interpreter is held to; PyTorch's own float32 kernels lose accuracy in places, e.g. gelu's
negative tail).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from typing import TypeVar

import numpy as np
import torch
from torch import nn

from kiln.testing.xtarget import Case

T = TypeVar("T")
MAX_NUMEL = 4096
TRIES = 6
AMPLIFICATION_LIMIT = 300.0
"""Largest accepted rounding-noise amplification: 300 · a few float32 ulps < 1e-4."""
FEATURES = (1, 3, 7, 17, 127)
SPATIAL = (1, 3, 7, 8, 17)
CHANNELS = (1, 2, 3, 4, 6, 8)
ACTIVATIONS: tuple[Callable[[], nn.Module], ...] = (
    nn.ReLU, nn.ReLU6, nn.Sigmoid, nn.Tanh, nn.GELU, nn.SiLU, nn.Hardswish, nn.Hardsigmoid,
    lambda: nn.LeakyReLU(0.1), nn.ELU, nn.Identity)


class Residual(nn.Module):
    """x + body(x) (the body keeps the shape)."""

    def __init__(self, body: nn.Module) -> None:
        super().__init__()
        self.body = body

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class _Grow:
    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        torch.manual_seed(seed)

    def pick(self, items: Sequence[T]) -> T:
        return items[int(self.rng.integers(len(items)))]

    def chance(self, p: float) -> bool:
        return bool(self.rng.random() < p)

    def first_shape(self) -> tuple[int, ...]:
        batch = int(self.pick((1, 1, 2)))
        kind = int(self.rng.integers(3))
        if kind == 0:
            return (batch, int(self.pick(FEATURES)))
        if kind == 1:
            return (batch, int(self.pick(CHANNELS)), int(self.pick((*SPATIAL, 127))))
        return (batch, int(self.pick(CHANNELS)), int(self.pick(SPATIAL)),
                int(self.pick(SPATIAL)))

    def layer(self, shape: tuple[int, ...]) -> nn.Module:
        if len(shape) == 2:
            return self.dense(shape)
        return self.spatial(shape, len(shape) - 2)

    def dense(self, shape: tuple[int, ...]) -> nn.Module:
        f = shape[1]
        choice = int(self.rng.integers(5))
        if choice == 0:
            return nn.Linear(f, int(self.pick(FEATURES)), bias=self.chance(0.8))
        if choice == 1:
            return nn.LayerNorm(f)
        if choice == 2:
            return nn.Softmax(dim=-1) if self.chance(0.5) else nn.LogSoftmax(dim=-1)
        if choice == 3:
            return Residual(nn.Sequential(nn.Linear(f, f), self.activation()))
        return self.activation()

    def spatial(self, shape: tuple[int, ...], nd: int) -> nn.Module:
        c = shape[1]
        choice = int(self.rng.integers(7))
        if choice <= 1:
            return self.conv(c, nd)
        if choice == 2:
            bn = (nn.BatchNorm1d if nd == 1 else nn.BatchNorm2d)(c)
            assert bn.running_mean is not None and bn.running_var is not None
            with torch.no_grad():
                bn.running_mean.normal_(0, 0.5)
                bn.running_var.uniform_(0.5, 2.0)
                bn.weight.uniform_(0.5, 1.5)
                bn.bias.normal_(0, 0.2)
            return bn
        if choice == 3:
            return self.pool(nd)
        if choice == 4:
            return Residual(nn.Sequential(self.conv(c, nd, same=True), self.activation()))
        if choice == 5:
            return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(shape[1:]),
                                                         int(self.pick(FEATURES))))
        return self.activation()

    def conv(self, c: int, nd: int, same: bool = False) -> nn.Module:
        k = int(self.pick((1, 2, 3, 5)))
        groups = int(self.pick(tuple(d for d in (1, 2, 3, c) if c % d == 0)))
        out = groups * int(self.pick((1, 2, 3)))
        if same:
            k, out = int(self.pick((1, 3))), c
            groups = int(self.pick(tuple(d for d in (1, c) if c % d == 0)))
            return (nn.Conv1d if nd == 1 else nn.Conv2d)(c, out, k, padding=k // 2,
                                                          groups=groups)
        stride, dilation = int(self.pick((1, 1, 2))), int(self.pick((1, 1, 2)))
        padding = int(self.pick((0, 0, 1, 2)))
        cls = nn.Conv1d if nd == 1 else nn.Conv2d
        return cls(c, out, k, stride=stride, padding=padding, dilation=dilation,
                   groups=groups, bias=self.chance(0.7))

    def pool(self, nd: int) -> nn.Module:
        k, s = int(self.pick((1, 2, 3))), int(self.pick((1, 2)))
        pad = int(self.pick((0, 0, 1))) if k > 1 else 0
        choice = int(self.rng.integers(3))
        if choice == 0:
            return (nn.MaxPool1d if nd == 1 else nn.MaxPool2d)(k, s, padding=pad)
        if choice == 1:
            return (nn.AvgPool1d if nd == 1 else nn.AvgPool2d)(k, s, padding=pad)
        return (nn.AdaptiveAvgPool1d if nd == 1 else nn.AdaptiveAvgPool2d)(
            int(self.pick((1, 2, 3))))

    def activation(self) -> nn.Module:
        return self.pick(ACTIVATIONS)()


def random_torch_model(seed: int, max_layers: int = 6) -> tuple[nn.Module, torch.Tensor]:
    """A random valid `nn.Sequential` (eval mode) and an example input for it."""
    g = _Grow(seed)
    shape = g.first_shape()
    x = torch.randn(shape)
    layers: list[nn.Module] = []
    for _ in range(int(g.rng.integers(1, max_layers + 1))):
        for _attempt in range(6):
            layer = g.layer(tuple(x.shape)).eval()
            try:
                with torch.no_grad():
                    y = layer(x)
            except RuntimeError:
                continue
            if 0 < y.numel() <= MAX_NUMEL:
                layers.append(layer)
                x = y
                break
    if not layers:
        layers.append(nn.ReLU())
    return nn.Sequential(*layers).eval(), torch.randn(shape)


def torch_case(seed: int) -> Case:
    """The traced model of `seed` with its inputs and PyTorch's outputs on them. A model that
    amplifies rounding noise beyond `AMPLIFICATION_LIMIT` (`xtarget_cases.amplification`) is
    drawn again, up to `TRIES` times: its float targets could not be held to 1e-4."""
    from kiln.frontend.torch_trace import trace
    from kiln.testing.xtarget_cases import amplification, case_for

    for k in range(TRIES):
        model, example = random_torch_model(seed + k * 1_000_003)
        module = trace(model, example, method="fx")
        module.name = f"t{seed}"
        case = case_for(module, seed, "torch")
        if amplification(module, case.inputs) <= AMPLIFICATION_LIMIT:
            break
    with torch.no_grad():  # float64: PyTorch's float32 kernels round too (gelu's tail)
        out = copy.deepcopy(model).double()(*(torch.from_numpy(x).double()
                                               for x in case.inputs))
    outs = out if isinstance(out, tuple) else (out,)
    return Case(case.seed, module, case.inputs, case.calibration, "torch",
                tuple(o.float().numpy() for o in outs))

"""A MobileNetV2/V3-style network for 3×32×32 images: inverted residuals, depthwise convs, SE."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


def _activation(name: str) -> nn.Module:
    return nn.Hardswish() if name == "hardswish" else nn.ReLU6()


class SqueezeExcite(nn.Module):
    """Channel gate: global average pool → 1×1 conv → ReLU → 1×1 conv → hardsigmoid → × input."""

    def __init__(self, channels: int, squeeze: int) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.reduce = nn.Conv2d(channels, squeeze, 1)
        self.relu = nn.ReLU()
        self.expand = nn.Conv2d(squeeze, channels, 1)
        self.gate = nn.Hardsigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.gate(self.expand(self.relu(self.reduce(self.pool(x)))))
        return x * scale


@dataclass(frozen=True)
class BlockConfig:
    """One inverted residual block: channels in/expanded/out, stride, activation, SE or not."""

    in_channels: int
    expanded: int
    out_channels: int
    stride: int
    activation: str
    squeeze_excite: bool


class InvertedResidual(nn.Module):
    """1×1 expand-BN-act → depthwise 3×3-BN-act → [SE] → 1×1 project-BN, + input if shapes match."""

    def __init__(self, config: BlockConfig) -> None:
        super().__init__()
        c = config
        self.expand = nn.Conv2d(c.in_channels, c.expanded, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c.expanded)
        self.act1 = _activation(c.activation)
        self.depthwise = nn.Conv2d(c.expanded, c.expanded, 3, stride=c.stride, padding=1,
                                   groups=c.expanded, bias=False)
        self.bn2 = nn.BatchNorm2d(c.expanded)
        self.act2 = _activation(c.activation)
        self.se: nn.Module = nn.Identity()
        if c.squeeze_excite:
            self.se = SqueezeExcite(c.expanded, max(8, c.expanded // 4))
        self.project = nn.Conv2d(c.expanded, c.out_channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(c.out_channels)
        self.residual = c.stride == 1 and c.in_channels == c.out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act1(self.bn1(self.expand(x)))
        y = self.se(self.act2(self.bn2(self.depthwise(y))))
        y = self.bn3(self.project(y))
        return x + y if self.residual else y


BLOCKS = (
    BlockConfig(16, 32, 16, 1, "relu6", True),
    BlockConfig(16, 64, 24, 2, "hardswish", False),
    BlockConfig(24, 72, 24, 1, "hardswish", True),
    BlockConfig(24, 96, 32, 2, "hardswish", True),
)


class MobileNetV2ish(nn.Module):
    """MobileNetV2/V3-style classifier for 3×32×32 inputs.

    stem conv 16@3×3 stride 2 → BN → hardswish (16×16), four inverted residual blocks
    (`BLOCKS`: 16→16 with SE and a residual, 16→24 stride 2, 24→24 with SE and a residual,
    24→32 stride 2 with SE; 4×4 after), 1×1 conv 128 → BN → hardswish, global average pool,
    linear 10. Exercises depthwise convs (groups = channels), relu6, hardswish, hardsigmoid,
    broadcast multiply and residual adds. Input (N, 3, 32, 32), output (N, 10) logits.
    Parameters: 30,108 (stem 464, blocks 24,002, head 4,352, classifier 1,290). Weights random,
    batch-norm statistics randomized (seeded).
    """

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, stride=2, padding=1, bias=False)
        self.stem_bn = nn.BatchNorm2d(16)
        self.stem_act = nn.Hardswish()
        self.blocks = nn.Sequential(*(InvertedResidual(c) for c in BLOCKS))
        self.head = nn.Conv2d(BLOCKS[-1].out_channels, 128, 1, bias=False)
        self.head_bn = nn.BatchNorm2d(128)
        self.head_act = nn.Hardswish()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.classifier = nn.Linear(128, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem_act(self.stem_bn(self.stem(x)))
        x = self.blocks(x)
        x = self.head_act(self.head_bn(self.head(x)))
        return self.classifier(self.flatten(self.pool(x)))

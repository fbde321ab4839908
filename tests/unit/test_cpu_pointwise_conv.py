"""1×1 stride-1 convs with few output channels as a GEMM on the image (`PointwiseConvAnchor`).

Routing (which convs qualify), and end to end against PyTorch at odd sizes: planes that are
not a multiple of the GEMM's column panel, output channels that are not a multiple of its row
panel, clamp (relu6) and tile (residual add, hardswish) epilogues, conv1d, several batch
sizes, and one build under the sanitizers.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

import kiln
from kiln.codegen.c.gemm_anchors import anchor_class
from kiln.codegen.c.pointwise_anchor import POINTWISE_MAX_COUT, PointwiseConvAnchor
from kiln.targets.toolchains import gcc

pytestmark = pytest.mark.skipif(gcc.shutil.which("gcc") is None, reason="needs gcc")


class Pointwise(nn.Module):
    """3x3 stem → 1×1 expand (relu6) → 1×1 project (+ residual) → 1×1 hardswish head."""

    def __init__(self, c: int, expanded: int, head: int) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, c, 3, padding=1)
        self.expand = nn.Conv2d(c, expanded, 1)
        self.project = nn.Conv2d(expanded, c, 1, bias=False)
        self.head = nn.Conv2d(c, head, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        y = self.project(nn.functional.relu6(self.expand(x)))
        return nn.functional.hardswish(self.head(x + y))


class Pointwise1d(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv1d(5, 9, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.a(x))


def check(model: nn.Module, x: torch.Tensor, **options: Any) -> None:
    compiled = kiln.compile(model, x, target="cpu", **options)
    got = compiled(x.numpy())
    got = got[0] if isinstance(got, (list, tuple)) else got
    with torch.no_grad():
        want = model(x).numpy()
    scale = max(float(np.abs(want).max()), 1.0)
    assert np.abs(np.asarray(got) - want).max() <= 1e-4 * scale


def test_routing() -> None:
    """The 1×1 convs with at most POINTWISE_MAX_COUT outputs; not the 3x3 stem, not a wider
    1×1, not a strided one."""
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Conv2d(8, POINTWISE_MAX_COUT, 1),
                          nn.Conv2d(POINTWISE_MAX_COUT, POINTWISE_MAX_COUT + 1, 1),
                          nn.Conv2d(POINTWISE_MAX_COUT + 1, 4, 1, stride=2)).eval()
    compiled = kiln.compile(model, torch.randn(2, 3, 9, 9), target="cpu")
    names = [cls.__name__ for op in compiled.ir.walk()
             if op.name == "kiln.conv2d" and (cls := anchor_class(op)) is not None]
    assert names.count(PointwiseConvAnchor.__name__) == 1 and len(names) == 4


@pytest.mark.parametrize("batch,c,expanded,head,h,w", [
    (1, 16, 32, 8, 16, 16),   # mobilenet's block 0 sizes
    (3, 13, 29, 7, 7, 5),     # odd everything: 35 pixels, 13 and 29 channels
    (2, 24, 30, 32, 4, 4),    # 16 pixels (half a column panel)
    (5, 9, 17, 11, 11, 13),   # 143 pixels
])
def test_matches_torch(batch: int, c: int, expanded: int, head: int, h: int, w: int) -> None:
    torch.manual_seed(int(np.random.default_rng().integers(1 << 16)))
    check(Pointwise(c, expanded, head).eval(), torch.randn(batch, 3, h, w))


def test_conv1d_matches_torch() -> None:
    torch.manual_seed(int(np.random.default_rng().integers(1 << 16)))
    check(Pointwise1d().eval(), torch.randn(4, 5, 37))


def test_under_sanitizers() -> None:
    torch.manual_seed(int(np.random.default_rng().integers(1 << 16)))
    check(Pointwise(13, 29, 7).eval(), torch.randn(3, 3, 7, 5), sanitize=True)

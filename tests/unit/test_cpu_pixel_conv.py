"""Convs on 1×1 images (squeeze-excitation) as one GEMM over the batch (`PixelConvAnchor`).

Routing (which convs qualify), and end to end against PyTorch: an SE block at odd channel
counts and batch sizes, with and without bias, relu and hardsigmoid epilogues, a conv1d, and
one build under the sanitizers.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

import kiln
from kiln.codegen.c.anchors import anchor_class
from kiln.codegen.c.pixel_conv_anchor import PixelConvAnchor
from kiln.targets.toolchains import gcc

pytestmark = pytest.mark.skipif(gcc.shutil.which("gcc") is None, reason="needs gcc")


class SqueezeNet(nn.Module):
    """conv → pool to 1×1 → 1×1 reduce (relu) → 1×1 expand (hardsigmoid) → × the features."""

    def __init__(self, c: int, squeeze: int, bias: bool) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, c, 3, padding=1)
        self.reduce = nn.Conv2d(c, squeeze, 1, bias=bias)
        self.expand = nn.Conv2d(squeeze, c, 1)
        self.head = nn.Conv2d(c, 5, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        s = nn.functional.adaptive_avg_pool2d(y, 1)
        g = nn.functional.hardsigmoid(self.expand(torch.relu(self.reduce(s))))
        return self.head(nn.functional.adaptive_avg_pool2d(y * g, 1))


class PixelConv1d(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv1d(7, 11, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.a(x))


def check(model: nn.Module, x: torch.Tensor, **options: Any) -> None:
    compiled = kiln.compile(model, x, target="cpu", **options)
    got = compiled(x.numpy())
    got = got[0] if isinstance(got, (list, tuple)) else got
    with torch.no_grad():
        want = model(x).numpy()
    scale = max(float(np.abs(want).max()), 1.0)
    assert np.abs(np.asarray(got) - want).max() <= 1e-4 * scale


def routed(model: nn.Module, x: torch.Tensor) -> list[str]:
    """The anchor class name of every conv in the compiled IR."""
    compiled = kiln.compile(model, x, target="cpu")
    return [cls.__name__ for op in compiled.ir.walk()
            if op.name in ("kiln.conv1d", "kiln.conv2d") and (cls := anchor_class(op)) is not None]


def test_only_single_pixel_1x1_convs_are_routed() -> None:
    torch.manual_seed(0)
    names = routed(SqueezeNet(13, 5, True).eval(), torch.randn(3, 3, 6, 6))
    assert names.count(PixelConvAnchor.__name__) == 3  # reduce, expand, head; not the 3x3


@pytest.mark.parametrize("batch,c,squeeze,bias", [(1, 8, 8, True), (5, 13, 5, False),
                                                  (37, 40, 10, True)])
def test_squeeze_excite_matches_torch(batch: int, c: int, squeeze: int, bias: bool) -> None:
    torch.manual_seed(int(np.random.default_rng().integers(1 << 16)))
    check(SqueezeNet(c, squeeze, bias).eval(), torch.randn(batch, 3, 7, 5))


def test_conv1d_on_one_position_matches_torch() -> None:
    torch.manual_seed(int(np.random.default_rng().integers(1 << 16)))
    check(PixelConv1d().eval(), torch.randn(6, 7, 1))


def test_squeeze_excite_under_sanitizers() -> None:
    torch.manual_seed(int(np.random.default_rng().integers(1 << 16)))
    check(SqueezeNet(11, 6, True).eval(), torch.randn(9, 3, 5, 6), sanitize=True)


class PaddedPixel(nn.Module):
    """A 1×1 conv on a 1×1 image with padding 1 and stride 3: its one output reads only the
    zero padding, so it is the bias alone (a pixel GEMM would add x·w)."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(6, 9, 1, stride=3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.a(x)


def test_padded_one_pixel_conv_is_not_a_pixel_gemm() -> None:
    model = PaddedPixel().eval()
    x = torch.randn(4, 6, 1, 1, generator=torch.Generator().manual_seed(
        int(np.random.default_rng().integers(2**31))))
    convs = [op for op in kiln.trace(model, (x,)).main.walk() if op.name == "kiln.conv2d"]
    assert convs and all(anchor_class(op) is not PixelConvAnchor for op in convs)
    with torch.no_grad():
        assert model(x).shape[2:] == (1, 1)
    check(model, x)

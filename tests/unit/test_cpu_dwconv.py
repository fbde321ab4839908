"""The direct convolution over padded lines (`kiln_dwconv.c`): depthwise and few-tap layers.

Kernel level: the runtime file built alone (for this machine and, on x86, for baseline
x86-64 with 4-lane vectors) and compared with PyTorch on odd sizes — every specialised case
(3x3 and 5x5 at stride 1 and 2), the generic loop (other sizes, dilation, unequal strides),
blocks of output channels that start mid-group, and the clamp on store. End to end: models
with depthwise layers compiled for the cpu target against PyTorch (≤ 1e-4 of the output's
scale), one under the sanitizers.
"""

from __future__ import annotations

import ctypes
import math
import platform
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

import kiln
from kiln.codegen.c.conv_anchors import DirectConvAnchor
from kiln.codegen.c.emitter import RUNTIME_HEADERS
from kiln.targets.toolchains import gcc

pytestmark = pytest.mark.skipif(gcc.shutil.which("gcc") is None, reason="needs gcc")
MARCHES = ["native"] + (["x86-64"] if platform.machine() in ("x86_64", "AMD64") else [])


@pytest.fixture(scope="module", params=MARCHES)
def dwconv(request: pytest.FixtureRequest,
           tmp_path_factory: pytest.TempPathFactory) -> Any:
    work: Path = tmp_path_factory.mktemp(f"dwconv-{request.param}")
    root = resources.files("kiln.codegen.c").joinpath("runtime")
    for name in (*RUNTIME_HEADERS, "kiln_dwconv.c"):
        (work / name).write_text(root.joinpath(name).read_text())
    flags = [*gcc.flags(request.param, 1, False), "-Werror", "-fvisibility=default"]
    out = gcc.compile_c(gcc.find("gcc"), work, ["kiln_dwconv.c"], "libdw.so", flags,
                        shared=True)
    fn = ctypes.CDLL(str(out)).kiln_dwconv
    fn.restype = None
    return fn


def run_kernel(fn: Any, x: np.ndarray, wt: np.ndarray, bias: np.ndarray | None,
               groups: int, stride: tuple[int, int], pad: tuple[int, int],
               dil: tuple[int, int], c0: int, c1: int, lo: float, hi: float) -> np.ndarray:
    """Output channels [c0, c1) through kiln_dwconv; the scratch is sized by the code
    generator's formula and followed by NaN guards (a read past it would show in y)."""
    _, c, h, w = x.shape
    cout, cin_g, kh, kw = wt.shape
    oh = (h + 2 * pad[0] - dil[0] * (kh - 1) - 1) // stride[0] + 1
    ow = (w + 2 * pad[1] - dil[1] * (kw - 1) - 1) // stride[1] + 1
    geo = {"C": c, "H": h, "W": w, "KH": kh, "KW": kw, "sh": stride[0], "sw": stride[1],
           "pt": pad[0], "pl": pad[1], "dh": dil[0], "dw": dil[1], "OH": oh, "OW": ow}
    shape = np.array(list(geo.values()), np.int32)
    lines = np.full(DirectConvAnchor.scratch_floats(geo, cin_g) + 64, np.nan, np.float32)
    y = np.full((c1 - c0, oh, ow), np.nan, np.float32)
    p = ctypes.c_void_p
    fn(p(x.ctypes.data), p(wt.ctypes.data), None if bias is None else p(bias.ctypes.data),
       p(y.ctypes.data), c0, c1, cout, groups, p(shape.ctypes.data), ctypes.c_float(lo),
       ctypes.c_float(hi), p(lines.ctypes.data))
    return y


CASES = [  # (C, Cout, groups, k, stride, pad, dilation, H, W)
    (5, 5, 5, (3, 3), (1, 1), (1, 1), (1, 1), 9, 13),     # 3x3 s1, depthwise
    (6, 6, 6, (3, 3), (2, 2), (1, 1), (1, 1), 11, 17),    # 3x3 s2, odd sizes
    (4, 4, 4, (5, 5), (1, 1), (2, 2), (1, 1), 7, 21),     # 5x5 s1
    (3, 3, 3, (5, 5), (2, 2), (2, 2), (1, 1), 12, 35),    # 5x5 s2, wider than a vector
    (4, 4, 4, (3, 3), (1, 1), (0, 0), (1, 1), 6, 5),      # no padding
    (1, 6, 1, (5, 5), (1, 1), (2, 2), (1, 1), 28, 28),    # LeNet's conv1: 1 in, 6 out
    (2, 7, 1, (3, 3), (2, 2), (1, 1), (1, 1), 10, 9),     # groups = 1, few taps, 7 channels
    (4, 8, 4, (3, 3), (1, 1), (1, 1), (1, 1), 8, 8),      # channel multiplier 2
    (6, 6, 3, (3, 3), (1, 1), (1, 1), (1, 1), 7, 7),      # grouped, 2 in per group
    (3, 3, 3, (7, 7), (1, 1), (3, 3), (1, 1), 9, 10),     # generic: 7x7
    (3, 3, 3, (3, 3), (1, 1), (2, 2), (2, 2), 9, 11),     # generic: dilation
    (3, 3, 3, (3, 5), (2, 1), (1, 2), (1, 1), 8, 9),      # generic: unequal kernel, stride
    (2, 2, 2, (3, 3), (3, 3), (1, 1), (1, 1), 13, 19),    # generic: stride 3
    (2, 2, 2, (3, 3), (1, 1), (4, 3), (1, 1), 5, 4),      # padding wider than the kernel
    # the flat path (AVX-512): mobilenet_v2ish's planes, flat vectors across rows, tails
    (9, 9, 9, (3, 3), (1, 1), (1, 1), (1, 1), 16, 16),    # 16 vectors: 1 channel x 8
    (7, 7, 7, (3, 3), (2, 2), (1, 1), (1, 1), 16, 16),    # stride 2, 8x8 out: 4 vectors
    (6, 6, 6, (3, 3), (2, 2), (1, 1), (1, 1), 8, 8),      # stride 2, 4x4 out: 1 vector
    (5, 5, 5, (3, 3), (1, 1), (1, 1), (1, 1), 4, 4),      # 4x4 stride 1
    (5, 5, 5, (3, 3), (1, 1), (1, 1), (1, 1), 14, 14),    # 13 vectors: 8 + 4 + a tail of 1
    (3, 3, 3, (5, 5), (2, 2), (2, 2), (1, 1), 9, 7),      # 5x5 stride 2, odd sizes
    (3, 8, 1, (3, 3), (2, 2), (1, 1), (1, 1), 32, 32),    # the 3-channel stem (the lines)
    (4, 6, 2, (3, 3), (2, 2), (1, 1), (1, 1), 10, 12),    # 2 in per group, narrow: flat
    (8, 4, 4, (3, 3), (2, 2), (1, 1), (1, 1), 9, 10),     # 2 in, 1 out per group: flat
    (3, 3, 3, (3, 3), (2, 2), (0, 0), (1, 1), 9, 9),      # no padding at stride 2: lines
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: "x".join(map(str, c[3])) + f"-g{c[2]}")
def test_kernel_matches_torch(dwconv: Any, case: tuple) -> None:
    c, cout, groups, k, stride, pad, dil, h, w = case
    rng = np.random.default_rng()
    x = rng.standard_normal((1, c, h, w)).astype(np.float32)
    wt = rng.standard_normal((cout, c // groups, *k)).astype(np.float32)
    bias = rng.standard_normal(cout).astype(np.float32)
    want = torch.nn.functional.conv2d(torch.from_numpy(x), torch.from_numpy(wt),
                                      torch.from_numpy(bias), stride, pad, dil, groups)[0]
    got = run_kernel(dwconv, x, wt, bias, groups, stride, pad, dil, 0, cout, -math.inf,
                     math.inf)
    np.testing.assert_allclose(got, want.numpy(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("c0,c1", [(1, 6), (3, 4), (0, 7)])
def test_channel_blocks_and_relu6_on_store(dwconv: Any, c0: int, c1: int) -> None:
    """A block may start inside a group; the clamp is relu6; no bias."""
    rng = np.random.default_rng()
    # inputs scaled so that even a one-channel block (30 outputs) hits both bounds: at 3x the
    # block (3, 4) missed 6 about once in a few thousand runs
    x = (10 * rng.standard_normal((1, 7, 10, 11))).astype(np.float32)
    wt = rng.standard_normal((7, 1, 3, 3)).astype(np.float32)
    want = torch.nn.functional.relu6(torch.nn.functional.conv2d(
        torch.from_numpy(x), torch.from_numpy(wt), None, 2, 1, 1, 7))[0, c0:c1].numpy()
    got = run_kernel(dwconv, x, wt, None, 7, (2, 2), (1, 1), (1, 1), c0, c1, 0.0, 6.0)
    assert (got == 0).any() and (got == 6).any()  # both bounds were exercised
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


class DepthwiseNet(nn.Module):
    """Depthwise 3x3 s1 / s2 and 5x5 layers with relu6, a grouped conv and a few-tap stem."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 8, 5, padding=2)
        self.dw1 = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.dw2 = nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=8, bias=False)
        self.dw3 = nn.Conv2d(8, 16, 5, padding=2, groups=8)
        self.grouped = nn.Conv2d(16, 16, 3, padding=1, groups=8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.stem(x))
        x = nn.functional.relu6(self.dw1(x))
        x = nn.functional.hardswish(self.dw2(x))
        return self.grouped(torch.relu(self.dw3(x)))


def check_model(model: nn.Module, x: torch.Tensor, **options: Any) -> None:
    compiled = kiln.compile(model, x, target="cpu", **options)
    got = compiled(x.numpy())
    got = got[0] if isinstance(got, (list, tuple)) else got
    with torch.no_grad():
        want = model(x).numpy()
    scale = max(float(np.abs(want).max()), 1.0)
    assert np.abs(np.asarray(got) - want).max() <= 1e-4 * scale


def test_mobilenet_ish_matches_torch() -> None:
    from kiln.models import example_inputs, get_model

    seed = int(np.random.default_rng().integers(1 << 16))
    check_model(get_model("mobilenet_v2ish").eval(), example_inputs("mobilenet_v2ish", 2, seed)[0])


def test_depthwise_net_matches_torch_under_sanitizers() -> None:
    """ASan/UBSan: no read or write outside the input, the output, the arena's scratch."""
    torch.manual_seed(int(np.random.default_rng().integers(1 << 16)))
    model = DepthwiseNet().eval()
    check_model(model, torch.randn(2, 1, 13, 11), sanitize=True)

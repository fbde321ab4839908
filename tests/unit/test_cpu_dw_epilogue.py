"""Hardswish on store in the direct convolution (`kiln_dwconv_act`, `store_epilogue`).

Kernel level: kiln_dwconv.c built alone (this machine, and baseline x86-64 on x86) against
PyTorch for the flat path (stride 1 and 2, 16x16 / 8x8 / odd planes) and the padded lines
(the 3-channel stem, a 5x5), with and without a clamp before the hardswish. End to end:
depthwise layers followed by hardswish (and relu6 then hardswish) are fused — no epilogue
tile — and match PyTorch at batches 1, 3 and 64, and under the sanitizers.
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
HARDSWISH = 1  # KILN_DW_HARDSWISH


@pytest.fixture(scope="module", params=MARCHES)
def dwconv_act(request: pytest.FixtureRequest,
               tmp_path_factory: pytest.TempPathFactory) -> Any:
    work: Path = tmp_path_factory.mktemp(f"dwact-{request.param}")
    root = resources.files("kiln.codegen.c").joinpath("runtime")
    for name in (*RUNTIME_HEADERS, "kiln_dwconv.c"):
        (work / name).write_text(root.joinpath(name).read_text())
    flags = [*gcc.flags(request.param, 1, False), "-Werror", "-fvisibility=default"]
    out = gcc.compile_c(gcc.find("gcc"), work, ["kiln_dwconv.c"], "libdwact.so", flags,
                        shared=True)
    fn = ctypes.CDLL(str(out)).kiln_dwconv_act
    fn.restype = None
    return fn


CASES = [  # (C, Cout, groups, k, stride, pad, H, W)
    (9, 9, 9, 3, 1, 1, 16, 16),    # flat, stride 1, 16 vectors
    (7, 7, 7, 3, 2, 1, 16, 16),    # flat, stride 2 (the phase split), 8x8 out
    (6, 6, 6, 3, 2, 1, 8, 8),      # flat, 4x4 out: one vector
    (5, 5, 5, 3, 1, 1, 14, 13),    # flat, odd plane: a masked tail
    (3, 8, 1, 3, 2, 1, 32, 32),    # the 3-channel stem: the padded lines
    (4, 4, 4, 5, 1, 2, 7, 21),     # lines, 5x5
]


@pytest.mark.parametrize("case", CASES, ids=range(len(CASES)))
@pytest.mark.parametrize("lo,hi", [(-math.inf, math.inf), (0.0, 6.0), (-1.5, 2.0)])
def test_kernel_matches_torch(dwconv_act: Any, case: tuple, lo: float, hi: float) -> None:
    c, cout, groups, k, stride, pad, h, w = case
    rng = np.random.default_rng()
    x = (2 * rng.standard_normal((1, c, h, w))).astype(np.float32)
    wt = rng.standard_normal((cout, c // groups, k, k)).astype(np.float32)
    bias = rng.standard_normal(cout).astype(np.float32)
    conv = torch.nn.functional.conv2d(torch.from_numpy(x), torch.from_numpy(wt),
                                      torch.from_numpy(bias), stride, pad, 1, groups)
    want = nn.functional.hardswish(torch.clamp(conv, lo, hi))[0].numpy()
    oh, ow = want.shape[1:]
    geo = {"C": c, "H": h, "W": w, "KH": k, "KW": k, "sh": stride, "sw": stride, "pt": pad,
           "pl": pad, "dh": 1, "dw": 1, "OH": oh, "OW": ow}
    shape = np.array(list(geo.values()), np.int32)
    lines = np.full(DirectConvAnchor.scratch_floats(geo, c // groups) + 64, np.nan, np.float32)
    y = np.full((cout, oh, ow), np.nan, np.float32)
    p = ctypes.c_void_p
    dwconv_act(p(x.ctypes.data), p(wt.ctypes.data), p(bias.ctypes.data), p(y.ctypes.data), 0,
               cout, cout, groups, p(shape.ctypes.data), ctypes.c_float(lo),
               ctypes.c_float(hi), HARDSWISH, p(lines.ctypes.data))
    np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-5)


class Depthwise(nn.Module):
    """Depthwise 3x3 s1 and s2 with hardswish, relu6 then hardswish, and a gelu (the tile)."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.a = nn.Conv2d(c, c, 3, padding=1, groups=c)
        self.b = nn.Conv2d(c, c, 3, stride=2, padding=1, groups=c, bias=False)
        self.c = nn.Conv2d(c, c, 3, padding=1, groups=c)
        self.d = nn.Conv2d(c, c, 3, padding=1, groups=c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.hardswish(self.a(x))
        x = nn.functional.hardswish(self.b(x))
        x = nn.functional.hardswish(nn.functional.relu6(self.c(x)))
        return nn.functional.gelu(self.d(x))


def check(model: nn.Module, x: torch.Tensor, **options: Any) -> str:
    compiled = kiln.compile(model, x, target="cpu", **options)
    got = compiled(x.numpy())
    with torch.no_grad():
        want = model(x).numpy()
    scale = max(float(np.abs(want).max()), 1.0)
    assert np.abs(np.asarray(got) - want).max() <= 1e-4 * scale
    return " | ".join(k["kernel"] for k in compiled.report()["kernels"])


@pytest.mark.parametrize("batch,h,w", [(1, 16, 16), (3, 9, 13), (64, 8, 8)])
def test_fused_matches_torch(batch: int, h: int, w: int) -> None:
    torch.manual_seed(int(np.random.default_rng().integers(1 << 16)))
    notes = check(Depthwise(12).eval(), 3 * torch.randn(batch, 12, h, w))
    assert notes.count("fused hardswish") == 2 and "fused relu6+hardswish" in notes, notes
    assert "epilogue gelu" in notes, notes


def test_under_sanitizers() -> None:
    torch.manual_seed(int(np.random.default_rng().integers(1 << 16)))
    check(Depthwise(5).eval(), 3 * torch.randn(3, 5, 11, 9), sanitize=True)

"""1×1 stride-1 convs straight from the image (`PointwiseConvAnchor`, `kiln_pwconv.c`).

Kernel level: the runtime file built alone (for this machine and, on x86, for baseline
x86-64: 4-lane vectors, the non-AVX-512 loads and stores) against NumPy — odd channel counts
and planes, tiles spanning images, pixel ranges, every epilogue (clamp, hardswish, residual,
the residual in place of the output). End to end against PyTorch: routing, which epilogues
are fused, odd sizes, batches 1, 3 and 64, conv1d, an epilogue that still takes the tile,
threads, and builds under the sanitizers.
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
from kiln.codegen.c.anchors import anchor_class
from kiln.codegen.c.emitter import RUNTIME_HEADERS
from kiln.codegen.c.packing import pack_groups
from kiln.codegen.c.pointwise_anchor import PointwiseConvAnchor
from kiln.targets.toolchains import gcc

pytestmark = pytest.mark.skipif(gcc.shutil.which("gcc") is None, reason="needs gcc")
MARCHES = [("native", 8)] + ([("x86-64", 4)] if platform.machine() in ("x86_64", "AMD64")
                             else [])
"""(march, KILN_MR the library is built with: the weights' panel height)."""


class PwArgs(ctypes.Structure):
    """kiln_pw_args (kiln_pwconv.h)."""

    _fields_ = [("x", ctypes.c_void_p), ("x_image", ctypes.c_ssize_t), ("w", ctypes.c_void_p),
                ("bias", ctypes.c_void_p), ("res", ctypes.c_void_p), ("y", ctypes.c_void_p),
                ("y_image", ctypes.c_ssize_t), ("ldy", ctypes.c_ssize_t), ("C", ctypes.c_int),
                ("Cout", ctypes.c_int), ("P", ctypes.c_int), ("lo", ctypes.c_float),
                ("hi", ctypes.c_float), ("act", ctypes.c_int)]


@pytest.fixture(scope="module", params=MARCHES, ids=lambda m: m[0])
def pwconv(request: pytest.FixtureRequest,
           tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, int]:
    march, mr = request.param
    work: Path = tmp_path_factory.mktemp(f"pwconv-{march}")
    root = resources.files("kiln.codegen.c").joinpath("runtime")
    for name in (*RUNTIME_HEADERS, "kiln_pwconv.c"):
        (work / name).write_text(root.joinpath(name).read_text())
    (work / "kiln_config.h").write_text(f"#define KILN_MR {mr}\n")
    flags = [*gcc.flags(march, 1, False), "-Werror", "-fvisibility=default"]
    out = gcc.compile_c(gcc.find("gcc"), work, ["kiln_pwconv.c"], "libpw.so", flags,
                        shared=True)
    fn = ctypes.CDLL(str(out)).kiln_pwconv
    fn.restype = None
    fn.argtypes = [ctypes.POINTER(PwArgs), ctypes.c_int, ctypes.c_int, ctypes.c_int,
                   ctypes.c_int]
    return fn, mr


def hardswish(v: np.ndarray) -> np.ndarray:
    return v * np.clip(v + 3.0, 0.0, 6.0) / 6.0


KERNEL_CASES = [  # (images, C, Cout, P, images [n0, n1), pixels [p0, p1), lo, hi, act, res)
    (3, 5, 13, 35, (0, 3), (0, 35), -math.inf, math.inf, 0, False),  # odd: tails everywhere
    (4, 16, 24, 16, (0, 4), (0, 16), -math.inf, math.inf, 1, False),  # 4x4: tiles span images
    (2, 24, 9, 64, (1, 2), (0, 64), 0.0, 6.0, 0, True),     # one image of two, residual, relu6
    (2, 7, 17, 143, (0, 2), (21, 90), -1.0, 2.5, 1, True),  # a pixel range, clamp + hardswish
    (1, 33, 8, 256, (0, 1), (0, 256), 0.0, math.inf, 0, False),  # relu, 16 vectors
    (5, 3, 1, 1, (0, 5), (0, 1), -math.inf, math.inf, 1, True),  # one pixel, one channel
]


@pytest.mark.parametrize("case,inplace", [  # in place: the output overwrites the residual
    (case, inplace) for case in KERNEL_CASES for inplace in (False, True)
    if case[-1] or not inplace], ids=lambda v: str(v) if isinstance(v, bool) else None)
def test_kernel_matches_numpy(pwconv: tuple[Any, int], case: tuple, inplace: bool) -> None:
    fn, mr = pwconv
    n, c, cout, p, (n0, n1), (p0, p1), lo, hi, act, with_res = case
    rng = np.random.default_rng()
    x = (3 * rng.standard_normal((n, c, p))).astype(np.float32)
    w = rng.standard_normal((cout, c)).astype(np.float32)
    bias = rng.standard_normal(cout).astype(np.float32)
    packed = np.ascontiguousarray(pack_groups(w, 1, mr), np.float32)
    res = rng.standard_normal((n, cout, p1 - p0)).astype(np.float32)
    y = res.copy() if inplace else np.full((n, cout, p1 - p0), np.nan, np.float32)
    want = np.einsum("ok,nkp->nop", w.astype(np.float64), x[:, :, p0:p1].astype(np.float64))
    want = want + bias[None, :, None]
    if with_res:
        want = want + res
    want = np.clip(want, lo, hi)
    want = hardswish(want) if act else want
    args = PwArgs(x.ctypes.data, c * p, packed.ctypes.data, bias.ctypes.data,
                  (y if inplace else res).ctypes.data if with_res else None, y.ctypes.data,
                  cout * (p1 - p0), p1 - p0, c, cout, p, lo, hi, act)
    fn(ctypes.byref(args), n0, n1, p0, p1)
    np.testing.assert_allclose(y[n0:n1], want[n0:n1], rtol=1e-5, atol=1e-5)
    untouched = res if inplace else np.full_like(y, np.nan)
    np.testing.assert_array_equal(np.delete(y, range(n0, n1), 0),
                                  np.delete(untouched, range(n0, n1), 0))


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


class Epilogues(nn.Module):
    """One 1×1 conv per epilogue form: residual + relu, clamp then hardswish, gelu (not
    fused: the tile), none, and a residual that is the conv's own input (not in place)."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.a, self.b, self.c, self.d, self.e = (nn.Conv2d(c, c, 1) for _ in range(5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.a(x) + x)
        y = nn.functional.hardswish(torch.clamp(self.b(y), -2.0, 1.5))
        y = nn.functional.gelu(self.c(y))
        return self.e(self.d(y)) + y


class Pointwise1d(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv1d(5, 9, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.a(x))


def check(model: nn.Module, x: torch.Tensor, **options: Any) -> Any:
    compiled = kiln.compile(model, x, target="cpu", **options)
    got = compiled(x.numpy())
    got = got[0] if isinstance(got, (list, tuple)) else got
    with torch.no_grad():
        want = model(x).numpy()
    scale = max(float(np.abs(want).max()), 1.0)
    assert np.abs(np.asarray(got) - want).max() <= 1e-4 * scale
    return compiled


def test_routing() -> None:
    """Every 1×1 stride-1 unpadded conv, however many outputs; not the 3x3 stem, not a
    strided or padded 1×1."""
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Conv2d(8, 32, 1), nn.Conv2d(32, 200, 1),
                          nn.Conv2d(200, 4, 1, stride=2), nn.Conv2d(4, 4, 1, padding=1)).eval()
    compiled = kiln.compile(model, torch.randn(2, 3, 9, 9), target="cpu")
    names = [cls.__name__ for op in compiled.ir.walk()
             if op.name == "kiln.conv2d" and (cls := anchor_class(op)) is not None]
    assert names.count(PointwiseConvAnchor.__name__) == 2 and len(names) == 5


@pytest.mark.parametrize("batch,c,expanded,head,h,w", [
    (1, 16, 32, 8, 16, 16),    # mobilenet's block 0 sizes
    (3, 13, 29, 7, 7, 5),      # odd everything: 35 pixels, 13 and 29 channels
    (64, 24, 72, 96, 4, 4),    # 16 pixels: tiles across images; mobilenet's widths
    (5, 9, 17, 11, 11, 13),    # 143 pixels
])
def test_matches_torch(batch: int, c: int, expanded: int, head: int, h: int, w: int) -> None:
    torch.manual_seed(int(np.random.default_rng().integers(1 << 16)))
    compiled = check(Pointwise(c, expanded, head).eval(), torch.randn(batch, 3, h, w))
    notes = " | ".join(k["kernel"] for k in compiled.report()["kernels"])
    assert "fused add" in notes and "fused hardswish" in notes, notes


@pytest.mark.parametrize("batch", [1, 3, 64])
def test_epilogue_forms_match_torch(batch: int) -> None:
    torch.manual_seed(int(np.random.default_rng().integers(1 << 16)))
    compiled = check(Epilogues(11).eval(), torch.randn(batch, 11, 5, 7))
    notes = " | ".join(k["kernel"] for k in compiled.report()["kernels"])
    assert "fused add+relu" in notes and "fused clamp+hardswish" in notes, notes
    assert "epilogue gelu" in notes, notes


def test_threads_match_torch() -> None:
    torch.manual_seed(int(np.random.default_rng().integers(1 << 16)))
    check(Pointwise(24, 72, 96).eval(), torch.randn(7, 3, 8, 8), threads=2)


def test_conv1d_matches_torch() -> None:
    torch.manual_seed(int(np.random.default_rng().integers(1 << 16)))
    check(Pointwise1d().eval(), torch.randn(4, 5, 37))


def test_under_sanitizers() -> None:
    torch.manual_seed(int(np.random.default_rng().integers(1 << 16)))
    check(Pointwise(13, 29, 7).eval(), torch.randn(3, 3, 7, 5), sanitize=True)
    check(Epilogues(11).eval(), torch.randn(3, 11, 5, 7), sanitize=True)

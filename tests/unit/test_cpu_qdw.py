"""The direct int8 depthwise convolution (`runtime/kiln_qdw.c`, `emit_qdw.py`), bit for bit.

Kernel level through ctypes, in a native build (the AVX-512 VNNI path on machines that have it)
and an x86-64-v2 one (the plain loops over the same tiles), exact against an int64 NumPy
convolution and `kiln.ir.requant`: strides 1 and 2, symmetric and lopsided padding (output
pixels whose taps all lie in the padding), dilation, odd planes, kernels of 1..4 rows and
taps, windows of one register and of two (spans up to the 127-byte limit), partial last
tiles, several images, int8 and uint8 storage, each requantization mode. Generated code
through `kiln.compile` (batch 1 and more, plain and under ASan/UBSan, and the int16 fallback
without VNNI) against `kiln.interpret`, and the routing: planes too wide for a window keep
`kiln_qdwch_vnni`.
"""

from __future__ import annotations

import ctypes
import platform
from pathlib import Path

import numpy as np
import pytest

import kiln
from kiln.codegen.c import emit_qdw, emit_qvnni
from kiln.ir import requant
from kiln.ir.graph import Module
from kiln.ir.parser import parse
from kiln.targets.toolchains import gcc
from kiln.testing.qvnni_ctypes import Requant, ptr
from kiln.testing.runtime_lib import build_runtime_library

pytestmark = pytest.mark.skipif(gcc.shutil.which("gcc") is None or
                                platform.machine() not in ("x86_64", "AMD64"),
                                reason="needs gcc on x86-64")


class Geom(ctypes.Structure):
    _fields_ = [(n, ctypes.c_int) for n in
                ("H", "W", "oh", "ow", "kh", "kw", "sh", "sw", "pt", "pl", "dh", "dw")]


class Tile(ctypes.Structure):
    _fields_ = [("start", ctypes.c_int32), ("span", ctypes.c_int32), ("p0", ctypes.c_int32),
                ("count", ctypes.c_int32), ("idx", ctypes.c_uint8 * (emit_qdw.KH * 64))]


@pytest.fixture(scope="module", params=["native", "x86-64-v2"])
def lib(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> ctypes.CDLL:
    work = tmp_path_factory.mktemp(f"qdw-{request.param}")
    path = build_runtime_library(work, request.param, "kiln_qdw_direct_vnni", "kiln_qchannels",
                                 "kiln_qvnni_enabled")
    built = ctypes.CDLL(str(path))
    if request.param == "x86-64-v2":
        assert built.kiln_qvnni_enabled() == 0  # the plain loops
    return built


def test_tile_struct_matches_the_emitter() -> None:
    assert ctypes.sizeof(Tile) == emit_qdw.TILE_BYTES


# C, H, W, kh, kw, stride, padding (top, left, bottom, right), dilation, images
GEOMS = [
    (32, 16, 16, 3, 3, 1, (1, 1, 1, 1), 1, 2),   # MobileNet's: a row per tile, one register
    (64, 16, 16, 3, 3, 2, (1, 1, 1, 1), 1, 1),   # stride 2: 80-byte windows, two registers
    (72, 8, 8, 3, 3, 1, (1, 1, 1, 1), 1, 3),     # two rows per tile
    (96, 8, 8, 3, 3, 2, (1, 1, 1, 1), 1, 2),     # the whole plane, span exactly 64
    (5, 7, 9, 3, 3, 1, (1, 1, 1, 1), 1, 3),      # odd plane: tiles across rows, a partial last
    (3, 13, 11, 3, 3, 2, (1, 1, 1, 1), 1, 1),    # odd plane, stride 2
    (7, 5, 6, 3, 3, 1, (2, 0, 1, 2), 1, 2),      # lopsided padding
    (4, 6, 6, 2, 2, 1, (2, 2, 2, 2), 1, 2),      # corner outputs read only padding
    (6, 9, 9, 3, 3, 1, (2, 2, 2, 2), 2, 1),      # dilation 2
    (4, 10, 12, 1, 4, 1, (0, 1, 0, 2), 1, 2),    # a 1x4 kernel: a full word of taps
    (2, 12, 8, 4, 1, 2, (1, 0, 2, 0), 1, 1),     # a 4x1 kernel: four rows
    (3, 40, 40, 3, 3, 1, (1, 1, 1, 1), 1, 1),    # rows of 40: tiles of 16 within 98 bytes
    (2, 62, 62, 3, 3, 2, (1, 1, 1, 1), 1, 1),    # one pixel spans 127 bytes: the limit
    (1, 3, 3, 3, 3, 1, (0, 0, 0, 0), 1, 4),      # a single output pixel per image
]
MODES = {  # multiplier scales, zo, lo, hi (None: the storage's range, lo 20 above its minimum)
    "int64": ((0.3, 0.9), 5, None, None),
    "minmax": ((1e-4, 4e-3), 3, 10, 100),
    "saturate": ((1e-4, 4e-3), -7, None, None),
}


def reference(x: np.ndarray, w: np.ndarray, zx: int, stride: int,
              pad: tuple[int, int, int, int], dil: int) -> np.ndarray:
    """int64 Σ (x - zx) · w of images [N, C, H, W] by depthwise weights [C, kh, kw]."""
    t, left, b, r = pad
    xs = np.pad(x.astype(np.int64) - zx, ((0, 0), (0, 0), (t, b), (left, r)))
    kh, kw = w.shape[1:]
    oh = (xs.shape[2] - dil * (kh - 1) - 1) // stride + 1
    ow = (xs.shape[3] - dil * (kw - 1) - 1) // stride + 1
    acc = np.zeros((*x.shape[:2], oh, ow), np.int64)
    for ky in range(kh):
        for kx in range(kw):
            tap = xs[:, :, ky * dil:ky * dil + stride * (oh - 1) + 1:stride,
                     kx * dil:kx * dil + stride * (ow - 1) + 1:stride]
            acc += tap * w[None, :, ky, kx, None, None].astype(np.int64)
    return acc


def _requant(rng: np.random.Generator, mode: str, n: int,
             unsigned: bool) -> tuple[np.ndarray, np.ndarray, int, int, int]:
    (s0, s1), zo, lo, hi = MODES[mode]
    mult, shift = requant.quantize_multipliers(rng.uniform(s0, s1, n))
    info = np.iinfo(np.uint8 if unsigned else np.int8)
    zo += 128 if unsigned else 0
    lo = int(info.min) + 20 if lo is None else lo + (128 if unsigned else 0)
    hi = int(info.max) if hi is None else hi + (128 if unsigned else 0)
    return np.asarray(mult, np.int32), np.asarray(shift, np.int32), zo, lo, hi


def _tiles(geom: emit_qdw.DwGeom) -> ctypes.Array[Tile]:
    found = emit_qdw.tiles(geom)
    out = (Tile * len(found))()
    for c, t in zip(out, found):
        c.start, c.span, c.p0, c.count = t.start, t.span, t.p0, t.count
        ctypes.memmove(c.idx, t.idx.ctypes.data, t.idx.nbytes)
    return out


@pytest.mark.parametrize("storage", ["u8", "i8"])
@pytest.mark.parametrize("mode", sorted(MODES))
@pytest.mark.parametrize("case", GEOMS)
def test_kernel_is_bit_exact(lib: ctypes.CDLL, case: tuple, mode: str, storage: str) -> None:
    c, h, w, kh, kw, stride, pad, dil, images = case
    rng = np.random.default_rng()
    unsigned = storage == "u8"
    dtype = np.uint8 if unsigned else np.int8
    info = np.iinfo(dtype)
    x = rng.integers(info.min, int(info.max) + 1, (images, c, h, w)).astype(dtype)
    weights = rng.integers(-128, 128, (c, 1, kh, kw)).astype(np.int8)
    bias = rng.integers(-20000, 20000, c).astype(np.int32)
    zx = int(rng.integers(info.min, int(info.max) + 1))
    acc = reference(x, weights[:, 0], zx, stride, pad, dil)
    oh, ow = acc.shape[2:]
    geom = emit_qdw.DwGeom(h, w, oh, ow, kh, kw, stride, stride, pad[0], pad[1], dil, dil)
    assert geom.fits()
    conv = emit_qvnni.VnniConv(h + pad[0] + pad[2], w + pad[1] + pad[3], oh, ow, kh, kw,
                               stride, stride, dil, dil, 1, 1, c, True, 1)
    zpad = zx + (0 if unsigned else 128)
    packed = emit_qvnni.packed_weights(conv, weights).astype(np.int32)
    folded = emit_qvnni.folded_bias(conv, weights, bias, zpad)
    mult, shift, zo, lo, hi = _requant(rng, mode, c, unsigned)
    rq = Requant(ptr(folded), ptr(mult), ptr(shift), 1, zo, lo, hi, int(unsigned))
    table = np.zeros((c + 8) * 8, np.int32)
    got_mode = lib.kiln_qchannels(ctypes.byref(rq), c, 0, ptr(table))
    assert got_mode == {"int64": 0, "minmax": 1}.get(mode, 3 if unsigned else 2)
    tiles = _tiles(geom)
    out = np.full((images + 1, c, oh, ow), 77, dtype)  # one image more: stores stay in bounds
    lib.kiln_qdw_direct_vnni(ctypes.byref(Geom(*geom.fields())), tiles, len(tiles), ptr(x),
                        int(unsigned), zpad, c, ptr(packed), ptr(table), got_mode, ptr(out),
                        images)
    want = requant.requantize_output(acc + bias.astype(np.int64)[None, :, None, None],
                                     mult.astype(np.int64)[None, :, None, None],
                                     shift.astype(np.int64)[None, :, None, None], zo, lo, hi,
                                     np.int64)
    np.testing.assert_array_equal(out[:images].astype(np.int64), want)
    assert (out[images] == 77).all()


@pytest.mark.parametrize("case", GEOMS)
def test_tiles_cover_every_pixel_within_their_window(case: tuple) -> None:
    """Runs of at most 16 pixels in order, windows of at most SPAN bytes inside the plane,
    every real tap indexing its own byte and every other lane the zero-point byte."""
    _, h, w, kh, kw, stride, pad, dil, _ = case
    oh = (h + pad[0] + pad[2] - dil * (kh - 1) - 1) // stride + 1
    ow = (w + pad[1] + pad[3] - dil * (kw - 1) - 1) // stride + 1
    geom = emit_qdw.DwGeom(h, w, oh, ow, kh, kw, stride, stride, pad[0], pad[1], dil, dil)
    taps = geom.taps()
    p = 0
    for t in emit_qdw.tiles(geom):
        assert t.p0 == p and 1 <= t.count <= 16 and 0 <= t.span <= emit_qdw.SPAN
        assert t.start >= 0 and t.start + t.span <= h * w
        padding = max(t.span, 64)
        idx = t.idx.reshape(emit_qdw.KH, 16, 4).astype(np.int64)
        real = np.full((emit_qdw.KH, 16, 4), -1)
        real[:kh, :t.count, :kw] = taps[p:p + t.count].transpose(1, 0, 2)
        np.testing.assert_array_equal(np.where(real >= 0, idx + t.start, -1), real)
        assert (idx[real < 0] == padding).all()
        p += t.count
    assert p == oh * ow


def test_planes_wider_than_a_window_do_not_fit() -> None:
    assert emit_qdw.DwGeom(62, 62, 31, 31, 3, 3, 2, 2, 1, 1, 1, 1).fits()
    assert not emit_qdw.DwGeom(63, 63, 63, 63, 3, 3, 1, 1, 1, 1, 1, 1).fits()
    assert not emit_qdw.DwGeom(8, 8, 4, 4, 5, 5, 1, 1, 0, 0, 1, 1).fits()


def _module(rng: np.random.Generator, xs: tuple[int, int, int, int], k: int, stride: int,
            storage: str) -> Module:
    """quantize → depthwise qconv2d (symmetric per-channel weights, bias, clamp) → dequantize."""
    n, c, h, w = xs
    oh, ow = (h + 2 - k) // stride + 1, (w + 2 - k) // stride + 1
    zx = int(rng.integers(-100, 100)) + (128 if storage == "u8" else 0)
    zo = int(rng.integers(-20, 20)) + (128 if storage == "u8" else 0)
    mult, shift = requant.quantize_multipliers(rng.uniform(2e-4, 3e-3, c))
    scales = ", ".join(repr(float(v)) for v in rng.uniform(0.001, 0.02, c).astype(np.float32))
    xt, yt = f"q<{storage}, 0.03, {zx}>", f"q<{storage}, 0.05, {zo}>"
    wt = f"q<i8, [{scales}], [{', '.join(['0'] * c)}], axis=0>"
    ints = ", ".join
    dims, ydims = f"{n}x{c}x{h}x{w}", f"{n}x{c}x{oh}x{ow}"
    text = f"""
kiln.module @m {{
  kiln.func @forward(%x: tensor<{dims}xf32>) -> (tensor<{ydims}xf32>) {{
    %xq = kiln.quantize(%x) {{to = {xt}}} : tensor<{dims}x{xt}>
    %w = kiln.weight @w : tensor<{c}x1x{k}x{k}x{wt}>
    %b = kiln.weight @b : tensor<{c}xi32>
    %y = kiln.qconv2d(%xq, %w, %b) {{groups = {c}, padding = [1, 1, 1, 1], \
stride = [{stride}, {stride}], clamp_min = {zo - 60}, \
multiplier = [{ints(map(str, mult))}], shift = [{ints(map(str, shift))}], to = {yt}}} \
: tensor<{ydims}x{yt}>
    %d = kiln.dequantize(%y) : tensor<{ydims}xf32>
    kiln.return %d
  }}
}}
"""
    weights: dict[str, np.ndarray] = {"w": rng.integers(-128, 128, (c, 1, k, k)).astype(np.int8),
                                      "b": rng.integers(-3000, 3000, c).astype(np.int32)}
    return parse(text, weights)


def _check(module: Module, xs: tuple[int, ...], rng: np.random.Generator, cache: Path,
           **options: object) -> str:
    art = kiln.compile(module, [np.zeros(xs, np.float32)], target="cpu", pipeline="dce",
                       cache_dir=cache, **options)
    for _ in range(2):
        x = (rng.standard_normal(xs) * 3).astype(np.float32)
        np.testing.assert_array_equal(np.asarray(art(x)), kiln.interpret(art.ir, x)[0])
    return str(art.files["model.c"])


GENERATED = [  # input shape, kernel, stride, storage
    ((1, 32, 16, 16), 3, 1, "i8"),
    ((3, 24, 9, 11), 3, 2, "u8"),
    ((2, 72, 8, 8), 3, 1, "u8"),
    ((5, 13, 8, 8), 3, 2, "i8"),
]


GENERATED_IDS = ["b1-s1", "b3-s2-odd", "b2-s1", "b5-s2"]
SANITIZED_DEFAULT = "b3-s2-odd"
"""The one generated case also sanitized in the default run (~25 s each: a sanitized runtime
build and run); the others' sanitized runs are marked slow (`make test-slow`)."""


@pytest.mark.parametrize("case,sanitize", [
    pytest.param(case, sanitize, id=f"{name}-{'sanitized' if sanitize else 'plain'}",
                 marks=pytest.mark.slow if sanitize and name != SANITIZED_DEFAULT else ())
    for case, name in zip(GENERATED, GENERATED_IDS) for sanitize in (False, True)])
def test_generated_depthwise_is_bit_exact(case: tuple, sanitize: bool,
                                          tmp_path_factory: pytest.TempPathFactory) -> None:
    xs, k, stride, storage = case
    rng = np.random.default_rng()
    source = _check(_module(rng, xs, k, stride, storage), xs, rng,
                    tmp_path_factory.getbasetemp() / "kiln-cpu-cache", sanitize=sanitize)
    assert "kiln_qdw_direct_vnni(" in source and "kiln_qdwch_vnni(" not in source


def test_generated_depthwise_without_vnni(tmp_path_factory: pytest.TempPathFactory) -> None:
    """x86-64-v2: the same model through the int16 fallback, exact."""
    rng = np.random.default_rng()
    xs = (2, 16, 12, 12)
    _check(_module(rng, xs, 3, 1, "i8"), xs, rng,
           tmp_path_factory.getbasetemp() / "kiln-cpu-cache", march="x86-64-v2")


def test_wide_planes_keep_the_packed_kernel(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Rows of 64 bytes: a pixel's 3x3 taps span 131 bytes, more than a window."""
    rng = np.random.default_rng()
    xs = (1, 4, 20, 64)
    source = _check(_module(rng, xs, 3, 1, "u8"), xs, rng,
                    tmp_path_factory.getbasetemp() / "kiln-cpu-cache")
    assert "kiln_qdwch_vnni(" in source and "kiln_qdw_direct_vnni(" not in source

"""The specialized paths of the VNNI int8 kernels (`runtime/kiln_qvnni.c`), each forced and
checked bit-exact: the requantization modes `kiln_qchannels` picks (int64 lanes; int32 lanes
clamped by min/max; int32 lanes narrowed with signed or unsigned saturation), tiles whose lanes
sit in two separate 64-byte windows (stride-2 rows wider than a window), a single last tile,
the chunked packing of small elem-1 planes and the memset fallback of large ones, the
transposed stores of linear layers, and convolutions of single-pixel images run as a linear
layer over the batch. Kernel level through ctypes (native and x86-64-v2 builds, exact against
an int64 NumPy convolution and `kiln.ir.requant`); generated code through `kiln.compile`, plain
and sanitized (-fsanitize=address,undefined), exact against `kiln.interpret`.
"""

from __future__ import annotations

import ctypes
import platform

import numpy as np
import pytest

import kiln
from kiln.codegen.c import emit_qvnni
from kiln.ir import requant
from kiln.ir.graph import Module
from kiln.ir.parser import parse
from kiln.targets.toolchains import gcc
from kiln.testing.qvnni_ctypes import Geom, Requant, ptr
from kiln.testing.runtime_lib import build_runtime_library

pytestmark = pytest.mark.skipif(gcc.shutil.which("gcc") is None or
                                platform.machine() not in ("x86_64", "AMD64"),
                                reason="needs gcc on x86-64")

LIB_FUNCTIONS = ("kiln_qchannels", "kiln_qconv_vnni", "kiln_qdw_vnni", "kiln_qpack",
                 "kiln_qpack_images", "kiln_qpack_rows", "kiln_qtiles", "kiln_qtiles_images",
                 "kiln_qvnni_enabled")
"""The runtime functions these tests call through ctypes; `build_runtime_library` builds the
sources they link (`runtime_deps.linked_sources`)."""


class Tile(ctypes.Structure):
    _fields_ = [("base", ctypes.c_int32), ("p0", ctypes.c_int32), ("count", ctypes.c_int32),
                ("dense", ctypes.c_int32), ("hi", ctypes.c_int32),
                ("idx", ctypes.c_uint8 * 64)]


@pytest.fixture(scope="module", params=["native", "x86-64-v2"])
def lib(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> ctypes.CDLL:
    work = tmp_path_factory.mktemp(f"qvnni-paths-{request.param}")
    return ctypes.CDLL(str(build_runtime_library(work, request.param, *LIB_FUNCTIONS)))


def test_tile_struct_matches_the_emitter() -> None:
    assert ctypes.sizeof(Tile) == emit_qvnni.TILE_BYTES


def reference_conv(x: np.ndarray, w: np.ndarray, zx: int, stride: int, pad: int,
                   groups: int) -> np.ndarray:
    """int64 Σ (x - zx) · w of one image [C, H, W] (square stride and padding)."""
    xs = np.pad(x.astype(np.int64) - zx, ((0, 0), (pad, pad), (pad, pad)))
    cout, cin, kh, kw = w.shape
    oh = (xs.shape[1] - kh) // stride + 1
    ow = (xs.shape[2] - kw) // stride + 1
    acc = np.zeros((cout, oh, ow), np.int64)
    per = cout // groups
    for ky in range(kh):
        for kx in range(kw):
            tap = xs[:, ky:ky + stride * (oh - 1) + 1:stride, kx:kx + stride * (ow - 1) + 1:stride]
            for g in range(groups):
                acc[g * per:(g + 1) * per] += np.einsum(
                    "chw,oc->ohw", tap[g * cin:(g + 1) * cin],
                    w[g * per:(g + 1) * per, :, ky, kx].astype(np.int64))
    return acc


# requantization of each mode: (scales of the multipliers, zo, lo, hi) per storage
MODES = {
    "int64": ((0.3, 0.9), 5, None, None),         # t = 31 - e <= 32: no int32 form
    "fold": ((1e-9, 2e-9), 90, None, None),      # t ~ 60: zo << (t - 32) leaves int32
    "minmax": ((1e-4, 4e-3), 3, 10, 100),        # hi below the storage maximum
    "saturate": ((1e-4, 4e-3), -7, None, None),  # hi the storage maximum
}
EXPECTED_MODE = {"int64": 0, "fold": 0, "minmax": 1}


def _requant(rng: np.random.Generator, mode: str, n: int, unsigned: bool,
             per_channel: bool) -> tuple[dict[str, np.ndarray], tuple[int, int, int]]:
    (s0, s1), zo, lo, hi = MODES[mode]
    mult, shift = requant.quantize_multipliers(rng.uniform(s0, s1, n if per_channel else 1))
    if unsigned:
        zo += 128
    info = np.iinfo(np.uint8 if unsigned else np.int8)
    lo = int(info.min) + 20 if lo is None else lo + (128 if unsigned else 0)
    hi = int(info.max) if hi is None else hi + (128 if unsigned else 0)
    return ({"mult": np.asarray(mult, np.int32), "shift": np.asarray(shift, np.int32)},
            (zo, lo, hi))


def _want(acc: np.ndarray, bias: np.ndarray, arrays: dict[str, np.ndarray], zo: int, lo: int,
          hi: int, axis: int) -> np.ndarray:
    shape = [1] * acc.ndim
    shape[axis] = -1
    m, e = (arrays[k].astype(np.int64) for k in ("mult", "shift"))
    if len(m) > 1:
        m, e = m.reshape(shape), e.reshape(shape)
    total = acc + bias.astype(np.int64).reshape(shape)
    return requant.requantize_output(total, m, e, zo, lo, hi, np.int64)


def _mode(lib: ctypes.CDLL, rq: Requant, n: int) -> int:
    table = np.zeros((n + 8) * 8, np.int32)
    return int(lib.kiln_qchannels(ctypes.byref(rq), n, 0, ptr(table)))


CONVS = [  # C, H, W, N, k, stride, pad, groups, elem
    (16, 16, 16, 20, 3, 2, 1, 1, 4),    # stride-2 rows of 18 pixels: two windows per tile
    (8, 7, 9, 11, 3, 1, 1, 1, 4),       # 63 pixels: an odd number of tiles
    (3, 56, 56, 3, 3, 1, 1, 3, 1),      # depthwise, a 58 x 58 plane: over 48 chunks
    (24, 9, 9, 24, 3, 2, 1, 24, 1),     # depthwise stride 2, chunked packing
    (1, 28, 28, 6, 5, 1, 2, 1, 1),      # 4 taps of a row per lane, chunked packing
]


@pytest.mark.parametrize("storage", ["u8", "i8"])
@pytest.mark.parametrize("mode", sorted(MODES))
@pytest.mark.parametrize("case", CONVS)
def test_conv_paths_are_bit_exact(lib: ctypes.CDLL, case: tuple, mode: str,
                                  storage: str) -> None:
    c, h, w, n, k, stride, pad, groups, elem = case
    rng = np.random.default_rng([c, h, n, k, stride, len(mode), len(storage)])
    unsigned = storage == "u8"
    dtype = np.uint8 if unsigned else np.int8
    info = np.iinfo(dtype)
    x = rng.integers(info.min, int(info.max) + 1, (c, h, w)).astype(dtype)
    weights = rng.integers(-128, 128, (n, c // groups, k, k)).astype(np.int8)
    bias = rng.integers(-20000, 20000, n).astype(np.int32)
    zx = int(rng.integers(info.min, int(info.max) + 1))
    acc = reference_conv(x, weights, zx, stride, pad, groups)
    oh, ow = acc.shape[1:]
    depthwise = groups == c == n and c > 1
    conv = emit_qvnni.VnniConv(h + 2 * pad, w + 2 * pad, oh, ow, k, k, stride, stride, 1, 1,
                               c // groups, n // groups, groups, depthwise, elem)
    assert conv.fits()
    zpad = zx + (0 if unsigned else 128)
    packed = emit_qvnni.packed_weights(conv, weights).astype(np.int32)
    folded = emit_qvnni.folded_bias(conv, weights, bias, zpad)
    arrays, (zo, lo, hi) = _requant(rng, mode, n, unsigned, per_channel=mode != "saturate")
    rq = Requant(ptr(folded), ptr(arrays["mult"]), ptr(arrays["shift"]),
                 int(len(arrays["mult"]) > 1), zo, lo, hi, int(unsigned))
    assert _mode(lib, rq, n) == EXPECTED_MODE.get(mode, 3 if unsigned else 2)
    geo = Geom(conv.hp, conv.wp, oh, ow, k, k, stride, stride, 1, 1, conv.elem)
    tiles = (Tile * (oh * -(-ow // 16)))()
    ntiles = lib.kiln_qtiles(ctypes.byref(geo), tiles)
    assert 0 < ntiles <= len(tiles)
    assert sum(t.count for t in tiles[:ntiles]) == oh * ow
    packed_x = np.full(conv.scratch_floats() * 4, 0xA5, np.uint8)
    out = np.full((n, oh, ow), 77, dtype)
    cin, cout = c // groups, n // groups
    if depthwise:
        lib.kiln_qpack(ptr(x), int(unsigned), zpad, c, h, w, pad, pad, ctypes.byref(geo),
                       ptr(packed_x))
        lib.kiln_qdw_vnni(ctypes.byref(geo), tiles, ntiles, ptr(packed_x), c, ptr(packed),
                          ctypes.byref(rq), 0, ptr(out), ctypes.c_long(1),
                          ctypes.c_long(oh * ow))
    for g in range(0 if depthwise else groups):
        lib.kiln_qpack(ctypes.c_void_p(x.ctypes.data + g * cin * h * w), int(unsigned), zpad,
                       cin, h, w, pad, pad, ctypes.byref(geo), ptr(packed_x))
        lib.kiln_qconv_vnni(ctypes.byref(geo), tiles, ntiles, ptr(packed_x), cin, cout,
                            ctypes.c_void_p(packed.ctypes.data + g * 4 *
                                            emit_qvnni.group_words(conv)),
                            ctypes.byref(rq), g * cout,
                            ctypes.c_void_p(out.ctypes.data + g * cout * oh * ow),
                            ctypes.c_long(1), ctypes.c_long(oh * ow))
    np.testing.assert_array_equal(out.astype(np.int64),
                                  _want(acc, bias, arrays, zo, lo, hi, 0))


def test_stride_two_tiles_use_two_windows(lib: ctypes.CDLL) -> None:
    """Output rows of 8 pixels 144 bytes apart (stride 2, 18 padded pixels of 4 bytes): 16
    lanes per tile from two windows (one vpermi2b), where one 128-byte window held 8."""
    geo = Geom(18, 18, 8, 8, 3, 3, 2, 2, 1, 1, 4)
    tiles = (Tile * 8)()
    assert lib.kiln_qtiles(ctypes.byref(geo), tiles) == 4
    for t in tiles[:4]:
        assert t.count == 16 and t.hi == 144 and not t.dense
        assert list(t.idx[:4]) == [0, 1, 2, 3] and list(t.idx[32:36]) == [64, 65, 66, 67]


@pytest.mark.parametrize("mode", ["int64", "minmax", "saturate"])
@pytest.mark.parametrize(("m", "k", "n"), [(53, 70, 21), (16, 4, 8), (70, 131, 5)])
def test_linear_transposed_stores_are_bit_exact(lib: ctypes.CDLL, m: int, k: int, n: int,
                                                mode: str) -> None:
    """Rows as lanes, channels stored 8 at a time through the 16 x 8 byte transpose (row and
    channel tails masked)."""
    rng = np.random.default_rng([m, k, n, len(mode)])
    x = rng.integers(-128, 128, (m, k)).astype(np.int8)
    weights = rng.integers(-128, 128, (n, k)).astype(np.int8)
    bias = rng.integers(-5000, 5000, n).astype(np.int32)
    zx = int(rng.integers(-128, 128))
    conv = emit_qvnni.VnniConv(1, m, 1, m, 1, 1, 1, 1, 1, 1, k, n, 1, False, rows=True)
    packed = emit_qvnni.packed_weights(conv, weights).astype(np.int32)
    folded = emit_qvnni.folded_bias(conv, weights, bias, zx + 128)
    arrays, (zo, lo, hi) = _requant(rng, mode, n, False, per_channel=True)
    rq = Requant(ptr(folded), ptr(arrays["mult"]), ptr(arrays["shift"]), 1, zo, lo, hi, 0)
    geo = Geom(1, m, 1, m, 1, 1, 1, 1, 1, 1, 4)
    tiles = (Tile * -(-m // 16))()
    ntiles = lib.kiln_qtiles(ctypes.byref(geo), tiles)
    packed_x = np.full(conv.scratch_floats() * 4, 0x5A, np.uint8)
    lib.kiln_qpack_rows(ptr(x), 0, zx + 128, m, k, ptr(packed_x))
    out = np.full((m, n + 3), 9, np.int8)  # a wider row: stores must stay in their n bytes
    lib.kiln_qconv_vnni(ctypes.byref(geo), tiles, ntiles, ptr(packed_x), k, n, ptr(packed),
                        ctypes.byref(rq), 0, ptr(out), ctypes.c_long(n + 3), ctypes.c_long(1))
    acc = (x.astype(np.int64) - zx) @ weights.astype(np.int64).T
    np.testing.assert_array_equal(out[:, :n].astype(np.int64),
                                  _want(acc, bias, arrays, zo, lo, hi, 1))
    assert (out[:, n:] == 9).all()


def _ints(values: np.ndarray | tuple[int, ...]) -> str:
    return "[" + ", ".join(str(int(v)) for v in values) + "]"


MODULES = [  # x shape, weight shape, op, attributes, result shape, storage, scales, clamp_max
    ((19, 40, 1, 1), (24, 40, 1, 1), "qconv2d", "", (19, 24, 1, 1), "i8", (2e-4, 3e-3), None),
    ((3, 8, 16, 16), (12, 8, 3, 3), "qconv2d", "padding = [1, 1, 1, 1], stride = [2, 2], ",
     (3, 12, 8, 8), "u8", (0.3, 0.9), None),
    ((2, 6, 10, 10), (6, 1, 3, 3), "qconv2d", "groups = 6, padding = [1, 1, 1, 1], ",
     (2, 6, 10, 10), "i8", (2e-4, 3e-3), 40),
    ((21, 33), (10, 33), "qlinear", "", (21, 10), "u8", (2e-4, 3e-3), 200),
]


def _module(rng: np.random.Generator, case: tuple) -> Module:
    """quantize → one q-op with symmetric per-channel weights → dequantize."""
    xs, ws, op, attrs, ys, storage, (s0, s1), high = case
    out = ws[0]
    zx = int(rng.integers(-128, 128)) + (128 if storage == "u8" else 0)
    zo = int(rng.integers(-20, 20)) + (128 if storage == "u8" else 0)
    mult, shift = requant.quantize_multipliers(rng.uniform(s0, s1, out))
    scales = ", ".join(repr(float(v)) for v in rng.uniform(0.001, 0.02, out).astype(np.float32))
    xt, yt = f"q<{storage}, 0.03, {zx}>", f"q<{storage}, 0.05, {zo}>"
    wt = f"q<i8, [{scales}], {_ints((0,) * out)}, axis=0>"
    clamp = f"clamp_min = {zo - 60}, " + ("" if high is None else f"clamp_max = {high}, ")
    dims, wdims, ydims = ("x".join(map(str, s)) for s in (xs, ws, ys))
    text = f"""
kiln.module @m {{
  kiln.func @forward(%x: tensor<{dims}xf32>) -> (tensor<{ydims}xf32>) {{
    %xq = kiln.quantize(%x) {{to = {xt}}} : tensor<{dims}x{xt}>
    %w = kiln.weight @w : tensor<{wdims}x{wt}>
    %b = kiln.weight @b : tensor<{out}xi32>
    %y = kiln.{op}(%xq, %w, %b) {{{attrs}{clamp}multiplier = {_ints(mult)}, \
shift = {_ints(shift)}, to = {yt}}} : tensor<{ydims}x{yt}>
    %d = kiln.dequantize(%y) : tensor<{ydims}xf32>
    kiln.return %d
  }}
}}
"""
    weights = {"w": rng.integers(-128, 128, ws).astype(np.int8),
               "b": rng.integers(-3000, 3000, out).astype(np.int32)}
    return parse(text, weights)


@pytest.mark.parametrize("sanitize", [False, True], ids=["plain", "sanitized"])
@pytest.mark.parametrize("case", MODULES, ids=["pixel-images", "stride2-int64", "depthwise",
                                               "linear"])
def test_generated_paths_are_bit_exact(case: tuple, sanitize: bool,
                                       tmp_path_factory: pytest.TempPathFactory) -> None:
    """The generated code (channel constants once per layer, single-pixel images as one
    linear layer over the batch) matches the interpreter, also under ASan/UBSan."""
    rng = np.random.default_rng([sum(case[0]), len(case[2]), int(sanitize)])
    module = _module(rng, case)
    cache = tmp_path_factory.getbasetemp() / "kiln-cpu-cache"
    art = kiln.compile(module, [np.zeros(case[0], np.float32)], target="cpu", pipeline="dce",
                       cache_dir=cache, sanitize=sanitize)
    source = art.files["model.c"]
    assert "kiln_qchannels(" in source and "_vnni(" in source
    if case[2] == "qconv2d" and case[0][2:] == (1, 1):
        assert "kiln_qpack_rows(" in source and "kiln_qpack(" not in source
    for _ in range(2):
        x = (rng.standard_normal(case[0]) * 3).astype(np.float32)
        np.testing.assert_array_equal(np.asarray(art(x)), kiln.interpret(art.ir, x)[0])


def test_generated_code_needs_no_vnni_for_pixel_images(
        tmp_path_factory: pytest.TempPathFactory) -> None:
    """x86-64-v2 (no VNNI): the single-pixel convolution takes the int16 fallback, exact."""
    rng = np.random.default_rng(2024)
    module = _module(rng, MODULES[0])
    art = kiln.compile(module, [np.zeros(MODULES[0][0], np.float32)], target="cpu",
                       pipeline="dce", march="x86-64-v2",
                       cache_dir=tmp_path_factory.getbasetemp() / "kiln-cpu-cache")
    x = (rng.standard_normal(MODULES[0][0]) * 3).astype(np.float32)
    np.testing.assert_array_equal(np.asarray(art(x)), kiln.interpret(art.ir, x)[0])


STACKS = [  # C, H, W, N, k, stride, pad, groups, elem, images
    (8, 4, 4, 16, 3, 1, 1, 1, 4, 5),     # digits' 4x4 stage: one tile per image
    (6, 14, 14, 16, 5, 1, 0, 1, 4, 3),   # LeNet's conv2: 7 tiles per image
    (16, 8, 8, 24, 1, 1, 0, 1, 4, 4),    # unpadded planes
    (12, 9, 9, 12, 3, 2, 1, 12, 1, 3),   # depthwise, chunked elem-1 packing
    (1, 12, 12, 6, 5, 1, 2, 1, 1, 2),    # 4 taps of a row per lane
]


@pytest.mark.parametrize("case", STACKS)
def test_stacked_images_are_bit_exact(lib: ctypes.CDLL, case: tuple) -> None:
    """Several images stacked in each packed plane (kiln_qpack_images), tiles repeated per
    image with their output offsets (kiln_qtiles_images), one call for all of them."""
    c, h, w, n, k, stride, pad, groups, elem, images = case
    rng = np.random.default_rng([c, h, n, k, images])
    x = rng.integers(-128, 128, (images, c, h, w)).astype(np.int8)
    weights = rng.integers(-128, 128, (n, c // groups, k, k)).astype(np.int8)
    bias = rng.integers(-20000, 20000, n).astype(np.int32)
    zx = int(rng.integers(-128, 128))
    acc = np.stack([reference_conv(x[i], weights, zx, stride, pad, groups)
                    for i in range(images)])
    oh, ow = acc.shape[2:]
    depthwise = groups == c == n
    conv = emit_qvnni.VnniConv(h + 2 * pad, w + 2 * pad, oh, ow, k, k, stride, stride, 1, 1,
                               c // groups, n // groups, groups, depthwise, elem, images=images)
    assert conv.fits()
    packed = emit_qvnni.packed_weights(conv, weights).astype(np.int32)
    folded = emit_qvnni.folded_bias(conv, weights, bias, zx + 128)
    arrays, (zo, lo, hi) = _requant(rng, "saturate", n, False, per_channel=True)
    rq = Requant(ptr(folded), ptr(arrays["mult"]), ptr(arrays["shift"]), 1, zo, lo, hi, 0)
    one = Geom(conv.hp, conv.wp, oh, ow, k, k, stride, stride, 1, 1, conv.elem)
    stacked = Geom(conv.hp * images, conv.wp, oh, ow, k, k, stride, stride, 1, 1, conv.elem)
    tiles = (Tile * (oh * -(-ow // 16) * images))()
    ntiles = lib.kiln_qtiles_images(ctypes.byref(one), images, ctypes.c_long(n * oh * ow),
                                    tiles)
    assert ntiles % images == 0 and sum(t.count for t in tiles[:ntiles]) == images * oh * ow
    packed_x = np.full(conv.scratch_floats() * 4, 0xA5, np.uint8)
    lib.kiln_qpack_images(ptr(x), 0, zx + 128, c, h, w, pad, pad, ctypes.byref(one), images,
                          ctypes.c_long(c * h * w), ptr(packed_x))
    out = np.full((images, n, oh, ow), 77, np.int8)
    if depthwise:
        lib.kiln_qdw_vnni(ctypes.byref(stacked), tiles, ntiles, ptr(packed_x), c, ptr(packed),
                          ctypes.byref(rq), 0, ptr(out), ctypes.c_long(1),
                          ctypes.c_long(oh * ow))
    else:
        lib.kiln_qconv_vnni(ctypes.byref(stacked), tiles, ntiles, ptr(packed_x), c, n,
                            ptr(packed), ctypes.byref(rq), 0, ptr(out), ctypes.c_long(1),
                            ctypes.c_long(oh * ow))
    np.testing.assert_array_equal(out.astype(np.int64),
                                  _want(acc, bias, arrays, zo, lo, hi, 1))


@pytest.mark.parametrize(("batch", "input_bytes"), [(64, 64 * 8 * 16), (8, 8 * 8 * 16),
                                                   (7, 10 ** 6), (64, 10 ** 7)])
@pytest.mark.parametrize("conv", [
    emit_qvnni.VnniConv(6, 6, 4, 4, 3, 3, 1, 1, 1, 1, 8, 16, 1, False),
    emit_qvnni.VnniConv(16, 16, 16, 16, 1, 1, 1, 1, 1, 1, 64, 24, 1, False),
    emit_qvnni.VnniConv(34, 34, 32, 32, 3, 3, 1, 1, 1, 1, 16, 16, 1, False),
])
def test_stacking_divides_the_batch_and_fits_the_budgets(conv: emit_qvnni.VnniConv,
                                                         batch: int, input_bytes: int) -> None:
    """The most images that divide the batch with the stacked scratch within STACK_BYTES and
    the input's own bytes; large planes are not stacked."""
    images = emit_qvnni.stack(conv, batch, input_bytes).images
    if conv.oh * conv.ow > emit_qvnni.STACK_PIXELS:
        assert images == 1
        return
    per_image = conv.image_bytes() + conv.tiles_floats() * 4
    budget = min(emit_qvnni.STACK_BYTES, input_bytes)
    assert batch % images == 0 and (images == 1 or images * per_image <= budget)
    assert all(batch % d or d * per_image > budget for d in range(images + 1, batch + 1))

"""The VNNI int8 convolution kernels (`runtime/kiln_qvnni.c`, `codegen/c/emit_qvnni.py`).

Kernel level: the runtime built on its own (gcc -Werror) for this machine and for x86-64-v2
(where the same functions run as plain loops over the same layouts), called through ctypes on
random data with odd shapes (K, output channels and pixels not multiples of 4/8/16, several
rows per tile, strides, dilations, asymmetric padding, groups, depthwise, a linear layer with
strided stores), uint8 and int8 activations with zero points at the storage extremes,
per-channel and per-tensor multipliers and clamps; compared exactly with an int64 NumPy
convolution and `kiln.ir.requant`. End to end: one quantized conv / depthwise conv / conv1d /
linear layer with symmetric weights from IR text, built for this machine (VNNI) and for
x86-64-v2 (the int16 fallback under `#if !KILN_QVNNI`), bit-exact with `kiln.interpret`
(the bundled models run through the VNNI path in tests/e2e/test_cpu_int8.py).
"""

from __future__ import annotations

import ctypes
import platform
from pathlib import Path

import numpy as np
import pytest

import kiln
from kiln.codegen.c import emit_qvnni
from kiln.ir import requant
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


@pytest.fixture(scope="module", params=["native", "x86-64-v2"])
def lib(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> ctypes.CDLL:
    work = tmp_path_factory.mktemp(f"qvnni-{request.param}")
    return ctypes.CDLL(str(build_runtime_library(work, request.param, *LIB_FUNCTIONS)))


def reference_conv(x: np.ndarray, w: np.ndarray, zx: int, stride: tuple[int, int],
                   pad: tuple[int, int, int, int], dil: tuple[int, int],
                   groups: int) -> np.ndarray:
    """int64 Σ (x - zx) · w of one image [C, H, W], zero padding after the shift."""
    xs = np.pad(x.astype(np.int64) - zx, ((0, 0), (pad[0], pad[2]), (pad[1], pad[3])))
    cout, cin, kh, kw = w.shape
    oh = (xs.shape[1] - dil[0] * (kh - 1) - 1) // stride[0] + 1
    ow = (xs.shape[2] - dil[1] * (kw - 1) - 1) // stride[1] + 1
    acc = np.zeros((cout, oh, ow), np.int64)
    per = cout // groups
    for ky in range(kh):
        for kx in range(kw):
            y0, x0 = ky * dil[0], kx * dil[1]
            tap = xs[:, y0:y0 + stride[0] * (oh - 1) + 1:stride[0],
                     x0:x0 + stride[1] * (ow - 1) + 1:stride[1]]
            for g in range(groups):
                part = tap[g * cin:(g + 1) * cin]
                acc[g * per:(g + 1) * per] += np.einsum(
                    "chw,oc->ohw", part, w[g * per:(g + 1) * per, :, ky, kx].astype(np.int64))
    return acc


def random_requant(rng: np.random.Generator, channels: int, unsigned_out: bool,
                   per_channel: bool) -> tuple[dict[str, np.ndarray], tuple[int, int, int]]:
    n = channels if per_channel else 1
    mult, shift = requant.quantize_multipliers(rng.uniform(1e-4, 4e-3, n))
    zo = int(rng.integers(0, 256)) if unsigned_out else int(rng.integers(-128, 128))
    lo, hi = (0, 255) if unsigned_out else (-128, 127)
    lo = int(rng.integers(lo, lo + 40))
    return ({"mult": np.asarray(mult, np.int32), "shift": np.asarray(shift, np.int32)},
            (zo, lo, hi))


def requant_reference(acc: np.ndarray, bias: np.ndarray, arrays: dict[str, np.ndarray],
                      zo: int, lo: int, hi: int, axis: int) -> np.ndarray:
    shape = [1] * acc.ndim
    shape[axis] = -1
    m, e = (arrays[k].astype(np.int64) for k in ("mult", "shift"))
    if len(m) > 1:
        m, e = m.reshape(shape), e.reshape(shape)
    total = acc + bias.astype(np.int64).reshape(shape)
    return requant.requantize_output(total, m, e, zo, lo, hi, np.int64)


CONVS = [  # C, H, W, N, kh, kw, stride, pad (t, l, b, r), dilation, groups, storage, zx
    (1, 28, 28, 6, 5, 5, (1, 1), (2, 2, 2, 2), (1, 1), 1, "u8", 0),
    (3, 9, 7, 13, 3, 3, (2, 2), (1, 1, 1, 1), (1, 1), 1, "i8", -128),
    (5, 6, 11, 17, 3, 2, (1, 2), (0, 1, 2, 0), (2, 1), 1, "i8", 127),
    (7, 5, 5, 9, 1, 1, (1, 1), (0, 0, 0, 0), (1, 1), 1, "u8", 255),
    (6, 8, 9, 4, 3, 3, (1, 1), (1, 0, 1, 2), (1, 1), 2, "u8", 131),
    (13, 4, 4, 3, 1, 1, (2, 2), (0, 0, 0, 0), (1, 1), 1, "i8", 3),
]


def _run_conv(lib: ctypes.CDLL, case: tuple, seed: int, per_channel: bool, elem: int) -> None:
    c, h, w, n, kh, kw, stride, pad, dil, groups, storage, zx = case
    rng = np.random.default_rng(seed)
    dtype = np.uint8 if storage == "u8" else np.int8
    info = np.iinfo(dtype)
    x = rng.integers(info.min, int(info.max) + 1, (c, h, w)).astype(dtype)
    weights = rng.integers(-128, 128, (n, c // groups, kh, kw)).astype(np.int8)
    bias = rng.integers(-5000, 5000, n).astype(np.int32)
    acc = reference_conv(x, weights, zx, stride, pad, dil, groups)
    oh, ow = acc.shape[1:]
    depthwise = groups == c == n and c > 1
    conv = emit_qvnni.VnniConv(h + pad[0] + pad[2], w + pad[1] + pad[3], oh, ow, kh, kw,
                               *stride, *dil, c // groups, n // groups, groups, depthwise,
                               1 if depthwise else elem)
    assert conv.fits()
    zpad = zx + (128 if storage == "i8" else 0)
    packed = emit_qvnni.packed_weights(conv, weights).astype(np.int32)
    folded = emit_qvnni.folded_bias(conv, weights, bias, zpad)
    arrays, (zo, lo, hi) = random_requant(rng, n, storage == "u8", per_channel)
    rq = Requant(ptr(folded), ptr(arrays["mult"]), ptr(arrays["shift"]), int(per_channel), zo,
                 lo, hi, int(storage == "u8"))
    geo = Geom(conv.hp, conv.wp, oh, ow, kh, kw, *stride, *dil, conv.elem)
    tiles = np.zeros(conv.tiles_floats() * 4, np.uint8)
    packed_x = np.full(conv.scratch_floats() * 4, 0xA5, np.uint8)
    ntiles = lib.kiln_qtiles(ctypes.byref(geo), ptr(tiles))
    out = np.full((n, oh, ow), 77, dtype)
    if depthwise:
        lib.kiln_qpack(ptr(x), int(storage == "u8"), zpad, c, h, w, pad[0], pad[1],
                       ctypes.byref(geo), ptr(packed_x))
        lib.kiln_qdw_vnni(ctypes.byref(geo), ptr(tiles), ntiles, ptr(packed_x), c, ptr(packed),
                          ctypes.byref(rq), 0, ptr(out), ctypes.c_long(1),
                          ctypes.c_long(oh * ow))
    for g in range(0 if depthwise else groups):
        cin, cout = c // groups, n // groups
        lib.kiln_qpack(ctypes.c_void_p(x.ctypes.data + g * cin * h * w), int(storage == "u8"),
                       zpad, cin, h, w, pad[0], pad[1], ctypes.byref(geo), ptr(packed_x))
        lib.kiln_qconv_vnni(ctypes.byref(geo), ptr(tiles), ntiles, ptr(packed_x), cin, cout,
                            ctypes.c_void_p(packed.ctypes.data + g * 4 *
                                            emit_qvnni.group_words(conv)),
                            ctypes.byref(rq), g * cout,
                            ctypes.c_void_p(out.ctypes.data + g * cout * oh * ow),
                            ctypes.c_long(1), ctypes.c_long(oh * ow))
    want = requant_reference(acc, bias, arrays, zo, lo, hi, 0)
    np.testing.assert_array_equal(out.astype(np.int64), want)


@pytest.mark.parametrize(("per_channel", "elem"), [(True, 4), (False, 4), (True, 1)])
@pytest.mark.parametrize("case", CONVS)
def test_conv_kernel_is_bit_exact(lib: ctypes.CDLL, case: tuple, per_channel: bool,
                                  elem: int) -> None:
    """Both packed layouts: 4 channels (elem 4) or 4 taps of a row (elem 1) per lane."""
    _run_conv(lib, case, seed=case[0] * 31 + case[3] + per_channel + elem,
              per_channel=per_channel, elem=elem)


@pytest.mark.parametrize("case", [
    (19, 11, 13, 19, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1), 19, "i8", -3),
    (6, 9, 9, 6, 3, 3, (2, 2), (0, 1, 1, 0), (1, 1), 6, "u8", 0),
    (5, 10, 17, 5, 5, 5, (1, 2), (2, 2, 2, 2), (1, 2), 5, "i8", 127),
])
def test_depthwise_kernel_is_bit_exact(lib: ctypes.CDLL, case: tuple) -> None:
    _run_conv(lib, case, seed=case[0] * 7 + case[4], per_channel=True, elem=1)


@pytest.mark.parametrize(("m", "k", "n", "storage", "zx"),
                         [(37, 29, 11, "u8", 255), (64, 400, 120, "i8", -128),
                          (3, 5, 1, "i8", 127)])
def test_linear_kernel_with_strided_stores_is_bit_exact(lib: ctypes.CDLL, m: int, k: int,
                                                        n: int, storage: str, zx: int) -> None:
    rng = np.random.default_rng(m * k + n)
    dtype = np.uint8 if storage == "u8" else np.int8
    info = np.iinfo(dtype)
    x = rng.integers(info.min, int(info.max) + 1, (m, k)).astype(dtype)
    weights = rng.integers(-128, 128, (n, k)).astype(np.int8)
    bias = rng.integers(-5000, 5000, n).astype(np.int32)
    conv = emit_qvnni.VnniConv(1, m, 1, m, 1, 1, 1, 1, 1, 1, k, n, 1, False)
    zpad = zx + (128 if storage == "i8" else 0)
    packed = emit_qvnni.packed_weights(conv, weights).astype(np.int32)
    folded = emit_qvnni.folded_bias(conv, weights, bias, zpad)
    arrays, (zo, lo, hi) = random_requant(rng, n, storage == "u8", per_channel=True)
    rq = Requant(ptr(folded), ptr(arrays["mult"]), ptr(arrays["shift"]), 1, zo, lo, hi,
                 int(storage == "u8"))
    geo = Geom(1, m, 1, m, 1, 1, 1, 1, 1, 1, 4)
    tiles = np.zeros(conv.tiles_floats() * 4, np.uint8)
    packed_x = np.full(conv.scratch_floats() * 4, 0x5A, np.uint8)
    ntiles = lib.kiln_qtiles(ctypes.byref(geo), ptr(tiles))
    lib.kiln_qpack_rows(ptr(x), int(storage == "u8"), zpad, m, k, ptr(packed_x))
    out = np.full((m, n), 9, dtype)
    lib.kiln_qconv_vnni(ctypes.byref(geo), ptr(tiles), ntiles, ptr(packed_x), k, n,
                        ptr(packed), ctypes.byref(rq), 0, ptr(out), ctypes.c_long(n),
                        ctypes.c_long(1))
    acc = (x.astype(np.int64) - zx) @ weights.astype(np.int64).T
    want = requant_reference(acc, bias, arrays, zo, lo, hi, 1)
    np.testing.assert_array_equal(out.astype(np.int64), want)


def test_plan_falls_back_where_vnni_cannot_be_exact() -> None:
    """Dot products too long for exact int32 sums, or strides past the gather window, keep
    the int16 kernels."""
    long_k = emit_qvnni.VnniConv(1, 4, 1, 4, 1, 1, 1, 1, 1, 1, emit_qvnni.K_LIMIT + 1, 8, 1,
                                 False)
    wide_stride = emit_qvnni.VnniConv(9, 40, 3, 8, 3, 3, 3, 3, 1, 1, 4, 8, 1, False)
    ok = emit_qvnni.VnniConv(9, 40, 3, 8, 3, 3, 2, 2, 1, 1, 4, 8, 1, False)
    assert not long_k.fits() and not wide_stride.fits() and ok.fits()
    assert emit_qvnni.K_LIMIT * 255 * 128 < 2 ** 31 <= (emit_qvnni.K_LIMIT + 1) * 255 * 128


def _has_vnni() -> bool:
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    return all(f in flags.split() for f in ("avx512_vnni", "avx512vbmi", "avx512bw"))


def test_native_build_takes_the_vnni_path(lib: ctypes.CDLL) -> None:
    """The native library runs the vector kernels wherever the cpu has them (so the tests
    above check them), the x86-64-v2 one the plain loops."""
    native = "native" in str(Path(lib._name).parent.name)
    assert lib.kiln_qvnni_enabled() == int(native and _has_vnni())


def _ints(values: np.ndarray | tuple[int, ...]) -> str:
    return "[" + ", ".join(str(int(v)) for v in values) + "]"


MODULES = [  # x shape, weight shape, op, attributes, result shape, storage
    ((2, 5, 9, 7), (11, 5, 3, 3), "qconv2d",
     "padding = [1, 0, 1, 2], stride = [1, 2], ", (2, 11, 9, 4), "u8"),
    ((3, 6, 7, 7), (6, 1, 3, 3), "qconv2d",
     "groups = 6, padding = [1, 1, 1, 1], stride = [2, 2], ", (3, 6, 4, 4), "i8"),
    ((2, 3, 17), (9, 3, 5), "qconv1d", "dilation = [2], padding = [3, 1], ", (2, 9, 13), "i8"),
    ((5, 37), (13, 37), "qlinear", "", (5, 13), "u8"),
]


def _module(rng: np.random.Generator, case: tuple) -> kiln.ir.graph.Module:
    """quantize → one q-op with symmetric per-channel weights (the VNNI path) → dequantize."""
    xs, ws, op, attrs, ys, storage = case
    out = ws[0]
    zx = int(rng.integers(-128, 128)) + (128 if storage == "u8" else 0)
    zo = int(rng.integers(-20, 20)) + (128 if storage == "u8" else 0)
    mult, shift = requant.quantize_multipliers(rng.uniform(2e-4, 3e-3, out))
    scales = ", ".join(repr(float(v)) for v in rng.uniform(0.001, 0.02, out).astype(np.float32))
    xt, yt = f"q<{storage}, 0.03, {zx}>", f"q<{storage}, 0.05, {zo}>"
    wt = f"q<i8, [{scales}], {_ints((0,) * out)}, axis=0>"
    dims, wdims, ydims = ("x".join(map(str, s)) for s in (xs, ws, ys))
    text = f"""
kiln.module @m {{
  kiln.func @forward(%x: tensor<{dims}xf32>) -> (tensor<{ydims}xf32>) {{
    %xq = kiln.quantize(%x) {{to = {xt}}} : tensor<{dims}x{xt}>
    %w = kiln.weight @w : tensor<{wdims}x{wt}>
    %b = kiln.weight @b : tensor<{out}xi32>
    %y = kiln.{op}(%xq, %w, %b) {{{attrs}clamp_min = {zo - 60}, multiplier = {_ints(mult)}, \
shift = {_ints(shift)}, to = {yt}}} : tensor<{ydims}x{yt}>
    %d = kiln.dequantize(%y) : tensor<{ydims}xf32>
    kiln.return %d
  }}
}}
"""
    weights = {"w": rng.integers(-128, 128, ws).astype(np.int8),
               "b": rng.integers(-3000, 3000, out).astype(np.int32)}
    return parse(text, weights)


@pytest.mark.parametrize("march", ["native", "x86-64-v2"])
@pytest.mark.parametrize("case", MODULES, ids=["conv", "depthwise", "conv1d", "linear"])
def test_generated_code_is_bit_exact_with_and_without_vnni(
        case: tuple, march: str, tmp_path_factory: pytest.TempPathFactory) -> None:
    """The generated code picks the VNNI or the int16 kernels at C compile time; both match
    the interpreter exactly."""
    rng = np.random.default_rng(sum(case[0]) + len(march))
    module = _module(rng, case)
    cache = tmp_path_factory.getbasetemp() / "kiln-cpu-cache"
    art = kiln.compile(module, [np.zeros(case[0], np.float32)], target="cpu", pipeline="dce",
                       cache_dir=cache, march=march)
    source = art.files["model.c"]
    assert "#if KILN_QVNNI" in source and "_vnni(" in source
    for _ in range(2):
        x = (rng.standard_normal(case[0]) * 3).astype(np.float32)
        np.testing.assert_array_equal(np.asarray(art(x)), kiln.interpret(art.ir, x)[0])


@pytest.mark.parametrize(("storage", "zp"), [("i8", -3), ("u8", 200)])
def test_quantize_kernel_saturates_and_rounds_like_the_interpreter(
        storage: str, zp: int, tmp_path_factory: pytest.TempPathFactory) -> None:
    """The float32 quantize kernel (rint(x / s) + zp in float32, clamped; NaN → min) on
    NaN, ±inf, ±3e38, exact ties and random values."""
    t = f"q<{storage}, 0.03125, {zp}>"
    module = parse(f"""
kiln.module @m {{
  kiln.func @forward(%x: tensor<4096xf32>) -> (tensor<4096xf32>) {{
    %q = kiln.quantize(%x) {{to = {t}}} : tensor<4096x{t}>
    %d = kiln.dequantize(%q) : tensor<4096xf32>
    kiln.return %d
  }}
}}""", {})
    art = kiln.compile(module, [np.zeros(4096, np.float32)], target="cpu", pipeline="dce",
                       cache_dir=tmp_path_factory.getbasetemp() / "kiln-cpu-cache")
    rng = np.random.default_rng(zp + 1000)
    x = (rng.standard_normal(4096) * 6).astype(np.float32)
    x[:8] = [np.nan, np.inf, -np.inf, 3e38, -3e38, 0.015625, -0.015625, 5e8]
    x[8:200] = (rng.integers(-300, 300, 192) + 0.5).astype(np.float32) * 0.03125
    np.testing.assert_array_equal(np.asarray(art(x)), kiln.interpret(art.ir, x)[0])

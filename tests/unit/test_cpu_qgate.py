"""The squeeze-excitation gate product packed straight for the convolution after it
(`emit_qgate.py`, `kiln_qmul_pack4` / `kiln_qpacked_stack` in `runtime/kiln_qops.c`), bit for
bit against `kiln.interpret`.

Each module is x [N, C, H, W] and a gate [N, C, 1, 1] quantized → qmul → a convolution with
symmetric int8 weights → dequantize, on random data whose gate bytes include the zero point
(a factor of 0) and both storage ends: planes long enough for the lookup tables and shorter
ones (the per-element arithmetic), plane lengths that are not multiples of 16 or 64 (masked
tails), stacks of several images per convolution call and a single stack, int8 and uint8 on
every side, a 3x3 unpadded reader; also where the fusion must not apply (channels not a
multiple of 4, a second reader, a padded reader), on the AVX-512 VNNI path (-march=native),
the portable one (-march=x86-64) and once under -fsanitize=address,undefined.
"""

from __future__ import annotations

import platform
from pathlib import Path

import numpy as np
import pytest

import kiln
from kiln.codegen.c import emit_qgate
from kiln.ir import requant
from kiln.ir.graph import Module
from kiln.ir.ops.qnn_eltwise import QMul
from kiln.ir.parser import parse
from kiln.ir.types import QuantType
from kiln.targets.toolchains import gcc

pytestmark = pytest.mark.skipif(gcc.shutil.which("gcc") is None or
                                platform.machine() not in ("x86_64", "AMD64"),
                                reason="needs gcc on x86-64")


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.getbasetemp() / "kiln-cpu-cache"


def _ints(values: object) -> str:
    return "[" + ", ".join(str(int(v)) for v in np.asarray(values).ravel()) + "]"


def _zp(rng: np.random.Generator, storage: str) -> int:
    return int(rng.integers(-40, 40)) + (128 if storage == "u8" else 0)


def _module(rng: np.random.Generator, n: int, c: int, h: int, w: int, storages: str,
            kernel: int = 1, pad: int = 0, cout: int = 16, twice: bool = False) -> Module:
    """x, gate → quantize → qmul → qconv2d (kernel x kernel, `pad`) → dequantize; `twice`: the
    product is also a second output (dequantized), so it has two readers."""
    sx, sg, sy = storages.split("/")
    zx, zg, zy, zo = _zp(rng, sx), _zp(rng, sg), _zp(rng, sy), _zp(rng, "i8")
    scale_x, scale_g, scale_y = 0.05, 0.004, float(rng.uniform(0.002, 0.02))
    m, e = requant.quantize_multiplier(scale_x * scale_g / scale_y)
    low = -128 + (128 if sy == "u8" else 0) + int(rng.integers(0, 20))
    high = 127 + (128 if sy == "u8" else 0) - int(rng.integers(0, 20))
    mult, shift = requant.quantize_multipliers(rng.uniform(2e-4, 3e-3, cout))
    oh, ow = h + 2 * pad - kernel + 1, w + 2 * pad - kernel + 1
    scales = ", ".join(repr(float(v)) for v in rng.uniform(0.001, 0.02, cout).astype(np.float32))
    xt, gt, yt = (f"q<{s}, {q}, {z}>" for s, q, z in ((sx, scale_x, zx), (sg, scale_g, zg),
                                                        (sy, scale_y, zy)))
    ot = f"q<i8, 0.05, {zo}>"
    wt = f"q<i8, [{scales}], {_ints([0] * cout)}, axis=0>"
    xd, gd = f"{n}x{c}x{h}x{w}", f"{n}x{c}x1x1"
    od, wd = f"{n}x{cout}x{oh}x{ow}", f"{cout}x{c}x{kernel}x{kernel}"
    extra_type = f", tensor<{xd}xf32>" if twice else ""
    extra_ret = ", %pd" if twice else ""
    extra_op = f"    %pd = kiln.dequantize(%p) : tensor<{xd}xf32>\n" if twice else ""
    text = f"""
kiln.module @m {{
  kiln.func @forward(%x: tensor<{xd}xf32>, %g: tensor<{gd}xf32>) -> \
(tensor<{od}xf32>{extra_type}) {{
    %xq = kiln.quantize(%x) {{to = {xt}}} : tensor<{xd}x{xt}>
    %gq = kiln.quantize(%g) {{to = {gt}}} : tensor<{gd}x{gt}>
    %p = kiln.qmul(%xq, %gq) {{clamp_min = {low}, clamp_max = {high}, multiplier = [{m}], \
shift = [{e}], to = {yt}}} : tensor<{xd}x{yt}>
    %w = kiln.weight @w : tensor<{wd}x{wt}>
    %b = kiln.weight @b : tensor<{cout}xi32>
    %y = kiln.qconv2d(%p, %w, %b) {{padding = [{pad}, {pad}, {pad}, {pad}], \
multiplier = {_ints(mult)}, shift = {_ints(shift)}, to = {ot}}} : tensor<{od}x{ot}>
    %d = kiln.dequantize(%y) : tensor<{od}xf32>
{extra_op}    kiln.return %d{extra_ret}
  }}
}}
"""
    weights: dict[str, np.ndarray] = {
        "w": rng.integers(-128, 128, (cout, c, kernel, kernel)).astype(np.int8),
        "b": rng.integers(-3000, 3000, cout).astype(np.int32)}
    return parse(text, weights)


def _inputs(rng: np.random.Generator, module: Module) -> list[np.ndarray]:
    """x covering its storage range (saturating at both ends); gate bytes uniform over the
    storage range with the zero point (factor 0) and both ends planted."""
    ops = {op.results[0].name: op for op in module.main.ops if op.results}
    out = []
    for arg, qname in zip(module.main.args, ("xq", "gq")):
        q = ops[qname].results[0].type.dtype
        assert isinstance(q, QuantType)
        info = np.iinfo(q.storage.numpy)
        shape = arg.type.shape
        stored = rng.integers(int(info.min) - 3, int(info.max) + 4, shape)
        if qname == "gq":
            stored = rng.integers(int(info.min), int(info.max) + 1, shape)
            flat = stored.reshape(-1)
            flat[:3] = (q.zero_point[0], int(info.min), int(info.max))
            rng.shuffle(flat)
        jitter = rng.uniform(-0.3, 0.3, shape)
        out.append(((stored - q.zero_point[0] + jitter) * q.scale[0]).astype(np.float32))
    return out


def _check(module: Module, rng: np.random.Generator, cache: Path, **options: object) -> str:
    inputs = _inputs(rng, module)
    art = kiln.compile(module, [np.zeros_like(x) for x in inputs], target="cpu",
                       pipeline="dce", cache_dir=cache, **options)
    log = (art.artifact.entry / "build.log").read_text()  # type: ignore[attr-defined]
    assert "warning" not in log, log
    for _ in range(2):
        got = art(*inputs)
        want = kiln.interpret(art.ir, *inputs)
        for g, wv in zip(got if isinstance(got, (list, tuple)) else [got], want):
            np.testing.assert_array_equal(np.asarray(g), wv)
        inputs = _inputs(rng, module)
    return art.files["model.c"]  # type: ignore[no-any-return]


FUSED = [  # N, C, H, W, storages x/gate/product, kernel
    (64, 32, 16, 16, "i8/u8/i8", 1),   # MobileNet's first SE block: tables, 2 images a call
    (8, 24, 8, 8, "u8/u8/u8", 1),      # 64 pixels: tables, no tail
    (6, 96, 4, 4, "i8/i8/i8", 1),      # 16 pixels: per-element arithmetic
    (3, 8, 5, 7, "u8/i8/i8", 1),       # 35 pixels: masked 16-lane tails
    (2, 12, 9, 9, "i8/u8/u8", 1),      # 81 pixels: tables with a 17-pixel tail
    (1, 16, 12, 10, "i8/u8/i8", 1),    # one image: the only stack is copied to scratch
    (4, 8, 6, 6, "i8/u8/i8", 3),       # an unpadded 3x3 reader
    (4, 4, 2, 2, "i8/u8/i8", 1),       # 16-byte stacks: those near the end are copied (slack)
]


@pytest.mark.parametrize("case", FUSED, ids=lambda c: "x".join(map(str, c[:4])) + f"-k{c[5]}")
def test_fused_gate_packing_is_bit_exact(case: tuple, cache: Path) -> None:
    n, c, h, w, storages, kernel = case
    rng = np.random.default_rng([n, c, h, w, kernel, len(storages)])
    module = _module(rng, n, c, h, w, storages, kernel)
    source = _check(module, rng, cache)
    assert "kiln_qmul_pack4(" in source and "kiln_qpacked_stack(" in source
    assert "kiln_qpack_images(X" not in source and "kiln_qpack(X" not in source
    tables = h * w >= emit_qgate.TABLE_MIN_PIXELS
    assert ("NULL, (uint8_t*)" not in source) == tables


@pytest.mark.parametrize("case", [FUSED[0], FUSED[3]], ids=["tables", "tails"])
def test_portable_build_keeps_the_plain_product(case: tuple, cache: Path) -> None:
    """-march=x86-64: no VNNI, both kernels take their NCHW code (same bits)."""
    n, c, h, w, storages, kernel = case
    rng = np.random.default_rng([n, c, h, w, 99])
    _check(_module(rng, n, c, h, w, storages, kernel), rng, cache, march="x86-64")


@pytest.mark.parametrize(("shape", "kernel", "pad", "twice"), [
    ((2, 6, 8, 8), 1, 0, False),    # 6 channels pack into 8: more bytes than the product's
    ((2, 8, 8, 8), 1, 0, True),     # a second reader (a model output)
    ((2, 8, 6, 6), 3, 1, False),    # a padded reader
], ids=["channels", "two-readers", "padded"])
def test_fusion_refused_where_illegal(shape: tuple[int, int, int, int], kernel: int, pad: int,
                                      twice: bool, cache: Path) -> None:
    rng = np.random.default_rng([*shape, kernel, pad, int(twice)])
    module = _module(rng, *shape, "i8/u8/i8", kernel, pad, twice=twice)
    qmul = next(op for op in module.main.ops if op.isa(QMul))
    assert emit_qgate.gated_pack(qmul) is None
    source = _check(module, rng, cache)
    assert "kiln_qmul_pack4(" not in source


@pytest.mark.parametrize("case", [FUSED[-1], pytest.param(FUSED[4], marks=pytest.mark.slow),
                                  pytest.param(FUSED[3], marks=pytest.mark.slow)],
                         ids=["small-stacks", "tables-tail", "elements-tail"])
def test_fused_paths_are_clean_under_sanitizers(case: tuple, cache: Path) -> None:
    """Stacks smaller than the tiles' read-past slack at the end of the arena (allocated
    exactly), tables with a tail, the per-element path with a tail; ASan+UBSan (~35 s each:
    the last two run with `make test-slow`)."""
    n, c, h, w, storages, kernel = case
    rng = np.random.default_rng([n, c, h, w, 7])
    source = _check(_module(rng, n, c, h, w, storages, kernel), rng, cache, sanitize=True)
    assert "kiln_qmul_pack4(" in source

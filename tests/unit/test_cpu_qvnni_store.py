"""The NCHW stores of the VNNI convolution (`runtime/kiln_qvnni.c`): four channels of a tile
requantized in int32 lanes, narrowed together by two int32 -> int16 packs and one
int16 -> int8 pack (signed, or unsigned where the stored range allows), reordered by one vpermb
and stored 16 bytes per channel. The narrowing leaves to the requantization only the clamps it
does not do itself, so each clamp kind is forced here and checked bit-exact against an int64
NumPy convolution and `kiln.ir.requant`: both clamps (hi below the storage maximum), the lower
one only (hi the storage maximum), none (the full storage range: the packs saturate both
ends), and the int64 lanes; signed storage with lo >= 0 (the unsigned pack over values
0..127); channel counts that leave a partial group of four and a partial block of eight;
tiles cut short at the end of a plane. Native and x86-64-v2 (plain loops) builds through
ctypes, and the same cases in a harness built with -fsanitize=address,undefined.
"""

from __future__ import annotations

import ctypes
import platform
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from kiln.codegen.c import emit_qvnni
from kiln.ir import requant
from kiln.targets.toolchains import gcc
from kiln.testing.qvnni_ctypes import Geom, Requant, ptr
from kiln.testing.runtime_lib import build_runtime_library, build_sanitized_harness

pytestmark = pytest.mark.skipif(gcc.shutil.which("gcc") is None or
                                platform.machine() not in ("x86_64", "AMD64"),
                                reason="needs gcc on x86-64")

FUNCTIONS = ("kiln_qconv_vnni", "kiln_qchannels", "kiln_qtiles", "kiln_qpack",
             "kiln_qvnni_enabled")


@pytest.fixture(scope="module", params=["native", "x86-64-v2"])
def lib(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> ctypes.CDLL:
    work = tmp_path_factory.mktemp(f"qvnni-store-{request.param}")
    return ctypes.CDLL(str(build_runtime_library(work, request.param, *FUNCTIONS)))


# clamp kinds: (multiplier scales, zo, lo, hi) with None for the storage bound
KINDS = {
    "both": ((1e-4, 4e-3), 3, -90, 100),     # hi below the maximum: max and min
    "lower": ((1e-4, 4e-3), -7, -100, None),  # hi the maximum: max, then saturation
    "none": ((1e-4, 4e-3), 5, None, None),    # the full range: saturation only
    "int64": ((0.3, 0.9), 5, -110, None),     # t <= 32: int64 lanes
    "positive": ((1e-4, 4e-3), 20, 0, 90),    # lo >= 0 (a relu): the unsigned pack
}
CASES = [  # C, H, W, N, k, pad
    (16, 5, 5, 13, 1, 0),   # 25 pixels: a full and a short tile; 13 = 8 + 4 + 1 channels
    (24, 6, 6, 6, 1, 0),    # one block of 6: a group of 4 and one of 2
    (5, 7, 9, 20, 3, 1),    # 3x3, an odd number of tiles
]


@dataclass(frozen=True)
class Data:
    """One case's arrays (as the kernels read them), requantization and expected bytes."""

    x: np.ndarray
    packed: np.ndarray
    folded: np.ndarray
    mult: np.ndarray
    shift: np.ndarray
    want: np.ndarray
    zo: int
    lo: int
    hi: int
    zpad: int
    scratch: int


def _case(kind: str, unsigned: bool, case: tuple, seed: int) -> Data:
    """Random input, weights and requantization of one case, and the expected bytes."""
    c, h, w, n, k, pad = case
    rng = np.random.default_rng([seed, c, n, k, len(kind), int(unsigned)])
    dtype = np.uint8 if unsigned else np.int8
    info = np.iinfo(dtype)
    (s0, s1), zo, lo, hi = KINDS[kind]
    off = 128 if unsigned else 0
    zo, lo = zo + off, (int(info.min) if lo is None else lo + off)
    hi = int(info.max) if hi is None else hi + off
    x = rng.integers(info.min, int(info.max) + 1, (c, h, w)).astype(dtype)
    weights = rng.integers(-128, 128, (n, c, k, k)).astype(np.int8)
    bias = rng.integers(-20000, 20000, n).astype(np.int32)
    zx = int(rng.integers(info.min, int(info.max) + 1))
    mult, shift = requant.quantize_multipliers(rng.uniform(s0, s1, n))
    xs = np.pad(x.astype(np.int64) - zx, ((0, 0), (pad, pad), (pad, pad)))
    oh, ow = h + 2 * pad - k + 1, w + 2 * pad - k + 1
    acc = np.zeros((n, oh, ow), np.int64)
    for ky in range(k):
        for kx in range(k):
            acc += np.einsum("chw,oc->ohw", xs[:, ky:ky + oh, kx:kx + ow],
                             weights[:, :, ky, kx].astype(np.int64))
    m, e = np.asarray(mult, np.int64), np.asarray(shift, np.int64)
    want = requant.requantize_output(acc + bias.astype(np.int64)[:, None, None],
                                     m[:, None, None], e[:, None, None], zo, lo, hi, np.int64)
    conv = emit_qvnni.VnniConv(h + 2 * pad, w + 2 * pad, oh, ow, k, k, 1, 1, 1, 1, c, n, 1,
                               False)
    zpad = zx + (0 if unsigned else 128)
    return Data(x, emit_qvnni.packed_weights(conv, weights).astype(np.int32),
                emit_qvnni.folded_bias(conv, weights, bias, zpad), np.asarray(mult, np.int32),
                np.asarray(shift, np.int32), want.astype(dtype), zo, lo, hi, zpad,
                conv.scratch_floats() * 4)


EXPECTED_MODE = {"both": 1, "int64": 0, "positive": 1}


@pytest.mark.parametrize("storage", ["u8", "i8"])
@pytest.mark.parametrize("kind", sorted(KINDS))
@pytest.mark.parametrize("case", CASES)
def test_nchw_stores_are_bit_exact(lib: ctypes.CDLL, case: tuple, kind: str,
                                   storage: str) -> None:
    c, h, w, n, k, pad = case
    unsigned = storage == "u8"
    d = _case(kind, unsigned, case, 7)
    oh, ow = h + 2 * pad - k + 1, w + 2 * pad - k + 1
    rq = Requant(ptr(d.folded), ptr(d.mult), ptr(d.shift), 1, d.zo, d.lo,
                 d.hi, int(unsigned))
    table = np.zeros((n + 8) * 8, np.int32)
    mode = lib.kiln_qchannels(ctypes.byref(rq), n, 0, ptr(table))
    assert mode == EXPECTED_MODE.get(kind, 3 if unsigned else 2)
    geo = Geom(h + 2 * pad, w + 2 * pad, oh, ow, k, k, 1, 1, 1, 1, 4)
    tiles = np.zeros(emit_qvnni.TILE_BYTES * oh * -(-ow // 16), np.uint8)
    ntiles = lib.kiln_qtiles(ctypes.byref(geo), ptr(tiles))
    packed_x = np.full(d.scratch, 0xA5, np.uint8)
    lib.kiln_qpack(ptr(d.x), int(unsigned), d.zpad, c, h, w, pad, pad,
                   ctypes.byref(geo), ptr(packed_x))
    out = np.full((n + 1, oh, ow), 77, d.want.dtype)  # one more plane: stores stay in n
    lib.kiln_qconv_vnni(ctypes.byref(geo), ptr(tiles), ntiles, ptr(packed_x), c, n,
                        ptr(d.packed), ctypes.byref(rq), 0, ptr(out), ctypes.c_long(1),
                        ctypes.c_long(oh * ow))
    np.testing.assert_array_equal(out[:n], d.want)
    assert (out[n] == 77).all()


def _c_array(name: str, ctype: str, values: np.ndarray) -> str:
    body = ", ".join(str(int(v)) for v in np.asarray(values).ravel())
    return f"static const {ctype} {name}[{np.asarray(values).size}] = {{{body}}};\n"


def test_nchw_stores_are_clean_under_sanitizers(tmp_path: Path) -> None:
    """Every clamp kind and storage of the first case, plus the 3x3 one, in a C harness built
    with ASan and UBSan: exact, and no out-of-bounds access (outputs sit in heap blocks of
    exactly their size)."""
    parts = ['#include <stdio.h>\n#include <stdlib.h>\n#include <string.h>\n'
             '#include "kiln_qvnni.h"\n']
    calls = []
    for i, (case, kind, storage) in enumerate(
            (case, kind, storage) for case in (CASES[0], CASES[2]) for kind in sorted(KINDS)
            for storage in ("u8", "i8")):
        c, h, w, n, k, pad = case
        d = _case(kind, storage == "u8", case, 11)
        for name, ctype in (("x", "uint8_t"), ("packed", "int32_t"), ("folded", "int32_t"),
                            ("mult", "int32_t"), ("shift", "int32_t"), ("want", "uint8_t")):
            values = np.asarray(getattr(d, name))
            parts.append(_c_array(f"{name}{i}", ctype, values.view(np.uint8)
                                  if ctype == "uint8_t" else values))
        calls.append(f"failures += run(x{i}, packed{i}, folded{i}, mult{i}, shift{i}, want{i}, "
                     f"{c}, {h}, {w}, {n}, {k}, {pad}, {d.zo}, {d.lo}, {d.hi}, "
                     f"{int(storage == 'u8')}, {d.zpad}, {d.scratch});")
    parts.append("""
static int run(const uint8_t* x, const int32_t* packed, const int32_t* folded,
               const int32_t* mult, const int32_t* shift, const uint8_t* want, int c, int h,
               int w, int n, int k, int pad, int zo, int lo, int hi, int us, int zpad,
               int scratch) {
    const int oh = h + 2 * pad - k + 1, ow = w + 2 * pad - k + 1;
    const kiln_qgeom geo = {h + 2 * pad, w + 2 * pad, oh, ow, k, k, 1, 1, 1, 1, 4};
    const kiln_requant rq = {folded, mult, shift, 1, zo, lo, hi, us};
    kiln_qtile* tiles = malloc(sizeof(kiln_qtile) * (size_t)(oh * ((ow + 15) / 16)));
    uint8_t* P = malloc((size_t)scratch);
    uint8_t* out = malloc((size_t)(n * oh * ow));
    const int ntiles = kiln_qtiles(&geo, tiles);
    kiln_qpack(x, us, zpad, c, h, w, pad, pad, &geo, P);
    kiln_qconv_vnni(&geo, tiles, ntiles, P, c, n, packed, &rq, 0, out, 1L, (long)(oh * ow));
    const int bad = memcmp(out, want, (size_t)(n * oh * ow)) != 0;
    free(tiles);
    free(P);
    free(out);
    return bad;
}

int main(void) {
    int failures = 0;
""")
    parts.append("\n".join("    " + line for line in calls))
    parts.append('\n    printf("vnni=%d failures=%d\\n", kiln_qvnni_enabled(), failures);\n'
                 "    return failures != 0;\n}\n")
    exe = build_sanitized_harness(tmp_path, "".join(parts), *FUNCTIONS)
    done = subprocess.run([str(exe)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "failures=0" in done.stdout and "runtime error" not in done.stderr


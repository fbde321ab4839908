"""kiln_fixed.h against Xilinx's real `ap_fixed.h` (shipped in the hls4ml wheel, a dev-only
dependency): for every rounding and saturation mode the HLS emitter produces, converting random
raws of wide exact accumulator types to narrow layer types gives identical bits, and a dense
layer (exact ap_fixed products and sums, then the assignment) equals kiln::dense +
kiln::requantize_array. Skipped with the reason when hls4ml or g++ is missing.
"""

from __future__ import annotations

import itertools
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from kiln.codegen.hls.emit_layers import ROUNDING, SATURATION
from kiln.codegen.hls.emitter import runtime_header
from kiln.ir.types import FixedType
from tests.unit.hls_cases import edge_raws

hls4ml = pytest.importorskip("hls4ml", reason="hls4ml (ships ap_fixed.h) is not installed")
pytestmark = pytest.mark.skipif(shutil.which("g++") is None, reason="needs g++")
AP_TYPES = Path(hls4ml.__file__).parent / "templates" / "vivado" / "ap_types"
CONVERSIONS = [(FixedType(37, 7), 16, 2, True), (FixedType(40, 14), 8, 3, True),
               (FixedType(20, 4), 6, 6, True), (FixedType(12, 3), 16, 1, True),
               (FixedType(30, 10), 9, 4, False)]
CASES = [(src, FixedType(w, i, signed, q, o)) for (src, w, i, signed), q, o in
         itertools.product(CONVERSIONS, ROUNDING, SATURATION)]
SAMPLES = 300


def _ap(t: FixedType) -> str:
    base = "ap_fixed" if t.signed else "ap_ufixed"
    return (f"{base}<{t.width}, {t.integer}, AP_{t.rounding.upper()}, "
            f"AP_{t.saturation.upper()}>")


def _program() -> str:
    lines = ['#include <cstdio>', '#include "ap_fixed.h"', '#include "kiln_fixed.h"',
             "static long long sx(unsigned long long v, int w, bool s) {",
             "  if (w < 64 && s && ((v >> (w - 1)) & 1)) return (long long)(v - (1ULL << w));",
             "  return (long long)v; }", "int main() {", "  long long v;"]
    for src, dst in CASES:
        kiln_call = (f"kiln::requantize<{src.frac_bits}, {dst.width}, {dst.frac_bits}, "
                     f"{str(dst.signed).lower()}, kiln::{ROUNDING[dst.rounding]}, "
                     f"kiln::{SATURATION[dst.saturation]}>(v)")
        lines += [f"  for (int i = 0; i < {SAMPLES}; i++) {{ std::scanf(\"%lld\", &v);",
                  f"    ap_fixed<{src.width}, {src.integer}> a; "
                  f"a.range({src.width - 1}, 0) = v;",
                  f"    {_ap(dst)} b = a;",
                  f"    long long ap = sx(b.range({dst.width - 1}, 0).to_uint64(), {dst.width}, "
                  f"{str(dst.signed).lower()});",
                  f"    std::printf(\"%lld %lld\\n\", ap, (long long){kiln_call}); }}"]
    return "\n".join([*lines, "  return 0;", "}", ""])


def test_kiln_fixed_matches_ap_fixed(tmp_path: Path) -> None:
    (tmp_path / "kiln_fixed.h").write_text(runtime_header("kiln_fixed.h"))
    (tmp_path / "t.cpp").write_text(_program())
    build = subprocess.run(["g++", "-O1", "-std=c++14", "-w", f"-I{AP_TYPES}", "-o", "t",
                            "t.cpp"], cwd=tmp_path, capture_output=True, text=True)
    assert build.returncode == 0, build.stderr[-2000:]
    rng = np.random.default_rng(7)
    feed = []
    for src, dst in CASES:
        raw = edge_raws(src, dst, rng, SAMPLES)
        feed.append(raw.astype(str))
    run = subprocess.run([str(tmp_path / "t")], input="\n".join(np.concatenate(feed)) + "\n",
                         capture_output=True, text=True, check=True)
    pairs = np.array(run.stdout.split(), dtype=np.int64).reshape(len(CASES), SAMPLES, 2)
    bad = [f"{s}->{d}" for (s, d), p in zip(CASES, pairs) if not np.array_equal(p[:, 0], p[:, 1])]
    assert not bad, f"kiln_fixed.h and ap_fixed.h differ for {bad}"

"""kiln_fixed.h against kiln.ir.fixed / fixed_arith: every rounding and saturation mode the HLS
emitter can produce, on random raws, wide-to-narrow and narrow-to-wide, must agree bit for bit.

One g++ program evaluates every case (compiled once per session, ~1 s).
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
from kiln.ir import fixed, fixed_arith
from kiln.ir.types import FixedType
from tests.unit.hls_cases import edge_raws

pytestmark = pytest.mark.skipif(shutil.which("g++") is None, reason="needs g++")
CONVERSIONS = [  # (src, dst width, dst integer bits, signed)
    (FixedType(37, 7), 16, 2, True), (FixedType(40, 14), 8, 3, True),
    (FixedType(20, 4), 6, 6, True), (FixedType(12, 3), 16, 1, True),
    (FixedType(30, 10), 9, 4, False), (FixedType(16, 16), 8, 10, True)]
CASES = [(src, FixedType(w, i, signed, q, o)) for (src, w, i, signed), q, o in
         itertools.product(CONVERSIONS, ROUNDING, SATURATION)]
SAMPLES = 400


def _program(cases: list[tuple[FixedType, FixedType]]) -> str:
    lines = ['#include <cstdio>', '#include "kiln_fixed.h"', "int main() {", "  long long v;"]
    for k, (src, dst) in enumerate(cases):
        call = (f"kiln::requantize<{src.frac_bits}, {dst.width}, {dst.frac_bits}, "
                f"{str(dst.signed).lower()}, kiln::{ROUNDING[dst.rounding]}, "
                f"kiln::{SATURATION[dst.saturation]}>(v)")
        lines += [f"  for (int i = 0; i < {SAMPLES}; i++) {{ std::scanf(\"%lld\", &v);",
                  f"    std::printf(\"%lld\\n\", (long long){call}); }}  // case {k}"]
    for q in ROUNDING.values():
        lines += [f"  for (int i = 0; i < {SAMPLES}; i++) {{ long long c; "
                  "std::scanf(\"%lld %lld\", &v, &c);",
                  "    std::printf(\"%lld\\n\", "
                  f"(long long)kiln::divide_round<kiln::{q}>(v, c)); }}"]
    return "\n".join([*lines, "  return 0;", "}", ""])


@pytest.fixture(scope="module")
def binary(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("hls-fixed")
    (work / "kiln_fixed.h").write_text(runtime_header("kiln_fixed.h"))
    (work / "t.cpp").write_text(_program(CASES))
    subprocess.run(["g++", "-O1", "-std=c++14", "-o", "t", "t.cpp"], cwd=work, check=True)
    return work / "t"


def test_requantize_and_divide_match_numpy(binary: Path) -> None:
    rng = np.random.default_rng(20261128)
    feed, want = [], []
    for src, dst in CASES:
        raw = edge_raws(src, dst, rng, SAMPLES)
        feed.append(raw.astype(str))
        want.append(fixed.requantize_fixed(raw, src, dst))
    for q in ROUNDING:
        total = rng.integers(-(1 << 40), 1 << 40, SAMPLES, dtype=np.int64)
        count = rng.integers(1, 50, SAMPLES, dtype=np.int64)
        total[:4] = [-6, 6, -5, 5]
        count[:4] = [4, 4, 2, 2]
        feed.append(np.char.add(np.char.add(total.astype(str), " "), count.astype(str)))
        want.append(fixed_arith.divide_round(total, count, q))
    text = "\n".join(np.concatenate(feed)) + "\n"
    result = subprocess.run([str(binary)], input=text, capture_output=True, text=True,
                            check=True)
    got = np.array(result.stdout.split(), dtype=np.int64).reshape(len(want), SAMPLES)
    labels = [f"{s}->{d}" for s, d in CASES] + [f"divide {q}" for q in ROUNDING]
    bad = [label for label, g, w in zip(labels, got, want) if not np.array_equal(g, w)]
    assert not bad, f"kiln_fixed.h differs from kiln.ir.fixed for {bad}"

"""kiln::requantize under the vendor types computes in the exact width the conversion needs
(`kiln::convert_width`, kiln_fixed.h), not a 128-bit intermediate, and stays bit-exact.

The raws enter as `kiln::raw_t<W, S>` (ap_int<W> / ap_uint<W> with `-DKILN_USE_AP_TYPES`,
Xilinx's ap_int.h from the hls4ml wheel), as the generated layers pass them, over every
(rounding, saturation) pair and down-, up- and no-shift conversions, on edge-heavy random raws
from a fresh seed; tolerance 0 against `kiln.ir.fixed`. The widths are checked at compile
time (`static_assert`) against the rule: raw bits + up-shift + 1, or down-shift + 2, or the
destination's W + 2, the largest.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from kiln.codegen.hls.emit_layers import ROUNDING, SATURATION
from kiln.codegen.hls.emitter import runtime_header
from kiln.ir import fixed
from tests.unit.hls_cases import edge_raws
from tests.unit.test_hls_fixed import CASES, SAMPLES

hls4ml = pytest.importorskip("hls4ml", reason="hls4ml (ships ap_int.h) is not installed")
pytestmark = pytest.mark.skipif(shutil.which("g++") is None, reason="needs g++")
AP_TYPES = str(Path(hls4ml.__file__).parent / "templates" / "vivado" / "ap_types")
PICKED = [CASES[(j % 6) * 28 + j] for j in range(28)]  # every (Q, O) pair, varied shifts
WIDTHS = [  # (src frac, dst W, dst frac, raw type, expected intermediate width)
    (20, 16, 10, "ap_int<32>", 33),  # down 10: the raw's 32 bits + a rounding carry
    (10, 16, 14, "ap_int<24>", 29),  # up 4: 24 + 4 + 1
    (40, 8, 2, "ap_int<37>", 40),  # down 38 (= 37 + 1, the clamp): 38 + 2
    (4, 30, 4, "ap_int<8>", 32),  # no shift: the destination's range bounds, W + 2
    (12, 9, 6, "ap_uint<30>", 32),  # unsigned: 31 signed bits + 1
]


def _width(src_f: int, w: int, dst_f: int, raw_bits: int) -> int:
    d = src_f - dst_f
    up, down = max(-d, 0), min(max(d, 0), raw_bits + 1)
    return max(raw_bits + up + 1, down + 2, w + 2)


def _program() -> str:
    lines = ["#include <cstdio>", '#include "kiln_fixed.h"']
    for src_f, w, dst_f, raw, expected in WIDTHS:
        lines.append(f"static_assert(kiln::convert_width<{src_f}, {w}, {dst_f}, {raw}>::value"
                     f" == {expected}, \"{raw} {src_f}->{dst_f}\");")
    lines += ["int main() {", "  long long v;"]
    for k, (src, dst) in enumerate(PICKED):
        raw = f"kiln::raw_t<{src.width}, {str(src.signed).lower()}>"
        call = (f"kiln::requantize<{src.frac_bits}, {dst.width}, {dst.frac_bits}, "
                f"{str(dst.signed).lower()}, kiln::{ROUNDING[dst.rounding]}, "
                f"kiln::{SATURATION[dst.saturation]}>(r)")
        lines += [f"  for (int i = 0; i < {SAMPLES}; i++) {{ std::scanf(\"%lld\", &v);",
                  f"    const {raw} r = ({raw})v;",
                  f"    std::printf(\"%lld\\n\", (long long){call}); }}  // case {k}"]
    return "\n".join([*lines, "  return 0;", "}", ""])


def test_the_stated_widths_follow_the_rule() -> None:
    for src_f, w, dst_f, raw, expected in WIDTHS:
        bits = int(raw.split("<")[1].rstrip(">")) + raw.startswith("ap_uint")
        assert _width(src_f, w, dst_f, bits) == expected, raw


def test_narrow_requantize_is_bit_exact_under_ap_types(tmp_path: Path) -> None:
    (tmp_path / "kiln_fixed.h").write_text(runtime_header("kiln_fixed.h"))
    (tmp_path / "t.cpp").write_text(_program())
    subprocess.run(["g++", "-O1", "-std=c++14", "-w", "-DKILN_USE_AP_TYPES", "-isystem",
                    AP_TYPES, "-o", "t", "t.cpp"], cwd=tmp_path, check=True)
    seed = int(np.random.SeedSequence().generate_state(1)[0] % (1 << 31))
    rng = np.random.default_rng(seed)
    feed, want = [], []
    for src, dst in PICKED:
        raws = edge_raws(src, dst, rng, SAMPLES)
        feed.append(raws.astype(str))
        want.append(fixed.requantize_fixed(raws, src, dst))
    run = subprocess.run([str(tmp_path / "t")], input="\n".join(np.concatenate(feed)) + "\n",
                         capture_output=True, text=True, check=True)
    got = np.array(run.stdout.split(), dtype=np.int64).reshape(len(PICKED), SAMPLES)
    bad = [f"{s}->{d}" for (s, d), g, w in zip(PICKED, got, want, strict=True)
           if not np.array_equal(g, w)]
    assert not bad, f"seed {seed}: narrow requantize differs from kiln.ir.fixed: {bad}"


def test_no_128_bit_intermediate_in_the_static_conversion() -> None:
    """Only the run-time-shift conversion (softmax's normalisation) keeps wide_t."""
    header = runtime_header("kiln_fixed.h")
    static = header[header.index("inline raw_t<W, S> requantize("):]
    static = static[:static.index("\n}\n")]
    assert "ap_int<CW::value>" in static and "wide_t" in static.split("#else")[1]
    assert "wide_t" not in static.split("#else")[0]

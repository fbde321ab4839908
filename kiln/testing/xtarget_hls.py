"""The fpga and asic targets in the cross-target fuzzer: one g++ C-simulation per batch.

Each case runs the target's pipeline, the `fixed-point` pass at a precision drawn from its seed
(calibrated on the case's batches) and the HLS lowering: those may refuse (an op without an
HLS layer, batch > 1, a range too wide for the precision). The C++ emitter must then accept
it. The batch's firmware files are compiled as ONE translation unit, each model's top function
inside its own namespace (its layers and weight ROMs are `static`, its names prefixed by its
model name), behind a testbench that reads `id raw raw ...` lines and writes the output raws
of model `id`; `-O1` keeps the build quick. A failing build or run is bisected to the models
that cause it. The outputs (host dequantization and float tail included, `FpgaArtifact.tail`)
must equal `kiln.interpret` on the fixed-point IR bit for bit, as `art(x)` does.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kiln.codegen.hls import HlsOptions, Lowered, emit_lowered, lower
from kiln.codegen.hls.emitter import model_name
from kiln.codegen.hls.hls_types import type_name
from kiln.compiler.pass_manager import PassManager
from kiln.errors import KilnError
from kiln.ir.graph import Module
from kiln.targets.fpga import FpgaArtifact, check_precision, to_fixed
from kiln.targets.target import get_target
from kiln.targets.toolchains import gxx
from kiln.testing.differential import first_line, run_quietly
from kiln.testing.xtarget import Case, Result, judge
from kiln.testing.xtarget_batch import BatchedRunner

CSIM_FLAGS = ("-O1", "-std=c++14", "-w", "-Ifirmware")
PRECISIONS = (16, 16, 12, 8)
"""Fixed-point widths, drawn by seed."""
REUSE_FACTORS = (1, 1, 2, 1, 3)
"""Reuse factors, drawn by seed (pragmas and loop structure only: the arithmetic must not
change)."""


@dataclass
class _Ready:
    index: int
    name: str
    art: FpgaArtifact
    raws: np.ndarray
    want: list[np.ndarray]


class HlsRunner(BatchedRunner):
    """The fpga (`flavor="fpga"`) or asic target's C-simulation on batches of cases."""

    build_tool = "g++"
    run_label = "C-simulation"

    def __init__(self, work: Path, flavor: str = "fpga") -> None:
        super().__init__()
        self.name = flavor
        self.flavor = flavor
        self.work = work / flavor
        self.work.mkdir(parents=True, exist_ok=True)
        self.toolchain = gxx.find("g++")
        self.builds = 0

    def prepare(self, index: int, case: Case) -> _Ready | Result:
        precision = PRECISIONS[case.seed % len(PRECISIONS)]
        try:
            module = PassManager(target_pipeline(self.flavor),
                                 reproducer=False).run(case.module).module
        except Exception as exc:  # a pass crashing: the pipelines runner names it
            return Result(self.name, "crash", "pipeline: " + first_line(exc))
        rf = REUSE_FACTORS[case.seed % len(REUSE_FACTORS)]
        hls = HlsOptions(rf, "parallel", "xczu9eg", 200.0, flavor=self.flavor)
        try:
            fixed = to_fixed(module, {"precision": precision,
                                      "calibration_data": list(case.calibration)})
            lowered = lower(fixed, rf, "parallel")
            check_precision(lowered, precision)
        except KilnError as exc:
            return Result(self.name, "refused", first_line(exc))
        except Exception as exc:  # the fixed-point pass or the lowering crashing
            return Result(self.name, "crash", "fixed point: " + first_line(exc))
        try:
            files = emit_lowered(fixed, lowered, hls)
            art = FpgaArtifact(fixed, lowered, None, hls, files, precision)  # type: ignore
            raws = art.raws_in(case.inputs)
            want = run_quietly(fixed, case.inputs)
        except Exception as exc:  # lowering accepted it: the emitter must too
            return Result(self.name, "crash", "emitting: " + first_line(exc))
        return _Ready(index, model_name(fixed), art, raws, want)

    def judge(self, item: _Ready, raws: np.ndarray, case: Case) -> Result:
        try:
            got = item.art.tail(raws.reshape(1, -1), case.inputs)
        except Exception as exc:  # the host's float tail failing
            return Result(self.name, "crash", "host tail: " + first_line(exc))
        result = judge(self.name, item.want, got, 0.0)
        return Result(self.name, "ok", "bit-exact") if result.status == "ok" else result

    def write(self, folder: Path, ready: Sequence[_Ready]) -> None:
        (folder / "firmware").mkdir(parents=True, exist_ok=True)
        for item in ready:
            for rel, text in item.art.files.items():
                if rel.startswith("firmware/"):
                    (folder / rel).write_text(text)

    def testbench(self, group: Sequence[_Ready]) -> str:
        lines = ["#include <cstdio>", "#include <fstream>", "#include <sstream>",
                 "#include <string>", "#include <vector>", "#include <stdint.h>"]
        # kiln's headers at global scope (their include guards make the models' own includes,
        # inside the per-model namespaces below, no-ops)
        headers = sorted({Path(rel).name for item in group for rel in item.art.files
                          if rel.startswith("firmware/kiln_") and rel.endswith(".h")})
        lines += [f'#include "{name}"' for name in headers or ["kiln_layers.h"]]
        for item in group:
            lines += [f"namespace m{item.index} {{", f'#include "{item.name}.cpp"', "}"]
        lines += ["static bool run_model(long id, const std::vector<long long>& x, "
                  "std::vector<long long>& y) {", "  switch (id) {"]
        for item in group:
            lines.append(f"  case {item.index}: {{ {self.call(item)} return true; }}")
        lines += ["  default: return false;", "  }", "}",
                  "int main(int argc, char** argv) {",
                  "  if (argc < 3) return 2;",
                  "  std::ifstream fin(argv[1]); std::ofstream fout(argv[2]);",
                  "  std::string line;",
                  "  while (std::getline(fin, line)) {",
                  "    std::istringstream s(line); long id; s >> id;",
                  "    std::vector<long long> x, y; long long v;",
                  "    while (s >> v) x.push_back(v);",
                  "    if (!run_model(id, x, y)) return 3;",
                  "    fout << id; for (long long r : y) fout << ' ' << r; fout << '\\n';",
                  "  }", "  return 0;", "}"]
        return "\n".join(lines) + "\n"

    @staticmethod
    def call(item: _Ready) -> str:
        lowered: Lowered = item.art.lowered
        parts, offset = [], 0
        for i, t in enumerate(lowered.inputs):
            parts.append(f"m{item.index}::{type_name(t)} in{i}[{t.size}]; "
                         f"for (int i = 0; i < {t.size}; i++) "
                         f"in{i}[i] = x.at({offset} + i);")
            offset += t.size
        for i, t in enumerate(lowered.outputs):
            parts.append(f"m{item.index}::{type_name(t)} out{i}[{t.size}];")
        ports = [f"in{i}" for i in range(len(lowered.inputs))]
        ports += [f"out{i}" for i in range(len(lowered.outputs))]
        parts.append(f"m{item.index}::{item.name}({', '.join(ports)});")
        for i, t in enumerate(lowered.outputs):
            parts.append(f"for (int i = 0; i < {t.size}; i++) "
                         f"y.push_back(kiln::wide(out{i}[i]));")
        return " ".join(parts)

    def build(self, folder: Path, group: Sequence[_Ready]) -> Path:
        self.builds += 1
        tag = f"csim{group[0].index}_{group[-1].index}_{len(group)}"
        (folder / f"{tag}.cpp").write_text(self.testbench(group))
        return gxx.build(self.toolchain, folder, [f"{tag}.cpp"], tag, list(CSIM_FLAGS),
                         log_name=f"{tag}.log")

    def execute(self, binary: Path, group: Sequence[_Ready],
                cases: Sequence[Case] = ()) -> list[np.ndarray]:
        """Every model of `group`, one sample each, in one run of `binary`."""
        with tempfile.TemporaryDirectory(prefix="kiln-xcsim-") as tmp:
            src, dst = Path(tmp) / "in.dat", Path(tmp) / "out.dat"
            src.write_text("".join(
                f"{item.index} {' '.join(map(str, item.raws.reshape(-1).tolist()))}\n"
                for item in group))
            result = gxx.run([str(binary), str(src), str(dst)])
            if result.returncode != 0:
                raise KilnError(f"exit {result.returncode}: {result.stderr.strip()[-200:]}")
            rows = dst.read_text().splitlines()
        found = {int(r.split()[0]): np.array(r.split()[1:], dtype=np.int64) for r in rows}
        missing = [item.index for item in group if item.index not in found]
        if missing:
            raise KilnError(f"no output for models {missing}")
        return [found[item.index] for item in group]


def target_pipeline(flavor: str) -> str:
    """The pipeline `kiln.compile(..., target=flavor)` runs (the asic target's is `fpga`:
    the HLS layers are unfused ops)."""
    return get_target(flavor).default_pipeline({})


def fixed_module(case: Case, flavor: str = "fpga") -> Module:
    """The fixed-point IR a case compiles to (for reproducers and regression tests)."""
    module = PassManager(target_pipeline(flavor), reproducer=False).run(case.module).module
    precision = PRECISIONS[case.seed % len(PRECISIONS)]
    return to_fixed(module, {"precision": precision, "calibration_data": list(case.calibration)})


def hls_accepts(case: Case) -> bool:
    """Whether the fpga pipeline, fixed point and the HLS lowering accept the case."""
    try:
        fixed = fixed_module(case)
        lowered = lower(fixed, 1, "parallel")
        check_precision(lowered, PRECISIONS[case.seed % len(PRECISIONS)])
    except Exception:  # any refusal (or crash, which the runner reports) means no
        return False
    return True

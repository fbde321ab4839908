"""The `asic` target: the fpga target's HLS C++ in its ASIC flavor, C-simulated with g++.

    art = kiln.compile(model, x, target="asic", node="45nm", clock_mhz=500)
    art(x)            # the C-simulation, bit-exact with kiln's interpreter (as for fpga)
    art.report()      # area_um2, energy_pj, multipliers, adders and the per-layer list

The build is the fpga target's (`fpga.to_fixed` then `fpga.build_hls`: calibrated fixed
point, lowering, C++, the g++ C-simulation) with `HlsOptions(flavor="asic")`: the C++ carries
no FPGA pragmas or Vitis port protocol and the weights are ROM arrays with a memory-mapping
note (`kiln.codegen.hls.emitter`). Area and energy per inference come from
`kiln.targets.cost.asic_estimate` (per-operation figures at `node`, sources cited there), with
the same `reuse_factor` (one int or layer name → int): a reuse factor R shares each
multiplier R times, so area drops while energy per inference stays (same operations).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from kiln.codegen.hls import HlsOptions
from kiln.ir.graph import Module
from kiln.targets.cost.asic_estimate import asic_report, node_factors
from kiln.targets.fpga import FpgaArtifact, build_hls, layer_row, reuse_option, to_fixed
from kiln.targets.target import Target


@dataclass
class AsicArtifact:
    """The ASIC-flavored HLS project, its C-simulation and the area/energy estimate."""

    hls: FpgaArtifact
    node: str
    files: dict[str, str]

    @property
    def module(self) -> Module:
        return self.hls.module

    def run(self, *inputs: np.ndarray) -> list[np.ndarray]:
        return self.hls.run(*inputs)

    def run_raw(self, *inputs: np.ndarray) -> np.ndarray:
        return self.hls.run_raw(*inputs)

    def report(self) -> dict[str, Any]:
        """`asic_report` on the fixed-point module (area, energy, counts, per-layer list)."""
        options = self.hls.options
        est = asic_report(self.hls.module, node=self.node, reuse_factor=options.reuse_factor)
        return {**est, "clock_mhz": options.clock_mhz, "reuse_factor": options.reuse_factor,
                "precision": self.hls.precision,
                "runtime": "C-simulation of the generated HLS C++ (g++, kiln_fixed.h)",
                "hls_functions": [layer_row(layer) for layer in self.hls.lowered.layers],
                "host_tail": [op.name for op in self.hls.lowered.tail],
                "csim_build_log": str(self.hls.csim.log)}

    def export(self, directory: Path) -> Path:
        return self.hls.export(directory)


def build(module: Module, options: Mapping[str, Any]) -> AsicArtifact:
    """Fixed point, then the shared HLS build in the ASIC flavor (module docstring)."""
    node = str(options["node"])
    node_factors(node)  # an unknown node fails before any C++ is compiled
    fixed = to_fixed(module, options)
    hls = HlsOptions(reuse_option(options["reuse_factor"]), "parallel", f"asic-{node}",
                     float(options["clock_mhz"]), flavor="asic")
    art = build_hls(fixed, options, hls)
    return AsicArtifact(art, node, art.files)


TARGET = Target(
    name="asic",
    description="HLS C++ for ASIC flows (no FPGA pragmas) with a g++ C-simulation and an "
                "area/energy estimate",
    pipeline="fpga",
    build=build,
    options={"node": "45nm", "clock_mhz": 500.0, "reuse_factor": 1, "precision": None,
             "calibration_data": None, "example_inputs": None, "cache_dir": None,
             "cxx": "g++"},
)

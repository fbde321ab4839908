"""Does the design fit the named part? Checked on the estimator before any C++ is compiled.

The `fit` option of the fpga target:

- `"auto"` (default): refuse a model that is **far** too large: even its cheapest
  configuration (every layer at its largest valid reuse factor, the better of `io="parallel"`
  and `io="stream"`) needs more than `FAR_FACTOR` times some resource of the part. Reuse
  factors and budgets cannot fix that, so the error names the resource, by how much it is
  exceeded, and the known parts that would hold the cheapest configuration. A design that is
  over the part only as requested (e.g. fully parallel) is built with a logged warning: the
  C-simulation is still useful and the estimator is an estimate.
- `"strict"`: the configuration as requested must fit; the error says by how much it misses and
  the smallest uniform reuse factor that fits (or that none does).
- `"off"`: no check (C-simulate anything, however large).

The factor is generous because the LUT/FF figures are analytic estimates: the bundled models
that do not fit `xczu9eg` miss it by at most 1.9x in their cheapest configuration, while a
model that would take minutes of g++ time to C-simulate (a 4096x4096 dense layer on an
`xc7z020`) misses it by orders of magnitude.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from kiln.errors import KilnError
from kiln.ir.graph import Module
from kiln.targets.cost.fpga_estimate import FpgaEstimate, estimate_layers, valid_reuse_factors
from kiln.targets.cost.fpga_layers import LayerShape, layer_shapes
from kiln.targets.cost.fpga_parts import PARTS

logger = logging.getLogger("kiln.targets.fpga")
FAR_FACTOR = 4.0
MODES = ("auto", "strict", "off")


def _ratio(est: FpgaEstimate) -> float:
    """The largest need / available over the exceeded resources (inf for a missing one)."""
    return max((need / have if have else float("inf") for need, have in est.over().values()),
               default=0.0)


def _overs(est: FpgaEstimate) -> str:
    return ", ".join(f"{k} {need:,} of {have:,} available ("
                     + (f"{need / have:.1f}x" if have else "the part has none") + ")"
                     for k, (need, have) in est.over().items())


def cheapest(shapes: list[LayerShape], part: str, clock_mhz: float) -> FpgaEstimate:
    """Every layer at its largest valid reuse factor, in the io mode that needs less."""
    rf = {s.name: valid_reuse_factors(s)[-1] for s in shapes}
    options = [estimate_layers(shapes, part=part, clock_mhz=clock_mhz, io=io, reuse_factor=rf)
               for io in ("parallel", "stream")]
    return min(options, key=_ratio)


def _uniform_rf_that_fits(shapes: list[LayerShape], options: Mapping[str, Any]) -> int | None:
    top = max((valid_reuse_factors(s)[-1] for s in shapes), default=1)
    rf = 2
    while rf <= 2 * top:
        est = estimate_layers(shapes, part=str(options["part"]), reuse_factor=rf,
                              clock_mhz=float(options["clock_mhz"]), io=options["io"])
        if est.fits:
            return rf
        rf *= 2
    return None


def check_fit(fixed: Module, options: Mapping[str, Any], reuse: Any) -> None:
    """The `fit` option (module docstring) on the fixed-point module and chosen reuse."""
    mode = options.get("fit") or "auto"
    if mode not in MODES:
        raise KilnError(f"fit={mode!r} is not one of {', '.join(map(repr, MODES))}")
    if mode == "off":
        return
    part, clock = str(options["part"]), float(options["clock_mhz"])
    shapes = layer_shapes(fixed)
    requested = estimate_layers(shapes, part=part, clock_mhz=clock, io=options["io"],
                                reuse_factor=reuse)
    if requested.fits:
        return
    name = fixed.name
    if mode == "strict":
        rf = _uniform_rf_that_fits(shapes, options)
        raise KilnError(f"model '{name}' does not fit {requested.part.name} as requested "
                        f"(reuse_factor={reuse!r}, io={options['io']!r}): it needs "
                        f"{_overs(requested)}",
                        hint=(f"reuse_factor={rf} fits; or pass budget={{...}} to search "
                              "per-layer reuse factors" if rf is not None else
                              "no uniform reuse factor fits: prune, narrow the precision or "
                              "pick a larger part"))
    best = cheapest(shapes, part, clock)
    if _ratio(best) > FAR_FACTOR:
        fitting = [p for p in sorted(PARTS) if cheapest(shapes, p, clock).fits]
        raise KilnError(f"model '{name}' is far too large for {best.part.name}: even with "
                        f"every layer at its largest reuse factor (io={best.io!r}) it needs "
                        f"{_overs(best)}; reuse factors and budgets cannot make it fit",
                        hint=(f"pick a larger part ({', '.join(fitting)} would hold it), "
                              if fitting else "no known part holds it: ")
                        + "prune or narrow the precision; fit='off' builds the C-simulation "
                          "anyway")
    logger.warning("fpga: model '%s' does not fit %s as requested (%s); a larger reuse factor "
                   "or budget=... would help", name, requested.part.name, _overs(requested))

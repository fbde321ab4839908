"""ASIC cost model: multiplier/adder counts, area and energy per inference at a named node.

    asic_report(module, node="45nm") -> {"area_um2", "energy_pj", "multipliers", "adders",
                                          "layers": [...], ...}

**Source of the per-operation figures** (45 nm, 0.9 V): M. Horowitz, "Computing's energy
problem (and what we can do about it)", ISSCC 2014, pp. 10-14, Fig. 1.1.9 tables:
energy 8-bit int add 0.03 pJ, 32-bit int add 0.1 pJ, 8-bit int mult 0.2 pJ, 32-bit int mult
3.1 pJ, 16-bit FP add 0.4 pJ, 32-bit FP mult 3.7 pJ, 8 KB SRAM read 10 pJ per 64 bits; area
8-bit add 36 um^2, 32-bit add 137 um^2, 8-bit mult 282 um^2, 32-bit mult 3495 um^2.

**Width scaling**: an integer adder of b bits costs by a power law through the two published
points in b (8 and 32 bits); a multiplier a x b by a power law through the two points in the
bit-product a*b (64 and 1024). Energy per multiply is close to linear in a*b (0.0031 and 0.0030
pJ per bit-product), area slightly sub-linear. Widths outside 8..32 extrapolate the same law.

**Other nodes**: "7nm" scales the 45 nm figures by round factors (energy x0.12, area x0.05),
of the size the CMOS scaling equations of A. Stillmaker and B. Baas ("Scaling equations for
the accurate prediction of CMOS device performance from 180 nm to 7 nm", Integration 58,
2017) give from 45 nm to 7 nm; they are not a foundry figure. "28nm" and "16nm" likewise
(energy x0.55/x0.3, area x0.4/x0.15).

**Architecture counted**: fully spatial (one multiplier per non-zero weight of a position,
divided by `reuse_factor`), so `multipliers`/`adders` are instances; energy counts every
operation of one inference (each output position) plus one 64-bit SRAM read per 64 weight
bits per position (weights held in on-chip SRAM). Float tensors count as 16-bit integers
(`fpga_layers.DEFAULT_BITS`), as the target converts them to fixed point.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from kiln.errors import KilnError
from kiln.ir.graph import Module
from kiln.targets.cost.fpga_layers import LayerShape, layer_shapes

ADD_45NM = {"pj": ((8, 0.03), (32, 0.1)), "um2": ((8, 36.0), (32, 137.0))}
MUL_45NM = {"pj": ((64, 0.2), (1024, 3.1)), "um2": ((64, 282.0), (1024, 3495.0))}
SRAM_PJ_PER_64B = 10.0
NODES = {"45nm": (1.0, 1.0), "28nm": (0.55, 0.4), "16nm": (0.3, 0.15), "7nm": (0.12, 0.05)}
"""node -> (energy factor, area factor) relative to 45 nm."""


def power_law(points: tuple[tuple[int, float], tuple[int, float]], x: float) -> float:
    """y = c * x^k through both (x, y) points."""
    (x0, y0), (x1, y1) = points
    k = math.log(y1 / y0) / math.log(x1 / x0)
    return y0 * (x / x0) ** k


def node_factors(node: str) -> tuple[float, float]:
    if node not in NODES:
        raise KilnError(f"unknown ASIC node '{node}'; known nodes: {', '.join(NODES)}")
    return NODES[node]


def layer_report(layer: LayerShape, reuse_factor: int, e: float, a: float) -> dict[str, Any]:
    """Counts, area and energy of one layer."""
    bp = layer.in_bits * max(layer.w_bits, 1)
    mul_pj, mul_um2 = (power_law(MUL_45NM[k], bp) for k in ("pj", "um2"))
    add_bits = layer.acc_bits if layer.dense_mults else layer.out_bits
    add_pj, add_um2 = (power_law(ADD_45NM[k], add_bits) for k in ("pj", "um2"))
    if layer.dense_mults:
        mults = math.ceil(layer.mults / reuse_factor)
        adds = mults + layer.n_out
        ops_mul = layer.mults * layer.positions
        ops_add = (layer.mults + layer.n_out) * layer.positions
    else:
        mults, adds = 0, layer.n_out * max(layer.window - 1, 1)
        ops_mul, ops_add = 0, layer.out_numel * max(layer.window - 1, 1)
    sram = layer.weight_bits * layer.positions / 64 * SRAM_PJ_PER_64B
    energy = (ops_mul * mul_pj + ops_add * add_pj + sram) * e
    area = (mults * mul_um2 + adds * add_um2) * a
    return {"name": layer.name, "op": layer.kind, "multipliers": mults, "adders": adds,
            "mult_ops": ops_mul, "add_ops": ops_add, "precision": layer.precision,
            "area_um2": area, "energy_pj": energy, "weight_bits": layer.weight_bits}


def asic_report(module: Module, node: str = "45nm",
                reuse_factor: int | Mapping[str, int] = 1) -> dict[str, Any]:
    """Area (um^2) and energy per inference (pJ) of `module` at `node` (module docstring);
    `reuse_factor` is one int or layer name → int (unnamed layers: 1)."""
    e, a = node_factors(node)
    shapes = layer_shapes(module)
    rfs = reuse_factor if isinstance(reuse_factor, Mapping) else {s.name: reuse_factor
                                                                   for s in shapes}
    unknown = sorted(set(rfs) - {s.name for s in shapes})
    if unknown:
        raise KilnError(f"reuse_factor names unknown layers {unknown}; layers: "
                        f"{', '.join(s.name for s in shapes)}")
    if any(v < 1 for v in rfs.values()):
        raise KilnError(f"reuse_factor={reuse_factor} must be >= 1")
    layers = [layer_report(s, rfs.get(s.name, 1), e, a) for s in shapes]
    total = {k: sum(row[k] for row in layers)
             for k in ("area_um2", "energy_pj", "multipliers", "adders", "mult_ops", "add_ops",
                       "weight_bits")}
    return {"node": node, **total, "layers": layers,
            "source": "Horowitz, ISSCC 2014 (45 nm); other nodes scaled (see docstring)"}


__all__ = ["NODES", "asic_report"]

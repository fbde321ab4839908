"""Budget search: per-layer reuse factors (and optionally widths) that fit a resource budget.

    result = search(module, "xczu9eg", budget={"dsp": 500, "latency_ns": 2000})
    result.reuse_factor, result.pareto

Greedy descent over the estimator (fast: one `estimate_layers` call per candidate move):
start fully parallel (every RF = 1, the lowest latency); while a resource is over budget, take
the move — one layer to its next larger valid RF, or (with `precisions`) one layer to a
narrower width — that removes the most of the most-violated resource per cycle of latency
added. Every visited configuration is kept; `pareto` is its non-dominated subset on
(latency, DSP, LUT). The budget keys are `dsp`, `lut`, `ff`, `bram`, `uram` (absolute counts;
unset ones default to the part's totals) and `latency_ns`. When no move is left and the budget
is still missed, a `KilnError` names the binding resource and the nearest achievable values.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from kiln.errors import KilnError
from kiln.ir.graph import Module
from kiln.targets.cost.fpga_estimate import (
    RESOURCES,
    FpgaEstimate,
    IoMode,
    estimate_layers,
    valid_reuse_factors,
)
from kiln.targets.cost.fpga_layers import LayerShape, layer_shapes

KEYS = (*RESOURCES, "latency_ns")


@dataclass
class SearchResult:
    """The chosen configuration, its estimate and the table it was chosen from."""

    reuse_factor: dict[str, int]
    bits: dict[str, int]
    estimate: FpgaEstimate
    explored: list[dict[str, object]] = field(default_factory=list)

    @property
    def pareto(self) -> list[dict[str, object]]:
        """Visited configurations no other beats on latency, DSP and LUT at once."""
        def dominated(a: Mapping[str, object], b: Mapping[str, object]) -> bool:
            keys = ("latency_cycles", "dsp", "lut")
            return (all(b[k] <= a[k] for k in keys)  # type: ignore[operator]
                    and any(b[k] < a[k] for k in keys))  # type: ignore[operator]
        return sorted((r for r in self.explored
                       if not any(dominated(r, o) for o in self.explored)),
                      key=lambda r: r["latency_cycles"])  # type: ignore[arg-type,return-value]


def check_budget(budget: Mapping[str, float]) -> None:
    unknown = sorted(set(budget) - set(KEYS))
    if unknown:
        raise KilnError(f"budget has unknown keys {unknown}; known: {', '.join(KEYS)}")


def excess(est: FpgaEstimate, budget: Mapping[str, float]) -> dict[str, float]:
    """Relative overshoot per budget key (0 when within budget)."""
    limits = {**est.available(), **budget}
    used = {k: float(est.total(k)) for k in RESOURCES}
    used["latency_ns"] = est.latency_cycles * 1000.0 / est.clock_mhz
    return {k: max(used[k] - v, 0.0) / max(v, 1.0) for k, v in limits.items() if k in used}


def summary(est: FpgaEstimate, rf: Mapping[str, int], bits: Mapping[str, int]) -> dict[str, object]:
    r = est.report()
    row = {k: r[k] for k in ("latency_cycles", "latency_ns", "ii", *RESOURCES, "fits")}
    return {**row, "reuse_factor": dict(rf), "bits": dict(bits)}


def moves(shapes: Sequence[LayerShape], rf: dict[str, int], bits: dict[str, int],
          precisions: Sequence[int]) -> list[tuple[dict[str, int], dict[str, int]]]:
    """Neighbour configurations: one layer one RF step up, or to any narrower width (a
    step that saves nothing alone, 16 -> 8 bits still on a DSP, must not hide 5 bits)."""
    out = []
    for s in shapes:
        if not s.dense_mults:
            continue
        larger = [v for v in valid_reuse_factors(s) if v > rf[s.name]]
        if larger:
            out.append(({**rf, s.name: larger[0]}, bits))
        out.extend((rf, {**bits, s.name: p}) for p in precisions
                   if p < bits.get(s.name, s.w_bits))
    return out


def search(module: Module, part: str = "xczu9eg", budget: Mapping[str, float] | None = None,
           *, clock_mhz: float = 200, io: IoMode = "parallel",
           precisions: Sequence[int] = (), max_steps: int = 10_000) -> SearchResult:
    """Greedy search for per-layer RFs (and widths) meeting `budget` (module docstring)."""
    budget = dict(budget or {})
    check_budget(budget)
    shapes = layer_shapes(module)
    rf = {s.name: 1 for s in shapes}
    bits: dict[str, int] = {}

    def run(r: Mapping[str, int], b: Mapping[str, int]) -> FpgaEstimate:
        return estimate_layers(shapes, part=part, clock_mhz=clock_mhz, io=io,
                               reuse_factor=r, bits=b)

    est = run(rf, bits)
    explored = [summary(est, rf, bits)]
    for _ in range(max_steps):
        over = excess(est, budget)
        if not any(over.values()):
            return SearchResult(rf, bits, est, explored)
        worst = max((k for k in over if k != "latency_ns"), key=lambda k: over[k])
        if over[worst] == 0:
            break  # only latency is missed, and every move adds latency
        best = None
        for r, b in moves(shapes, rf, bits, sorted(precisions)):
            cand = run(r, b)
            gain = est.total(worst) - cand.total(worst)
            cost = max(cand.latency_cycles - est.latency_cycles, 0) + 1
            if gain > 0 and (best is None or gain / cost > best[0]):
                best = (gain / cost, r, b, cand)
        if best is None:
            break
        _, rf, bits, est = best
        explored.append(summary(est, rf, bits))
    raise unmet(est, budget, explored)


def unmet(est: FpgaEstimate, budget: Mapping[str, float],
          explored: list[dict[str, object]]) -> KilnError:
    """The error for a budget no visited configuration meets: binding resource, best values."""
    over = excess(est, budget)
    binding = max(over, key=lambda k: over[k])
    nearest = {k: min(float(r[k]) for r in explored)  # type: ignore[arg-type]
               for k in ("latency_ns", "dsp", "lut", "bram")}
    limit = {**est.available(), **budget}[binding]
    return KilnError(f"no reuse-factor configuration on {est.part.name} meets the budget: "
                     f"'{binding}' is binding (limit {limit:g}); nearest achievable values "
                     f"(each alone): {nearest}",
                     hint="raise the budget, choose a larger part, or allow narrower "
                          "precisions (precisions=[...]) / prune the model")


__all__ = ["SearchResult", "search"]

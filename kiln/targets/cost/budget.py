"""Budget search: per-layer reuse factors (and optionally widths) that fit a resource budget.

    result = search(module, "xczu9eg", budget={"dsp": 500, "latency_ns": 2000})
    result.reuse_factor, result.pareto

Greedy descent over the estimator: start fully parallel (every RF = 1, the lowest latency);
while a resource is over budget, take the move — one layer to its next larger valid RF, or
(with `precisions`) one layer to a narrower width — that removes the most of the
most-violated resource per cycle of latency added. Every visited configuration is kept;
`pareto` is its non-dominated subset on (latency, DSP, LUT, error). The budget keys are `dsp`,
`lut`, `ff`, `bram`, `uram` (absolute counts; unset ones default to the part's totals) and
`latency_ns`. When no move is left and the budget is still missed, a `KilnError` names the
binding resource and the nearest achievable values.

**Estimators.** io="parallel" costs the module's layers (`estimate_layers`); io="stream" costs
the dataflow design actually generated (`fpga_stream.estimate_stream`: stages, line buffers,
sized FIFOs), lowering the module for each candidate.

**Precision.** Without a `guard`, a width move only re-prices the layer in the estimator
(`bits`: input, weights and output at that width; io="parallel" only). With a
`PrecisionGuard` (`budget_precision`) each width configuration is realized in the fixed-point
IR and estimated as built, and a width move is taken only when the realized module's outputs
keep an SQNR of at least `guard.min_sqnr_db` against the float model on the calibration
samples; the Pareto rows then carry `sqnr_db` (the error column) and `result.module` is the
chosen fixed-point module.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from kiln.errors import KilnError
from kiln.ir.graph import Module
from kiln.targets.cost.budget_precision import PrecisionGuard
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
    module: Module | None = None
    """The chosen fixed-point module (narrowed layers realized); None without a guard."""

    @property
    def pareto(self) -> list[dict[str, object]]:
        """Visited configurations no other beats on latency, DSP and LUT at once."""
        def dominated(a: Mapping[str, object], b: Mapping[str, object]) -> bool:
            keys = ("latency_cycles", "dsp", "lut", "error")
            return (all(_cost(b, k) <= _cost(a, k) for k in keys)
                    and any(_cost(b, k) < _cost(a, k) for k in keys))
        return sorted((r for r in self.explored
                       if not any(dominated(r, o) for o in self.explored)),
                      key=lambda r: r["latency_cycles"])  # type: ignore[arg-type,return-value]


def _cost(row: Mapping[str, object], key: str) -> float:
    """Lower is better: resources and latency as they are, the error as -SQNR."""
    if key == "error":
        sqnr = row.get("sqnr_db")
        return -float(sqnr) if isinstance(sqnr, (int, float)) else 0.0
    value = row[key]
    assert isinstance(value, (int, float))
    return float(value)


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


def summary(est: FpgaEstimate, rf: Mapping[str, int], bits: Mapping[str, int],
            sqnr: float | None = None) -> dict[str, object]:
    """One Pareto row: the configuration, latency, resources and (with a guard) the error."""
    r = est.report()
    row = {k: r[k] for k in ("latency_cycles", "latency_ns", "ii", *RESOURCES, "fits")}
    return {**row, "reuse_factor": dict(rf), "bits": dict(bits),
            **({"sqnr_db": round(sqnr, 2)} if sqnr is not None else {})}


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


class _Runner:
    """Estimates of configurations: the estimator of the io mode, on the module as built."""

    def __init__(self, module: Module, part: str, clock_mhz: float, io: IoMode,
                 guard: PrecisionGuard | None) -> None:
        self.module, self.part, self.clock, self.io, self.guard = module, part, clock_mhz, io, \
            guard
        self.shapes = layer_shapes(module)

    def built(self, bits: Mapping[str, int]) -> Module | None:
        if self.guard is None:
            return self.module
        return self.guard.module(self.module, bits)

    def run(self, rf: Mapping[str, int], bits: Mapping[str, int]) -> FpgaEstimate | None:
        module = self.built(bits)
        if module is None:
            return None
        if self.io == "stream":
            from kiln.targets.cost.fpga_stream import estimate_stream

            return estimate_stream(module, part=self.part, clock_mhz=self.clock,
                                   reuse_factor={k: v for k, v in rf.items() if v != 1})
        if self.guard is not None:
            return estimate_layers(layer_shapes(module), part=self.part, clock_mhz=self.clock,
                                   io=self.io, reuse_factor=rf)
        return estimate_layers(self.shapes, part=self.part, clock_mhz=self.clock, io=self.io,
                               reuse_factor=rf, bits=bits)

    def sqnr(self, bits: Mapping[str, int]) -> float | None:
        return self.guard.sqnr_db(bits) if self.guard is not None else None

    def accepts(self, bits: Mapping[str, int], current: Mapping[str, int]) -> bool:
        return self.guard is None or dict(bits) == dict(current) or self.guard.accepts(bits)


def search(module: Module, part: str = "xczu9eg", budget: Mapping[str, float] | None = None,
           *, clock_mhz: float = 200, io: IoMode = "parallel",
           precisions: Sequence[int] = (), max_steps: int = 10_000,
           guard: PrecisionGuard | None = None) -> SearchResult:
    """Greedy search for per-layer RFs (and widths) meeting `budget` (module docstring)."""
    budget = dict(budget or {})
    check_budget(budget)
    if io == "stream" and precisions and guard is None:
        raise KilnError("a precision search with io='stream' needs a PrecisionGuard (the "
                        "stream estimator costs the module as built)",
                        hint="pass calibration data (the fpga target does) or io='parallel'")
    runner = _Runner(module, part, clock_mhz, io, guard)
    rf = {s.name: 1 for s in runner.shapes}
    bits: dict[str, int] = {}
    est = runner.run(rf, bits)
    assert est is not None
    explored = [summary(est, rf, bits, runner.sqnr(bits))]
    for _ in range(max_steps):
        over = excess(est, budget)
        if not any(over.values()):
            return SearchResult(rf, bits, est, explored, runner.built(bits) if guard else None)
        worst = max((k for k in over if k != "latency_ns"), key=lambda k: over[k])
        if over[worst] == 0:
            break  # only latency is missed, and every move adds latency
        step = _best_move(runner, est, worst, rf, bits, sorted(precisions))
        if step is None:
            break
        rf, bits, est = step
        explored.append(summary(est, rf, bits, runner.sqnr(bits)))
    raise unmet(est, budget, explored)


def _best_move(runner: _Runner, est: FpgaEstimate, worst: str, rf: dict[str, int],
               bits: dict[str, int], precisions: Sequence[int],
               ) -> tuple[dict[str, int], dict[str, int], FpgaEstimate] | None:
    """The move with the best gain per latency cycle whose precision the guard accepts."""
    scored: list[tuple[float, int, dict[str, int], dict[str, int], FpgaEstimate]] = []
    for r, b in moves(runner.shapes, rf, bits, precisions):
        cand = runner.run(r, b)
        if cand is None:
            continue
        gain = est.total(worst) - cand.total(worst)
        cost = max(cand.latency_cycles - est.latency_cycles, 0) + 1
        if gain > 0:
            scored.append((gain / cost, len(scored), r, b, cand))
    for _, _, r, b, cand in sorted(scored, key=lambda t: (-t[0], t[1])):
        if runner.accepts(b, bits):
            return r, b, cand
    return None


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


__all__ = ["PrecisionGuard", "SearchResult", "search"]

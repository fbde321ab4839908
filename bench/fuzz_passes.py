"""Differential fuzzing of every named pipeline and every registered pass on random graphs.

For each of `--graphs` random modules (`kiln.testing.random_module`, seeds `--seed` onward; every
4th gets NaN and infinities among its inputs) and each target of `kiln.testing.targets` (named
pipelines, each pass alone with representative options, a few combinations), run the target
and compare the interpreter's outputs with the unoptimized module's (relative error <= 1e-5,
NaN in the same places; lossy passes such as `quantize`: output shapes and dtypes only). Prints
one row per target: graphs, ops fuzzed, pass runs, runs that changed the IR, mismatches, crashes
(a pass raising on valid input, leaving invalid IR, or producing IR the interpreter rejects;
each graph also runs once with its weights elided, where only crashes can show) and refusals
(a pass's own diagnostic where `targets.MAY_REFUSE` allows one, or on elided weights).

Each failure is written to `--out/<target>/seed<N>/`: `original.kir` (+ `.npz`), `inputs.npz`,
`pipeline.txt`, and `minimized.kir` (+ `.npz`), shrunk by delta debugging; the path and a
`kiln-opt` command line are printed.

Run: `OMP_NUM_THREADS=1 .venv/bin/python bench/fuzz_passes.py --graphs 2000 --seed 0`.
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
import time
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from kiln.ir.graph import Module
from kiln.testing import random_module
from kiln.testing.differential import Outcome, check, check_elided, run_quietly
from kiln.testing.shrink import failure_predicate, shrink, size
from kiln.testing.targets import Target, fuzz_calibration, fuzz_inputs, fuzz_targets


@dataclass
class Row:
    """Totals for one target."""

    graphs: int = 0
    ops: int = 0
    runs: int = 0
    changed: int = 0
    failures: Counter[str] = field(default_factory=Counter)
    cases: int = 0
    """Reproducers written so far."""

    def add(self, ops: int, outcome: Outcome, statuses: tuple[str, ...]) -> None:
        """One graph: its run with weights and the verdicts on both runs."""
        self.graphs += 1
        self.ops += ops
        self.runs += outcome.runs
        self.changed += outcome.changed
        self.failures.update(s for s in statuses if s != "ok")

    def merge(self, other: Row) -> None:
        self.graphs += other.graphs
        self.ops += other.ops
        self.runs += other.runs
        self.changed += other.changed
        self.failures.update(other.failures)


@dataclass(frozen=True)
class Graph:
    """One fuzzed module with what it runs on."""

    seed: int
    module: Module
    inputs: list[np.ndarray]
    calibration: list[tuple[np.ndarray, ...]]


def write_case(out: Path, target: Target, graph: Graph, outcome: Outcome, elided: bool,
               do_shrink: bool) -> Path:
    """Save the failing module, its inputs and pipeline; shrink it; return the folder. For a
    crash with elided weights, the minimized module is saved without weights."""
    folder = out / re.sub(r"[^A-Za-z0-9_.-]+", "_", target.pipeline) / f"seed{graph.seed}"
    folder.mkdir(parents=True, exist_ok=True)
    graph.module.save(folder / "original.kir")
    np.savez(folder / "inputs.npz", *graph.inputs)
    (folder / "pipeline.txt").write_text(f"{target.pipeline}\n"
                                         f"# {outcome.status}: {outcome.detail}\n")
    small = graph.module
    if do_shrink:
        fails = failure_predicate(target.pipeline, graph.inputs, outcome.status, elided=elided,
                                  tolerance=target.tolerance, calibration=graph.calibration)
        small = shrink(graph.module, fails, graph.inputs).clone()
    if elided:
        small.weights = {}
    small.save(folder / "minimized.kir")
    return folder


def print_table(rows: dict[str, Row], seconds: float) -> None:
    head = ("pipeline", "graphs", "ops", "pass runs", "changed", "mismatches", "crashes",
            "refused")
    lines: list[tuple[str, ...]] = [head]
    total = Row()
    for label, row in rows.items():
        lines.append((label, *_cells(row)))
        total.merge(row)
    lines.append(("total", *_cells(total)))
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    for n, line in enumerate(lines):
        if n in (1, len(lines) - 1):
            print("  ".join("-" * w for w in widths))
        print("  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                        for i, (c, w) in enumerate(zip(line, widths))))
    print(f"({seconds:.1f} s)")


def _cells(row: Row) -> tuple[str, ...]:
    return (str(row.graphs), str(row.ops), str(row.runs), str(row.changed),
            str(row.failures["mismatch"]), str(row.failures["crash"]),
            str(row.failures["refused"]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--graphs", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-ops", type=int, default=12)
    parser.add_argument("--targets", default="",
                        help="comma-separated pass or pipeline names (default: all targets)")
    parser.add_argument("--out", type=Path, default=Path("fuzz-out"))
    parser.add_argument("--cases-per-target", type=int, default=3,
                        help="reproducers written (and shrunk) per target")
    parser.add_argument("--no-shrink", action="store_true")
    args = parser.parse_args(argv)
    logging.getLogger("kiln").setLevel(logging.ERROR)  # passes explain skips at WARNING
    warnings.simplefilter("ignore", RuntimeWarning)  # NaN inputs make NumPy warn in passes
    chosen = args.targets.split(",") if args.targets else []
    targets = [t for t in fuzz_targets() if not chosen or t.pipeline.split("{")[0] in chosen]
    rows = {t.pipeline: Row() for t in targets}
    start = time.perf_counter()
    for seed in range(args.seed, args.seed + args.graphs):
        module = random_module(seed, max_ops=args.max_ops)
        graph = Graph(seed, module, fuzz_inputs(module, seed), fuzz_calibration(module, seed))
        fuzz_one(graph, args, targets, rows)
    print_table({t.label: rows[t.pipeline] for t in targets}, time.perf_counter() - start)
    failed = any(row.failures["mismatch"] or row.failures["crash"] for row in rows.values())
    return 1 if failed else 0


def fuzz_one(graph: Graph, args: argparse.Namespace, targets: list[Target],
             rows: dict[str, Row]) -> None:
    want = run_quietly(graph.module, graph.inputs)
    ops = size(graph.module)
    for target in targets:
        outcome = check(graph.module, target.pipeline, graph.inputs, want,
                        tolerance=target.tolerance, calibration=graph.calibration)
        elided = check_elided(graph.module, target.pipeline, calibration=graph.calibration)
        row = rows[target.pipeline]
        verdicts = (target.judge(outcome), target.judge(elided, elided=True))
        row.add(ops, outcome, verdicts)
        for found, verdict, is_elided in ((outcome, verdicts[0], False),
                                          (elided, verdicts[1], True)):
            if verdict in ("mismatch", "crash") and row.cases < args.cases_per_target:
                row.cases += 1
                report(args, target, graph, found, is_elided)


def report(args: argparse.Namespace, target: Target, graph: Graph, outcome: Outcome,
           elided: bool) -> None:
    """Write (and shrink) the reproducer of one failure and say where it is."""
    folder = write_case(args.out, target, graph, outcome, elided, not args.no_shrink)
    print(f"{outcome.status}: {target.pipeline} on seed {graph.seed}: {outcome.detail}\n"
          f"  reproducer: {folder}/  (kiln-opt {folder}/minimized.kir -p '{target.pipeline}')",
          file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())

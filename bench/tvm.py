"""kiln → TVM against kiln's own cpu target: compile time and latency per bundled model.

For each model and batch (1 and 64): `kiln.compile(..., target="tvm")` (kiln's default
pipeline, Relax lowering, `tvm.compile` for LLVM with the host's `-mcpu`, opt_level 3) and
`kiln.compile(..., target="cpu")` (generated C, gcc, with a cold build cache), each timed end to
end (trace → passes → build). Latency: median ms per call through each artifact's `run`, both
engines timed in alternating blocks so that drift hits them alike. One thread each: the cpu
target's `threads=1`, and TVM's runtime pinned with `TVM_NUM_THREADS=1`, which this script sets
before TVM is imported (the library itself never sets it).

Run from the repository root: `python bench/tvm.py [--models a,b] [--seconds 0.5]`.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("TVM_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path[0] = str(Path(__file__).resolve().parents[1])  # the repository root, not bench/:
# this file is called tvm.py, and bench/ first on the path would shadow the `tvm` package

import numpy as np  # noqa: E402

import kiln  # noqa: E402
from kiln.errors import KilnError  # noqa: E402
from kiln.models import example_inputs, get_model, list_models  # noqa: E402

BATCHES = (1, 64)


def compile_timed(name: str, batch: int, target: str,
                  **options: object) -> tuple[kiln.CompiledModel, float]:
    start = time.perf_counter()
    art = kiln.compile(get_model(name), example_inputs(name, batch), target=target, **options)
    return art, time.perf_counter() - start


def block_ms(run: Callable[[], object], seconds: float) -> float:
    """Mean ms per call over one block of about `seconds / 10`."""
    start = time.perf_counter()
    calls = 0
    while time.perf_counter() - start < seconds / 10 or calls < 2:
        run()
        calls += 1
    return (time.perf_counter() - start) / calls * 1e3


def medians(runs: dict[str, Callable[[], object]], seconds: float) -> dict[str, float]:
    """Median over 10 alternating blocks per engine."""
    for run in runs.values():
        run()  # warm up
    samples: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(10):
        for key, run in runs.items():
            samples[key].append(block_ms(run, seconds))
    return {k: statistics.median(v) for k, v in samples.items()}


def bench_model(name: str, batch: int, seconds: float, cache: str) -> list[str]:
    tvm_art, tvm_s = compile_timed(name, batch, "tvm")
    rng = np.random.default_rng()
    xs = [rng.standard_normal(a.type.shape).astype(np.float32) for a in tvm_art.ir.main.args]
    build = tvm_art.artifact.report()["build_seconds"]
    try:
        cpu_art, cpu_s = compile_timed(name, batch, "cpu", threads=1, cache_dir=cache)
    except KilnError as exc:  # report TVM alone rather than lose the run
        print(f"{name}: cpu target failed: {exc}", file=sys.stderr)
        ms = medians({"tvm": lambda: tvm_art.artifact.run(*xs)}, seconds)
        return [name, str(batch), f"{tvm_s:.2f}", f"{build:.2f}", "failed",
                f"{ms['tvm']:.3f}", "-", "-", "-"]
    got, want = tvm_art.artifact.run(*xs), cpu_art.artifact.run(*xs)
    err = max(float(np.abs(g - w).max() / max(np.abs(w).max(), 1e-12))
              for g, w in zip(got, want))
    ms = medians({"tvm": lambda: tvm_art.artifact.run(*xs),
                  "cpu": lambda: cpu_art.artifact.run(*xs)}, seconds)
    return [name, str(batch), f"{tvm_s:.2f}", f"{build:.2f}", f"{cpu_s:.2f}",
            f"{ms['tvm']:.3f}", f"{ms['cpu']:.3f}", f"{ms['tvm'] / ms['cpu']:.2f}",
            f"{err:.1e}"]


def print_table(rows: list[list[str]]) -> None:
    head = ["model", "batch", "tvm compile s", "(tvm build s)", "cpu compile s",
            "tvm ms", "cpu ms", "tvm/cpu", "rel err"]
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    for row in [head, ["-" * w for w in widths], *rows]:
        print("| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(list_models()))
    parser.add_argument("--seconds", type=float, default=0.5,
                        help="timing budget per engine, model and batch")
    args = parser.parse_args()
    kiln.compile(get_model("jet_mlp"), example_inputs("jet_mlp"), target="tvm")  # import TVM
    rows = []
    with tempfile.TemporaryDirectory(prefix="kiln-bench-tvm-") as cache:
        for name in args.models.split(","):
            for batch in BATCHES:
                rows.append(bench_model(name, batch, args.seconds, cache))
                print(" ".join(rows[-1]), file=sys.stderr, flush=True)
    print_table(rows)


if __name__ == "__main__":
    main()

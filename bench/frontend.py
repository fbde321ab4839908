"""Front-end and pass-pipeline costs for every bundled model, as a table.

Measures, per model: time to trace (torch.export, the first path kiln tries), time to run the
`default` pipeline, op counts before and after, and the reference interpreter's batch-1 latency
beside torch eager's (the interpreter is the executable spec, not a fast path: this shows how
far it is from one). Medians of repeated runs, A/B interleaved.

Run: `make bench` (pins glibc's allocator thresholds, as BENCHMARKS.md explains).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from collections.abc import Callable

import torch

import kiln
from kiln.ir.analysis import compute_ops
from kiln.models import example_inputs, get_model, list_models


def median_seconds(fn: Callable[[], object], repeats: int) -> float:
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def interleaved(a: Callable[[], object], b: Callable[[], object],
                repeats: int) -> tuple[float, float]:
    """Median seconds of `a` and `b`, alternating runs so drift hits both alike."""
    ta, tb = [], []
    for _ in range(repeats):
        for fn, out in ((a, ta), (b, tb)):
            start = time.perf_counter()
            fn()
            out.append(time.perf_counter() - start)
    return statistics.median(ta), statistics.median(tb)


def bench_model(name: str, repeats: int) -> dict[str, object]:
    model = get_model(name)
    inputs = example_inputs(name, batch=1, seed=7)
    trace_s = median_seconds(lambda: kiln.trace(model, inputs), max(1, repeats // 10))
    module = kiln.trace(model, inputs)
    passes_s = median_seconds(lambda: kiln.run_passes(module, "default"), max(1, repeats // 10))
    optimized = kiln.run_passes(module, "default")
    arrays = [x.numpy() for x in inputs]
    with torch.no_grad():
        interp_s, eager_s = interleaved(lambda: kiln.interpret(optimized, *arrays),
                                        lambda: model(*inputs), repeats)
    return {"model": name, "trace_s": trace_s, "passes_s": passes_s,
            "ops_before": len(compute_ops(module.main)),
            "ops_after": len(compute_ops(optimized.main)),
            "interp_ms": interp_s * 1e3, "eager_ms": eager_s * 1e3}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("models", nargs="*")
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"1 thread, {time.strftime('%Y-%m-%d')}")
    header = ("model", "trace s", "default pipeline s", "kernels before", "kernels after",
              "interpreter ms", "eager ms")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for name in args.models or list_models():
        r = bench_model(name, args.repeats)
        print(f"| {r['model']} | {r['trace_s']:.3f} | {r['passes_s']:.4f} | {r['ops_before']} | "
              f"{r['ops_after']} | {r['interp_ms']:.3f} | {r['eager_ms']:.3f} |")


if __name__ == "__main__":
    main()

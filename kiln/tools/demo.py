"""`make demo`: compile every bundled model and show what kiln did to it.

Part 1, for each bundled model: trace it, run the default pipeline, print the optimized IR, the
op counts before and after, and the numerics check against PyTorch on random inputs (real
digits for the digits models). Part 2: the bundled example model (the trained digits CNN)
compiled for every target, with each target's report and its accuracy on real test digits.
Exit status 1 when any check fails.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from collections.abc import Sequence
from typing import TextIO

import numpy as np

TOLERANCE = 1e-4


def _rel_error(got: np.ndarray, want: np.ndarray) -> float:
    scale = max(float(np.max(np.abs(want))), 1e-12)
    return float(np.max(np.abs(got.astype(np.float64) - want)) / scale)


def demo_model(name: str, show_ir: bool, out: TextIO = sys.stdout) -> bool:
    """Compile one bundled model; print its IR and numerics. True when within tolerance."""
    import torch

    import kiln
    from kiln.ir.analysis import compute_ops
    from kiln.models import example_inputs, get_model

    model = get_model(name)
    inputs = example_inputs(name, batch=1, seed=1234)
    art = kiln.compile(model, inputs)
    traced = len(compute_ops(kiln.trace(model, inputs).main))
    with torch.no_grad():
        want = model(*inputs)
    got = art(*[x.numpy() for x in inputs])
    err = _rel_error(np.asarray(got), want.numpy().astype(np.float64))
    ok = err <= TOLERANCE
    print(f"\n=== {name} ===", file=out)
    if show_ir:
        print(art.ir.to_text(), file=out)
    report = art.report()
    status = "ok" if ok else "FAILED"
    print(f"ops: {traced} traced -> {report['ops']} after '{art.pipeline}' "
          f"({report['fused_groups']} fused groups); max rel error vs PyTorch: {err:.2e} "
          f"(tolerance {TOLERANCE:.0e}) {status}", file=out)
    return ok


EXAMPLE = "digits_cnn"
TARGET_TOLERANCE = {"reference": 1e-4, "cpu": 1e-4, "gpu": 1e-4, "fpga": 2e-2, "asic": 2e-2,
                    "tvm": 1e-4}
"""Max rel error vs PyTorch per target: fp32 targets 1e-4; fpga/asic run 16-bit fixed point."""
OPTIONAL_PACKAGE = {"tvm": "tvm"}
"""Targets that need an optional package (target → module): skipped when it is not installed."""
REPORT_KEYS = ("ops", "fused_groups", "compile_seconds", "runtime", "arena_bytes",
               "latency_cycles", "ii", "dsp", "bram", "lut", "ff", "fits", "area_um2",
               "energy_pj")


def demo_targets(out: TextIO = sys.stdout, samples: int = 100) -> bool:
    """Compile the example model for every target; print reports and digits accuracy."""
    import kiln
    from kiln.errors import KilnError
    from kiln.models import example_inputs, get_model, load_digits_data
    from kiln.targets.target import target_names

    model = get_model(EXAMPLE)
    x, y = load_digits_data("test")
    ok = True
    for target in target_names():
        print(f"\n=== {EXAMPLE} -> target '{target}' ===", file=out)
        package = OPTIONAL_PACKAGE.get(target)
        if package is not None and importlib.util.find_spec(package) is None:
            print(f"skipped: needs the optional package '{package}'", file=out)
            continue
        try:
            art = kiln.compile(model, example_inputs(EXAMPLE), target=target)
            report = art.report()
            preds = [int(np.argmax(art(x[i:i + 1]))) for i in range(samples)]
        except KilnError as exc:
            print(f"FAILED: {exc}", file=out)
            ok = False
            continue
        accuracy = 100.0 * float(np.mean(np.array(preds) == y[:samples]))
        err = report["max_rel_error_vs_source"]
        good = err <= TARGET_TOLERANCE.get(target, 1e-4)
        ok &= good
        shown = {k: report[k] for k in REPORT_KEYS if k in report}
        print("  " + ", ".join(f"{k}={v}" for k, v in shown.items()), file=out)
        print(f"  accuracy on {samples} test digits: {accuracy:.1f} %; max rel error vs PyTorch "
              f"{err:.2e} ({'ok' if good else 'FAILED'})", file=out)
    return ok


def main(argv: Sequence[str] | None = None) -> int:
    from kiln.models import list_models

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="*", help="bundled model names (default: all)")
    parser.add_argument("--no-ir", action="store_true", help="only print the summary lines")
    args = parser.parse_args(argv)
    names = args.models or list_models()
    results = [demo_model(n, show_ir=not args.no_ir) for n in names]
    print(f"\n{sum(results)}/{len(results)} models compiled within tolerance")
    targets_ok = demo_targets()
    return 0 if all(results) and targets_ok else 1


if __name__ == "__main__":
    sys.exit(main())

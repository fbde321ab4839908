"""`make demo`: compile every bundled model and show what kiln did to it.

For each model: trace it, run the default pipeline, print the optimized IR, the op counts before
and after, and the numerics check against PyTorch on random inputs (real digits for the digits
models). Exit status 1 when any model fails its check.
"""

from __future__ import annotations

import argparse
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


def main(argv: Sequence[str] | None = None) -> int:
    from kiln.models import list_models

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="*", help="bundled model names (default: all)")
    parser.add_argument("--no-ir", action="store_true", help="only print the summary lines")
    args = parser.parse_args(argv)
    names = args.models or list_models()
    results = [demo_model(n, show_ir=not args.no_ir) for n in names]
    print(f"\n{sum(results)}/{len(results)} models compiled within tolerance")
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())

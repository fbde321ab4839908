"""Sparse kernels of the cpu target: dense vs sparse kiln latency per layer, pattern and batch.

Layers: linear 256×256, 512×512, 1024×1024 and a 3×3 conv (64→64 channels, 16×16 image).
Patterns: unstructured (csr) at 50/75/90/95 % zeros, 2:4 (nm<2,4>), block 4×4 at 50/75/90/95 %
zero blocks. For each, at batch 1 and 64, one thread:

- `dense`: kiln with `sparse="off"` (the dense micro-kernel on the densified weight),
- `sparse`: kiln with `sparse="always"` (the sparse kernel whatever the cost rule says),
- `auto`: what the cost rule picks (`codegen/c/emit_sparse.py`),
- `ort`: onnxruntime on the dense layer (reference; `--no-ort` skips it).

Timing: median µs per call through the artifact's fast path (`art.artifact.run`), after a
warm-up, engines round-robin per repetition so drift hits all alike. The script re-executes
itself with glibc's MALLOC_MMAP_THRESHOLD_/MALLOC_TRIM_THRESHOLD_ pinned (as bench/cpu.py).
The cost-rule thresholds (`MAX_DENSITY`) come from this table: the highest density at which
`sparse` beat `dense` for every layer of the regime.

Run from the repository root: `python bench/cpu_sparse.py [--reps 200] [--layers linear256,conv]`.
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

PINNED_ENV = {"MALLOC_MMAP_THRESHOLD_": str(1 << 30), "MALLOC_TRIM_THRESHOLD_": str(1 << 30),
              "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}

LAYERS: dict[str, Callable[[], tuple[torch.nn.Module, tuple[int, ...]]]] = {
    "linear256": lambda: (torch.nn.Linear(256, 256), (256,)),
    "linear512": lambda: (torch.nn.Linear(512, 512), (512,)),
    "linear1024": lambda: (torch.nn.Linear(1024, 1024), (1024,)),
    "conv64": lambda: (torch.nn.Conv2d(64, 64, 3, padding=1), (64, 16, 16)),
}
PATTERNS: list[tuple[str, str, float]] = [
    *[(f"csr {int(s * 100)}%", "format=csr", s) for s in (0.5, 0.75, 0.9, 0.95)],
    ("2:4", "format=nm,n=2,m=4", 0.5),
    *[(f"block4x4 {int(s * 100)}%", "format=block,block=4x4", s) for s in (0.5, 0.75, 0.9,
                                                                            0.95)],
]


def reexec_pinned() -> None:
    """Re-run this script with the allocator pinned, once."""
    if all(os.environ.get(k) == v for k, v in PINNED_ENV.items()):
        return
    os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **PINNED_ENV})


def sparse_module(layer: torch.nn.Module, x: np.ndarray, options: str, zeros: float) -> Any:
    """The traced layer with its weight made sparse by magnitude and encoded (`sparsify`)."""
    import kiln
    from kiln.compiler.pass_manager import PassManager
    from kiln.ir import sparse
    from kiln.ir.types import SparseEncoding
    from kiln.passes.sparsify import make_encoding

    module = kiln.trace(layer, torch.from_numpy(x))
    name = next(n for n in module.weights if n.endswith("weight"))
    data = module.weights[name]
    fmt = options.split("format=")[1].split(",")[0]
    encoding: SparseEncoding = make_encoding(fmt, 2, 4, "4x4")
    matrix = sparse.enforce(sparse.weight_matrix(data), encoding, zeros)
    module.weights[name] = sparse.from_matrix(matrix, data.shape).astype(np.float32)
    lower = max(zeros - 0.01, 0.0)  # the pattern is exact; leave room for rounding
    return PassManager(f"sparsify{{{options},min-sparsity={lower}}}").run(module).module


def ort_session(layer: torch.nn.Module, x: np.ndarray) -> Callable[[], Any] | None:
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    buf = io.BytesIO()
    torch.onnx.export(layer, (torch.from_numpy(x),), buf, dynamo=False, input_names=["x"])
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(buf.getvalue(), opts, providers=["CPUExecutionProvider"])
    return lambda: sess.run(None, {"x": x})


def timed(fns: dict[str, Callable[[], Any]], reps: int) -> dict[str, float]:
    """Median µs per call of each function, round-robin, after a warm-up."""
    samples: dict[str, list[float]] = {k: [] for k in fns}
    for fn in fns.values():
        for _ in range(20):
            fn()
    for _ in range(reps):
        for key, fn in fns.items():
            start = time.perf_counter_ns()
            fn()
            samples[key].append((time.perf_counter_ns() - start) / 1e3)
    return {k: statistics.median(v) for k, v in samples.items()}


def row(name: str, label: str, options: str, zeros: float, batch: int, reps: int,
        use_ort: bool) -> str:
    import kiln

    torch.manual_seed(0)
    layer, shape = LAYERS[name]()
    x = np.random.default_rng(0).standard_normal((batch, *shape)).astype(np.float32)
    module = sparse_module(layer, x, options, zeros)
    pipe = "canonicalize,fuse,cse,dce"
    arts = {mode: kiln.compile(module, x, target="cpu", pipeline=pipe, sparse=mode)
            for mode in ("off", "always", "auto")}
    fns: dict[str, Callable[[], Any]] = {
        mode: (lambda a=art: a.artifact.run(x)) for mode, art in arts.items()}
    ort_fn = ort_session(layer, x) if use_ort else None
    if ort_fn is not None:
        fns["ort"] = ort_fn
    us = timed(fns, reps)
    kernel = arts["auto"].report()["kernels"][0]["kernel"]
    choice = "sparse" if kernel.startswith("sparse") else "dense"
    speedup = us["off"] / us["always"]
    ort_text = f"{us['ort']:9.1f}" if "ort" in us else "        -"
    return (f"| {name:10s} | {label:14s} | {batch:5d} | {us['off']:9.1f} | {us['always']:9.1f} "
            f"| {speedup:6.2f}x | {us['auto']:9.1f} ({choice:6s}) | {ort_text} |")


def main() -> None:
    reexec_pinned()
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reps", type=int, default=200)
    parser.add_argument("--layers", default=",".join(LAYERS))
    parser.add_argument("--batches", default="1,64")
    parser.add_argument("--no-ort", action="store_true")
    args = parser.parse_args()
    print("| layer      | pattern        | batch |  dense µs | sparse µs | speedup "
          "|  auto µs (choice)  |    ort µs |")
    print("|---|---|---|---|---|---|---|---|")
    for name in args.layers.split(","):
        for label, options, zeros in PATTERNS:
            for batch in (int(b) for b in args.batches.split(",")):
                print(row(name, label, options, zeros, batch, args.reps, not args.no_ort),
                      flush=True)


if __name__ == "__main__":
    main()

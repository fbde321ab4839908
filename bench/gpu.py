"""GPU benchmark: kiln's Triton kernels against torch eager and torch.compile, every model.

For each bundled model, at batch 1 and 64, in fp32 and fp16, in one run:

- compile with `kiln.compile(model, x, target="gpu", dtype=...)` (the Triton JIT compiles each
  kernel at its first launch; both are in "kiln compile s"),
- check kiln's output against torch eager in fp32 (max|a-b| / max|b|; fp32 must be within 1e-4,
  fp16 within 1e-2; TF32 is switched off for torch too, so fp32 means fp32 everywhere),
- time, in ms per call (mean of synchronized wall-clock over repeated calls after warm-up):
  kiln's launcher (one Python launch per kernel), the same launches replayed as a CUDA graph,
  torch eager, and `torch.compile` (default mode; its compile time is reported too).

Prints one Markdown table. A time budget (default 270 s) keeps the whole run under 5 minutes:
once spent, torch.compile is skipped for the remaining rows and marked so. Without a CUDA device
the script says so, runs a small correctness smoke check in Triton's interpreter, and exits 0.

Run from the repository root: `python bench/gpu.py [--budget 270] [--models a,b]`.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

import kiln
import kiln.targets.gpu
from kiln.models import MODELS, get_model, list_models

TOLERANCE = {"fp32": 1e-4, "fp16": 1e-2}


@dataclass
class Row:
    model: str
    batch: int
    dtype: str
    error: float = float("nan")
    kernels: int = 0
    kiln_compile: float = float("nan")
    times: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def rel_error(got: torch.Tensor, want: torch.Tensor) -> float:
    got64, want64 = got.double(), want.double()
    return float((got64 - want64).abs().max() / want64.abs().max().clamp_min(1e-12))


def ms_per_call(fn: Callable[[], Any], seconds: float = 0.25) -> float:
    """Mean wall-clock ms per call, synchronized, after warm-up; at least 10 calls."""
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    once = max(time.perf_counter() - start, 1e-6)
    calls = max(10, min(2000, int(seconds / once)))
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / calls * 1e3


def graphed(fn: Callable[[], Any]) -> Callable[[], Any]:
    """`fn` captured once as a CUDA graph (its tensors must stay where they are)."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(2):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return graph.replay


def measure(name: str, batch: int, dtype: str, with_compile: bool) -> Row:
    """One table row; any failure becomes a note instead of ending the run."""
    row = Row(name, batch, dtype)
    try:
        _measure(row, with_compile)
    except Exception as exc:
        row.notes.append(f"FAILED: {type(exc).__name__}: {str(exc)[:120]}")
    return row


def _measure(row: Row, with_compile: bool) -> None:
    model = get_model(row.model).eval()
    x_cpu = MODELS[row.model].example_inputs(batch=row.batch, seed=1)[0]
    half = row.dtype == "fp16"
    start = time.perf_counter()
    art = kiln.compile(model, (x_cpu,), target="gpu", dtype=row.dtype)
    model = model.cuda()
    x = x_cpu.cuda()
    runner = copy.deepcopy(model).half() if half else model
    xr = x.half() if half else x
    with torch.no_grad():
        want = model(x)
        run = art.artifact.run_tensors  # type: ignore[attr-defined]
        got = run(xr)[0]
        torch.cuda.synchronize()
        row.kiln_compile = time.perf_counter() - start
        row.kernels = art.report()["kernels"]
        row.error = rel_error(got, want)
        row.times["kiln"] = ms_per_call(lambda: run(xr))
        try:
            row.times["kiln graph"] = ms_per_call(graphed(lambda: run(xr)))
        except Exception as exc:  # capture is best-effort; the row still counts
            row.notes.append(f"graph: {type(exc).__name__}")
        row.times["eager"] = ms_per_call(lambda: runner(xr))
        if not with_compile:
            row.notes.append("torch.compile skipped (time budget)")
            return
        compiled = torch.compile(runner)
        start = time.perf_counter()
        compiled(xr)
        torch.cuda.synchronize()
        row.notes.append(f"compile {time.perf_counter() - start:.1f}s")
        row.times["torch.compile"] = ms_per_call(lambda: compiled(xr))


def table(rows: list[Row]) -> str:
    cols = ["kiln", "kiln graph", "eager", "torch.compile"]
    head = ("| model | batch | dtype | rel. error | ok | kernels | kiln compile s | "
            + " | ".join(f"{c} ms" for c in cols) + " | notes |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        ok = "yes" if r.error <= TOLERANCE[r.dtype] else "NO"
        times = " | ".join(f"{r.times[c]:.3f}" if c in r.times else "-" for c in cols)
        lines.append(f"| {r.model} | {r.batch} | {r.dtype} | {r.error:.1e} | {ok} | "
                     f"{r.kernels} | {r.kiln_compile:.1f} | {times} | {'; '.join(r.notes)} |")
    return "\n".join(lines)


def smoke() -> int:
    """No GPU: one small model in Triton's interpreter, correctness only."""
    print("bench/gpu.py: no CUDA device on this machine, so there is nothing to time; GPU "
          "numbers need a GPU.\nRunning a correctness smoke check in Triton's interpreter "
          "instead (jet_mlp, fp32 and fp16, batch 1).")
    model = get_model("jet_mlp")
    x = MODELS["jet_mlp"].example_inputs(batch=1, seed=1)
    with torch.no_grad():
        want = model(*x)
    for dtype in ("fp32", "fp16"):
        art = kiln.compile(model, x, target="gpu", dtype=dtype)
        error = rel_error(art(*x), want)
        status = "ok" if error <= TOLERANCE[dtype] else "FAILED"
        print(f"  {dtype}: rel. error {error:.1e} ({status}); {art.report()['runtime']}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=270.0,
                        help="seconds after which torch.compile is skipped (default 270)")
    parser.add_argument("--models", default="", help="comma-separated subset of the models")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        return smoke()
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    start = time.perf_counter()
    names = [n for n in args.models.split(",") if n] or list_models()
    print(f"device: {torch.cuda.get_device_name(0)}; torch {torch.__version__}; "
          f"triton {__import__('triton').__version__}", flush=True)
    rows = []
    for name in names:
        for dtype in ("fp32", "fp16"):
            for batch in (1, 64):
                in_budget = time.perf_counter() - start < args.budget
                rows.append(measure(name, batch, dtype, with_compile=in_budget))
                r = rows[-1]
                print(f"  {name} b{batch} {dtype}: err {r.error:.1e}, "
                      f"{time.perf_counter() - start:.0f}s", flush=True)
    print()
    print(table(rows))
    print(f"\ntotal {time.perf_counter() - start:.0f} s")
    return 0 if all(r.error <= TOLERANCE[r.dtype] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())

"""CPU benchmark: kiln's C target against torch eager, torch.compile, onnxruntime (and TVM).

For each bundled model (jet MLP, LeNet-5, digits CNN, ResNet-8, MobileNetV2-style net,
transformer layer), at 1 and 2 threads and batch 1 and 64, in one run side by side:

- torch eager (`torch.set_num_threads`), torch.compile (inductor, compiled per thread count
  because inductor bakes the thread count into its C++; `--no-compile` skips it, a per-model
  budget skips the rest of a model's compiles once spent),
- onnxruntime (CPU EP, ORT_ENABLE_ALL, `intra_op_num_threads`; the model is exported with
  `torch.onnx.export(dynamo=False)`),
- TVM (`apache-tvm`, the `kiln[tvm]` extra) through its own importer: `torch.export` →
  Relax `from_exported_program` → `tvm.compile` (default pipeline, opt level 3, LLVM with this
  CPU's `-mcpu`), untuned, run in the Relax VM with its thread pool at the cell's thread count;
  "not installed" when `import tvm` fails,
- kiln fp32 (`kiln.compile(..., target="cpu", threads=t)`, timed through the artifact's fast
  path `art.artifact.run(*arrays)`) and kiln int8 where `quantize="int8"` compiles.

Timing: median ms per call. Each repetition times one block of calls per engine, round-robin
across the engines, so drift (other processes, frequency) hits every engine alike. Before each
block the process settles until no thread of another engine still spins (onnxruntime's intra-op
workers spin ~35 ms after a run returns, `allow_spinning` on by default; libgomp's ~8 ms at its
default spin count; measured per thread from /proc/self/task/*/schedstat), and a short call is
run once untimed to wake the engine's own pool: no engine pays for the previous one's spinning
workers (which had made kiln's 2-thread cells, timed right after onnxruntime and TVM, up to 3x
slower than kiln alone); spin settings are not changed for that (onnxruntime and TVM keep
their defaults; libgomp's engines run PASSIVE, see `PINNED_ENV`). Each model
runs in its own child process (per-model peak RSS, and a hung torch.compile cannot stall the
run). The script re-executes itself with glibc's MALLOC_MMAP_THRESHOLD_/MALLOC_TRIM_THRESHOLD_
pinned so that large buffers are not mmapped/unmapped on every call (allocator noise), and with
OMP_WAIT_POLICY=PASSIVE (see `PINNED_ENV`).

Also per model: kiln's achieved GFLOP/s (`kiln.ir.costs.module_flops` / median time) and its
fraction of the peak measured in this run (a 1-thread NumPy/BLAS 2048³ sgemm, best of ten
timed before and after the models; ×threads),
compile time (trace → passes → gcc) with a cold and a warm build cache, arena bytes, and the
child's peak RSS.

Run from the repository root: `python bench/cpu.py [--no-compile] [--models a,b] [--seconds 1]`.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
MODELS = ["jet_mlp", "lenet5", "digits_cnn", "resnet8", "mobilenet_v2ish", "transformer_layer"]
ENGINES = ["eager", "torch.compile", "onnxruntime", "tvm", "kiln fp32", "kiln int8"]
PEERS = ["eager", "torch.compile", "onnxruntime", "tvm"]
PINNED_ENV = {"MALLOC_MMAP_THRESHOLD_": str(1 << 30), "MALLOC_TRIM_THRESHOLD_": str(1 << 30),
              "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}
"""Pinned for every engine alike. OMP_WAIT_POLICY=PASSIVE (libgomp only: torch, torch.compile
and kiln, which share torch's libgomp.so.1 in one process; onnxruntime and TVM have their own
pools): on this 2-core VM a libgomp worker left spinning at the default policy competes with
every other runnable thread; measured with a loop of empty 2-thread regions 1 ms apart and
other jobs running: median 19 ms per region at the default policy vs 18 µs PASSIVE (8 µs when
back to back). `median_ms` settles between engines, so no engine inherits another's spin."""


def reexec_pinned() -> None:
    """Re-run this script with the allocator (and NumPy's BLAS) pinned, once."""
    if all(os.environ.get(k) == v for k, v in PINNED_ENV.items()):
        return
    env = {**os.environ, **PINNED_ENV}
    os.execve(sys.executable, [sys.executable, *sys.argv], env)


class Timeout(Exception):
    pass


def _alarm(_sig: int, _frame: Any) -> None:
    raise Timeout()


def median_ms(fns: dict[str, Callable[[], Any]], seconds: float) -> dict[str, float]:
    """Median ms per call for each fn, timed block by block, round-robin across the fns.

    Before each block the process settles (`settle`: no thread of another runtime still spins)
    and, where a call is shorter than 10 ms, one untimed call wakes the engine's own pool; so
    each engine is timed in its steady state, back-to-back calls, neither paying for the
    previous engine's spinning workers nor for its own pool's wake-up."""
    blocks: dict[str, int] = {}
    warm: dict[str, bool] = {}
    per_rep = 0.0
    for name, fn in fns.items():
        for _ in range(3):
            fn()
        start = time.perf_counter()
        fn()
        once = max(time.perf_counter() - start, 1e-7)
        blocks[name] = max(1, int(0.002 / once))  # ≥ 2 ms per timed block
        warm[name] = once < 0.01
        per_rep += (blocks[name] + warm[name]) * once + settle()
    reps = max(7, min(300, int(seconds * len(fns) / max(per_rep, 1e-4))))
    samples: dict[str, list[float]] = {n: [] for n in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            n = blocks[name]
            settle()
            if warm[name]:
                fn()
            start = time.perf_counter()
            for _ in range(n):
                fn()
            samples[name].append((time.perf_counter() - start) / n * 1e3)
    return {n: statistics.median(s) for n, s in samples.items()}


SETTLE_WINDOW_S = 0.0005
SETTLE_BUSY = 0.1
SETTLE_MAX_S = 0.2
"""`settle` waits until, over one window, the process's other threads ran (or waited to run)
less than SETTLE_BUSY of it (at most SETTLE_MAX_S). Measured after one call at 2 threads
(per-thread CPU from /proc/self/task/*/schedstat while the main thread sleeps): libgomp's
worker (torch and kiln share torch's libgomp.so.1) spins ~8 ms (its default spin count),
onnxruntime's intra-op worker ~35 ms (allow_spinning, on by default), TVM's under 1 ms."""


def settle() -> float:
    """Sleep until no other thread of this process burns CPU (a runtime's workers spinning for
    work after its call returned); the seconds waited. Without /proc: one SETTLE_MAX_S pause."""
    me = str(threading.get_native_id())
    start = time.perf_counter()
    try:
        last, before = start, _others_cpu_ns(me)
        while last - start < SETTLE_MAX_S:
            time.sleep(SETTLE_WINDOW_S)
            now, cpu = time.perf_counter(), _others_cpu_ns(me)
            if cpu - before < SETTLE_BUSY * (now - last) * 1e9:
                break
            last, before = now, cpu
    except OSError:
        time.sleep(SETTLE_MAX_S)
    return time.perf_counter() - start


def _others_cpu_ns(me: str) -> int:
    """Nanoseconds this process's threads other than `me` ran or were runnable so far (a spinning
    worker preempted by another process still counts as busy)."""
    total = 0
    for tid in os.listdir("/proc/self/task"):
        if tid != me:
            try:
                with open(f"/proc/self/task/{tid}/schedstat") as f:
                    run, wait = f.read().split()[:2]  # ns on a CPU, ns runnable but waiting
                total += int(run) + int(wait)
            except FileNotFoundError:  # the thread exited meanwhile
                pass
    return total


def peak_gflops() -> float:
    """1-thread fp32 peak proxy: best of 5 NumPy (OpenBLAS) 2048³ sgemms."""
    import numpy as np
    a = np.random.default_rng(0).standard_normal((2048, 2048), dtype=np.float32)
    b = a.T.copy()
    a @ b
    best = min(_timed(lambda: a @ b) for _ in range(5))
    return 2 * 2048 ** 3 / best / 1e9


def _timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


# -- one model, in a child process -------------------------------------------------------------
def kiln_compile_times(name: str, model: Any, x: tuple[Any, ...]) -> dict[str, float]:
    """trace → passes → gcc, into a fresh cache (cold: kiln's runtime objects are built too),
    again into the same one (warm: no compiler call), and for batch 2 into it (model: the
    model's own C compiled, the runtime's objects found in the cache)."""
    import kiln
    from kiln.models import example_inputs
    out: dict[str, float] = {}
    # Imports (the passes' and code generator's modules too) and first-call setup are not
    # compile time; nothing here touches a build cache.
    import kiln.passes
    import kiln.targets.cpu
    kiln.trace(model, x)
    x2 = example_inputs(name, batch=2, seed=1)
    with tempfile.TemporaryDirectory(prefix="kiln-bench-") as cache:
        for label, xs in (("cold", x), ("warm", x), ("model", x2)):
            start = time.perf_counter()
            module = kiln.trace(model, xs)
            traced = time.perf_counter()
            art = kiln.compile(module, xs, target="cpu", threads=1, cache_dir=cache)
            out[f"{label} s"] = time.perf_counter() - start
            out[f"{label} trace s"] = traced - start
            out[f"{label} gcc s"] = art.artifact.build_seconds  # type: ignore[attr-defined]
    return out


def build_engines(model: Any, x: tuple[Any, ...], threads: int, args: argparse.Namespace,
                  notes: dict[str, str], onnx_path: Path) -> dict[str, Callable[[], Any]]:
    """Each engine's zero-argument call for these inputs and this thread count."""
    import torch
    fns: dict[str, Callable[[], Any]] = {}
    xn = tuple(t.numpy() for t in x)
    fns["eager"] = lambda: model(*x)
    _try(fns, notes, "torch.compile", lambda: _torch_compiled(model, x, threads, args))
    _try(fns, notes, "onnxruntime", lambda: _ort(onnx_path, xn, threads))
    _try(fns, notes, "tvm", lambda: _tvm(model, x, xn, threads))
    _try(fns, notes, "kiln fp32", lambda: _kiln(model, x, xn, threads, None))
    _try(fns, notes, "kiln int8", lambda: _kiln(model, x, xn, threads, "int8"))
    torch.set_num_threads(threads)
    return fns


def _try(fns: dict[str, Callable[[], Any]], notes: dict[str, str], name: str,
         make: Callable[[], Callable[[], Any]]) -> None:
    if name in notes:  # already failed/skipped for this model
        return
    try:
        fns[name] = make()
    except Exception as exc:
        notes[name] = f"failed: {type(exc).__name__}: {str(exc).splitlines()[0][:100]}"


def _torch_compiled(model: Any, x: tuple[Any, ...], threads: int,
                    args: argparse.Namespace) -> Callable[[], Any]:
    import torch
    if args.no_compile:
        raise RuntimeError("skipped (--no-compile)")
    torch.set_num_threads(threads)
    compiled = torch.compile(model, dynamic=False)
    signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(int(args.compile_timeout))
    try:
        with torch.no_grad():
            compiled(*x)
    except Timeout:
        raise RuntimeError(f"compile exceeded {args.compile_timeout:.0f} s") from None
    finally:
        signal.alarm(0)
    return lambda: compiled(*x)


def _ort(path: Path, xn: tuple[Any, ...], threads: int) -> Callable[[], Any]:
    import onnxruntime as ort
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    feed = {i.name: a for i, a in zip(sess.get_inputs(), xn)}
    return lambda: sess.run(None, feed)


def _tvm(model: Any, x: tuple[Any, ...], xn: tuple[Any, ...],
         threads: int) -> Callable[[], Any]:
    """TVM's own path, not kiln's: `torch.export` → Relax's `from_exported_program` →
    `tvm.compile` (relax default pipeline, opt level 3, LLVM for this CPU) → Relax VM; the
    runtime's thread pool set to `threads` (`runtime.config_threadpool`). Untuned: no
    MetaSchedule run (tuning takes hours per model, and the issue asks for the default build)."""
    try:
        import tvm
        from tvm import relax
        from tvm.relax.frontend.torch import from_exported_program
    except ImportError:
        raise RuntimeError("not installed") from None
    import torch
    exported = torch.export.export(model, x)
    mod = from_exported_program(exported, keep_params_as_input=False)
    cpu = tvm.target.codegen.llvm_get_system_cpu()
    target = tvm.target.Target({"kind": "llvm", "mcpu": cpu})
    with tvm.transform.PassContext(opt_level=3):
        exe = tvm.compile(mod, target=target)
    tvm.get_global_func("runtime.config_threadpool")(0, threads)
    vm = relax.VirtualMachine(exe, tvm.cpu(0))
    args = [tvm.runtime.tensor(a) for a in xn]
    main = vm["main"]
    return lambda: main(*args)


def _kiln(model: Any, x: tuple[Any, ...], xn: tuple[Any, ...], threads: int,
          quantize: str | None) -> Callable[[], Any]:
    import kiln
    extra: dict[str, Any] = {} if quantize is None else {
        "quantize": quantize, "calibration_data": [x]}
    art = kiln.compile(model, x, target="cpu", threads=threads, **extra)
    run = art.artifact.run  # type: ignore[attr-defined]
    _KILN[(threads, quantize)] = art
    return lambda: run(*xn)


_KILN: dict[tuple[int, str | None], Any] = {}


def one_model(name: str, args: argparse.Namespace) -> dict[str, Any]:
    """Every (threads, batch) cell for `name`: medians, notes, flops, compile, arena, RSS."""
    import torch

    from kiln.models import example_inputs, get_model
    torch.manual_seed(0)
    model = get_model(name).eval()
    result: dict[str, Any] = {"model": name, "cells": []}
    with torch.no_grad():
        x1 = example_inputs(name, batch=1, seed=1)
        result["compile"] = kiln_compile_times(name, model, x1)
        rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        for batch in args.batches:
            x = example_inputs(name, batch=batch, seed=1)
            with tempfile.TemporaryDirectory() as tmp:
                onnx_path = Path(tmp) / "m.onnx"
                torch.onnx.export(model, x, str(onnx_path), dynamo=False, opset_version=17)
                for threads in args.threads:
                    result["cells"].append(_cell(model, x, threads, batch, args, onnx_path))
    result["rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result["rss_before_engines_mib"] = rss_before / 1024
    return result


def _cell(model: Any, x: tuple[Any, ...], threads: int, batch: int, args: argparse.Namespace,
          onnx_path: Path) -> dict[str, Any]:
    from kiln.ir.costs import module_flops
    notes: dict[str, str] = {}
    _KILN.pop((threads, None), None)
    fns = build_engines(model, x, threads, args, notes, onnx_path)
    times = median_ms(fns, args.seconds)
    art = _KILN.get((threads, None))
    flops = module_flops(art.ir) if art is not None else None
    arena = art.report().get("arena_bytes") if art is not None else None
    return {"threads": threads, "batch": batch, "ms": times, "notes": notes, "flops": flops,
            "arena_bytes": arena}


# -- parent: run children, print tables --------------------------------------------------------
def run_children(args: argparse.Namespace) -> list[dict[str, Any]]:
    results = []
    for name in args.models:
        cmd = [sys.executable, __file__, "--child", name, *_forward(args)]
        print(f"# {name} ...", file=sys.stderr, flush=True)
        start = time.perf_counter()
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.model_timeout,
                                  check=False)
            line = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
            res = json.loads(line[-1]) if line else {"model": name, "error": proc.stderr[-400:]}
        except subprocess.TimeoutExpired:
            res = {"model": name, "error": f"timed out after {args.model_timeout} s"}
        res["wall_s"] = time.perf_counter() - start
        print(f"#   {res['wall_s']:.0f} s", file=sys.stderr, flush=True)
        results.append(res)
    return results


def _forward(args: argparse.Namespace) -> list[str]:
    out = ["--seconds", str(args.seconds), "--compile-timeout", str(args.compile_timeout),
           "--threads", ",".join(map(str, args.threads)),
           "--batches", ",".join(map(str, args.batches))]
    return out + (["--no-compile"] if args.no_compile else [])


def _fmt(ms: float | None) -> str:
    if ms is None:
        return "–"
    return f"{ms:.4f}" if ms < 0.1 else f"{ms:.3f}" if ms < 10 else f"{ms:.1f}"


def print_tables(results: list[dict[str, Any]], peak: float, args: argparse.Namespace) -> None:
    for threads in args.threads:
        for batch in args.batches:
            print(f"\n### {threads} thread(s), batch {batch} — median ms per call\n")
            print("| model | " + " | ".join(ENGINES) + " | kiln/best peer | kiln GFLOP/s "
                  "| % of peak |")
            print("|---" * (len(ENGINES) + 4) + "|")
            for res in results:
                print(_row(res, threads, batch, peak))
    _notes(results)
    print("\n### Per model (kiln fp32)\n")
    print("| model | compile cold s (trace / gcc) | model only s (runtime cached) | "
          "compile warm s | arena bytes b1 / b64 | peak RSS MiB (before peers / whole child) |")
    print("|---|---|---|---|---|---|")
    for res in results:
        c = res.get("compile", {})
        if not c:
            print(f"| {res['model']} | {res.get('error', '?')[:80]} | | | | |")
            continue
        print(f"| {res['model']} | {c['cold s']:.2f} ({c['cold trace s']:.2f} / "
              f"{c['cold gcc s']:.2f}) | {c['model s']:.2f} | {c['warm s']:.2f} | "
              f"{_arenas(res)} | "
              f"{res['rss_before_engines_mib']:.0f} / {res['rss_mib']:.0f} |")


def _arenas(res: dict[str, Any]) -> str:
    sizes = {c["batch"]: c.get("arena_bytes") for c in res.get("cells", [])}
    return " / ".join(f"{sizes[b]:,}" if sizes[b] else "–" for b in sorted(sizes))


def _row(res: dict[str, Any], threads: int, batch: int, peak: float) -> str:
    cell = next((c for c in res.get("cells", []) if c["threads"] == threads
                 and c["batch"] == batch), None)
    if cell is None:
        return f"| {res['model']} | " + " | ".join(["–"] * (len(ENGINES) + 3)) + " |"
    ms, notes = cell["ms"], cell["notes"]
    cols = [_fmt(ms.get(e)) if e in ms else _short(notes.get(e, "–")) for e in ENGINES]
    peers = [ms[p] for p in PEERS if p in ms]
    kiln = ms.get("kiln fp32")
    ratio = f"{kiln / min(peers):.2f}" if kiln and peers else "–"
    gf = cell["flops"] / (kiln * 1e-3) / 1e9 if kiln and cell["flops"] else None
    gfs = f"{gf:.1f}" if gf else "–"
    frac = f"{100 * gf / (peak * threads):.0f} %" if gf else "–"
    return f"| {res['model']} | " + " | ".join(cols) + f" | {ratio} | {gfs} | {frac} |"


def _short(note: str) -> str:
    if "no int8 kernels" in note:
        return "n/a (int8 kernels not landed)"
    if "not installed" in note:
        return "not installed"
    if "skipped" in note:
        return "skipped"
    return "failed†"


def _notes(results: list[dict[str, Any]]) -> None:
    seen = set()
    for res in results:
        if "error" in res:
            print(f"\n{res['model']}: {res['error']}")
        for cell in res.get("cells", []):
            for engine, note in cell["notes"].items():
                if _short(note) == "failed†" and (res["model"], engine, note) not in seen:
                    seen.add((res["model"], engine, note))
                    print(f"\n† {res['model']} {engine} (t={cell['threads']}, "
                          f"b={cell['batch']}): {note}")


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--threads", default="1,2")
    p.add_argument("--batches", default="1,64")
    p.add_argument("--seconds", type=float, default=1.0, help="timing seconds per engine/cell")
    p.add_argument("--no-compile", action="store_true", help="skip torch.compile")
    p.add_argument("--compile-timeout", type=float, default=90.0,
                   help="seconds per torch.compile before it is abandoned")
    p.add_argument("--model-timeout", type=float, default=400.0)
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.models = args.models.split(",")
    args.threads = [int(t) for t in args.threads.split(",")]
    args.batches = [int(b) for b in args.batches.split(",")]
    return args


def main() -> None:
    reexec_pinned()
    sys.path[0] = str(ROOT)  # the repository root, not bench/: bench/tvm.py would shadow `tvm`
    args = parse()
    if args.child:
        print(json.dumps(one_model(args.child, args)))
        return
    start = time.perf_counter()
    load = os.getloadavg()
    peak = peak_gflops()
    results = run_children(args)
    peak = max(peak, peak_gflops())  # best of before/after: other load only lowers it
    print(f"machine: {_cpu_name()}, {os.cpu_count()} logical CPUs; load average at start "
          f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; date {time.strftime('%Y-%m-%d %H:%M')}")
    print(f"measured fp32 peak (1 thread, NumPy/OpenBLAS 2048³ sgemm, best of 5 before and 5 "
          f"after the models): {peak:.1f} GFLOP/s; % of peak uses peak × threads")
    print_tables(results, peak, args)
    print(f"\nwhole run: {time.perf_counter() - start:.0f} s")


def _cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown CPU"


if __name__ == "__main__":
    main()

"""Differential fuzzing across targets: random models through every pipeline and target.

    .venv/bin/python bench/fuzz.py --models 2000 --batch 40 --time-limit 3600 \\
        --log /tmp/fuzz_logs/run.log --repro-dir /tmp/fuzz_logs/repro

Random kiln graphs, graphs of HLS layers and random PyTorch modules (kiln.testing.xtarget_cases)
run through PyTorch (torch-built ones), the reference interpreter, every named pipeline, and
each available target: cpu fp32, cpu int8, gpu (Triton; its interpreter without a CUDA device),
fpga and asic C-simulations (g++). Native builds are batched: one gcc library and one g++
C-simulation per batch. Every mismatch or crash is shrunk to a `.kir` reproducer (with
`--repro-dir`); a summary table (models, ops, builds, ok / refused / mismatch / crash per
target, models/s) is printed and appended to the log.
"""

from __future__ import annotations

import argparse
import logging
import re
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

from kiln.testing import xtarget_gpu  # noqa: F401  (decides how Triton runs before tracing)
from kiln.testing.xtarget import Runner, Tally, run_cases
from kiln.testing.xtarget_cases import PipelineRunner, TorchRunner, make_case
from kiln.testing.xtarget_shrink import write_reproducer

TARGETS = ("pipelines", "torch", "cpu", "cpu-int8", "gpu", "fpga", "asic")


def runners(names: list[str], work: Path) -> list[Runner]:
    from kiln.testing.xtarget_cpu import CpuRunner
    from kiln.testing.xtarget_gpu import GpuRunner
    from kiln.testing.xtarget_hls import HlsRunner

    make = {"pipelines": PipelineRunner, "torch": TorchRunner,
            "cpu": lambda: CpuRunner(work), "cpu-int8": lambda: CpuRunner(work, int8=True),
            "gpu": GpuRunner, "fpga": lambda: HlsRunner(work, "fpga"),
            "asic": lambda: HlsRunner(work, "asic")}
    return [make[n]() for n in names]  # type: ignore[no-untyped-call]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0, help="first seed")
    parser.add_argument("--batch", type=int, default=40, help="models per native build")
    parser.add_argument("--time-limit", type=float, default=0.0, help="seconds (0: none)")
    parser.add_argument("--targets", default=",".join(TARGETS))
    parser.add_argument("--origin", default=None, choices=("graph", "hls", "torch"))
    parser.add_argument("--log", type=Path, default=None)
    parser.add_argument("--repro-dir", type=Path, default=None)
    parser.add_argument("--shrink-budget", type=int, default=150)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    work = Path(tempfile.mkdtemp(prefix="kiln-xfuzz-"))
    try:
        tally = campaign(args, runners(args.targets.split(","), work))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if tally.failures else 0


def campaign(args: argparse.Namespace, active: list[Runner]) -> Tally:
    tally, start = Tally(), time.perf_counter()
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # stop cleanly, with a table
    try:
        _loop(args, active, tally, start)
    except KeyboardInterrupt:
        _log(args.log, "interrupted: the table counts the batches that finished")
    builds = sum(int(getattr(r, "builds", 0)) for r in active)
    table = tally.table(time.perf_counter() - start) + f"\nnative builds (batched): {builds}"
    _log(args.log, table)
    for runner, why in tally.refusals.items():
        top = sorted(why.items(), key=lambda kv: -kv[1])[:5]
        _log(args.log, f"refusals {runner}: " + "; ".join(f"{n}x {w}" for w, n in top))
    return tally


def _loop(args: argparse.Namespace, active: list[Runner], tally: Tally, start: float) -> None:
    """Batches of cases until the models or the time run out (failures logged and shrunk)."""
    seed, end, seen = args.seed, args.seed + args.models, set[str]()
    while seed < end:
        if args.time_limit and time.perf_counter() - start > args.time_limit:
            break
        seeds = range(seed, min(seed + args.batch, end))
        cases = [make_case(s, args.origin) for s in seeds]
        known = len(tally.failures)
        run_cases(cases, active, tally)
        for case, result in tally.failures[known:]:
            note = f"FAIL {case.name} {result.runner} {result.status}: {result.detail}"
            _log(args.log, note)
            key = signature(result.runner, result.detail)
            if key in seen:
                continue
            seen.add(key)
            if args.repro_dir is not None:
                runner = next(r for r in active if r.name == result.runner)
                path = write_reproducer(case, result, runner, args.repro_dir,
                                        budget=args.shrink_budget)
                _log(args.log, f"  reproducer {path}")
        seed = seeds[-1] + 1
        _log(args.log, f"progress: seeds {args.seed}..{seed - 1}, "
                       f"{time.perf_counter() - start:.0f} s, {len(tally.failures)} failures")


def signature(runner: str, detail: str) -> str:
    """A failure's kind: runner and message with numbers, names and shapes blurred (only the
    first failure of each kind is shrunk; the others are counted)."""
    text = re.sub(r"%[\w.]+|'[^']*'|\d+|\([^)]*\)", "_", detail)
    return f"{runner}:{text[:70]}"


def _log(path: Path | None, text: str) -> None:
    print(text, flush=True)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a") as handle:
            handle.write(text + "\n")


if __name__ == "__main__":
    sys.exit(main())

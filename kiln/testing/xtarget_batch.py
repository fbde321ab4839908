"""Helpers of the batched target runners: run in a forked child, bisect what fails.

A generated kernel that writes out of bounds or loops forever must not take the fuzzer down, so
native code runs in a forked child (`in_child`) with an alarm; when the child dies, the batch
is bisected (`bisect`) down to the models that kill it, and each of those is a crash. The same
bisection finds the models whose generated code a compiler rejects in a batch build.
"""

from __future__ import annotations

import faulthandler
import itertools
import os
import pickle
import signal
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from kiln.testing.differential import first_line
from kiln.testing.xtarget import Case, Result

T = TypeVar("T")
CHILD_TIMEOUT_S = 120


class ChildDied(Exception):
    """The forked child ended without an answer (a signal, a timeout, an exit)."""


def in_child(fn: Callable[[], Any], timeout_s: int = CHILD_TIMEOUT_S) -> Any:
    """`fn()` computed in a forked child and pickled back; `ChildDied` when it does not
    answer (its exceptions come back as `RuntimeError` with their first lines)."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: compute, answer, leave without running any cleanup
        os.close(read)
        faulthandler.disable()  # a native crash is reported by the parent, not dumped here
        try:
            signal.alarm(timeout_s)
            payload = pickle.dumps(("ok", fn()))
        except BaseException as exc:  # everything goes back to the parent
            payload = pickle.dumps(("error", first_line(exc)))
        with os.fdopen(write, "wb") as handle:
            handle.write(payload)
        os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as handle:
        data = handle.read()
    _, status = os.waitpid(pid, 0)
    if not data:
        if os.WIFSIGNALED(status):
            sig = os.WTERMSIG(status)
            name = signal.Signals(sig).name if sig in signal.Signals._value2member_map_ \
                else str(sig)
            raise ChildDied(f"killed by {name}")
        raise ChildDied(f"exited with status {os.WEXITSTATUS(status)} without an answer")
    kind, value = pickle.loads(data)
    if kind == "error":
        raise RuntimeError(value)
    return value


def bisect(items: Sequence[T], attempt: Callable[[Sequence[T]], Any]
           ) -> tuple[list[tuple[Sequence[T], Any]], list[tuple[T, str]]]:
    """Run `attempt` on all `items`; where it raises, on each half, down to single items.
    Returns the (group, answer) pairs that succeeded and the (item, error) pairs that did not.
    """
    try:
        return [(items, attempt(items))], []
    except Exception as exc:  # the failure is the point: find whom it belongs to
        if len(items) == 1:
            return [], [(items[0], first_line(exc))]
    mid = len(items) // 2
    good_a, bad_a = bisect(items[:mid], attempt)
    good_b, bad_b = bisect(items[mid:], attempt)
    return good_a + good_b, bad_a + bad_b


class BatchedRunner:
    """The batch loop the native back-ends share (cpu: one gcc library per batch; fpga/asic:
    one g++ C-simulation per batch): prepare every case (a `Result` settles it early), write
    and build the rest together, bisect a failing build or run down to the models at fault,
    and judge each model's outputs. Subclasses supply the five steps and two labels."""

    name: str
    work: Path
    build_tool = "gcc"
    """Names a build failure in its crash detail."""
    run_label = "running"
    """Names a run failure (a crash or timeout of the built program)."""

    def __init__(self) -> None:
        self._batches = itertools.count()

    def prepare(self, index: int, case: Case) -> Any:
        """A ready item (with `.index`) for the batch, or a `Result` that settles the case."""
        raise NotImplementedError

    def write(self, folder: Path, ready: Sequence[Any]) -> None:
        raise NotImplementedError

    def build(self, folder: Path, group: Sequence[Any]) -> Path:
        """The built program of `group`; raises when the compiler rejects it."""
        raise NotImplementedError

    def execute(self, binary: Path, group: Sequence[Any], cases: Sequence[Case]) -> list[Any]:
        """One answer per item of `group`; raises `ChildDied` when the program dies."""
        raise NotImplementedError

    def judge(self, item: Any, out: Any, case: Case) -> Result:
        raise NotImplementedError

    def run_batch(self, cases: Sequence[Case]) -> list[Result | None]:
        results: list[Result | None] = [None] * len(cases)
        ready = []
        for i, case in enumerate(cases):
            item = self.prepare(i, case)
            if isinstance(item, Result):
                results[i] = item
            else:
                ready.append(item)
        if not ready:
            return results
        folder = self.work / f"batch{next(self._batches)}"
        self.write(folder, ready)
        built, broken = bisect(ready, lambda group: self.build(folder, group))
        for item, why in broken:
            results[item.index] = Result(self.name, "crash", f"{self.build_tool}: {why}")
        for group, binary in built:
            def run(sub: Sequence[Any], binary: Path = binary) -> list[Any]:
                return self.execute(binary, sub, cases)

            ran, died = bisect(group, run)
            for item, why in died:
                results[item.index] = Result(self.name, "crash", f"{self.run_label}: {why}")
            for sub, answers in ran:
                for item, out in zip(sub, answers):
                    results[item.index] = self.judge(item, out, cases[item.index])
        return results

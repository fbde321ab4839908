"""Helpers of the batched target runners: run in a forked child, bisect what fails.

A generated kernel that writes out of bounds or loops forever must not take the fuzzer down, so
native code runs in a forked child (`in_child`) with an alarm; when the child dies, the batch
is bisected (`bisect`) down to the models that kill it, and each of those is a crash. The same
bisection finds the models whose generated code a compiler rejects in a batch build.
"""

from __future__ import annotations

import faulthandler
import os
import pickle
import signal
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from kiln.testing.differential import first_line

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

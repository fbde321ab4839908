"""What every `kiln` subcommand shares: flags, progress bars, JSON output, array files.

Habits (TVM's `tvmc`, `mlir-opt`): results on stdout, everything else (progress, logs,
warnings) on stderr; with `--json` stdout is exactly one JSON document; a progress bar only
when stderr is a terminal and `--quiet` is not given; bad input is a `KilnError` (exit 1) whose
message says what is wrong and what to do, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
import zipfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from kiln.errors import KilnError


def parse_shape(text: str) -> tuple[int, ...]:
    """`1x3x32x32` → (1, 3, 32, 32); argparse turns the error into exit code 2."""
    try:
        dims = tuple(int(d) for d in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"shape must look like 1x3x32x32, not '{text}'") from None
    if not dims or any(d < 1 for d in dims):
        raise argparse.ArgumentTypeError(f"shape dimensions must be positive, not '{text}'")
    return dims


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, not '{text}'") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, not '{text}'")
    return value


def add_output_flags(parser: argparse.ArgumentParser, json_help: str | None = None) -> None:
    """`--quiet`, `--json` and `--verbose`, on every subcommand."""
    parser.add_argument("-q", "--quiet", action="store_true",
                        help="no progress bar and no informational messages")
    parser.add_argument("--json", action="store_true",
                        help=json_help or "print one JSON document on stdout (for scripts)")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="log what kiln does (INFO level) on stderr")


class Progress:
    """A stage-by-stage progress bar on stderr (tqdm), silent when not on a terminal."""

    def __init__(self, stages: Sequence[str], *, quiet: bool = False,
                 desc: str = "kiln") -> None:
        self.stages = list(stages)
        self.enabled = not quiet and sys.stderr.isatty()
        self._bar: Any = None
        tqdm = _tqdm() if self.enabled else None
        if tqdm is not None:
            self._bar = tqdm(total=len(self.stages), desc=desc, file=sys.stderr, leave=False,
                             bar_format="{desc}: {n_fmt}/{total_fmt} {postfix} [{elapsed}]")

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Show `name` while the block runs; advance when it ends."""
        if self._bar is not None:
            self._bar.set_postfix_str(name)
        yield
        if self._bar is not None:
            self._bar.update(1)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def iterate(items: range, *, quiet: bool, desc: str) -> Any:
    """`items`, wrapped in a tqdm bar on a terminal."""
    tqdm = None if quiet or not sys.stderr.isatty() else _tqdm()
    return items if tqdm is None else tqdm(items, desc=desc, file=sys.stderr, leave=False)


def _tqdm() -> Any:
    """tqdm's bar class (a dependency of kiln; no bar rather than a crash without it)."""
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm


def print_json(document: Any) -> None:
    """The one JSON document of a `--json` run."""
    sys.stdout.write(json.dumps(document, indent=2, sort_keys=True, default=_default) + "\n")


def _default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def info(args: argparse.Namespace, message: str) -> None:
    """An informational line on stderr (silent with --quiet or --json)."""
    if not (args.quiet or args.json):
        print(message, file=sys.stderr)


def load_array(path: str) -> np.ndarray:
    """A NumPy array from a `.npy` file; a `KilnError` for anything else."""
    file = Path(path)
    if not file.is_file():
        raise KilnError(f"no such input file: {path}",
                        hint="save the input with np.save('x.npy', x)")
    try:
        data = np.load(file, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise KilnError(f"cannot read {path} as a NumPy .npy file: {exc}",
                        hint="save the input with np.save('x.npy', x)") from None
    if not isinstance(data, np.ndarray):
        data.close()
        raise KilnError(f"{path} is an .npz archive; --input takes one .npy file per input",
                        hint="pass --input once per model input, in order")
    return data


def save_arrays(path: str, named: Sequence[tuple[str, np.ndarray]]) -> None:
    """One output to `.npy`, or every output (by name) to `.npz`."""
    file = Path(path)
    if file.suffix == ".npz":
        np.savez(file, **{name: array for name, array in named})  # type: ignore[arg-type]
        return
    if len(named) != 1:
        raise KilnError(f"the model has {len(named)} outputs; a .npy file holds one",
                        hint="give an --output path ending in .npz to save all of them")
    if file.suffix != ".npy":
        raise KilnError(f"--output {path}: expected a .npy or .npz path")
    np.save(file, named[0][1])


def format_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Left-aligned columns, as wide as their widest cell."""
    cells = [[str(c) for c in header], *[[str(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells]
    return "\n".join(lines)


__all__ = ["Progress", "add_output_flags", "format_table", "info", "iterate", "load_array",
           "parse_shape", "positive_int", "print_json", "save_arrays"]

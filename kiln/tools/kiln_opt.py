"""`kiln-opt`: parse IR text, run a pass pipeline, print the result (the filecheck driver).

    kiln-opt model.kir -p "canonicalize,cse,dce"            # result IR on stdout
    kiln-opt model.kir -p default -o out.kir                # writes out.kir and out.npz
    kiln-opt - -p dce --print-ir-after-all < model.kir      # dumps after each pass on stderr
    kiln-opt --list-passes

Weights are elided in the text; when `model.npz` sits beside `model.kir` it is loaded (passes
that need weight data, like folding, then see it). A `KilnError` prints its message on stderr
and exits with 1; bad usage exits with 2 (argparse). Startup stays fast: no torch import.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from kiln.errors import KilnError

if TYPE_CHECKING:
    from kiln.ir.graph import Module


def _load_ops() -> None:
    """Register every op family, so the text may name any op."""
    importlib.import_module("kiln.ir.ops")


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="kiln-opt", description="Run kiln passes on IR text.")
    ap.add_argument("file", nargs="?", help="the .kir file to read ('-' for stdin)")
    ap.add_argument("-p", "--pipeline", default="",
                    help='pass pipeline, e.g. "canonicalize,fold-constants{max-elements=64},dce"')
    ap.add_argument("-o", "--output", help="write the result here (.kir plus .npz) instead of "
                                           "printing it")
    ap.add_argument("--print-ir-after-all", action="store_true",
                    help="dump the IR on stderr after every pass")
    ap.add_argument("--print-ir-after", metavar="NAMES",
                    help="dump the IR on stderr after these passes (comma separated)")
    ap.add_argument("--print-ir-after-change", action="store_true",
                    help="dump only after passes that changed the IR")
    ap.add_argument("--no-verify", action="store_true",
                    help="do not verify the IR after each pass")
    ap.add_argument("--no-locations", action="store_true", help="omit loc(...) in the output")
    ap.add_argument("--list-passes", action="store_true",
                    help="list the passes, their options and the named pipelines")
    return ap


def list_passes() -> str:
    """Every pass with its summary and options, then the named pipelines."""
    from kiln.compiler.pipelines import all_pipelines
    from kiln.passes.registry import all_passes

    lines = ["Passes:"]
    lines.extend("  " + info.describe().replace("\n", "\n  ") for info in all_passes().values())
    lines.append("Named pipelines:")
    lines.extend(f"  {name}: {text}" for name, text in all_pipelines().items())
    return "\n".join(lines) + "\n"


def _read(path: str) -> Module:
    """The module in `path` (with its `.npz` when present), or parsed from stdin for '-'."""
    from kiln.ir.parser import parse
    from kiln.ir.serialize import load_module

    if path == "-":
        return parse(sys.stdin.read(), filename="<stdin>")
    return load_module(path)


def run(args: argparse.Namespace) -> int:
    from kiln.compiler.pass_manager import run_passes

    _load_ops()
    module = _read(args.file)
    after = "all" if args.print_ir_after_all else args.print_ir_after
    result = run_passes(module, args.pipeline, verify=not args.no_verify, print_ir_after=after,
                        print_ir_after_change=args.print_ir_after_change, output=sys.stderr)
    if args.output:
        result.save(args.output)
    else:
        sys.stdout.write(result.to_text(locations=not args.no_locations))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.list_passes:
        sys.stdout.write(list_passes())
        return 0
    if args.file is None:
        _parser().error("the IR file is required (use '-' for stdin)")
    try:
        return run(args)
    except KilnError as exc:
        sys.stderr.write(f"kiln-opt: {exc}\n")
        return 1


if __name__ == "__main__":
    sys.exit(main())

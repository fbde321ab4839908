"""`kiln-opt`: parse IR text, run a pass pipeline, print the result (the filecheck driver).

    kiln-opt model.kir -p "canonicalize,cse,dce"            # result IR on stdout
    kiln-opt model.kir -p default -o out.kir                # writes out.kir and out.npz
    kiln-opt - -p dce --print-ir-after-all < model.kir      # dumps after each pass on stderr
    kiln-opt model.kir -p default --check-numerics          # stop at the first pass that drifts
    kiln-opt model.kir -p default --dump-dir dumps --time-passes
    kiln-opt model.kir -p my-pass --load-passes my_passes.py  # passes registered by a file
    kiln-opt --list-passes

Weights are elided in the text; when `model.npz` sits beside `model.kir` it is loaded (passes
that need weight data, like folding, and `--check-numerics` then see it). IR printouts and the
timing table go to stderr. When a pass fails, a reproducer folder is written (input IR, weights,
pipeline and the command that repeats the failure) and named in the error. A `KilnError` prints
its message on stderr and exits with 1; bad usage exits with 2 (argparse). Startup stays fast:
no torch import.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

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
                    help="dump the IR on stderr after these passes (comma separated, or 'all')")
    ap.add_argument("--print-ir-after-change", action="store_true",
                    help="dump only after passes that changed the IR")
    ap.add_argument("--no-verify", action="store_true",
                    help="do not verify the IR after each pass")
    _add_instrument_flags(ap)
    ap.add_argument("--no-locations", action="store_true", help="omit loc(...) in the output")
    ap.add_argument("--list-passes", action="store_true",
                    help="list the passes, their options and the named pipelines")
    return ap


def _add_instrument_flags(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--dump-dir", metavar="DIR",
                    help="write 000_input.kir, then NNN_<pass>.kir and NNN_<pass>.diff per pass")
    ap.add_argument("--time-passes", action="store_true",
                    help="print a table of pass times and op counts on stderr")
    ap.add_argument("--check-numerics", action="store_true",
                    help="interpret after every pass; fail at the first pass that changes the "
                         "outputs (needs the weights: the .npz beside the .kir)")
    ap.add_argument("--numerics-rtol", type=float, default=None, metavar="RTOL",
                    help="relative error one pass may introduce (default 1e-5)")
    ap.add_argument("--reproducer-dir", metavar="DIR",
                    help="write the reproducer of a failing pass here (default: a fresh "
                         "folder under <tempdir>/kiln-reproducers)")
    ap.add_argument("--no-reproducer", action="store_true",
                    help="do not write a reproducer when a pass fails")
    ap.add_argument("--load-passes", "--plugin", action="append", default=[], metavar="FILE|MODULE",
                    help="import a Python file or module that registers passes (repeatable)")


def load_passes(spec: str) -> ModuleType:
    """Import `spec`, a `.py` file or a module name, for the passes its import registers.

    A file is imported under a name derived from its path, so loading the same file twice in
    one process returns the module already loaded (its passes are registered once).
    """
    if not spec.endswith(".py"):
        try:
            return importlib.import_module(spec)
        except ImportError as exc:
            raise KilnError(f"cannot import pass module '{spec}': {exc}") from None
    path = Path(spec).resolve()
    name = "kiln_passes_" + "".join(c if c.isalnum() else "_" for c in str(path))
    if name in sys.modules:
        return sys.modules[name]
    loader_spec = importlib.util.spec_from_file_location(name, path)
    if loader_spec is None or loader_spec.loader is None or not path.is_file():
        raise KilnError(f"cannot load passes from {spec}: not a readable Python file")
    module = importlib.util.module_from_spec(loader_spec)
    sys.modules[name] = module
    try:
        loader_spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


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


def run_options(args: argparse.Namespace) -> dict[str, Any]:
    """The `run_passes` options the flags ask for."""
    options: dict[str, Any] = {
        "verify": not args.no_verify,
        "print_ir_after": "all" if args.print_ir_after_all else args.print_ir_after,
        "print_ir_after_change": args.print_ir_after_change,
        "output": sys.stderr,
        "dump_dir": args.dump_dir,
        "time_passes": args.time_passes,
        "check_numerics": args.check_numerics,
        "reproducer": not args.no_reproducer,
        "reproducer_dir": args.reproducer_dir,
    }
    if args.numerics_rtol is not None:
        options["numerics_rtol"] = args.numerics_rtol
    return options


def run(args: argparse.Namespace) -> int:
    from kiln.compiler.pass_manager import run_passes

    _load_ops()
    for spec in args.load_passes:
        load_passes(spec)
    module = _read(args.file)
    result = run_passes(module, args.pipeline, **run_options(args))
    if args.output:
        result.save(args.output)
    else:
        sys.stdout.write(result.to_text(locations=not args.no_locations))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.file is None and not args.list_passes:
        _parser().error("the IR file is required (use '-' for stdin)")
    try:
        if args.list_passes:
            for spec in args.load_passes:
                load_passes(spec)
            sys.stdout.write(list_passes())
            return 0
        return run(args)
    except KilnError as exc:
        sys.stderr.write(f"kiln-opt: {exc}\n")
        return 1


if __name__ == "__main__":
    sys.exit(main())

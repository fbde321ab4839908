"""`kiln`: the command line: compile a model, run, report and bench the artifact, explain ops.

    kiln compile MODEL --target T -o DIR     trace/import, optimize, build, save a folder
    kiln run DIR --input x.npy               run the saved artifact
    kiln report DIR [--html] [--json]        print the compile report
    kiln bench DIR [--runs N]                latency of the artifact (and of PyTorch)
    kiln explain MODEL --target T            what each op becomes, before compiling
    kiln import MODEL -o OUT.kir             the IR of a model
    kiln models / kiln demo                  the bundled models

MODEL is a bundled model name (`kiln models` lists them), `package.module:factory` for a
PyTorch model built by calling `factory()` (with `--input-shape`), an ONNX file, or a `.kir`
file. Results go to stdout, progress and logs to stderr; `--json` makes stdout one JSON
document. Exit codes: 0 success, 1 a kiln error (the message says what and what to do), 2 bad
usage.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from kiln.errors import KilnError
from kiln.tools.cli_common import add_output_flags, parse_shape, positive_int
from kiln.tools.cli_model import PRUNE_HELP, load_source, parse_option, parse_prune

TARGETS = ("reference", "cpu", "gpu", "fpga", "asic", "tvm")
"""kiln's own targets (for --help); `get_target` checks the name after plugins load."""
_RAW = argparse.RawDescriptionHelpFormatter


def _cmd_import(args: argparse.Namespace) -> int:
    module = load_source(args.model, tuple(args.input_shape or ())).module
    if args.output:
        module.save(args.output)
    if args.json:
        from kiln.tools.cli_common import print_json
        print_json({"model": module.name, "output": args.output,
                    "ir": None if args.output else module.to_text()})
    elif not args.output:
        print(module.to_text())
    return 0


def _cmd_models(args: argparse.Namespace) -> int:
    from kiln.models import MODELS
    if args.json:
        from kiln.tools.cli_common import print_json
        print_json([{"name": n, "input_shape": list(s.input_shape),
                     "description": s.description} for n, s in MODELS.items()])
        return 0
    for name, spec in MODELS.items():
        shape = "x".join(str(d) for d in spec.input_shape)
        print(f"{name:20s} {shape:12s} {spec.description}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from kiln.tools.demo import main as demo_main
    return demo_main(args.models)


def _dispatch(name: str) -> object:
    """The `run` function of a subcommand module, imported only when it runs."""
    def run(args: argparse.Namespace) -> int:
        import importlib
        module_name, _, attr = name.partition(":")
        return int(getattr(importlib.import_module(module_name), attr or "run")(args))
    return run


def _model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="bundled model name, package.module:factory, .onnx or .kir")
    p.add_argument("--input-shape", type=parse_shape, action="append", metavar="SHAPE",
                   help="input shape like 1x3x32x32 (once per input); needed for "
                        "package.module:factory, pins ONNX symbolic dimensions")


def _target_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-t", "--target", required=True, metavar="T",
                   help=f"the backend: {', '.join(TARGETS)}, or one a --plugin registers")
    p.add_argument("-p", "--pipeline", help="pass pipeline instead of the target's default, "
                   "e.g. 'default,my-pass' (kiln-opt --list-passes lists them)")
    p.add_argument("--option", type=parse_option, action="append", metavar="KEY=VALUE",
                   help="a target option (JSON value), e.g. threads=2, precision=12, "
                        "reuse_factor=4 (repeatable)")


def _add_compile(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("compile", help="compile a model into an artifact folder",
                       formatter_class=_RAW,
                       description="Trace or import MODEL, run the pass pipeline, build it for "
                                   "the target and save the artifact folder.",
                       epilog="examples:\n  kiln compile jet_mlp --target cpu -o build/jet\n"
                              "  kiln compile net.onnx -t fpga --option precision=12 -o prj\n"
                              "  kiln compile mypkg.nets:make_net --input-shape 1x3x32x32 "
                              "-t cpu --quantize int8 --prune 0.5 -o build/net")
    _model_args(p)
    _target_args(p)
    p.add_argument("-o", "--output", required=True, metavar="DIR", help="artifact folder")
    p.add_argument("--quantize", choices=("int8",), help="int8 inference (cpu target)")
    p.add_argument("--prune", type=parse_prune, metavar="SPEC", help=PRUNE_HELP)
    p.add_argument("--plugin", action="append", metavar="FILE_OR_MODULE",
                   help="import a .py file or module that registers passes (repeatable)")
    add_output_flags(p)
    p.set_defaults(run=_dispatch("kiln.tools.cli_compile"))


def _add_artifact_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("run", help="run a compiled artifact on .npy inputs", formatter_class=_RAW,
                       epilog="examples:\n  kiln run build/jet --input x.npy\n"
                              "  kiln run build/jet --input x.npy --output y.npy")
    p.add_argument("directory", metavar="DIR")
    p.add_argument("-i", "--input", action="append", metavar="X.npy",
                   help="one .npy per model input, in order (default: the saved examples)")
    p.add_argument("-o", "--output", metavar="OUT.npy",
                   help="write the output (.npy) or all outputs by name (.npz)")
    add_output_flags(p)
    p.set_defaults(run=_dispatch("kiln.tools.cli_run:run"))
    p = sub.add_parser("report", help="print the report of a compiled artifact",
                       formatter_class=_RAW,
                       epilog="examples:\n  kiln report build/jet\n  kiln report build/jet "
                              "--html\n  kiln report build/jet --json | jq .target")
    p.add_argument("directory", metavar="DIR")
    p.add_argument("--html", action="store_true", help="write DIR/report.html, print its path")
    add_output_flags(p, json_help="print the report as JSON")
    p.set_defaults(run=_dispatch("kiln.tools.cli_run:report"))
    p = sub.add_parser("bench", help="measure the latency of a compiled artifact",
                       formatter_class=_RAW,
                       epilog="examples:\n  kiln bench build/jet\n"
                              "  kiln bench build/jet --runs 1000 --warmup 50 --json")
    p.add_argument("directory", metavar="DIR")
    p.add_argument("--runs", type=positive_int, default=100, help="timed calls (default 100)")
    p.add_argument("--warmup", type=int, default=10, help="untimed calls first (default 10)")
    p.add_argument("--batch", type=positive_int, help="batch size (default: the saved one)")
    add_output_flags(p)
    p.set_defaults(run=_dispatch("kiln.tools.cli_bench"))


def _add_model_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("explain", help="what each op becomes on a target, before compiling",
                       formatter_class=_RAW,
                       epilog="examples:\n  kiln explain resnet8 --target fpga\n"
                              "  kiln explain net.onnx -t gpu --json")
    _model_args(p)
    _target_args(p)
    add_output_flags(p)
    p.set_defaults(run=_dispatch("kiln.tools.cli_explain"))
    p = sub.add_parser("import", help="trace or import a model and print/save its IR",
                       epilog="example: kiln import model.onnx -o model.kir")
    _model_args(p)
    p.add_argument("-o", "--output", help="write OUT.kir and OUT.npz instead of printing")
    add_output_flags(p)
    p.set_defaults(run=_cmd_import)
    p = sub.add_parser("models", help="list the bundled models", epilog="example: kiln models")
    add_output_flags(p)
    p.set_defaults(run=_cmd_models)
    p = sub.add_parser("demo", help="compile the bundled models and check their numerics",
                       epilog="example: kiln demo jet_mlp digits_cnn")
    p.add_argument("models", nargs="*")
    p.set_defaults(run=_cmd_demo, quiet=False, json=False, verbose=False)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kiln", description=(__doc__ or "").split("\n\n")[0], formatter_class=_RAW,
        epilog="example:\n  kiln compile jet_mlp --target cpu -o build/jet && "
               "kiln run build/jet && kiln report build/jet\n\n"
               "'kiln COMMAND --help' describes each command.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_compile(sub)
    _add_artifact_commands(sub)
    _add_model_commands(sub)
    return parser


@contextmanager
def _logging(args: argparse.Namespace) -> Iterator[None]:
    """kiln's log records on stderr for this command (INFO with --verbose; errors only with
    --quiet / --json, which also silence warnings); restored afterwards (main() may be called
    in-process)."""
    level = logging.INFO if args.verbose else logging.WARNING
    if (args.quiet or args.json) and not args.verbose:
        level = logging.ERROR
    logger = logging.getLogger("kiln")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("kiln: %(levelname)s: %(message)s"))
    handler.setLevel(level)
    old_level = logger.level
    logger.addHandler(handler)
    if args.verbose:
        logger.setLevel(logging.INFO)
    try:
        with warnings.catch_warnings():
            if args.quiet or args.json:
                warnings.simplefilter("ignore")
            yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so the interpreter's final flush does not fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # no real file descriptor (captured in-process)
        pass


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    with _logging(args):
        try:
            return int(args.run(args))
        except KilnError as exc:
            print(f"kiln {args.command}: {exc}", file=sys.stderr)
            return 1
        except BrokenPipeError:  # `kiln import m | head`: the reader left; stop quietly
            _silence_stdout()
            return 1
        except OSError as exc:  # a path the user gave cannot be read or written
            where = f": {exc.filename}" if exc.filename else ""
            print(f"kiln {args.command}: error: {exc.strerror or exc}{where}\n"
                  "  hint: check the path and its permissions", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            print("kiln: interrupted", file=sys.stderr)
            return 130


if __name__ == "__main__":
    sys.exit(main())

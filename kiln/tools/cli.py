"""`kiln`: the command line. `kiln import MODEL -o OUT.kir`, `kiln models`, `kiln demo`.

MODEL is a bundled model name (`kiln models` lists them), `package.module:factory` for a PyTorch
model built by calling `factory()`, an ONNX file, or a `.kir` file. Exit codes: 0 success,
1 a kiln error (the message says what and where), 2 bad usage.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kiln.errors import KilnError


def _parse_shape(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(d) for d in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"shape must look like 1x3x32x32, not '{text}'") from None


def load_model(spec: str, input_shape: tuple[int, ...] | None) -> Any:
    """A kiln Module from a model spec (see the module docstring)."""
    import kiln
    path = Path(spec)
    if path.suffix in (".onnx", ".kir"):
        if not path.exists():
            raise KilnError(f"no such file: {spec}")
        return kiln.import_onnx(path) if path.suffix == ".onnx" else kiln.load(path)
    from kiln.models import MODELS, example_inputs, get_model
    if spec in MODELS:
        return kiln.trace(get_model(spec), example_inputs(spec))
    if ":" not in spec:
        raise KilnError(f"cannot tell what model '{spec}' is",
                        hint=f"use a bundled model ({', '.join(MODELS)}), "
                        "package.module:factory, or a .onnx / .kir file")
    module_name, _, attr = spec.partition(":")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise KilnError(f"cannot load '{spec}': {exc}") from None
    if input_shape is None:
        raise KilnError("a PyTorch model needs --input-shape (e.g. 1x3x32x32)")
    import torch
    return kiln.trace(factory(), (torch.randn(*input_shape),))


def _cmd_import(args: argparse.Namespace) -> int:
    module = load_model(args.model, args.input_shape)
    if args.output:
        module.save(args.output)
    else:
        print(module.to_text())
    return 0


def _cmd_models(args: argparse.Namespace) -> int:
    from kiln.models import MODELS
    for name, spec in MODELS.items():
        shape = "x".join(str(d) for d in spec.input_shape)
        print(f"{name:20s} {shape:12s} {spec.description}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from kiln.tools.demo import main as demo_main
    return demo_main(args.models)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kiln", description=__doc__.splitlines()[0],
                                     epilog="example: kiln import resnet8 -o resnet8.kir")
    sub = parser.add_subparsers(dest="command", required=True)
    imp = sub.add_parser("import", help="trace or import a model and print/save its IR",
                         epilog="example: kiln import model.onnx -o model.kir")
    imp.add_argument("model")
    imp.add_argument("-o", "--output", help="write OUT.kir and OUT.npz instead of printing")
    imp.add_argument("--input-shape", type=_parse_shape, help="for package.module:factory")
    imp.set_defaults(run=_cmd_import)
    models = sub.add_parser("models", help="list the bundled models")
    models.set_defaults(run=_cmd_models)
    demo = sub.add_parser("demo", help="compile the bundled models and check their numerics")
    demo.add_argument("models", nargs="*")
    demo.set_defaults(run=_cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args))
    except KilnError as exc:
        print(str(exc), file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

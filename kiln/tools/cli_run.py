"""`kiln run DIR` and `kiln report DIR`: use a saved artifact folder.

`kiln run` rebuilds the artifact (`kiln.load_compiled`: cached builds, so fast), checks each
`--input` .npy against the saved signature (count, dtype, shape; a float array of another
precision is converted, anything else is an error that says how to fix it), runs it, and
prints a summary of the outputs or writes them with `--output`. Without `--input` it runs the
example inputs saved at compile time.

`kiln report` prints the saved report (`kiln.report.render_text`), `--html` writes (refreshes)
`report.html` and prints its path, `--json` prints the report document.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np

from kiln.errors import KilnError
from kiln.tools.cli_common import Progress, info, load_array, print_json, save_arrays


def _check_input(i: int, spec: dict[str, Any], x: np.ndarray, path: str) -> np.ndarray:
    """`x` as the saved signature wants it, or a `KilnError` naming what differs."""
    want_shape, want_dtype = tuple(spec["shape"]), np.dtype(spec["dtype"])
    label = f"input {i} ({spec['name']}) from {path}"
    if x.dtype != want_dtype:
        if not (np.issubdtype(x.dtype, np.floating) and np.issubdtype(want_dtype, np.floating)):
            raise KilnError(f"{label} has dtype {x.dtype}, the model expects {want_dtype}",
                            hint=f"save it as np.save(path, x.astype(np.{want_dtype}))")
        x = x.astype(want_dtype)
    if x.ndim != len(want_shape) or x.shape[1:] != want_shape[1:]:
        raise KilnError(f"{label} has shape {list(x.shape)}, the model expects "
                        f"{list(want_shape)}",
                        hint="the artifact was compiled for this shape; compile again with "
                             "--input-shape for another one")
    return np.ascontiguousarray(x)


def read_inputs(args: argparse.Namespace, manifest: dict[str, Any],
                directory: Path) -> list[np.ndarray]:
    from kiln.compiler.artifact_io import read_inputs as saved_inputs

    specs = manifest["inputs"]
    if not args.input:
        inputs, _ = saved_inputs(directory)
        if len(inputs) != len(specs):
            raise KilnError(f"{directory} holds no example inputs",
                            hint="pass --input x.npy once per model input")
        info(args, "kiln: no --input given; running the example inputs saved at compile time")
        return list(inputs)
    if len(args.input) != len(specs):
        want = ", ".join(f"{s['name']} {s['shape']} {s['dtype']}" for s in specs)
        raise KilnError(f"the model takes {len(specs)} input(s) ({want}); got "
                        f"{len(args.input)} --input", hint="pass --input once per input, in order")
    return [_check_input(i, s, load_array(p), p) for i, (s, p) in
            enumerate(zip(specs, args.input))]


def _describe(name: str, y: np.ndarray) -> dict[str, Any]:
    out: dict[str, Any] = {"name": name, "shape": list(y.shape), "dtype": str(y.dtype)}
    if y.size and np.issubdtype(y.dtype, np.number):
        out.update(min=float(y.min()), max=float(y.max()), mean=float(y.mean()))
    return out


def _print_outputs(named: list[tuple[str, np.ndarray]]) -> None:
    for i, (name, y) in enumerate(named):
        d = _describe(name, y)
        stats = f"  min {d['min']:.6g}  max {d['max']:.6g}  mean {d['mean']:.6g}" \
            if "min" in d else ""
        print(f"output {i} ({name}): shape {d['shape']} {d['dtype']}{stats}")
        flat = y.reshape(-1)
        values = ", ".join(f"{v:.6g}" for v in flat[:8].tolist())
        print(f"  [{values}{', ...' if flat.size > 8 else ''}]")
        if y.ndim >= 1 and y.shape[-1] > 1 and y.size:
            print(f"  argmax (last axis): {np.argmax(y, axis=-1).reshape(-1).tolist()[:16]}")


def run(args: argparse.Namespace) -> int:
    import kiln
    from kiln.compiler.artifact_io import read_manifest

    directory = Path(args.directory)
    manifest = read_manifest(directory)
    with Progress(("rebuild", "run"), quiet=args.quiet or args.json,
                  desc="kiln run") as progress:
        with progress.stage(f"loading the {manifest['target']} artifact"):
            art = kiln.load_compiled(directory)
        inputs = read_inputs(args, manifest, directory)
        with progress.stage("running"):
            outs = art.artifact.run(*inputs)
    names = [o["name"] for o in manifest["outputs"]]
    named = list(zip(names, outs))
    if args.output:
        save_arrays(args.output, named)
        info(args, f"kiln: wrote {args.output}")
    if args.json:
        print_json({"target": manifest["target"], "outputs": [
            {**_describe(n, y), "values": y.tolist()} for n, y in named],
            "output_file": args.output})
    elif not args.output:  # the result itself: printed even with --quiet
        _print_outputs(named)
    return 0


def report(args: argparse.Namespace) -> int:
    from kiln.compiler.artifact_io import read_manifest
    from kiln.report import load_report, render_html, render_text

    directory = Path(args.directory)
    read_manifest(directory)
    document = load_report(directory)
    if args.html:
        path = directory / "report.html"
        path.write_text(render_html(document), encoding="utf-8")
    if args.json:
        print_json(document)
    elif args.html:
        print(path)
    else:
        print(render_text(document))
    return 0


__all__ = ["read_inputs", "report", "run"]

"""`kiln bench DIR`: measured latency of a saved artifact, and of its PyTorch source.

Inputs are random (a fresh seed every run: no engine can benefit from a cached answer) with the
saved shapes, the batch dimension set by `--batch`. Each engine runs `--warmup` untimed calls,
then `--runs` timed ones; the table gives the median, the 10th and 90th percentiles and the
minimum, in milliseconds. When the artifact came from a bundled model or `package.module:
factory`, that PyTorch model is re-created and timed on the same inputs (`torch.no_grad`, the
threads torch chooses); any other source (ONNX, `.kir`, a model built in Python) gives the
kiln row only.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from kiln.errors import KilnError
from kiln.tools.cli_common import Progress, format_table, info, iterate, print_json


def random_inputs(specs: list[dict[str, Any]], batch: int | None) -> list[np.ndarray]:
    rng = np.random.default_rng()
    out = []
    for spec in specs:
        shape = list(spec["shape"])
        if batch is not None and shape:
            shape[0] = batch
        dtype = np.dtype(spec["dtype"])
        if np.issubdtype(dtype, np.floating):
            out.append(rng.standard_normal(shape).astype(dtype))
        else:
            out.append(rng.integers(0, 8, size=shape).astype(dtype))
    return out


def measure(call: Callable[[], Any], runs: int, warmup: int, *, quiet: bool,
            name: str) -> dict[str, float]:
    """Latency statistics of `call` in milliseconds."""
    for _ in range(warmup):
        call()
    times = []
    for _ in iterate(range(runs), quiet=quiet, desc=f"bench {name}"):
        start = time.perf_counter()
        call()
        times.append((time.perf_counter() - start) * 1e3)
    data = np.asarray(times)
    return {"median_ms": float(np.median(data)), "p10_ms": float(np.percentile(data, 10)),
            "p90_ms": float(np.percentile(data, 90)), "min_ms": float(data.min()),
            "mean_ms": float(data.mean())}


def _torch_call(manifest: dict[str, Any], inputs: list[np.ndarray],
                args: argparse.Namespace) -> tuple[Callable[[], Any] | None, str | None]:
    """A call of the re-created PyTorch source, or (None, why not)."""
    from kiln.tools.cli_model import recreate_torch

    source = manifest.get("source")
    if not source:
        return None, "the artifact does not record its source model"
    try:
        model = recreate_torch(source)
    except KilnError as exc:
        return None, f"cannot re-create {source.get('model')}: {exc}"
    if model is None:
        return None, f"its source is a {source.get('kind')} model, not PyTorch"
    import torch

    tensors = [torch.from_numpy(x) for x in inputs]

    def call() -> Any:
        with torch.no_grad():
            return model(*tensors)
    return call, None


def run(args: argparse.Namespace) -> int:
    import kiln
    from kiln.compiler.artifact_io import read_manifest

    directory = Path(args.directory)
    manifest = read_manifest(directory)
    quiet = args.quiet or args.json
    progress = Progress(("rebuild",), quiet=quiet, desc="kiln bench")
    with progress, progress.stage(f"loading the {manifest['target']} artifact"):
        art = kiln.load_compiled(directory)
    inputs = random_inputs(manifest["inputs"], args.batch)
    try:
        art.artifact.run(*inputs)  # a shape the artifact refuses fails before any timing
    except KilnError as exc:
        if args.batch is None:
            raise
        shape = "x".join(map(str, [args.batch, *manifest["inputs"][0]["shape"][1:]]))
        raise KilnError(f"the {manifest['target']} artifact does not run batch {args.batch}: "
                        f"{exc.diagnostics[0].message}",
                        hint=f"compile the model again with --input-shape {shape}") from None
    engines: list[tuple[str, Callable[[], Any]]] = [
        (f"kiln {manifest['target']}", lambda: art.artifact.run(*inputs))]
    torch_call, why = _torch_call(manifest, inputs, args)
    if torch_call is not None:
        engines.append(("pytorch", torch_call))
    elif why:
        info(args, f"kiln: timing kiln only: {why}")
    rows: list[dict[str, Any]] = [
        {"engine": name, **measure(call, args.runs, args.warmup, quiet=quiet, name=name)}
        for name, call in engines]
    batch = inputs[0].shape[0] if inputs and inputs[0].ndim else None
    if args.json:
        print_json({"target": manifest["target"], "model": manifest.get("model"),
                    "batch": batch, "runs": args.runs, "warmup": args.warmup, "results": rows,
                    "pytorch_skipped": why})
        return 0
    print(f"{manifest.get('model')} on {manifest['target']}, batch {batch}, {args.runs} runs "
          f"after {args.warmup} warm-up (ms)")
    print(format_table(("engine", "median", "p10", "p90", "min"),
                       [(r["engine"], *(f"{r[k]:.4f}" for k in
                                        ("median_ms", "p10_ms", "p90_ms", "min_ms")))
                        for r in rows]))
    if len(rows) == 2 and rows[0]["median_ms"] > 0 and rows[1]["median_ms"] > 0:
        ratio = rows[1]["median_ms"] / rows[0]["median_ms"]
        word, factor = ("faster", ratio) if ratio >= 1 else ("slower", 1 / ratio)
        print(f"kiln {manifest['target']} is {factor:.2f}x {word} than pytorch (median)")
    return 0


__all__ = ["measure", "random_inputs", "run"]

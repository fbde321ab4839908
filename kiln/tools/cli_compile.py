"""`kiln compile MODEL --target T -o DIR`: load, optimize, build, and save an artifact folder.

The pipeline is the target's default (or `--pipeline`), preceded by
- `decompose{ops=...}` for the ops the target can only run decomposed (as `kiln explain`
  reports them; only with the default pipeline: an explicit `--pipeline` is taken as given);
- `canonicalize,fold-batchnorm,<prune step>` for `--prune` (`kiln.tools.cli_model.PRUNE_HELP`).

`--quantize int8` is the target option `quantize="int8"` (the cpu target's int8 pipeline,
calibrated on the example inputs); `--option key=value` passes any other target option. A
PyTorch model (bundled, or `package.module:factory`) is traced once; its outputs on the example
inputs are kept, so the report compares the artifact against PyTorch.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from kiln.errors import KilnError
from kiln.tools.cli_common import Progress, info, print_json
from kiln.tools.cli_model import ModelSource, load_source

SUMMARY_KEYS = ("max_rel_error_vs_source", "ops", "fused_groups", "parameters", "weight_bytes")


def target_options(args: argparse.Namespace) -> dict[str, Any]:
    options = dict(args.option or [])
    if args.quantize:
        options["quantize"] = args.quantize
    return options


def choose_pipeline(args: argparse.Namespace, source: ModelSource,
                    options: dict[str, Any]) -> str | None:
    """The pipeline to run (module docstring); None: the driver's default."""
    from kiln.targets.target import get_target
    from kiln.tools.cli_explain import plan_decompose

    backend = get_target(args.target)
    resolved = backend.resolve_options(options)
    base = args.pipeline or backend.default_pipeline(resolved)
    prefix = []
    if args.pipeline is None:
        try:
            names = plan_decompose(source.module, source.inputs, args.target, base, resolved)
        except KilnError:  # the compile itself reports it (with a reproducer)
            names = []
        if names:
            info(args, f"kiln: decomposing {', '.join(names)} for target '{args.target}'")
            prefix.append(f"decompose{{ops={'|'.join(names)}}}")
    if args.prune:
        prefix.append(f"canonicalize,fold-batchnorm,{args.prune}")
    if not prefix:
        return args.pipeline
    return ",".join([*prefix, base])


def _source_outputs(source: ModelSource) -> list[Any] | None:
    """PyTorch's outputs on the example inputs (the report's reference)."""
    if source.torch_model is None:
        return None
    import torch

    from kiln.ir.interpret import to_numpy
    with torch.no_grad():
        result = source.torch_model(*[torch.from_numpy(x) for x in source.inputs])
    results = result if isinstance(result, (tuple, list)) else (result,)
    return [to_numpy(r) for r in results]


def _summary(directory: Path, art: Any, seconds: float) -> dict[str, Any]:
    from kiln.report import load_report

    report = load_report(directory)
    found = {k: report[k] for k in SUMMARY_KEYS if k in report}
    return {"output": str(directory), "target": art.target, "pipeline": art.pipeline,
            "seconds": round(seconds, 3),
            "files": sorted(str(p.relative_to(directory)) for p in directory.rglob("*")
                            if p.is_file()), **found}


def run(args: argparse.Namespace) -> int:
    import kiln
    from kiln.tools.kiln_opt import load_passes

    start = time.perf_counter()
    quiet = args.quiet or args.json
    stages = ("load model", "plan", "passes + build", "save")
    with Progress(stages, quiet=quiet, desc="kiln compile") as progress:
        with progress.stage(f"loading {args.model}"):
            for spec in args.plugin or []:
                load_passes(spec)
            source = load_source(args.model, tuple(args.input_shape or ()))
        options = target_options(args)
        with progress.stage("planning the pipeline"):
            pipeline = choose_pipeline(args, source, options)
        if pipeline is not None:  # quantize / fixed-point in it calibrate on the example
            options["calibration_data"] = [source.inputs]  # (the driver does so only for
            # a target's own pipeline)
        with progress.stage(f"passes + {args.target} build"):
            art = kiln.compile(source.module, source.inputs, target=args.target,
                               pipeline=pipeline, **options)
            art.source_outputs = _source_outputs(source)
        with progress.stage("saving"):
            out = art.save(args.output, source=source.describe())
    summary = _summary(Path(out), art, time.perf_counter() - start)
    if args.json:
        print_json(summary)
    elif not args.quiet:
        error = summary.get("max_rel_error_vs_source")
        check = f", max rel. error vs PyTorch {error:.2e}" if error is not None else ""
        print(f"compiled {args.model} for {art.target} in {summary['seconds']:.2f} s{check}")
        print(f"  pipeline: {art.pipeline}")
        print(f"  wrote {out}/ ({len(summary['files'])} files: model.kir, artifact.json, "
              "report.html, ...)")
        print(f"  next: kiln run {out} --input x.npy | kiln report {out} | kiln bench {out}")
    return 0


__all__ = ["choose_pipeline", "run", "target_options"]

"""`kiln explain MODEL --target T`: what happens to every op, before compiling anything.

The rows are the ops of the cleaned-up model (the `cleanup` pipeline: canonicalize, fold
constants, CSE, DCE), each with its source line. The target's default pipeline (or
`--pipeline`) is then run, and each op is followed into the result by (op name, location):

- **supported**: the op stays and the target has a kernel / layer for it (what it becomes);
- **fused**: the op sits in a `kiln.fused` group (which group, and the kernel it becomes);
- **folded**: a pass removed it (batch norm folded into the conv before it, constants folded);
- **decomposed**: the target cannot run it, but `decompose` rewrites it into ops it can (the
  ops named); `kiln compile` adds that `decompose{ops=...}` step itself;
- **rewritten**: a pass of the pipeline replaced it by other ops (quantize: `qlinear`, ...);
- **unsupported**: the target's own check refuses it, with the reason and a hint.

Every unsupported op is reported at once (the targets' checks collect them all); the exit code
is 1 when there is any.
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from kiln.errors import Diagnostic
from kiln.ir.graph import Module, Op
from kiln.ir.location import Location
from kiln.tools.cli_common import Progress, format_table, print_json
from kiln.tools.cli_support import support_for

SKIPPED = ("kiln.weight", "kiln.constant", "kiln.return", "kiln.yield")
Key = tuple[str, Location]


@dataclass
class OpRow:
    """One op of the cleaned-up model and what the target does with it."""

    op: str
    result: str
    status: str
    detail: str
    source: str
    hint: str | None = None


@dataclass
class Explanation:
    model: str
    target: str
    pipeline: str
    decompose: list[str] = field(default_factory=list)
    rows: list[OpRow] = field(default_factory=list)
    other_problems: list[Diagnostic] = field(default_factory=list)

    @property
    def unsupported(self) -> list[OpRow]:
        return [r for r in self.rows if r.status == "unsupported"]

    @property
    def ok(self) -> bool:
        return not self.unsupported and not self.other_problems


def _key(op: Op) -> Key:
    return op.name, op.loc


def _index(module: Module) -> dict[Key, list[tuple[Op, Op | None]]]:
    """(op name, location) → [(op, its fused group or None)] in function order."""
    index: dict[Key, list[tuple[Op, Op | None]]] = defaultdict(list)
    for op in module.main.ops:
        if op.region is not None:
            for inner in op.region.ops:
                index[_key(inner)].append((inner, op))
        index[_key(op)].append((op, None))
    return index


def _problem_index(problems: Sequence[Diagnostic]) -> tuple[dict[Key, list[Diagnostic]],
                                                            list[Diagnostic]]:
    """(op name, location) → the diagnostics of the ops there, in order; and the rest."""
    by_key: dict[Key, list[Diagnostic]] = defaultdict(list)
    other = []
    for d in problems:
        if d.op_name is not None and d.loc is not None:
            by_key[(d.op_name, d.loc)].append(d)
        else:
            other.append(d)
    return by_key, other


def _decomposable(rows: Sequence[Op], bad: dict[Key, list[Diagnostic]]) -> list[str]:
    from kiln.passes.decompose import decomposable

    table = decomposable()
    names = {op.name.removeprefix("kiln.") for op in rows if bad.get(_key(op))}
    return sorted(n for n in names if n in table)


def _with_decompose(pipeline: str, names: Sequence[str]) -> str:
    return f"decompose{{ops={'|'.join(names)}}},{pipeline}" if names else pipeline


def _run(module: Module, pipeline: str, inputs: tuple[Any, ...]) -> Module:
    """`pipeline` on a copy of `module`, calibrated on the example inputs (as `kiln.compile`
    calibrates a target's quantize pass)."""
    from kiln.compiler.pass_manager import run_passes

    return run_passes(module, pipeline, calibration_data=[inputs], reproducer=False)


def plan_decompose(module: Module, inputs: tuple[Any, ...], target: str, pipeline: str,
                   options: Mapping[str, Any]) -> list[str]:
    """Ops (short names) the target cannot run but can after `decompose`: every one whose
    problems vanish when the pipeline starts with `decompose{ops=...}`."""
    from kiln.compiler.pass_manager import run_passes

    support = support_for(target)
    rows = [op for op in run_passes(module, "cleanup").main.ops if op.name not in SKIPPED]
    bad, _ = _problem_index(support.check(_run(module, pipeline, inputs), inputs, options))
    names = _decomposable(rows, bad)
    if not names:
        return []
    after = _run(module, _with_decompose(pipeline, names), inputs)
    still, _ = _problem_index(support.check(after, inputs, options))
    still_locs = {loc for (_, loc), found in still.items() if found}
    return [n for n in names if not any(op.name == f"kiln.{n}" and op.loc in still_locs
                                        for op in rows)]


def expand(pipeline: str) -> str:
    """The pipeline with named pipelines (`fpga`, `default`) expanded into their passes."""
    from kiln.compiler.pipeline import format_pipeline, parse_pipeline

    return format_pipeline(parse_pipeline(pipeline))


def _fused_detail(group: Op, becomes: str) -> str:
    kind = getattr(group.kind, "kind", "")
    pattern = getattr(group.kind, "pattern", "")
    return f"into {kind} group '{pattern}' → {becomes}"


def _row(op: Op, status: str, detail: str, hint: str | None = None) -> OpRow:
    result = ", ".join(f"%{r.name}" for r in op.results if r.name) or "-"
    return OpRow(op.name, result, status, detail, op.loc.describe() or "-", hint)


def _missing_row(op: Op, leftovers: list[Op], pipeline: str,
                 decomposed: Sequence[str]) -> OpRow:
    """An op the pipeline replaced: decomposed (by the planned `decompose`), rewritten into
    other ops at its location (quantize, fixed point), or folded away."""
    made = [o.name for o in leftovers if o.loc == op.loc and o.name not in SKIPPED]
    if op.name == "kiln.batch_norm" and "fold-batchnorm" in pipeline:
        return _row(op, "folded", "into the conv / linear before it (fold-batchnorm)")
    if made and op.loc.known:
        status = "decomposed" if op.name.removeprefix("kiln.") in decomposed else "rewritten"
        return _row(op, status, "into " + ", ".join(dict.fromkeys(made)))
    return _row(op, "folded", "removed by the pipeline (folded into a neighbor or simplified "
                              "away)")


def explain_module(module: Module, inputs: tuple[Any, ...], target: str, pipeline: str,
                   options: Mapping[str, Any], *, auto_decompose: bool = True) -> Explanation:
    """The explanation of `module` on `target` with the resolved target `options` (module
    docstring); `auto_decompose` as `kiln compile` does with the target's default pipeline."""
    from kiln.compiler.pass_manager import run_passes

    support = support_for(target)
    decompose = (plan_decompose(module, inputs, target, pipeline, options) if auto_decompose
                 else [])
    full = _with_decompose(pipeline, decompose)
    lowered = _run(module, full, inputs)
    view = support.view(lowered, inputs, options)
    bad, other = _problem_index(support.problems(view, options))
    index = _index(lowered)
    rows = [op for op in run_passes(module, "cleanup").main.ops if op.name not in SKIPPED]
    found = {id(op): index[_key(op)].pop(0) if index.get(_key(op)) else None for op in rows}
    leftovers = [o for pairs in index.values() for o, _ in pairs]
    result = Explanation(module.name, target, expand(full), decompose)
    for op in rows:
        match = found[id(op)]
        pending = bad.get(_key(op))
        diagnostic = pending.pop(0) if pending else None
        if diagnostic is not None:
            result.rows.append(_row(op, "unsupported", diagnostic.message, diagnostic.hint))
        elif match is None:
            result.rows.append(_missing_row(op, leftovers, result.pipeline, decompose))
        elif match[1] is not None:
            detail = _fused_detail(match[1], support.describe(match[1], view))
            result.rows.append(_row(op, "fused", detail))
        else:
            result.rows.append(_row(op, "supported", support.describe(match[0], view)))
    result.other_problems = [*other, *(d for left in bad.values() for d in left)]
    return result


def render_text(exp: Explanation) -> str:
    lines = [f"{exp.model} on target '{exp.target}' (pipeline: {exp.pipeline})", ""]
    rows = [(r.op, r.result, r.status.upper() if r.status == "unsupported" else r.status,
             r.detail if len(r.detail) <= 70 else r.detail[:67] + "...", r.source)
            for r in exp.rows]
    lines.append(format_table(("op", "result", "status", "what", "source"), rows))
    counts: dict[str, int] = defaultdict(int)
    for r in exp.rows:
        counts[r.status] += 1
    lines += ["", ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))]
    if exp.decompose:
        lines.append(f"kiln compile decomposes: {', '.join(exp.decompose)}")
    if not exp.ok:
        n = len(exp.unsupported) + len(exp.other_problems)
        lines += ["", f"{n} problem(s): the model cannot be compiled for '{exp.target}':"]
        lines += [Diagnostic(r.detail, op_name=r.op, hint=r.hint).format().replace(
            "error:", f"{r.source}: error:", 1) for r in exp.unsupported]
        lines += [d.format() for d in exp.other_problems]
    return "\n".join(lines)


def to_json(exp: Explanation) -> dict[str, Any]:
    return {"model": exp.model, "target": exp.target, "pipeline": exp.pipeline,
            "decompose": exp.decompose, "ops": [asdict(r) for r in exp.rows],
            "unsupported": len(exp.unsupported) + len(exp.other_problems),
            "problems": [d.format() for d in exp.other_problems], "ok": exp.ok}


def run(args: argparse.Namespace) -> int:
    from kiln.targets.target import get_target
    from kiln.tools.cli_model import load_source

    backend = get_target(args.target)
    with Progress(("load model", "explain"), quiet=args.quiet or args.json) as progress:
        with progress.stage(f"loading {args.model}"):
            source = load_source(args.model, tuple(args.input_shape or ()))
        options = backend.resolve_options(dict(args.option or []))
        pipeline = args.pipeline or backend.default_pipeline(options)
        with progress.stage("checking every op"):
            exp = explain_module(source.module, source.inputs, args.target, pipeline, options,
                                 auto_decompose=args.pipeline is None)
    if args.json:
        print_json(to_json(exp))
    else:
        print(render_text(exp))
    return 0 if exp.ok else 1


__all__ = ["Explanation", "OpRow", "explain_module", "plan_decompose", "render_text", "run",
           "to_json"]

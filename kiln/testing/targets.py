"""What the pass fuzzer runs: the targets (named pipelines, each pass with representative
options, a few combinations) and the inputs and calibration data each graph gets.

The tables are data, kept beside each other so that a new pass means one line here at most:
`PASS_OPTIONS` for a pass whose defaults miss interesting paths, `LOSSY_PASSES` for a pass that
changes numerics by design (quantization, fixed point, pruning), whose results are then checked
for crashes, valid IR and output shapes and dtypes, not values.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kiln.compiler.pipeline import format_pipeline, parse_pipeline
from kiln.compiler.pipelines import all_pipelines
from kiln.ir.graph import Module
from kiln.passes.registry import all_passes
from kiln.testing.differential import TOLERANCE, Outcome, Status
from kiln.testing.graphgen import random_inputs

PASS_OPTIONS: dict[str, tuple[str, ...]] = {
    "fold-constants": ("", "inline-limit=0", "max-elements=8"),
    "fold-batchnorm": ("", "scale-shift=false"),
    "decompose": ("", "ops=softmax|log_softmax|layer_norm|batch_norm",
                  "ops=gelu|silu|hardswish|hardsigmoid|clamp"),
    "fuse": ("", "max-ops=2", "epilogue=false", "elementwise=false,reductions=false"),
    "layout": ("to=nhwc", "to=nhwc,absorb-flatten=false", "to=nchw"),
    "quantize": ("", "per-channel=false,symmetric=true", "dtype=uint8,observer=percentile"),
    "fixed-point": ("", "policy=uniform,width=16,integer=6", "rounding=trn,saturation=wrap"),
    "prune": ("", "method=l1-channel", "scope=global,sparsity=0.9"),
    "sparsify": ("", "format=nm", "format=block,block=2x2", "enforce=true,min-sparsity=0.3"),
}
"""Option strings each pass is fuzzed with when run alone ("" = defaults). A registered pass
missing here runs with its defaults only; entries for passes not registered are ignored."""

LOSSY_PASSES: frozenset[str] = frozenset({
    "quantize", "fixed-point", "prune", "prune-channels",
})
"""Passes whose results differ from the float model by design: a target that runs one is
checked for crashes, valid IR, and output shapes and dtypes only."""
LOSSY_OPTIONS: dict[str, str] = {"sparsify": "enforce=true"}
"""Passes that are lossy with an option (`sparsify{enforce=true}` prunes to its pattern)."""

MAY_REFUSE: frozenset[str] = frozenset({"sparsify"})
"""Passes documented to stop with a `KilnError` on some valid modules (`sparsify{format=nm}` on a
weight whose reduction length `m` does not divide): their refusals are counted, not failed."""

COMBINATIONS: tuple[str, ...] = (
    "decompose,default",
    "decompose,fuse",
    "fold-batchnorm,layout{to=nhwc},default",
    "layout{to=nhwc},fuse,default",
    "fuse,default,fuse",
    "layout{to=nhwc},layout{to=nchw},default",
    "fold-batchnorm,quantize,default",
)
"""Pass sequences fuzzed besides the named pipelines (each runs when all its passes exist):
passes meeting IR that only other passes produce (fused regions, NHWC twins, decompositions,
integer ops)."""

SPECIAL_EVERY = 4
SPECIAL_FRACTION = 0.05
"""Every `SPECIAL_EVERY`-th fuzzed graph gets `SPECIAL_FRACTION` of its input elements replaced
by NaN / +inf / -inf, so that NaN propagation and infinities are compared too."""
INPUT_SEED_OFFSET = 1_000_003
"""Inputs come from another random stream than the one the generator built the graph with."""
CALIBRATION_BATCHES = 2


@dataclass(frozen=True)
class Target:
    """A pipeline string to fuzz, its tolerance (None: lossy by design, structure only), and
    the named pipelines that expand to the same passes."""

    pipeline: str
    tolerance: float | None = TOLERANCE
    aliases: tuple[str, ...] = ()
    may_refuse: bool = False

    @property
    def label(self) -> str:
        return f"{self.pipeline} (= {', '.join(self.aliases)})" if self.aliases else \
            self.pipeline

    def judge(self, outcome: Outcome, elided: bool = False) -> Status:
        """The outcome's status, a refusal turned into a crash unless this target may refuse
        (or the weights were elided, which calibrating and folding passes may refuse)."""
        if outcome.status == "refused" and not (elided or self.may_refuse):
            return "crash"
        return outcome.status


def fuzz_targets() -> list[Target]:
    """Every named pipeline, every registered pass alone with each of its option sets, and the
    `COMBINATIONS` whose passes exist; a target that expands to the passes of an earlier one
    becomes its alias (`cpu = default`) instead of being fuzzed twice."""
    passes = all_passes()
    candidates = list(all_pipelines())
    candidates.remove("default")
    candidates.insert(0, "default")
    for name in passes:
        candidates += [f"{name}{{{o}}}" if o else name for o in PASS_OPTIONS.get(name, ("",))]
    candidates += [c for c in COMBINATIONS if all(
        step.split("{")[0] in passes or step == "default" for step in c.split(","))]
    found: dict[str, list[str]] = {}
    for candidate in candidates:
        expanded = format_pipeline(parse_pipeline(candidate))  # stale options raise here
        found.setdefault(expanded, []).append(candidate)
    return [_target(names[0], tuple(names[1:])) for names in found.values()]


def _target(pipeline: str, aliases: tuple[str, ...]) -> Target:
    steps = parse_pipeline(pipeline)
    lossy = any(step.name in LOSSY_PASSES or LOSSY_OPTIONS.get(step.name, "\0") in str(step)
                for step in steps)
    refuse = any(step.name in MAY_REFUSE for step in steps)
    return Target(pipeline, None if lossy else TOLERANCE, aliases, may_refuse=refuse)


def fuzz_inputs(module: Module, seed: int) -> list[np.ndarray]:
    """The inputs the fuzzers use for graph `seed` (special values for every 4th graph)."""
    special = SPECIAL_FRACTION if seed % SPECIAL_EVERY == SPECIAL_EVERY - 1 else 0.0
    return random_inputs(module, seed + INPUT_SEED_OFFSET, special=special)


def fuzz_calibration(module: Module, seed: int) -> list[tuple[np.ndarray, ...]]:
    """Calibration batches for passes that need them (finite values, other random streams)."""
    return [tuple(random_inputs(module, seed + (k + 2) * INPUT_SEED_OFFSET))
            for k in range(CALIBRATION_BATCHES)]

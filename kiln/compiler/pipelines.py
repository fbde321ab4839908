"""Named pipelines: a name that stands for a pipeline string and expands where it appears.

`"default,my-pass"` runs the default pipeline, then `my-pass`. Targets register their own
(`register_pipeline("cpu", "default,fuse,...")`). A name may not be both a pass and a pipeline.
"""

from __future__ import annotations

from kiln.errors import PipelineError

_PIPELINES: dict[str, str] = {
    "cleanup": "canonicalize,fold-constants,cse,dce",
    "default": "canonicalize,fold-batchnorm,fold-constants,cse,fuse,cse,dce",
    # Per-target pipelines: `kiln.compile(model, target=T)` runs pipeline T. They start as the
    # default and grow target-specific steps (layout, decompose, quantization) with the targets.
    "cpu": "default",
    "gpu": "default",
    # fpga: graph passes without fusion (the HLS emitter lowers op by op); the target's build
    # runs fixed-point at its `precision`, calibrated on calibration_data or the example inputs.
    "fpga": "canonicalize,fold-batchnorm,fold-constants,cse,dce",
    "asic": "default",
}


def register_pipeline(name: str, pipeline: str) -> None:
    """Give `pipeline` a name usable inside other pipeline strings; names are unique."""
    from kiln.passes.registry import lookup_pass

    if name in _PIPELINES:
        raise PipelineError(f"pipeline '{name}' is already registered")
    if lookup_pass(name) is not None:
        raise PipelineError(f"'{name}' is a pass name; a pipeline cannot take it")
    _PIPELINES[name] = pipeline


def lookup_pipeline(name: str) -> str | None:
    """The pipeline string registered under `name`, or None."""
    return _PIPELINES.get(name)


def all_pipelines() -> dict[str, str]:
    """Every named pipeline, sorted by name."""
    return dict(sorted(_PIPELINES.items()))

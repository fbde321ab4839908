"""Per-target capability queries for `kiln explain`: what an op becomes, and what cannot compile.

Each query reads the target's own table and runs the target's own up-front check; nothing here
restates which op a target supports:
- cpu: `kiln.codegen.c.kernels` (`KERNELS`, `ALIASES`, and `unsupported`, the check the cpu
  build runs before writing any C);
- gpu: `kiln.codegen.triton.support` (`family`, and `check_supported`, run by the gpu build);
- fpga / asic: `kiln.codegen.hls.layers` (`KINDS`, and `lower`, which names every op without
  an HLS layer) on the fixed-point module the target's build would make (`fpga.to_fixed`,
  calibrated on the example inputs);
- tvm: `kiln.targets.tvm_lower.problems` (non-fp32 ops, ops without a Relax rule);
- reference: the interpreter runs every op.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from kiln.errors import Diagnostic, KilnError
from kiln.ir.graph import Module, Op

Options = Mapping[str, Any]
"""The target's resolved options (`Target.resolve_options`)."""


def _same(module: Module, inputs: tuple[Any, ...], options: Options) -> Module:
    return module


@dataclass(frozen=True)
class TargetSupport:
    """How one target handles ops.

    `view(module, inputs, options)` is the module the target's checks read (the pipeline's
    output; fpga/asic: its fixed-point form), `problems(view, options)` every op of it the
    target cannot compile, `describe(op, view)` what a supported op of the pipeline's output
    becomes."""

    name: str
    describe: Callable[[Op, Module], str]
    problems: Callable[[Module, Options], list[Diagnostic]]
    view: Callable[[Module, tuple[Any, ...], Options], Module] = _same

    def check(self, module: Module, inputs: tuple[Any, ...],
              options: Options) -> list[Diagnostic]:
        """Every problem of the pipeline's output `module`."""
        return self.problems(self.view(module, inputs, options), options)


def _kernel_name(function: Callable[..., Any]) -> str:
    name = function.__name__.removeprefix("emit_").removesuffix("_op")
    return {"emit": "pool", "pointwise": "elementwise"}.get(name, name)


def _cpu_describe(op: Op, view: Module) -> str:
    from kiln.codegen.c import kernels

    cls = type(op.kind)
    if op.region is not None:
        return "one fused C kernel"
    if cls in kernels.KERNELS:
        return f"C kernel: {_kernel_name(kernels.KERNELS[cls])}"
    if issubclass(cls, kernels.ALIASES):
        return "a view of its operand (no code)"
    return "handled by the C emitter"


def _cpu_problems(module: Module, options: Options) -> list[Diagnostic]:
    from kiln.codegen.c.kernels import unsupported
    return unsupported(module)


def _gpu_describe(op: Op, view: Module) -> str:
    from kiln.codegen.triton.support import family, group_family

    kind = group_family(op) if op.region is not None else family(op)
    return "a view of its operand (no kernel)" if kind == "alias" else f"Triton {kind} kernel"


def _gpu_problems(module: Module, options: Options) -> list[Diagnostic]:
    from kiln.codegen.triton.support import check_supported
    try:
        check_supported(module.main)
    except KilnError as exc:
        return [d for d in exc.diagnostics if d.op_name is not None] or exc.diagnostics
    return []


_BOOKKEEPING = ("kiln.quantize", "kiln.dequantize", "kiln.requantize", "kiln.weight",
                "kiln.constant", "kiln.return")


def _is_fixed(op: Op) -> bool:
    from kiln.ir.types import FixedType
    return any(isinstance(r.type.dtype, FixedType) for r in op.results)


def _hls_view(module: Module, inputs: tuple[Any, ...], options: Options) -> Module:
    """The fixed-point module the fpga/asic build makes (calibrated on the example inputs)."""
    from kiln.targets.fpga import to_fixed
    return to_fixed(module, {**options, "example_inputs": inputs, "calibration_data": None})


def _hls_describe(op: Op, view: Module) -> str:
    """The HLS layers the fixed-point ops at `op`'s location become, else the host tail."""
    from kiln.codegen.hls.layers import KINDS

    at = [o for o in view.main.ops if o.loc == op.loc and o.name not in _BOOKKEEPING]
    kinds = [KINDS[o.name] for o in at if o.name in KINDS and _is_fixed(o)]
    if not kinds:
        return "runs on the host after the HLS core (float tail)"
    if set(kinds) == {"flatten"}:
        return "wiring, no hardware"
    return "HLS layer: " + ", ".join(dict.fromkeys(k for k in kinds if k != "flatten"))


def _hls_problems(fixed: Module, options: Options) -> list[Diagnostic]:
    """`lower`'s diagnostics, plus every fixed-point op without an HLS layer that `lower`
    skipped because an earlier float island already failed (all problems at once)."""
    from kiln.codegen.hls.layers import KINDS, lower

    found: list[Diagnostic] = []
    try:
        lower(fixed, 1, str(options.get("io") or "parallel"))
    except KilnError as exc:
        found = list(exc.diagnostics)
    seen = {(d.op_name, d.loc) for d in found}
    for op in fixed.main.ops:
        if (op.name not in KINDS and op.name not in _BOOKKEEPING
                and (op.name, op.loc) not in seen and _is_fixed(op)):
            found.append(op.diagnostic(
                "has no HLS implementation (fixed-point layers supported: "
                f"{', '.join(sorted(KINDS))})", "replace the op, or keep it in the float tail "
                "after the last layer"))
    return found


def _no_problems(module: Module, options: Options) -> list[Diagnostic]:
    return []


def _tvm_problems(module: Module, options: Options) -> list[Diagnostic]:
    """Ops on non-fp32 tensors and ops without a Relax rule (`kiln.targets.tvm_lower`)."""
    from kiln.targets.tvm_lower import problems
    typed, missing = problems(module)
    return [*typed, *missing]


SUPPORT: dict[str, TargetSupport] = {
    "cpu": TargetSupport("cpu", _cpu_describe, _cpu_problems),
    "gpu": TargetSupport("gpu", _gpu_describe, _gpu_problems),
    "fpga": TargetSupport("fpga", _hls_describe, _hls_problems, _hls_view),
    "asic": TargetSupport("asic", _hls_describe, _hls_problems, _hls_view),
    "reference": TargetSupport("reference", lambda op, view: "NumPy reference interpreter",
                               _no_problems),
    "tvm": TargetSupport("tvm", lambda op, view: "lowered to TVM Relax (TVM fuses and schedules)",
                         _tvm_problems),
}
"""Target name → its queries (a target missing here is explained as the reference)."""


def support_for(target: str) -> TargetSupport:
    from kiln.targets.target import get_target

    get_target(target)  # an unknown target is a KilnError naming the valid ones
    return SUPPORT.get(target, SUPPORT["reference"])


__all__ = ["SUPPORT", "TargetSupport", "support_for"]

"""The gpu target in the cross-target fuzzer: Triton kernels (the interpreter on a CPU machine).

Importing this module imports `kiln.targets.gpu` first, which decides how Triton runs before
anything (PyTorch tracing included) imports Triton: import it before `torchgen` traces.
Each case runs the `gpu` pipeline, the support check (which may refuse), generation, loading
and a run; nothing after the support check may raise. Outputs are compared with the
interpreter on the float model (`FP32_TOLERANCE`). The kernels run in this process: Triton's
interpreter computes in NumPy, which cannot take the process down.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

from kiln.codegen.triton.support import check_supported
from kiln.compiler.pass_manager import PassManager
from kiln.errors import KilnError
from kiln.targets import gpu
from kiln.testing.differential import first_line, run_quietly
from kiln.testing.xtarget import FP32_TOLERANCE, Case, Result, judge


class GpuRunner:
    """The gpu target at fp32, one case at a time (nothing to batch: no compiler runs)."""

    name = "gpu"

    def run_batch(self, cases: Sequence[Case]) -> list[Result | None]:
        return [self.run_one(case) for case in cases]

    def run_one(self, case: Case) -> Result:
        try:
            module = PassManager("gpu", reproducer=False).run(case.module).module
        except Exception as exc:  # a pass crashing: the pipelines runner names it
            return Result(self.name, "crash", "pipeline: " + first_line(exc))
        try:
            check_supported(module.main)
        except KilnError as exc:
            return Result(self.name, "refused", first_line(exc))
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                art = gpu.build(module, {"dtype": "fp32"})
                got = art.run(*case.inputs)
            want = run_quietly(case.module, case.inputs)
        except Exception as exc:  # the support check passed: anything now is a bug
            return Result(self.name, "crash", first_line(exc))
        return judge(self.name, want, got, FP32_TOLERANCE)

"""The cpu target in the cross-target fuzzer: many models, one gcc run, one shared library.

Every case runs the target's pipeline (`cpu`, or `INT8_PIPELINE` calibrated on the case's
batches) and the C code generator; the support check (`check_supported`) may refuse, nothing
after it may. The batch's models are compiled by one gcc invocation into one library (each
model's API carries its own prefix, `<model>_run_with`; each model is its own translation unit,
so their static kernels never meet), at `-O1` to keep builds quick. When gcc fails, the batch
is bisected to the models whose code it rejects; the library runs in a forked child
(`xtarget_batch`), bisected likewise when the child dies. fp32 outputs are compared with the
interpreter on the float model (`FP32_TOLERANCE`), int8 outputs with the interpreter on the
quantized IR, bit for bit.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kiln.codegen.c import COptions, CProgram, lower
from kiln.codegen.c.emitter import runtime_sources
from kiln.codegen.c.kernels import check_supported
from kiln.compiler.pass_manager import PassManager
from kiln.errors import KilnError
from kiln.ir.graph import Module
from kiln.targets.cache import cache_key
from kiln.targets.cpu import INT8_PIPELINE, CpuArtifact, CpuOptions
from kiln.targets.toolchains import gcc
from kiln.testing.differential import failed, first_line, run_quietly
from kiln.testing.xtarget import FP32_TOLERANCE, Case, Refused, Result, failure, judge
from kiln.testing.xtarget_batch import BatchedRunner, in_child

FUZZ_OPT = "-O1"
"""Optimization level of fuzzing builds (generated code must be right at any level)."""


@dataclass
class _Ready:
    """A case lowered to C, waiting for the batch build."""

    index: int
    module: Module
    program: CProgram
    want: list[np.ndarray]


QUANT_FAMILIES = ("kiln.ir.ops.quant", "kiln.ir.ops.qnn", "kiln.ir.ops.qnn_pool")
PURE_OPS = ("kiln.weight", "kiln.constant", "kiln.return", "kiln.reshape", "kiln.flatten",
            "kiln.squeeze", "kiln.unsqueeze", "kiln.identity", "kiln.dropout",
            "kiln.max_pool1d", "kiln.max_pool2d")


def integer_only(module: Module) -> bool:
    """Whether every computing op of `module` is a quantization or integer op (a float op
    anywhere, which C computes within fp32 rounding rather than bit for bit, can move a value
    across a rounding boundary of a later quantize: such models get `FP32_TOLERANCE`)."""
    return any(type(op.kind).__module__ in QUANT_FAMILIES for op in module.main.ops) and all(
        op.name in PURE_OPS or type(op.kind).__module__ in QUANT_FAMILIES
        for op in module.main.ops)


class CpuRunner(BatchedRunner):
    """The cpu target, fp32 (`int8=False`) or `quantize="int8"`, on batches of cases."""

    def __init__(self, work: Path, *, int8: bool = False, opt: str = FUZZ_OPT) -> None:
        super().__init__()
        self.name = "cpu-int8" if int8 else "cpu"
        self.int8 = int8
        self.work = work / self.name
        self.work.mkdir(parents=True, exist_ok=True)
        self.toolchain = gcc.find("gcc")
        self.options = COptions(gcc.vector_width(self.toolchain, "native"), 1, None)
        self.flags = [opt if f == "-O3" else f for f in gcc.flags("native", 1, False)]
        self.cpu_options = CpuOptions.of({})
        self.builds = 0
        self._runtime: list[Path] | None = None

    # -- per case ------------------------------------------------------------------------------
    def prepare(self, index: int, case: Case) -> _Ready | Result:
        try:
            module = self.pipeline(case)
            check_supported(module)
        except Refused as exc:
            return failure(self.name, exc)
        except KilnError as exc:
            return Result(self.name, "refused", first_line(exc))
        except Exception as exc:  # a pass crashing: the pipelines runner names it
            return failure(self.name, exc)
        try:
            program = lower(module, self.options)
            want = run_quietly(module if self.int8 else case.module, case.inputs)
        except Exception as exc:  # the check passed: refusing now is a bug too
            return Result(self.name, "crash", "lowering: " + first_line(exc))
        return _Ready(index, module, program, want)

    def pipeline(self, case: Case) -> Module:
        if not self.int8:
            return PassManager("cpu", reproducer=False).run(case.module).module
        try:
            return PassManager(INT8_PIPELINE, reproducer=False,
                               calibration_data=list(case.calibration)).run(case.module).module
        except Exception as exc:
            outcome = failed(exc)
            if outcome.status == "refused":
                raise Refused(outcome.detail) from None
            raise

    # -- per batch (the loop: BatchedRunner.run_batch) -------------------------------------
    def judge(self, item: _Ready, outs: list[np.ndarray] | str, case: Case) -> Result:
        if isinstance(outs, str):
            return Result(self.name, "crash", outs)
        exact = self.int8 and integer_only(item.module)
        result = judge(self.name, item.want, outs, 0.0 if exact else FP32_TOLERANCE)
        return Result(self.name, "ok", "bit-exact") if exact and result.status == "ok" \
            else result

    def write(self, folder: Path, ready: Sequence[_Ready]) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        for name, text in ready[0].program.sources.items():
            if name.startswith("kiln_"):
                (folder / name).write_text(text)
        for item in ready:
            sub = folder / f"m{item.index}"
            sub.mkdir(exist_ok=True)
            for name in ("model.c", "model.h"):
                (sub / name).write_text(item.program.sources[name])
            (folder / f"m{item.index}.c").write_text(f'#include "m{item.index}/model.c"\n')

    def runtime(self, folder: Path, program: CProgram) -> list[Path]:
        """The runtime's objects, built once per work folder and flags (fp32 and int8 runners
        share them: the sources never change within a process)."""
        if self._runtime is None:
            root = self.work.parent / f"runtime-{cache_key(*self.flags)[:12]}"
            done = root / "DONE"
            # every runtime file, not only those this program links: the group's models
            # may call into others
            files = {**runtime_sources(), **{n: t for n, t in program.sources.items()
                                             if n.startswith("kiln_")}}
            sources = sorted(n for n in files if n.endswith(".c"))
            if not done.exists():
                root.mkdir(exist_ok=True)
                for name, text in files.items():
                    (root / name).write_text(text)
                gcc.compile_objects(self.toolchain, root, sources, self.flags)
                done.write_text("")
            self._runtime = [root / (Path(n).stem + ".o") for n in sources]
        return self._runtime

    def build(self, folder: Path, group: Sequence[_Ready]) -> Path:
        """One shared library of `group` (raises `CompileError` when gcc rejects it)."""
        self.builds += 1
        tag = f"lib{group[0].index}_{group[-1].index}_{len(group)}"
        (folder / tag).mkdir(exist_ok=True)
        sources = [f"m{item.index}.c" for item in group]
        objects = [str(p) for p in self.runtime(folder, group[0].program)]
        gcc.compile_c(self.toolchain, folder, [*sources, *objects], f"{tag}/libmodel.so",
                      [*self.flags, "-I."], shared=True, log_name=f"{tag}.log")
        return folder / tag

    def execute(self, lib: Path, group: Sequence[_Ready], cases: Sequence[Case]
                ) -> list[list[np.ndarray] | str]:
        """Every model of `group` run from `lib` in a forked child (`ChildDied` if it dies)."""
        def work() -> list[list[np.ndarray] | str]:
            answers: list[list[np.ndarray] | str] = []
            for item in group:
                try:
                    art = CpuArtifact(item.module, item.program, lib, self.cpu_options,
                                      self.toolchain, self.flags, False, 0.0)
                    answers.append(art.run(*cases[item.index].inputs))
                except Exception as exc:  # reported per model, as a crash
                    answers.append("running: " + first_line(exc))
            return answers
        answer: list[list[np.ndarray] | str] = in_child(work)
        return answer

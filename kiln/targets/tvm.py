"""The `tvm` target: kiln's optimized fp32 IR lowered to TVM Relax and built by TVM.

For users who want TVM's backends and tuning after kiln's graph passes:
`kiln.compile(model, example_inputs, target="tvm", device="llvm"|"cuda", opt_level=3,
mcpu="native")` runs kiln's default pipeline, lowers the IR with `tvm_lower.lower` (one Relax
function "main", weights as constants), builds it with `tvm.compile` under TVM's default
pipeline for the device (LLVM for CPUs; on CUDA TVM's default GPU schedules), and runs it in
Relax's virtual machine. `report()` names kiln's and TVM's versions and the TVM target string;
`export(dir)` writes the built library (`model.so`, loadable with `tvm.runtime.load_module`),
the Relax text and a small loader script.

The kernels are TVM's untuned defaults (Relax `LegalizeOps` → TIR → LLVM), several times slower
than the cpu target's hand-written ones (`bench/tvm.py`); MetaSchedule tuning, TVM's answer to
that, is not wired in (it needs psutil and xgboost besides TVM).

TVM is optional (`pip install "kiln[tvm]"`): this module imports it only inside `build`, so kiln
itself never loads TVM unless this target is used, and a missing TVM is a clear `KilnError`.
The CPU thread count is TVM's own (its runtime reads `TVM_NUM_THREADS`; kiln sets nothing).
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np

from kiln.errors import KilnError
from kiln.ir.graph import Module
from kiln.targets.cache import atomic_write
from kiln.targets.target import Target

if TYPE_CHECKING:
    from kiln.targets.tvm_lower import Lowered

OPTIONS: dict[str, Any] = {"device": "llvm", "opt_level": 3, "mcpu": "native"}
DEVICES = ("llvm", "cuda")
_INSTALL = 'pip install "kiln[tvm]"  (Apache TVM: apache-tvm==0.27.0.post1)'


@dataclass(frozen=True)
class TvmOptions:
    """`device`: "llvm" (CPU) or "cuda"; `opt_level`: TVM's 0..3; `mcpu`: "native" (the
    host CPU as TVM's LLVM names it), None (generic) or an LLVM CPU name (e.g. "skylake")."""

    device: str
    opt_level: int
    mcpu: str | None

    @staticmethod
    def of(options: Mapping[str, Any]) -> TvmOptions:
        device = options.get("device", "llvm")
        if device not in DEVICES:
            raise KilnError(f"target tvm has no device {device!r}",
                            hint=f"use one of: {', '.join(DEVICES)}")
        level = options.get("opt_level", 3)
        if not isinstance(level, int) or isinstance(level, bool) or not 0 <= level <= 3:
            raise KilnError(f"opt_level must be an integer from 0 to 3, got {level!r}")
        mcpu = options.get("mcpu", "native")
        if mcpu is not None and not (isinstance(mcpu, str) and mcpu.replace("-", "").isalnum()):
            raise KilnError(f"mcpu={mcpu!r} is not an LLVM CPU name",
                            hint='use "native", None (generic) or a name such as "skylake"')
        return TvmOptions(device, level, mcpu)


def import_tvm() -> ModuleType:
    """`tvm`, or a `KilnError` that says how to install it."""
    try:
        import tvm
        from tvm import relax  # noqa: F401  (fails on builds without Relax)
    except ImportError as exc:
        raise KilnError(f"target tvm needs Apache TVM, which cannot be imported ({exc})",
                        hint=_INSTALL) from exc
    return tvm


def _host_target(tvm: ModuleType, mcpu: str | None) -> Any:
    """The LLVM target for this CPU; an unknown explicit `mcpu` is an error, an unknown
    detected one falls back to generic code (TVM's LLVM may predate the host CPU)."""
    codegen = tvm.target.codegen
    triple = codegen.llvm_get_system_triple()
    if mcpu is None:
        return tvm.target.Target({"kind": "llvm"})
    name = codegen.llvm_get_system_cpu() if mcpu == "native" else mcpu
    if not codegen.llvm_is_valid_cpu(name, triple):
        if mcpu != "native":
            raise KilnError(f"mcpu={mcpu!r} is unknown to TVM's LLVM "
                            f"{codegen.llvm_version_major()} (triple {triple})",
                            hint='use "native", None (generic) or a CPU LLVM knows')
        return tvm.target.Target({"kind": "llvm"})
    return tvm.target.Target({"kind": "llvm", "mcpu": name})


def make_target(tvm: ModuleType, options: TvmOptions) -> tuple[Any, Any]:
    """(TVM target, TVM device) for the options; CUDA without a visible GPU is an error."""
    if options.device == "llvm":
        return _host_target(tvm, options.mcpu), tvm.cpu(0)
    device = tvm.cuda(0)
    if not device.exist:
        raise KilnError("target tvm was asked for device='cuda', but TVM sees no CUDA GPU",
                        hint="run on a machine with an NVIDIA GPU and driver (and a TVM built "
                             "with CUDA), or use device='llvm' for the CPU")
    arch = "sm_" + device.compute_version.replace(".", "")
    host = _host_target(tvm, options.mcpu)
    return tvm.target.Target({"kind": "cuda", "arch": arch}, host=host), device


def _aligned(shape: tuple[int, ...]) -> np.ndarray:
    """A zeroed, 64-byte-aligned float32 array (TVM wraps only aligned memory without a copy)."""
    raw = np.zeros(4 * math.prod(shape) + 64, np.uint8)
    start = (-raw.ctypes.data) % 64
    return raw[start:start + 4 * math.prod(shape)].view(np.float32).reshape(shape)


class TvmArtifact:
    """A built Relax executable loaded into a virtual machine on its device.

    On the CPU, inputs are copied into aligned staging arrays that TVM sees through DLPack
    (wrapped once), and outputs are copied out of TVM's tensors through DLPack: a call costs
    the VM's own overhead plus two memcpys (`tvm.runtime.tensor` per call would add ~0.1 ms,
    more than a small model's whole compute). A lock guards the staging arrays.
    """

    def __init__(self, module: Module, lowered: Lowered, executable: Any, target: Any,
                 device: Any, options: TvmOptions, build_started: float, tvm: ModuleType) -> None:
        self.module = module
        self.lowered = lowered
        self.executable = executable
        self.target = target
        self.device = device
        self.options = options
        self._tvm = tvm
        self._vm = tvm.relax.VirtualMachine(executable, device)
        self._main = self._vm["main"]
        self.files: dict[str, str] = {"model.relax.py": lowered.mod.script(show_meta=False)}
        self._lock = threading.Lock()
        self._stages = [_aligned(shape) for _, shape in lowered.inputs]
        self._staged = ([tvm.runtime.from_dlpack(s) for s in self._stages]
                        if options.device == "llvm" else None)
        self.build_seconds = time.perf_counter() - build_started
        """`tvm.compile` and loading into the VM (where LLVM generates machine code)."""

    def run(self, *inputs: Any) -> list[np.ndarray]:
        arrays = self._check(inputs)
        if self._staged is None:  # a GPU: TVM copies host → device
            return self._outputs(self._main(*[self._tvm.runtime.tensor(x, self.device)
                                              for x in arrays]))
        with self._lock:
            for stage, x in zip(self._stages, arrays):
                stage[...] = x
            return self._outputs(self._main(*self._staged))

    def _outputs(self, out: Any) -> list[np.ndarray]:
        """NumPy copies of the VM's result (a tensor, or a tuple of them)."""
        outs = [out] if len(self.lowered.outputs) == 1 else list(out)
        if self._staged is None:
            return [o.numpy() for o in outs]
        return [np.from_dlpack(o).copy() for o in outs]

    def _check(self, inputs: tuple[Any, ...]) -> list[np.ndarray]:
        """Count, dtype and shape against the static signature, each a clear error."""
        want = self.lowered.inputs
        if len(inputs) != len(want):
            names = ", ".join(f"{n} {list(s)}" for n, s in want)
            raise KilnError(f"model '{self.module.name}' takes {len(want)} input(s) ({names}), "
                            f"got {len(inputs)}")
        arrays = []
        for i, (x, (name, shape)) in enumerate(zip(inputs, want)):
            x = np.asarray(x)
            label = f"input {i} ({name}) of model '{self.module.name}'"
            if x.dtype != np.float32:
                raise KilnError(f"{label} has dtype {x.dtype}, expected float32 {list(shape)}",
                                hint="convert it: x.astype(np.float32) / tensor.float()")
            if x.shape != shape:
                raise KilnError(f"{label} has shape {list(x.shape)}, expected {list(shape)}",
                                hint="the model was compiled for static shapes; compile again "
                                     "with example inputs of the new shape")
            arrays.append(x)
        return arrays

    def report(self) -> dict[str, Any]:
        import kiln

        return {
            "runtime": f"TVM Relax VM ({self.options.device})",
            "kiln_version": kiln.__version__,
            "tvm_version": self._tvm.__version__,
            "tvm_target": str(self.target),
            "device": self.options.device,
            "opt_level": self.options.opt_level,
            "llvm_version": int(self._tvm.target.codegen.llvm_version_major()),
            "tvm_threads": int(self._tvm.runtime.num_threads()),
            "ops_lowered": dict(sorted(self.lowered.op_counts.items())),
            "fused_regions_inlined": self.lowered.fused_inlined,
            "build_seconds": round(self.build_seconds, 4),
        }

    def export(self, directory: Path) -> Path:
        """`model.so` (TVM library, weights inside), `model.relax.py`, `signature.json` and
        `run_model.py` (loads the library into a Relax VM and runs random inputs)."""
        directory.mkdir(parents=True, exist_ok=True)
        self.executable.export_library(str(directory / "model.so"))
        for name, text in self.files.items():
            atomic_write(directory / name, text)
        signature = {"inputs": [{"name": n, "shape": list(s), "dtype": "float32"}
                                for n, s in self.lowered.inputs],
                     "outputs": [{"shape": list(s), "dtype": "float32"}
                                 for s in self.lowered.outputs],
                     "device": self.options.device, "tvm_target": str(self.target)}
        atomic_write(directory / "signature.json", json.dumps(signature, indent=2) + "\n")
        atomic_write(directory / "run_model.py", _RUNNER)
        return directory


_RUNNER = '''"""Load model.so into TVM's Relax VM, run it on random inputs (signature.json)."""
import json
import pathlib

import numpy as np
import tvm
from tvm import relax

here = pathlib.Path(__file__).parent
sig = json.loads((here / "signature.json").read_text())
dev = tvm.cpu(0) if sig["device"] == "llvm" else tvm.cuda(0)
vm = relax.VirtualMachine(tvm.runtime.load_module(str(here / "model.so")), dev)
inputs = [np.random.default_rng().standard_normal(i["shape"]).astype("float32")
          for i in sig["inputs"]]
out = vm["main"](*[tvm.runtime.tensor(x, dev) for x in inputs])
print(out if len(sig["outputs"]) > 1 else out.numpy())
'''


def _last_line(exc: Exception) -> str:
    """The useful part of a TVM error (its message ends a long C++ backtrace)."""
    lines = [line for line in str(exc).strip().splitlines() if line.strip()]
    return (lines[-1] if lines else type(exc).__name__)[:500]


def build(module: Module, options: Mapping[str, Any]) -> TvmArtifact:
    """Lower `module` to Relax, build it for the device, and load it."""
    opts = TvmOptions.of(options)
    tvm = import_tvm()
    from kiln.targets.tvm_lower import lower

    target, device = make_target(tvm, opts)
    lowered = lower(module)
    start = time.perf_counter()
    try:  # TVM raises builtin exception types (ValueError, RuntimeError, its InternalError)
        with tvm.transform.PassContext(opt_level=opts.opt_level):
            executable = tvm.compile(lowered.mod, target=target)
        artifact = TvmArtifact(module, lowered, executable, target, device, opts, start, tvm)
    except Exception as exc:
        raise KilnError(f"TVM failed to build @{module.name} for {target}",
                        hint=_last_line(exc)) from exc
    return artifact


TARGET = Target(name="tvm", description="TVM Relax, built by Apache TVM (llvm or cuda)",
                pipeline="default", build=build, options=OPTIONS)

"""The `cpu` target: generated C99 built with gcc into a cached shared library, run via ctypes.

`build` generates the C library (`kiln.codegen.c.lower`), compiles `model.c` into
`libmodel.so` inside the content-addressed build cache (key: sources, flags, compiler version,
so a second compile of the same model calls no compiler), and loads it. It links only the
runtime objects its code calls into (`codegen/c/runtime_deps.py`), each cached on its own, so
a cold build compiles only those (ResNet-8: half of the runtime's files). The weights stay in
Python memory (a 64-byte-aligned copy of the blob) and are passed to `<m>_run_with` on every
call, so one cached library serves any weights of the same architecture.

The call path is kept thin (the issue asks for ≤ 0.5× onnxruntime's latency on tiny models):
inputs are checked against the static signature (count, dtype, shape, contiguity: each a clear
`KilnError`), small tensors go through preallocated staging buffers whose pointers are
computed once, and the foreign call takes ready-made `c_void_p` arguments. A lock makes
concurrent calls on one artifact safe (they share the arena).

`quantize="int8"` compiles with `INT8_PIPELINE` (the quantize pass, calibrated on
`calibration_data` or else the example inputs): the integer ops run as int8 kernels
(`codegen/c/emit_qnn.py`), bit-exact with `kiln.interpret` on `art.ir`; their integer weights are
compiled into the library (the weights blob holds float32 only).

`sparse="auto"` (the default) runs the `sparsify` pass before fusion, so weights that are
already mostly zero (pruned in PyTorch, or by a `prune` pass) get a csr encoding, and compiles
every encoded linear/conv layer with a sparse kernel where the cost rule of
`codegen/c/emit_sparse.py` says it is faster than the dense one (`report()["kernels"]` says
which, per layer); `sparse="off"` compiles every layer densely.

With `sanitize=True` the model is built as the example program with AddressSanitizer and
UBSan and every call runs it as a subprocess (a sanitized library cannot be loaded into
Python without preloading the sanitizer runtime); any sanitizer report is a `KilnError`.
"""

from __future__ import annotations

import ctypes
import math
import os
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from kiln.codegen.c import COptions, CProgram, lower
from kiln.codegen.c.emitter import flops
from kiln.codegen.c.kernels import check_supported
from kiln.codegen.c.options import PARALLEL_MIN_FLOPS
from kiln.errors import KilnError
from kiln.ir.graph import Module
from kiln.targets.cache import BuildCache, atomic_write, cache_key
from kiln.targets.target import Target
from kiln.targets.toolchains import gcc

OPTIONS: dict[str, Any] = {"threads": 1, "march": "native", "cache_dir": None,
                           "sanitize": False, "const_weights": None, "cc": "gcc",
                           "quantize": None, "max_arena_bytes": None, "sparse": "auto",
                           "parallel_min_flops": PARALLEL_MIN_FLOPS, "winograd": True}
STAGING_BYTES = 64 * 1024
"""Tensors up to this size are copied through preallocated buffers (cheaper than asking NumPy
for a fresh pointer on every call); larger ones are passed in place."""
_F32 = np.dtype(np.float32)
_CACHE_FORMAT = "kiln-cpu-2"
"""Part of every cache key; 2: runtime objects cached one per source, linked per model."""
LINK_FLAGS = ("-Wl,--no-undefined",)
"""A model library links only the runtime objects its code calls into: a function missing
from that selection is a link error here, not a failure to load it later."""


@dataclass(frozen=True)
class CpuOptions:
    threads: int
    march: str
    cache_dir: str | None
    sanitize: bool
    const_weights: bool | None
    cc: str
    max_arena_bytes: int | None = None
    """The most activation memory (one arena, `report()["arena_bytes"]`) a model may plan;
    a larger plan is a `KilnError` before any compiler runs. None: no limit."""
    sparse: str = "auto"
    """`auto`: sparse kernels for encoded weights where faster; `off`: dense kernels only;
    `always`: sparse kernels regardless of the cost rule (benchmarks, tests)."""
    parallel_min_flops: int = PARALLEL_MIN_FLOPS
    """With threads > 1: the least work (FLOPs, or FLOP-equivalents of an elementwise pass) of
    one OpenMP parallel region; smaller loops run serially (default
    `kiln.codegen.c.options.PARALLEL_MIN_FLOPS`); 0: every loop that can run in parallel."""
    winograd: bool = True
    """3x3 stride-1 convs run Winograd where `winograd_anchor.winograd_tile` says it is faster;
    False: the implicit GEMM everywhere (A/B runs)."""

    @staticmethod
    def of(options: Mapping[str, Any]) -> CpuOptions:
        threads = options.get("threads", 1)
        if not isinstance(threads, int) or isinstance(threads, bool) or threads < 1:
            raise KilnError(f"threads must be a positive integer, got {threads!r}")
        if options.get("quantize") not in (None, "int8"):
            raise KilnError(f"quantize={options.get('quantize')!r} is not supported by the cpu "
                            "target", hint="use quantize=None (float32) or quantize=\"int8\"")
        march = str(options.get("march", "native"))
        if not march.replace("-", "").replace("_", "").isalnum():
            raise KilnError(f"march={march!r} is not a -march value")
        cache_dir = options.get("cache_dir")
        limit = options.get("max_arena_bytes")
        if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool)
                                  or limit < 0):
            raise KilnError(f"max_arena_bytes must be a non-negative integer or None, got "
                            f"{limit!r}")
        sparse = options.get("sparse", "auto")
        if sparse not in ("auto", "off", "always"):
            raise KilnError(f"sparse={sparse!r} is not a cpu target option value",
                            hint='use sparse="auto" (sparse kernels where faster) or "off"')
        least = options.get("parallel_min_flops", PARALLEL_MIN_FLOPS)
        if not isinstance(least, int) or isinstance(least, bool) or least < 0:
            raise KilnError(f"parallel_min_flops must be a non-negative integer, got {least!r}")
        winograd = options.get("winograd", True)
        if not isinstance(winograd, bool):
            raise KilnError(f"winograd must be True or False, got {winograd!r}")
        return CpuOptions(threads, march, None if cache_dir is None else str(cache_dir),
                          bool(options.get("sanitize", False)), options.get("const_weights"),
                          str(options.get("cc", "gcc")), limit, sparse, least, winograd)


def _aligned(data: bytes | int) -> np.ndarray:
    """A 64-byte-aligned uint8 array holding `data` (or that many zero bytes)."""
    size = data if isinstance(data, int) else len(data)
    raw = np.zeros(size + 64, np.uint8)
    start = (-raw.ctypes.data) % 64
    view = raw[start:start + size]
    if not isinstance(data, int):
        view[:] = np.frombuffer(data, np.uint8)
    return view


class _Signature:
    """The model's static inputs and outputs, and the checks at the Python boundary."""

    def __init__(self, program: CProgram) -> None:
        self.name = program.prefix
        self.inputs = [(n, tuple(s)) for n, s in program.inputs]
        self.outputs = [(n, tuple(s)) for n, s in program.outputs]
        self.expected = [(s, tuple(4 * math.prod(s[i + 1:]) for i in range(len(s))))
                         for _, s in self.inputs]
        """(shape, C-contiguous float32 strides) per input: the common case checks by identity
        and tuple comparison, cheaper than NumPy's flags."""

    def check(self, inputs: tuple[Any, ...]) -> tuple[Any, ...]:
        if len(inputs) != len(self.inputs):
            want = ", ".join(f"{n} {list(s)}" for n, s in self.inputs)
            raise KilnError(f"model '{self.name}' takes {len(self.inputs)} input(s) ({want}), "
                            f"got {len(inputs)}")
        for x, (shape, strides) in zip(inputs, self.expected):
            if not (type(x) is np.ndarray and x.dtype is _F32 and x.shape == shape
                    and x.strides == strides):
                return self._slow(inputs)
        return inputs

    def _slow(self, inputs: tuple[Any, ...]) -> tuple[Any, ...]:
        arrays = []
        for i, (x, (name, shape)) in enumerate(zip(inputs, self.inputs)):
            x = np.asarray(x)
            if x.dtype != _F32 or x.shape != shape or not x.flags.c_contiguous:
                self._explain(i, name, shape, x)
            arrays.append(x)
        return tuple(arrays)

    def _explain(self, i: int, name: str, shape: tuple[int, ...], x: np.ndarray) -> None:
        label = f"input {i} ({name}) of model '{self.name}'"
        if x.dtype != _F32:
            raise KilnError(f"{label} has dtype {x.dtype}, expected float32 {list(shape)}",
                            hint="convert it: x.astype(np.float32) / tensor.float()")
        if x.shape != shape:
            raise KilnError(f"{label} has shape {list(x.shape)}, expected {list(shape)}",
                            hint="the model was compiled for static shapes; compile again "
                                 "with example inputs of the new shape")
        raise KilnError(f"{label} is not contiguous (strides {list(x.strides)})",
                        hint="pass np.ascontiguousarray(x) / tensor.contiguous()")


class CpuArtifact:
    """A built model: `run` calls the native library (or the sanitized program)."""

    def __init__(self, module: Module, program: CProgram, entry: Path, options: CpuOptions,
                 toolchain: gcc.Toolchain, flags: list[str], cache_hit: bool,
                 build_seconds: float) -> None:
        self.module = module
        self.program = program
        self.files: dict[str, str] = dict(program.sources)
        self.entry = entry
        self.options = options
        self.toolchain = toolchain
        self.flags = flags
        self.cache_hit = cache_hit
        self.build_seconds = build_seconds
        self.signature = _Signature(program)
        self._lock = threading.Lock()
        self._weights = _aligned(program.weights) if program.weights else None
        self.run: Callable[..., list[np.ndarray]] = self._run_checked
        """Run the model on NumPy arrays (float32, the compiled shapes, C-contiguous): one
        fresh output array per model output. A bound closure after loading (`_fast_run`),
        else the general path; wrong inputs are a `KilnError` either way."""
        if not options.sanitize:
            self._load()
            if self._staged:
                self.run = self._fast_run()

    # -- native calls ---------------------------------------------------------------------------
    def _load(self) -> None:
        lib = ctypes.CDLL(str(self.entry / "libmodel.so"))
        prefix = self.program.prefix
        self._fn = lib[f"{prefix}_run_with"]
        self._fn.restype = ctypes.c_int
        init = lib[f"{prefix}_init"]
        init.restype = ctypes.c_int
        init.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
        weights = self._weights.ctypes.data if self._weights is not None else None
        rc = init(weights, 0 if self._weights is None else self._weights.size)
        if rc != 0:
            raise KilnError(f"the built library rejected its weights (code {rc})")
        self._arena = _aligned(max(self.program.arena_bytes, 64))
        self._in_stage = [self._stage(s) for _, s in self.signature.inputs]
        self._out_stage = [self._stage(s) for _, s in self.signature.outputs]
        self._args: list[Any] = [ctypes.c_void_p(weights)]
        for stage in (*self._in_stage, *self._out_stage):
            self._args.append(ctypes.c_void_p(stage.ctypes.data) if stage is not None else None)
        self._args.append(ctypes.c_void_p(self._arena.ctypes.data))
        self._staged = all(s is not None for s in (*self._in_stage, *self._out_stage))
        self._in_bufs = [s for s in self._in_stage if s is not None]
        self._out_bufs = [s for s in self._out_stage if s is not None]

    @staticmethod
    def _stage(shape: tuple[int, ...]) -> np.ndarray | None:
        if 4 * math.prod(shape) > STAGING_BYTES:
            return None
        return _aligned(4 * math.prod(shape)).view(np.float32).reshape(shape)

    def _fast_run(self) -> Callable[..., list[np.ndarray]]:
        """The call path of a model whose tensors all fit the staging buffers: everything
        it touches is bound once here (function, argument tuple, buffers, expected shapes),
        so a call checks each input by identity, tuple comparison and flag, copies it in,
        calls, and copies the outputs out; anything unexpected goes to `_run_checked`, which
        accepts what NumPy can convert and explains what it cannot. Python's share of a
        LeNet-5 batch-1 call (measured with a no-op native function, interleaved): 2.3 us,
        3.4 us through the general path. Contiguity is NumPy's flag (what the general path
        checks; the staging copy reads any strides) rather than a comparison of stride tuples,
        and the lock is taken by its bound methods in try/finally rather than by `with`: 0.2 us
        less per LeNet-5 call (interleaved, 4000 x 20 calls)."""
        fn, args, lock, checked = self._fn, tuple(self._args), self._lock, self._run_checked
        failed, acquire, release = self._failure, lock.acquire, lock.release
        ins = tuple((stage, shape) for stage, (shape, _) in zip(self._in_bufs,
                                                                self.signature.expected))
        outs = tuple(self._out_bufs)
        count, ndarray, f32 = len(ins), np.ndarray, _F32
        if count == 1 and len(outs) == 1:
            ((stage, shape),), (out,) = ins, outs

            def run_one(*inputs: Any) -> list[np.ndarray]:
                if len(inputs) == 1:
                    x = inputs[0]
                    if (type(x) is ndarray and x.dtype is f32 and x.shape == shape
                            and x.flags.c_contiguous):
                        acquire()
                        try:
                            stage[...] = x
                            rc = fn(*args)
                            y = out.copy()
                        finally:
                            release()
                        if rc != 0:
                            raise failed(rc)
                        return [y]
                return checked(*inputs)
            return run_one

        def run_many(*inputs: Any) -> list[np.ndarray]:
            if len(inputs) == count and all(
                    type(x) is ndarray and x.dtype is f32 and x.shape == shape
                    and x.flags.c_contiguous for x, (_, shape) in zip(inputs, ins)):
                acquire()
                try:
                    for x, (stage, _) in zip(inputs, ins):
                        stage[...] = x
                    rc = fn(*args)
                    ys = [o.copy() for o in outs]
                finally:
                    release()
                if rc != 0:
                    raise failed(rc)
                return ys
            return checked(*inputs)
        return run_many

    def _run_checked(self, *inputs: Any) -> list[np.ndarray]:
        """The general call path: checks and converts the inputs (`_Signature`), stages the
        small tensors and passes the large ones in place, or runs the sanitized program."""
        arrays = self.signature.check(inputs)
        if self.options.sanitize:
            return self._run_sanitized(list(arrays))
        if self._staged:
            with self._lock:
                for stage, x in zip(self._in_bufs, arrays):
                    stage[...] = x
                rc = self._fn(*self._args)
                outs = [stage.copy() for stage in self._out_bufs]
        else:
            with self._lock:
                rc, outs = self._call(arrays)
        if rc != 0:
            raise self._failure(rc)
        return outs

    def _failure(self, rc: int) -> KilnError:
        return KilnError(f"model '{self.program.prefix}' failed with code {rc}")

    def _call(self, arrays: tuple[np.ndarray, ...]) -> tuple[int, list[np.ndarray]]:
        """Large tensors in place (fresh pointers), small ones through the staging buffers."""
        n_in = len(arrays)
        args = list(self._args)
        for i, (x, stage) in enumerate(zip(arrays, self._in_stage)):
            if stage is None:
                args[1 + i] = ctypes.c_void_p(x.ctypes.data)
            else:
                stage[...] = x
        outs = []
        for j, ((_, shape), stage) in enumerate(zip(self.signature.outputs, self._out_stage)):
            out = np.empty(shape, np.float32) if stage is None else stage
            if stage is None:
                args[1 + n_in + j] = ctypes.c_void_p(out.ctypes.data)
            outs.append(out)
        rc = self._fn(*args)
        return rc, [o.copy() if o is s else o for o, s in zip(outs, self._out_stage)]

    # -- sanitized runs -------------------------------------------------------------------------
    def _run_sanitized(self, arrays: list[np.ndarray]) -> list[np.ndarray]:
        with tempfile.TemporaryDirectory(prefix="kiln-san-") as tmp:
            work = Path(tmp)
            (work / "input.bin").write_bytes(b"".join(a.astype("<f4").tobytes() for a in arrays))
            (work / "weights.bin").write_bytes(self.program.weights)
            result = subprocess.run([str(self.entry / "example"), "input.bin", "weights.bin"],
                                    cwd=work, capture_output=True, text=True, timeout=600,
                                    check=False)
        if result.returncode != 0 or "runtime error" in result.stderr or "Sanitizer" in \
                result.stderr:
            raise KilnError(f"the sanitized build of '{self.program.prefix}' failed "
                            f"(exit {result.returncode})", hint=result.stderr[-2000:])
        values = np.array(result.stdout.split(), dtype=np.float32)
        outs, at = [], 0
        for _, shape in self.signature.outputs:
            n = math.prod(shape)
            outs.append(values[at:at + n].reshape(shape))
            at += n
        return outs

    # -- artifact protocol ---------------------------------------------------------------------
    def report(self) -> dict[str, Any]:
        program = self.program
        return {
            "runtime": "native C (gcc, ctypes)" + (", sanitized" if self.options.sanitize
                                                   else ""),
            "arena_bytes": program.arena_bytes,
            "weights_bytes": program.weights_bytes,
            "const_weights": program.const_weights,
            "kernels": program.kernels,
            "flops": flops(self.module),
            "threads": self.options.threads,
            "vector_width": program.options.vector_width,
            "gemm_tile": [program.options.mr, program.options.nr],
            "compiler": self.toolchain.version,
            "flags": self.flags,
            "cache_hit": self.cache_hit,
            "build_seconds": round(self.build_seconds, 4),
            "library": str(self.entry),
        }

    def export(self, directory: Path) -> Path:
        """model.h, model.c, the runtime headers, weights.bin, example.c and a Makefile."""
        directory.mkdir(parents=True, exist_ok=True)
        for name, text in self.program.sources.items():
            atomic_write(directory / name, text)
        if self.program.weights:
            atomic_write(directory / "weights.bin", self.program.weights)
        return directory


def _runtime_object(cache: BuildCache, program: CProgram, toolchain: gcc.Toolchain,
                    flags: list[str], source: str) -> Path:
    """The object of one runtime source this model links (`runtime_deps.linked_sources`
    chose them), a cache entry of its own keyed by its source, every runtime header
    (kiln_config.h too), the flags and the compiler: a model compiles only the objects no
    earlier model needed."""
    headers = {n: t for n, t in program.sources.items()
               if n.startswith("kiln_") and n.endswith(".h")}
    common = [part for name in sorted(headers) for part in (name, headers[name])]
    obj = Path(source).stem + ".o"
    key = cache_key(_CACHE_FORMAT, "runtime-object", toolchain.version, " ".join(flags),
                    *common, source, program.sources[source])

    def build_object(work: Path) -> None:
        for name, text in (*headers.items(), (source, program.sources[source])):
            (work / name).write_text(text)
        gcc.compile_objects(toolchain, work, [source], flags)

    return cache.get(key, build_object, [obj]) / obj


def _build_library(work: Path, cache: BuildCache, program: CProgram,
                   toolchain: gcc.Toolchain, flags: list[str]) -> None:
    """libmodel.so: model.c and the missing runtime objects compiled at once, one compiler
    process per file on every CPU, then linked. The jobs start longest first (by source size,
    the estimate there is before compiling: a cold build is as long as its last job, and a
    big file started last would run alone), model.c among them, since only the link needs
    the runtime's objects."""
    for name, text in program.sources.items():
        (work / name).write_text(text)
    runtime = sorted(n for n in program.sources if n.startswith("kiln_") and n.endswith(".c"))
    jobs = sorted(["model.c", *runtime], key=lambda n: (-len(program.sources[n]), n))

    def one(source: str) -> Path:
        if source == "model.c":
            return gcc.compile_objects(toolchain, work, [source], flags, "build.log")[0]
        return _runtime_object(cache, program, toolchain, flags, source)

    with ThreadPoolExecutor(max_workers=max(1, min(len(jobs), os.cpu_count() or 1))) as pool:
        objects = dict(zip(jobs, pool.map(one, jobs)))
    gcc.compile_c(toolchain, work, [str(objects[n]) for n in ["model.c", *runtime]],
                  "libmodel.so", [*flags, *LINK_FLAGS], shared=True, log_name="link.log")
    link = work / "link.log"  # one log of the model's build: compile, then link
    (work / "build.log").write_text((work / "build.log").read_text() + link.read_text())
    link.unlink()
    objects["model.c"].unlink()  # linked into libmodel.so; the cache entry keeps no copy


def _build_example(work: Path, program: CProgram, toolchain: gcc.Toolchain,
                   flags: list[str]) -> None:
    """The sanitized example program, built from every source in one compiler call."""
    for name, text in program.sources.items():
        (work / name).write_text(text)
    runtime_c = sorted(n for n in program.sources if n.startswith("kiln_") and n.endswith(".c"))
    gcc.compile_c(toolchain, work, ["example.c", "model.c", *runtime_c], "example", flags,
                  shared=False)


def build(module: Module, options: Mapping[str, Any]) -> CpuArtifact:
    """Generate C for `module`, build it (or find it in the cache) and load it."""
    opts = CpuOptions.of(options)
    check_supported(module)  # every op without a kernel, named, before any tool runs
    toolchain = gcc.find(opts.cc)
    width = gcc.vector_width(toolchain, opts.march)
    program = lower(module, COptions(width, opts.threads, opts.const_weights, opts.sparse,
                                     opts.march, opts.parallel_min_flops, opts.winograd))
    _check_arena(program, opts.max_arena_bytes)
    flags = gcc.flags(opts.march, opts.threads, opts.sanitize)
    cache = BuildCache(opts.cache_dir)
    kind = "example" if opts.sanitize else "shared"
    key = cache_key(_CACHE_FORMAT, kind, toolchain.version, " ".join(flags),
                    *(part for name in sorted(program.sources)
                      for part in (name, program.sources[name])))
    start = time.perf_counter()
    entry = cache.lookup(key)
    hit = entry is not None
    if entry is None:
        if opts.sanitize:
            entry = cache.store(key, lambda work: _build_example(work, program, toolchain,
                                                                 flags), [_output_name(opts)])
        else:
            entry = cache.store(key, lambda work: _build_library(work, cache, program,
                                                                 toolchain, flags),
                                [_output_name(opts)])
    return CpuArtifact(module, program, entry, opts, toolchain, flags, hit,
                       time.perf_counter() - start)


def _output_name(opts: CpuOptions) -> str:
    """The file a model build must produce (the cache refuses an entry without it)."""
    return "example" if opts.sanitize else "libmodel.so"


def _check_arena(program: CProgram, limit: int | None) -> None:
    """The `max_arena_bytes` option: refuse a memory plan above the limit, before gcc."""
    if limit is None or program.arena_bytes <= limit:
        return
    raise KilnError(f"model '{program.prefix}' needs an activation arena of "
                    f"{program.arena_bytes:,} bytes, over max_arena_bytes={limit:,} "
                    f"(by {program.arena_bytes - limit:,} bytes, "
                    f"{program.arena_bytes / max(limit, 1):.1f}x)",
                    hint="raise max_arena_bytes, compile with smaller example inputs (batch "
                         "size) or a smaller model; report()['arena_bytes'] shows the plan")


INT8_PIPELINE = "canonicalize,fold-batchnorm,fold-constants,cse,quantize,fuse,cse,dce"
"""The pipeline of `quantize="int8"`: the default one with the quantize pass (calibrated on
`calibration_data`, or the example inputs) before fusion. The same string as `pipeline=`
compiles an int8 model too."""


SPARSE_PIPELINE = "canonicalize,fold-batchnorm,fold-constants,cse,sparsify,fuse,cse,dce"
"""The pipeline of `sparse="auto"`: the default one with `sparsify` (csr, at least half zeros)
before fusion, which hides layers inside fused groups from it."""


def _pipeline(options: Mapping[str, Any]) -> str:
    if options.get("quantize") == "int8":
        return INT8_PIPELINE
    return "cpu" if options.get("sparse", "auto") == "off" else SPARSE_PIPELINE


def clear_cache(cache_dir: str | Path | None = None) -> None:
    """Remove every cached cpu build (the next compile rebuilds)."""
    shutil.rmtree(BuildCache(cache_dir).root, ignore_errors=True)


TARGET = Target(name="cpu", description="standalone C99 built with gcc, run natively",
                pipeline="cpu", build=build, options=OPTIONS, pipeline_for=_pipeline)

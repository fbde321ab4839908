"""Options of the C code generator: what it must know about the machine and the build."""

from __future__ import annotations

import math
from dataclasses import dataclass

from kiln.codegen.c.packing import gemm_tile

CONST_WEIGHTS_LIMIT = 64 * 1024
"""Parameter bytes below which weights are compiled in as `const` arrays (auto mode)."""

TILE_FLOATS = 16 * 1024
"""Floats in one epilogue tile (64 KiB): a GEMM block whose epilogue runs while it is hot."""


PARALLEL_MIN_FLOPS = 8_000_000
"""Default least work (FLOPs, or FLOP-equivalents for a memory pass: `PASS_FLOPS_PER_ELEMENT`) of
one OpenMP parallel region worth running on several threads; smaller regions run serially even
with threads > 1. A region pays when half its serial time exceeds the fork/join plus what the
split itself loses. Measured on the 2-core VM (OMP_WAIT_POLICY=PASSIVE, as bench/cpu.py runs):
an empty 2-thread region costs 8-10 µs back to back and ~20 µs once the worker has slept 1 ms
(median; a C loop of `omp parallel for` regions between serial spins); whole kernels lose more:
ResNet-8 batch 1's 4.7 MFLOP Winograd convs ran no faster on 2 spinning threads (0.202 vs
0.182 ms per model call, OMP_WAIT_POLICY=ACTIVE) and 2x slower with sleeping ones, the digits
CNN's 1.2 MFLOP conv 2.5x slower at batch 64, while LeNet-5's 15-31 MFLOP convs at batch 64
ran 1.3x faster (0.63 vs 0.81 ms). 8 MFLOP is ~80-160 µs of one core at kiln's 50-100
GFLOP/s: 8-16 fork/joins."""

PASS_FLOPS_PER_ELEMENT = 32
"""What one output element of an elementwise / row pass weighs against a GEMM FLOP in the
parallel cost rule: a pass streams ~0.2 ns per element in cache and ~0.5 ns out of it (a
`x * y + x` pass, 256K and 1M floats, one thread), a kiln GEMM ~0.01 ns per FLOP (a
256x256 linear, 100 GFLOP/s); so a pass goes parallel from 8M / 32 = 256K elements."""


def pass_flops(shape: tuple[int, ...]) -> int:
    """The work of one elementwise / row pass over `shape`, in GEMM FLOP-equivalents."""
    return math.prod(shape) * PASS_FLOPS_PER_ELEMENT


@dataclass(frozen=True)
class COptions:
    """How to generate C for one model.

    `vector_width`: float lanes of the target's widest vector (16 AVX-512, 8 AVX2, 4 SSE/NEON),
    which sets the GEMM tile and hence the weight packing. `threads > 1` adds OpenMP pragmas
    over the GEMM blocks (`sparse`: see the field). `const_weights`: True compiles weights in,
    False reads them from the blob `weights.bin`, None decides by size (`CONST_WEIGHTS_LIMIT`).
    """

    vector_width: int = 16
    threads: int = 1
    const_weights: bool | None = None
    sparse: str = "auto"
    """`auto`: weights with a sparse encoding run sparse kernels where the cost rule says they
    are faster (`emit_sparse.choose`); `off`: always the dense kernels; `always`: sparse
    kernels wherever the encoding allows (benchmarks and tests)."""
    march: str = "native"
    """The `-march` the exported Makefile builds with (the cpu target's `march` option)."""
    parallel_min_flops: int = PARALLEL_MIN_FLOPS
    """With threads > 1, a loop runs as an OpenMP parallel region only when the region does at
    least this much work (`parallel_worth`; see `PARALLEL_MIN_FLOPS`); 0: every one that can."""
    winograd: bool = True
    """3x3 stride-1 convs that `winograd_anchor.winograd_tile` picks run Winograd F(m,3)
    (`kiln_winograd`); False: always the implicit GEMM (A/B runs, tests)."""

    def parallel_worth(self, flops: int) -> bool:
        """Whether one parallel region doing `flops` of work (FLOPs, or a pass's elements times
        `PASS_FLOPS_PER_ELEMENT`) pays for waking the other threads: threads > 1 and at least
        `parallel_min_flops`. Below it the loop runs serially, as with threads=1."""
        return self.threads > 1 and flops >= self.parallel_min_flops

    @property
    def mr(self) -> int:
        return gemm_tile(self.vector_width)[0]

    @property
    def nr(self) -> int:
        return gemm_tile(self.vector_width)[1]

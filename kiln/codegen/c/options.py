"""Options of the C code generator: what it must know about the machine and the build."""

from __future__ import annotations

from dataclasses import dataclass

from kiln.codegen.c.packing import gemm_tile

CONST_WEIGHTS_LIMIT = 64 * 1024
"""Parameter bytes below which weights are compiled in as `const` arrays (auto mode)."""

TILE_FLOATS = 16 * 1024
"""Floats in one epilogue tile (64 KiB): a GEMM block whose epilogue runs while it is hot."""


PARALLEL_MIN_FLOPS = 1_000_000
"""Default least work (FLOPs per batch index, one OpenMP parallel region each) worth running on
several threads: about 20 µs on one core here, the order of a fork/join whose workers sleep
(OMP_WAIT_POLICY=PASSIVE). Measured: with a region per image and kernel, the digits CNN at
batch 64 ran 13x slower on 2 threads than on 1; with this floor, as fast."""


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
    """With threads > 1, a GEMM-like kernel's blocks run in parallel only when its anchor does
    at least this many FLOPs per batch index (see `PARALLEL_MIN_FLOPS`)."""
    winograd: bool = True
    """3x3 stride-1 convs that `winograd_anchor.winograd_tile` picks run Winograd F(m,3)
    (`kiln_winograd`); False: always the implicit GEMM (A/B runs, tests)."""

    @property
    def mr(self) -> int:
        return gemm_tile(self.vector_width)[0]

    @property
    def nr(self) -> int:
        return gemm_tile(self.vector_width)[1]

"""Block sizes: a small, documented heuristic (no search unless autotuning is asked for).

Every tile dimension is a power of two (Triton's `tl.arange` needs one) no larger than the data
it covers, and the tile's element count stays under a *budget*:

| budget | GPU | interpreter | why |
|---|---|---|---|
| flat (1-D tiles: elementwise, copies) | 1024 | 65536 | 4 warps x 32 lanes x 8 elements |
| tile (2-D: rows of reductions, pools) | 4096 | 65536 | ~32 fp32 registers a lane |
| product (the 3-D tile of an FMA GEMM) | 4096 | 65536 | same register budget |
| dot caps (BLOCK_M, N, K) | 64, 64, 32 | 256, 128, 128 | Triton's tutorial tiles (a) |

(a) they fit any GPU's shared memory with 2-3 pipeline stages.

On a GPU small tiles mean many programs in flight. Triton's interpreter runs program instances
one after another in Python, each op a NumPy call, so there the best tile is the largest one
memory allows: fewer programs, fewer Python-level ops. The heuristic is the same, only the
budget differs.

GEMMs use `tl.dot` (tensor cores) when M and N are at least 16 (Triton's minimum dot tile; a
shorter K is padded with masked zeros); smaller ones (a batch-1 linear layer, a depthwise
convolution with one channel per group) multiply a [BLOCK_M, BLOCK_K, BLOCK_N] product tile and
sum over K.
"""

from __future__ import annotations

from dataclasses import dataclass

MAX_ROW = 16384
"""Longest row a reduction kernel holds in one tile (softmax / layer norm / reduce_*)."""


@dataclass(frozen=True)
class Budget:
    flat: int
    tile: int
    product: int
    dot: tuple[int, int, int]
    fma_nk: int
    """Cap on BLOCK_N and BLOCK_K of the FMA GEMM."""


GPU = Budget(flat=1024, tile=4096, product=4096, dot=(64, 64, 32), fma_nk=32)
INTERPRETER = Budget(flat=1 << 16, tile=1 << 16, product=1 << 16, dot=(256, 128, 128),
                     fma_nk=128)


def budget(interpreter: bool) -> Budget:
    return INTERPRETER if interpreter else GPU


def pow2(n: int) -> int:
    """The smallest power of two >= n (1 for n <= 1)."""
    return 1 if n <= 1 else 1 << (n - 1).bit_length()


def clamp_pow2(n: int, low: int, high: int) -> int:
    return max(low, min(pow2(n), high))


def flat_block(numel: int, interpreter: bool) -> int:
    return min(pow2(numel), budget(interpreter).flat)


def row_blocks(rows: int, length: int, interpreter: bool) -> tuple[int, int]:
    """(BLOCK_R, BLOCK_L): a whole row per tile, as many rows as the budget allows."""
    block_l = pow2(length)
    return clamp_pow2(rows, 1, max(1, budget(interpreter).tile // block_l)), block_l


def window_blocks(outputs: int, taps: int, interpreter: bool) -> tuple[int, int]:
    """(BLOCK_O, BLOCK_T) of a pooling kernel: output elements x window taps per step."""
    b = budget(interpreter)
    block_t = min(pow2(taps), b.tile // 16 if not interpreter else 4096)
    return clamp_pow2(outputs, 1, max(1, b.tile // block_t)), block_t


def uses_dot(m: int, n: int, k: int) -> bool:
    """`tl.dot` needs 16x16 output tiles; a K below 16 is padded with masked zeros.

    This also keeps FMA tiles below 16 in M or N: Triton rewrites a
    `sum(a[:, :, None] * b[None, :, :], 1)` of 16x16 or more into a dot, which some releases
    compute in TF32.
    """
    return min(m, n) >= 16


def gemm_blocks(m: int, n: int, k: int, interpreter: bool) -> tuple[int, int, int]:
    """(BLOCK_M, BLOCK_N, BLOCK_K) for a GEMM of M x N outputs and depth K."""
    b = budget(interpreter)
    if uses_dot(m, n, k):
        cm, cn, ck = b.dot
        return clamp_pow2(m, 16, cm), clamp_pow2(n, 16, cn), clamp_pow2(k, 16, ck)
    block_n = min(pow2(n), b.fma_nk)
    block_k = min(pow2(k), b.fma_nk)
    return clamp_pow2(m, 1, max(1, b.product // (block_n * block_k))), block_n, block_k


def num_warps(elements: int) -> int:
    """4 warps, 8 for tiles of 16K elements or more."""
    return 8 if elements >= 16384 else 4


def autotune_configs(m: int, n: int, k: int) -> list[tuple[int, ...]]:
    """(BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages) candidates for `triton.autotune`,
    the heuristic's own choice first; tiles larger than the problem are dropped."""
    first: tuple[int, ...] = (*gemm_blocks(m, n, k, False), 4, 3)
    grid: list[tuple[int, ...]] = [(128, 128, 32, 8, 3), (128, 64, 32, 4, 4), (64, 128, 32, 4, 4),
                                   (64, 64, 64, 4, 3), (32, 64, 32, 4, 4), (16, 32, 64, 2, 4)]
    fits = [c for c in grid if c[0] <= max(16, pow2(m)) and c[1] <= max(16, pow2(n))
            and c[2] <= max(16, pow2(k))]
    return [first, *[c for c in fits if c != first]]

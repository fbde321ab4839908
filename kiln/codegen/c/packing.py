"""GEMM tile sizes and the panel packing layout shared with the C runtime (`kiln_gemm.h`).

Weights are packed once, here, at build time; the C micro-kernel then streams them linearly.
`pack_panels(m, width)` cuts the rows of `m` (rows x K) into panels of `width` rows and stores
each panel k-major:

    packed[p, k, r] = m[p * width + r, k]        (rows past the end are zero)

With `width = MR` this packs a GEMM's A operand (a convolution's (Cout, Cin*KH*KW) weight);
applied to a linear layer's (out, in) weight — the transposed B operand — with `width = NR`,
it packs B. `kiln_pack_panels` in C computes the same bytes (tested).
"""

from __future__ import annotations

import numpy as np

from kiln.errors import KilnError

GEMM_TILES: dict[int, tuple[int, int]] = {16: (8, 32), 8: (6, 16), 4: (4, 8)}
"""Float lanes of the machine's widest vector → (MR, NR) of the micro-kernel: MR rows of C by
two vectors, so MR * 2 accumulators fit the register file (32 zmm / 16 ymm / 16 xmm)."""

CONV_PANEL_FLOATS = 8192
"""Floats of one packed B panel of an implicit-GEMM convolution (kc × NR: 32 KiB, kc ≤ 256
with NR = 32), sized to stay in L1/L2 while every MR-panel of the weights runs over it.
(Measured on this machine: kc from 128 to 576 is within noise; 64 is ~15 % slower.)"""


def gemm_tile(vector_width: int) -> tuple[int, int]:
    """(MR, NR) for a machine whose float vectors have `vector_width` lanes."""
    if vector_width not in GEMM_TILES:
        raise KilnError(f"no GEMM tile for vector width {vector_width}",
                        hint=f"use one of {sorted(GEMM_TILES)}")
    return GEMM_TILES[vector_width]


def panels(rows: int, width: int) -> int:
    return -(-rows // width)


def pack_panels(matrix: np.ndarray, width: int) -> np.ndarray:
    """`matrix` (rows x K) as a flat float32 array of `width`-row, k-major panels."""
    rows, k = matrix.shape
    padded = np.zeros((panels(rows, width) * width, k), np.float32)
    padded[:rows] = matrix
    return np.ascontiguousarray(padded.reshape(-1, width, k).transpose(0, 2, 1)).ravel()


def pack_groups(matrix: np.ndarray, groups: int, width: int) -> np.ndarray:
    """A grouped convolution's (Cout, K) weight: each group's rows packed on their own, the
    groups one after another (group g starts at g * panels(Cout/groups, width) * K * width)."""
    rows, _ = matrix.shape
    per = rows // groups
    return np.concatenate([pack_panels(matrix[g * per:(g + 1) * per], width)
                           for g in range(groups)])

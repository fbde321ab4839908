/* kiln runtime: what the two GEMM kernel files share (private to them; the API is
 * kiln_gemm.h). kiln_gemm.c holds kiln_sgemm (strided or packed operands) and
 * kiln_gemm_bpanel.c the packed-panel step of the implicit-GEMM convolutions: two files, so
 * a model compiles only the one it calls (runtime_deps selects by function) and a model that
 * calls both compiles them on two cores at once.
 *
 * Compile time is what shapes the row tiles. A tile kernel is instantiated per constant row
 * count (the accumulators only stay in registers when the count is known), and each
 * instantiation costs gcc -O3 about 60 ms; one per count 1..MR, times two widths, times two
 * kernels, was most of a cold build's critical path. Only MR, 4, 2 and 1 rows get a kernel of
 * their own (`kiln_tile_rows`); a remainder of other rows runs as a sum of those (7 = 4+2+1),
 * which does the same FMAs and only reads the B tile again, from L1.
 */
#ifndef KILN_GEMM_TILE_H
#define KILN_GEMM_TILE_H

#include "kiln_gemm.h"

#define KILN_GL (KILN_NR / 2) /* lanes of one GEMM vector: a tile row is two of them */
typedef float kiln_gv __attribute__((vector_size(KILN_GL * 4)));
typedef float kiln_gv_u __attribute__((vector_size(KILN_GL * 4), aligned(4), may_alias));

KILN_INLINE kiln_gv kiln_gload(const float* p) { return *(const kiln_gv_u*)p; }
KILN_INLINE void kiln_gstore(float* p, kiln_gv v) { *(kiln_gv_u*)p = v; }

KILN_INLINE kiln_gv kiln_gclamp(kiln_gv v, float lo, float hi) {
    typedef int32_t gi __attribute__((vector_size(KILN_GL * 4)));
    kiln_gv l = (kiln_gv){0} + lo, h = (kiln_gv){0} + hi;
    gi below = v < l, above = v > h;
    v = (kiln_gv)(((gi)l & below) | ((gi)v & ~below));
    return (kiln_gv)(((gi)h & above) | ((gi)v & ~above));
}

/* The rows of the next tile kernel to run when `left` (>= 1) rows of a panel remain: the
 * largest of MR, 4, 2, 1 that fits. */
KILN_INLINE int kiln_tile_rows(int left) {
    return left >= KILN_MR ? KILN_MR
         : KILN_MR > 4 && left >= 4 ? 4
         : KILN_MR > 2 && left >= 2 ? 2 : 1;
}

#endif /* KILN_GEMM_TILE_H */

/* kiln runtime: kiln_sgemm_bpanel, a packed A times one packed B panel (API: kiln_gemm.h;
 * why it is a file of its own: kiln_gemm_tile.h). */
#include "kiln_gemm_tile.h"

/* The kernels below are vectorized by hand: GCC's loop vectorizer has nothing to add, and
 * trying costs seconds of compile time for the unrolled tile variants. */
#pragma GCC push_options
#pragma GCC optimize("no-tree-loop-vectorize")

/* One tile of packed A (`mr` rows, MR floats per k) times a packed B panel `nv` GEMM vectors
 * wide (rows of nv * GL floats): every stride is a compile-time constant, so the inner loop
 * is one broadcast load of A per row and nv FMAs with B in registers. `load_c` adds to the
 * tile already in C (a later block of K); only `nc` <= nv * GL columns of C are touched. */
KILN_INLINE void kiln_tile_pp(const int mr, const int nv, int K, const float* a,
                              const float* b, float* c, ptrdiff_t ldc, int nc, int load_c,
                              const float* bias_row, float lo, float hi) {
    kiln_gv acc[8][2];
    const int width = nv * KILN_GL, full = nc == width;
#pragma GCC unroll 8
    for (int r = 0; r < mr; ++r) {
        acc[r][0] = acc[r][1] = (kiln_gv){0};
        if (load_c) {
            float tmp[KILN_NR] = {0};
            const float* cr = c + (ptrdiff_t)r * ldc;
            const float* src = full ? cr : tmp;
            if (!full)
                for (int j = 0; j < nc; ++j) tmp[j] = cr[j];
            for (int v = 0; v < nv; ++v) acc[r][v] = kiln_gload(src + v * KILN_GL);
        }
    }
    for (int k = 0; k < K; ++k) {
        kiln_gv b0 = kiln_gload(b + k * width);
        kiln_gv b1 = nv > 1 ? kiln_gload(b + k * width + KILN_GL) : b0;
        const float* ak = a + k * KILN_MR;
#pragma GCC unroll 8
        for (int r = 0; r < mr; ++r) {
            acc[r][0] += ak[r] * b0;
            if (nv > 1) acc[r][1] += ak[r] * b1;
        }
    }
#pragma GCC unroll 8
    for (int r = 0; r < mr; ++r) {
        float* cr = c + (ptrdiff_t)r * ldc;
        float br = bias_row ? bias_row[r] : 0.0f, tmp[KILN_NR];
        for (int v = 0; v < nv; ++v)
            kiln_gstore(full ? cr + v * KILN_GL : tmp + v * KILN_GL,
                        kiln_gclamp(acc[r][v] + br, lo, hi));
        if (!full)
            for (int j = 0; j < nc; ++j) cr[j] = tmp[j];
    }
}

#define KILN_TILE_PP(R)                                                                      \
    if (nv == 2) kiln_tile_pp(R, 2, kc, a, bp, c, ldc, nc, load_c, br, lo, hi);            \
    else kiln_tile_pp(R, 1, kc, a, bp, c, ldc, nc, load_c, br, lo, hi)

void kiln_sgemm_bpanel(const float* A, int M, int K, int k0, int kc, const float* bp, float* C,
                       ptrdiff_t ldc, int nc, int load_c, const float* bias_row, float lo,
                       float hi) {
    const int nv = nc > KILN_GL ? 2 : 1;
    for (int i = 0; i < M; i += KILN_MR) {
        /* A panel's rows as tiles of kiln_tile_rows (MR, 4, 2, 1) rows: row r of the panel
         * is at offset r of its k-major MR-float groups. */
        for (int r = 0, mr = kiln_imin(KILN_MR, M - i); r < mr;) {
            const int rows = kiln_tile_rows(mr - r);
            const float* a = A + ((size_t)(i / KILN_MR) * K + k0) * KILN_MR + r;
            const float* br = bias_row ? bias_row + i + r : NULL;
            float* c = C + (ptrdiff_t)(i + r) * ldc;
            if (rows == KILN_MR) { KILN_TILE_PP(KILN_MR); }
            else if (rows == 4) { KILN_TILE_PP(4); }
            else if (rows == 2) { KILN_TILE_PP(2); }
            else { KILN_TILE_PP(1); }
            r += rows;
        }
    }
}

#pragma GCC pop_options

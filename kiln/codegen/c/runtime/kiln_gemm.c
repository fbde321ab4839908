/* kiln runtime: the GEMM micro-kernel and driver (layouts and API: kiln_gemm.h; the
 * packed-panel step kiln_sgemm_bpanel is in kiln_gemm_bpanel.c). */
#include "kiln_gemm_tile.h"

void kiln_pack_panels(const float* src, int rows, int K, int width, float* dst) {
    int panels = (rows + width - 1) / width;
    for (int p = 0; p < panels; ++p)
        for (int k = 0; k < K; ++k)
            for (int r = 0; r < width; ++r) {
                int row = p * width + r;
                dst[((size_t)p * K + k) * width + r] =
                    row < rows ? src[(size_t)row * K + k] : 0.0f;
            }
}

/* The kernels below are vectorized by hand: GCC's loop vectorizer has nothing to add, and
 * trying costs seconds of compile time for the unrolled tile variants. */
#pragma GCC push_options
#pragma GCC optimize("no-tree-loop-vectorize")

/* One tile: `mr` rows (<= KILN_MR) by `nv` GEMM vectors (1 or 2), `nc` <= nv*GL columns kept.
 * Constant mr/nv after inlining let GCC hold the accumulators in registers. */
KILN_INLINE void kiln_tile(const int mr, const int nv, int K, const float* a, ptrdiff_t rs_a,
                           ptrdiff_t cs_a, const float* b, ptrdiff_t ldb, float* c,
                           ptrdiff_t ldc, int nc, const float* bias_row,
                           const float* bias_col, float lo, float hi) {
    kiln_gv acc[8][2];
#pragma GCC unroll 8
    for (int r = 0; r < mr; ++r) {
        acc[r][0] = (kiln_gv){0};
        acc[r][1] = (kiln_gv){0};
    }
    for (int k = 0; k < K; ++k) {
        const float* bk = b + (ptrdiff_t)k * ldb;
        kiln_gv b0 = kiln_gload(bk);
        kiln_gv b1 = nv > 1 ? kiln_gload(bk + KILN_GL) : b0;
        const float* ak = a + (ptrdiff_t)k * cs_a;
#pragma GCC unroll 8
        for (int r = 0; r < mr; ++r) {
            kiln_gv av = (kiln_gv){0} + ak[r * rs_a];
            acc[r][0] += av * b0;
            if (nv > 1) acc[r][1] += av * b1;
        }
    }
    int full = nc == nv * KILN_GL;
#pragma GCC unroll 8
    for (int r = 0; r < mr; ++r) {
        float* cr = c + (ptrdiff_t)r * ldc;
        float br = bias_row ? bias_row[r] : 0.0f;
        if (full) {
            for (int v = 0; v < nv; ++v) {
                kiln_gv x = acc[r][v] + br;
                if (bias_col) x += kiln_gload(bias_col + v * KILN_GL);
                kiln_gstore(cr + v * KILN_GL, kiln_gclamp(x, lo, hi));
            }
        } else {
            float tmp[2 * KILN_GL];
            kiln_gstore(tmp, acc[r][0]);
            kiln_gstore(tmp + KILN_GL, acc[r][1]);
            for (int j = 0; j < nc; ++j) {
                float x = tmp[j] + br + (bias_col ? bias_col[j] : 0.0f);
                cr[j] = x < lo ? lo : (x > hi ? hi : x);
            }
        }
    }
}

#define KILN_TILE(R)                                                                         \
    if (nv == 2) kiln_tile(R, 2, K, a, rs_a, cs_a, b, ldb, c, ldc, nc, br, bc, lo, hi);     \
    else kiln_tile(R, 1, K, a, rs_a, cs_a, b, ldb, c, ldc, nc, br, bc, lo, hi)

/* `mr` rows as tiles of kiln_tile_rows (MR, 4, 2, 1) rows (see kiln_gemm_tile.h). */
static void kiln_tile_dispatch(int mr, int nv, int K, const float* a, ptrdiff_t rs_a,
                               ptrdiff_t cs_a, const float* b, ptrdiff_t ldb, float* c,
                               ptrdiff_t ldc, int nc, const float* br, const float* bc,
                               float lo, float hi) {
    while (mr > 0) {
        const int rows = kiln_tile_rows(mr);
        if (rows == KILN_MR) { KILN_TILE(KILN_MR); }
        else if (rows == 4) { KILN_TILE(4); }
        else if (rows == 2) { KILN_TILE(2); }
        else { KILN_TILE(1); }
        mr -= rows;
        a += rows * rs_a;
        c += rows * ldc;
        br = br ? br + rows : NULL;
    }
}

/* Fewer than GL columns of a strided B: plain loops, one row at a time. */
static void kiln_tile_scalar(int mr, int nc, int K, const float* a, ptrdiff_t rs_a,
                             ptrdiff_t cs_a, const float* b, ptrdiff_t ldb, float* c,
                             ptrdiff_t ldc, const float* br, const float* bc, float lo,
                             float hi) {
    for (int r = 0; r < mr; ++r)
        for (int j = 0; j < nc; ++j) {
            float s = 0.0f;
            for (int k = 0; k < K; ++k)
                s += a[r * rs_a + (ptrdiff_t)k * cs_a] * b[(ptrdiff_t)k * ldb + j];
            s += (br ? br[r] : 0.0f) + (bc ? bc[j] : 0.0f);
            c[(ptrdiff_t)r * ldc + j] = s < lo ? lo : (s > hi ? hi : s);
        }
}

void kiln_sgemm(const kiln_gemm_args* g, int m0, int m1, int n0, int n1) {
    const int K = g->K;
    for (int j = n0; j < n1; j += KILN_NR) {
        int nr = kiln_imin(KILN_NR, n1 - j);
        const float* b = g->b_packed ? g->B + (size_t)(j / KILN_NR) * K * KILN_NR : g->B + j;
        ptrdiff_t ldb = g->b_packed ? KILN_NR : g->ldb;
        const float* bc = g->bias_col ? g->bias_col + j : NULL;
        for (int i = m0; i < m1; i += KILN_MR) {
            int mr = kiln_imin(KILN_MR, m1 - i);
            const float* a = g->a_packed ? g->A + (size_t)(i / KILN_MR) * K * KILN_MR
                                         : g->A + (ptrdiff_t)i * g->lda;
            ptrdiff_t rs_a = g->a_packed ? 1 : g->lda, cs_a = g->a_packed ? KILN_MR : 1;
            const float* br = g->bias_row ? g->bias_row + i : NULL;
            float* c = g->C + (ptrdiff_t)i * g->ldc + j;
            /* Whole vectors of B where they may be read, else one vector and a sliver of
             * scalar columns: one call site, so gcc instantiates the tiles once. */
            const int whole = g->b_packed || nr == KILN_NR || g->b_padded;
            const int done = whole ? nr : nr >= KILN_GL ? KILN_GL : 0;
            if (done > 0)
                kiln_tile_dispatch(mr, done > KILN_GL ? 2 : 1, K, a, rs_a, cs_a, b, ldb, c,
                                   g->ldc, done, br, bc, g->lo, g->hi);
            if (done < nr)
                kiln_tile_scalar(mr, nr - done, K, a, rs_a, cs_a, b + done, ldb, c + done,
                                 g->ldc, br, bc ? bc + done : NULL, g->lo, g->hi);
        }
    }
}

#pragma GCC pop_options

/* kiln runtime: the GEMM micro-kernel and driver (layouts and API: kiln_gemm.h). */
#include "kiln_gemm.h"

#define KILN_GL (KILN_NR / 2) /* lanes of one GEMM vector: a tile row is two of them */
typedef float kiln_gv __attribute__((vector_size(KILN_GL * 4)));
typedef float kiln_gv_u __attribute__((vector_size(KILN_GL * 4), aligned(4), may_alias));

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

KILN_INLINE kiln_gv kiln_gload(const float* p) { return *(const kiln_gv_u*)p; }
KILN_INLINE void kiln_gstore(float* p, kiln_gv v) { *(kiln_gv_u*)p = v; }

KILN_INLINE kiln_gv kiln_gclamp(kiln_gv v, float lo, float hi) {
    typedef int32_t gi __attribute__((vector_size(KILN_GL * 4)));
    kiln_gv l = (kiln_gv){0} + lo, h = (kiln_gv){0} + hi;
    gi below = v < l, above = v > h;
    v = (kiln_gv)(((gi)l & below) | ((gi)v & ~below));
    return (kiln_gv)(((gi)h & above) | ((gi)v & ~above));
}

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

#define KILN_TILE_CASE(R)                                                                    \
    case R:                                                                                  \
        if (nv == 2) kiln_tile(R, 2, K, a, rs_a, cs_a, b, ldb, c, ldc, nc, br, bc, lo, hi); \
        else kiln_tile(R, 1, K, a, rs_a, cs_a, b, ldb, c, ldc, nc, br, bc, lo, hi);         \
        break;

static void kiln_tile_dispatch(int mr, int nv, int K, const float* a, ptrdiff_t rs_a,
                               ptrdiff_t cs_a, const float* b, ptrdiff_t ldb, float* c,
                               ptrdiff_t ldc, int nc, const float* br, const float* bc,
                               float lo, float hi) {
    switch (mr) {
        KILN_TILE_CASE(1) KILN_TILE_CASE(2) KILN_TILE_CASE(3) KILN_TILE_CASE(4)
        KILN_TILE_CASE(5) KILN_TILE_CASE(6) KILN_TILE_CASE(7) KILN_TILE_CASE(8)
        default: break;
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

#define KILN_TILE_PP_CASE(R)                                                                 \
    case R:                                                                                  \
        if (nv == 2) kiln_tile_pp(R, 2, kc, a, bp, c, ldc, nc, load_c, br, lo, hi);        \
        else kiln_tile_pp(R, 1, kc, a, bp, c, ldc, nc, load_c, br, lo, hi);                \
        break;

void kiln_sgemm_bpanel(const float* A, int M, int K, int k0, int kc, const float* bp, float* C,
                       ptrdiff_t ldc, int nc, int load_c, const float* bias_row, float lo,
                       float hi) {
    const int nv = nc > KILN_GL ? 2 : 1;
    for (int i = 0; i < M; i += KILN_MR) {
        const float* a = A + ((size_t)(i / KILN_MR) * K + k0) * KILN_MR;
        const float* br = bias_row ? bias_row + i : NULL;
        float* c = C + (ptrdiff_t)i * ldc;
        switch (kiln_imin(KILN_MR, M - i)) {
            KILN_TILE_PP_CASE(1) KILN_TILE_PP_CASE(2) KILN_TILE_PP_CASE(3)
            KILN_TILE_PP_CASE(4) KILN_TILE_PP_CASE(5) KILN_TILE_PP_CASE(6)
            KILN_TILE_PP_CASE(7) KILN_TILE_PP_CASE(8)
            default: break;
        }
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
            if (g->b_packed || nr == KILN_NR || g->b_padded) {
                int nv = nr > KILN_GL ? 2 : 1;
                kiln_tile_dispatch(mr, nv, K, a, rs_a, cs_a, b, ldb, c, g->ldc, nr, br, bc,
                                   g->lo, g->hi);
                continue;
            }
            int done = 0;
            if (nr >= KILN_GL) {
                kiln_tile_dispatch(mr, 1, K, a, rs_a, cs_a, b, ldb, c, g->ldc, KILN_GL, br,
                                   bc, g->lo, g->hi);
                done = KILN_GL;
            }
            if (done < nr)
                kiln_tile_scalar(mr, nr - done, K, a, rs_a, cs_a, b + done, ldb, c + done,
                                 g->ldc, br, bc ? bc + done : NULL, g->lo, g->hi);
        }
    }
}

#pragma GCC pop_options

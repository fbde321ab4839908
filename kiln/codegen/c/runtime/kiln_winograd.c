/* kiln runtime: Winograd F(2x2,3x3) and F(4x4,3x3) convolution (see kiln_winograd.h). */
#include <math.h>
#include <string.h>

#include "kiln_winograd_vec.h"

/* Everything below is vectorized by hand (GCC's loop vectorizer would only add checks). */
#pragma GCC optimize("no-tree-loop-vectorize")

/* Floats between the rows of a chunk's V and M: the chunk's tiles plus a transform vector
 * of slack (KILN_WG_SLACK: a tile row narrower than a vector, or a group of tile rows past
 * the chunk, writes its unused lanes past the rows), rounded to a GEMM vector so the GEMM
 * reads and writes whole vectors. */
static int kiln_wg_ldt(const kiln_conv_shape* s, int m, int rows) {
    const int gl = KILN_NR / 2;
    return (rows * KILN_WG_TW(s, m) + KILN_WG_SLACK + gl - 1) / gl * gl;
}

static int kiln_wg_mp(int M) { return (M + KILN_MR - 1) / KILN_MR * KILN_MR; }

/* Floats from one position's V (or M) to the next: a cache line more than the rows need, so
 * the (m+2)^2 streams the transforms read and write do not all fall into the same L1 sets
 * (with a multiple of 4 KiB they did, which made the transforms 3x slower). */
#define KILN_WG_SKEW 16
static size_t kiln_wg_step(int rows, int ldt) { return (size_t)rows * ldt + KILN_WG_SKEW; }

size_t kiln_wg_scratch_floats(const kiln_conv_shape* s, int m, int M, int rows) {
    const size_t a2 = (size_t)(m + 2) * (m + 2);
    const int ldt = kiln_wg_ldt(s, m, rows);
    return a2 * (kiln_wg_step(s->C, ldt) + kiln_wg_step(kiln_wg_mp(M), ldt)) +
           4 * (size_t)m * KILN_WG_XS(s, m) * m + KILN_WG_SLACK * m;
}

/* Tile rows per vector: rows of 4 tiles (and of 8 with 16 lanes) share a vector, g rows of
 * tw tiles (one vector of a narrow row would leave most lanes idle); else 1. */
KILN_INLINE int kiln_wg_group(int tw) {
    return (tw == 4 || tw == 8) && tw < KILN_WG_LANES ? KILN_WG_LANES / tw : 1;
}

/* Lanes [k tw, (k + 1) tw) from p[k] (k < g; g tw = KILN_WG_LANES, tw 4 or 8). */
KILN_INLINE kiln_wv kiln_wv_gather(const int tw, const float* const* p) {
#if KILN_WG_LANES == 16
    if (tw == 8)
        return __builtin_shufflevector(kiln_wg_load(p[0]), kiln_wg_load(p[1]), 0, 1, 2, 3, 4,
                                       5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    const kiln_w8 lo = __builtin_shufflevector(*(const kiln_w4_u*)p[0],
                                               *(const kiln_w4_u*)p[1], 0, 1, 2, 3, 4, 5, 6, 7);
    const kiln_w8 hi = __builtin_shufflevector(*(const kiln_w4_u*)p[2],
                                               *(const kiln_w4_u*)p[3], 0, 1, 2, 3, 4, 5, 6, 7);
    return __builtin_shufflevector(lo, hi, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
#else
    (void)tw;
    const kiln_w4_u lo = *(const kiln_w4_u*)p[0], hi = *(const kiln_w4_u*)p[1];
    return (kiln_wv){lo[0], lo[1], lo[2], lo[3], hi[0], hi[1], hi[2], hi[3]};
#endif
}

/* ---- transforms (in place on vectors st apart) ----------------------------------------- */

KILN_INLINE void kiln_wg_bt2(kiln_wv* d, int st) { /* B^T of F(2,3) */
    kiln_wv d0 = d[0], d1 = d[st], d2 = d[2 * st], d3 = d[3 * st];
    d[0] = d0 - d2;
    d[st] = d1 + d2;
    d[2 * st] = d2 - d1;
    d[3 * st] = d1 - d3;
}

KILN_INLINE void kiln_wg_bt4(kiln_wv* d, int st) { /* B^T of F(4,3) */
    kiln_wv d0 = d[0], d1 = d[st], d2 = d[2 * st], d3 = d[3 * st], d4 = d[4 * st],
            d5 = d[5 * st];
    kiln_wv p = d4 - d2, q = d3 - d1;
    d[0] = 4.0f * d0 - 5.0f * d2 + d4;
    d[st] = (d4 + d3) - 4.0f * (d1 + d2);
    d[2 * st] = (d4 - d3) + 4.0f * (d1 - d2);
    d[3 * st] = p + 2.0f * q;
    d[4 * st] = p - 2.0f * q;
    d[5 * st] = 4.0f * d1 - 5.0f * d3 + d5;
}

KILN_INLINE void kiln_wg_at2(kiln_wv* d, int st) { /* A^T of F(2,3): 4 -> 2 */
    kiln_wv d0 = d[0], d1 = d[st], d2 = d[2 * st], d3 = d[3 * st];
    d[0] = d0 + d1 + d2;
    d[st] = d1 - d2 - d3;
}

KILN_INLINE void kiln_wg_at4(kiln_wv* d, int st) { /* A^T of F(4,3): 6 -> 4 */
    kiln_wv s12 = d[st] + d[2 * st], d12 = d[st] - d[2 * st];
    kiln_wv s34 = d[3 * st] + d[4 * st], d34 = d[3 * st] - d[4 * st], d5 = d[5 * st];
    d[0] = d[0] + s12 + s34;
    d[st] = d12 + 2.0f * d34;
    d[2 * st] = s12 + 4.0f * s34;
    d[3 * st] = d12 + 8.0f * d34 + d5;
}

/* The first tile of the vector that covers tiles from t0 on: vectors never start past the
 * last full one (overlapping the previous vector instead), unless the row is narrower than
 * a vector, whose unused lanes then compute junk that is never stored. */
KILN_INLINE int kiln_wg_tx(int t0, int tw) {
    return tw >= KILN_WG_LANES ? kiln_imin(t0, tw - KILN_WG_LANES) : 0;
}

/* ---- input transform ------------------------------------------------------------------- */

/* B^T d B of one vector of patches, d loaded (row i, column j at d[i * a + j]), stored to
 * v + pos * step. The rows are transformed first, then each column, stored as it is done:
 * fewer vectors live at once than transforming all columns first (36 vectors do not fit
 * the 16 or 32 registers; GCC spilled half of them). */
KILN_INLINE void kiln_wg_in_patch(const int m, kiln_wv* d, float* v, size_t step) {
    const int a = m + 2;
#pragma GCC unroll 6
    for (int i = 0; i < a; ++i) {
        if (m == 2) kiln_wg_bt2(d + i * a, 1);
        else kiln_wg_bt4(d + i * a, 1);
    }
#pragma GCC unroll 6
    for (int j = 0; j < a; ++j) {
        float* q = v + j * step;
        if (m == 2) kiln_wg_bt2(d + j, a);
        else kiln_wg_bt4(d + j, a);
#pragma GCC unroll 6
        for (int i = 0; i < a; ++i) {
            kiln_wv_store(q, d[i * a + j]);
            q += a * step;
            KILN_WG_OPAQUE(q);
        }
    }
}

/* Channel c's patches of tile rows [r, r + g) of the chunk (g > 1, kiln_wg_group): lanes
 * [k tw, (k + 1) tw) from the tile row at plane + off[k]. */
KILN_INLINE void kiln_wg_input_group(const int m, const int tw, const float* plane,
                                     const size_t* off, int xsz, float* v, size_t step) {
    const int a = m + 2, g = KILN_WG_LANES / tw;
    const float* row[KILN_WG_LANES / 4]; /* patch row i of the group's tile rows */
#pragma GCC unroll 4
    for (int k = 0; k < g; ++k) row[k] = plane + off[k];
    kiln_wv d[36];
#pragma GCC unroll 6
    for (int i = 0; i < a; ++i) {
#pragma GCC unroll 6
        for (int j = 0; j < a; ++j) {
            const float* p[KILN_WG_LANES / 4];
#pragma GCC unroll 4
            for (int k = 0; k < g; ++k) p[k] = row[k] + (j % m) * xsz + j / m;
            d[i * a + j] = kiln_wv_gather(tw, p);
        }
#pragma GCC unroll 4
        for (int k = 0; k < g; ++k) {
            row[k] += m * xsz;
            KILN_WG_OPAQUE(row[k]);
        }
    }
    kiln_wg_in_patch(m, d, v, step);
}

/* V[pos * step + c * ldt + r * TW + tx] for tile rows ty0 .. ty0 + nrows - 1. Grouped rows
 * (kiln_wg_group) past the chunk repeat its last row: their lanes land in the slack past the
 * chunk's tiles (zeroed for the GEMM or never read). */
KILN_INLINE void kiln_wg_input(const int m, const float* xs, const kiln_conv_shape* s, int ty0,
                               int nrows, float* V, int ldt) {
    const int a = m + 2, tw = KILN_WG_TW(s, m), hs = KILN_WG_HS(s, m), xsz = KILN_WG_XS(s, m);
    const int g = kiln_wg_group(tw);
    const size_t pos_step = kiln_wg_step(s->C, ldt), plane_step = (size_t)hs * m * xsz;
    const size_t row_step = (size_t)m * m * xsz; /* one tile row to the next in xs */
    const float* first = xs + (size_t)ty0 * row_step;
    if (g > 1) {
        for (int r = 0; r < nrows; r += g) {
            size_t off[KILN_WG_LANES / 4];
            for (int k = 0; k < g; ++k) off[k] = kiln_imin(r + k, nrows - 1) * row_step;
            for (int c = 0; c < s->C; ++c) {
                const float* plane = first + c * plane_step;
                float* v = V + (size_t)c * ldt + r * tw;
                if (tw == 4 || KILN_WG_LANES == 8) /* 8 lanes group only rows of 4 */
                    kiln_wg_input_group(m, 4, plane, off, xsz, v, pos_step);
                else kiln_wg_input_group(m, 8, plane, off, xsz, v, pos_step);
            }
        }
        return;
    }
    for (int c = 0; c < s->C; ++c) {
        const float* plane = first + c * plane_step;
        float* vc = V + (size_t)c * ldt;
        for (int r = 0; r < nrows; ++r) {
            const float* base = plane + r * row_step;
            for (int t0 = 0; t0 < tw; t0 += KILN_WG_LANES) {
                const int tx = kiln_wg_tx(t0, tw);
                kiln_wv d[36];
                const float* row = base + tx;
#pragma GCC unroll 6
                for (int i = 0; i < a; ++i) {
#pragma GCC unroll 6
                    for (int j = 0; j < a; ++j)
                        d[i * a + j] = kiln_wv_load(row + (j % m) * xsz + j / m);
                    row += m * xsz;
                    KILN_WG_OPAQUE(row);
                }
                kiln_wg_in_patch(m, d, vc + r * tw + tx, pos_step);
            }
        }
    }
}

/* ---- the GEMMs ------------------------------------------------------------------------- */

#define KILN_WG_GL (KILN_NR / 2)
typedef float kiln_wg_gv __attribute__((vector_size(KILN_WG_GL * 4)));
typedef float kiln_wg_gv_u __attribute__((vector_size(KILN_WG_GL * 4), aligned(4), may_alias));

KILN_INLINE kiln_wg_gv kiln_wg_gload(const float* p) { return *(const kiln_wg_gv_u*)p; }

/* C (KILN_MR x nv GEMM vectors, rows ldc apart) = packed A panel (K x MR) x B (K rows ldb
 * apart): no bias, no clamp, no partial tiles (the buffers are padded for whole tiles). */
KILN_INLINE void kiln_wg_tile(const int nv, int K, const float* a, const float* b, int ldb,
                              float* c, int ldc) {
    kiln_wg_gv acc[KILN_MR][2];
#pragma GCC unroll 8
    for (int r = 0; r < KILN_MR; ++r) acc[r][0] = acc[r][1] = (kiln_wg_gv){0};
    for (int k = 0; k < K; ++k) {
        const float* bk = b + (size_t)k * ldb;
        kiln_wg_gv b0 = kiln_wg_gload(bk), b1 = nv > 1 ? kiln_wg_gload(bk + KILN_WG_GL) : b0;
        const float* ak = a + (size_t)k * KILN_MR;
#pragma GCC unroll 8
        for (int r = 0; r < KILN_MR; ++r) {
            acc[r][0] += ak[r] * b0;
            if (nv > 1) acc[r][1] += ak[r] * b1;
        }
    }
#pragma GCC unroll 8
    for (int r = 0; r < KILN_MR; ++r)
        for (int v = 0; v < nv; ++v)
            *(kiln_wg_gv_u*)(c + (size_t)r * ldc + v * KILN_WG_GL) = acc[r][v];
}

/* M[pos] (mp x n) = U[pos] (mp x C, packed) x V[pos] (C x n), n a multiple of a vector. */
static void kiln_wg_gemms(const float* U, int a2, int mp, int C, const float* V, float* Mb,
                          int ldt, int n) {
    for (int pos = 0; pos < a2; ++pos) {
        const float* u = U + (size_t)pos * mp * C;
        const float* v = V + (size_t)pos * kiln_wg_step(C, ldt);
        float* mo = Mb + (size_t)pos * kiln_wg_step(mp, ldt);
        for (int j = 0; j < n; j += KILN_NR) {
            const int two = n - j >= KILN_NR;
            for (int i = 0; i < mp; i += KILN_MR) {
                const float* ap = u + (size_t)i * C;
                if (two) kiln_wg_tile(2, C, ap, v + j, ldt, mo + (size_t)i * ldt + j, ldt);
                else kiln_wg_tile(1, C, ap, v + j, ldt, mo + (size_t)i * ldt + j, ldt);
            }
        }
    }
}

/* ---- output transform ------------------------------------------------------------------ */

#if KILN_WG_LANES == 16
#define KILN_WG_ZIP_LO 0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23
#define KILN_WG_ZIP_HI 8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31
#else
#define KILN_WG_ZIP_LO 0, 8, 1, 9, 2, 10, 3, 11
#define KILN_WG_ZIP_HI 4, 12, 5, 13, 6, 14, 7, 15
#endif
KILN_INLINE kiln_wv kiln_wg_zip_lo(kiln_wv a, kiln_wv b) {
    return __builtin_shuffle(a, b, (kiln_wvi){KILN_WG_ZIP_LO});
}
KILN_INLINE kiln_wv kiln_wg_zip_hi(kiln_wv a, kiln_wv b) {
    return __builtin_shuffle(a, b, (kiln_wvi){KILN_WG_ZIP_HI});
}

/* v clamped to [lo, hi]; ck says which bounds are finite (KILN_WG_CLAMP_*): the others
 * are skipped (an epilogue that adds a residual first stores unclamped; relu has no hi). */
enum { KILN_WG_CLAMP_NONE, KILN_WG_CLAMP_LO, KILN_WG_CLAMP_BOTH };
KILN_INLINE kiln_wv kiln_wg_clamp(const int ck, kiln_wv v, kiln_wv lo, kiln_wv hi) {
    if (ck != KILN_WG_CLAMP_NONE) {
        kiln_wvi below = v < lo;
        v = (kiln_wv)(((kiln_wvi)lo & below) | ((kiln_wvi)v & ~below));
    }
    if (ck == KILN_WG_CLAMP_BOTH) {
        kiln_wvi above = v > hi;
        v = (kiln_wv)(((kiln_wvi)hi & above) | ((kiln_wvi)v & ~above));
    }
    return v;
}

/* A^T M A of one vector of tiles (position p at src + p * step), bias added and clamped:
 * y[i * m + q] is output row i, column q of the tiles. Rows first (m+2 rows of m+2 -> m),
 * then columns: at most (m+2) m vectors live, where transforming the columns first held all
 * (m+2)^2 and spilled. */
KILN_INLINE void kiln_wg_out_patch(const int m, const int ck, const float* src, size_t step,
                                   float bias, kiln_wv lo, kiln_wv hi, kiln_wv* y) {
    const int a = m + 2;
    kiln_wv t[24];
#pragma GCC unroll 6
    for (int i = 0; i < a; ++i) {
        kiln_wv d[6];
#pragma GCC unroll 6
        for (int j = 0; j < a; ++j) {
            d[j] = kiln_wv_load(src);
            src += step;
            KILN_WG_OPAQUE(src);
        }
        if (m == 2) kiln_wg_at2(d, 1);
        else kiln_wg_at4(d, 1);
#pragma GCC unroll 4
        for (int q = 0; q < m; ++q) t[i * m + q] = d[q];
    }
#pragma GCC unroll 4
    for (int q = 0; q < m; ++q) {
        if (m == 2) kiln_wg_at2(t + q, m);
        else kiln_wg_at4(t + q, m);
#pragma GCC unroll 4
        for (int i = 0; i < m; ++i) y[i * m + q] = kiln_wg_clamp(ck, t[i * m + q] + bias, lo, hi);
    }
}

/* Output rows i < m of a vector's tiles, columns interleaved: the vector's KILN_WG_LANES / P
 * pieces of P tiles (P = KILN_WG_LANES / m, or half that with `half`) go to out + off[k] +
 * i * ld. */
KILN_INLINE void kiln_wg_out_store(const int m, const int half, const kiln_wv* y, float* out,
                                   const ptrdiff_t* off, ptrdiff_t ld) {
#pragma GCC unroll 4
    for (int i = 0; i < m; ++i) {
        const kiln_wv* r = y + i * m;
        float* o = out + i * ld;
        kiln_wv v[4];
        if (m == 2) {
            v[0] = kiln_wg_zip_lo(r[0], r[1]);
            v[1] = kiln_wg_zip_hi(r[0], r[1]);
        } else {
            kiln_wv pl = kiln_wg_zip_lo(r[0], r[2]), ph = kiln_wg_zip_hi(r[0], r[2]);
            kiln_wv ql = kiln_wg_zip_lo(r[1], r[3]), qh = kiln_wg_zip_hi(r[1], r[3]);
            v[0] = kiln_wg_zip_lo(pl, ql);
            v[1] = kiln_wg_zip_hi(pl, ql);
            v[2] = kiln_wg_zip_lo(ph, qh);
            v[3] = kiln_wg_zip_hi(ph, qh);
        }
#pragma GCC unroll 4
        for (int k = 0; k < m; ++k) {
#if KILN_WG_LANES == 16
            if (half) {
                kiln_wg_store(o + off[2 * k],
                              __builtin_shufflevector(v[k], v[k], 0, 1, 2, 3, 4, 5, 6, 7));
                kiln_wg_store(o + off[2 * k + 1],
                              __builtin_shufflevector(v[k], v[k], 8, 9, 10, 11, 12, 13, 14, 15));
                continue;
            }
#else
            (void)half;
#endif
            kiln_wv_store(o + off[k], v[k]);
        }
    }
}

/* The pixels of [n0, n1) of a tile row that went through its buffer. */
static void kiln_wg_copy_out(const kiln_conv_shape* s, int m, int oy0, const float* buf,
                             int rl, float* yc, int n0, int n1) {
    const int oy1 = kiln_imin(oy0 + m, s->OH);
    for (int oy = oy0; oy < oy1; ++oy) {
        const int p0 = oy * s->OW;
        const int lo_p = kiln_imax(p0, n0), hi_p = kiln_imin(p0 + s->OW, n1);
        if (lo_p < hi_p)
            memcpy(yc + (lo_p - n0), buf + (size_t)(oy - oy0) * rl + (lo_p - p0),
                   sizeof(float) * (hi_p - lo_p));
    }
}

/* Where a group's output rows go: channel co's at out + co * shift, tile row k of the group
 * at + k m ld; into y (shift ldy), or through buffers (shift 0) copied out per channel. */
typedef struct {
    float* out;
    ptrdiff_t ld, shift;
    int copy, oy0, rl, n0, n1;
    float* y;
    ptrdiff_t ldy;
} kiln_wg_dest;

/* Tile rows [oy0 / m, oy0 / m + g) of every output channel (channel co's M at src + co *
 * ldt): the vectors of tiles at tx (several only for one tile row, g = 1) stored through
 * kiln_wg_out_store at out + tx m with offsets off. */
KILN_INLINE void kiln_wg_output_vec(const int m, const int ck, const int half, const float* src,
                                    size_t step, int ldt, int M, const float* bias, kiln_wv lo,
                                    kiln_wv hi, const ptrdiff_t* off, int g, int tw,
                                    const kiln_conv_shape* s, const kiln_wg_dest* d) {
    const int nt = g > 1 ? 1 : tw;
    float* out = d->out;
    for (int co = 0; co < M; ++co, out += d->shift) {
        const float b = bias ? bias[co] : 0.0f;
        for (int t0 = 0; t0 < nt; t0 += KILN_WG_LANES) {
            const int tx = kiln_wg_tx(t0, tw);
            kiln_wv yv[16];
            kiln_wg_out_patch(m, ck, src + (size_t)co * ldt + tx, step, b, lo, hi, yv);
            kiln_wg_out_store(m, half, yv, out + tx * m, off, d->ld);
        }
        if (d->copy)
            for (int k = 0; k < g; ++k)
                kiln_wg_copy_out(s, m, d->oy0 + k * m, out + (size_t)k * m * d->rl, d->rl,
                                 d->y + co * d->ldy, d->n0, d->n1);
    }
}

/* Outputs of the chunk's tile rows that fall in pixels [n0, n1), for every channel. */
static void kiln_wg_output(int m, const float* Mb, int mp, int ldt, const kiln_conv_shape* s,
                           int ty0, int nrows, int M, const float* bias, float lo, float hi,
                           float* y, ptrdiff_t ldy, int n0, int n1, float* rows) {
    const int tw = KILN_WG_TW(s, m), rl = KILN_WG_XS(s, m) * m, g = kiln_wg_group(tw);
    const size_t step = kiln_wg_step(mp, ldt);
    const kiln_wv l = (kiln_wv){0} + lo, h = (kiln_wv){0} + hi;
    const int ck = hi < INFINITY    ? KILN_WG_CLAMP_BOTH
                   : lo > -INFINITY ? KILN_WG_CLAMP_LO
                                    : KILN_WG_CLAMP_NONE;
    /* A group's tile rows go straight to y when the tiles fill the output rows exactly, every
     * vector holds real tiles and all the rows are whole, in the chunk and in [n0, n1); the
     * others go through `rows` (a group past the chunk: its junk lanes, never copied). */
    const int fill = tw * m == s->OW && (tw >= KILN_WG_LANES || g > 1);
    /* pieces of P tiles; P > tw (16 lanes, m = 2, rows of 4) stores half vectors */
    const int half = g > 1 && KILN_WG_LANES / m > tw, p = half ? tw : KILN_WG_LANES / m;
    for (int r = 0; r < nrows; r += g) {
        const int oy0 = (ty0 + r) * m, oy1 = (ty0 + r + g) * m;
        if (kiln_imax(oy0 * s->OW, n0) >= kiln_imin(kiln_imin(oy1, s->OH) * s->OW, n1))
            continue;
        const int direct = fill && r + g <= nrows && oy1 <= s->OH && oy0 * s->OW >= n0 &&
                           oy1 * s->OW <= n1;
        const kiln_wg_dest d = {direct ? y + (oy0 * s->OW - n0) : rows,
                                direct ? s->OW : rl,
                                direct ? ldy : 0,
                                !direct,
                                oy0,
                                rl,
                                n0,
                                n1,
                                y,
                                ldy};
        ptrdiff_t off[8]; /* the vector's pieces, tile t = k P of the group */
        for (int k = 0, t = 0; t < KILN_WG_LANES; ++k, t += p)
            off[k] = g > 1 ? (t / tw) * m * d.ld + (t % tw) * m : t * m;
        const float* src = Mb + r * tw;
#define KILN_WG_VEC(mm, c, hf) \
    kiln_wg_output_vec(mm, c, hf, src, step, ldt, M, bias, l, h, off, g, tw, s, &d)
#define KILN_WG_VEC_CK(mm, hf)                                                   \
    do {                                                                         \
        if (ck == KILN_WG_CLAMP_NONE) KILN_WG_VEC(mm, KILN_WG_CLAMP_NONE, hf);   \
        else if (ck == KILN_WG_CLAMP_LO) KILN_WG_VEC(mm, KILN_WG_CLAMP_LO, hf);  \
        else KILN_WG_VEC(mm, KILN_WG_CLAMP_BOTH, hf);                            \
    } while (0)
        if (m == 4) KILN_WG_VEC_CK(4, 0);
        else if (half) KILN_WG_VEC_CK(2, 1);
        else KILN_WG_VEC_CK(2, 0);
#undef KILN_WG_VEC_CK
#undef KILN_WG_VEC
    }
}

void kiln_winograd_conv(const float* xs, const kiln_conv_shape* s, int m, const float* U,
                        int M, const float* bias, float* y, ptrdiff_t ldy, int n0, int n1,
                        float lo, float hi, int rows, float* scratch) {
    if (n1 <= n0 || (m != 2 && m != 4) || rows < 1) return;
    const int tw = KILN_WG_TW(s, m), a2 = (m + 2) * (m + 2), mp = kiln_wg_mp(M);
    const int ldt = kiln_wg_ldt(s, m, rows), gl = KILN_NR / 2;
    float* V = scratch;
    float* Mb = V + a2 * kiln_wg_step(s->C, ldt);
    float* out_rows = Mb + a2 * kiln_wg_step(mp, ldt);
    const int ty_first = n0 / s->OW / m, ty_last = (n1 - 1) / s->OW / m;
    for (int ty0 = ty_first; ty0 <= ty_last; ty0 += rows) {
        const int nrows = kiln_imin(rows, ty_last + 1 - ty0);
        const int n = (nrows * tw + gl - 1) / gl * gl;
        if (m == 2) kiln_wg_input(2, xs, s, ty0, nrows, V, ldt);
        else kiln_wg_input(4, xs, s, ty0, nrows, V, ldt);
        if (n > nrows * tw) /* the GEMM's last vector: zeros, not stale scratch */
            for (int pos = 0; pos < a2; ++pos)
                for (int c = 0; c < s->C; ++c)
                    memset(V + pos * kiln_wg_step(s->C, ldt) + (size_t)c * ldt + nrows * tw,
                           0, sizeof(float) * (n - nrows * tw));
        kiln_wg_gemms(U, a2, mp, s->C, V, Mb, ldt, n);
        kiln_wg_output(m, Mb, mp, ldt, s, ty0, nrows, M, bias, lo, hi, y, ldy, n0, n1,
                       out_rows);
    }
}

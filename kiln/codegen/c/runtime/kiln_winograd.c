/* kiln runtime: Winograd F(2x2,3x3) and F(4x4,3x3) convolution (see kiln_winograd.h). */
#include <math.h>
#include <string.h>

#include "kiln_winograd.h"

/* Everything below is vectorized by hand (GCC's loop vectorizer would only add checks). */
#pragma GCC optimize("no-tree-loop-vectorize")
/* The transforms use 8-float vectors on every machine (two SSE registers without AVX): the
 * functions that pass them are static and always inlined, so no call ABI is involved. */
#pragma GCC diagnostic ignored "-Wpsabi"

typedef float kiln_w8 __attribute__((vector_size(32)));
typedef float kiln_w8_u __attribute__((vector_size(32), aligned(4), may_alias));
typedef int32_t kiln_wi8 __attribute__((vector_size(32)));

KILN_INLINE kiln_w8 kiln_wg_load(const float* p) { return *(const kiln_w8_u*)p; }
KILN_INLINE void kiln_wg_store(float* p, kiln_w8 v) { *(kiln_w8_u*)p = v; }

/* Floats between the rows of a chunk's V and M: the chunk's tiles plus a vector of slack
 * (a tile row narrower than a vector writes its unused lanes past the row), rounded to a
 * GEMM vector so the GEMM reads and writes whole vectors. */
static int kiln_wg_ldt(const kiln_conv_shape* s, int m, int rows) {
    const int gl = KILN_NR / 2;
    return (rows * KILN_WG_TW(s, m) + KILN_WG_VL + gl - 1) / gl * gl;
}

static int kiln_wg_mp(int M) { return (M + KILN_MR - 1) / KILN_MR * KILN_MR; }

/* Floats from one position's V (or M) to the next: a cache line more than the rows need, so
 * the (m+2)^2 streams the transforms read and write do not all fall into the same L1 sets
 * (with a multiple of 4 KiB they did, which made the transforms 3x slower). */
#define KILN_WG_SKEW 16
static size_t kiln_wg_step(int rows, int ldt) { return (size_t)rows * ldt + KILN_WG_SKEW; }

size_t kiln_wg_image_floats(const kiln_conv_shape* s, int m) { return KILN_WG_IMAGE(s, m); }

size_t kiln_wg_scratch_floats(const kiln_conv_shape* s, int m, int M, int rows) {
    const size_t a2 = (size_t)(m + 2) * (m + 2);
    const int ldt = kiln_wg_ldt(s, m, rows);
    return a2 * (kiln_wg_step(s->C, ldt) + kiln_wg_step(kiln_wg_mp(M), ldt)) +
           (size_t)m * KILN_WG_XS(s, m) * m + KILN_WG_VL * m;
}

/* ---- the padded, phase-split image ---------------------------------------------------- */

KILN_INLINE kiln_w8 kiln_wg_even(kiln_w8 a, kiln_w8 b) {
    return __builtin_shuffle(a, b, (kiln_wi8){0, 2, 4, 6, 8, 10, 12, 14});
}
KILN_INLINE kiln_w8 kiln_wg_odd(kiln_w8 a, kiln_w8 b) {
    return __builtin_shuffle(a, b, (kiln_wi8){1, 3, 5, 7, 9, 11, 13, 15});
}

/* How a row's vectors of padded columns are read (the same for every row of a call): the
 * left padding pl, the row width w, and for the two vectors that straddle an edge, the
 * shuffle that moves a whole-vector load inside the row into place, zeros elsewhere. */
typedef struct {
    int pl, w;
    kiln_wi8 left, right;
} kiln_wg_edges;

static kiln_wg_edges kiln_wg_edges_of(int pl, int w) {
    kiln_wg_edges e = {pl, w, {0}, {0}};
    const kiln_wi8 lane = {0, 1, 2, 3, 4, 5, 6, 7}, zero = lane * 0 + KILN_WG_VL;
    const kiln_wi8 from_left = lane - pl; /* the vector at x0 = 0 from the load at src */
    const kiln_wi8 in_left = from_left >= 0;
    e.left = (from_left & in_left) | (zero & ~in_left);
    /* the vector whose columns run past w, from the load at src + w - 8 */
    const int x0 = (w + pl) / KILN_WG_VL * KILN_WG_VL, o = x0 - pl;
    const kiln_wi8 from_right = lane + o - (w - KILN_WG_VL);
    const kiln_wi8 in_right = lane + o < w;
    e.right = (from_right & in_right) | (zero & ~in_right);
    return e;
}

/* Padded columns x0 .. x0+7 of an image row (x0 a multiple of 8): src[x - pl], zero
 * outside [0, w). */
KILN_INLINE kiln_w8 kiln_wg_cols(const float* src, int x0, const kiln_wg_edges* e) {
    const int o = x0 - e->pl;
    if (o >= 0 && o + KILN_WG_VL <= e->w) return kiln_wg_load(src + o);
    kiln_w8 v = {0};
    if (o >= e->w || o + KILN_WG_VL <= 0) return v;
    if (e->w < KILN_WG_VL) {
        for (int i = 0; i < KILN_WG_VL; ++i)
            if (o + i >= 0 && o + i < e->w) v[i] = src[o + i];
        return v;
    }
    if (o < 0) return __builtin_shuffle(kiln_wg_load(src), v, e->left);
    return __builtin_shuffle(kiln_wg_load(src + e->w - KILN_WG_VL), v, e->right);
}

/* dst[ph * xs + t] = padded column t * m + ph of the row src, for t < xs: loaded straight
 * from the row (a store-then-load through a line buffer stalled on store forwarding), split
 * in registers. Whole vectors are stored, so a phase's last vector runs into the next phase
 * (or row): the vectors go from the last to the first, and the phases in order, so every
 * float ends up written by its own phase. */
KILN_INLINE void kiln_wg_split(const int m, const float* src, const kiln_wg_edges* e, int xs,
                               float* dst) {
    int t = (xs - 1) / KILN_WG_VL * KILN_WG_VL;
    if (t > 0 && xs - t <= 2) { /* a last vector of 1-2 tiles (the one past the edge): scalar */
        for (int u = t; u < xs; ++u)
            for (int ph = 0; ph < m; ++ph) {
                const int o = u * m + ph - e->pl;
                dst[ph * xs + u] = o >= 0 && o < e->w ? src[o] : 0.0f;
            }
        t -= KILN_WG_VL;
    }
    for (; t >= 0; t -= KILN_WG_VL) {
        const int x0 = t * m;
        kiln_w8 a = kiln_wg_cols(src, x0, e), b = kiln_wg_cols(src, x0 + 8, e);
        if (m == 2) {
            kiln_wg_store(dst + t, kiln_wg_even(a, b));
            kiln_wg_store(dst + xs + t, kiln_wg_odd(a, b));
        } else {
            kiln_w8 c = kiln_wg_cols(src, x0 + 16, e), d = kiln_wg_cols(src, x0 + 24, e);
            kiln_w8 e0 = kiln_wg_even(a, b), o0 = kiln_wg_odd(a, b);
            kiln_w8 e1 = kiln_wg_even(c, d), o1 = kiln_wg_odd(c, d);
            kiln_wg_store(dst + t, kiln_wg_even(e0, e1));
            kiln_wg_store(dst + xs + t, kiln_wg_even(o0, o1));
            kiln_wg_store(dst + 2 * xs + t, kiln_wg_odd(e0, e1));
            kiln_wg_store(dst + 3 * xs + t, kiln_wg_odd(o0, o1));
        }
    }
}

void kiln_wg_pad(const float* x, const kiln_conv_shape* s, int m, float* xs) {
    const int hs = KILN_WG_HS(s, m), xsz = KILN_WG_XS(s, m), len = xsz * m;
    const kiln_wg_edges e = kiln_wg_edges_of(s->pl, s->W);
    for (int c = 0; c < s->C; ++c)
        for (int yy = 0; yy < hs; ++yy) {
            float* dst = xs + ((size_t)c * hs + yy) * m * xsz;
            const int iy = yy - s->pt;
            if (iy < 0 || iy >= s->H) {
                memset(dst, 0, sizeof(float) * len);
                continue;
            }
            const float* src = x + ((size_t)c * s->H + iy) * s->W;
            if (m == 2) kiln_wg_split(2, src, &e, xsz, dst);
            else kiln_wg_split(4, src, &e, xsz, dst);
        }
    memset(xs + (size_t)s->C * hs * m * xsz, 0, sizeof(float) * KILN_WG_VL);
}

/* ---- transforms (in place on vectors st apart) ----------------------------------------- */

KILN_INLINE void kiln_wg_bt2(kiln_w8* d, int st) { /* B^T of F(2,3) */
    kiln_w8 d0 = d[0], d1 = d[st], d2 = d[2 * st], d3 = d[3 * st];
    d[0] = d0 - d2;
    d[st] = d1 + d2;
    d[2 * st] = d2 - d1;
    d[3 * st] = d1 - d3;
}

KILN_INLINE void kiln_wg_bt4(kiln_w8* d, int st) { /* B^T of F(4,3) */
    kiln_w8 d0 = d[0], d1 = d[st], d2 = d[2 * st], d3 = d[3 * st], d4 = d[4 * st],
            d5 = d[5 * st];
    kiln_w8 p = d4 - d2, q = d3 - d1;
    d[0] = 4.0f * d0 - 5.0f * d2 + d4;
    d[st] = (d4 + d3) - 4.0f * (d1 + d2);
    d[2 * st] = (d4 - d3) + 4.0f * (d1 - d2);
    d[3 * st] = p + 2.0f * q;
    d[4 * st] = p - 2.0f * q;
    d[5 * st] = 4.0f * d1 - 5.0f * d3 + d5;
}

KILN_INLINE void kiln_wg_at2(kiln_w8* d, int st) { /* A^T of F(2,3): 4 -> 2 */
    kiln_w8 d0 = d[0], d1 = d[st], d2 = d[2 * st], d3 = d[3 * st];
    d[0] = d0 + d1 + d2;
    d[st] = d1 - d2 - d3;
}

KILN_INLINE void kiln_wg_at4(kiln_w8* d, int st) { /* A^T of F(4,3): 6 -> 4 */
    kiln_w8 s12 = d[st] + d[2 * st], d12 = d[st] - d[2 * st];
    kiln_w8 s34 = d[3 * st] + d[4 * st], d34 = d[3 * st] - d[4 * st], d5 = d[5 * st];
    d[0] = d[0] + s12 + s34;
    d[st] = d12 + 2.0f * d34;
    d[2 * st] = s12 + 4.0f * s34;
    d[3 * st] = d12 + 8.0f * d34 + d5;
}

/* The first tile of the vector that covers tiles from t0 on: vectors never start past the
 * last full one (overlapping the previous vector instead), unless the row is narrower than
 * a vector, whose unused lanes then compute junk that is never stored. */
KILN_INLINE int kiln_wg_tx(int t0, int tw) {
    return tw >= KILN_WG_VL ? kiln_imin(t0, tw - KILN_WG_VL) : 0;
}

/* V[pos * step + c * ldt + r * TW + tx] for tile rows ty0 .. ty0 + nrows - 1. */
KILN_INLINE void kiln_wg_input(const int m, const float* xs, const kiln_conv_shape* s, int ty0,
                               int nrows, float* V, int ldt) {
    const int a = m + 2, tw = KILN_WG_TW(s, m), hs = KILN_WG_HS(s, m), xsz = KILN_WG_XS(s, m);
    const size_t pos_step = kiln_wg_step(s->C, ldt);
    for (int c = 0; c < s->C; ++c)
        for (int r = 0; r < nrows; ++r) {
            const float* base = xs + ((size_t)c * hs + (size_t)(ty0 + r) * m) * m * xsz;
            for (int t0 = 0; t0 < tw; t0 += KILN_WG_VL) {
                const int tx = kiln_wg_tx(t0, tw);
                kiln_w8 d[36];
#pragma GCC unroll 36
                for (int i = 0; i < a; ++i)
#pragma GCC unroll 6
                    for (int j = 0; j < a; ++j)
                        d[i * a + j] = kiln_wg_load(base + (size_t)(i * m + j % m) * xsz + tx +
                                                    j / m);
#pragma GCC unroll 6
                for (int j = 0; j < a; ++j) {
                    if (m == 2) kiln_wg_bt2(d + j, a);
                    else kiln_wg_bt4(d + j, a);
                }
#pragma GCC unroll 6
                for (int i = 0; i < a; ++i) {
                    if (m == 2) kiln_wg_bt2(d + i * a, 1);
                    else kiln_wg_bt4(d + i * a, 1);
                }
                float* v = V + (size_t)c * ldt + r * tw + tx;
#pragma GCC unroll 36
                for (int p = 0; p < a * a; ++p) kiln_wg_store(v + p * pos_step, d[p]);
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

KILN_INLINE kiln_w8 kiln_wg_zip_lo(kiln_w8 a, kiln_w8 b) {
    return __builtin_shuffle(a, b, (kiln_wi8){0, 8, 1, 9, 2, 10, 3, 11});
}
KILN_INLINE kiln_w8 kiln_wg_zip_hi(kiln_w8 a, kiln_w8 b) {
    return __builtin_shuffle(a, b, (kiln_wi8){4, 12, 5, 13, 6, 14, 7, 15});
}

KILN_INLINE kiln_w8 kiln_wg_clamp(kiln_w8 v, kiln_w8 lo, kiln_w8 hi) {
    kiln_wi8 below = v < lo, above = v > hi;
    v = (kiln_w8)(((kiln_wi8)lo & below) | ((kiln_wi8)v & ~below));
    return (kiln_w8)(((kiln_wi8)hi & above) | ((kiln_wi8)v & ~above));
}

/* Output channel co of tile row r of the chunk: m output rows of the tiles, interleaved
 * into `rows` (m rows, rl floats apart), bias added and clamped. */
KILN_INLINE void kiln_wg_output_row(const int m, const float* Mb, int mp, int ldt, int co,
                                    int r, int tw, float bias, kiln_w8 lo, kiln_w8 hi,
                                    float* rows, int rl) {
    const int a = m + 2;
    const size_t step = kiln_wg_step(mp, ldt);
    for (int t0 = 0; t0 < tw; t0 += KILN_WG_VL) {
        const int tx = kiln_wg_tx(t0, tw);
        const float* src = Mb + (size_t)co * ldt + r * tw + tx;
        kiln_w8 d[36];
#pragma GCC unroll 36
        for (int p = 0; p < a * a; ++p) d[p] = kiln_wg_load(src + p * step);
#pragma GCC unroll 6
        for (int j = 0; j < a; ++j) {
            if (m == 2) kiln_wg_at2(d + j, a);
            else kiln_wg_at4(d + j, a);
        }
#pragma GCC unroll 4
        for (int i = 0; i < m; ++i) {
            kiln_w8* y = d + i * a;
            if (m == 2) kiln_wg_at2(y, 1);
            else kiln_wg_at4(y, 1);
#pragma GCC unroll 4
            for (int q = 0; q < m; ++q) y[q] = kiln_wg_clamp(y[q] + bias, lo, hi);
            float* out = rows + (size_t)i * rl + tx * m;
            if (m == 2) {
                kiln_wg_store(out, kiln_wg_zip_lo(y[0], y[1]));
                kiln_wg_store(out + 8, kiln_wg_zip_hi(y[0], y[1]));
            } else {
                kiln_w8 pl = kiln_wg_zip_lo(y[0], y[2]), ph = kiln_wg_zip_hi(y[0], y[2]);
                kiln_w8 ql = kiln_wg_zip_lo(y[1], y[3]), qh = kiln_wg_zip_hi(y[1], y[3]);
                kiln_wg_store(out, kiln_wg_zip_lo(pl, ql));
                kiln_wg_store(out + 8, kiln_wg_zip_hi(pl, ql));
                kiln_wg_store(out + 16, kiln_wg_zip_lo(ph, qh));
                kiln_wg_store(out + 24, kiln_wg_zip_hi(ph, qh));
            }
        }
    }
}

/* Outputs of the chunk's tile rows that fall in pixels [n0, n1), for every channel. */
static void kiln_wg_output(int m, const float* Mb, int mp, int ldt, const kiln_conv_shape* s,
                           int ty0, int nrows, int M, const float* bias, float lo, float hi,
                           float* y, ptrdiff_t ldy, int n0, int n1, float* rows) {
    const int tw = KILN_WG_TW(s, m), rl = KILN_WG_XS(s, m) * m;
    const kiln_w8 l = (kiln_w8){0} + lo, h = (kiln_w8){0} + hi;
    /* Whole tile rows go straight to y when the tiles fill the output rows exactly and every
     * vector holds real tiles; the others go through `rows`, then their valid pixels. */
    const int direct = tw * m == s->OW && tw >= KILN_WG_VL;
    for (int co = 0; co < M; ++co) {
        const float b = bias ? bias[co] : 0.0f;
        for (int r = 0; r < nrows; ++r) {
            const int oy0 = (ty0 + r) * m, oy1 = kiln_imin(oy0 + m, s->OH);
            if (kiln_imax(oy0 * s->OW, n0) >= kiln_imin(oy1 * s->OW, n1)) continue;
            if (direct && oy1 == oy0 + m && oy0 * s->OW >= n0 && oy1 * s->OW <= n1) {
                float* dst = y + (ptrdiff_t)co * ldy + (oy0 * s->OW - n0);
                if (m == 2) kiln_wg_output_row(2, Mb, mp, ldt, co, r, tw, b, l, h, dst, s->OW);
                else kiln_wg_output_row(4, Mb, mp, ldt, co, r, tw, b, l, h, dst, s->OW);
                continue;
            }
            if (m == 2) kiln_wg_output_row(2, Mb, mp, ldt, co, r, tw, b, l, h, rows, rl);
            else kiln_wg_output_row(4, Mb, mp, ldt, co, r, tw, b, l, h, rows, rl);
            for (int oy = oy0; oy < oy1; ++oy) {
                const int p0 = oy * s->OW;
                const int lo_p = kiln_imax(p0, n0), hi_p = kiln_imin(p0 + s->OW, n1);
                if (lo_p < hi_p)
                    memcpy(y + (ptrdiff_t)co * ldy + (lo_p - n0),
                           rows + (size_t)(oy - oy0) * rl + (lo_p - p0),
                           sizeof(float) * (hi_p - lo_p));
            }
        }
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

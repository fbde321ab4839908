/* kiln runtime: implicit-GEMM convolution (see kiln_conv_gemm.h). */
#include <math.h>
#include <string.h>

#include "kiln_conv_gemm.h"

/* Plain loops here are short and hand-vectorized: GCC's loop vectorizer only adds checks. */
#pragma GCC optimize("no-tree-loop-vectorize")

/* The pixels of a panel as runs that are contiguous in the output: `len` pixels landing at
 * panel column `col`, whose tap (0, 0) reads the (padded) image at offset `off`. */
typedef struct {
    int col, len;
    ptrdiff_t off;
} kiln_run;

static int kiln_panel_runs(const kiln_conv_shape* s, int j, int nc, kiln_run* runs) {
    const int wp = KILN_CG_WP(s);
    if (s->sw == 1 && (s->OH == 1 || s->sh * wp == s->OW)) { /* rows follow each other */
        runs[0] = (kiln_run){0, nc, (ptrdiff_t)(j / s->OW) * s->sh * wp + j % s->OW};
        return 1;
    }
    int n = 0;
    for (int q = 0; q < nc; ++n) {
        int p = j + q, oy = p / s->OW, ox = p % s->OW;
        int len = kiln_imin(nc - q, s->OW - ox);
        runs[n] = (kiln_run){q, len, (ptrdiff_t)oy * s->sh * wp + (ptrdiff_t)ox * s->sw};
        q += len;
    }
    return n;
}

typedef float kiln_v8 __attribute__((vector_size(32), aligned(4), may_alias));
typedef float kiln_v4 __attribute__((vector_size(16), aligned(4), may_alias));

/* d[0:n] = src[0:n] in 16-, 8- and 4-float pieces: the runs are short (an output row or
 * less), and GCC's own vectorized loop spends more on its checks and tails than on the copy. */
KILN_INLINE void kiln_copy_run(float* d, const float* src, int n) {
    int i = 0;
    for (; i + 16 <= n; i += 16) {
        *(kiln_v8*)(d + i) = *(const kiln_v8*)(src + i);
        *(kiln_v8*)(d + i + 8) = *(const kiln_v8*)(src + i + 8);
    }
    if (i + 8 <= n) {
        *(kiln_v8*)(d + i) = *(const kiln_v8*)(src + i);
        i += 8;
    }
    if (i + 4 <= n) {
        *(kiln_v4*)(d + i) = *(const kiln_v4*)(src + i);
        i += 4;
    }
    for (; i < n; ++i) d[i] = src[i];
}

/* d[0:n] = src[0:2n:2]: 8 outputs from two 8-float loads and one shuffle, while the second
 * load stays inside the run (it reads one float past the last output it keeps). */
KILN_INLINE void kiln_copy_run2(float* d, const float* src, int n) {
    typedef int32_t kiln_i8 __attribute__((vector_size(32)));
    int i = 0;
    for (; i + 9 <= n; i += 8) {
        kiln_v8 a = *(const kiln_v8*)(src + 2 * i), b = *(const kiln_v8*)(src + 2 * i + 8);
        *(kiln_v8*)(d + i) = __builtin_shuffle(a, b, (kiln_i8){0, 2, 4, 6, 8, 10, 12, 14});
    }
    for (; i < n; ++i) d[i] = src[2 * i];
}

void kiln_conv_gemm_pad(const float* x, const kiln_conv_shape* s, int channels, float* xp) {
    const int hp = KILN_CG_HP(s), wp = KILN_CG_WP(s);
    for (int c = 0; c < channels; ++c) {
        float* plane = xp + (size_t)c * hp * wp;
        const float* xc = x + (size_t)c * s->H * s->W;
        memset(plane, 0, sizeof(float) * hp * wp);
        for (int iy = 0; iy < s->H; ++iy)
            kiln_copy_run(plane + (size_t)(iy + s->pt) * wp + s->pl, xc + (size_t)iy * s->W,
                          s->W);
    }
}

void kiln_conv_pack_panel(const float* xp, const kiln_conv_shape* s, int j, int nc, int k0,
                          int kc, float* bp) {
    const int wp = KILN_CG_WP(s), taps = s->KH * s->KW, sw = s->sw;
    const size_t plane = (size_t)KILN_CG_HP(s) * wp;
    kiln_run runs[KILN_NR];
    const int nruns = kiln_panel_runs(s, j, nc, runs), width = KILN_GEMM_PANEL(nc);
    int c = k0 / taps, ky = k0 % taps / s->KW, kx = k0 % s->KW;
    for (int k = 0; k < kc; ++k) {
        float* dst = bp + (size_t)k * width;
        const float* tap = xp + c * plane + (ptrdiff_t)ky * s->dh * wp + kx * s->dw;
        for (int r = 0; r < nruns; ++r) {
            const float* src = tap + runs[r].off;
            float* d = dst + runs[r].col;
            const int len = runs[r].len;
            if (sw == 1) {
                kiln_copy_run(d, src, len);
            } else if (sw == 2) {
                kiln_copy_run2(d, src, len);
            } else {
                for (int i = 0; i < len; ++i) d[i] = src[(ptrdiff_t)i * sw];
            }
        }
        for (int q = nc; q < width; ++q) dst[q] = 0.0f;
        if (++kx == s->KW) {
            kx = 0;
            if (++ky == s->KH) ky = 0, ++c;
        }
    }
}

void kiln_conv_gemm(const float* xp, const kiln_conv_shape* s, const float* A, int M,
                    const float* bias, float* y, ptrdiff_t ldy, int n0, int n1, float lo,
                    float hi, int kc, float* panel) {
    const int K = s->C * s->KH * s->KW;
    for (int j = n0; j < n1; j += KILN_NR) {
        const int nc = kiln_imin(KILN_NR, n1 - j);
        for (int k0 = 0; k0 < K; k0 += kc) {
            const int n = kiln_imin(kc, K - k0), last = k0 + n == K;
            kiln_conv_pack_panel(xp, s, j, nc, k0, n, panel);
            kiln_sgemm_bpanel(A, M, K, k0, n, panel, y + (j - n0), ldy, nc, k0 > 0,
                              last ? bias : NULL, last ? lo : -INFINITY,
                              last ? hi : INFINITY);
        }
    }
}

void kiln_conv_gemm_pad_wide(const float* x, const kiln_conv_shape* s, int channels,
                             float* xp) {
    kiln_conv_gemm_pad(x, s, channels, xp);
    memset(xp + (size_t)channels * KILN_CG_HP(s) * KILN_CG_WP(s), 0,
           sizeof(float) * KILN_CG_WIDE_SLACK);
}

#define KILN_WL (KILN_NR / 2) /* lanes of one vector of the tile: a tile row is two */
typedef float kiln_wv __attribute__((vector_size(KILN_WL * 4)));
typedef float kiln_wv_u __attribute__((vector_size(KILN_WL * 4), aligned(4), may_alias));
typedef int32_t kiln_wi __attribute__((vector_size(KILN_WL * 4)));

KILN_INLINE kiln_wv kiln_wload(const float* p) { return *(const kiln_wv_u*)p; }

/* One MR x (nv * WL) tile over all of K: B row k is `nv` vectors at b + offs[k]. The result,
 * plus bias and clamped, goes to tmp (rows KILN_NR floats apart) for the valid-column copy. */
KILN_INLINE void kiln_wide_tile(const int mr, const int nv, int K, const float* a,
                                const float* b, const int32_t* offs, float* tmp,
                                const float* bias_row, float lo, float hi) {
    kiln_wv acc[8][2];
#pragma GCC unroll 8
    for (int r = 0; r < mr; ++r) acc[r][0] = acc[r][1] = (kiln_wv){0};
    for (int k = 0; k < K; ++k) {
        const float* bk = b + offs[k];
        kiln_wv b0 = kiln_wload(bk), b1 = nv > 1 ? kiln_wload(bk + KILN_WL) : b0;
        const float* ak = a + (size_t)k * KILN_MR;
#pragma GCC unroll 8
        for (int r = 0; r < mr; ++r) {
            acc[r][0] += ak[r] * b0;
            if (nv > 1) acc[r][1] += ak[r] * b1;
        }
    }
    const kiln_wv l = (kiln_wv){0} + lo, h = (kiln_wv){0} + hi;
#pragma GCC unroll 8
    for (int r = 0; r < mr; ++r)
        for (int v = 0; v < nv; ++v) {
            kiln_wv x = acc[r][v] + (bias_row ? bias_row[r] : 0.0f);
            kiln_wi below = x < l, above = x > h;
            x = (kiln_wv)(((kiln_wi)l & below) | ((kiln_wi)x & ~below));
            x = (kiln_wv)(((kiln_wi)h & above) | ((kiln_wi)x & ~above));
            *(kiln_wv_u*)(tmp + r * KILN_NR + v * KILN_WL) = x;
        }
}

#define KILN_WIDE_CASE(R)                                                                    \
    case R:                                                                                  \
        if (nv == 2) kiln_wide_tile(R, 2, K, a, b, offs, tmp, br, lo, hi);                   \
        else kiln_wide_tile(R, 1, K, a, b, offs, tmp, br, lo, hi);                           \
        break;

/* The runs of valid pixels among grid columns [q, q + nq): `len` pixels at tile column `col`
 * that land at output column `off` (relative to pixel n0). */
static int kiln_wide_runs(int q, int nq, int wp, int ow, int n0, kiln_run* runs) {
    int n = 0;
    for (int t = 0; t < nq;) {
        const int g = q + t, oy = g / wp, ox = g % wp;
        if (ox >= ow) {
            t += wp - ox;
            continue;
        }
        const int len = kiln_imin(nq - t, ow - ox);
        runs[n++] = (kiln_run){t, len, (ptrdiff_t)oy * ow + ox - n0};
        t += len;
    }
    return n;
}

void kiln_conv_gemm_wide(const float* xp, const kiln_conv_shape* s, const float* A, int M,
                         const float* bias, float* y, ptrdiff_t ldy, int n0, int n1, float lo,
                         float hi) {
    const int wp = KILN_CG_WP(s), ow = s->OW, K = s->C * s->KH * s->KW;
    const int32_t plane = KILN_CG_HP(s) * wp;
    int32_t offs[KILN_CG_WIDE_MAXK];
    if (n1 <= n0 || K > KILN_CG_WIDE_MAXK) return;
    for (int c = 0, k = 0; c < s->C; ++c)
        for (int ky = 0; ky < s->KH; ++ky)
            for (int kx = 0; kx < s->KW; ++kx)
                offs[k++] = c * plane + ky * s->dh * wp + kx * s->dw;
    const int qa = n0 / ow * wp + n0 % ow, qb = (n1 - 1) / ow * wp + (n1 - 1) % ow + 1;
    float tmp[KILN_MR * KILN_NR] __attribute__((aligned(64)));
    kiln_run runs[KILN_NR];
    for (int q = qa; q < qb; q += KILN_NR) {
        const int nq = kiln_imin(KILN_NR, qb - q), nv = nq > KILN_WL ? 2 : 1;
        const int nruns = kiln_wide_runs(q, nq, wp, ow, n0, runs);
        const float* b = xp + q;
        for (int i = 0; i < M; i += KILN_MR) {
            const float* a = A + (size_t)(i / KILN_MR) * K * KILN_MR;
            const float* br = bias ? bias + i : NULL;
            const int mr = kiln_imin(KILN_MR, M - i);
            switch (mr) {
                KILN_WIDE_CASE(1) KILN_WIDE_CASE(2) KILN_WIDE_CASE(3) KILN_WIDE_CASE(4)
                KILN_WIDE_CASE(5) KILN_WIDE_CASE(6) KILN_WIDE_CASE(7) KILN_WIDE_CASE(8)
                default: break;
            }
            for (int r = 0; r < mr; ++r)
                for (int u = 0; u < nruns; ++u)
                    kiln_copy_run(y + (ptrdiff_t)(i + r) * ldy + runs[u].off,
                                  tmp + r * KILN_NR + runs[u].col, runs[u].len);
        }
    }
}

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

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
 * load stays inside the run (it reads one float past the last output it keeps). The last
 * 1-8 outputs of a run of more than 8 are one more vector, overlapping the one before: its
 * loads start a float early (at an odd offset, which is inside the run) and keep the odd
 * lanes, so they end on the run's last float (a 16-pixel output row was 8 scalar copies). */
KILN_INLINE void kiln_copy_run2(float* d, const float* src, int n) {
    typedef int32_t kiln_i8 __attribute__((vector_size(32)));
    int i = 0;
    for (; i + 9 <= n; i += 8) {
        kiln_v8 a = *(const kiln_v8*)(src + 2 * i), b = *(const kiln_v8*)(src + 2 * i + 8);
        *(kiln_v8*)(d + i) = __builtin_shuffle(a, b, (kiln_i8){0, 2, 4, 6, 8, 10, 12, 14});
    }
    if (i < n && n > 8) {
        const float* p = src + 2 * (n - 8) - 1;
        kiln_v8 a = *(const kiln_v8*)p, b = *(const kiln_v8*)(p + 8);
        *(kiln_v8*)(d + n - 8) = __builtin_shuffle(a, b, (kiln_i8){1, 3, 5, 7, 9, 11, 13, 15});
        return;
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

/* Stride 2: the image row src (w floats) split by column parity, column x to stream x % 2
 * at x / 2; only stream 0 when `both` is 0 (a 1x1 kernel reads one column phase). */
KILN_INLINE void kiln_split_row2(const float* src, int w, int both, float* even, float* odd) {
    typedef int32_t kiln_i8 __attribute__((vector_size(32)));
    const kiln_i8 lanes_even = {0, 2, 4, 6, 8, 10, 12, 14}, lanes_odd = lanes_even + 1;
    int x = 0;
    for (; x + 16 <= w; x += 16) {
        kiln_v8 a = *(const kiln_v8*)(src + x), b = *(const kiln_v8*)(src + x + 8);
        *(kiln_v8*)(even + x / 2) = __builtin_shuffle(a, b, lanes_even);
        if (both) *(kiln_v8*)(odd + x / 2) = __builtin_shuffle(a, b, lanes_odd);
    }
    for (; x < w; ++x) {
        if (x % 2 == 0) even[x / 2] = src[x];
        else if (both) odd[x / 2] = src[x];
    }
}

/* The grid of the wide scheme (kiln_conv_gemm.h): for stride 1 the padded image, else its
 * phases, each image row split by column phase straight into them (no padded copy in
 * between), only the padding around the image zeroed. */
static void kiln_wide_pad(const float* x, const kiln_conv_shape* s, int channels, float* xp) {
    if (s->sh == 1 && s->sw == 1) {
        kiln_conv_gemm_pad(x, s, channels, xp);
        return;
    }
    const int gh = KILN_CG_GH(s), gw = KILN_CG_GW(s), npy = KILN_CG_PY(s), npx = KILN_CG_PX(s);
    const size_t plane = (size_t)gh * gw;
    /* grid columns [q0[px], q1[px]) of phase px come from the image (column q*sw + px - pl) */
    int q0[KILN_CG_WIDE_MAX_STRIDE], q1[KILN_CG_WIDE_MAX_STRIDE];
    for (int px = 0; px < npx; ++px) {
        q0[px] = kiln_imax(0, (s->pl - px + s->sw - 1) / s->sw);
        q1[px] = kiln_imax(q0[px], kiln_imin(gw, (s->W + s->pl - px + s->sw - 1) / s->sw));
    }
    /* stride 2: image column x lands in phase (x + pl) % 2 at (x + pl) / 2 */
    const int pe = s->pl % 2, po = (1 + s->pl) % 2;
    const size_t to_even = pe * plane + s->pl / 2,
                 to_odd = (po < npx ? po : 0) * plane + (1 + s->pl) / 2;
    for (int c = 0; c < channels; ++c) {
        /* the channel's phases zeroed (a few KiB, then in L1), then the image rows in order
         * (a sequential read), each to row r of phase py: counted, not divided (a division
         * per row cost as much as splitting a 16-float row) */
        float* chan = xp + (size_t)c * npy * npx * plane;
        memset(chan, 0, sizeof(float) * npy * npx * plane);
        for (int iy = 0, py = s->pt % s->sh, r = s->pt / s->sh; iy < s->H;
             ++iy, py = py + 1 == s->sh ? 0 : py + 1, r += py == 0) {
            if (py >= npy) continue;
            const float* src = x + ((size_t)c * s->H + iy) * s->W;
            float* row = chan + (size_t)py * npx * plane + (size_t)r * gw;
            if (s->sw == 2) {
                if (npx == 2) kiln_split_row2(src, s->W, 1, row + to_even, row + to_odd);
                else if (pe == 0) kiln_split_row2(src, s->W, 0, row + to_even, row);
                else kiln_split_row2(src + 1, s->W - 1, 0, row + to_odd, row);
                continue;
            }
            for (int px = 0; px < npx; ++px) {
                float* dst = row + px * plane;
                const float* from = src + (ptrdiff_t)q0[px] * s->sw + px - s->pl;
                for (int q = q0[px]; q < q1[px]; ++q)
                    dst[q] = from[(ptrdiff_t)(q - q0[px]) * s->sw];
            }
        }
    }
}

void kiln_conv_gemm_pad_wide(const float* x, const kiln_conv_shape* s, int channels,
                             float* xp) {
    kiln_wide_pad(x, s, channels, xp);
    memset(xp + (size_t)channels * KILN_CG_GRID(s), 0, sizeof(float) * KILN_CG_WIDE_SLACK);
}

#define KILN_WL (KILN_NR / 2) /* lanes of one vector of the tile: a tile row is two */
typedef float kiln_wv __attribute__((vector_size(KILN_WL * 4)));
typedef float kiln_wv_u __attribute__((vector_size(KILN_WL * 4), aligned(4), may_alias));
typedef int32_t kiln_wi __attribute__((vector_size(KILN_WL * 4)));

KILN_INLINE kiln_wv kiln_wload(const float* p) { return *(const kiln_wv_u*)p; }

/* One vector of a tile: `len` (<= WL) consecutive output pixels of one image, stored at y.
 * Lane l reads the padded image at b + offs[k] + idx[l]; `len` pixels span at most 2 * WL
 * grid columns (kiln_wide_next), so with `perm` a lane is picked out of two loaded vectors
 * by one two-source shuffle, and without it (the pixels are one run: idx[l] = l) read
 * straight from one load. */
typedef struct {
    const float* b;
    float* y;
    int len;
    kiln_wi idx;
} kiln_wvec;

KILN_INLINE kiln_wv kiln_wrow(const float* p, const kiln_wi idx, const int perm) {
    return perm ? __builtin_shuffle(kiln_wload(p), kiln_wload(p + KILN_WL), idx) : kiln_wload(p);
}

/* Bias, clamp and the store of one tile row vector: whole vectors straight to y, a partial
 * one through `tmp` (its lanes past len belong to other pixels or nothing). */
KILN_INLINE void kiln_wstore(float* y, int len, kiln_wv x, float bias, kiln_wv l, kiln_wv h) {
    x += bias;
    kiln_wi below = x < l, above = x > h;
    x = (kiln_wv)(((kiln_wi)l & below) | ((kiln_wi)x & ~below));
    x = (kiln_wv)(((kiln_wi)h & above) | ((kiln_wi)x & ~above));
    if (len == KILN_WL) {
        *(kiln_wv_u*)y = x;
    } else {
        float tmp[KILN_WL] __attribute__((aligned(64)));
        *(kiln_wv*)tmp = x;
        for (int i = 0; i < len; ++i) y[i] = tmp[i];
    }
}

/* One MR x (nv vectors) tile over all of K, bias and clamp on store (rows ldy apart). */
KILN_INLINE void kiln_wide_tile(const int mr, const int nv, const int perm, int K,
                                const float* a, const kiln_wvec* v, const int32_t* offs,
                                ptrdiff_t ldy, const float* bias_row, float lo, float hi) {
    kiln_wv acc[8][2];
    const float *b0 = v[0].b, *b1 = nv > 1 ? v[1].b : v[0].b;
    const kiln_wi i0 = v[0].idx, i1 = nv > 1 ? v[1].idx : v[0].idx;
#pragma GCC unroll 8
    for (int r = 0; r < mr; ++r) acc[r][0] = acc[r][1] = (kiln_wv){0};
    for (int k = 0; k < K; ++k) {
        const kiln_wv x0 = kiln_wrow(b0 + offs[k], i0, perm);
        const kiln_wv x1 = nv > 1 ? kiln_wrow(b1 + offs[k], i1, perm) : x0;
        const float* ak = a + (size_t)k * KILN_MR;
#pragma GCC unroll 8
        for (int r = 0; r < mr; ++r) {
            acc[r][0] += ak[r] * x0;
            if (nv > 1) acc[r][1] += ak[r] * x1;
        }
    }
    const kiln_wv l = (kiln_wv){0} + lo, h = (kiln_wv){0} + hi;
#pragma GCC unroll 8
    for (int r = 0; r < mr; ++r)
        for (int u = 0; u < nv; ++u)
            kiln_wstore(v[u].y + r * ldy, v[u].len, acc[r][u], bias_row ? bias_row[r] : 0.0f,
                        l, h);
}

#define KILN_WIDE_NV(R, NV)                                                                  \
    if (perm) kiln_wide_tile(R, NV, 1, K, a, v, offs, ldy, br, lo, hi);                      \
    else kiln_wide_tile(R, NV, 0, K, a, v, offs, ldy, br, lo, hi);
#define KILN_WIDE_CASE(R)                                                                    \
    case R:                                                                                  \
        if (nv == 2) {                                                                       \
            KILN_WIDE_NV(R, 2)                                                               \
        } else {                                                                             \
            KILN_WIDE_NV(R, 1)                                                               \
        }                                                                                    \
        break;

/* Where the walk over the output pixels of a set of images stands: image `img`, pixel p
 * (row oy, column ox) among the pixels [n0, n1) of each image. */
typedef struct {
    int img, p, oy, ox;
} kiln_wcursor;

/* The next vector from the cursor (which it advances): as many pixels as fit WL lanes and
 * 2 * WL grid columns (q = oy * WP + ox) without leaving the image or [n0, n1). Returns
 * whether the pixels are one run of the grid (no shuffle needed). The lanes are walked a row
 * at a time, not a pixel at a time: lane l of output row j (counted from the cursor's) sits
 * at grid column l + j * (WP - OW), so the row starts give every lane's index in a few vector
 * operations, kept in registers (filling them pixel by pixel through memory was a fifth of a
 * one-channel conv's time). */
static int kiln_wide_next(kiln_wcursor* c, const kiln_conv_shape* s, int n1, const float* xp,
                          ptrdiff_t xstride, float* y, ptrdiff_t ystride, int n0,
                          kiln_wvec* v) {
    const int wp = KILN_CG_GW(s), ow = s->OW, gap = wp - ow;
    kiln_wi lane, idx;
    for (int l = 0; l < KILN_WL; ++l) lane[l] = l;
    int len = kiln_imin(KILN_WL, n1 - c->p), rows = 0;
    idx = lane;
    /* row j >= 1 starts at lane j * OW - ox; its lanes fit while l + j * gap < 2 * WL */
    for (int j = 1, at = ow - c->ox; at < len; ++j, at += ow) {
        if (at + j * gap >= 2 * KILN_WL) {
            len = at;
            break;
        }
        len = kiln_imin(len, 2 * KILN_WL - j * gap);
        idx += (lane >= at) & gap;
        rows = j;
    }
    const int last = len - 1 + rows * gap; /* the grid column of the last lane */
    idx = (kiln_wi)(((lane < len) & idx) | ((lane >= len) & last));
    v->b = xp + c->img * xstride + c->oy * wp + c->ox;
    v->y = y + c->img * ystride + (c->p - n0);
    v->len = len;
    v->idx = idx;
    c->p += len;
    c->ox += len;
    while (c->ox >= ow) c->ox -= ow, c->oy += 1;
    if (c->p == n1) c->img += 1, c->p = n0, c->oy = n0 / ow, c->ox = n0 % ow;
    return last == len - 1;
}

/* The tap offsets of the K rows on the grid (see kiln_conv_gemm.h): tap (ky, kx) at padded
 * (ty, tx) = (ky*dh, kx*dw) from the pixel is phase (ty%sh, tx%sw), (ty/sh, tx/sw) on. The
 * row and column parts are apart, so the divisions run C*KH + KW times, not 4*C*KH*KW (they
 * were most of this table's cost, which every call pays). The first KW entries (c = ky = 0,
 * row part 0) are the column parts themselves, which the other rows add. */
static void kiln_wide_offsets(const kiln_conv_shape* s, int32_t* offs) {
    const int gw = KILN_CG_GW(s), npx = KILN_CG_PX(s);
    const int32_t plane = KILN_CG_GH(s) * gw, chan = (int32_t)KILN_CG_GRID(s);
    for (int kx = 0; kx < s->KW; ++kx) {
        const int tx = kx * s->dw;
        offs[kx] = tx % s->sw * plane + tx / s->sw;
    }
    for (int c = 0, k = s->KW; c < s->C; ++c)
        for (int ky = c == 0; ky < s->KH; ++ky) {
            const int ty = ky * s->dh;
            const int32_t row = c * chan + ty % s->sh * npx * plane + ty / s->sh * gw;
            for (int kx = 0; kx < s->KW; ++kx) offs[k++] = row + offs[kx];
        }
}

/* Pixels [n0, n1) of `images` padded images (xstride floats apart; their outputs ystride
 * apart), tiles of two vectors taken in order, so a tile may hold the end of one image and
 * the start of the next. */
static void kiln_wide_images(const float* xp, ptrdiff_t xstride, const kiln_conv_shape* s,
                             const int32_t* offs, const float* A, int M, const float* bias,
                             float* y, ptrdiff_t ldy, ptrdiff_t ystride, int images, int n0,
                             int n1, float lo, float hi) {
    const int K = s->C * s->KH * s->KW;
    kiln_wcursor cur = {0, n0, n0 / s->OW, n0 % s->OW};
    while (cur.img < images) {
        kiln_wvec v[2];
        int nv = 1, perm = !kiln_wide_next(&cur, s, n1, xp, xstride, y, ystride, n0, &v[0]);
        if (cur.img < images) {
            perm |= !kiln_wide_next(&cur, s, n1, xp, xstride, y, ystride, n0, &v[1]);
            nv = 2;
        }
        for (int i = 0; i < M; i += KILN_MR) {
            const float* a = A + (size_t)(i / KILN_MR) * K * KILN_MR;
            const float* br = bias ? bias + i : NULL;
            switch (kiln_imin(KILN_MR, M - i)) {
                KILN_WIDE_CASE(1) KILN_WIDE_CASE(2) KILN_WIDE_CASE(3) KILN_WIDE_CASE(4)
                KILN_WIDE_CASE(5) KILN_WIDE_CASE(6) KILN_WIDE_CASE(7) KILN_WIDE_CASE(8)
                default: break;
            }
            for (int u = 0; u < nv; ++u) v[u].y += KILN_MR * ldy;
        }
    }
}

/* K past the offset table is a caller's bug (kiln's code generator routes such convs to the
 * gather): stop here rather than return with y unwritten. */
#define KILN_CG_WIDE_CHECK(s)                                                                \
    if ((s)->C * (s)->KH * (s)->KW > KILN_CG_WIDE_MAXK || (s)->sh < 1 || (s)->sw < 1 ||      \
        (s)->sh > KILN_CG_WIDE_MAX_STRIDE || (s)->sw > KILN_CG_WIDE_MAX_STRIDE ||              \
        ((s)->sh * (s)->sw > 1 && (s)->dh * (s)->dw != 1))                                   \
        __builtin_trap();

void kiln_conv_gemm_wide(const float* xp, const kiln_conv_shape* s, const float* A, int M,
                         const float* bias, float* y, ptrdiff_t ldy, int n0, int n1, float lo,
                         float hi) {
    KILN_CG_WIDE_CHECK(s)
    int32_t offs[KILN_CG_WIDE_MAXK];
    if (n1 <= n0) return;
    kiln_wide_offsets(s, offs);
    kiln_wide_images(xp, 0, s, offs, A, M, bias, y, ldy, 0, 1, n0, n1, lo, hi);
}

void kiln_conv_gemm_wide_batch(const float* x, const kiln_conv_shape* s, const float* A,
                               int M, const float* bias, float* y, int images, float lo,
                               float hi, float* xp) {
    KILN_CG_WIDE_CHECK(s)
    int32_t offs[KILN_CG_WIDE_MAXK];
    const int P = s->OH * s->OW;
    const size_t image = (size_t)s->C * s->H * s->W;
    const ptrdiff_t padded = (ptrdiff_t)s->C * KILN_CG_GRID(s);
    if (P == 0) return;
    kiln_wide_offsets(s, offs);
    for (int i = 0; i < images; i += KILN_CG_WIDE_GROUP) {
        const int g = kiln_imin(KILN_CG_WIDE_GROUP, images - i);
        for (int j = 0; j < g; ++j)
            kiln_wide_pad(x + (i + j) * image, s, s->C, xp + j * padded);
        memset(xp + g * padded, 0, sizeof(float) * KILN_CG_WIDE_SLACK);
        kiln_wide_images(xp, padded, s, offs, A, M, bias, y + (ptrdiff_t)i * M * P, P,
                         (ptrdiff_t)M * P, g, 0, P, lo, hi);
    }
}

/* kiln runtime: the zero-padded, phase-split image Winograd convolution reads
 * (`kiln_wg_pad`, layout in kiln_winograd.h). */
#include <string.h>

#include "kiln_winograd_vec.h"

/* Vectorized by hand (GCC's loop vectorizer would only add checks). */
#pragma GCC optimize("no-tree-loop-vectorize")

size_t kiln_wg_image_floats(const kiln_conv_shape* s, int m) { return KILN_WG_IMAGE(s, m); }

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
    if (t > 0 && xs - t <= 2) { /* a last vector of 1-2 tiles (the one past the edge) */
        /* its 2m columns from one load, each phase's tiles moved to the front (zeros after;
         * the store's tail runs into the next phase, rewritten by that phase's t = 0) */
        const kiln_w8 v = kiln_wg_cols(src, t * m, e), z = {0};
#pragma GCC unroll 4
        for (int ph = 0; ph < m; ++ph) {
            const kiln_wi8 sel = m == 2 ? (kiln_wi8){ph, ph + 2, ph + 4, ph + 6, 8, 8, 8, 8}
                                        : (kiln_wi8){ph, ph + 4, 8, 8, 8, 8, 8, 8};
            kiln_wg_store(dst + ph * xs + t, __builtin_shuffle(v, z, sel));
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

#define KILN_WG_AHEAD 1024

#if KILN_WG_LANES == 16
/* Rows of at most 32 floats split with one permute per phase (the 8-float path took five
 * loads, edge shuffles and a two-level even/odd split, ~30 cycles a row): for phase ph, lane
 * t takes column t m + ph - pl of the row (idx), zero where that is padding (keep). */
typedef struct {
    kiln_wvi idx[4], keep[4];
} kiln_wg_split16;

static kiln_wg_split16 kiln_wg_split16_of(int m, int pl, int w) {
    kiln_wg_split16 e;
    memset(&e, 0, sizeof e);
    for (int ph = 0; ph < m; ++ph)
        for (int t = 0; t < 16; ++t) {
            const int col = t * m + ph - pl, ok = col >= 0 && col < w;
            e.idx[ph][t] = ok ? col : 0;
            e.keep[ph][t] = ok ? -1 : 0;
        }
    return e;
}

/* dst[ph * xs + t] for t < xs <= 16 from the 32 floats at src (in the image): 16-float
 * stores, phases in order, so a phase's store running into the next phase (or row) is
 * rewritten by it. */
KILN_INLINE void kiln_wg_split_row16(const int m, const float* src, const kiln_wg_split16* e,
                                     int xs, float* dst) {
    const kiln_wv a = kiln_wv_load(src), b = kiln_wv_load(src + 16);
#pragma GCC unroll 4
    for (int ph = 0; ph < m; ++ph) {
        const kiln_wvi v = (kiln_wvi)__builtin_shuffle(a, b, e->idx[ph]) & e->keep[ph];
        kiln_wv_store(dst + ph * xs, (kiln_wv)v);
    }
}
#endif

void kiln_wg_pad(const float* x, const kiln_conv_shape* s, int m, float* xs) {
    const int hs = KILN_WG_HS(s, m), xsz = KILN_WG_XS(s, m), len = xsz * m;
    const kiln_wg_edges e = kiln_wg_edges_of(s->pl, s->W);
#if KILN_WG_LANES == 16
    /* the one-permute split where a row's 32 floats are in the image */
    const float* end = x + (size_t)s->C * s->H * s->W;
    const int narrow = s->W <= 32 && xsz <= 16;
    const kiln_wg_split16 e16 = kiln_wg_split16_of(narrow ? m : 0, s->pl, s->W);
#endif
    for (int c = 0; c < s->C; ++c)
        for (int yy = 0; yy < hs; ++yy) {
            float* dst = xs + ((size_t)c * hs + yy) * m * xsz;
            const int iy = yy - s->pt;
            if (iy < 0 || iy >= s->H) {
                memset(dst, 0, sizeof(float) * len);
                continue;
            }
            const float* src = x + ((size_t)c * s->H + iy) * s->W;
            /* The image comes from the previous layer's output, in L3 or memory at large
             * batch: the loads stalled (a third of the time), so the image is fetched
             * KILN_WG_AHEAD floats ahead. A prefetch past the image does not fault. */
            for (int k = 0; k < s->W; k += 16) __builtin_prefetch(src + KILN_WG_AHEAD + k);
#if KILN_WG_LANES == 16
            if (narrow && end - src >= 32) {
                if (m == 2) kiln_wg_split_row16(2, src, &e16, xsz, dst);
                else kiln_wg_split_row16(4, src, &e16, xsz, dst);
                continue;
            }
#endif
            if (m == 2) kiln_wg_split(2, src, &e, xsz, dst);
            else kiln_wg_split(4, src, &e, xsz, dst);
        }
    memset(xs + (size_t)s->C * hs * m * xsz, 0, sizeof(float) * KILN_WG_SLACK);
}

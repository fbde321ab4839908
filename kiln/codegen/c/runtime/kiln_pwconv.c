/* kiln runtime: pointwise convolutions from NCHW images (see kiln_pwconv.h). */
#include "kiln_pwconv.h"

#if KILN_VLEN == 16 && defined(__AVX512F__)
#include <immintrin.h>
#endif

/* One vector of pixels: where it is read (channel 0), written and its residual read (output
 * channel 0), and how many of its lanes are pixels of the plane. */
typedef struct {
    const float* x;
    float* y;
    const float* r;
    int n;
} kiln_pw_slot;

KILN_INLINE kiln_vf kiln_pw_load(const float* p, int n) {
#if KILN_VLEN == 16 && defined(__AVX512F__)
    return (kiln_vf)_mm512_maskz_loadu_ps((__mmask16)((1u << n) - 1u), p);
#else
    if (n == KILN_VLEN) return kiln_loadu(p);
    kiln_vf v = kiln_splat(0.0f);
    for (int i = 0; i < n; ++i) v[i] = p[i];
    return v;
#endif
}

KILN_INLINE void kiln_pw_store(float* p, int n, kiln_vf v) {
#if KILN_VLEN == 16 && defined(__AVX512F__)
    _mm512_mask_storeu_ps(p, (__mmask16)((1u << n) - 1u), (__m512)v);
#else
    if (n == KILN_VLEN) {
        kiln_storeu(p, v);
        return;
    }
    for (int i = 0; i < n; ++i) p[i] = v[i];
#endif
}

/* The epilogue of one accumulator: residual, clamp (NaN passes, as in the reference ops),
 * hardswish x * clamp(x + 3, 0, 6) / 6 (as a multiply by 1/6: within an ulp of the division,
 * which would cost more than the FMAs of a short K). */
KILN_INLINE kiln_vf kiln_pw_clamp(kiln_vf v, kiln_vf lo, kiln_vf hi) {
#if KILN_VLEN == 16 && defined(__AVX512F__)
    /* vmaxps / vminps return their second operand when either is NaN: v's NaN passes */
    return (kiln_vf)_mm512_min_ps((__m512)hi, _mm512_max_ps((__m512)lo, (__m512)v));
#else
    return kiln_select(v < lo, lo, kiln_select(v > hi, hi, v));
#endif
}

KILN_INLINE kiln_vf kiln_pw_epilogue(kiln_vf v, const float* res, int n, kiln_vf lo, kiln_vf hi,
                                     const int CLAMP, const int HS, const int RES) {
    if (RES) v += kiln_pw_load(res, n);
    if (CLAMP) v = kiln_pw_clamp(v, lo, hi);
    if (HS) {
        const kiln_vf t = kiln_pw_clamp(v + kiln_splat(3.0f), kiln_splat(0.0f), kiln_splat(6.0f));
        v = v * t * kiln_splat(1.0f / 6.0f);
    }
    return v;
}

/* NV vectors of pixels (`slot`) times every output channel, KILN_MR channels (one weight
 * panel) at a time; the NV vectors of x stay in L1 across the panels. Constant NV and
 * epilogue flags after inlining: the accumulators live in registers. */
KILN_INLINE void kiln_pw_tile(const kiln_pw_args* a, const kiln_pw_slot* slot, const int NV,
                              const int CLAMP, const int HS, const int RES) {
    const int K = a->C;
    const size_t P = (size_t)a->P;
    const kiln_vf lo = kiln_splat(a->lo), hi = kiln_splat(a->hi);
    for (int i = 0; i < a->Cout; i += KILN_MR) {
        const float* w = a->w + (size_t)i * K; /* panel i / MR: MR floats per k */
        const int mr = kiln_imin(KILN_MR, a->Cout - i);
        kiln_vf acc[KILN_MR][KILN_PW_NV], xv[KILN_PW_NV];
        /* k = 0 peeled: the accumulators start as bias + w x (no copies of the bias) */
        for (int v = 0; v < NV; ++v) xv[v] = kiln_pw_load(slot[v].x, slot[v].n);
#pragma GCC unroll 8
        for (int r = 0; r < KILN_MR; ++r) {
            const kiln_vf b = kiln_splat(a->bias && r < mr ? a->bias[i + r] : 0.0f);
            for (int v = 0; v < NV; ++v) acc[r][v] = kiln_splat(w[r]) * xv[v] + b;
        }
        for (int k = 1; k < K; ++k) {
            for (int v = 0; v < NV; ++v) xv[v] = kiln_pw_load(slot[v].x + k * P, slot[v].n);
            const float* wk = w + (size_t)k * KILN_MR;
#pragma GCC unroll 8
            for (int r = 0; r < KILN_MR; ++r)
                for (int v = 0; v < NV; ++v) acc[r][v] += kiln_splat(wk[r]) * xv[v];
        }
#pragma GCC unroll 8
        for (int r = 0; r < KILN_MR; ++r) {
            if (r >= mr) break;
            const ptrdiff_t row = (ptrdiff_t)(i + r) * a->ldy;
            for (int v = 0; v < NV; ++v)
                kiln_pw_store(slot[v].y + row, slot[v].n,
                              kiln_pw_epilogue(acc[r][v], RES ? slot[v].r + row : NULL,
                                               slot[v].n, lo, hi, CLAMP, HS, RES));
        }
    }
}

typedef void (*kiln_pw_fn)(const kiln_pw_args*, const kiln_pw_slot*);
#define KILN_PW_DEFINE(name, NV, CLAMP, HS, RES)                                    \
    static void name(const kiln_pw_args* a, const kiln_pw_slot* slot) {            \
        kiln_pw_tile(a, slot, NV, CLAMP, HS, RES);                                 \
    }
#define KILN_PW_FAMILY(name, CLAMP, HS, RES)                          \
    KILN_PW_DEFINE(name##_1, 1, CLAMP, HS, RES)                       \
    KILN_PW_DEFINE(name##_2, 2 < KILN_PW_NV ? 2 : KILN_PW_NV, CLAMP, HS, RES) \
    KILN_PW_DEFINE(name##_n, KILN_PW_NV, CLAMP, HS, RES)
KILN_PW_FAMILY(kiln_pw_plain, 0, 0, 0)
KILN_PW_FAMILY(kiln_pw_clamp, 1, 0, 0)
KILN_PW_FAMILY(kiln_pw_hs, 0, 1, 0)
KILN_PW_FAMILY(kiln_pw_clamp_hs, 1, 1, 0)
KILN_PW_FAMILY(kiln_pw_res, 0, 0, 1)
KILN_PW_FAMILY(kiln_pw_res_clamp, 1, 0, 1)
KILN_PW_FAMILY(kiln_pw_res_hs, 0, 1, 1)
KILN_PW_FAMILY(kiln_pw_res_clamp_hs, 1, 1, 1)

/* [residual][hardswish][clamp] -> tiles of 1, 2 and KILN_PW_NV vectors */
static const kiln_pw_fn kiln_pw_table[2][2][2][3] = {
    {{{kiln_pw_plain_1, kiln_pw_plain_2, kiln_pw_plain_n},
      {kiln_pw_clamp_1, kiln_pw_clamp_2, kiln_pw_clamp_n}},
     {{kiln_pw_hs_1, kiln_pw_hs_2, kiln_pw_hs_n},
      {kiln_pw_clamp_hs_1, kiln_pw_clamp_hs_2, kiln_pw_clamp_hs_n}}},
    {{{kiln_pw_res_1, kiln_pw_res_2, kiln_pw_res_n},
      {kiln_pw_res_clamp_1, kiln_pw_res_clamp_2, kiln_pw_res_clamp_n}},
     {{kiln_pw_res_hs_1, kiln_pw_res_hs_2, kiln_pw_res_hs_n},
      {kiln_pw_res_clamp_hs_1, kiln_pw_res_clamp_hs_2, kiln_pw_res_clamp_hs_n}}},
};

void kiln_pwconv(const kiln_pw_args* a, int n0, int n1, int p0, int p1) {
    const int clamp = a->lo > -__builtin_inff() || a->hi < __builtin_inff();
    const kiln_pw_fn* fns = kiln_pw_table[a->res != NULL][a->act == KILN_PW_HARDSWISH][clamp];
    kiln_pw_slot slot[KILN_PW_NV];
    int ns = 0;
    /* the pixel vectors of every image in turn, KILN_PW_NV to a tile: a tile may span two
     * images (small planes), never more than one tile call per KILN_PW_NV vectors */
    for (int n = n0; n < n1; ++n) {
        const float* xn = a->x + (ptrdiff_t)n * a->x_image;
        const ptrdiff_t yn = (ptrdiff_t)n * a->y_image;
        for (int p = p0; p < p1; p += KILN_VLEN) {
            slot[ns].x = xn + p;
            slot[ns].y = a->y + yn + (p - p0);
            slot[ns].r = a->res ? a->res + yn + (p - p0) : NULL;
            slot[ns].n = kiln_imin(KILN_VLEN, p1 - p);
            if (++ns == KILN_PW_NV) {
                fns[2](a, slot);
                ns = 0;
            }
        }
    }
    if (ns == 1) fns[0](a, slot);
    if (ns == 2) fns[1](a, slot);
}

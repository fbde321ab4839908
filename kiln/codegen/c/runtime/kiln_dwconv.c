/* kiln runtime: direct convolution over padded lines (see kiln_dwconv.h). */
#include "kiln_dwconv.h"

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

/* dst[0, n) = src[0, n) for short rows, inlined: whole vectors, then one last vector that
 * overlaps the previous one (a scalar tail loop would become a memcpy call, which costs more
 * than the copy). */
typedef float kiln_dw_v4 __attribute__((vector_size(16), aligned(4), may_alias));
KILN_INLINE void kiln_dw_copy(float* dst, const float* src, int n) {
    if (n >= KILN_VLEN) {
        for (int i = 0; i + KILN_VLEN < n; i += KILN_VLEN)
            kiln_storeu(dst + i, kiln_loadu(src + i));
        kiln_storeu(dst + n - KILN_VLEN, kiln_loadu(src + n - KILN_VLEN));
    } else if (n >= 4) {
        for (int i = 0; i + 4 < n; i += 4) *(kiln_dw_v4*)(dst + i) = *(const kiln_dw_v4*)(src + i);
        *(kiln_dw_v4*)(dst + n - 4) = *(const kiln_dw_v4*)(src + n - 4);
    } else {
        for (int i = 0; i < n; ++i) dst[i] = src[i];
    }
}

/* The positions [a, b) of each phase that fall inside a row (the same for every row). */
typedef struct {
    int a[KILN_DW_MAX_STRIDE], b[KILN_DW_MAX_STRIDE];
} kiln_dw_span;

#if KILN_VLEN == 16 && defined(__AVX512F__)
/* padded[j, j + 16) of a row: src[j - pl ...] where inside [0, W), else 0 (a masked load
 * never touches the lanes it leaves out). */
KILN_INLINE kiln_vf kiln_dw_padded(const float* src, int j, const kiln_conv_shape* s) {
    const int first = j - s->pl;
    unsigned mask = 0xFFFFu;
    if (first < 0) mask &= first <= -16 ? 0u : 0xFFFFu << -first;
    if (first + 16 > s->W) mask &= s->W - first <= 0 ? 0u : 0xFFFFu >> (16 - (s->W - first));
    return (kiln_vf)_mm512_maskz_loadu_ps((__mmask16)mask, src + first);
}

/* Stride 2: the even and odd phases of each padded row, two masked loads and two shuffles per
 * 16 positions (no copy of the row first). */
static void kiln_dw_split2(const float* xc, const kiln_conv_shape* s, float* tmp, float* dst) {
    const int phase = KILN_DW_PHASE(s);
    const kiln_vi even = {0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30};
    const kiln_vi odd = even + 1;
    (void)tmp;
    for (int iy = 0; iy < s->H; ++iy) {
        const float* src = xc + (size_t)iy * s->W;
        float* line = dst + (size_t)iy * 2 * phase;
        for (int q = 0; q < phase; q += 16) {
            const kiln_vf v0 = kiln_dw_padded(src, 2 * q, s);
            const kiln_vf v1 = kiln_dw_padded(src, 2 * q + 16, s);
            const kiln_vf e = __builtin_shuffle(v0, v1, even), o = __builtin_shuffle(v0, v1, odd);
            const __mmask16 m = (__mmask16)(phase - q >= 16 ? 0xFFFFu : (1u << (phase - q)) - 1u);
            _mm512_mask_storeu_ps(line + q, m, (__m512)e);
            _mm512_mask_storeu_ps(line + phase + q, m, (__m512)o);
        }
    }
}
#else
/* Stride 2: the padded rows in `tmp` (margins zero) split into the even and odd phases with
 * two-vector shuffles. All rows are copied before any is loaded back: a vector load that
 * overlaps a recent narrower store would stall on store forwarding. */
static void kiln_dw_split2(const float* xc, const kiln_conv_shape* s, float* tmp, float* dst) {
    const int phase = KILN_DW_PHASE(s);
    const int n = kiln_imin(s->W, 2 * phase - s->pl);
    for (int iy = 0; iy < s->H; ++iy)
        kiln_dw_copy(tmp + (size_t)iy * 2 * phase + s->pl, xc + (size_t)iy * s->W, n);
    kiln_vi even, odd;
    for (int i = 0; i < KILN_VLEN; ++i) even[i] = 2 * i, odd[i] = 2 * i + 1;
    for (int iy = 0; iy < s->H; ++iy) {
        const float* row = tmp + (size_t)iy * 2 * phase;
        float* line = dst + (size_t)iy * 2 * phase;
        for (int q = 0; q < phase; q += KILN_VLEN) {
            const kiln_vf v0 = kiln_loadu(row + 2 * q), v1 = kiln_loadu(row + 2 * q + KILN_VLEN);
            const kiln_vf e = __builtin_shuffle(v0, v1, even), o = __builtin_shuffle(v0, v1, odd);
            if (q + KILN_VLEN <= phase) {
                kiln_storeu(line + q, e);
                kiln_storeu(line + phase + q, o);
                continue;
            }
            for (int i = 0; i < phase - q; ++i) line[q + i] = e[i], line[phase + q + i] = o[i];
        }
    }
}
#endif

/* The lines of one input plane: row iy, phase p, position q holds x[iy][q*sw + p - pl]. Only
 * the positions inside the row are written: the margins were zeroed once per call. */
static void kiln_dw_lines(const float* xc, const kiln_conv_shape* s, const kiln_dw_span* span,
                          float* tmp, float* dst) {
    const int S = s->sw, phase = KILN_DW_PHASE(s);
    if (S == 2) {
        kiln_dw_split2(xc, s, tmp, dst);
        return;
    }
    for (int iy = 0; iy < s->H; ++iy) {
        const float* src = xc + (size_t)iy * s->W;
        float* line = dst + (size_t)iy * S * phase;
        if (S == 1) {
            kiln_dw_copy(line + span->a[0], src + span->a[0] - s->pl, span->b[0] - span->a[0]);
            continue;
        }
        for (int p = 0; p < S; ++p) {
            float* out = line + (size_t)p * phase;
            const float* in = src + p - s->pl;
            for (int q = span->a[p]; q < span->b[p]; ++q) out[q] = in[q * S];
        }
    }
}

/* Store one clamped vector of output row `yr` (the last one of a row may be partial), with
 * hardswish x * clamp(x + 3, 0, 6) / 6 after the clamp when `act` says so (the division as a
 * multiply by 1/6: within an ulp). NaN passes through, as in the reference ops. */
KILN_INLINE void kiln_dw_store(float* yr, int n, kiln_vf acc, kiln_vf lo, kiln_vf hi, int act) {
    kiln_vf r = kiln_select(acc < lo, lo, kiln_select(acc > hi, hi, acc));
    if (act == KILN_DW_HARDSWISH) {
        const kiln_vf zero = kiln_splat(0.0f), six = kiln_splat(6.0f);
        kiln_vf t = r + kiln_splat(3.0f);
        t = kiln_select(t < zero, zero, kiln_select(t > six, six, t));
        r = r * t * kiln_splat(1.0f / 6.0f);
    }
    if (n >= KILN_VLEN) {
        kiln_storeu(yr, r);
        return;
    }
#if KILN_VLEN == 16 && defined(__AVX512F__)
    _mm512_mask_storeu_ps(yr, (__mmask16)((1u << n) - 1u), (__m512)r); /* the row's tail */
#else
    for (int i = 0; i < n; ++i) yr[i] = r[i];
#endif
}

/* NC output channels (weights `w`, NC x cin x KH x KW) from the lines of their cin inputs,
 * NR output rows at a time (NC * NR independent accumulators keep the FMA units busy); a tap
 * on a row above or below the image reads the zero line instead (the borders are peeled
 * without a branch). Inlined with constant KH, KW, S, DH, DW, NC and NR by the wrappers. */
KILN_INLINE void kiln_dw_block(const float* lines, const float* w, const float* bias, float* y,
                               int cin, const kiln_conv_shape* s, float lo, float hi, int act,
                               const int KH, const int KW, const int S, const int DH,
                               const int DW, const int NC, const int NR) {
    const int phase = (s->OW + 15) / 16 * 16 + (KW - 1) * DW / S + 1;
    const size_t line = (size_t)S * phase, plane = (size_t)s->H * line;
    const float* zero = lines + cin * plane;
    const size_t taps = (size_t)cin * KH * KW, out_plane = (size_t)s->OH * s->OW;
    const kiln_vf vlo = kiln_splat(lo), vhi = kiln_splat(hi);
    kiln_vf vb[4];
    for (int j = 0; j < NC; ++j) vb[j] = kiln_splat(bias ? bias[j] : 0.0f);
    for (int oy = 0; oy < s->OH; oy += NR) {
        for (int ox = 0; ox < s->OW; ox += KILN_VLEN) {
            kiln_vf acc[4][4];
            for (int j = 0; j < NC; ++j)
                for (int r = 0; r < NR; ++r) acc[j][r] = vb[j];
            for (int ci = 0; ci < cin; ++ci)
                for (int ky = 0; ky < KH; ++ky) {
                    const float* row[4];
                    for (int r = 0; r < NR; ++r) {
                        const int iy = (oy + r) * s->sh - s->pt + ky * DH;
                        const int inside = iy >= 0 && iy < s->H && oy + r < s->OH;
                        row[r] = (inside ? lines + ci * plane + (size_t)iy * line : zero) + ox;
                    }
                    const float* wk = w + ((size_t)ci * KH + ky) * KW;
                    for (int kx = 0; kx < KW; ++kx) {
                        const int t = kx * DW;
                        const size_t at = (size_t)(t % S) * phase + t / S;
                        for (int r = 0; r < NR; ++r) {
                            const kiln_vf v = kiln_loadu(row[r] + at);
                            for (int j = 0; j < NC; ++j)
                                acc[j][r] += kiln_splat(wk[j * taps + kx]) * v;
                        }
                    }
                }
            for (int r = 0; r < NR && oy + r < s->OH; ++r)
                for (int j = 0; j < NC; ++j)
                    kiln_dw_store(y + j * out_plane + (size_t)(oy + r) * s->OW + ox, s->OW - ox,
                                  acc[j][r], vlo, vhi, act);
        }
    }
}

typedef void (*kiln_dw_fn)(const float*, const float*, const float*, float*, int,
                           const kiln_conv_shape*, float, float, int);

#define KILN_DW_DEFINE(name, KH, KW, S, DH, DW, NC, NR)                                            \
    static void name(const float* lines, const float* w, const float* bias, float* y, int cin, \
                     const kiln_conv_shape* s, float lo, float hi, int act) {                   \
        kiln_dw_block(lines, w, bias, y, cin, s, lo, hi, act, KH, KW, S, DH, DW, NC, NR);      \
    }
#define KILN_DW_FAMILY(name, KH, KW, S, DH, DW)      \
    KILN_DW_DEFINE(name##_1, KH, KW, S, DH, DW, 1, 4) \
    KILN_DW_DEFINE(name##_2, KH, KW, S, DH, DW, 2, 4) \
    KILN_DW_DEFINE(name##_3, KH, KW, S, DH, DW, 3, 2) \
    KILN_DW_DEFINE(name##_4, KH, KW, S, DH, DW, 4, 2)

KILN_DW_FAMILY(kiln_dw3s1, 3, 3, 1, 1, 1)
KILN_DW_FAMILY(kiln_dw3s2, 3, 3, 2, 1, 1)
KILN_DW_FAMILY(kiln_dw5s1, 5, 5, 1, 1, 1)
KILN_DW_FAMILY(kiln_dw5s2, 5, 5, 2, 1, 1)
KILN_DW_FAMILY(kiln_dwany, s->KH, s->KW, s->sw, s->dh, s->dw)

/* Rows: generic, 3x3 s1, 3x3 s2, 5x5 s1, 5x5 s2; columns: NC - 1. */
static const kiln_dw_fn kiln_dw_table[5][4] = {
    {kiln_dwany_1, kiln_dwany_2, kiln_dwany_3, kiln_dwany_4},
    {kiln_dw3s1_1, kiln_dw3s1_2, kiln_dw3s1_3, kiln_dw3s1_4},
    {kiln_dw3s2_1, kiln_dw3s2_2, kiln_dw3s2_3, kiln_dw3s2_4},
    {kiln_dw5s1_1, kiln_dw5s1_2, kiln_dw5s1_3, kiln_dw5s1_4},
    {kiln_dw5s2_1, kiln_dw5s2_2, kiln_dw5s2_3, kiln_dw5s2_4},
};

/* Which row of kiln_dw_table computes shape s (0: the generic loop). */
static int kiln_dw_kind(const kiln_conv_shape* s) {
    if (s->dh != 1 || s->dw != 1 || s->KH != s->KW || (s->sw != 1 && s->sw != 2)) return 0;
    if (s->KH == 3) return 1 + (s->sw - 1);
    if (s->KH == 5) return 3 + (s->sw - 1);
    return 0;
}

#if KILN_VLEN == 16 && defined(__AVX512F__)
/* ---- The flat path (AVX-512): small planes, every lane busy, no padded copy ----------------
 * An output plane is walked as one flat array of OH * OW values, 16 at a time, whatever the
 * row length: an 8x8 plane is 4 vectors (2 rows each), a 4x4 plane 1 vector. Stride 1 with
 * OW == W: the input of tap (ky, kx) for flat output index f is x[f + (ky - pt) * W + kx - pl]
 * (a constant offset), read with a masked load whose mask drops the lanes whose tap falls
 * outside the image (left/right columns, rows above/below, past the plane's end). Stride 2:
 * each input plane is first split into its 4 phases (even/odd rows x even/odd columns), each
 * stored with row pitch OW, so that every tap is again a constant offset into one phase. The
 * masks depend only on the shape: they are built once per call (`kiln_dwf_plan`). */
#define KILN_DWF_MAX_TAPS 25
#define KILN_DWF_MAX_MASKS 2048

typedef struct {
    int taps, nvec, plane;
    int sub;                              /* floats per phase (stride 2), 0 for stride 1 */
    ptrdiff_t off[KILN_DWF_MAX_TAPS];     /* tap t reads in[f + off[t]] for flat output f */
    __mmask16 mask[KILN_DWF_MAX_MASKS];   /* [vector][tap]: the lanes whose tap is inside */
} kiln_dwf_plan;

/* Whether the flat path serves shape s, and its plan if so (0: take the padded lines). */
static int kiln_dwf_make_plan(const kiln_conv_shape* s, kiln_dwf_plan* p) {
    const int S = s->sw, T = s->KH * s->KW, P = s->OH * s->OW;
    if (s->dh != 1 || s->dw != 1 || s->sh != S || (S != 1 && S != 2) || T > KILN_DWF_MAX_TAPS)
        return 0;
    if (S == 1 ? s->OW != s->W : (s->W + 1) / 2 > s->OW) return 0;
    p->taps = T;
    p->nvec = (P + 15) / 16;
    if (p->nvec * T > KILN_DWF_MAX_MASKS) return 0;
    p->sub = S == 1 ? 0 : (s->H + 1) / 2 * s->OW;
    p->plane = S == 1 ? s->H * s->W : 4 * p->sub;
    for (int ky = 0; ky < s->KH; ++ky)
        for (int kx = 0; kx < s->KW; ++kx) {
            const int ry = ky - s->pt, rx = kx - s->pl, t = ky * s->KW + kx;
            if (S == 1) {
                p->off[t] = (ptrdiff_t)ry * s->W + rx;
                continue;
            }
            const int qy = ry & 1, qx = rx & 1; /* the phase: row/column parity */
            p->off[t] = (ptrdiff_t)(2 * qy + qx) * p->sub + (ptrdiff_t)((ry - qy) / 2) * s->OW +
                        (rx - qx) / 2;
        }
    const __m512i iota = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    const __m512 ow = _mm512_set1_ps((float)s->OW);
    for (int v = 0; v < p->nvec; ++v) {
        const __m512i f = _mm512_add_epi32(_mm512_set1_epi32(16 * v), iota);
        /* f / OW in float: exact, the plane is far below 2^22 values */
        const __m512i oy = _mm512_cvttps_epi32(_mm512_div_round_ps(
            _mm512_add_ps(_mm512_cvtepi32_ps(f), _mm512_set1_ps(0.5f)), ow,
            _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC));
        const __m512i ox = _mm512_sub_epi32(f, _mm512_mullo_epi32(oy, _mm512_set1_epi32(s->OW)));
        const __mmask16 live = _mm512_cmplt_epi32_mask(f, _mm512_set1_epi32(P));
        __mmask16 rows[KILN_DWF_MAX_TAPS], cols[KILN_DWF_MAX_TAPS];
        for (int ky = 0; ky < s->KH; ++ky) {
            const __m512i iy = _mm512_add_epi32(_mm512_mullo_epi32(oy, _mm512_set1_epi32(S)),
                                                _mm512_set1_epi32(ky - s->pt));
            rows[ky] = _mm512_cmpge_epi32_mask(iy, _mm512_setzero_si512()) &
                       _mm512_cmplt_epi32_mask(iy, _mm512_set1_epi32(s->H)) & live;
        }
        for (int kx = 0; kx < s->KW; ++kx) {
            const __m512i ix = _mm512_add_epi32(_mm512_mullo_epi32(ox, _mm512_set1_epi32(S)),
                                                _mm512_set1_epi32(kx - s->pl));
            cols[kx] = _mm512_cmpge_epi32_mask(ix, _mm512_setzero_si512()) &
                       _mm512_cmplt_epi32_mask(ix, _mm512_set1_epi32(s->W));
        }
        for (int ky = 0; ky < s->KH; ++ky)
            for (int kx = 0; kx < s->KW; ++kx)
                p->mask[v * T + ky * s->KW + kx] = rows[ky] & cols[kx];
    }
    return 1;
}

/* The 4 phases of one input plane (stride 2): phase (qy, qx) row r, column c holds
 * x[2r + qy][2c + qx]; rows have pitch OW. Only the values inside the image are written: the
 * others are never read (their lanes are masked). */
static void kiln_dwf_split(const float* x, const kiln_conv_shape* s, int sub, float* dst) {
    const kiln_vi even = {0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30};
    const kiln_vi odd = even + 1;
    const int ne = (s->W + 1) / 2, no = s->W / 2; /* columns of the even and odd phases */
    if ((s->W == 16 || s->W == 8) && s->OW == s->W / 2) {
        /* rows of 16 or 8 (mobilenet's 16x16 and 8x8 planes): one permute puts the even
         * columns in the low half, the odd ones in the high half; two plain half-width
         * stores (measured: 2.2x faster than the general loop's masked stores at 8x8) */
        const kiln_vi lohi = {0, 2, 4, 6, 8, 10, 12, 14, 1, 3, 5, 7, 9, 11, 13, 15};
        const __m256i lohi8 = _mm256_setr_epi32(0, 2, 4, 6, 1, 3, 5, 7);
        for (int iy = 0; iy < s->H; ++iy) {
            const float* src = x + (size_t)iy * s->W;
            float* e = dst + (size_t)(2 * (iy & 1)) * sub + (size_t)(iy >> 1) * s->OW;
            if (s->W == 16) {
                const __m512 v = (__m512)__builtin_shuffle(kiln_loadu(src), lohi);
                _mm256_storeu_ps(e, _mm512_castps512_ps256(v));
                _mm256_storeu_ps(e + sub, _mm256_castpd_ps(
                    _mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)));
            } else {
                const __m256 v = _mm256_permutexvar_ps(lohi8, _mm256_loadu_ps(src));
                _mm_storeu_ps(e, _mm256_castps256_ps128(v));
                _mm_storeu_ps(e + sub, _mm256_extractf128_ps(v, 1));
            }
        }
        return;
    }
    for (int iy = 0; iy < s->H; ++iy) {
        const float* src = x + (size_t)iy * s->W;
        float* e = dst + (size_t)(2 * (iy & 1)) * sub + (size_t)(iy >> 1) * s->OW;
        float* o = e + sub;
        for (int q = 0; q < ne; q += 16) {
            const int n0 = kiln_imin(16, s->W - 2 * q), n1 = kiln_imin(16, s->W - 2 * q - 16);
            const __m512 v0 = _mm512_maskz_loadu_ps((__mmask16)((1u << n0) - 1u), src + 2 * q);
            const __m512 v1 = n1 > 0 ? _mm512_maskz_loadu_ps((__mmask16)((1u << n1) - 1u),
                                                             src + 2 * q + 16)
                                     : _mm512_setzero_ps();
            const kiln_vf ev = __builtin_shuffle((kiln_vf)v0, (kiln_vf)v1, even);
            const kiln_vf ov = __builtin_shuffle((kiln_vf)v0, (kiln_vf)v1, odd);
            const int me = kiln_imin(16, ne - q), mo = kiln_imin(16, no - q);
            _mm512_mask_storeu_ps(e + q, (__mmask16)((1u << me) - 1u), (__m512)ev);
            if (mo > 0) _mm512_mask_storeu_ps(o + q, (__mmask16)((1u << mo) - 1u), (__m512)ov);
        }
    }
}

/* NC output channels j (input planes in[j], weights w[j]: cin x taps), NV vectors of the flat
 * output from vector v0 on; `nc` of the NC are real (the others repeat channel 0, unstored).
 * NC * NV independent accumulators; constant T unrolls the taps (3x3: weights stay in
 * registers). */
KILN_INLINE void kiln_dwf_block(const float* const* in, size_t cstride, int cin,
                                const float* const* w, const float* bias, float* y,
                                size_t ystride, int nc, int v0, int P, const kiln_dwf_plan* p,
                                kiln_vf lo, kiln_vf hi, int act, const int T, const int NC,
                                const int NV) {
    kiln_vf acc[4][8];
    for (int j = 0; j < NC; ++j) {
        const kiln_vf b = kiln_splat(bias && j < nc ? bias[j] : 0.0f);
        for (int r = 0; r < NV; ++r) acc[j][r] = b;
    }
    for (int ci = 0; ci < cin; ++ci)
#pragma GCC unroll 25
        for (int t = 0; t < T; ++t) {
            const ptrdiff_t at = p->off[t] + (ptrdiff_t)(ci * cstride) + 16 * v0;
#pragma GCC unroll 4
            for (int j = 0; j < NC; ++j) {
                const kiln_vf wt = kiln_splat(w[j][ci * T + t]);
#pragma GCC unroll 8
                for (int r = 0; r < NV; ++r) {
                    const __mmask16 m = p->mask[(v0 + r) * T + t];
                    const kiln_vf v = (kiln_vf)_mm512_maskz_loadu_ps(m, in[j] + at + 16 * r);
                    acc[j][r] += wt * v;
                }
            }
        }
    for (int j = 0; j < NC && j < nc; ++j)
        for (int r = 0; r < NV; ++r) {
            const int f = 16 * (v0 + r);
            kiln_dw_store(y + j * ystride + f, P - f, acc[j][r], lo, hi, act);
        }
}

typedef void (*kiln_dwf_fn)(const float* const*, size_t, int, const float* const*, const float*,
                            float*, size_t, int, int, int, const kiln_dwf_plan*, kiln_vf,
                            kiln_vf, int);
#define KILN_DWF_DEFINE(name, T, NC, NV)                                                        \
    static void name(const float* const* in, size_t cstride, int cin, const float* const* w,   \
                     const float* bias, float* y, size_t ystride, int nc, int v0, int P,        \
                     const kiln_dwf_plan* p, kiln_vf lo, kiln_vf hi, int act) {                 \
        kiln_dwf_block(in, cstride, cin, w, bias, y, ystride, nc, v0, P, p, lo, hi, act, T, NC, \
                       NV);                                                                     \
    }
#define KILN_DWF_FAMILY(name, T)         \
    KILN_DWF_DEFINE(name##_1x8, T, 1, 8) \
    KILN_DWF_DEFINE(name##_2x4, T, 2, 4) \
    KILN_DWF_DEFINE(name##_4x4, T, 4, 4) \
    KILN_DWF_DEFINE(name##_4x2, T, 4, 2) \
    KILN_DWF_DEFINE(name##_4x1, T, 4, 1)
KILN_DWF_FAMILY(kiln_dwf9, 9)
KILN_DWF_FAMILY(kiln_dwfany, p->taps)

/* Rows: 3x3, any taps; columns: (NC, NV) = (1, 8), (2, 4), (4, 4), (4, 2), (4, 1). */
enum { KILN_DWF_1x8, KILN_DWF_2x4, KILN_DWF_4x4, KILN_DWF_4x2, KILN_DWF_4x1 };
static const kiln_dwf_fn kiln_dwf_table[2][5] = {
    {kiln_dwf9_1x8, kiln_dwf9_2x4, kiln_dwf9_4x4, kiln_dwf9_4x2, kiln_dwf9_4x1},
    {kiln_dwfany_1x8, kiln_dwfany_2x4, kiln_dwfany_4x4, kiln_dwfany_4x2, kiln_dwfany_4x1},
};
static const int kiln_dwf_nc[5] = {1, 2, 4, 4, 4}, kiln_dwf_nv[5] = {8, 4, 4, 2, 1};

/* The block shape for a plane of `nvec` vectors: one group's channels share each loaded
 * input vector (4 channels); a depthwise channel has its own, so fewer channels and more
 * vectors, which leaves room for the 3x3 weights in registers. */
static int kiln_dwf_pick(int nvec, int cout_g) {
    if (nvec >= 8 && cout_g == 1) return KILN_DWF_1x8;
    if (nvec >= 4) return cout_g == 1 ? KILN_DWF_2x4 : KILN_DWF_4x4;
    return nvec >= 2 ? KILN_DWF_4x2 : KILN_DWF_4x1;
}

/* kiln_dwconv through the flat path: blocks of NC output channels (within a group, or one
 * per group when each group has one output channel, as in a depthwise conv). */
static void kiln_dwf_conv(const float* x, const float* w, const float* bias, float* y, int c0,
                          int c1, int Cout, int groups, const kiln_conv_shape* s, float lo,
                          float hi, int act, float* split, const kiln_dwf_plan* p) {
    const int cin = s->C / groups, cout_g = Cout / groups, T = p->taps;
    const int P = s->OH * s->OW, pick = kiln_dwf_pick(p->nvec, cout_g);
    const int NC = kiln_dwf_nc[pick], NV = kiln_dwf_nv[pick];
    const kiln_dwf_fn* fns = kiln_dwf_table[T == 9 ? 0 : 1];
    const size_t in_plane = (size_t)s->H * s->W;
    const kiln_vf vlo = kiln_splat(lo), vhi = kiln_splat(hi);
    int ready = -1; /* the group whose split planes are in `split` (stride 2, cin > 1) */
    for (int c = c0; c < c1;) {
        const float* in[4];
        const float* wj[4];
        int nc = 0;
        /* the block: up to NC channels; one group's (cout_g > 1), or NC groups' (cout_g = 1) */
        const int g = c / cout_g;
        if (cout_g == 1) {
            nc = kiln_imin(NC, c1 - c);
            for (int j = 0; j < nc; ++j) {
                const float* xg = x + (size_t)(c + j) * cin * in_plane; /* group c + j */
                in[j] = p->sub ? split + (size_t)j * cin * p->plane : xg;
                for (int ci = 0; p->sub && ci < cin; ++ci)
                    kiln_dwf_split(xg + ci * in_plane, s, p->sub,
                                   split + ((size_t)j * cin + ci) * p->plane);
            }
            ready = -1;
        } else {
            nc = kiln_imin(NC, kiln_imin(c1, (g + 1) * cout_g) - c);
            const float* xg = x + (size_t)g * cin * in_plane;
            if (p->sub && g != ready) {
                for (int ci = 0; ci < cin; ++ci)
                    kiln_dwf_split(xg + ci * in_plane, s, p->sub, split + (size_t)ci * p->plane);
                ready = g;
            }
            for (int j = 0; j < nc; ++j) in[j] = p->sub ? split : xg;
        }
        for (int j = 0; j < nc; ++j) wj[j] = w + (size_t)(c + j) * cin * T;
        for (int j = nc; j < 4; ++j) in[j] = in[0], wj[j] = wj[0]; /* the tail runs NC = 4 */
        const size_t cstride = p->sub ? (size_t)p->plane : in_plane;
        const float* bc = bias ? bias + c : NULL;
        float* yc = y + (size_t)(c - c0) * P;
        int v = 0;
        for (; v + NV <= p->nvec; v += NV)
            fns[pick](in, cstride, cin, wj, bc, yc, (size_t)P, nc, v, P, p, vlo, vhi, act);
        for (; v < p->nvec; ++v)
            fns[KILN_DWF_4x1](in, cstride, cin, wj, bc, yc, (size_t)P, nc, v, P, p, vlo, vhi,
                              act);
        c += nc;
    }
}
#endif

void kiln_dwconv(const float* x, const float* w, const float* bias, float* y, int c0, int c1,
                 int Cout, int groups, const kiln_conv_shape* s, float lo, float hi,
                 float* lines) {
    kiln_dwconv_act(x, w, bias, y, c0, c1, Cout, groups, s, lo, hi, KILN_DW_NONE, lines);
}

void kiln_dwconv_act(const float* x, const float* w, const float* bias, float* y, int c0,
                     int c1, int Cout, int groups, const kiln_conv_shape* s, float lo, float hi,
                     int act, float* lines) {
    const int cin = s->C / groups, cout_g = Cout / groups;
    const size_t taps = (size_t)cin * s->KH * s->KW, in_plane = (size_t)s->H * s->W;
    const size_t lines_plane = (size_t)s->H * KILN_DW_LINE(s);
#if KILN_VLEN == 16 && defined(__AVX512F__)
    /* flat: depthwise layers (no copy at stride 1), and planes narrower than a vector (the
     * lines would leave lanes idle); a group of several input channels on wide planes is
     * faster over the lines, copied once for all its output channels (measured: the 3-channel
     * 32x32 stride-2 stem of mobilenet_v2ish, 1.39x the time flat) */
    kiln_dwf_plan plan;
    if ((cin == 1 || s->OW < 16) && kiln_dwf_make_plan(s, &plan)) {
        kiln_dwf_conv(x, w, bias, y, c0, c1, Cout, groups, s, lo, hi, act, lines, &plan);
        return;
    }
#endif
    const kiln_dw_fn* fns = kiln_dw_table[kiln_dw_kind(s)];
    kiln_dw_span span;
    for (int p = 0; p < s->sw; ++p)
        kiln_window_range(KILN_DW_PHASE(s), s->W, s->sw, s->pl, p, &span.a[p], &span.b[p]);
    /* the margins of every line, and the zero line the taps above and below the image read */
    memset(lines, 0, sizeof(float) * KILN_DW_LINES_SCRATCH(s, cin));
    float* tmp = lines + (cin * lines_plane + KILN_DW_LINE(s)); /* padded rows (stride 2) */
    int ready = -1; /* the group whose input lines are in `lines` */
    for (int c = c0; c < c1;) {
        const int g = c / cout_g;
        if (g != ready) {
            for (int ci = 0; ci < cin; ++ci)
                kiln_dw_lines(x + ((size_t)g * cin + ci) * in_plane, s, &span, tmp,
                              lines + ci * lines_plane);
            ready = g;
        }
        const int nc = kiln_imin(4, kiln_imin(c1, (g + 1) * cout_g) - c);
        fns[nc - 1](lines, w + (size_t)c * taps, bias ? bias + c : NULL,
                    y + (size_t)(c - c0) * s->OH * s->OW, cin, s, lo, hi, act);
        c += nc;
    }
}

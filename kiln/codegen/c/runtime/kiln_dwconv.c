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

/* Store one clamped vector of output row `yr` (the last one of a row may be partial). NaN
 * passes through, as in the reference ops. */
KILN_INLINE void kiln_dw_store(float* yr, int n, kiln_vf acc, kiln_vf lo, kiln_vf hi) {
    kiln_vf r = kiln_select(acc < lo, lo, kiln_select(acc > hi, hi, acc));
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
                               int cin, const kiln_conv_shape* s, float lo, float hi,
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
                                  acc[j][r], vlo, vhi);
        }
    }
}

typedef void (*kiln_dw_fn)(const float*, const float*, const float*, float*, int,
                           const kiln_conv_shape*, float, float);

#define KILN_DW_DEFINE(name, KH, KW, S, DH, DW, NC, NR)                                            \
    static void name(const float* lines, const float* w, const float* bias, float* y, int cin, \
                     const kiln_conv_shape* s, float lo, float hi) {                            \
        kiln_dw_block(lines, w, bias, y, cin, s, lo, hi, KH, KW, S, DH, DW, NC, NR);           \
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

void kiln_dwconv(const float* x, const float* w, const float* bias, float* y, int c0, int c1,
                 int Cout, int groups, const kiln_conv_shape* s, float lo, float hi,
                 float* lines) {
    const int cin = s->C / groups, cout_g = Cout / groups;
    const size_t taps = (size_t)cin * s->KH * s->KW, in_plane = (size_t)s->H * s->W;
    const size_t lines_plane = (size_t)s->H * KILN_DW_LINE(s);
    const kiln_dw_fn* fns = kiln_dw_table[kiln_dw_kind(s)];
    kiln_dw_span span;
    for (int p = 0; p < s->sw; ++p)
        kiln_window_range(KILN_DW_PHASE(s), s->W, s->sw, s->pl, p, &span.a[p], &span.b[p]);
    /* the margins of every line, and the zero line the taps above and below the image read */
    memset(lines, 0, sizeof(float) * KILN_DW_SCRATCH(s, cin));
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
                    y + (size_t)(c - c0) * s->OH * s->OW, cin, s, lo, hi);
        c += nc;
    }
}

/* kiln_qvnni.c: see kiln_qvnni.h. Without VNNI the same functions run as plain loops over the
 * same layouts (for tests and portability; generated code then uses the int16 kernels). */
#include "kiln_qvnni.h"
#include "kiln_qrequant.h"

#include <string.h>
#if KILN_QVNNI
#include <immintrin.h>
#endif

static long kiln_qoffset(const kiln_qgeom* g, int p) {
    int oy = p / g->ow, ox = p % g->ow;
    return ((long)oy * g->sh * g->wp + (long)ox * g->sw) * g->elem;
}

/* Where byte `off` (from the tile's base) sits in the two 64-byte windows at 0 and hi, or -1. */
static int kiln_qwindow(long off, long hi) {
    return off < 64 ? (int)off : (off >= hi && off - hi < 64 ? (int)(64 + off - hi) : -1);
}

int kiln_qtiles(const kiln_qgeom* g, kiln_qtile* tiles) {
    const int pixels = g->oh * g->ow, tap = g->elem == 4 ? 1 : g->dw;
    int n = 0;
    for (int p = 0; p < pixels; ++n) {
        kiln_qtile* t = tiles + n;
        const long base = kiln_qoffset(g, p);
        long hi = 0; /* the second window (0: not placed yet) at the first byte past 64 */
        int count = 0;
        while (count < 16 && p + count < pixels) {
            const long off = kiln_qoffset(g, p + count) - base;
            const long h = hi == 0 && off + 3 * tap >= 64 ? (off < 64 ? 64 : off) : hi;
            if (kiln_qwindow(off, h) < 0 || kiln_qwindow(off + 3 * tap, h) < 0) break;
            hi = h;
            ++count;
        }
        hi = hi ? hi : 64;
        t->base = (int32_t)base;
        t->p0 = p;
        t->count = count;
        t->hi = (int32_t)hi;
        t->dense = 1;
        for (int j = 0; j < 16; ++j) {
            const long off = kiln_qoffset(g, p + (j < count ? j : 0)) - base;
            for (int k = 0; k < 4; ++k)
                t->idx[4 * j + k] = (uint8_t)kiln_qwindow(off + k * tap, hi);
            if (j < count && (off != 4 * j || tap != 1)) t->dense = 0;
        }
        p += count;
    }
    return n;
}

int kiln_qtiles_images(const kiln_qgeom* g, int images, long out_stride, kiln_qtile* tiles) {
    const int n = kiln_qtiles(g, tiles);
    const long part = (long)g->hp * g->wp * g->elem;
    for (int i = 1; i < images; ++i)
        for (int j = 0; j < n; ++j) {
            kiln_qtile* t = tiles + (long)i * n + j;
            *t = tiles[j];
            t->base = (int32_t)(t->base + i * part);
            t->p0 = (int32_t)(t->p0 + i * out_stride);
        }
    return n * images;
}

int kiln_qchannels(const kiln_requant* rq, int N, int ch0, kiln_qch* ch) {
    int int32 = 1;
    memset(ch, 0, sizeof(kiln_qch) * (size_t)(N + KILN_QVNR));
    for (int n = 0; n < N; ++n) {
        const int c = n + ch0, i = rq->per_channel ? c : 0, t = 31 - rq->shift[i];
        kiln_qch* k = ch + n;
        k->bias = rq->bias ? rq->bias[c] : 0;
        k->mult = rq->mult[i];
        k->t = t;
        k->lo = rq->lo;
        k->hi = rq->hi;
        k->zo = rq->zo;
        /* the int32 form's rounding term with zo folded in: |hi32| <= 2^30, so the sum
         * stays in int32 while |round| < 2^30 */
        const int64_t round = t >= 33 ? ((int64_t)1 << (t - 33)) + rq->zo * ((int64_t)1 << (t - 32))
                                      : 0;
        const int ok = t >= 33 && round > -(1L << 30) && round < (1L << 30);
        k->round = ok ? (int32_t)round : 0;
        k->shift = t - 32;
        int32 &= ok;
    }
    for (int n = N; n < N + KILN_QVNR; ++n) ch[n].t = 33; /* padding: defined shifts */
    if (!int32) return 0;
    return rq->hi != (rq->out_unsigned ? 255 : 127) ? 1 : (rq->out_unsigned ? 3 : 2);
}

/* Steps of the dot product: ceil(C / 4) * kh * kw (elem 4) or C * kh * ceil(kw / 4). */
static long kiln_qnsteps(const kiln_qgeom* g, int C) {
    return g->elem == 4 ? (long)(C + 3) / 4 * g->kh * g->kw
                        : (long)C * g->kh * ((g->kw + 3) / 4);
}

/* Byte offsets of each step's taps (elem 4: channel group, row, column; elem 1: channel, row,
 * group of 4 columns). */
static void kiln_qsteps(const kiln_qgeom* g, int C, long* offsets) {
    int s = 0;
    const int e = g->elem, cols = e == 4 ? g->kw : (g->kw + 3) / 4, step = e == 4 ? 1 : 4;
    for (int c = 0; c < (e == 4 ? (C + 3) / 4 : C); ++c)
        for (int ky = 0; ky < g->kh; ++ky)
            for (int kx = 0; kx < cols; ++kx)
                offsets[s++] = (((long)c * g->hp + (long)ky * g->dh) * g->wp +
                                (long)kx * step * g->dw) * e;
}

#if KILN_QVNNI
#define KILN_QINLINE static inline __attribute__((always_inline))

/* 16 lanes requantized to int32, clamped as far as the narrowing of kiln_qpack4 needs:
 * kind 0 the int64 form (clamped, + zo); else the int32 form (kiln_qrequant16), clamped below
 * and above (kind 1), below only (2: the saturating narrowing clamps above, hi being the
 * storage maximum) or not at all (3: lo is the storage minimum too). The high words of the
 * two products meet by one masked in-lane shuffle (odd words of the even products into the
 * even lanes of the odd ones). */
KILN_QINLINE __m512i kiln_qrequant32(__m512i acc, const kiln_qch* k, int kind) {
    const __m512i m = _mm512_set1_epi32(k->mult);
    if (kind == 0) {
        __m512i e = _mm512_mul_epi32(acc, m);
        __m512i o = _mm512_mul_epi32(_mm512_srli_epi64(acc, 32), m);
        const __m512i round = _mm512_set1_epi64((int64_t)1 << (k->t - 1));
        const __m512i lo = _mm512_set1_epi64((int64_t)k->lo - k->zo);
        const __m512i hi = _mm512_set1_epi64((int64_t)k->hi - k->zo);
        const __m128i t = _mm_cvtsi32_si128(k->t);
        e = _mm512_sra_epi64(_mm512_add_epi64(e, round), t);
        o = _mm512_sra_epi64(_mm512_add_epi64(o, round), t);
        e = _mm512_min_epi64(_mm512_max_epi64(e, lo), hi);
        o = _mm512_min_epi64(_mm512_max_epi64(o, lo), hi);
        const __m512i y = _mm512_mask_blend_epi32((__mmask16)0xAAAA, e, _mm512_slli_epi64(o, 32));
        return _mm512_add_epi32(y, _mm512_set1_epi32(k->zo));
    }
    const __m512i e = _mm512_mul_epi32(acc, m);
    const __m512i o = _mm512_mul_epi32(_mm512_shuffle_epi32(acc, _MM_PERM_DDBB), m);
    __m512i y = _mm512_mask_shuffle_epi32(o, (__mmask16)0x5555, e, _MM_PERM_DDBB);
    y = _mm512_srav_epi32(_mm512_add_epi32(y, _mm512_set1_epi32(k->round)),
                          _mm512_set1_epi32(k->shift));
    if (kind <= 2) y = _mm512_max_epi32(y, _mm512_set1_epi32(k->lo));
    if (kind == 1) y = _mm512_min_epi32(y, _mm512_set1_epi32(k->hi));
    return y;
}

/* Four channels' int32 lanes (a..d) narrowed to 64 bytes, channel c's 16 bytes at 16c..16c+15:
 * two signed int32 -> int16 packs, one int16 -> int8 pack (unsigned saturation when the
 * storage is unsigned or lo >= 0, so that 0..255 survive), then one vpermb undoes the packs'
 * 4-lane interleaving. 4 shuffles per 64 bytes where vpmovsdb takes 2 per 16. */
KILN_QINLINE __m512i kiln_qpack4(__m512i a, __m512i b, __m512i c, __m512i d, int us) {
    static const uint8_t order[64] = {
        0, 1, 2, 3, 16, 17, 18, 19, 32, 33, 34, 35, 48, 49, 50, 51,
        4, 5, 6, 7, 20, 21, 22, 23, 36, 37, 38, 39, 52, 53, 54, 55,
        8, 9, 10, 11, 24, 25, 26, 27, 40, 41, 42, 43, 56, 57, 58, 59,
        12, 13, 14, 15, 28, 29, 30, 31, 44, 45, 46, 47, 60, 61, 62, 63};
    const __m512i ab = _mm512_packs_epi32(a, b), cd = _mm512_packs_epi32(c, d);
    __m512i z = us ? _mm512_packus_epi16(ab, cd) : _mm512_packs_epi16(ab, cd);
    return _mm512_permutexvar_epi8(_mm512_loadu_si512((const void*)order), z);
}

/* The 16-byte lanes 0..nk-1 of z (channels) of a tile at o[p + c * cs] (NCHW rows). */
KILN_QINLINE void kiln_qput4(__m512i z, const kiln_qtile* t, uint8_t* o, long cs, int nk) {
    uint8_t* at = o + t->p0;
    if (t->count == 16) {
        _mm_storeu_si128((__m128i*)(void*)at, _mm512_castsi512_si128(z));
        if (nk > 1)
            _mm_storeu_si128((__m128i*)(void*)(at + cs), _mm512_extracti32x4_epi32(z, 1));
        if (nk > 2)
            _mm_storeu_si128((__m128i*)(void*)(at + 2 * cs), _mm512_extracti32x4_epi32(z, 2));
        if (nk > 3)
            _mm_storeu_si128((__m128i*)(void*)(at + 3 * cs), _mm512_extracti32x4_epi32(z, 3));
        return;
    }
    const __mmask16 mask = (__mmask16)((1u << t->count) - 1u);
    _mm_mask_storeu_epi8(at, mask, _mm512_castsi512_si128(z));
    if (nk > 1) _mm_mask_storeu_epi8(at + cs, mask, _mm512_extracti32x4_epi32(z, 1));
    if (nk > 2) _mm_mask_storeu_epi8(at + 2 * cs, mask, _mm512_extracti32x4_epi32(z, 2));
    if (nk > 3) _mm_mask_storeu_epi8(at + 3 * cs, mask, _mm512_extracti32x4_epi32(z, 3));
}

/* One channel's bytes of a tile at o[p * rs]: one masked store when rs == 1. */
KILN_QINLINE void kiln_qput(__m128i v, const kiln_qtile* t, uint8_t* o, long rs) {
    if (rs == 1) {
        _mm_mask_storeu_epi8(o + t->p0, (__mmask16)((1u << t->count) - 1u), v);
        return;
    }
    uint8_t bytes[16];
    _mm_storeu_si128((__m128i*)(void*)bytes, v);
    for (int j = 0; j < t->count; ++j) o[(long)(t->p0 + j) * rs] = bytes[j];
}

/* Stores requantized channel rows v[0..nn) of a tile: out[p * rs + n * cs]. rs == 1: one
 * masked store per channel; cs == 1 (a linear layer): the 16 x 8 bytes transposed by two
 * vpermt2b into 16 rows of 8 channels, one masked 8-byte store per row; else byte by byte. */
KILN_QINLINE void kiln_qstore(const __m128i v[KILN_QVNR], int nn, const kiln_qtile* t,
                              uint8_t* out, long rs, long cs) {
    if (rs == 1 || cs != 1) {
        for (int n = 0; n < nn; ++n) kiln_qput(v[n], t, out + (long)n * cs, rs);
        return;
    }
    static const uint8_t order[64] = {
        0, 16, 32, 48, 64, 80, 96, 112, 1, 17, 33, 49, 65, 81, 97, 113, 2, 18, 34, 50, 66, 82,
        98, 114, 3, 19, 35, 51, 67, 83, 99, 115, 4, 20, 36, 52, 68, 84, 100, 116, 5, 21, 37,
        53, 69, 85, 101, 117, 6, 22, 38, 54, 70, 86, 102, 118, 7, 23, 39, 55, 71, 87, 103, 119};
    const __m512i idx = _mm512_loadu_si512((const void*)order);
    __m512i a = _mm512_inserti32x4(_mm512_castsi128_si512(v[0]), v[1], 1);
    __m512i b = _mm512_inserti32x4(_mm512_castsi128_si512(v[4]), v[5], 1);
    a = _mm512_inserti32x4(_mm512_inserti32x4(a, v[2], 2), v[3], 3);
    b = _mm512_inserti32x4(_mm512_inserti32x4(b, v[6], 2), v[7], 3);
    const __m512i shift8 = _mm512_set1_epi8(8);
    const __m512i rows[2] = {_mm512_permutex2var_epi8(a, idx, b),
                             _mm512_permutex2var_epi8(
                                 a, _mm512_add_epi8(idx, shift8), b)};
    const __mmask16 cmask = (__mmask16)((1u << nn) - 1u);
    uint8_t* o = out + (long)t->p0 * rs;
    for (int j = 0; j < t->count; ++j) {
        const __m128i q = _mm512_extracti32x4_epi32(rows[j / 8], 0);
        __m128i r = q;
        switch ((j % 8) / 2) {
        case 1: r = _mm512_extracti32x4_epi32(rows[j / 8], 1); break;
        case 2: r = _mm512_extracti32x4_epi32(rows[j / 8], 2); break;
        case 3: r = _mm512_extracti32x4_epi32(rows[j / 8], 3); break;
        default: break;
        }
        if (j % 2) r = _mm_srli_si128(r, 8);
        _mm_mask_storeu_epi8(o + (long)j * rs, cmask, r);
    }
}

/* acc + the dot products of x's 4-byte groups with the word at w (broadcast). Inline asm:
 * gcc 12 copies the intrinsic's accumulator to a fresh register and back at every step (two
 * moves per vpdpbusd and spills in the 16-accumulator loop); the tied operand keeps it in place
 * and the word is an embedded broadcast. */
KILN_QINLINE __m512i kiln_qdot(__m512i acc, __m512i x, const int32_t* w) {
    __asm__("vpdpbusd %2%{1to16%}, %1, %0" : "+v"(acc) : "v"(x), "m"(*w));
    return acc;
}

/* The 16 lanes' 4 bytes at a tap: one load (dense), or two 64-byte windows (at, at + hi)
 * and one vpermi2b. */
KILN_QINLINE __m512i kiln_qgather(const uint8_t* at, __m512i idx, long hi, int dense) {
    if (dense) return _mm512_loadu_si512((const void*)at);
    return _mm512_permutex2var_epi8(_mm512_loadu_si512((const void*)at), idx,
                                    _mm512_loadu_si512((const void*)(at + hi)));
}

/* Channels n0..n0+3 of a tile (those below nn stored) in NCHW rows (rs == 1): requantized by
 * kiln_qrequant32, narrowed by kiln_qpack4 (kind and us as there), four 16-byte stores. */
KILN_QINLINE void kiln_qput_rows(__m512i a, __m512i b, __m512i c, __m512i d, const kiln_qtile* t,
                                 const kiln_qch* ch, int n0, int nn, uint8_t* out, long cs,
                                 int kind, int us) {
    if (n0 >= nn) return;
    const kiln_qch* k = ch + n0;
    const __m512i z = kiln_qpack4(kiln_qrequant32(a, k, kind), kiln_qrequant32(b, k + 1, kind),
                                  kiln_qrequant32(c, k + 2, kind),
                                  kiln_qrequant32(d, k + 3, kind), us);
    kiln_qput4(z, t, out + n0 * cs, cs, nn - n0 < 4 ? nn - n0 : 4);
}

/* Other strides (linear layers: cs == 1): each channel narrowed by kiln_qrequant16 and
 * stored by kiln_qstore. */
#define KILN_QSTORE_OTHER(acc, tile)                                                     \
    do {                                                                                 \
        __m128i v[KILN_QVNR];                                                            \
        for (int n = 0; n < KILN_QVNR; ++n) v[n] = kiln_qrequant16((acc)[n], ch + n, mode); \
        kiln_qstore(v, nn, (tile), out, rs, cs);                                         \
    } while (0)

/* Channels of one block of 8 (nn of them real) for T (1 or 2) tiles: accumulators start at the
 * bias, S steps of T gathers and 8 x T vpdpbusd, then requantize and store. */
KILN_QINLINE void kiln_qconv_block(const kiln_qtile* t, int T, const uint8_t* P,
                                   const long* offsets, long S, const int32_t* w,
                                   const kiln_qch* ch, int nn, uint8_t* out, long rs, long cs,
                                   int dense, int mode, int kind, int us) {
    __m512i acc0[KILN_QVNR], acc1[KILN_QVNR];
    for (int n = 0; n < KILN_QVNR; ++n) acc0[n] = acc1[n] = _mm512_set1_epi32(ch[n].bias);
    const __m512i i0 = _mm512_loadu_si512((const void*)t[0].idx);
    const __m512i i1 = T == 2 ? _mm512_loadu_si512((const void*)t[1].idx) : i0;
    const uint8_t *a0 = P + t[0].base, *a1 = P + t[T - 1].base;
    const long h0 = t[0].hi, h1 = t[T - 1].hi;
    for (long s = 0; s < S; ++s, w += KILN_QVNR) {
        const __m512i x0 = kiln_qgather(a0 + offsets[s], i0, h0, dense);
        if (T == 2) {
            const __m512i x1 = kiln_qgather(a1 + offsets[s], i1, h1, dense);
            for (int n = 0; n < KILN_QVNR; ++n) {
                acc0[n] = kiln_qdot(acc0[n], x0, w + n);
                acc1[n] = kiln_qdot(acc1[n], x1, w + n);
            }
        } else {
            for (int n = 0; n < KILN_QVNR; ++n) acc0[n] = kiln_qdot(acc0[n], x0, w + n);
        }
    }
    /* one tile after the other, accumulators passed by value: this shape keeps gcc's
     * accumulators in registers */
    if (rs == 1) {
        kiln_qput_rows(acc0[0], acc0[1], acc0[2], acc0[3], t, ch, 0, nn, out, cs, kind, us);
        kiln_qput_rows(acc0[4], acc0[5], acc0[6], acc0[7], t, ch, 4, nn, out, cs, kind, us);
        if (T == 1) return;
        kiln_qput_rows(acc1[0], acc1[1], acc1[2], acc1[3], t + 1, ch, 0, nn, out, cs, kind, us);
        kiln_qput_rows(acc1[4], acc1[5], acc1[6], acc1[7], t + 1, ch, 4, nn, out, cs, kind, us);
        return;
    }
    KILN_QSTORE_OTHER(acc0, t);
    if (T == 2) KILN_QSTORE_OTHER(acc1, t + 1);
}

/* All tiles of one block of channels: pairs, then a last single tile. */
KILN_QINLINE void kiln_qconv_tiles(const kiln_qtile* tiles, int ntiles, const uint8_t* P,
                                   const long* offsets, long S, const int32_t* w,
                                   const kiln_qch* ch, int nn, uint8_t* out, long rs, long cs,
                                   int mode, int kind, int us) {
    int t = 0;
    for (; t + 1 < ntiles; t += 2) {
        if (tiles[t].dense && tiles[t + 1].dense)
            kiln_qconv_block(tiles + t, 2, P, offsets, S, w, ch, nn, out, rs, cs, 1, mode, kind,
                             us);
        else
            kiln_qconv_block(tiles + t, 2, P, offsets, S, w, ch, nn, out, rs, cs, 0, mode, kind,
                             us);
    }
    if (t < ntiles)
        kiln_qconv_block(tiles + t, 1, P, offsets, S, w, ch, nn, out, rs, cs, 0, mode, kind, us);
}

/* The channel blocks of one specialization. One noinline function per specialization: with
 * all of them inlined into one function gcc kept the accumulators in memory, storing each at
 * every step of the dot product (0.74x MobileNet int8 time at batch 64 without that). NCHW
 * rows (rs == 1) per kind of kiln_qrequant32 (the mode does not matter there); other strides
 * (linear layers) per requantization mode. */
#define KILN_QCONV_FN(name, RS, MODE, KIND)                                                   \
    static __attribute__((noinline)) void name(                                               \
        const kiln_qtile* tiles, int ntiles, const uint8_t* P, const long* offsets, long S,   \
        int N, const int32_t* B, const kiln_qch* ch, uint8_t* o, long rs, long cs, int us) {  \
        (void)rs;                                                                             \
        for (int nb = 0; nb < N; nb += KILN_QVNR) {                                           \
            const int nn = N - nb < KILN_QVNR ? N - nb : KILN_QVNR;                           \
            kiln_qconv_tiles(tiles, ntiles, P, offsets, S, B + nb / KILN_QVNR * S * KILN_QVNR, \
                             ch + nb, nn, o + nb * cs, RS, cs, MODE, KIND, us);               \
        }                                                                                     \
    }
KILN_QCONV_FN(kiln_qconv_k0, 1, 0, 0)
KILN_QCONV_FN(kiln_qconv_k1, 1, 1, 1)
KILN_QCONV_FN(kiln_qconv_k2, 1, 2, 2)
KILN_QCONV_FN(kiln_qconv_k3, 1, 2, 3)
KILN_QCONV_FN(kiln_qconv_m0, rs, 0, 0)
KILN_QCONV_FN(kiln_qconv_m1, rs, 1, 0)
KILN_QCONV_FN(kiln_qconv_m2, rs, 2, 0)
KILN_QCONV_FN(kiln_qconv_m3, rs, 3, 0)
typedef void (*kiln_qconv_fn)(const kiln_qtile*, int, const uint8_t*, const long*, long, int,
                              const int32_t*, const kiln_qch*, uint8_t*, long, long, int);
#else
/* Requantizes 16 lanes of channel k (the int32 sum already holds the bias; scalar path). */
static void kiln_qstore_lanes(const int32_t acc[16], const kiln_qch* k, const kiln_qtile* t,
                              uint8_t* o, long rs) {
    for (int j = 0; j < t->count; ++j) {
        int64_t y = kiln_rmulshift(acc[j], k->mult, 31 - k->t) + k->zo;
        y = y < k->lo ? k->lo : (y > k->hi ? k->hi : y);
        o[(long)(t->p0 + j) * rs] = (uint8_t)y;
    }
}

/* Plain loops: the dot product of one lane of a tile with one channel's words. */
static int32_t kiln_qlane(const uint8_t* at, const kiln_qtile* t, int j, const int32_t* w,
                          long stride, int steps, const long* offsets) {
    uint32_t acc = 0;
    for (int s = 0; s < steps; ++s) {
        int32_t word = w[(long)s * stride];
        const int8_t* b = (const int8_t*)&word;
        for (int k = 0; k < 4; ++k) {
            const int i = t->idx[4 * j + k];
            acc += (uint32_t)((int32_t)at[offsets[s] + (i < 64 ? i : t->hi + i - 64)] * b[k]);
        }
    }
    return (int32_t)acc;
}
#endif

void kiln_qconvch_vnni(const kiln_qgeom* g, const kiln_qtile* tiles, int ntiles,
                        const uint8_t* P, int C, int N, const int32_t* B, const kiln_qch* ch,
                        int mode, void* out, long rs, long cs) {
    const long S = kiln_qnsteps(g, C);
    long offsets[S > 0 ? S : 1];
    kiln_qsteps(g, C, offsets);
    uint8_t* o = (uint8_t*)out;
#if KILN_QVNNI
    static const kiln_qconv_fn rows[4] = {kiln_qconv_k0, kiln_qconv_k1, kiln_qconv_k2,
                                          kiln_qconv_k3};
    static const kiln_qconv_fn other[4] = {kiln_qconv_m0, kiln_qconv_m1, kiln_qconv_m2,
                                           kiln_qconv_m3};
    /* kiln_qrequant32's kind: the clamps that the narrowing of kiln_qpack4 leaves to do */
    const int lo = ch[0].lo, floor = mode == 3 ? 0 : -128;
    const int kind = mode <= 1 ? mode : (lo <= floor ? 3 : 2);
    const int us = mode == 3 || (mode <= 1 && lo >= 0);
    const kiln_qconv_fn fn = rs == 1 ? rows[kind] : other[mode & 3];
    fn(tiles, ntiles, P, offsets, S, N, B, ch, o, rs, cs, us);
#else
    (void)mode;
    int32_t lanes[16] = {0};
    for (int t = 0; t < ntiles; ++t)
        for (int n = 0; n < N; ++n) {
            const int32_t* w = B + n / KILN_QVNR * S * KILN_QVNR + n % KILN_QVNR;
            for (int j = 0; j < tiles[t].count; ++j)
                lanes[j] = (int32_t)((uint32_t)kiln_qlane(P + tiles[t].base, &tiles[t], j, w,
                                                          KILN_QVNR, (int)S, offsets) +
                                     (uint32_t)ch[n].bias);
            kiln_qstore_lanes(lanes, ch + n, &tiles[t], o + n * cs, rs);
        }
#endif
}

void kiln_qconv_vnni(const kiln_qgeom* g, const kiln_qtile* tiles, int ntiles, const uint8_t* P,
                     int C, int N, const int32_t* B, const kiln_requant* rq, int ch0, void* out,
                     long rs, long cs) {
    kiln_qch ch[N + KILN_QVNR];
    const int mode = kiln_qchannels(rq, N, ch0, ch);
    kiln_qconvch_vnni(g, tiles, ntiles, P, C, N, B, ch, mode, out, rs, cs);
}

#if KILN_QVNNI
/* Depthwise: channels c..c+3 (cn of them real; the others repeat channel c and are not stored)
 * of tiles t..t+T-1, 4 x T accumulators; each channel reads its own plane and weights. */
KILN_QINLINE void kiln_qdw_block(const kiln_qtile* t, int T, const uint8_t* P, long plane,
                                 const long* offsets, int S, const int32_t* B, const kiln_qch* ch,
                                 int c, int cn, uint8_t* out, long rs, long cs, int mode) {
    const __m512i i0 = _mm512_loadu_si512((const void*)t[0].idx);
    const __m512i i1 = _mm512_loadu_si512((const void*)t[T - 1].idx);
    const long h0 = t[0].hi, h1 = t[T - 1].hi;
    const uint8_t* a[4];
    const int32_t* w[4];
    __m512i acc0[4], acc1[4];
    for (int k = 0; k < 4; ++k) {
        const int cc = c + (k < cn ? k : 0);
        a[k] = P + cc * plane;
        w[k] = B + (long)cc * S;
        acc0[k] = acc1[k] = _mm512_set1_epi32(ch[cc].bias);
    }
    for (int s = 0; s < S; ++s) {
        const long off = offsets[s];
        for (int k = 0; k < 4; ++k) {
            acc0[k] = kiln_qdot(acc0[k], kiln_qgather(a[k] + t[0].base + off, i0, h0, 0),
                                w[k] + s);
            if (T == 2)
                acc1[k] = kiln_qdot(acc1[k], kiln_qgather(a[k] + t[1].base + off, i1, h1, 0),
                                    w[k] + s);
        }
    }
    __m128i v[4]; /* as in kiln_qconv_block */
    for (int k = 0; k < 4; ++k) v[k] = kiln_qrequant16(acc0[k], ch + c + k, mode);
    for (int k = 0; k < cn; ++k) kiln_qput(v[k], t, out + (long)(c + k) * cs, rs);
    if (T == 1) return;
    for (int k = 0; k < 4; ++k) v[k] = kiln_qrequant16(acc1[k], ch + c + k, mode);
    for (int k = 0; k < cn; ++k) kiln_qput(v[k], t + 1, out + (long)(c + k) * cs, rs);
}

KILN_QINLINE void kiln_qdw_all(const kiln_qtile* tiles, int ntiles, const uint8_t* P, long plane,
                               const long* offsets, int S, int C, const int32_t* B,
                               const kiln_qch* ch, uint8_t* out, long rs, long cs, int mode) {
    for (int c = 0; c < C; c += 4) {
        const int cn = C - c < 4 ? C - c : 4;
        int t = 0;
        for (; t + 1 < ntiles; t += 2)
            kiln_qdw_block(tiles + t, 2, P, plane, offsets, S, B, ch, c, cn, out, rs, cs, mode);
        if (t < ntiles)
            kiln_qdw_block(tiles + t, 1, P, plane, offsets, S, B, ch, c, cn, out, rs, cs, mode);
    }
}
#endif

void kiln_qdwch_vnni(const kiln_qgeom* g, const kiln_qtile* tiles, int ntiles,
                      const uint8_t* P, int C, const int32_t* B, const kiln_qch* ch, int mode,
                      void* out, long rs, long cs) {
    long offsets[64];
    const int S = (int)kiln_qnsteps(g, 1);
    kiln_qsteps(g, 1, offsets);
    const long plane = (long)g->hp * g->wp;
    uint8_t* o = (uint8_t*)out;
#if KILN_QVNNI
    switch (mode) {
    case 1: kiln_qdw_all(tiles, ntiles, P, plane, offsets, S, C, B, ch, o, rs, cs, 1); break;
    case 2: kiln_qdw_all(tiles, ntiles, P, plane, offsets, S, C, B, ch, o, rs, cs, 2); break;
    case 3: kiln_qdw_all(tiles, ntiles, P, plane, offsets, S, C, B, ch, o, rs, cs, 3); break;
    default: kiln_qdw_all(tiles, ntiles, P, plane, offsets, S, C, B, ch, o, rs, cs, 0);
    }
#else
    (void)mode;
    int32_t lanes[16] = {0};
    for (int t = 0; t < ntiles; ++t)
        for (int c = 0; c < C; ++c) {
            for (int j = 0; j < tiles[t].count; ++j)
                lanes[j] = (int32_t)((uint32_t)kiln_qlane(P + c * plane + tiles[t].base,
                                                          &tiles[t], j, B + (long)c * S, 1, S,
                                                          offsets) + (uint32_t)ch[c].bias);
            kiln_qstore_lanes(lanes, ch + c, &tiles[t], o + c * cs, rs);
        }
#endif
}

void kiln_qdw_vnni(const kiln_qgeom* g, const kiln_qtile* tiles, int ntiles, const uint8_t* P,
                   int C, const int32_t* B, const kiln_requant* rq, int ch0, void* out,
                   long rs, long cs) {
    kiln_qch ch[C + KILN_QVNR];
    const int mode = kiln_qchannels(rq, C, ch0, ch);
    kiln_qdwch_vnni(g, tiles, ntiles, P, C, B, ch, mode, out, rs, cs);
}

int kiln_qvnni_enabled(void) { return KILN_QVNNI; }
